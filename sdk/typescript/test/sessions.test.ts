/**
 * Agent and on-behalf-of sessions through the real stack: scopes checked
 * against the agent's allowed scopes and the user's permissions (from the
 * real backend behind BACKEND_AUTH_URL), introspection before and after
 * close, and the session token verified with the gateway's JWK Set using
 * nothing but Node's WebCrypto.
 */

import assert from 'node:assert/strict';
import { webcrypto } from 'node:crypto';
import { test } from 'node:test';

import {
  NexusAuthError,
  NexusClient,
  NexusNotFoundError,
  type AgentSession,
  type JwkSet,
} from '@nexus-broker/sdk';

import { asAgent, stack, userinfoStatus } from './support.js';

const crm = asAgent(stack.crmKey);
const ops = asAgent(stack.opsKey);

/** The guide's internal service: it trusts what the OBO session stamped. */
const internalOps = {
  glide(customerIds: string[], tenantId: string, clearanceLevel: string) {
    return { glided: customerIds, tenantId, clearanceLevel };
  },
};

/** Step 5's run_gliding, in TypeScript; `opened` collects each session it got. */
async function runGliding(
  userToken: string,
  customerIds: string[],
  opened: AgentSession[],
  scope = 'acme:gliding',
) {
  // Rejects with NexusAuthError if the user does not have the permission
  const obo = await ops.requestOboSession({
    agentId: 'ops-agent',
    provider: 'internal-ops',
    scopes: [scope],
    userContextToken: userToken,
  });
  opened.push(obo);
  try {
    return internalOps.glide(customerIds, obo.tenantId, obo.clearanceLevel);
  } finally {
    await ops.closeAgentSession(obo.sessionId);
  }
}

test('a read-only session reaches the provider, is active until closed, and closing twice is harmless', async () => {
  const session = await crm.requestAgentSession({
    agentId: 'crm-agent',
    provider: 'salesforce',
    scopes: ['crm:contacts:read'],
  });
  let active;
  try {
    assert.equal(await userinfoStatus(session.accessToken), 200);
    active = await crm.introspectSession(session.sessionToken);
  } finally {
    await crm.closeAgentSession(session.sessionId);
  }
  assert.deepEqual(
    [session.agentId, session.provider, session.tokenType],
    ['crm-agent', 'salesforce', 'Bearer'],
  );
  assert.deepEqual(session.scopes, ['crm:contacts:read']);
  assert.equal(session.connectionId, stack.connectionId);
  assert.equal(session.actingFor, '');
  assert.ok(!session.expired() && session.expired({ now: session.expiresAt }));
  assert.ok(active.active);
  assert.deepEqual(active.scopes, ['crm:contacts:read']);
  assert.equal(active.claims['client_id'], 'crm-agent');
  assert.equal(active.claims['jti'], session.sessionId);

  const closed = await crm.introspectSession(session.sessionToken);
  assert.deepEqual([closed.active, closed.claims, closed.scopes], [false, {}, []]);
  await crm.closeAgentSession(session.sessionId);
});

test("an agent serving a user reaches that user's connection, and another's reads as absent", async () => {
  const asked = {
    agentId: 'crm-agent',
    provider: 'salesforce',
    scopes: ['crm:contacts:read'],
    connectionId: stack.connectionId,
  };
  const owned = await crm.requestAgentSession({
    ...asked,
    ownerContextToken: stack.permittedUserToken,
  });
  try {
    assert.equal(owned.connectionId, stack.connectionId);
    assert.equal(owned.actingFor, ''); // the agent's own session, confined to the user's
  } finally {
    await crm.closeAgentSession(owned.sessionId);
  }
  await assert.rejects(
    crm.requestAgentSession({ ...asked, ownerContextToken: stack.unpermittedUserToken }),
    (error: unknown) =>
      error instanceof NexusNotFoundError && error.reason === 'CONNECTION_NOT_FOUND',
  );
});

test('the crm agent cannot widen its scopes', async () => {
  await assert.rejects(
    crm.requestAgentSession({
      agentId: 'crm-agent',
      provider: 'salesforce',
      scopes: ['crm:contacts:write'],
    }),
    (error: unknown) => {
      assert.ok(error instanceof NexusAuthError);
      assert.deepEqual([error.status, error.reason], [403, 'AGENT_SCOPE_NOT_ALLOWED']);
      assert.ok(error.metadata['denied_scopes']?.includes('crm:contacts:write'));
      return true;
    },
  );
});

test('ttl is seconds: a 900 second session ends within 15 minutes', async () => {
  const before = Math.floor(Date.now() / 1000);
  const session = await crm.requestAgentSession({
    agentId: 'crm-agent',
    provider: 'salesforce',
    scopes: ['crm:contacts:read'],
    ttl: 900,
  });
  await crm.closeAgentSession(session.sessionId);
  const after = Math.ceil(Date.now() / 1000);
  assert.ok(session.expiresAt > before && session.expiresAt <= after + 900);
  assert.ok(!(await crm.introspectSession(session.sessionToken)).active);
});

test('one client serves concurrent sessions', async () => {
  const sessions = await Promise.all(
    Array.from({ length: 5 }, () =>
      ops.requestAgentSession({
        agentId: 'ops-agent',
        provider: 'internal-ops',
        scopes: ['acme:flaring'],
        ttl: 60,
      }),
    ),
  );
  await Promise.all(sessions.map((session) => ops.closeAgentSession(session.sessionId)));
  assert.equal(new Set(sessions.map((session) => session.sessionId)).size, 5);
});

