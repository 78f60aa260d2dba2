/**
 * Errors map to one tree, with the gateway's reason; ids cannot change the
 * path; and no key or token shows in an error, in inspect output or in JSON.
 *
 * REFUSALS are real refusals from the real stack, the same table as the
 * Python SDK's tests/e2e/test_sdk.py. Answers the stack cannot be made to
 * give (a 409, a 500, a proxy's HTML page, a redirect) come from a real HTTP
 * server on loopback, as the Python tests use httpx.MockTransport for them.
 */

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { inspect } from 'node:util';

import {
  NexusAuthError,
  NexusClient,
  NexusConflictError,
  NexusError,
  NexusInvalidRequestError,
  NexusNotFoundError,
  NexusUnavailableError,
  NexusUnexpectedError,
  type AgentSessionRequest,
} from '@nexus-broker/sdk';

import { asAgent, serve, stack, stoppedUrl } from './support.js';

type ErrorClass = new (...args: never[]) => NexusError;

interface Refusal {
  call: (nexus: NexusClient) => Promise<unknown>;
  error: ErrorClass;
  status: number | null;
  reason: string | null;
  key?: 'crm' | 'ops' | 'admin' | 'wrong' | 'none';
  /** stack; stopped (nothing listens); idp (a server that is not Nexus). */
  gateway?: 'stack' | 'stopped' | 'idp';
}

const CRM_SESSION: AgentSessionRequest = {
  agentId: 'crm-agent',
  provider: 'salesforce',
  scopes: ['crm:contacts:read'],
};
const crmSession =
  (extra: Partial<AgentSessionRequest> = {}) =>
  (nexus: NexusClient) =>
    nexus.requestAgentSession({ ...CRM_SESSION, ...extra });
const token = (connectionId: string) => (nexus: NexusClient) =>
  nexus.getTokenByConnectionId(connectionId);

const REFUSALS: Record<string, Refusal> = {
  'wrong-agent-key': {
    call: crmSession(),
    error: NexusAuthError,
    status: 401,
    reason: 'UNAUTHENTICATED',
    key: 'wrong',
  },
  'no-key': {
    call: crmSession(),
    error: NexusAuthError,
    status: 401,
    reason: 'UNAUTHENTICATED',
    key: 'none',
  },
  'another-agents-identity': {
    call: crmSession(),
    error: NexusAuthError,
    status: 403,
    reason: 'AGENT_MISMATCH',
    key: 'ops',
  },
  'unknown-provider': {
    call: crmSession({ provider: 'no-such-provider' }),
    error: NexusNotFoundError,
    status: 404,
    reason: 'PROVIDER_NOT_FOUND',
  },
  'ttl-too-long': {
    call: crmSession({ ttl: 86_400 }),
    error: NexusInvalidRequestError,
    status: 400,
    reason: 'VALIDATION_FAILED',
  },
  'ttl-zero': {
    call: crmSession({ ttl: 0 }),
    error: NexusInvalidRequestError,
    status: 400,
    reason: 'VALIDATION_FAILED',
  },
  'unknown-connection': {
    call: token('conn_01HXYZ'),
    error: NexusNotFoundError,
    status: 404,
    reason: 'CONNECTION_NOT_FOUND',
    key: 'admin',
  },
  // Unquoted, this would be GET /v1/providers; quoted, it is just an unknown id.
  'id-with-dot-dot-slash': {
    call: token('../providers'),
    error: NexusNotFoundError,
    status: 404,
    reason: 'CONNECTION_NOT_FOUND',
    key: 'admin',
  },
  'gateway-stopped': {
    call: crmSession(),
    error: NexusUnavailableError,
    status: null,
    reason: null,
    gateway: 'stopped',
  },
  'not-a-nexus-gateway': {
    call: token('conn_01HXYZ'),
    error: NexusNotFoundError,
    status: 404,
    reason: null,
    gateway: 'idp',
  },
};

async function refusalClient(refusal: Refusal): Promise<NexusClient> {
  const gateway = refusal.gateway ?? 'stack';
  const gatewayUrl =
    gateway === 'stack'
      ? stack.gatewayUrl
      : gateway === 'idp'
        ? stack.idpIssuer
        : await stoppedUrl();
  const key = refusal.key ?? 'crm';
  if (key === 'admin') return new NexusClient({ gatewayUrl, apiKey: stack.adminKey });
  const agentKey = {
    crm: stack.crmKey,
    ops: stack.opsKey,
    wrong: 'nxag_not-a-real-key',
    none: undefined,
  }[key];
  // 'none' must mean no key at all, so the environment cannot supply one.
  assert.ok(
    process.env['NEXUS_AGENT_KEY'] === undefined && process.env['NEXUS_API_KEY'] === undefined,
  );
  return new NexusClient({ gatewayUrl, agentKey });
}

