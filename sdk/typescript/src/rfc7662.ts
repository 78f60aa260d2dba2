/**
 * RFC 7662 token introspection of Nexus session tokens.
 *
 * A service that receives a session token can verify its signature offline
 * with the JWK Set, but only introspection knows whether the session was
 * closed early. Per RFC 7662 §2.2 an inactive answer carries nothing but
 * `"active": false` (closed, expired, or not a Nexus token); an active one
 * carries the token's claims (`scope`, `client_id`, `sub`, `exp`,
 * `acting_for`, `tenant_id`...).
 */

import { isObject } from './json.js';
import { MalformedAnswer } from './models.js';

// RFC 7662 §2.1 names no path; this is the gateway's.
export const INTROSPECT_PATH = '/v1/agent-sessions:introspect';

/** The answer about one session token: `active` and, when active, its claims. */
export class Introspection {
  readonly active: boolean;
  readonly claims: Readonly<Record<string, unknown>>;

  constructor(active: boolean, claims: Readonly<Record<string, unknown>> = {}) {
    this.active = active;
    this.claims = Object.freeze({ ...claims });
  }

  /** `scope` split on spaces (RFC 7662 §2.2); empty when inactive. */
  get scopes(): readonly string[] {
    const scope = this.claims['scope'];
    return typeof scope === 'string' ? scope.split(' ').filter((part) => part) : [];
  }
}

export function introspection(body: unknown): Introspection {
  if (!isObject(body) || !['boolean', 'undefined'].includes(typeof body['active'])) {
    throw new MalformedAnswer('active');
  }
  const { active, ...claims } = body;
  return new Introspection(active === true, claims);
}
