// GET /voip/turnServer: credentials that a real coturn (use-auth-secret) accepts for a
// relayed exchange, and that it refuses when tampered with, expired or made with another
// secret; every path, token form, guests, static mode, unconfigured, rate limit.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { startServer, register, api } from '../lib/harness.mjs';
import { startCoturn, turnClient } from '../lib/coturn.mjs';

const secret = randomBytes(24).toString('base64');
let coturn;
let server;
let alice;
const turnConfig = () => ({
  turn_uris: [`turn:127.0.0.1:${coturn.port}?transport=udp`, `turn:127.0.0.1:${coturn.port}?transport=tcp`],
  turn_shared_secret: secret,
  turn_user_lifetime: '1h',
  allow_guest_access: true,
});

before(async () => {
  coturn = await startCoturn({ secret });
  server = await startServer({ config: turnConfig() });
  alice = await register(server.url, 'alice');
});
after(async () => {
  await server?.stop();
  await coturn?.stop();
});

test('credentials have the use-auth-secret shape', async () => {
  const before = Math.floor(Date.now() / 1000);
  const res = await alice.call('GET', '/voip/turnServer');
  assert.equal(res.status, 200);
  const [expiry, ...rest] = res.body.username.split(':');
  assert.equal(rest.join(':'), alice.userId);
  assert.ok(Number(expiry) >= before + 3600 && Number(expiry) <= before + 3602, res.body.username);
  assert.equal(res.body.ttl, 3600);
  assert.match(res.body.password, /^[A-Za-z0-9+/]{27}=$/);
  assert.deepEqual(res.body.uris, turnConfig().turn_uris);
  assert.ok(!server.log.includes(secret), 'the shared secret is never logged');
});

test('coturn accepts them: allocation and relayed data over UDP and TCP', async () => {
  const { body } = await alice.call('GET', '/voip/turnServer');
  for (const tcp of [false, true]) {
    const run = turnClient(coturn, body.username, body.password, { tcp });
    assert.equal(run.status, 0, run.out.slice(-2000));
    assert.ok(run.received >= 10, `received ${run.received} relayed messages (${tcp ? 'tcp' : 'udp'})`);
    assert.equal(run.lost, 0);
  }
  const log = coturn.log();
  assert.match(log, new RegExp(`user <${body.username.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}>: incoming packet ALLOCATE processed, success`));
  assert.match(log, /CREATE_PERMISSION processed, success|CHANNEL_BIND processed, success/);
});

test('coturn refuses a tampered password with 401', async () => {
  const { body } = await alice.call('GET', '/voip/turnServer');
  const tampered = (body.password[0] === 'A' ? 'B' : 'A') + body.password.slice(1);
  const run = turnClient(coturn, body.username, tampered);
  assert.notEqual(run.status, 0);
  assert.equal(run.received, 0);
  assert.match(coturn.log(), new RegExp(`user <${body.username.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}>: incoming packet message processed, error 401`));
});

test('coturn refuses credentials made with another secret, and expired ones', async () => {
  const other = await startServer({ config: { ...turnConfig(), turn_shared_secret: 'not-the-coturn-secret' } });
  const shortLived = await startServer({ config: { ...turnConfig(), turn_user_lifetime: '1s' } });
  try {
    const bob = await register(other.url, 'bob');
    const wrong = (await bob.call('GET', '/voip/turnServer')).body;
    const runWrong = turnClient(coturn, wrong.username, wrong.password);
    assert.notEqual(runWrong.status, 0);
    assert.equal(runWrong.received, 0);

    assert.match(shortLived.log, /turn_user_lifetime 1s is under 10 minutes/);
    const carol = await register(shortLived.url, 'carol');
    const expiring = (await carol.call('GET', '/voip/turnServer')).body;
    assert.equal(expiring.ttl, 1);
    // The username starts with its expiry (unix seconds): wait until coturn's clock is past it.
    const expiry = Number(expiring.username.split(':')[0]);
    assert.ok(Math.abs(expiry - (Date.now() / 1000 + 1)) < 5, expiring.username);
    await new Promise((r) => setTimeout(r, Math.max(0, (expiry + 1) * 1000 - Date.now())));
    const runExpired = turnClient(coturn, expiring.username, expiring.password);
    assert.notEqual(runExpired.status, 0);
    assert.equal(runExpired.received, 0);
    const log = coturn.log();
    for (const u of [wrong.username, expiring.username])
      assert.match(log, new RegExp(`user <${u.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}>: incoming packet message processed, error 401`), u);
  } finally {
    await other.stop();
    await shortLived.stop();
  }
});

