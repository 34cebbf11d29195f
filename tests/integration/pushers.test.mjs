// Pushers (pusher.yaml) and push delivery to a push gateway (the push gateway API's
// POST /_matrix/push/v1/notify, as Sygnal takes it), with a fake gateway on loopback: a call
// to a user whose only device is a phone must reach the phone's gateway, a rejected pushkey
// removes its pusher, and a gateway that is down gets retries with back-off and a bounded queue.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, register, makeDir, userHandle } from '../lib/harness.mjs';
import { makeCertificates } from '../lib/tls.mjs';

const enc = encodeURIComponent;
const PUSH = { allow_private_addresses: true, retry_initial_ms: 100, retry_max_ms: 400, queue_per_pusher: 5 };

// A push gateway: records every request; `answer` decides the reply.
function gateway() {
  const g = {
    requests: [],
    waiters: [],
    answer: () => ({ status: 200, body: { rejected: [] } }),
    // Resolves with the first request (from `from` on) that `pred` accepts; fails after `ms`.
    next(pred = () => true, { from = 0, ms = 10000 } = {}) {
      const found = g.requests.slice(from).find(pred);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no matching push within ${ms} ms; got ${JSON.stringify(g.requests.slice(from))}`)), ms);
        g.waiters.push({ pred, from, resolve: (r) => (clearTimeout(timer), resolve(r)) });
      });
    },
  };
  g.server = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const entry = { path: req.url, method: req.method, body: JSON.parse(body), at: Date.now() };
      g.requests.push(entry);
      const { status, body: reply } = g.answer(entry);
      res.writeHead(status, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(reply));
      const index = g.requests.length - 1;
      g.waiters = g.waiters.filter((w) => !(index >= w.from && w.pred(entry) && (w.resolve(entry), true)));
    });
  });
  return new Promise((resolve) => g.server.listen(0, '127.0.0.1', () => {
    g.url = `http://127.0.0.1:${g.server.address().port}/_matrix/push/v1/notify`;
    resolve(g);
  }));
}

let dir;
let server;
let gw;
let alice;
let bob;
let roomId;

const pusher = (url, { data = {}, ...extra } = {}) => ({
  kind: 'http', app_id: 'org.example.phone', pushkey: 'bob-phone-key', app_display_name: 'Phone',
  device_display_name: "Bob's phone", lang: 'en', data: { url, format_note: 'custom', ...data }, ...extra,
});

before(async () => {
  dir = makeDir();
  gw = await gateway();
  server = await startServer({ dir, config: { push: PUSH } });
  alice = await register(server.url, 'alice');
  bob = await register(server.url, 'bob');
  roomId = await alice.createRoom({ preset: 'trusted_private_chat', is_direct: true, invite: [bob.userId] });
  assert.equal((await bob.join(roomId)).status, 200);
});
after(async () => {
  await server?.stop();
  gw.server.close();
  rmSync(dir, { recursive: true, force: true });
});

test('POST /pushers/set: what it refuses, what GET /pushers shows, deleting with kind null', async () => {
  const set = (body) => bob.call('POST', '/pushers/set', { body });
  const cases = [
    [{ ...pusher(gw.url), lang: undefined }, 'M_MISSING_PARAM'],
    [{ ...pusher(gw.url), pushkey: undefined }, 'M_MISSING_PARAM'],
    [{ ...pusher(gw.url), kind: undefined }, 'M_MISSING_PARAM'],
    [pusher(gw.url.replace('/_matrix/push/v1/notify', '/notify')), 'M_INVALID_PARAM'],
    [pusher('ftp://127.0.0.1/_matrix/push/v1/notify'), 'M_INVALID_PARAM'],
    [{ ...pusher(gw.url), data: { format: 'event_id_only' } }, 'M_MISSING_PARAM'],
    [{ ...pusher(gw.url), kind: 'email' }, 'M_INVALID_PARAM'],
    [{ ...pusher(gw.url), pushkey: 'k'.repeat(513) }, 'M_INVALID_PARAM'],
    [{ ...pusher(gw.url), app_id: 'a'.repeat(65) }, 'M_INVALID_PARAM'],
  ];
  for (const [body, errcode] of cases) {
    const res = await set(JSON.parse(JSON.stringify(body)));
    assert.equal(res.status, 400, `${JSON.stringify(body)}: ${res.text}`);
    assert.equal(res.body.errcode, errcode, res.text);
  }
  assert.match((await set({ ...pusher(gw.url), lang: undefined, data: undefined })).body.error, /lang, data/);
  assert.deepEqual((await bob.call('GET', '/pushers')).body, { pushers: [] });

  assert.equal((await set({ ...pusher(gw.url), pushkey: 'temp', profile_tag: 'tag' })).status, 200);
  const list = (await bob.call('GET', '/pushers')).body.pushers;
  assert.deepEqual(list, [{
    pushkey: 'temp', kind: 'http', app_id: 'org.example.phone', app_display_name: 'Phone',
    device_display_name: "Bob's phone", lang: 'en', data: { url: gw.url, format_note: 'custom' }, profile_tag: 'tag',
  }]);
  assert.equal((await set({ app_id: 'org.example.phone', pushkey: 'temp', kind: null })).status, 200);
  assert.deepEqual((await bob.call('GET', '/pushers')).body, { pushers: [] });
});

