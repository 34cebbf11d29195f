// What a hostile or careless client must not be able to do to the server: store text that is
// not UTF-8 (which once made every later /sync invalid JSON and the next start fail), spin on
// a fresh server's first sync token, or reach undefined behaviour with a state event sent as a
// message.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import net from 'node:net';
import { startServer, register, api, makeDir, userHandle, CS } from '../lib/harness.mjs';

// The body of a response as raw bytes, decoded strictly: a byte that is not UTF-8 throws.
async function strictJson(base, method, path, token) {
  const res = await fetch(base + path, { method, headers: { Authorization: `Bearer ${token}` } });
  const bytes = new Uint8Array(await res.arrayBuffer());
  const text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  return { status: res.status, body: JSON.parse(text) };
}

test('identifiers that are not UTF-8 are refused, and the server still restarts', async () => {
  const dir = makeDir();
  try {
    let server = await startServer({ dir });
    const alice = await register(server.url, 'alice');
    const room = await alice.createRoom({ preset: 'private_chat' });
    const r = encodeURIComponent(room);
    const u = encodeURIComponent(alice.userId);
    const attempts = [
      ['PUT', `/rooms/${r}/send/%FF/t1`], // event type
      ['PUT', `/rooms/${r}/send/m.room.message/%C0%AF`], // txn id (an overlong '/')
      ['PUT', `/rooms/${r}/state/m.room.topic/%ED%A0%80`], // state key (a surrogate)
      ['PUT', `/rooms/${r}/state/%F5%80%80%80`], // state event type
      ['PUT', `/user/${u}/account_data/%FF`], // account data type
      ['PUT', `/user/${u}/rooms/${r}/account_data/x%E2%82`], // room account data type
      ['GET', `/sync?since=%FF`], // a query value
      // NUL is UTF-8, but no text column of PostgreSQL holds it.
      ['PUT', `/user/${u}/account_data/org.example.a%00b`],
      ['PUT', `/rooms/${r}/state/m.room.topic/a%00`],
      ['GET', `/sync?filter=%00`],
    ];
    for (const [method, path] of attempts) {
      const body = method === 'PUT' ? { body: 'x', topic: 'x' } : undefined;
      const res = await api(server.url, method, CS + path, { token: alice.token, body });
      assert.equal(res.status, 400, `${method} ${path}: ${res.text}`);
      assert.equal(res.body.errcode, 'M_INVALID_PARAM', `${method} ${path}`);
    }
    // Valid UTF-8 outside ASCII is fine everywhere.
    const ok = await alice.send(room, 'org.example.café', { body: 'ünïcode ☎' }, 'txn-☎');
    assert.equal(ok.status, 200, ok.text);
    const sync = await strictJson(server.url, 'GET', `${CS}/sync`, alice.token);
    assert.equal(sync.status, 200);
    const types = sync.body.rooms.join[room].timeline.events.map((e) => e.type);
    assert.ok(types.includes('org.example.café'), types.join(', '));

    await server.stop();
    server = await startServer({ dir });
    const again = await strictJson(server.url, 'GET', `${CS}/sync`, alice.token);
    assert.equal(again.status, 200);
    assert.ok(again.body.rooms.join[room].timeline.events.some((e) => e.type === 'org.example.café'));
    const messages = await strictJson(server.url, 'GET', `${CS}/rooms/${r}/messages?dir=b`, alice.token);
    assert.equal(messages.status, 200);
    await server.stop();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// Resolves once the server's log matches `pattern`.
function logLine(server, pattern) {
  return new Promise((resolve) => {
    const check = () => {
      if (!pattern.test(server.log)) return false;
      server.proc.stderr.off('data', onData);
      resolve();
      return true;
    };
    const onData = () => setImmediate(check);
    server.proc.stderr.on('data', onData);
    check();
  });
}

test('on a fresh server, /sync?since=s0 waits for something new instead of answering at once', async () => {
  const server = await startServer({ config: { log_level: 'debug' } });
  try {
    const alice = await register(server.url, 'alice');
    const first = await alice.sync();
    assert.equal(first.next_batch, 's0', 'registering puts nothing in the stream');
    const parked = alice.sync({ since: first.next_batch, timeout: '30000' });
    // Once the server says the sync waits, make something for it to wait for. (Before the
    // fix the sync answered at once, empty, and this line never came.)
    await Promise.race([
      logLine(server, /\/sync of @alice:localhost waits up to 30000 ms for something after s0/),
      parked.then((b) => assert.fail(`the sync answered without waiting: ${JSON.stringify(b)}`)),
    ]);
    const room = await alice.createRoom({ preset: 'private_chat' });
    const body = await parked;
    assert.ok(body.rooms?.join?.[room], `the woken sync lacks the new room: ${JSON.stringify(body)}`);
    assert.notEqual(body.next_batch, 's0');
  } finally {
    await server.stop();
  }
});

test('m.room.member sent as a message event is refused, not applied', async () => {
  const server = await startServer();
  try {
    const alice = await register(server.url, 'alice');
    const room = await alice.createRoom({ preset: 'private_chat' });
    const res = await alice.send(room, 'm.room.member', { membership: 'join' });
    assert.equal(res.status, 400, res.text);
    assert.equal(res.body.errcode, 'M_BAD_JSON');
    assert.match(res.body.error, /is a state event/);
    const members = await alice.call('GET', `/rooms/${encodeURIComponent(room)}/members`);
    assert.equal(members.status, 200, members.text);
    assert.deepEqual(members.body.chunk.map((e) => [e.state_key, e.content.membership]), [[alice.userId, 'join']]);
    // The server still answers the room's members and syncs after it.
    assert.equal((await alice.sync()).rooms.join[room].timeline.events.some((e) => e.type === 'm.room.member' && !('state_key' in e)), false);
  } finally {
    await server.stop();
  }
});

test('under the default limits, two people register from one address through the two-step flow', async () => {
  // The defaults: rc_registration {per_second: 0.17, burst_count: 3}.
  const server = await startServer({ config: { rc_registration: { per_second: 0.17, burst_count: 3 } } });
  try {
    const twoSteps = async (username) => {
      const first = await api(server.url, 'POST', `${CS}/register`, { body: { username, password: 'pw-' + username } });
      if (first.status !== 401) return first;
      assert.ok(first.body.session, first.text);
      return api(server.url, 'POST', `${CS}/register`, {
        body: { username, password: 'pw-' + username, auth: { type: 'm.login.dummy', session: first.body.session } },
      });
    };
    for (const name of ['anna', 'bert', 'carl']) {
      const res = await twoSteps(name);
      assert.equal(res.status, 200, `${name}: ${res.text}`);
    }
    // Each completed registration counts: the fourth is over the burst, at its first step.
    const fourth = await api(server.url, 'POST', `${CS}/register`, { body: { username: 'dora', password: 'pw' } });
    assert.equal(fourth.status, 429, fourth.text);
    assert.equal(fourth.body.errcode, 'M_LIMIT_EXCEEDED');
    assert.ok(fourth.body.retry_after_ms > 0);
    // Asking whether a name is free counts nothing either.
    const available = await api(server.url, 'GET', `${CS}/register/available`, { query: { username: 'erin' } });
    assert.equal(available.status, 429, 'the address has no registration left, so neither check nor name');
  } finally {
    await server.stop();
  }
});

test('a login for a user that does not exist costs a password hash like one that does', async () => {
  // The real cost (Argon2id "interactive", tens of milliseconds), so the hash dominates.
  const server = await startServer({ config: { password_hash_cost: 'interactive' } });
  try {
    await register(server.url, 'alice', { password: 'right' });
    const login = async (user) => {
      const started = process.hrtime.bigint();
      const res = await api(server.url, 'POST', `${CS}/login`, {
        body: { type: 'm.login.password', identifier: { type: 'm.id.user', user }, password: 'wrong' },
      });
      assert.equal(res.status, 403, res.text);
      return Number(process.hrtime.bigint() - started) / 1e6;
    };
    const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    const known = [];
    const unknown = [];
    for (let i = 0; i < 5; i++) {
      known.push(await login('alice'));
      unknown.push(await login('nobody' + i));
    }
    // Before, an unknown user was answered without hashing: ~1 ms against ~50 ms.
    assert.ok(median(unknown) * 10 > median(known), `unknown ${median(unknown)} ms, known ${median(known)} ms`);
  } finally {
    await server.stop();
  }
});

test('a login with an empty user is a clear error', async () => {
  const server = await startServer();
  try {
    for (const body of [
      { type: 'm.login.password', identifier: { type: 'm.id.user', user: '' }, password: 'x' },
      { type: 'm.login.password', user: '', password: 'x' },
    ]) {
      const res = await api(server.url, 'POST', `${CS}/login`, { body });
      assert.equal(res.status, 400, res.text);
      assert.equal(res.body.errcode, 'M_INVALID_PARAM');
    }
  } finally {
    await server.stop();
  }
});

// Writes `bytes` on a fresh connection and resolves with everything the server sent back
// before closing it.
function rawExchange(url, bytes) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: hostname, port: Number(port) }, () => socket.end(bytes));
    let got = '';
    socket.on('data', (d) => (got += d.toString('latin1')));
    socket.on('close', () => resolve(got));
    socket.on('error', reject);
  });
}

