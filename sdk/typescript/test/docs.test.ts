/**
 * The docs' TypeScript snippets, run as written against the real stack: only
 * the import path differs (the package is ours, not `@prescott/nexus-sdk`),
 * and the Salesforce API is the loopback IdP's userinfo endpoint, which
 * answers only to a valid access token.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { NexusClient } from '@nexus-broker/sdk';

import { stack, userinfoStatus, withEnv } from './support.js';

test('integrating agents: "Using the TypeScript SDK" fetches a token by connection id', async () => {
  // How the agent is deployed: its key in the environment, not in code.
  const restore = withEnv({ NEXUS_AGENT_KEY: stack.crmKey, NEXUS_API_KEY: undefined });
  const headers: Record<string, string> = {};
  try {
    // The snippet, with the gateway's and the connection's real values:
    const client = new NexusClient({ gatewayUrl: stack.gatewayUrl });
    const token = await client.getTokenByConnectionId(stack.connectionId);
    // Apply based on strategy type
    if (token.strategy.type === 'oauth2') {
      headers['Authorization'] = `Bearer ${token.credentials.access_token}`;
    }

    assert.equal(token.strategy.type, 'oauth2');
    assert.ok(!('refresh_token' in token.credentials));
    assert.equal(typeof token.expiresAt, 'number');
    assert.ok(token.expiresAt !== null && !token.expired({ leeway: 60 }));
    assert.equal(client.credential, 'agentKey');
  } finally {
    restore();
  }
  const answer = await fetch(`${stack.idpIssuer}/userinfo`, { headers });
  assert.equal(answer.status, 200);
});

test('agent sessions, Step 4 "In TypeScript": a read-only session reaches the provider and closes', async () => {
  const seen: string[] = [];
  const nexus = new NexusClient({
    gatewayUrl: stack.gatewayUrl,
    agentKey: stack.crmKey,
    // Records each request and its answer's status; the requests are real.
    fetch: async (input, init) => {
      const answer = await fetch(input, init);
      seen.push(`${init?.method} ${new URL(String(input)).pathname} ${answer.status}`);
      return answer;
    },
  });

  async function listContacts(): Promise<unknown> {
    const session = await nexus.requestAgentSession({
      agentId: 'crm-agent',
      provider: 'salesforce',
      scopes: ['crm:contacts:read'],
      ttl: 900,
    });
    try {
      const resp = await fetch(`${stack.idpIssuer}/userinfo`, {
        headers: { Authorization: `Bearer ${session.accessToken}` },
      });
      return resp.json();
    } finally {
      await nexus.closeAgentSession(session.sessionId);
    }
  }

  const contacts = await listContacts();
  // userinfo answers a subject only to a token it issued and that is still valid.
  assert.equal(typeof (contacts as { sub?: unknown }).sub, 'string');
  assert.equal(seen.length, 2);
  assert.equal(seen[0], 'POST /v1/agent-sessions 200');
  assert.match(seen[1] ?? '', /^DELETE \/v1\/agent-sessions\/[^/]+ 200$/);
  assert.equal(await userinfoStatus('not-a-token'), 401);
});
