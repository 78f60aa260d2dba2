// Throwaway OpenID Connect provider for the Nexus test suite.
//
// Usage: node server.mjs PORT [--issuer-override URL] [--exit-on-stdin-eof]
//
// PORT 0 lets the OS pick a free port. Once the server accepts requests it
// prints exactly one JSON line to stdout, {"issuer": ..., "port": ...}, which
// the Python harness (tests/support/oidc_server.py) waits for.
//
// --issuer-override URL  makes only the discovery document advertise URL as
//   its issuer, so tests can exercise the "issuer does not match" failure
//   while every endpoint it lists still works.
// --exit-on-stdin-eof    exits when stdin closes, so a test run that dies
//   without calling stop() does not leave the server holding its port.
import { parseArgs } from 'node:util';
import { createPublicKey, verify } from 'node:crypto';
import { Events, OAuth2Server } from 'oauth2-mock-server';

const HOST = '127.0.0.1';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    'issuer-override': { type: 'string' },
    'exit-on-stdin-eof': { type: 'boolean', default: false },
  },
});

if (positionals.length !== 1 || !/^\d+$/.test(positionals[0])) {
  console.error('usage: node server.mjs PORT [--issuer-override URL] [--exit-on-stdin-eof]');
  process.exit(2);
}
const requestedPort = Number(positionals[0]);

const server = new OAuth2Server();
// A fresh key per run: nothing may depend on a key that outlives the server.
await server.issuer.keys.generate('RS256');
await server.start(requestedPort, HOST);

const { port } = server.address();
// The library names loopback servers "localhost", which may resolve to ::1
// where nothing listens; pin the issuer (and so every endpoint URL and the
// tokens' iss claim) to the address we actually bound.
server.issuer.url = `http://${HOST}:${port}`;

const issuerOverride = values['issuer-override'];
if (issuerOverride !== undefined) {
  server.service.on(Events.BeforeWellKnownOpenIdConfiguration, (response) => {
    response.body.issuer = issuerOverride;
  });
}

// Test controls. The token endpoint can be made to fail the way real
// providers do, and every call is counted, so tests can assert how often
// Nexus refreshed:
//   POST /__control/behaviour {"token": "ok"|"server_error"|"invalid_grant"|"rate_limited",
//                              "expires_in": N, "rotate_refresh_token": bool}
//   GET  /__control/stats -> {"token_calls": {...per grant type}, "client_auth": [...],
//                             "revoked": [...], "scope_on_exchange": [...]}
const behaviour = { token: 'ok', expires_in: null, rotate_refresh_token: true };
const stats = { token_calls: {}, client_auth: [], revoked: [], scope_on_exchange: [] };
const revoked = new Set();

server.service.addRoute('POST', '/__control/behaviour', (req, res) => {
  Object.assign(behaviour, req.body);
  res.setHeader('Content-Type', 'application/json');
  res.end(JSON.stringify(behaviour));
});
server.service.addRoute('GET', '/__control/stats', (_req, res) => {
  res.setHeader('Content-Type', 'application/json');
  res.end(JSON.stringify(stats));
});

const FAILURES = {
  server_error: [500, { error: 'server_error' }],
  invalid_grant: [400, { error: 'invalid_grant', error_description: 'refresh token revoked' }],
  rate_limited: [429, { error: 'slow_down' }],
};

server.service.on(Events.BeforeResponse, (response, req) => {
  const grant = req.body.grant_type;
  stats.token_calls[grant] = (stats.token_calls[grant] ?? 0) + 1;
  const basic = (req.headers.authorization ?? '').startsWith('Basic ');
  stats.client_auth.push(basic ? 'client_secret_basic' : req.body.client_secret ? 'client_secret_post' : 'none');
  if (grant === 'authorization_code') stats.scope_on_exchange.push('scope' in req.body);
  const failure = FAILURES[behaviour.token];
  if (failure !== undefined) {
    [response.statusCode, response.body] = failure;
    return;
  }
  if (behaviour.expires_in !== null) response.body.expires_in = behaviour.expires_in;
  // The library answers "dummy" when no scope was sent; a real provider then
  // omits scope, meaning "what was authorized" (RFC 6749 §5.1).
  if (!('scope' in req.body)) delete response.body.scope;
  if (grant === 'refresh_token' && !behaviour.rotate_refresh_token) delete response.body.refresh_token;
});

// The library's userinfo answers anyone; a real provider checks the token.
// The hook runs synchronously, so the RS256 signature is checked with node:crypto.
function validAccessToken(token) {
  const [header, payload, signature] = token.split('.');
  if (!signature || revoked.has(token)) return false;
  const { kid } = JSON.parse(Buffer.from(header, 'base64url'));
  const jwk = server.issuer.keys.toJSON().find((key) => key.kid === kid);
  if (jwk === undefined) return false;
  const signed = verify('RSA-SHA256', Buffer.from(`${header}.${payload}`), createPublicKey({ key: jwk, format: 'jwk' }),
    Buffer.from(signature, 'base64url'));
  const claims = JSON.parse(Buffer.from(payload, 'base64url'));
  return signed && claims.iss === server.issuer.url && claims.exp * 1000 > Date.now();
}

server.service.on(Events.BeforeUserinfo, (response, req) => {
  const token = (req.headers.authorization ?? '').replace(/^Bearer /, '');
  let valid = false;
  try { valid = validAccessToken(token); } catch { valid = false; }
  if (!valid) { response.statusCode = 401; response.body = { error: 'invalid_token' }; }
});

server.service.on(Events.BeforeRevoke, (_response, req) => {
  let body = '';
  req.on('data', (chunk) => { body += chunk; });
  req.on('end', () => {
    const token = new URLSearchParams(body).get('token');
    if (token) { revoked.add(token); stats.revoked.push(token); }
  });
});

let stopping = false;
async function shutdown() {
  if (stopping) return;
  stopping = true;
  await server.stop();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
if (values['exit-on-stdin-eof']) {
  process.stdin.on('end', shutdown);
  process.stdin.resume();
}

process.stdout.write(`${JSON.stringify({ issuer: server.issuer.url, port })}\n`);