test('malformed HTTP gets a 4xx or 505 before the connection closes', async () => {
  const server = await startServer();
  try {
    const cases = [
      ['a bad Content-Length', 'POST /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n', 400],
      ['two different Content-Lengths', 'POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab', 400],
      ['a 16 KB target', `GET /${'a'.repeat(16 * 1024)} HTTP/1.1\r\nHost: x\r\n\r\n`, 414],
      ['a 16 KB header', `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(16 * 1024)}\r\n\r\n`, 431],
      ['10,000 headers', `GET / HTTP/1.1\r\nHost: x\r\n${'X-A: b\r\n'.repeat(10000)}\r\n`, 431],
      ['an HTTP/0.9 request', 'GET /\r\n\r\n', 400],
      ['an HTTP/2 preface', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 505],
      ['a bad header line', 'GET / HTTP/1.1\r\nHost x\r\n\r\n', 400],
    ];
    for (const [what, bytes, status] of cases) {
      const reply = await rawExchange(server.url, bytes);
      const m = /^HTTP\/1\.1 (\d+)/.exec(reply);
      assert.ok(m, `${what}: no HTTP response, got ${JSON.stringify(reply.slice(0, 80))}`);
      assert.equal(Number(m[1]), status, `${what}: ${reply.slice(0, 200)}`);
      const body = JSON.parse(reply.slice(reply.indexOf('\r\n\r\n') + 4));
      assert.ok(body.errcode && body.error, `${what}: ${reply}`);
    }
    // The server is still there for well-formed requests.
    const ok = await api(server.url, 'GET', '/_matrix/client/versions');
    assert.equal(ok.status, 200);
  } finally {
    await server.stop();
  }
});

