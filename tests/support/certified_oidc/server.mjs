// OpenID Connect provider for the Nexus test suite, built on the OpenID
// Certified `oidc-provider` package, so tests can check Nexus against a real
// server's token, revocation and introspection semantics.
//
// Usage: node server.mjs PORT [--redirect-uri URI]... [--exit-on-stdin-eof]
//
// PORT 0 lets the OS pick a free port. Once the server accepts requests it
// prints exactly one JSON line to stdout, {"issuer": ..., "port": ...}, which
// the Python harness (tests/support/certified_oidc.py) waits for.
//
// --redirect-uri URI     a redirect URI registered for the client (repeatable).
// --exit-on-stdin-eof    exits when stdin closes, so a test run that dies
//   without calling stop() does not leave the server holding its port.
//
// What the tests rely on:
// - one confidential client, nexus-client / s3cret, client_secret_basic,
//   authorization_code + refresh_token;
// - a refresh token is issued for every code exchange (no offline_access or
//   prompt=consent needed) and is never rotated, so it can be reused;
// - a refresh_token grant may narrow the scope to a subset of the grant;
// - revoking ANY token of a grant (access or refresh) revokes the whole grant
//   (RFC 7009 section 2.1 allows this): every token of the grant dies and the
//   refresh token then fails with invalid_grant;
// - login and consent finish without a human: /interaction/:uid logs in
//   ACCOUNT_ID and grants every requested scope and claim;
// - GET /__control/stats counts token calls per grant type, token errors,
//   revocation and introspection calls, and finished interactions per prompt
//   (login, consent): a consent after a revocation shows the Grant was deleted.
import { createPrivateKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';
import Provider from 'oidc-provider';

const HOST = '127.0.0.1';
const CLIENT_ID = 'nexus-client';
const CLIENT_SECRET = 's3cret';
const ACCOUNT_ID = 'user-1';
const USAGE = 'usage: node server.mjs PORT [--redirect-uri URI]... [--exit-on-stdin-eof]';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    'redirect-uri': { type: 'string', multiple: true, default: [] },
    'exit-on-stdin-eof': { type: 'boolean', default: false },
  },
});

if (positionals.length !== 1 || !/^\d+$/.test(positionals[0])) {
  console.error(USAGE);
  process.exit(2);
}
const requestedPort = Number(positionals[0]);
const redirectUris = values['redirect-uri'];

if (values['exit-on-stdin-eof']) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}

// Bind first: the issuer names the port, and the provider needs its issuer
// when it is built. Requests that arrive before then get a 503.
let handler = (_req, res) => {
  res.statusCode = 503;
  res.end();
};
const server = createServer((req, res) => handler(req, res));
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(requestedPort, HOST, resolve);
});
const { port } = server.address();
const issuer = `http://${HOST}:${port}`;

// A fresh signing key per run: nothing may depend on a key that outlives the server.
// Made as PEM and read back before the JWK export: on Node 20.20, exporting a key
// object straight from generateKeyPairSync as JWK deadlocks about once in a few
// hundred runs (the main thread waits on a futex forever); read back, it never did.
const { privateKey: pem } = generateKeyPairSync('rsa', {
  modulusLength: 2048,
  privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  publicKeyEncoding: { type: 'spki', format: 'pem' },
});
const signingKey = {
  ...createPrivateKey(pem).export({ format: 'jwk' }),
  kid: randomBytes(8).toString('hex'),
  alg: 'RS256',
  use: 'sig',
};

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: redirectUris,
    },
  ],
  jwks: { keys: [signingKey] },
  cookies: {
    keys: [randomBytes(32).toString('hex')],
    // Plain http on loopback: the provider only marks cookies secure when the
    // request came over https, and these say nothing to the contrary.
    long: { httpOnly: true, sameSite: 'lax', secure: false },
    short: { httpOnly: true, sameSite: 'lax', secure: false },
  },
  responseTypes: ['code'],
  scopes: ['openid', 'offline_access', 'crm:contacts:read', 'crm:contacts:write'],
  claims: { openid: ['sub'] },
  async findAccount(_ctx, sub) {
    return { accountId: sub, async claims() { return { sub }; } };
  },
  features: {
    devInteractions: { enabled: false },
    revocation: {
      enabled: true,
      // The library's default: a client may revoke only its own tokens.
      async allowedPolicy(_ctx, client, token) {
        return token.clientId === client.clientId;
      },
    },
    introspection: {
      enabled: true,
      // The library's default: only a public client is kept to its own tokens.
      async allowedPolicy(ctx, client, token) {
        return client.clientAuthMethod !== 'none' || token.clientId === ctx.oidc.client.clientId;
      },
    },
  },
  interactions: {
    async url(_ctx, interaction) {
      return `/interaction/${interaction.uid}`;
    },
  },
  // Always a refresh token for a client allowed the grant, offline_access or not.
  async issueRefreshToken(_ctx, client) {
    return client.grantTypeAllowed('refresh_token');
  },
  // Never rotated, so a test can present the original refresh token again.
  rotateRefreshToken: false,
  // Revoke the Grant itself (not only its tokens) whenever the library revokes
  // a grant's tokens: on revocation of an access token as well as of a refresh
  // token, on authorization code reuse and on logout. The library default
  // spares the Grant when an access token is revoked.
  revokeGrantPolicy() {
    return true;
  },
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 60,
    IdToken: 3600,
    Interaction: 600,
    RefreshToken: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
    Session: 14 * 24 * 3600,
  },
});

const stats = {
  token_calls: {},
  token_errors: {},
  revocation_calls: 0,
  introspection_calls: 0,
  interactions: {},
};

function count(table, key) {
  table[key] = (table[key] ?? 0) + 1;
}

provider.use(async (ctx, next) => {
  if (ctx.method === 'GET' && ctx.path === '/__control/stats') {
    ctx.body = stats;
    return;
  }

  const interaction = ctx.method === 'GET' && /^\/interaction\/[^/]+$/.test(ctx.path);
  if (interaction) {
    ctx.redirect(await finishInteraction(ctx));
    return;
  }

  await next();

  // Counted after the provider has parsed the request and answered it.
  const route = ctx.oidc?.route;
  if (route === 'token') {
    count(stats.token_calls, ctx.oidc.params?.grant_type ?? 'unknown');
    if (ctx.status >= 400) {
      count(stats.token_errors, ctx.body?.error ?? String(ctx.status));
    }
  } else if (route === 'revocation') {
    stats.revocation_calls += 1;
  } else if (route === 'introspection') {
    stats.introspection_calls += 1;
  }
});

// Log in ACCOUNT_ID, or consent to everything asked, and return where the
// authorization request resumes.
async function finishInteraction(ctx) {
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const { prompt, params, session } = details;
  count(stats.interactions, prompt.name);

  if (prompt.name === 'login') {
    return provider.interactionResult(ctx.req, ctx.res, { login: { accountId: ACCOUNT_ID } });
  }
  if (prompt.name !== 'consent') {
    throw new Error(`unexpected interaction prompt ${prompt.name}`);
  }

  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = prompt.details;
  if (missingOIDCScope) {
    grant.addOIDCScope(missingOIDCScope.join(' '));
  }
  if (missingOIDCClaims) {
    grant.addOIDCClaims(missingOIDCClaims);
  }
  for (const [indicator, scopes] of Object.entries(missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  return provider.interactionResult(
    ctx.req,
    ctx.res,
    { consent: { grantId } },
    { mergeWithLastSubmission: true },
  );
}

handler = provider.callback();
process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
