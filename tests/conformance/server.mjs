// A certified OpenID provider (panva's oidc-provider, pinned in package-lock.json) for
// tokenvault's conformance tests. The tests own only what a real deployment supplies itself:
// the clients, an in-memory store they can inspect, a headless login + consent (user "alice"
// approves everything) and two admin hooks — approve a device code as the user would, and
// revoke a user's grants as the user would in the provider's account page.
//
//   node server.mjs [PORT] [SECRET_SUFFIX]
//
// prints {"issuer": "http://127.0.0.1:PORT"} once listening. SECRET_SUFFIX changes every
// client secret (an administrator rotating them).

import http from 'node:http';
import Provider from 'oidc-provider';

const port = Number(process.argv[2] ?? 0);
const suffix = process.argv[3] ?? '';
// The user who logs in and approves (ACCOUNT in the environment: another user's browser profile).
const ACCOUNT = process.env.ACCOUNT ?? 'alice';

// Every model in one Map, so the admin hooks can find a user's grants.
const store = new Map();
const epoch = () => Math.floor(Date.now() / 1000);

class MemoryAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const expiresAt = expiresIn ? Date.now() + expiresIn * 1000 : Infinity;
    store.set(this.key(id), { payload, expiresAt });
  }

  async find(id) {
    const entry = store.get(this.key(id));
    if (!entry || entry.expiresAt < Date.now()) return undefined;
    return entry.payload;
  }

  async findBy(field, value) {
    for (const [key, entry] of store) {
      if (key.startsWith(`${this.model}:`) && entry.payload[field] === value) {
        return entry.payload;
      }
    }
    return undefined;
  }

  async findByUid(uid) {
    return this.findBy('uid', uid);
  }

  async findByUserCode(userCode) {
    return this.findBy('userCode', userCode);
  }

  async consume(id) {
    const entry = store.get(this.key(id));
    if (entry) entry.payload.consumed = epoch();
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const [key, entry] of store) {
      if (entry.payload.grantId === grantId) store.delete(key);
    }
  }
}

const grantTypes = [
  'authorization_code',
  'refresh_token',
  'urn:ietf:params:oauth:grant-type:device_code',
  'client_credentials',
];
// Native (loopback redirect, any port: RFC 8252 §7.3) clients, confidential and public.
const clients = [
  {
    client_id: 'conf-basic',
    client_secret: `conf-basic-secret-0123456789${suffix}`,
    token_endpoint_auth_method: 'client_secret_basic',
  },
  {
    client_id: 'conf-post',
    client_secret: `conf-post-secret-0123456789${suffix}`,
    token_endpoint_auth_method: 'client_secret_post',
  },
  { client_id: 'public-app', token_endpoint_auth_method: 'none' },
].map((client) => ({
  application_type: 'native',
  redirect_uris: ['http://127.0.0.1/'],
  response_types: ['code'],
  scope: 'openid email offline_access api:read',
  grant_types: client.token_endpoint_auth_method === 'none'
    ? grantTypes.filter((type) => type !== 'client_credentials')
    : grantTypes,
  ...client,
}));

const configuration = {
  adapter: MemoryAdapter,
  clients,
  scopes: ['openid', 'offline_access', 'email', 'api:read'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  features: {
    devInteractions: { enabled: false },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    clientCredentials: { enabled: true },
  },
  // PKCE (S256) for every client, confidential ones too: the server DESIGN.md describes, and
  // OAuth 2.1. (oidc-provider's default requires it of public clients only.)
  pkce: { required: () => true },
  // Every refresh rotates, and a replayed (already rotated) refresh token revokes the grant.
  rotateRefreshToken: () => true,
  ttl: {
    AccessToken: Number(process.env.ACCESS_TTL ?? 3600),
    ClientCredentials: Number(process.env.ACCESS_TTL ?? 3600),
    RefreshToken: 14 * 24 * 3600,
    DeviceCode: 600,
    AuthorizationCode: 60,
    Grant: 14 * 24 * 3600,
    Interaction: 600,
    Session: 3600,
  },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, email: `${id}@example.com`, email_verified: true }),
  }),
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  // The ID token carries the scopes' claims (email), as Google's and Microsoft's do.
  conformIdTokenClaims: false,
  cookies: { keys: ['conformance-cookie-key'] },
};
// Created once the port is known: the issuer names it.
let provider;

/// The headless user: logs in as alice and approves every scope asked for.
async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  if (details.prompt.name === 'login') {
    await provider.interactionFinished(req, res, { login: { accountId: ACCOUNT } }, {
      mergeWithLastSubmission: false,
    });
    return;
  }
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
  const missing = details.prompt.details.missingOIDCScope;
  if (missing) grant.addOIDCScope(missing.join(' '));
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId } }, {
    mergeWithLastSubmission: true,
  });
}

/// What the device verification pages do once the user confirmed: the code belongs to alice
/// and a grant for the scopes asked for.
async function approveDevice(userCode) {
  // As the verification page does: the code as typed, without its dash, in capitals.
  const normalized = String(userCode).replace(/[^a-zA-Z0-9]/g, '').toUpperCase();
  const code = await provider.DeviceCode.findByUserCode(normalized);
  if (!code) return false;
  const grant = new provider.Grant({ accountId: ACCOUNT, clientId: code.clientId });
  grant.addOIDCScope(code.params.scope);
  const grantId = await grant.save();
  Object.assign(code, {
    accountId: ACCOUNT,
    authTime: epoch(),
    grantId,
    scope: code.params.scope,
  });
  await code.save();
  return true;
}

/// The user revokes the app's access: every grant of the account, and all its tokens.
async function revokeGrants(accountId) {
  let revoked = 0;
  for (const [key, entry] of [...store]) {
    if (key.startsWith('Grant:') && entry.payload.accountId === accountId) {
      const grantId = key.slice('Grant:'.length);
      await new MemoryAdapter('any').revokeByGrantId(grantId);
      store.delete(key);
      revoked += 1;
    }
  }
  return revoked;
}

let callback;
const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  try {
    if (url.pathname.startsWith('/interaction/')) {
      await interaction(req, res);
    } else if (url.pathname === '/admin/approve-device') {
      const approved = await approveDevice(url.searchParams.get('user_code'));
      res.writeHead(approved ? 200 : 404).end(approved ? 'approved\n' : 'no such code\n');
    } else if (url.pathname === '/admin/revoke-grants') {
      const revoked = await revokeGrants(url.searchParams.get('account') ?? ACCOUNT);
      res.writeHead(200).end(`${revoked}\n`);
    } else {
      callback(req, res);
    }
  } catch (err) {
    res.writeHead(500).end(String(err));
  }
});
server.listen(port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  provider = new Provider(issuer, configuration);
  callback = provider.callback();
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});