test('in a direct chat neither member can demote the other through m.room.power_levels', async () => {
  const server = await startServer();
  try {
    const alice = await register(server.url, 'alice');
    const bob = await register(server.url, 'bob');
    const room = await alice.createRoom({ preset: 'trusted_private_chat', is_direct: true, invite: [bob.userId] });
    assert.equal((await bob.join(room)).status, 200);
    const path = `/rooms/${encodeURIComponent(room)}/state/m.room.power_levels`;
    const current = (await alice.call('GET', path)).body;
    assert.equal(current.users[alice.userId], 100);
    assert.equal(current.users[bob.userId], 100);
    const without = { ...current, users: { [alice.userId]: 100 } };
    const removed = await alice.call('PUT', path, { body: without });
    assert.equal(removed.status, 403, removed.text);
    assert.equal(removed.body.errcode, 'M_FORBIDDEN');
    const lowered = await alice.call('PUT', path, { body: { ...current, users: { [alice.userId]: 100, [bob.userId]: 0 } } });
    assert.equal(lowered.status, 403, lowered.text);
    // A change within the sender's reach still works, and bob is still at 100.
    const ok = await alice.call('PUT', path, { body: { ...current, kick: 60 } });
    assert.equal(ok.status, 200, ok.text);
    assert.equal((await bob.call('GET', path)).body.users[bob.userId], 100);
  } finally {
    await server.stop();
  }
});

