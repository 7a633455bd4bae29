// TEST-ONLY OpenID Connect provider shaped like one Keycloak realm (npm `oidc-provider`).
//
// Loads clients, users (with passwords), groups and realm roles from a Keycloak realm export
// (the one twinhub ships for a real Keycloak), serves Keycloak's paths and claims:
//   issuer            http://127.0.0.1:<port>/realms/<realm>
//   discovery         /realms/<realm>/.well-known/openid-configuration
//   endpoints         /realms/<realm>/protocol/openid-connect/{auth,token,userinfo,logout,certs,
//                     token/introspect, auth/device}, device verification page /realms/<realm>/device
//   claims            preferred_username, groups (full paths), realm_access.roles (from the
//                     export's protocol mappers)
// with clock tolerance 0, a short token lifetime and PKCE (S256) where the client asks for it.
// The device authorization grant (RFC 8628) is on for clients with Keycloak's attribute
// oauth2.device.authorization.grant.enabled; like Keycloak it answers with an `interval`
// (realm oauth2DevicePollingInterval) and with `slow_down` to a client polling faster.
//
// Usage: node provider.mjs --realm-file F --port N [--redirect-uri U]... [--post-logout-uri U]...
//        [--ttl SECONDS] [--device-ttl SECONDS] [--device-interval SECONDS]
//        (prints "READY <port>" once listening)
//
// The /test-admin/* endpoints exist ONLY in this test provider (a stand-in for Keycloak's admin
// API): change a user's groups/roles at run time and make the next tokens of a user faulty
// (wrong issuer, wrong audience, expired, bad signature, bad nonce, no preferred_username, no
// groups), and
// change the device flow's code lifetime and polling intervals (POST /test-admin/device). They require
// the header X-Test-Admin-Token: $OIDC_TEST_ADMIN_TOKEN.

import http from 'node:http';
import crypto from 'node:crypto';
import fs from 'node:fs';
import Provider from 'oidc-provider';
import * as jose from 'jose';

function parseArgs(argv) {
  const out = { redirect: [], postLogout: [], ttl: 10, port: 0, deviceTtl: 0, deviceInterval: 0 };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    const v = argv[i + 1];
    if (a === '--realm-file') { out.realmFile = v; i += 1; }
    else if (a === '--port') { out.port = Number(v); i += 1; }
    else if (a === '--redirect-uri') { out.redirect.push(v); i += 1; }
    else if (a === '--post-logout-uri') { out.postLogout.push(v); i += 1; }
    else if (a === '--ttl') { out.ttl = Number(v); i += 1; }
    else if (a === '--device-ttl') { out.deviceTtl = Number(v); i += 1; }
    else if (a === '--device-interval') { out.deviceInterval = Number(v); i += 1; }
    else { throw new Error(`unknown argument ${a}`); }
  }
  if (!out.realmFile) throw new Error('--realm-file is required');
  return out;
}

const args = parseArgs(process.argv.slice(2));
const adminToken = process.env.OIDC_TEST_ADMIN_TOKEN || '';
const realm = JSON.parse(fs.readFileSync(args.realmFile, 'utf8'));
const prefix = `/realms/${realm.realm}`;
// Device flow settings, as Keycloak's realm attributes (defaults: Keycloak's 600 s and 5 s).
const device = {
  ttl: args.deviceTtl || realm.oauth2DeviceCodeLifespan || 600,
  interval: args.deviceInterval || realm.oauth2DevicePollingInterval || 5,
  // Polls closer together than this get slow_down (test-admin may set it above `interval`).
  minInterval: 0,
};
const lastPoll = new Map(); // device_code -> time of its latest poll (ms)
const deviceExpiry = new Map(); // device_code -> when it expires (ms)

// -- realm export -> users, clients, claims ---------------------------------------------------
const groupPaths = new Set();
(function walk(groups) {
  for (const g of groups || []) { groupPaths.add(g.path); walk(g.subGroups); }
}(realm.groups));
const realmRoles = new Map((realm.roles?.realm || []).map((r) => [r.name, r]));

function expandRoles(names) {
  // Keycloak puts composite roles' members in realm_access.roles too.
  const out = new Set();
  const visit = (n) => {
    if (out.has(n)) return;
    out.add(n);
    for (const c of realmRoles.get(n)?.composites?.realm || []) visit(c);
  };
  names.forEach(visit);
  return [...out];
}

const users = new Map(); // sub -> user
for (const u of realm.users || []) {
  const cred = (u.credentials || []).find((c) => c.type === 'password');
  for (const g of u.groups || []) {
    if (!groupPaths.has(g)) throw new Error(`user ${u.username}: unknown group ${g}`);
  }
  users.set(u.id, {
    sub: u.id,
    username: u.username,
    enabled: u.enabled !== false,
    password: cred?.value,
    email: u.email,
    emailVerified: !!u.emailVerified,
    firstName: u.firstName,
    lastName: u.lastName,
    groups: [...(u.groups || [])],
    roles: [...(u.realmRoles || [])],
    quirk: null,
  });
}
const byName = (name) => [...users.values()].find((u) => u.username === name);

