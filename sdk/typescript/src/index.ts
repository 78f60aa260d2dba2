/**
 * The Nexus TypeScript SDK: credentials and scoped sessions for agents, over
 * the gateway's REST API. It mirrors the Python SDK (`nexus_sdk`): the same
 * paths, checks, errors and key handling, with camelCase names.
 *
 *     import { NexusClient } from '@nexus-broker/sdk';
 *
 *     const client = new NexusClient({ gatewayUrl: 'https://nexus-gateway.example.com' });
 *     const token = await client.getTokenByConnectionId('conn_01HXYZ...');
 *     if (token.strategy.type === 'oauth2') {
 *       headers['Authorization'] = `Bearer ${token.credentials.access_token}`;
 *     }
 *
 * The caller's key comes from the options or, when none is given, from
 * `NEXUS_AGENT_KEY` (an agent) or `NEXUS_API_KEY` (an application backend).
 * Every failed call rejects with a `NexusError`; branch on its class or on its
 * stable `reason`.
 */

export { AppliedCredentials, UnsupportedStrategy, applyCredentials } from './apply.js';
export type {
  AgentSessionRequest,
  Jwk,
  JwkSet,
  OboSessionRequest,
  OwnedAgentSessionRequest,
} from './calls.js';
export { NexusClient } from './client.js';
export {
  NexusAuthError,
  NexusConflictError,
  NexusError,
  NexusInvalidRequestError,
  NexusNotFoundError,
  NexusUnavailableError,
  NexusUnexpectedError,
  type NexusErrorDetails,
} from './errors.js';
export {
  AgentSession,
  TokenPayload,
  type AgentSessionInit,
  type ApiKeyField,
  type Connection,
  type ExpiryCheck,
  type Strategy,
  type TokenPayloadInit,
} from './models.js';
export type { NexusClientOptions } from './options.js';
export { Introspection } from './rfc7662.js';