test('to-device messages go only to devices that exist, and a device that logs out leaves none behind', async () => {
  const server = await startServer();
  try {
    const alice = await register(server.url, 'alice');
    const bob = await register(server.url, 'bob', { deviceId: 'PHONE', password: 'pw' });
    const send = (txn, device) =>
      alice.call('PUT', `/sendToDevice/org.example.ping/${txn}`, { body: { messages: { [bob.userId]: { [device]: { n: txn } } } } });
    assert.equal((await send('t1', 'LATER')).status, 200, 'a message to a device that does not exist is accepted');
    assert.equal((await send('t2', 'PHONE')).status, 200);
    assert.equal((await bob.call('POST', '/logout', { body: {} })).status, 200);
    // Both device ids now sign in: neither may find a message sent before it existed or
    // while it was signed out.
    for (const deviceId of ['LATER', 'PHONE']) {
      const login = await api(server.url, 'POST', `${CS}/login`, {
        body: { type: 'm.login.password', identifier: { type: 'm.id.user', user: 'bob' }, password: 'pw', device_id: deviceId },
      });
      assert.equal(login.status, 200, login.text);
      const sync = await api(server.url, 'GET', `${CS}/sync`, { token: login.body.access_token });
      assert.deepEqual(sync.body.to_device?.events ?? [], [], `${deviceId}: ${JSON.stringify(sync.body.to_device)}`);
    }
  } finally {
    await server.stop();
  }
});

test('each limit a client can reach is a clear Matrix error', async () => {
  const limits = { to_device_per_device: 3, filters_per_user: 2, account_data_per_user: 2, create_room_invites: 2, create_room_initial_state: 2, syncs_per_user: 1 };
  const server = await startServer({ config: { limits, log_level: 'debug' } });
  try {
    const alice = await register(server.url, 'alice');
    const bob = await register(server.url, 'bob');

    // to-device: at most 3 waiting for one device; the device fetching them makes room.
    const ping = (txn) => alice.call('PUT', `/sendToDevice/org.example.ping/${txn}`, { body: { messages: { [bob.userId]: { [bob.deviceId]: {} } } } });
    for (const txn of ['a', 'b', 'c']) assert.equal((await ping(txn)).status, 200);
    const full = await ping('d');
    assert.equal(full.status, 429, full.text);
    assert.equal(full.body.errcode, 'M_LIMIT_EXCEEDED');
    assert.match(full.body.error, /limits\.to_device_per_device/);
    const first = await bob.sync();
    assert.equal(first.to_device.events.length, 3);
    await bob.sync({ since: first.next_batch, timeout: '0' }); // acknowledges them
    assert.equal((await ping('e')).status, 200);
    // Sent at once, the limit still holds: it is decided where the messages are written.
    const burst = await Promise.all(['f', 'g', 'h', 'i', 'j'].map(ping));
    assert.deepEqual(burst.map((r) => r.status).sort(), [200, 200, 429, 429, 429], burst.map((r) => r.text).join());
    const drained = await bob.sync({ since: first.next_batch, timeout: '0' });
    assert.equal(drained.to_device.events.length, 3, JSON.stringify(drained.to_device));
    await bob.sync({ since: drained.next_batch, timeout: '0' });

    // Filters and account data.
    const filter = (n) => alice.call('POST', `/user/${encodeURIComponent(alice.userId)}/filter`, { body: { room: { timeline: { limit: n } } } });
    assert.equal((await filter(1)).status, 200);
    assert.equal((await filter(2)).status, 200);
    assert.equal((await filter(1)).status, 200, 'a filter already kept costs nothing');
    const third = await filter(3);
    assert.equal(third.status, 403, third.text);
    assert.match(third.body.error, /limits\.filters_per_user/);
    const data = (type) => alice.call('PUT', `/user/${encodeURIComponent(alice.userId)}/account_data/${type}`, { body: { v: 1 } });
    assert.equal((await data('org.example.a')).status, 200);
    assert.equal((await data('org.example.b')).status, 200);
    assert.equal((await data('org.example.a')).status, 200, 'replacing an entry costs nothing');
    const newType = await data('org.example.c');
    assert.equal(newType.status, 403, newType.text);
    assert.match(newType.body.error, /limits\.account_data_per_user/);

    // createRoom's lists.
    const tooMany = await alice.call('POST', '/createRoom', { body: { invite: ['@a:localhost', '@b:localhost', '@c:localhost'] } });
    assert.equal(tooMany.status, 400, tooMany.text);
    assert.equal(tooMany.body.errcode, 'M_INVALID_PARAM');
    const state = (n) => Array.from({ length: n }, (_, i) => ({ type: 'org.example.s', state_key: String(i), content: {} }));
    assert.equal((await alice.call('POST', '/createRoom', { body: { initial_state: state(3) } })).status, 400);
    assert.equal((await alice.call('POST', '/createRoom', { body: { initial_state: state(2) } })).status, 200);

    // One parked /sync per user: a second one waiting at the same time is refused.
    const base = await alice.sync();
    const parked = alice.sync({ since: base.next_batch, timeout: '30000' });
    await logLine(server, /\/sync of @alice:localhost waits up to 30000 ms/);
    const second = await alice.call('GET', '/sync', { query: { since: base.next_batch, timeout: '30000' } });
    assert.equal(second.status, 429, second.text);
    assert.match(second.body.error, /limits\.syncs_per_user/);
    await alice.createRoom({}); // wakes the first
    await parked;
  } finally {
    await server.stop();
  }
});