// Claims produced by each client's protocol mappers (claim.name "a.b" is a nested claim).
const mapperClaims = new Set();
const clients = (realm.clients || []).filter((c) => c.enabled !== false && c.protocol === 'openid-connect').map((c) => {
  for (const m of c.protocolMappers || []) {
    if (m.config?.['claim.name']) mapperClaims.add(m.config['claim.name'].split('.')[0]);
  }
  const attrs = c.attributes || {};
  // Keycloak allows a trailing "*" wildcard; oidc-provider only exact URIs: wildcards are skipped.
  const exact = (list) => list.filter((u) => u && !u.includes('*'));
  const postLogout = (attrs['post.logout.redirect.uris'] || '').split('##');
  // Keycloak's switches: standard flow (code), device authorization grant.
  const standard = c.standardFlowEnabled !== false;
  const deviceGrant = attrs['oauth2.device.authorization.grant.enabled'] === 'true';
  const meta = {
    client_id: c.clientId,
    client_name: c.name,
    redirect_uris: standard ? [...new Set([...exact(c.redirectUris || []), ...args.redirect])] : [],
    post_logout_redirect_uris: standard ? [...new Set([...exact(postLogout), ...args.postLogout])] : [],
    grant_types: [
      ...(standard ? ['authorization_code'] : []),
      ...(deviceGrant ? ['urn:ietf:params:oauth:grant-type:device_code'] : []),
      'refresh_token',
    ],
    response_types: standard ? ['code'] : [],
  };
  if (c.publicClient) meta.token_endpoint_auth_method = 'none';
  else {
    meta.client_secret = c.secret;
    meta.token_endpoint_auth_method = 'client_secret_post';
  }
  return { meta, pkce: attrs['pkce.code.challenge.method'] === 'S256' };
});
const pkceClients = new Set(clients.filter((c) => c.pkce).map((c) => c.meta.client_id));

function claimsOf(u) {
  const all = {
    sub: u.sub,
    preferred_username: u.username,
    name: [u.firstName, u.lastName].filter(Boolean).join(' '),
    given_name: u.firstName,
    family_name: u.lastName,
    email: u.email,
    email_verified: u.emailVerified,
  };
  if (mapperClaims.has('groups')) all.groups = [...u.groups];
  if (mapperClaims.has('realm_access')) all.realm_access = { roles: expandRoles(u.roles) };
  if (u.quirk === 'no-username') delete all.preferred_username;
  if (u.quirk === 'no-groups') delete all.groups;
  return all;
}

// -- provider --------------------------------------------------------------------------------
const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
const signingJwk = { ...(await jose.exportJWK(privateKey)), kid: 'test-rs256', alg: 'RS256', use: 'sig' };
const otherKey = (await jose.generateKeyPair('RS256', { extractable: true })).privateKey;

const server = http.createServer();
await new Promise((resolve) => { server.listen(args.port, '127.0.0.1', resolve); });
const port = server.address().port;
const issuer = `http://127.0.0.1:${port}${prefix}`;

