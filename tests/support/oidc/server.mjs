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