test('a retry gets the first answer for the newest limits.txn_ids_per_device of a device (sent events also after a restart); a logged-out device leaves none', async () => {
  const dir = makeDir();
  const config = { limits: { txn_ids_per_device: 2 } };
  try {
    let server = await startServer({ dir, config });
    const first = await register(server.url, 'alice', { deviceId: 'PHONE' });
    const room = await first.createRoom({});
    const sent = {};
    for (const txn of ['a', 'b', 'c']) {
      const res = await first.send(room, 'm.room.message', { body: txn, msgtype: 'm.text' }, txn);
      assert.equal(res.status, 200, res.text);
      sent[txn] = res.body.event_id;
    }
    const ping = (user, txn) => user.call('PUT', `/sendToDevice/org.example.ping/${txn}`, { body: { messages: { [user.userId]: { PHONE: { txn } } } } });
    for (const txn of ['x', 'y', 'z']) assert.equal((await ping(first, txn)).status, 200);
    // To-device: a retry of a remembered id queues nothing; a forgotten one queues again.
    assert.equal((await ping(first, 'z')).status, 200);
    assert.equal((await ping(first, 'x')).status, 200);
    const pings = (await first.sync()).to_device.events.map((e) => e.content.txn);
    assert.deepEqual(pings, ['x', 'y', 'z', 'x']);
    await server.stop();
    server = await startServer({ dir, config });
    const alice = userHandle(server.url, { user_id: first.userId, access_token: first.token, device_id: 'PHONE' });
    const retry = async (user, txn) => (await user.send(room, 'm.room.message', { body: txn, msgtype: 'm.text' }, txn)).body.event_id;
    assert.equal(await retry(alice, 'c'), sent.c);
    assert.equal(await retry(alice, 'b'), sent.b);
    assert.notEqual(await retry(alice, 'a'), sent.a, 'only the newest two are remembered');

    // Signed out and in again with the same device id: a new device, with no memory of the
    // old one's ids.
    assert.equal((await alice.call('POST', '/logout', { body: {} })).status, 200);
    const login = await api(server.url, 'POST', `${CS}/login`, {
      body: { type: 'm.login.password', identifier: { type: 'm.id.user', user: 'alice' }, password: 'secret-alice', device_id: 'PHONE' },
    });
    assert.equal(login.status, 200, login.text);
    const again = userHandle(server.url, login.body);
    const c2 = await retry(again, 'c');
    assert.notEqual(c2, sent.c);
    assert.equal(await retry(again, 'c'), c2);
    await server.stop();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// Resolves when the server closes `socket` (which sends nothing more).
const closedByServer = (socket) => new Promise((resolve) => socket.on('close', resolve));

function connect(url) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: hostname, port: Number(port) }, () => resolve(socket));
    socket.on('error', reject);
  });
}