test('Step 5: an OBO session for a permitted user carries their context, and ends on close', async () => {
  const opened: AgentSession[] = [];
  const result = await runGliding(stack.permittedUserToken, ['c-1', 'c-2'], opened);
  assert.deepEqual(result, {
    glided: ['c-1', 'c-2'],
    tenantId: 'acme-eu',
    clearanceLevel: 'secret',
  });
  const [obo] = opened;
  assert.ok(obo !== undefined);
  assert.equal(obo.actingFor, 'sarah');
  assert.equal(obo.accessToken, obo.sessionToken);
  assert.equal((await ops.introspectSession(obo.sessionToken)).active, false);
});

test('Step 5: a user without acme:gliding is refused with USER_PERMISSION_MISSING', async () => {
  const opened: AgentSession[] = [];
  await assert.rejects(
    runGliding(stack.unpermittedUserToken, ['c-1'], opened),
    (error: unknown) => {
      assert.ok(error instanceof NexusAuthError);
      assert.deepEqual([error.status, error.reason], [403, 'USER_PERMISSION_MISSING']);
      assert.ok(error.metadata['missing']?.includes('acme:gliding'));
      return true;
    },
  );
  assert.equal(opened.length, 0);
});

test('Step 5: a permission the user has but the agent was never allowed is refused', async () => {
  await assert.rejects(
    runGliding(stack.permittedUserToken, ['c-9'], [], 'acme:treasury'),
    (error: unknown) => {
      assert.ok(error instanceof NexusAuthError);
      assert.deepEqual([error.status, error.reason], [403, 'AGENT_SCOPE_NOT_ALLOWED']);
      assert.equal(error.metadata['denied_scopes'], 'acme:treasury');
      return true;
    },
  );
});

/** Verifies a compact ES256 JWS with a key from the set; returns its claims, or null. */
async function verifiedClaims(
  token: string,
  keys: JwkSet,
): Promise<Record<string, unknown> | null> {
  const [header, payload, signature] = token.split('.');
  assert.ok(header !== undefined && payload !== undefined && signature !== undefined);
  const { kid, alg } = JSON.parse(Buffer.from(header, 'base64url').toString()) as {
    kid: string;
    alg: string;
  };
  assert.equal(alg, 'ES256');
  const jwk = keys.keys.find((key) => key.kid === kid);
  assert.ok(jwk !== undefined, 'the token is signed by a key in the set');
  const key = await webcrypto.subtle.importKey(
    'jwk',
    jwk as webcrypto.JsonWebKey,
    { name: 'ECDSA', namedCurve: 'P-256' },
    false,
    ['verify'],
  );
  const valid = await webcrypto.subtle.verify(
    { name: 'ECDSA', hash: 'SHA-256' },
    key,
    Buffer.from(signature, 'base64url'),
    Buffer.from(`${header}.${payload}`),
  );
  return valid
    ? (JSON.parse(Buffer.from(payload, 'base64url').toString()) as Record<string, unknown>)
    : null;
}

test('Step 5: the session token verifies with the JWK Set from jwks()', async () => {
  const obo = await ops.requestOboSession({
    agentId: 'ops-agent',
    provider: 'internal-ops',
    scopes: ['acme:gliding'],
    userContextToken: stack.permittedUserToken,
  });
  let active;
  let keys;
  try {
    active = await ops.introspectSession(obo.sessionToken);
    keys = await ops.jwks();
  } finally {
    await ops.closeAgentSession(obo.sessionId);
  }
  const claims = await verifiedClaims(obo.sessionToken, keys);
  assert.ok(claims !== null, 'the signature verifies');
  assert.deepEqual(claims['act'], { sub: 'ops-agent' });
  assert.equal(claims['sub'], 'sarah');
  assert.equal(claims['aud'], 'internal-ops');
  assert.equal(claims['iss'], stack.gatewayUrl);
  assert.equal(claims['exp'], obo.expiresAt);
  assert.equal(active.claims['acting_for'], 'sarah');
  assert.equal(active.claims['tenant_id'], 'acme-eu');

  // The same token with its claims changed no longer verifies.
  const [header, payload, signature] = obo.sessionToken.split('.');
  const forged = {
    ...JSON.parse(Buffer.from(payload ?? '', 'base64url').toString()),
    sub: 'mallory',
  };
  const tampered = [
    header,
    Buffer.from(JSON.stringify(forged)).toString('base64url'),
    signature,
  ].join('.');
  assert.equal(await verifiedClaims(tampered, keys), null);
});

test('jwks() needs no credential, and sends none', async () => {
  const sent: Array<Record<string, string>> = [];
  const nexus = new NexusClient({
    gatewayUrl: stack.gatewayUrl,
    agentKey: stack.crmKey,
    fetch: async (input, init) => {
      sent.push({ ...(init?.headers as Record<string, string>) });
      return fetch(input, init);
    },
  });
  const keys = await nexus.jwks();
  assert.ok(keys.keys.length > 0 && keys.keys.every((key) => typeof key.kid === 'string'));
  assert.equal(sent.length, 1);
  assert.ok(!('Authorization' in (sent[0] ?? {})) && !('X-API-Key' in (sent[0] ?? {})));
});
