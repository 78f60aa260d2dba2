/** Applying a connection's credentials to an outgoing request, as its strategy says. */

import type { TokenPayload } from './models.js';

/** The token's strategy is one this SDK does not know how to apply. */
export class UnsupportedStrategy extends Error {}
Object.defineProperty(UnsupportedStrategy.prototype, 'name', {
  value: 'UnsupportedStrategy',
  writable: true,
  configurable: true,
});

/**
 * What to add to a request: headers, query parameters and body fields. They
 * hold secrets, so they sit behind getters that `util.inspect` and
 * `JSON.stringify` do not follow.
 */
export class AppliedCredentials {
  readonly #headers: Record<string, string> = {};
  readonly #query: Record<string, string> = {};
  readonly #body: Record<string, string> = {};

  get headers(): Record<string, string> {
    return this.#headers;
  }

  get query(): Record<string, string> {
    return this.#query;
  }

  get body(): Record<string, string> {
    return this.#body;
  }
}

/**
 * Where each credential goes: `oauth2` is a Bearer `Authorization` header,
 * `basic_auth` a Basic one, and `api_key` fields go where the provider's
 * schema puts them (a header, a query parameter or a body field).
 */
export function applyCredentials(token: TokenPayload): AppliedCredentials {
  const kind = token.strategy.type;
  const applied = new AppliedCredentials();
  if (kind === 'oauth2') {
    applied.headers['Authorization'] = `Bearer ${credential(token, 'access_token')}`;
    return applied;
  }
  if (kind === 'basic_auth') {
    const pair = `${credential(token, 'username')}:${credential(token, 'password')}`;
    applied.headers['Authorization'] = `Basic ${Buffer.from(pair, 'utf8').toString('base64')}`;
    return applied;
  }
  if (kind === 'api_key') {
    const places: Record<string, Record<string, string>> = {
      header: applied.headers,
      query: applied.query,
      body: applied.body,
    };
    for (const spec of token.strategy.fields ?? []) {
      const place = Object.hasOwn(places, spec.in) ? places[spec.in] : undefined;
      if (place === undefined) {
        throw new UnsupportedStrategy(
          `an api_key field goes ${JSON.stringify(spec.in)}, not known here`,
        );
      }
      place[spec.key] = credential(token, spec.name);
    }
    return applied;
  }
  throw new UnsupportedStrategy(
    `the credential strategy ${JSON.stringify(kind)} is not known to this SDK`,
  );
}

function credential(token: TokenPayload, name: string): string {
  const value = token.credentials[name];
  if (value === undefined || value === null || typeof value === 'object') {
    // Named, never shown: the other fields are secrets too.
    throw new UnsupportedStrategy(`the credentials have no usable ${JSON.stringify(name)} field`);
  }
  return String(value);
}
