/**
 * Each API call as data: the request to send and how to read the answer.
 *
 * Nothing here does I/O, so every rule about paths, bodies and answers is
 * in one place and mirrors the Python SDK's `_calls.py` line for line; the
 * client only sends.
 */

import { NexusUnexpectedError, errorFromResponse, type NexusError } from './errors.js';
import { isObject } from './json.js';
import {
  MalformedAnswer,
  agentSession,
  connection,
  object,
  tokenPayload,
  type AgentSession,
  type Connection,
  type TokenPayload,
} from './models.js';
import { INTROSPECT_PATH, introspection, type Introspection } from './rfc7662.js';

/** One JSON Web Key of the gateway's set (RFC 7517). */
export interface Jwk {
  readonly kty: string;
  readonly kid?: string;
  readonly alg?: string;
  readonly use?: string;
  readonly [member: string]: unknown;
}

/** The JWK Set that verifies session tokens. */
export interface JwkSet {
  readonly keys: readonly Jwk[];
}

/** What `requestAgentSession` takes; `ttl` is in whole seconds. */
export interface AgentSessionRequest {
  readonly agentId: string;
  readonly provider: string;
  readonly scopes: readonly string[];
  /** Whole seconds; defaults to the gateway's. */
  readonly ttl?: number | undefined;
  /** The connection to use; else the only active one for the provider (and workspace). */
  readonly connectionId?: string | undefined;
  readonly workspaceId?: string | undefined;
}

/** An agent session for an agent serving several signed-in users (an MCP server, say). */
export interface OwnedAgentSessionRequest extends AgentSessionRequest {
  /**
   * The calling user's token, as BACKEND_AUTH_URL accepts it: the connection must then be
   * that user's. The session still acts as the agent, with its scopes.
   */
  readonly ownerContextToken?: string | undefined;
}

/** What `requestOboSession` takes: an agent session's fields and the user's token. */
export interface OboSessionRequest extends AgentSessionRequest {
  /** The user's token, as the customer's backend (BACKEND_AUTH_URL) accepts it. */
  readonly userContextToken: string;
}

/** One request, and the function that turns its answer into a result or throws. */
export interface Call<T> {
  readonly method: 'GET' | 'POST' | 'DELETE';
  readonly path: string;
  readonly body?: Record<string, unknown>;
  /** Whether the caller's key is sent; public keys need none. */
  readonly auth: boolean;
  readonly read: (answer: Answer) => T;
}

/** An HTTP answer, its body read in full. */
export interface Answer {
  readonly status: number;
  readonly statusText: string;
  readonly body: string;
}

export function getToken(connectionId: string): Call<TokenPayload> {
  const path = `/v1/token/${segment(connectionId, 'connectionId')}`;
  return { method: 'GET', path, auth: true, read: reader(tokenPayload) };
}

export function refreshConnection(connectionId: string): Call<void> {
  const path = `/v1/refresh/${segment(connectionId, 'connectionId')}`;
  // The answer is the connection's status; callers want the fresh token after it.
  return { method: 'POST', path, auth: true, read: reader(nothing) };
}

export function checkConnection(connectionId: string): Call<Connection> {
  const path = `/v1/check-connection/${segment(connectionId, 'connectionId')}`;
  return { method: 'GET', path, auth: true, read: reader(connection) };
}

export function createAgentSession(request: OwnedAgentSessionRequest): Call<AgentSession> {
  const body = sessionBody(request);
  if (request.ownerContextToken !== undefined && request.ownerContextToken !== null) {
    body['owner_context_token'] = request.ownerContextToken;
  }
  return {
    method: 'POST',
    path: '/v1/agent-sessions',
    body,
    auth: true,
    read: reader(agentSession),
  };
}

export function createOboSession(request: OboSessionRequest): Call<AgentSession> {
  const body = sessionBody(request);
  body['user_context_token'] = request.userContextToken;
  return { method: 'POST', path: '/v1/obo-sessions', body, auth: true, read: reader(agentSession) };
}

