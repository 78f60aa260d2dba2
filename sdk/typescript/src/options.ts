/**
 * How a client reaches the gateway and which credential it presents.
 *
 * `agentKey` is an agent's own key, sent as `Authorization: Bearer`; `apiKey`
 * is an admin key for application backends, sent as `X-API-Key`. When neither
 * is given they are read from `NEXUS_AGENT_KEY` and `NEXUS_API_KEY`, so agent
 * code never has to carry a key in source. Giving both is refused: the gateway
 * would act on the admin key, and an agent silently running with admin rights
 * is the mistake to prevent. Plain `http://` is accepted only to this machine:
 * a key sent in clear elsewhere is readable on the way. The same rules as the
 * Python SDK's `_options.py`.
 */

export const AGENT_KEY_ENV = 'NEXUS_AGENT_KEY';
export const API_KEY_ENV = 'NEXUS_API_KEY';

/** What `new NexusClient(options)` takes. */
export interface NexusClientOptions {
  /** The gateway's REST base URL, e.g. `https://nexus-gateway.example.com`. */
  readonly gatewayUrl: string;
  /** An agent's key; defaults to `NEXUS_AGENT_KEY` when neither key is given. */
  readonly agentKey?: string | undefined;
  /** An admin key (application backends); defaults to `NEXUS_API_KEY` likewise. */
  readonly apiKey?: string | undefined;
  /** Per call, from sending to the last byte of the answer. Default 10. */
  readonly timeoutSeconds?: number | undefined;
  /**
   * Send through this `fetch` instead of the global one (a proxy's dispatcher,
   * mTLS, instrumentation). It is given `redirect: 'manual'` and must keep it:
   * following a redirect would send the caller's key elsewhere, and an answer
   * it reached through one is refused.
   */
  readonly fetch?: typeof globalThis.fetch | undefined;
}

// Sent as a header value: printable ASCII without spaces, so fetch never has to
// reject it (its error would quote the value).
const KEY_PATTERN = /^[\x21-\x7e]+$/;

/** Validated options: where to send, how long to wait, and the credential headers. */
export class Settings {
  readonly gatewayUrl: string;
  /** The gateway URL without a trailing slash, so paths can be appended. */
  readonly baseUrl: string;
  /** `scheme://host[:port]`, safe for messages (no user info, no path). */
  readonly origin: string;
  readonly timeoutSeconds: number;
  readonly #agentKey: string | undefined;
  readonly #apiKey: string | undefined;
  readonly #fetch: typeof globalThis.fetch | undefined;

  constructor(options: NexusClientOptions) {
    if (typeof options !== 'object' || options === null) {
      throw new TypeError('NexusClient takes an options object: { gatewayUrl, ... }');
    }
    const url = parseGatewayUrl(options.gatewayUrl);
    this.gatewayUrl = options.gatewayUrl;
    this.baseUrl = options.gatewayUrl.replace(/\/+$/, '');
    this.origin = url.origin;
    this.timeoutSeconds = options.timeoutSeconds ?? 10;
    if (typeof this.timeoutSeconds !== 'number' || !(this.timeoutSeconds > 0)) {
      throw new TypeError('timeoutSeconds must be a positive number');
    }
    let { agentKey, apiKey } = options;
    if (agentKey === undefined && apiKey === undefined) {
      agentKey = fromEnvironment(AGENT_KEY_ENV);
      apiKey = fromEnvironment(API_KEY_ENV);
    }
    if (agentKey !== undefined && apiKey !== undefined) {
      throw new TypeError(
        'give agentKey or apiKey, not both ' +
          `(check the ${AGENT_KEY_ENV} and ${API_KEY_ENV} environment variables)`,
      );
    }
    this.#agentKey = checkedKey(agentKey, 'agentKey');
    this.#apiKey = checkedKey(apiKey, 'apiKey');
    if (options.fetch !== undefined && typeof options.fetch !== 'function') {
      throw new TypeError('fetch must be a function like the global fetch');
    }
    this.#fetch = options.fetch;
  }

  /** Which credential is set, never its value: for inspect output. */
  get credential(): 'agentKey' | 'apiKey' | 'none' {
    if (this.#agentKey !== undefined) return 'agentKey';
    return this.#apiKey !== undefined ? 'apiKey' : 'none';
  }

  /** The caller credential as the gateway expects it; empty without one. */
  authHeaders(): Record<string, string> {
    if (this.#agentKey !== undefined) return { Authorization: `Bearer ${this.#agentKey}` };
    if (this.#apiKey !== undefined) return { 'X-API-Key': this.#apiKey };
    return {};
  }

  /** The injected fetch, else the global one at the time of the call. */
  get fetch(): typeof globalThis.fetch {
    return this.#fetch ?? globalThis.fetch;
  }
}

function parseGatewayUrl(gatewayUrl: unknown): URL {
  let url: URL;
  try {
    url = new URL(String(gatewayUrl));
  } catch {
    throw new TypeError('gatewayUrl must be an http:// or https:// URL with a host');
  }
  if (typeof gatewayUrl !== 'string' || !['http:', 'https:'].includes(url.protocol)) {
    throw new TypeError('gatewayUrl must be an http:// or https:// URL with a host');
  }
  if (!url.hostname) {
    throw new TypeError('gatewayUrl must be an http:// or https:// URL with a host');
  }
  if (url.protocol === 'http:' && !isLoopbackHost(url.hostname)) {
    throw new TypeError(
      'gatewayUrl must use https: plain http is allowed only to localhost, 127.0.0.0/8 or ::1, ' +
        'because the key would travel unencrypted',
    );
  }
  if (url.search || url.hash || /[?#]/.test(gatewayUrl)) {
    throw new TypeError('gatewayUrl must not have a query or a fragment');
  }
  if (url.username || url.password) {
    // It would be printed wherever the URL is; keys go in agentKey or apiKey.
    throw new TypeError('gatewayUrl must not hold credentials; use agentKey or apiKey');
  }
  return url;
}

/** `localhost` or a loopback address, as the WHATWG URL parser writes a host. */
function isLoopbackHost(hostname: string): boolean {
  // IPv4 is always four decimal numbers there (127.1 becomes 127.0.0.1), IPv6 compressed.
  return hostname === 'localhost' || hostname === '[::1]' || /^127(\.\d{1,3}){3}$/.test(hostname);
}

function fromEnvironment(name: string): string | undefined {
  // An empty variable is an unset one, as a shell's `export NAME=` usually means.
  return globalThis.process?.env[name] || undefined;
}

function checkedKey(key: string | undefined, name: string): string | undefined {
  if (key === undefined) return undefined;
  if (typeof key !== 'string' || !KEY_PATTERN.test(key)) {
    // The value itself is never echoed: it is a secret, however malformed.
    throw new TypeError(`${name} must be a non-empty string of printable ASCII without spaces`);
  }
  return key;
}