test('a connection that sends nothing, or a request slowly, or stays idle, is closed', async () => {
  const server = await startServer({ config: { timeouts: { header_read: '1s', keep_alive: '2s' } } });
  try {
    const silent = await connect(server.url);
    let got = '';
    silent.on('data', (d) => (got += d));
    const slow = await connect(server.url);
    slow.write('GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n'); // and never the end
    await Promise.all([closedByServer(silent), closedByServer(slow)]);
    assert.equal(got, '', 'nothing to answer');
    // A kept-alive connection: one request, then silence.
    const kept = await connect(server.url);
    let reply = '';
    kept.on('data', (d) => (reply += d));
    kept.write('GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n');
    await closedByServer(kept);
    assert.match(reply, /^HTTP\/1\.1 200/);
  } finally {
    await server.stop();
  }
});

test('connections per address are limited, with a Matrix error before the close', async () => {
  const server = await startServer({ config: { limits: { connections_per_address: 2 } } });
  try {
    const held = [await connect(server.url), await connect(server.url)];
    const third = await connect(server.url);
    let reply = '';
    third.on('data', (d) => (reply += d));
    await closedByServer(third);
    assert.match(reply, /^HTTP\/1\.1 503/);
    const body = JSON.parse(reply.slice(reply.indexOf('\r\n\r\n') + 4));
    assert.equal(body.errcode, 'M_LIMIT_EXCEEDED');
    assert.match(body.error, /limits\.connections_per_address/);
    // Once one is closed, a new one is served.
    held[0].destroy();
    await closedByServer(held[0]);
    let ok = await api(server.url, 'GET', '/_matrix/client/versions');
    for (let i = 0; ok.status !== 200 && i < 50; i++) ok = await api(server.url, 'GET', '/_matrix/client/versions');
    assert.equal(ok.status, 200);
    held[1].destroy();
  } finally {
    await server.stop();
  }
});

// A room whose /sync is ~24 MB: far more than the socket buffers between a client that does
// not read and the server.
async function bigRoom(server) {
  const alice = await register(server.url, 'alice');
  const room = await alice.createRoom({ preset: 'private_chat' });
  const body = 'x'.repeat(62000);
  for (let i = 0; i < 400; i += 16) {
    const batch = [];
    for (let j = i; j < i + 16; j++) batch.push(alice.send(room, 'm.room.message', { msgtype: 'm.text', body }, `big${j}`));
    for (const res of await Promise.all(batch)) assert.equal(res.status, 200, res.text);
  }
  const filter = encodeURIComponent(JSON.stringify({ room: { timeline: { limit: 400 } } }));
  return { alice, request: `GET ${CS}/sync?filter=${filter} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${alice.token}\r\n\r\n` };
}

test('a client that does not read its response is cut off after the write timeout', async () => {
  const server = await startServer({ config: { timeouts: { write: '1s' } } });
  try {
    const { request } = await bigRoom(server);
    const reader = await connect(server.url);
    reader.pause(); // reads nothing
    reader.write(request);
    await logLine(server, /did not read its response for 1 s: connection closed/);
    reader.destroy();
    const ok = await api(server.url, 'GET', '/_matrix/client/versions');
    assert.equal(ok.status, 200);
  } finally {
    await server.stop();
  }
});

