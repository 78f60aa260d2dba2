/**
 * What the gateway hands an agent: connection tokens, sessions and a
 * connection's status. Values only: no I/O.
 *
 * Tokens and credentials live in private fields behind getters, so
 * `util.inspect`, `console.log` and `JSON.stringify` of a result never show
 * them: a result can be logged or land in an error report without leaking.
 * The same shapes and checks as the Python SDK's `_models.py`, in camelCase,
 * except inside `credentials`, which holds the provider's own field names.
 */

import { isObject, type JsonObject } from './json.js';

/** A 2xx body that is not the documented shape; the client reports it as unexpected. */
export class MalformedAnswer extends Error {}

/** Where an `api_key` strategy puts one credential field. */
export interface ApiKeyField {
  /** The field's name in `credentials`. */
  readonly name: string;
  /** `header`, `query` or `body`. */
  readonly in: string;
  /** The header, query parameter or body field name to use. */
  readonly key: string;
}

/** How to apply a token's credentials: `oauth2`, `basic_auth` or `api_key` (with `fields`). */
export interface Strategy {
  readonly type: string;
  readonly fields?: readonly ApiKeyField[];
  readonly [detail: string]: unknown;
}

/** Options of `expired()`. */
export interface ExpiryCheck {
  /** Unix seconds; defaults to the clock. */
  readonly now?: number;
  /** Seconds before expiry to count as expired already. */
  readonly leeway?: number;
}

function expired(expiresAt: number | null, check: ExpiryCheck): boolean {
  if (expiresAt === null) return false;
  return (check.now ?? Date.now() / 1000) + (check.leeway ?? 0) >= expiresAt;
}

/** What `new TokenPayload(...)` takes (as `getTokenByConnectionId` builds it). */
export interface TokenPayloadInit {
  readonly strategy: Strategy;
  readonly credentials: Readonly<Record<string, unknown>>;
  readonly expiresAt?: number | null;
}

/**
 * Credentials for calls to a provider through one connection (`GET /v1/token/{id}`).
 *
 * `strategy.type` says how to apply `credentials`: `oauth2` (a Bearer
 * `access_token`), `basic_auth` (`username`/`password`) or `api_key` (the
 * fields listed in `strategy.fields`, each with where it goes). Never holds a
 * refresh token.
 */
export class TokenPayload {
  readonly strategy: Strategy;
  /** Unix seconds; null for credentials that do not expire. */
  readonly expiresAt: number | null;
  readonly #credentials: Readonly<Record<string, unknown>>;

  constructor(init: TokenPayloadInit) {
    this.strategy = Object.freeze({ ...init.strategy });
    this.#credentials = Object.freeze({ ...init.credentials });
    this.expiresAt = init.expiresAt ?? null;
  }

  /** The provider's credential fields, e.g. `credentials.access_token`. */
  get credentials(): Readonly<Record<string, unknown>> {
    return this.#credentials;
  }

  /**
   * Whether to fetch again: re-fetching with `{ leeway: 300 }` (five minutes)
   * before expiry is the documented safe habit. The broker keeps tokens
   * fresh, so a new fetch is cheap.
   */
  expired(check: ExpiryCheck = {}): boolean {
    return expired(this.expiresAt, check);
  }
}

/**
 * A scoped grant to one agent for one provider (`POST /v1/agent-sessions` or
 * `/v1/obo-sessions`). Close it with `closeAgentSession(sessionId)` when the
 * work is done.
 *
 * `accessToken` is what to send to the provider: the provider's token for
 * OAuth providers, `sessionToken` itself for internal (`nexus`) ones.
 * `sessionToken` is a JWT signed by Nexus (verify it with `jwks()`).
 * On-behalf-of sessions set `actingFor`, `tenantId` and `clearanceLevel` from
 * the user's context, for the downstream service to enforce; they are empty
 * strings otherwise.
 *
 * `tokenScopes` is what `accessToken` really carries: `scopes`, unless the
 * provider cannot narrow its tokens and is allowed to hand out broader ones,
 * when it names the connection's whole grant.
 */
/** What `new AgentSession(...)` takes (as `requestAgentSession` builds it). */
export interface AgentSessionInit {
  readonly sessionId: string;
  readonly accessToken: string;
  readonly tokenType: string;
  readonly expiresAt: number;
  readonly scopes: readonly string[];
  readonly provider: string;
  readonly connectionId: string;
  readonly sessionToken: string;
  readonly agentId: string;
  readonly actingFor: string;
  readonly tenantId: string;
  readonly clearanceLevel: string;
  readonly tokenScopes: readonly string[];
}

/**
 * A scoped grant to one agent for one provider (`POST /v1/agent-sessions` or
 * `/v1/obo-sessions`). Close it with `closeAgentSession(sessionId)` when the
 * work is done.
 *
 * `accessToken` is what to send to the provider: the provider's token for
 * OAuth providers, `sessionToken` itself for internal (`nexus`) ones.
 * `sessionToken` is a JWT signed by Nexus (verify it with `jwks()`).
 * On-behalf-of sessions set `actingFor`, `tenantId` and `clearanceLevel` from
 * the user's context, for the downstream service to enforce; they are empty
 * strings otherwise.
 *
 * `tokenScopes` is what `accessToken` really carries: `scopes`, unless the
 * provider cannot narrow its tokens and is allowed to hand out broader ones,
 * when it names the connection's whole grant.
 */