test('an m.call.invite to a user whose only device has a pusher reaches the gateway within a second', async () => {
  assert.equal((await bob.call('POST', '/pushers/set', { body: pusher(gw.url) })).status, 200);
  const from = gw.requests.length;
  const content = { call_id: 'c1', party_id: 'p1', version: '1', lifetime: 60000, offer: { type: 'offer', sdp: 'v=0\r\n' } };
  const sent = await alice.send(roomId, 'm.call.invite', content);
  assert.equal(sent.status, 200);
  const push = await gw.next((r) => r.body.notification.event_id === sent.body.event_id, { from, ms: 1000 });
  assert.equal(push.method, 'POST');
  assert.equal(push.path, '/_matrix/push/v1/notify');
  const n = push.body.notification;
  assert.equal(n.room_id, roomId);
  assert.equal(n.type, 'm.call.invite');
  assert.equal(n.sender, alice.userId);
  assert.equal(n.sender_display_name, 'alice');
  assert.deepEqual(n.content, content);
  assert.equal(n.prio, 'high');
  assert.equal(n.counts.unread, 1);
  assert.deepEqual(n.devices, [{
    app_id: 'org.example.phone', pushkey: 'bob-phone-key', pushkey_ts: n.devices[0].pushkey_ts,
    data: { format_note: 'custom' }, tweaks: { sound: 'ring' },
  }]);
  assert.ok(Number.isInteger(n.devices[0].pushkey_ts) && n.devices[0].pushkey_ts > 1.6e9);
  // The sender's own events are not pushed to them, and quiet events are not pushed at all.
  await alice.send(roomId, 'm.call.candidates', { call_id: 'c1', party_id: 'p1', version: '1', candidates: [] });
  const msg = await alice.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'ring ring' });
  const next = await gw.next((r) => r.body.notification.event_id === msg.body.event_id, { from });
  assert.equal(next.body.notification.counts.unread, 2);
  assert.equal(gw.requests.slice(from).length, 2, JSON.stringify(gw.requests.slice(from)));
});

test('format event_id_only sends the ids, counts and device only', async () => {
  assert.equal((await bob.call('POST', '/pushers/set', { body: pusher(gw.url, { data: { format: 'event_id_only' } }) })).status, 200);
  const from = gw.requests.length;
  const msg = await alice.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'secret' });
  const push = await gw.next((r) => r.body.notification.event_id === msg.body.event_id, { from });
  const n = push.body.notification;
  assert.deepEqual(Object.keys(n).sort(), ['counts', 'devices', 'event_id', 'prio', 'room_id']);
  assert.equal(n.devices[0].data.format, 'event_id_only');
  assert.equal((await bob.call('POST', '/pushers/set', { body: pusher(gw.url) })).status, 200);
});

test('a gateway that is down gets retries with back-off, and its queue is bounded', async () => {
  let failing = true;
  gw.answer = () => (failing ? { status: 503, body: {} } : { status: 200, body: { rejected: [] } });
  const from = gw.requests.length;
  const first = await alice.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'q0' });
  // Five attempts at the first notification: each refused, each retried.
  for (let i = 0; i < 5; i++) await gw.next((r) => r.body.notification.event_id === first.body.event_id, { from: gw.requests.length });
  // More than the queue holds (5) while the gateway is down.
  const ids = [first.body.event_id];
  for (let i = 1; i < 12; i++) ids.push((await alice.send(roomId, 'm.room.message', { msgtype: 'm.text', body: `q${i}` })).body.event_id);
  const last = ids.at(-1);
  const recovered = gw.requests.length;
  failing = false;
  await gw.next((r) => r.body.notification.event_id === last, { from: recovered });
  const delivered = gw.requests.slice(recovered).map((r) => r.body.notification.event_id);
  // In order, the one in flight first, then the newest the queue kept; the rest were dropped.
  assert.deepEqual(delivered, [ids[0], ...ids.slice(-4)]);
  // The waits grew: 100, 200, 400, 400 ms (push.retry_initial_ms doubling to retry_max_ms).
  const waits = [...server.log.matchAll(/retrying in (\d+) ms/g)].map((m) => Number(m[1]));
  assert.deepEqual(waits.slice(0, 4), [100, 200, 400, 400]);
  assert.match(server.log, /notifications for @bob:localhost were dropped/);
  assert.ok(gw.requests.length - from < 40, `${gw.requests.length - from} requests`);
});