test('SIGTERM ends the process by the shutdown deadline even with a response nobody reads', async () => {
  const server = await startServer({ config: { timeouts: { write: '1h', shutdown: '1s' }, log_level: 'debug' } });
  const { request } = await bigRoom(server);
  const reader = await connect(server.url);
  reader.pause();
  reader.write(request);
  // The response is being written once the server has logged the request it answers.
  await logLine(server, /GET \/_matrix\/client\/v3\/sync -> 200/);
  const { code } = await server.stop();
  assert.equal(code, 0);
  assert.match(server.log, /closing 1 connections still open 1 s after the shutdown began/);
  reader.destroy();
});

test('room semantics: a new displayname is not a new join; identical state and repeated joins make no event; the room version is the chosen one', async () => {
  const server = await startServer();
  try {
    const alice = await register(server.url, 'alice');
    const bob = await register(server.url, 'bob');
    const room = await alice.createRoom({ preset: 'public_chat', creation_content: { room_version: 'test', 'org.example.x': 1 } });
    const r = encodeURIComponent(room);
    const create = (await alice.call('GET', `/rooms/${r}/state/m.room.create`)).body;
    assert.equal(create.room_version, '10', JSON.stringify(create));
    assert.equal(create['org.example.x'], 1, 'the rest of creation_content is kept');

    assert.equal((await bob.join(room)).status, 200);
    for (let i = 0; i < 3; i++) assert.equal((await bob.send(room, 'm.room.message', { msgtype: 'm.text', body: `m${i}` })).status, 200);
    const before = await alice.sync();

    // A displayname change: the next incremental sync has the member event, not the room
    // again as if alice had just joined.
    const name = await alice.call('PUT', `/profile/${encodeURIComponent(alice.userId)}/displayname`, { body: { displayname: 'Alice A.' } });
    assert.equal(name.status, 200, name.text);
    const after = await alice.sync({ since: before.next_batch, timeout: '0' });
    const events = after.rooms.join[room].timeline.events;
    assert.deepEqual(events.map((e) => [e.type, e.content.displayname]), [['m.room.member', 'Alice A.']]);
    assert.equal((after.rooms.join[room].state?.events ?? []).length, 0, JSON.stringify(after.rooms.join[room].state));

    // The same topic twice is one event; joining again is no event at all.
    const topic = (text) => alice.call('PUT', `/rooms/${r}/state/m.room.topic`, { body: { topic: text } });
    const first = await topic('calls');
    const again = await topic('calls');
    assert.equal(again.status, 200);
    assert.equal(again.body.event_id, first.body.event_id);
    assert.notEqual((await topic('more calls')).body.event_id, first.body.event_id);
    const mark = await bob.sync();
    assert.equal((await bob.join(room)).status, 200);
    const quiet = await bob.sync({ since: mark.next_batch, timeout: '0' });
    assert.equal(quiet.rooms?.join?.[room], undefined, JSON.stringify(quiet.rooms));
  } finally {
    await server.stop();
  }
});

test('every write counts against rc_message in the dispatch layer; reads do not', async () => {
  const server = await startServer({ config: { rc_message: { per_second: 0.001, burst_count: 4 } } });
  try {
    const alice = await register(server.url, 'alice');
    const u = encodeURIComponent(alice.userId);
    const writes = [
      ['PUT', `/user/${u}/account_data/org.example.a`, { a: 1 }],
      ['PUT', `/profile/${u}/displayname`, { displayname: 'Alice' }],
      ['POST', `/user/${u}/filter`, { room: { timeline: { limit: 5 } } }],
      ['PUT', `/sendToDevice/m.test/t1`, { messages: { [alice.userId]: { [alice.deviceId]: { x: 1 } } } }],
    ];
    for (const [method, path, body] of writes) {
      const res = await alice.call(method, path, { body });
      assert.equal(res.status, 200, `${method} ${path}: ${res.text}`);
    }
    const limited = await alice.call('PUT', `/user/${u}/account_data/org.example.b`, { body: { b: 1 } });
    assert.equal(limited.status, 429, limited.text);
    assert.equal(limited.body.errcode, 'M_LIMIT_EXCEEDED');
    assert.ok(limited.body.retry_after_ms > 0);
    assert.ok(Number(limited.headers.get('retry-after')) > 0);
    const read = await alice.call('GET', `/user/${u}/account_data/org.example.a`);
    assert.equal(read.status, 200, 'reads are not limited');
    const bob = await register(server.url, 'bob');
    const other = await bob.call('PUT', `/user/${encodeURIComponent(bob.userId)}/account_data/x`, { body: {} });
    assert.equal(other.status, 200, 'the limit is per user');
  } finally {
    await server.stop();
  }
});