for (const [name, refusal] of Object.entries(REFUSALS)) {
  test(`errors map to the SDK's tree: ${name}`, async () => {
    const nexus = await refusalClient(refusal);
    await assert.rejects(refusal.call(nexus), (error: unknown) => {
      assert.ok(error instanceof NexusError && error instanceof Error);
      assert.equal(error.constructor, refusal.error);
      assert.equal(error.name, refusal.error.name);
      assert.deepEqual([error.status, error.reason], [refusal.status, refusal.reason]);
      assert.ok(error.message && String(error).includes(error.message));
      return true;
    });
  });
}

test('a gateway that does not answer in time is unavailable', async () => {
  // Accepts connections and never answers: the request hangs until the timeout.
  const held: Socket[] = [];
  const silent = createServer((socket) => held.push(socket));
  silent.listen(0, '127.0.0.1');
  await once(silent, 'listening');
  const { port } = silent.address() as AddressInfo;
  try {
    const nexus = new NexusClient({
      gatewayUrl: `http://127.0.0.1:${port}`,
      agentKey: stack.crmKey,
      timeoutSeconds: 0.3,
    });
    await assert.rejects(nexus.jwks(), (error: unknown) => {
      assert.ok(error instanceof NexusUnavailableError);
      assert.equal(error.status, null);
      assert.match(error.message, /did not answer in time/);
      return true;
    });
  } finally {
    for (const socket of held) socket.destroy();
    silent.close();
  }
});

const STATUS_BODY = JSON.stringify({
  code: 6,
  message: 'agent already exists',
  details: [
    {
      '@type': 'type.googleapis.com/google.rpc.ErrorInfo',
      reason: 'AGENT_ALREADY_EXISTS',
      domain: 'nexus.dev',
      metadata: { agent_id: 'crm-agent' },
    },
  ],
});

const BY_STATUS: ReadonlyArray<[number, ErrorClass]> = [
  [400, NexusInvalidRequestError],
  [401, NexusAuthError],
  [403, NexusAuthError],
  [404, NexusNotFoundError],
  [409, NexusConflictError],
  [413, NexusInvalidRequestError],
  [429, NexusUnavailableError],
  [500, NexusUnexpectedError],
  [502, NexusUnavailableError],
  [503, NexusUnavailableError],
  [504, NexusUnavailableError],
];

test('every status has one error class, even without a JSON body', async () => {
  // Each request is answered by the next of these: a proxy's HTML page, then a google.rpc.Status.
  const answers: Array<[number, string, string]> = [];
  const server = await serve((_request, response) => {
    const [status, type, body] = answers.shift() ?? [599, 'text/plain', 'no answer queued'];
    response.writeHead(status, { 'Content-Type': type }).end(body);
  });
  try {
    const nexus = new NexusClient({ gatewayUrl: server.url, agentKey: 'nxag_k' });
    for (const [status, cls] of BY_STATUS) {
      answers.push(
        [status, 'text/html', '<html>secret-looking page</html>'],
        [status, 'application/json', STATUS_BODY],
      );
      const page = await nexus
        .getTokenByConnectionId('conn_01HXYZ')
        .catch((error: unknown) => error);
      const rpcStatus = await nexus
        .getTokenByConnectionId('conn_01HXYZ')
        .catch((error: unknown) => error);
      assert.ok(page instanceof NexusError && rpcStatus instanceof NexusError);
      assert.equal(page.constructor, cls, `HTTP ${status}`);
      assert.deepEqual([page.status, page.reason], [status, null]);
      assert.ok(
        String(page).includes(`HTTP ${status}`) && !String(page).includes('secret-looking'),
      );
      assert.equal(rpcStatus.constructor, cls, `HTTP ${status}`);
      assert.deepEqual(
        [rpcStatus.reason, rpcStatus.message],
        ['AGENT_ALREADY_EXISTS', 'agent already exists'],
      );
      assert.deepEqual(rpcStatus.metadata, { agent_id: 'crm-agent' });
    }
  } finally {
    await server.close();
  }
});