export function closeAgentSession(sessionId: string): Call<void> {
  const path = `/v1/agent-sessions/${segment(sessionId, 'sessionId')}`;
  return { method: 'DELETE', path, auth: true, read: reader(nothing) };
}

export function introspectSession(token: string): Call<Introspection> {
  const body = { token };
  return { method: 'POST', path: INTROSPECT_PATH, body, auth: true, read: reader(introspection) };
}

export function getJwks(): Call<JwkSet> {
  // Public keys need no credential, so none is sent.
  return { method: 'GET', path: '/.well-known/jwks.json', auth: false, read: reader(jwkSet) };
}

/**
 * One path segment, percent-encoded so no id can change the path.
 *
 * `/`, `?` and `#` are encoded (and `!'()*`, as RFC 3986 and Python's
 * `quote(safe="")` do); `.` and `..` are refused, because clients and Envoy
 * (`normalize_path`) resolve them even when encoded.
 */
export function segment(value: unknown, name: string): string {
  if (typeof value !== 'string' || value === '' || value === '.' || value === '..') {
    throw new TypeError(`${name} must be a non-empty string other than '.' or '..'`);
  }
  let encoded: string;
  try {
    encoded = encodeURIComponent(value);
  } catch {
    // A lone UTF-16 surrogate has no UTF-8 form; the id itself is not echoed.
    throw new TypeError(`${name} must be well-formed Unicode`);
  }
  return encoded.replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function sessionBody(request: AgentSessionRequest): Record<string, unknown> {
  if (typeof request !== 'object' || request === null) {
    throw new TypeError('a session request is an object: { agentId, provider, scopes, ... }');
  }
  const { agentId, provider, scopes, ttl, connectionId, workspaceId } = request;
  if (typeof scopes === 'string') {
    // A bare string is a sequence of characters: almost certainly a bug.
    throw new TypeError('scopes must be a list of scope strings, not one string');
  }
  if (!Array.isArray(scopes)) {
    throw new TypeError('scopes must be a list of scope strings');
  }
  const body: Record<string, unknown> = { agent_id: agentId, provider, scopes: [...scopes] };
  if (ttl !== undefined && ttl !== null) {
    body['ttl_seconds'] = seconds(ttl);
  }
  if (connectionId !== undefined && connectionId !== null) {
    body['connection_id'] = connectionId;
  }
  if (workspaceId !== undefined && workspaceId !== null) {
    body['workspace_id'] = workspaceId;
  }
  return body;
}

function seconds(ttl: unknown): number {
  // Whole seconds; the range is the gateway's to enforce (it knows its maximum).
  if (typeof ttl !== 'number' || !Number.isSafeInteger(ttl)) {
    throw new TypeError('ttl must be a whole number of seconds');
  }
  return ttl;
}

function reader<T>(parse: (body: unknown) => T): (answer: Answer) => T {
  return (answer) => {
    if (answer.status < 200 || answer.status > 299) {
      throw errorFromResponse(answer.status, answer.statusText, answer.body);
    }
    let body: unknown;
    try {
      body = JSON.parse(answer.body);
    } catch {
      throw unexpected(answer);
    }
    try {
      return parse(body);
    } catch (error) {
      if (error instanceof MalformedAnswer) {
        throw unexpected(answer);
      }
      throw error;
    }
  };
}

function unexpected(answer: Answer): NexusError {
  return new NexusUnexpectedError(
    `the Nexus gateway answered HTTP ${answer.status} with a body that is not the documented JSON`,
    { status: answer.status },
  );
}

function nothing(body: unknown): void {
  object(body);
}

function jwkSet(body: unknown): JwkSet {
  if (!isObject(body) || !Array.isArray(body['keys'])) {
    throw new MalformedAnswer('keys');
  }
  return body as unknown as JwkSet;
}
