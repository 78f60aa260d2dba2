/**
 * What the tests share: the real stack's addresses and keys (set by
 * tests/e2e/test_typescript_sdk.py, which starts the stack), and small helpers
 * that talk to the real IdP and app server around it.
 */

import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

import { NexusClient } from '@nexus-broker/sdk';

function need(name: string): string {
  const value = process.env[name];
  if (!value) {
    // Fail, never skip: a test that cannot reach the stack has not passed.
    throw new Error(`${name} is not set; run these tests through tests/e2e/test_typescript_sdk.py`);
  }
  return value;
}

/** The stack and what the agent-sessions guide's Steps 1-3 left behind. */
export const stack = {
  gatewayUrl: need('NEXUS_TS_GATEWAY_URL'),
  adminKey: need('NEXUS_TS_ADMIN_KEY'),
  crmKey: need('NEXUS_TS_CRM_KEY'),
  opsKey: need('NEXUS_TS_OPS_KEY'),
  /** sarah's Salesforce (oauth2) connection. */
  connectionId: need('NEXUS_TS_CONNECTION_ID'),
  /** An api_key connection to the app server's API (key in the X-Api-Key header). */
  apiKeyConnectionId: need('NEXUS_TS_API_KEY_CONNECTION_ID'),
  /** A basic_auth connection to the same API. */
  basicConnectionId: need('NEXUS_TS_BASIC_CONNECTION_ID'),
  /** The provider API: GET /api/me answers 200 only to the right credentials. */
  appUrl: need('NEXUS_TS_APP_URL'),
  /** The loopback OAuth server standing in for Salesforce. */
  idpIssuer: need('NEXUS_TS_IDP_ISSUER'),
  /** A user with acme:gliding and acme:treasury, tenant acme-eu, clearance secret, who
   * owns sarah's workspace. */
  permittedUserToken: need('NEXUS_TS_PERMITTED_USER_TOKEN'),
  /** A user with acme:flaring only. */
  unpermittedUserToken: need('NEXUS_TS_UNPERMITTED_USER_TOKEN'),
};

export function asAgent(key: string): NexusClient {
  return new NexusClient({ gatewayUrl: stack.gatewayUrl, agentKey: key });
}

export function asAdmin(): NexusClient {
  return new NexusClient({ gatewayUrl: stack.gatewayUrl, apiKey: stack.adminKey });
}

/** What the provider says to a token: its userinfo endpoint checks it. */
export async function userinfoStatus(accessToken: string): Promise<number> {
  const answer = await fetch(`${stack.idpIssuer}/userinfo`, {
    headers: { Authorization: `Bearer ${accessToken}` },
  });
  await answer.arrayBuffer();
  return answer.status;
}

/** How many refresh_token grants the IdP has served. */
export async function idpRefreshes(): Promise<number> {
  const answer = await fetch(`${stack.idpIssuer}/__control/stats`);
  const stats = (await answer.json()) as { token_calls: Record<string, number> };
  return stats.token_calls['refresh_token'] ?? 0;
}

/** Sets environment variables for one test and restores them after it. */
export function withEnv(values: Record<string, string | undefined>): () => void {
  const saved = Object.fromEntries(Object.keys(values).map((name) => [name, process.env[name]]));
  const apply = (entries: Record<string, string | undefined>): void => {
    for (const [name, value] of Object.entries(entries)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  };
  apply(values);
  return () => apply(saved);
}

export type Handler = (request: IncomingMessage, response: ServerResponse) => void;

/** A real HTTP server on loopback; `url` is its base and `close` stops it. */
export interface Loopback {
  readonly url: string;
  readonly server: Server;
  close(): Promise<void>;
}

export async function serve(handler: Handler): Promise<Loopback> {
  const server = createServer(handler);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    server,
    close: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}

/** A loopback port with nothing listening on it. */
export async function stoppedUrl(): Promise<string> {
  const idle = await serve(() => undefined);
  await idle.close();
  return idle.url;
}