test('an undocumented success or a redirect is unexpected, and a redirect is not followed', async () => {
  let followed = 0;
  const elsewhere = await serve((_request, response) => {
    followed += 1;
    response.end('{}');
  });
  const answers: Array<[number, Record<string, string>, string]> = [
    [200, { 'Content-Type': 'text/html' }, '<html>a captive portal</html>'],
    [200, { 'Content-Type': 'application/json' }, '{"session_id": "s-1"}'],
    [200, { 'Content-Type': 'application/json' }, '["not", "an", "object"]'],
    [302, { Location: `${elsewhere.url}/v1/agent-sessions` }, ''],
    [307, { Location: `${elsewhere.url}/v1/agent-sessions` }, ''],
  ];
  const expected = answers.map(([status]) => status);
  const server = await serve((_request, response) => {
    const [status, headers, body] = answers.shift() ?? [599, {}, ''];
    response.writeHead(status, headers).end(body);
  });
  try {
    const nexus = new NexusClient({ gatewayUrl: server.url, apiKey: 'nxa_k' });
    for (const status of expected) {
      await assert.rejects(nexus.requestAgentSession(CRM_SESSION), (error: unknown) => {
        assert.ok(error instanceof NexusUnexpectedError);
        assert.equal(error.status, status);
        assert.ok(!String(error).includes('captive') && !String(error).includes('127.0.0.1'));
        return true;
      });
    }
  } finally {
    await server.close();
    await elsewhere.close();
  }
  assert.equal(followed, 0);
});

test('a redirect to another origin gets no key, even from a fetch that follows it', async () => {
  // Another port is another origin: it records the headers of whatever reaches it.
  const seen: Array<Record<string, unknown>> = [];
  const elsewhere = await serve((request, response) => {
    seen.push({ ...request.headers });
    response.writeHead(200, { 'Content-Type': 'application/json' });
    response.end('{"access_token": "from-elsewhere", "token_type": "Bearer"}');
  });
  const gateway = await serve((request, response) => {
    response.writeHead(302, { Location: `${elsewhere.url}${request.url ?? '/'}` }).end();
  });
  try {
    for (const key of [{ apiKey: 'nxa_admin-key' }, { agentKey: 'nxag_agent-key' }]) {
      const plain = new NexusClient({ gatewayUrl: gateway.url, ...key });
      await assert.rejects(plain.getTokenByConnectionId('conn_01HXYZ'), NexusUnexpectedError);
    }
    assert.deepEqual(seen, []);
    // A fetch of the caller's that follows anyway: its answer is not taken for the gateway's.
    const following = new NexusClient({
      gatewayUrl: gateway.url,
      apiKey: 'nxa_admin-key',
      fetch: async (input, init) => fetch(input, { ...init, redirect: 'follow' }),
    });
    await assert.rejects(following.getTokenByConnectionId('conn_01HXYZ'), (error: unknown) => {
      assert.ok(error instanceof NexusUnexpectedError);
      assert.match(error.message, /followed a redirect/);
      return true;
    });
  } finally {
    await gateway.close();
    await elsewhere.close();
  }
});

test('plain http is refused to any host but this machine', () => {
  for (const gatewayUrl of [
    'http://nexus.example.com',
    'http://10.0.0.8:8080',
    'http://127.0.0.1.nip.io',
    'http://[::ffff:127.0.0.1]:8080',
    'http://localhost.example.com',
  ]) {
    assert.throws(() => new NexusClient({ gatewayUrl, agentKey: 'nxag_k' }), {
      name: 'TypeError',
      message: /https/,
    });
  }
  for (const gatewayUrl of [
    'http://127.0.0.1:8080',
    'http://127.8.9.10',
    'http://127.1',
    'http://[::1]:8080',
    'http://[0:0::1]',
    'http://LOCALHOST',
  ]) {
    assert.equal(new NexusClient({ gatewayUrl, agentKey: 'nxag_k' }).gatewayUrl, gatewayUrl);
  }
});

test('dot segments, empty ids and non-strings are refused before any request', async () => {
  const seen: string[] = [];
  const nexus = new NexusClient({
    gatewayUrl: stack.gatewayUrl,
    agentKey: stack.crmKey,
    fetch: async (input, init) => {
      seen.push(new URL(String(input)).pathname);
      return fetch(input, init);
    },
  });
  for (const bad of ['', '.', '..', undefined, 42, '\ud800']) {
    await assert.rejects(nexus.closeAgentSession(bad as string), {
      name: 'TypeError',
      message: /sessionId/,
    });
    await assert.rejects(nexus.getTokenByConnectionId(bad as string), {
      name: 'TypeError',
      message: /connectionId/,
    });
    await assert.rejects(nexus.refreshConnection(bad as string), {
      name: 'TypeError',
      message: /connectionId/,
    });
    await assert.rejects(nexus.checkConnection(bad as string), {
      name: 'TypeError',
      message: /connectionId/,
    });
  }
  await assert.rejects(
    nexus.getTokenByConnectionId("a/../../providers?x#y!'()*"),
    NexusNotFoundError,
  );
  assert.deepEqual(seen, ['/v1/token/a%2F..%2F..%2Fproviders%3Fx%23y%21%27%28%29%2A']);
});

