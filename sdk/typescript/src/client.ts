/**
 * The client: it only sends the calls `calls.ts` describes, with the caller's
 * key, a deadline and no redirects, and turns failures to get any answer into
 * `NexusUnavailableError`.
 */

import * as calls from './calls.js';
import type { Answer, Call, JwkSet, OboSessionRequest, OwnedAgentSessionRequest } from './calls.js';
import { NexusUnexpectedError, transportError } from './errors.js';
import type { AgentSession, Connection, TokenPayload } from './models.js';
import { Settings, type NexusClientOptions } from './options.js';
import type { Introspection } from './rfc7662.js';

const USER_AGENT = 'nexus-sdk-typescript';

/**
 * A client for the Nexus gateway's REST API.
 *
 *     const nexus = new NexusClient({ gatewayUrl: 'https://nexus-gateway.example.com' });
 *     const token = await nexus.getTokenByConnectionId(connectionId);
 *
 * Failures reject with `NexusError` subclasses; arguments that could never
 * make a valid request (an empty id, `scopes` as one string) throw a
 * `TypeError` before anything is sent. Its key never shows in
 * `util.inspect`, `console.log` or `JSON.stringify`.
 */
export class NexusClient {
  /** The gateway URL this client sends to. */
  readonly gatewayUrl: string;
  /** Which key the client presents (never the key itself). */
  readonly credential: 'agentKey' | 'apiKey' | 'none';
  readonly timeoutSeconds: number;
  // The key lives only in here: private fields are invisible to util.inspect and JSON.
  readonly #settings: Settings;

  constructor(options: NexusClientOptions) {
    this.#settings = new Settings(options);
    this.gatewayUrl = this.#settings.gatewayUrl;
    this.credential = this.#settings.credential;
    this.timeoutSeconds = this.#settings.timeoutSeconds;
  }

  /** Credentials for one connection, fresh (the broker refreshes them). */
  async getTokenByConnectionId(connectionId: string): Promise<TokenPayload> {
    return this.#send(calls.getToken(connectionId));
  }

  /**
   * Refresh the connection's token at the provider now, and return it.
   * Rarely needed: the broker refreshes before expiry by itself.
   */
  async refreshConnection(connectionId: string): Promise<TokenPayload> {
    const token = calls.getToken(connectionId);
    await this.#send(calls.refreshConnection(connectionId));
    return this.#send(token);
  }

  /**
   * The connection's status (`GET /v1/check-connection/{id}`): `active`, or
   * `pending` until the user finishes connecting, `attention` when re-consent
   * is needed, `failed`, `revoked`... An application backend's call: it needs
   * the admin `apiKey`.
   */
  async checkConnection(connectionId: string): Promise<Connection> {
    return this.#send(calls.checkConnection(connectionId));
  }

  /**
   * A session limited to `scopes`, which must be within the agent's allowed
   * scopes. `ttl` (seconds) defaults to the gateway's; the connection is the
   * one named, else the only active one for the provider (and workspace).
   */
  async requestAgentSession(request: OwnedAgentSessionRequest): Promise<AgentSession> {
    return this.#send(calls.createAgentSession(request));
  }

  /**
   * A session on behalf of the user whose token is given. Rejects with
   * `NexusAuthError` (`USER_PERMISSION_MISSING`) when the user lacks a scope,
   * and (`AGENT_SCOPE_NOT_ALLOWED`) when the agent does.
   */
  async requestOboSession(request: OboSessionRequest): Promise<AgentSession> {
    return this.#send(calls.createOboSession(request));
  }

  /** End a session (agent or OBO) early; closing twice is harmless. */
  async closeAgentSession(sessionId: string): Promise<void> {
    return this.#send(calls.closeAgentSession(sessionId));
  }

  /** Whether a session token is still active, and its claims (RFC 7662). */
  async introspectSession(token: string): Promise<Introspection> {
    return this.#send(calls.introspectSession(token));
  }

  /** The JWK Set that verifies session tokens; needs no credential. */
  async jwks(): Promise<JwkSet> {
    return this.#send(calls.getJwks());
  }

  async #send<T>(call: Call<T>): Promise<T> {
    const settings = this.#settings;
    const headers: Record<string, string> = {
      Accept: 'application/json',
      'User-Agent': USER_AGENT,
    };
    if (call.body !== undefined) headers['Content-Type'] = 'application/json';
    if (call.auth) Object.assign(headers, settings.authHeaders());
    // Built before sending, so a body that cannot be JSON fails as itself,
    // not as a network failure.
    const init: RequestInit = {
      method: call.method,
      headers,
      ...(call.body === undefined ? {} : { body: JSON.stringify(call.body) }),
      // The gateway never redirects API calls, and following one would send
      // the caller's key somewhere else: a 3xx is read as an unexpected answer.
      redirect: 'manual',
      // One deadline for the whole exchange, the body included.
      signal: AbortSignal.timeout(settings.timeoutSeconds * 1000),
    };
    let answer: Answer;
    try {
      const response = await settings.fetch(settings.baseUrl + call.path, init);
      if (response.redirected) {
        // An injected fetch that ignored `redirect: 'manual'`: what answered
        // is not the gateway, so its answer is not used.
        await response.body?.cancel();
        throw new NexusUnexpectedError(
          `the fetch given to NexusClient followed a redirect away from ${settings.origin}; ` +
            "it must keep redirect: 'manual'",
        );
      }
      answer = {
        status: response.status,
        statusText: response.statusText,
        body: await response.text(),
      };
    } catch (thrown) {
      throw transportError(settings.origin, thrown) ?? thrown;
    }
    return call.read(answer);
  }
}