test('a gateway that rejects the pushkey removes the pusher', async () => {
  gw.answer = (r) => ({ status: 200, body: { rejected: r.body.notification.devices.map((d) => d.pushkey) } });
  const msg = await alice.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'gone?' });
  await gw.next((r) => r.body.notification.event_id === msg.body.event_id, { from: 0 });
  // The server acts on the answer after the gateway has sent it: ask until it has.
  let list;
  for (let i = 0; i < 1000; i++) {
    list = (await bob.call('GET', '/pushers')).body.pushers;
    if (list.length === 0) break;
  }
  assert.deepEqual(list, []);
  assert.match(server.log, /rejected the pushkey of a pusher of @bob:localhost/);
  gw.answer = () => ({ status: 200, body: { rejected: [] } });
});

test('a pusher is kept across a restart, goes with its device, and moves with its pushkey', async () => {
  const phone = await (await fetch(`${server.url}/_matrix/client/v3/login`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ type: 'm.login.password', identifier: { type: 'm.id.user', user: 'bob' }, password: 'secret-bob' }),
  })).json();
  const bobPhone = userHandle(server.url, phone);
  assert.equal((await bobPhone.call('POST', '/pushers/set', { body: pusher(gw.url, { pushkey: 'phone2' }) })).status, 200);
  const tokens = [alice, bob, bobPhone].map((u) => ({ user_id: u.userId, access_token: u.token, device_id: u.deviceId }));
  await server.stop();
  server = await startServer({ dir, config: { push: PUSH } });
  const [a, b, p] = tokens.map((t) => userHandle(server.url, t));
  alice = a;
  bob = b;
  assert.deepEqual((await b.call('GET', '/pushers')).body.pushers.map((x) => x.pushkey), ['phone2']);
  const from = gw.requests.length;
  const msg = await alice.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'after restart' });
  await gw.next((r) => r.body.notification.event_id === msg.body.event_id, { from });
  // The same app and pushkey set by alice without append moves the pusher to her.
  assert.equal((await alice.call('POST', '/pushers/set', { body: pusher(gw.url, { pushkey: 'phone2' }) })).status, 200);
  assert.deepEqual((await b.call('GET', '/pushers')).body.pushers, []);
  // Signing out a device removes its pushers.
  assert.equal((await b.call('POST', '/pushers/set', { body: pusher(gw.url, { pushkey: 'phone3' }) })).status, 200);
  assert.equal((await p.call('POST', '/pushers/set', { body: pusher(gw.url, { pushkey: 'phone4' }) })).status, 200);
  assert.equal((await p.call('POST', '/logout', { body: {} })).status, 200);
  assert.deepEqual((await b.call('GET', '/pushers')).body.pushers.map((x) => x.pushkey), ['phone3']);
});

test('an https gateway is reached over TLS with its certificate checked: one from an unknown authority gets nothing', async () => {
  const certs = makeDir();
  makeCertificates(certs);
  let requests = 0;
  let refusedHandshakes = 0;
  const https = createHttpsServer({ key: readFileSync(join(certs, 'good.key')), cert: readFileSync(join(certs, 'good.pem')) }, (req, res) => {
    requests++;
    res.end('{}');
  });
  https.on('tlsClientError', () => refusedHandshakes++);
  await new Promise((resolve) => https.listen(0, '127.0.0.1', resolve));
  try {
    const dave = await register(server.url, 'dave');
    const room = await alice.createRoom({ preset: 'trusted_private_chat', is_direct: true, invite: [dave.userId] });
    assert.equal((await dave.join(room)).status, 200);
    const url = `https://localhost:${https.address().port}/_matrix/push/v1/notify`;
    const set = await dave.call('POST', '/pushers/set', { body: { ...pusher(url), pushkey: 'dave-phone-key' } });
    assert.equal(set.status, 200, set.text);
    assert.equal((await alice.send(room, 'm.room.message', { msgtype: 'm.text', body: 'over TLS' })).status, 200);
    // The test's authority is not among the system's: the handshake fails, and is retried.
    await server.logged(new RegExp(`delivery to the gateway of a pusher of ${dave.userId.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} failed \\([^)]*certificate verify failed`));
    assert.ok(refusedHandshakes >= 1);
    assert.equal(requests, 0);
    assert.equal((await dave.call('POST', '/pushers/set', { body: { app_id: 'org.example.phone', pushkey: 'dave-phone-key', kind: null } })).status, 200);
  } finally {
    https.close();
    rmSync(certs, { recursive: true, force: true });
  }
});