test('failed logins are limited per account, whether it exists or not', async () => {
  const server = await startServer({
    config: {
      rc_login: {
        address: { per_second: 1000, burst_count: 1000 },
        account: { per_second: 1000, burst_count: 1000 },
        failed_attempts: { per_second: 0.001, burst_count: 3 },
      },
    },
  });
  try {
    await register(server.url, 'alice', { password: 'right-password' });
    await register(server.url, 'bob', { password: 'bobs-password' });
    const login = (user, password) => api(server.url, 'POST', `${CS}/login`, { body: { type: 'm.login.password', identifier: { type: 'm.id.user', user }, password } });
    for (const user of ['alice', 'nobody']) {
      for (let i = 0; i < 3; i++) assert.equal((await login(user, 'guess' + i)).status, 403, user);
      const blocked = await login(user, user === 'alice' ? 'right-password' : 'guess');
      assert.equal(blocked.status, 429, `${user}: ${blocked.text}`);
      assert.equal(blocked.body.errcode, 'M_LIMIT_EXCEEDED');
    }
    assert.equal((await login('bob', 'bobs-password')).status, 200, 'other accounts are not affected');
  } finally {
    await server.stop();
  }
});

test('behind a trusted proxy, limits count the client X-Forwarded-For names', async () => {
  const rc_login = { address: { per_second: 0.001, burst_count: 1 }, account: { per_second: 1000, burst_count: 1000 }, failed_attempts: { per_second: 1000, burst_count: 1000 } };
  const proxied = await startServer({ config: { rc_login, listen: [{ address: '127.0.0.1:0', x_forwarded: true }], limits: { connections_per_address: 2 } } });
  const direct = await startServer({ config: { rc_login } });
  try {
    const login = (server, forwardedFor) => api(server.url, 'POST', `${CS}/login`, {
      headers: { 'X-Forwarded-For': forwardedFor },
      body: { type: 'm.login.password', user: 'nobody', password: 'x' },
    });
    assert.equal((await login(proxied, '203.0.113.5')).status, 403);
    assert.equal((await login(proxied, '198.51.100.1, 203.0.113.5')).status, 429, 'the same client, whatever it claims before');
    assert.equal((await login(proxied, '203.0.113.6')).status, 403, 'another client has its own budget');
    const nonsense = await login(proxied, '203.0.113.7, not-an-address');
    assert.equal(nonsense.status, 400, nonsense.text);
    // Without x_forwarded the header is the client's word, and ignored.
    assert.equal((await login(direct, '203.0.113.5')).status, 403);
    assert.equal((await login(direct, '203.0.113.6')).status, 429);

    // The proxy's connections are not limited per address: it carries many clients.
    const sockets = [];
    for (let i = 0; i < 4; i++) sockets.push(await connect(proxied.url));
    const replies = await Promise.all(sockets.map((s) => new Promise((resolve) => {
      let got = '';
      s.on('data', (d) => {
        got += d;
        if (got.includes('\r\n\r\n')) resolve(got);
      });
      s.write('GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n');
    })));
    for (const r of replies) assert.match(r, /^HTTP\/1\.1 200/);
    for (const s of sockets) s.destroy();
  } finally {
    await proxied.stop();
    await direct.stop();
  }
});