test('every path and both token forms; missing and unknown tokens', async () => {
  for (const path of ['/_matrix/client/v3/voip/turnServer', '/_matrix/client/r0/voip/turnServer',
    '/_matrix/client/unstable/voip/turnServer', '/_matrix/client/api/v1/turnServer', '/_matrix/client/api/v1/voip/turnServer']) {
    const header = await api(server.url, 'GET', path, { token: alice.token });
    assert.equal(header.status, 200, path);
    assert.ok(header.body.username.endsWith(`:${alice.userId}`), path);
    const query = await api(server.url, 'GET', path, { query: { access_token: alice.token } });
    assert.equal(query.status, 200, path);
  }
  const missing = await api(server.url, 'GET', '/_matrix/client/v3/voip/turnServer');
  assert.equal(missing.status, 401);
  assert.equal(missing.body.errcode, 'M_MISSING_TOKEN');
  const unknown = await api(server.url, 'GET', '/_matrix/client/v3/voip/turnServer', { token: 'mxv_wrong' });
  assert.equal(unknown.body.errcode, 'M_UNKNOWN_TOKEN');
});

test('guests: allowed by default, 403 M_GUEST_ACCESS_FORBIDDEN when turn_allow_guests is false', async () => {
  const guest = await api(server.url, 'POST', '/_matrix/client/v3/register', { query: { kind: 'guest' }, body: {} });
  const ok = await api(server.url, 'GET', '/_matrix/client/v3/voip/turnServer', { token: guest.body.access_token });
  assert.equal(ok.status, 200);
  const strict = await startServer({ config: { ...turnConfig(), turn_allow_guests: false } });
  try {
    const g = await api(strict.url, 'POST', '/_matrix/client/v3/register', { query: { kind: 'guest' }, body: {} });
    const denied = await api(strict.url, 'GET', '/_matrix/client/v3/voip/turnServer', { token: g.body.access_token });
    assert.equal(denied.status, 403);
    assert.equal(denied.body.errcode, 'M_GUEST_ACCESS_FORBIDDEN');
    const user = await register(strict.url, 'member');
    assert.equal((await user.call('GET', '/voip/turnServer')).status, 200);
  } finally {
    await strict.stop();
  }
});

test('static credentials, and 200 {} when TURN is not configured', async () => {
  const staticServer = await startServer({ config: { turn_uris: ['turns:turn.example.org:5349?transport=tcp'], turn_username: 'fixed', turn_password: 'pass', turn_user_lifetime: '1d' } });
  const plain = await startServer();
  try {
    const u = await register(staticServer.url, 'st');
    const res = await u.call('GET', '/voip/turnServer');
    assert.deepEqual(res.body, { username: 'fixed', password: 'pass', ttl: 86400, uris: ['turns:turn.example.org:5349?transport=tcp'] });
    const p = await register(plain.url, 'pl');
    const none = await p.call('GET', '/voip/turnServer');
    assert.equal(none.status, 200);
    assert.deepEqual(none.body, {});
    assert.match(plain.log, /TURN: not configured/);
  } finally {
    await staticServer.stop();
    await plain.stop();
  }
});

test('rc_turn: 429 M_LIMIT_EXCEEDED with retry_after_ms and an exposed Retry-After', async () => {
  const limited = await startServer({ config: { ...turnConfig(), rc_turn: { per_second: 0.2, burst_count: 2 } } });
  try {
    const u = await register(limited.url, 'lim');
    const codes = [];
    let last;
    for (let i = 0; i < 3; i++) {
      last = await u.call('GET', '/voip/turnServer');
      codes.push(last.status);
    }
    assert.deepEqual(codes, [200, 200, 429]);
    assert.equal(last.body.errcode, 'M_LIMIT_EXCEEDED');
    assert.ok(last.body.retry_after_ms > 4000 && last.body.retry_after_ms <= 5000, `${last.body.retry_after_ms}`);
    assert.equal(last.headers.get('retry-after'), '5');
    assert.match(last.headers.get('access-control-expose-headers'), /Retry-After/);
  } finally {
    await limited.stop();
  }
});