const provider = new Provider(issuer, {
  clients: clients.map((c) => c.meta),
  jwks: { keys: [signingJwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  clockTolerance: 0,
  ttl: {
    AccessToken: args.ttl,
    IdToken: args.ttl,
    AuthorizationCode: 60,
    DeviceCode: () => device.ttl,
    RefreshToken: 3600,
    Interaction: 600,
    Session: 3600,
    Grant: 3600,
  },
  pkce: { required: (ctx, client) => pkceClients.has(client.clientId) },
  claims: {
    openid: ['sub', ...mapperClaims],
    profile: ['preferred_username', 'name', 'given_name', 'family_name'],
    email: ['email', 'email_verified'],
  },
  scopes: ['openid', 'profile', 'email', 'offline_access', 'roles', 'web-origins'],
  routes: {
    authorization: '/protocol/openid-connect/auth',
    token: '/protocol/openid-connect/token',
    userinfo: '/protocol/openid-connect/userinfo',
    end_session: '/protocol/openid-connect/logout',
    jwks: '/protocol/openid-connect/certs',
    revocation: '/protocol/openid-connect/revoke',
    introspection: '/protocol/openid-connect/token/introspect',
    device_authorization: '/protocol/openid-connect/auth/device',
    code_verification: '/device',
  },
  features: {
    devInteractions: { enabled: false },
    rpInitiatedLogout: { enabled: true },
    revocation: { enabled: true },
    // Keycloak lets confidential clients (the hub) introspect any token of the realm.
    introspection: { enabled: true },
    deviceFlow: {
      enabled: true,
      // Keycloak's user codes: 8 letters shown as XXXX-XXXX.
      charset: 'base-20',
      mask: '****-****',
      userCodeInputSource: devicePage('Device Login', 'Enter the code displayed on your device'),
      userCodeConfirmSource: async (ctx, form, client, deviceInfo, userCode) => {
        const page = devicePage(
          'Grant Access',
          `Do you grant <b>${esc(client.clientName || client.clientId)}</b> access? Code: <code id="user-code">${esc(userCode)}</code>`,
          '<button type="submit" form="op.deviceConfirmForm" id="kc-login">Yes</button> '
          + '<button type="submit" form="op.deviceConfirmForm" name="abort" value="yes" id="kc-cancel">No</button>',
        );
        await page(ctx, form);
      },
      successSource: async (ctx) => {
        ctx.body = '<!DOCTYPE html><html><head><title>Device Login Successful</title></head>'
          + '<body><h1 id="kc-page-title">Device Login Successful</h1></body></html>';
      },
    },
  },
  interactions: { url: (ctx, interaction) => `${prefix}/login-actions/authenticate/${interaction.uid}` },
  // Keycloak issues refresh tokens for every code flow (use.refresh.tokens).
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Keycloak clients with consentRequired=false never show a consent screen.
  loadExistingGrant: async (ctx) => {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    const found = grantId ? await ctx.oidc.provider.Grant.find(grantId) : undefined;
    const grant = found || new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope(ctx.oidc.params?.scope || 'openid');
    await grant.save();
    return grant;
  },
  findAccount: async (ctx, sub) => {
    const u = users.get(sub);
    if (!u || !u.enabled) return undefined;
    return { accountId: sub, claims: async () => claimsOf(u) };
  },
});

// Keycloak-like device flow answers: `interval` in the device authorization response, and
// slow_down (instead of authorization_pending) to a client polling faster than allowed.
provider.use(async (ctx, next) => {
  await next();
  const route = ctx.oidc?.route;
  if (route === 'device_authorization' && ctx.status === 200 && ctx.body?.device_code) {
    ctx.body = { ...ctx.body, interval: device.interval };
    deviceExpiry.set(ctx.body.device_code, Date.now() + ctx.body.expires_in * 1000);
  } else if (route === 'token' && ctx.oidc.params?.grant_type === 'urn:ietf:params:oauth:grant-type:device_code') {
    const code = String(ctx.oidc.params.device_code || '');
    const now = Date.now();
    const last = lastPoll.get(code);
    lastPoll.set(code, now);
    const min = Math.max(device.interval, device.minInterval) * 1000;
    if (last !== undefined && now - last < min && ctx.body?.error === 'authorization_pending') {
      ctx.body = { error: 'slow_down', error_description: 'polling too fast' };
    } else if (ctx.body?.error === 'invalid_grant' && deviceExpiry.get(code) <= now) {
      // oidc-provider forgets expired codes (invalid_grant); Keycloak answers expired_token.
      ctx.body = { error: 'expired_token', error_description: 'Device code is expired' };
    }
  }
});
const callback = provider.callback();

// -- helpers ---------------------------------------------------------------------------------
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);

function devicePage(title, text, buttons = '') {
  // Keycloak's device pages: code entry, then "Grant Access" with Yes / No.
  return async (ctx, form, out, err) => {
    const error = err ? `<span id="input-error">${esc(err.userCode ? 'Invalid code, please try again.' : err.message)}</span>` : '';
    ctx.body = `<!DOCTYPE html><html><head><title>${esc(title)}</title></head><body>
<h1 id="kc-page-title">${esc(title)}</h1><p>${text}</p>${error}
${form}
${buttons || '<button type="submit" form="op.deviceInputForm" id="kc-login">Submit</button>'}
</body></html>`;
  };
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}

function loginPage(res, uid, error, username) {
  // Keycloak's login form: id kc-form-login, fields username/password, error in #input-error.
  res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
  res.end(`<!DOCTYPE html><html><head><title>Sign in to ${esc(realm.displayName || realm.realm)}</title></head><body>
<h1 id="kc-page-title">Sign in to your account</h1>
${error ? `<span id="input-error">${esc(error)}</span>` : ''}
<form id="kc-form-login" method="post" action="${prefix}/login-actions/authenticate/${esc(uid)}">
<input id="username" name="username" value="${esc(username)}" autofocus>
<input id="password" name="password" type="password">
<input type="submit" name="login" id="kc-login" value="Sign In">
</form></body></html>`);
}

async function interaction(req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction mismatch');
  if (details.prompt.name !== 'login') {
    // Consent is implicit (loadExistingGrant); anything else is finished as is.
    await provider.interactionFinished(req, res, {}, { mergeWithLastSubmission: true });
    return;
  }
  if (req.method === 'GET') { loginPage(res, uid, '', ''); return; }
  const form = new URLSearchParams(await readBody(req));
  const u = byName((form.get('username') || '').trim().toLowerCase());
  const ok = u && u.enabled && u.password
    && crypto.timingSafeEqual(
      crypto.createHash('sha256').update(u.password).digest(),
      crypto.createHash('sha256').update(form.get('password') || '').digest(),
    );
  if (!ok) { loginPage(res, uid, 'Invalid username or password.', form.get('username')); return; }
  await provider.interactionFinished(req, res, { login: { accountId: u.sub } }, { mergeWithLastSubmission: false });
}

async function testAdmin(req, res, path) {
  if (!adminToken || req.headers['x-test-admin-token'] !== adminToken) {
    res.writeHead(403); res.end('test admin token required'); return;
  }
  if (path === '/test-admin/device' && req.method === 'POST') {
    const body = JSON.parse((await readBody(req)) || '{}');
    for (const k of ['ttl', 'interval', 'minInterval']) if (k in body) device[k] = Number(body[k]);
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(device));
    return;
  }
  const m = path.match(/^\/test-admin\/users\/([^/]+)$/);
  const u = m && (byName(decodeURIComponent(m[1])) || users.get(decodeURIComponent(m[1])));
  if (!u) { res.writeHead(404); res.end('no such user'); return; }
  if (req.method === 'POST') {
    const body = JSON.parse((await readBody(req)) || '{}');
    for (const g of body.groups || []) {
      if (!groupPaths.has(g)) { res.writeHead(400); res.end(`unknown group ${g}`); return; }
    }
    if ('groups' in body) u.groups = body.groups;
    if ('realmRoles' in body) u.roles = body.realmRoles;
    if ('quirk' in body) u.quirk = body.quirk;
    if ('enabled' in body) u.enabled = body.enabled;
    if ('username' in body) u.username = body.username; // a rename in Keycloak
  }
  res.writeHead(200, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify({ username: u.username, sub: u.sub, groups: u.groups, realmRoles: u.roles, quirk: u.quirk }));
}