test('bad options and arguments are refused with a clear message', async () => {
  assert.throws(
    () => new NexusClient({ gatewayUrl: stack.gatewayUrl, agentKey: 'a', apiKey: 'b' }),
    {
      name: 'TypeError',
      message: /not both/,
    },
  );
  assert.throws(
    () => new NexusClient({ gatewayUrl: 'https://user:pw@nexus.example.com' }),
    /credentials/,
  );
  assert.throws(() => new NexusClient({ gatewayUrl: 'nexus.example.com' }), /http/);
  assert.throws(() => new NexusClient({ gatewayUrl: 'ftp://nexus.example.com' }), /http/);
  assert.throws(() => new NexusClient({ gatewayUrl: 'https://nexus.example.com/?x=1' }), /query/);
  assert.throws(
    () => new NexusClient({ gatewayUrl: stack.gatewayUrl, timeoutSeconds: 0 }),
    /timeoutSeconds/,
  );
  const secret = 'nxag_line\r\nX-Injected: 1';
  assert.throws(
    () => new NexusClient({ gatewayUrl: stack.gatewayUrl, agentKey: secret }),
    (error: unknown) =>
      error instanceof TypeError &&
      /agentKey/.test(error.message) &&
      !error.message.includes('nxag_line'),
  );
  const nexus = asAgent(stack.crmKey);
  await assert.rejects(
    nexus.requestAgentSession({ ...CRM_SESSION, scopes: 'a b' as unknown as string[] }),
    { name: 'TypeError', message: /scopes/ },
  );
  await assert.rejects(nexus.requestAgentSession({ ...CRM_SESSION, ttl: 1.5 }), {
    name: 'TypeError',
    message: /ttl/,
  });
});

/** Every way a value can be shown: inspect (also with hidden members), String, JSON. */
function shown(value: unknown): string[] {
  const views = [
    inspect(value),
    inspect(value, { showHidden: true, depth: 8 }),
    String(value),
    JSON.stringify(value) ?? '',
  ];
  if (value instanceof NexusError)
    views.push(value.message, value.stack ?? '', ...Object.values(value.metadata));
  return views;
}

test('secrets never appear in errors, inspect output or JSON', async () => {
  const secrets = [
    stack.opsKey,
    stack.adminKey,
    stack.permittedUserToken,
    stack.unpermittedUserToken,
  ];
  const ops = asAgent(stack.opsKey);
  const admin = new NexusClient({ gatewayUrl: stack.gatewayUrl, apiKey: stack.adminKey });
  const obo = await ops.requestOboSession({
    agentId: 'ops-agent',
    provider: 'internal-ops',
    scopes: ['acme:gliding'],
    userContextToken: stack.permittedUserToken,
  });
  await ops.closeAgentSession(obo.sessionId);
  const refused = await ops
    .requestOboSession({
      agentId: 'ops-agent',
      provider: 'internal-ops',
      scopes: ['acme:gliding'],
      userContextToken: stack.unpermittedUserToken,
    })
    .catch((error: unknown) => error);
  assert.ok(refused instanceof NexusAuthError);
  const unreachable = new NexusClient({ gatewayUrl: await stoppedUrl(), agentKey: stack.opsKey });
  const down = await unreachable
    .getTokenByConnectionId(stack.connectionId)
    .catch((error: unknown) => error);
  assert.ok(down instanceof NexusUnavailableError);
  assert.match(
    down.message,
    /could not reach the Nexus gateway at http:\/\/127\.0\.0\.1:\d+ \(ECONNREFUSED\)/,
  );
  const tokenPayload = await admin.getTokenByConnectionId(stack.connectionId);
  const accessToken = String(tokenPayload.credentials['access_token']);
  assert.ok(accessToken.length > 8 && obo.sessionToken.length > 8);

  for (const value of [ops, admin, unreachable, refused, down]) {
    for (const view of shown(value)) {
      for (const secret of secrets)
        assert.ok(!view.includes(secret), 'a key or user token is shown');
    }
  }
  assert.ok(inspect(obo).includes(obo.sessionId));
  for (const view of [...shown(obo), ...shown(tokenPayload)]) {
    for (const secret of [obo.sessionToken, obo.accessToken, accessToken]) {
      assert.ok(!view.includes(secret), 'a token is shown');
    }
  }
});
