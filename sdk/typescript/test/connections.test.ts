/**
 * Connections through the real stack: tokens by connection id with a key from
 * the environment, refreshing at the real IdP, the connection's status, and
 * applying each strategy's credentials to a request that the real provider
 * API (the IdP's userinfo, the app server's /api/me) then accepts.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { inspect } from 'node:util';

import {
  NexusAuthError,
  NexusClient,
  NexusNotFoundError,
  TokenPayload,
  UnsupportedStrategy,
  applyCredentials,
  type Strategy,
} from '@nexus-broker/sdk';

import { asAdmin, asAgent, idpRefreshes, stack, userinfoStatus, withEnv } from './support.js';

async function appMe(headers: Record<string, string>): Promise<number> {
  const answer = await fetch(`${stack.appUrl}/api/me`, { headers });
  await answer.arrayBuffer();
  return answer.status;
}

test('an app backend gets a token with its api key from NEXUS_API_KEY', async () => {
  const restore = withEnv({ NEXUS_AGENT_KEY: undefined, NEXUS_API_KEY: stack.adminKey });
  let client;
  try {
    client = new NexusClient({ gatewayUrl: stack.gatewayUrl });
  } finally {
    restore();
  }
  assert.equal(client.credential, 'apiKey');
  const token = await client.getTokenByConnectionId(stack.connectionId);
  assert.equal(token.strategy.type, 'oauth2');
  assert.equal(await userinfoStatus(String(token.credentials['access_token'])), 200);
});

test('refreshConnection refreshes at the provider once and returns the fresh token', async () => {
  const before = await idpRefreshes();
  const fresh = await asAgent(stack.crmKey).refreshConnection(stack.connectionId);
  // The broker's own loop may refresh too, but never fewer than the one asked for.
  assert.ok((await idpRefreshes()) >= before + 1);
  assert.deepEqual(fresh.strategy, { type: 'oauth2' });
  assert.ok(fresh.expiresAt !== null && !fresh.expired());
  assert.equal(await userinfoStatus(String(fresh.credentials['access_token'])), 200);
});

test('checkConnection reports an active connection to the admin key, and only to it', async () => {
  const checked = await asAdmin().checkConnection(stack.connectionId);
  assert.equal(checked.connectionId, stack.connectionId);
  assert.equal(checked.status, 'active');
  assert.equal(checked.providerName, 'salesforce');
  assert.equal(checked.workspaceId, 'user_sarah');
  assert.deepEqual(checked.scopes, ['crm:contacts:read', 'crm:contacts:write']);
  assert.equal(checked.lastError, '');
  assert.ok(checked.createTime !== null && checked.createTime <= Date.now() / 1000);

  await assert.rejects(asAdmin().checkConnection('conn_01HXYZ'), (error: unknown) => {
    assert.ok(error instanceof NexusNotFoundError);
    assert.deepEqual([error.status, error.reason], [404, 'CONNECTION_NOT_FOUND']);
    return true;
  });
  await assert.rejects(
    asAgent(stack.crmKey).checkConnection(stack.connectionId),
    (error: unknown) => {
      assert.ok(error instanceof NexusAuthError);
      // Agent keys are not admin credentials: the gateway does not know the caller here.
      assert.deepEqual([error.status, error.reason], [401, 'UNAUTHENTICATED']);
      return true;
    },
  );
});

test('applyCredentials: oauth2 is a Bearer header the provider accepts', async () => {
  const token = await asAgent(stack.crmKey).getTokenByConnectionId(stack.connectionId);
  const applied = applyCredentials(token);
  assert.deepEqual(Object.keys(applied.headers), ['Authorization']);
  assert.deepEqual([applied.query, applied.body], [{}, {}]);
  const answer = await fetch(`${stack.idpIssuer}/userinfo`, { headers: applied.headers });
  assert.equal(answer.status, 200);
});

test('applyCredentials: api_key goes in the header the provider schema names', async () => {
  const token = await asAdmin().getTokenByConnectionId(stack.apiKeyConnectionId);
  assert.equal(token.strategy.type, 'api_key');
  assert.equal(token.expiresAt, null);
  assert.ok(!token.expired());
  const applied = applyCredentials(token);
  assert.deepEqual(Object.keys(applied.headers), ['X-Api-Key']);
  assert.equal(await appMe(applied.headers), 200);
  assert.equal(await appMe({ 'X-Api-Key': 'not-the-key' }), 401);
});

test('applyCredentials: basic_auth is a Basic header the provider accepts', async () => {
  const token = await asAdmin().getTokenByConnectionId(stack.basicConnectionId);
  assert.equal(token.strategy.type, 'basic_auth');
  const applied = applyCredentials(token);
  assert.match(applied.headers['Authorization'] ?? '', /^Basic [A-Za-z0-9+/=]+$/);
  assert.equal(await appMe(applied.headers), 200);
  assert.equal(await appMe({ Authorization: 'Basic bm90Om1l' }), 401);
});

test('applyCredentials: api_key fields go to the query and the body when the schema says so', () => {
  const strategy: Strategy = {
    type: 'api_key',
    fields: [
      { name: 'api_key', in: 'header', key: 'X-API-Key' },
      { name: 'account', in: 'query', key: 'acct' },
      { name: 'signature', in: 'body', key: 'sig' },
    ],
  };
  const token = new TokenPayload({
    strategy,
    credentials: { api_key: 'k-1', account: 42, signature: 's-1' },
  });
  const applied = applyCredentials(token);
  assert.deepEqual(applied.headers, { 'X-API-Key': 'k-1' });
  assert.deepEqual(applied.query, { acct: '42' });
  assert.deepEqual(applied.body, { sig: 's-1' });
  for (const shown of [
    inspect(applied, { showHidden: true }),
    JSON.stringify(applied),
    inspect(token),
  ]) {
    assert.ok(!shown.includes('k-1') && !shown.includes('s-1'));
  }
});

test('applyCredentials: a strategy not known here is refused', () => {
  const unknown: Strategy[] = [
    { type: 'aws_sigv4' },
    { type: 'api_key', fields: [{ name: 'k', in: 'cookie', key: 'k' }] },
    { type: 'api_key', fields: [{ name: 'absent', in: 'header', key: 'X-Key' }] },
  ];
  for (const strategy of unknown) {
    const token = new TokenPayload({ strategy, credentials: { k: 'v' } });
    assert.throws(() => applyCredentials(token), UnsupportedStrategy);
  }
});