// Faulty tokens on demand: the token response's id_token is re-signed with altered claims.
async function alterIdToken(idToken) {
  const payload = jose.decodeJwt(idToken);
  const u = users.get(payload.sub);
  if (!u || !u.quirk || u.quirk.startsWith('no-')) return idToken;
  const now = Math.floor(Date.now() / 1000);
  let key = privateKey;
  if (u.quirk === 'wrong-issuer') payload.iss = `http://127.0.0.1:${port}/realms/other`;
  else if (u.quirk === 'wrong-audience') payload.aud = 'some-other-client';
  else if (u.quirk === 'expired') { payload.iat = now - 120; payload.exp = now - 1; }
  else if (u.quirk === 'bad-signature') key = otherKey;
  else if (u.quirk === 'bad-nonce') payload.nonce = 'not-the-nonce-of-this-login';
  return new jose.SignJWT(payload).setProtectedHeader({ alg: 'RS256', kid: 'test-rs256', typ: 'JWT' }).sign(key);
}

function interceptTokenResponse(res) {
  const end = res.end.bind(res);
  res.end = (chunk, ...rest) => {
    let body;
    try { body = JSON.parse(Buffer.isBuffer(chunk) ? chunk.toString('utf8') : chunk); } catch { return end(chunk, ...rest); }
    if (!body?.id_token) return end(chunk, ...rest);
    alterIdToken(body.id_token).then((tok) => {
      const out = JSON.stringify({ ...body, id_token: tok });
      if (!res.headersSent) res.setHeader('Content-Length', Buffer.byteLength(out));
      end(out);
    }, (err) => { console.error(err); end(chunk, ...rest); });
    return res;
  };
}

server.on('request', async (req, res) => {
  try {
    const url = new URL(req.url, issuer);
    if (url.pathname.startsWith('/test-admin/')) { await testAdmin(req, res, url.pathname); return; }
    if (!url.pathname.startsWith(prefix)) { res.writeHead(404); res.end('not found'); return; }
    const rest = url.pathname.slice(prefix.length);
    const m = rest.match(/^\/login-actions\/authenticate\/([^/]+)$/);
    if (m) { await interaction(req, res, m[1]); return; }
    if (rest === '/protocol/openid-connect/token') interceptTokenResponse(res);
    // Mounted under the realm prefix: oidc-provider derives its own URLs from originalUrl.
    req.originalUrl = req.url;
    req.url = req.url.slice(prefix.length) || '/';
    callback(req, res);
  } catch (err) {
    console.error(err);
    if (!res.headersSent) res.writeHead(500);
    res.end(String(err?.message || err));
  }
});

provider.on('server_error', (ctx, err) => console.error('server_error', err));
console.log(`READY ${port}`);