export class AgentSession {
  readonly sessionId: string;
  readonly tokenType: string;
  /** Unix seconds; never later than the credential behind the session expires. */
  readonly expiresAt: number;
  readonly scopes: readonly string[];
  readonly provider: string;
  readonly connectionId: string;
  readonly agentId: string;
  readonly actingFor: string;
  readonly tenantId: string;
  readonly clearanceLevel: string;
  readonly tokenScopes: readonly string[];
  readonly #accessToken: string;
  readonly #sessionToken: string;

  constructor(init: AgentSessionInit) {
    this.sessionId = init.sessionId;
    this.#accessToken = init.accessToken;
    this.tokenType = init.tokenType;
    this.expiresAt = init.expiresAt;
    this.scopes = Object.freeze([...init.scopes]);
    this.provider = init.provider;
    this.connectionId = init.connectionId;
    this.#sessionToken = init.sessionToken;
    this.agentId = init.agentId;
    this.actingFor = init.actingFor;
    this.tenantId = init.tenantId;
    this.clearanceLevel = init.clearanceLevel;
    this.tokenScopes = Object.freeze([...init.tokenScopes]);
  }

  /** What to send to the provider, e.g. as `Authorization: Bearer`. */
  get accessToken(): string {
    return this.#accessToken;
  }

  /** The session's JWT, signed by Nexus. */
  get sessionToken(): string {
    return this.#sessionToken;
  }

  /**
   * Whether the session has ended by time. A session closed early is not
   * detected here: ask `introspectSession`.
   */
  expired(check: ExpiryCheck = {}): boolean {
    return expired(this.expiresAt, check);
  }
}

/**
 * A connection as `GET /v1/check-connection/{id}` reports it. `status` is
 * `pending`, `unconfirmed`, `active`, `attention` (re-consent needed),
 * `failed`, `revoked` or `expired`. Times are Unix seconds (with the
 * fraction the gateway gave), null when not set.
 */
export interface Connection {
  readonly connectionId: string;
  readonly workspaceId: string;
  readonly providerId: string;
  readonly providerName: string;
  readonly status: string;
  readonly scopes: readonly string[];
  readonly createTime: number | null;
  readonly lastRefreshedAt: number | null;
  readonly nextRefreshAt: number | null;
  /** Why the last refresh (or the connection) failed, in words; never a provider's body. */
  readonly lastError: string;
  readonly expireTime: number | null;
}

export function tokenPayload(body: unknown): TokenPayload {
  const data = object(body);
  const strategy = object(data['strategy']);
  if (typeof strategy['type'] !== 'string') {
    throw new MalformedAnswer('strategy.type');
  }
  const expiresAt = data['expires_at'];
  return new TokenPayload({
    strategy: strategy as Strategy,
    credentials: object(data['credentials']),
    expiresAt:
      expiresAt === undefined || expiresAt === null ? null : unixSeconds(expiresAt, 'expires_at'),
  });
}

export function agentSession(body: unknown): AgentSession {
  const data = object(body);
  return new AgentSession({
    sessionId: text(data, 'session_id', true),
    accessToken: text(data, 'access_token', true),
    tokenType: text(data, 'token_type'),
    expiresAt: unixSeconds(data['expires_at'], 'expires_at'),
    scopes: texts(data, 'scopes'),
    provider: text(data, 'provider'),
    connectionId: text(data, 'connection_id'),
    sessionToken: text(data, 'session_token'),
    agentId: text(data, 'agent_id'),
    actingFor: text(data, 'acting_for'),
    tenantId: text(data, 'tenant_id'),
    clearanceLevel: text(data, 'clearance_level'),
    tokenScopes: texts(data, 'token_scopes'),
  });
}

export function connection(body: unknown): Connection {
  const data = object(body);
  return Object.freeze({
    connectionId: text(data, 'connection_id', true),
    workspaceId: text(data, 'workspace_id'),
    providerId: text(data, 'provider_id'),
    providerName: text(data, 'provider_name'),
    status: text(data, 'status', true),
    scopes: texts(data, 'scopes'),
    createTime: timestamp(data, 'create_time'),
    lastRefreshedAt: timestamp(data, 'last_refreshed_at'),
    nextRefreshAt: timestamp(data, 'next_refresh_at'),
    lastError: text(data, 'last_error'),
    expireTime: timestamp(data, 'expire_time'),
  });
}

export function object(value: unknown): JsonObject {
  if (!isObject(value)) {
    throw new MalformedAnswer('expected a JSON object');
  }
  return value;
}

function text(data: JsonObject, name: string, required = false): string {
  const value = data[name] ?? '';
  if (typeof value !== 'string' || (required && !value)) {
    throw new MalformedAnswer(name);
  }
  return value;
}

function texts(data: JsonObject, name: string): readonly string[] {
  const values = data[name] ?? [];
  if (!Array.isArray(values) || !values.every((value) => typeof value === 'string')) {
    throw new MalformedAnswer(name);
  }
  return Object.freeze([...(values as string[])]);
}

function unixSeconds(value: unknown, name: string): number {
  // proto3 JSON prints 64-bit integers as strings; accept both spellings.
  if (typeof value === 'number' && Number.isSafeInteger(value)) {
    return value;
  }
  if (typeof value === 'string' && /^[0-9]+$/.test(value) && Number.isSafeInteger(Number(value))) {
    return Number(value);
  }
  throw new MalformedAnswer(name);
}

function timestamp(data: JsonObject, name: string): number | null {
  // proto3 JSON prints a Timestamp as RFC 3339 and leaves an unset one out.
  const value = data[name];
  if (value === undefined || value === null) return null;
  const millis = typeof value === 'string' ? Date.parse(value) : Number.NaN;
  if (Number.isNaN(millis)) {
    throw new MalformedAnswer(name);
  }
  return millis / 1000;
}
