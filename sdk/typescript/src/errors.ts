/**
 * The one error tree of the SDK, and the two places errors are made.
 *
 *     NexusError                      .status (HTTP or null), .reason, .message, .metadata
 *     ├── NexusInvalidRequestError    400, 413: the request was refused as it stands
 *     ├── NexusAuthError              401 (who is calling?) and 403 (not allowed)
 *     ├── NexusNotFoundError          404
 *     ├── NexusConflictError          409
 *     ├── NexusUnavailableError       429, 502, 503, 504, and no answer at all (network, timeout)
 *     └── NexusUnexpectedError        anything else: 500, a redirect, a body not as documented
 *
 * `reason` is the stable `google.rpc.ErrorInfo` reason the gateway sent
 * (`AGENT_SCOPE_NOT_ALLOWED`, `USER_PERMISSION_MISSING`...), or null when the
 * answer carried none (a proxy's HTML page, a network failure). Branch on
 * `reason`; `message` is for people.
 *
 * Messages come from the gateway's `message` field, which never holds a
 * secret, or are written here. Request bodies, keys and tokens are never put
 * in an error, and neither is an unrecognised response body nor the transport
 * error behind a failure (Node's errors may quote a request's header values):
 * only its code is kept. The same rules as the Python SDK's `_errors.py`.
 */

import { isObject } from './json.js';

// Any type URL prefix is accepted; Envoy and the gateway send type.googleapis.com/.
const ERROR_INFO_TYPE = '/google.rpc.ErrorInfo';

/** What a `NexusError` carries besides its message. */
export interface NexusErrorDetails {
  readonly status?: number | null;
  readonly reason?: string | null;
  readonly metadata?: Readonly<Record<string, string>>;
}

/** Base of every error the SDK throws for a failed call. */
export class NexusError extends Error {
  /** The HTTP status, or null when no answer came (network, timeout). */
  readonly status: number | null;
  /** The stable ErrorInfo reason, e.g. `USER_PERMISSION_MISSING`; null when none was sent. */
  readonly reason: string | null;
  /** ErrorInfo metadata, e.g. `{ missing: 'acme:gliding' }`. */
  readonly metadata: Readonly<Record<string, string>>;

  constructor(message: string, details: NexusErrorDetails = {}) {
    super(message);
    this.status = details.status ?? null;
    this.reason = details.reason ?? null;
    this.metadata = Object.freeze({ ...details.metadata });
  }

  /** `message (HTTP 403, USER_PERMISSION_MISSING)`, as the Python SDK's `str()`. */
  override toString(): string {
    const context = [this.status ? `HTTP ${this.status}` : '', this.reason ?? '']
      .filter((part) => part)
      .join(', ');
    return `${this.name}: ${context ? `${this.message} (${context})` : this.message}`;
  }
}

/** The gateway refused the request as it stands; sending it again will not help. */
export class NexusInvalidRequestError extends NexusError {}

/** No valid caller credential (401), or the caller, agent or user may not do this (403). */
export class NexusAuthError extends NexusError {}

/** The provider, agent, connection or session named does not exist. */
export class NexusNotFoundError extends NexusError {}

/** The resource exists already or was changed concurrently; read and retry. */
export class NexusConflictError extends NexusError {}

/** Nexus or something it depends on could not answer now; retrying later may work. */
export class NexusUnavailableError extends NexusError {}

/** An answer the API does not document for this call. */
export class NexusUnexpectedError extends NexusError {}

// `name` on each prototype (not an own field) so it survives minifiers and stays
// out of util.inspect's list of properties.
for (const cls of [
  NexusError,
  NexusInvalidRequestError,
  NexusAuthError,
  NexusNotFoundError,
  NexusConflictError,
  NexusUnavailableError,
  NexusUnexpectedError,
]) {
  Object.defineProperty(cls.prototype, 'name', {
    value: cls.name,
    writable: true,
    configurable: true,
  });
}

type ErrorClass = new (message: string, details?: NexusErrorDetails) => NexusError;

const BY_STATUS: ReadonlyMap<number, ErrorClass> = new Map<number, ErrorClass>([
  [400, NexusInvalidRequestError],
  [413, NexusInvalidRequestError],
  [401, NexusAuthError],
  [403, NexusAuthError],
  [404, NexusNotFoundError],
  [409, NexusConflictError],
  // REFRESH_RATE_LIMITED: metadata.retry_after_seconds says when.
  [429, NexusUnavailableError],
  [502, NexusUnavailableError],
  [503, NexusUnavailableError],
  [504, NexusUnavailableError],
]);

/**
 * The error for a non-2xx answer, from its `google.rpc.Status` body when it has one.
 *
 * A body that is not that JSON (an HTML page from a proxy, say) still gives
 * the right class for its status, with a message of our own.
 */
export function errorFromResponse(status: number, statusText: string, body: string): NexusError {
  const cls = BY_STATUS.get(status) ?? NexusUnexpectedError;
  const parsed = statusBody(body);
  const message =
    parsed.message || `the Nexus gateway answered HTTP ${status} ${statusText || 'error'}`;
  return new cls(message, { status, reason: parsed.reason, metadata: parsed.metadata });
}

interface StatusBody {
  message: string;
  reason: string | null;
  metadata: Record<string, string>;
}

function statusBody(text: string): StatusBody {
  const none: StatusBody = { message: '', reason: null, metadata: {} };
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return none;
  }
  if (!isObject(body)) {
    return none;
  }
  const found: StatusBody = {
    ...none,
    message: typeof body['message'] === 'string' ? body['message'] : '',
  };
  const details = Array.isArray(body['details']) ? (body['details'] as unknown[]) : [];
  const info = details.find(
    (detail) => isObject(detail) && String(detail['@type'] ?? '').endsWith(ERROR_INFO_TYPE),
  );
  if (isObject(info)) {
    const reason = info['reason'];
    found.reason = typeof reason === 'string' && reason ? reason : null;
    const given = info['metadata'];
    if (isObject(given)) {
      found.metadata = Object.fromEntries(
        Object.entries(given).map(([key, value]) => [key, String(value)]),
      );
    }
  }
  return found;
}

/**
 * `NexusUnavailableError` for a failure to get any answer, or null when the
 * thrown value is not a transport failure (a bug in an injected `fetch`, say),
 * which the caller then rethrows as it is.
 *
 * fetch throws a DOMException named TimeoutError when `AbortSignal.timeout`
 * fires, and a TypeError ("fetch failed") whose cause has a code such as
 * ECONNREFUSED when the network fails. Only those names go into the message.
 */
export function transportError(origin: string, thrown: unknown): NexusUnavailableError | null {
  if (thrown instanceof Error && thrown.name === 'TimeoutError') {
    return new NexusUnavailableError(
      `the Nexus gateway at ${origin} did not answer in time (TimeoutError)`,
    );
  }
  if (thrown instanceof TypeError) {
    return new NexusUnavailableError(
      `could not reach the Nexus gateway at ${origin} (${failureCode(thrown)})`,
    );
  }
  return null;
}

function failureCode(thrown: Error): string {
  const code: unknown = isObject(thrown.cause) ? thrown.cause['code'] : undefined;
  // A code is an identifier such as ECONNREFUSED; anything else is not ours to print.
  return typeof code === 'string' && /^[A-Z][A-Z0-9_]*$/.test(code) ? code : thrown.name;
}
