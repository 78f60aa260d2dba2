/**
 * The public API is what the docs name, the package resolves as ESM with its
 * type declarations, and the error classes form the documented tree.
 */

import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';

import * as sdk from '@nexus-broker/sdk';

test('the public API is what the docs name', () => {
  assert.deepEqual(Object.keys(sdk).sort(), [
    'AgentSession',
    'AppliedCredentials',
    'Introspection',
    'NexusAuthError',
    'NexusClient',
    'NexusConflictError',
    'NexusError',
    'NexusInvalidRequestError',
    'NexusNotFoundError',
    'NexusUnavailableError',
    'NexusUnexpectedError',
    'TokenPayload',
    'UnsupportedStrategy',
    'applyCredentials',
  ]);
  const methods = Object.getOwnPropertyNames(sdk.NexusClient.prototype).filter(
    (name) => name !== 'constructor',
  );
  assert.deepEqual(methods.sort(), [
    'checkConnection',
    'closeAgentSession',
    'getTokenByConnectionId',
    'introspectSession',
    'jwks',
    'refreshConnection',
    'requestAgentSession',
    'requestOboSession',
  ]);
});

test('the package is ESM with type declarations, and has no runtime dependencies', () => {
  // Resolved the way a user's import resolves it: through package.json's exports.
  const entry = import.meta.resolve('@nexus-broker/sdk');
  const root = dirname(dirname(new URL(entry).pathname));
  const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
    name: string;
    type: string;
    exports: { '.': { types: string; default: string } };
    dependencies?: object;
  };
  assert.equal(manifest.name, '@nexus-broker/sdk');
  assert.equal(manifest.type, 'module');
  assert.equal(manifest.dependencies, undefined);
  assert.ok(existsSync(join(root, manifest.exports['.'].types)));
  assert.equal(new URL(entry).pathname, join(root, manifest.exports['.'].default));
});

test('every error class is a NexusError with its own name', () => {
  const classes = [
    sdk.NexusInvalidRequestError,
    sdk.NexusAuthError,
    sdk.NexusNotFoundError,
    sdk.NexusConflictError,
    sdk.NexusUnavailableError,
    sdk.NexusUnexpectedError,
  ];
  for (const cls of classes) {
    const error = new cls('refused', { status: 403, reason: 'R', metadata: { k: 'v' } });
    assert.ok(error instanceof sdk.NexusError && error instanceof Error);
    assert.equal(error.name, cls.name);
    assert.deepEqual(
      [error.status, error.reason, error.message, error.metadata],
      [403, 'R', 'refused', { k: 'v' }],
    );
    assert.equal(String(error), `${cls.name}: refused (HTTP 403, R)`);
  }
  assert.equal(String(new sdk.NexusError('no answer')), 'NexusError: no answer');
  assert.equal(new Set(classes.map((cls) => cls.name)).size, classes.length);
});