test('past caches.push_rules and caches.pushers: each member is pushed by their own rules and pushers, before and after a restart', async () => {
  // One user's rules, pushers and unread counts held at a time; an event's audience is read
  // from the database in one read each, nothing of either at start, and counts let go are
  // made again from the database.
  const d = makeDir();
  const config = { push: PUSH, caches: { push_rules: 1, pushers: 1, notifications: 1 }, log_level: 'debug' };
  let s = await startServer({ dir: d, config });
  try {
    const users = {};
    for (const name of ['ann', 'ben', 'cat']) users[name] = await register(s.url, name);
    const room = await users.ann.createRoom({ preset: 'public_chat' });
    for (const name of ['ben', 'cat']) {
      assert.equal((await users[name].join(room)).status, 200);
      const body = pusher(gw.url, { pushkey: `${name}-key`, app_id: 'org.example.cache' });
      assert.equal((await users[name].call('POST', '/pushers/set', { body })).status, 200);
    }
    // cat highlights on a keyword; ben keeps the predefined rules.
    const keyword = { pattern: 'pineapple', actions: ['notify', { set_tweak: 'highlight' }] };
    assert.equal((await users.cat.call('PUT', '/pushrules/global/content/pineapple', { body: keyword })).status, 200);
    // Sends a message and returns {ben, cat}: the push each one's pusher got for it.
    const pushes = async (body) => {
      const from = gw.requests.length;
      const sent = await users.ann.send(room, 'm.room.message', { msgtype: 'm.text', body });
      assert.equal(sent.status, 200);
      const of = (name) => gw.next((r) => r.body.notification.event_id === sent.body.event_id &&
        r.body.notification.devices[0].pushkey === `${name}-key`, { from });
      const [b, c] = await Promise.all([of('ben'), of('cat')]);
      return { ben: b.body.notification, cat: c.body.notification };
    };
    let got = await pushes('a pineapple');
    assert.deepEqual(got.ben.devices[0].tweaks, {});
    assert.deepEqual(got.cat.devices[0].tweaks, { highlight: true });
    assert.equal(got.ben.counts.unread, 1);
    assert.equal(got.cat.counts.unread, 1);

    const tokens = Object.values(users).map((u) => ({ user_id: u.userId, access_token: u.token, device_id: u.deviceId }));
    await s.stop();
    s = await startServer({ dir: d, config });
    for (const t of tokens) users[t.user_id.slice(1, 4)] = userHandle(s.url, t);
    got = await pushes('another pineapple');
    // Both members' rules and pushers were read for the event, in one read each.
    assert.match(s.log, /push rules of 2 users read from the database \(1 held\)/);
    assert.match(s.log, /the pushers of 2 users read from the database \(1 held\)/);
    assert.deepEqual(got.ben.devices[0].tweaks, {});
    assert.deepEqual(got.cat.devices[0].tweaks, { highlight: true });
    assert.equal(got.ben.counts.unread, 2);
    assert.equal(got.cat.counts.unread, 2);

    // A change reaches the rules held, and ben's pusher moves to a new pushkey.
    assert.equal((await users.cat.call('PUT', '/pushrules/global/content/pineapple/enabled', { body: { enabled: false } })).status, 200);
    assert.equal((await users.ben.call('POST', '/pushers/set', { body: { ...pusher(gw.url, { pushkey: 'ben-key', app_id: 'org.example.cache' }), kind: null } })).status, 200);
    assert.equal((await users.ben.call('POST', '/pushers/set', { body: pusher(gw.url, { pushkey: 'ben-key2', app_id: 'org.example.cache' }) })).status, 200);
    const from = gw.requests.length;
    const sent = await users.ann.send(room, 'm.room.message', { msgtype: 'm.text', body: 'pineapple again' });
    const toCat = await gw.next((r) => r.body.notification.event_id === sent.body.event_id && r.body.notification.devices[0].pushkey === 'cat-key', { from });
    const toBen = await gw.next((r) => r.body.notification.event_id === sent.body.event_id && r.body.notification.devices[0].app_id === 'org.example.cache' && r.body.notification.devices[0].pushkey !== 'cat-key', { from });
    assert.deepEqual(toCat.body.notification.devices[0].tweaks, {});
    assert.equal(toBen.body.notification.devices[0].pushkey, 'ben-key2');
    assert.deepEqual((await users.ben.call('GET', '/pushers')).body.pushers.map((p) => p.pushkey), ['ben-key2']);
  } finally {
    await s.stop();
    rmSync(d, { recursive: true, force: true });
  }
});
