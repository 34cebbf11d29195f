// A property test: whatever the server accepted, from a random sequence of requests by several
// users with random content (any Unicode, NUL, lone surrogates, deep objects, large integers),
// is there after a restart exactly as it was accepted, and every response, before and after,
// is valid UTF-8 JSON. Each user's full /sync is the same after the restart as before it.
// A failure prints the seed; MXVOIP_PROPERTY_SEED=<seed> replays it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { startServer, register, makeDir, CS } from '../lib/harness.mjs';
import { seeded } from '../lib/random.mjs';

// encodeURIComponent, except that a lone surrogate becomes the three bytes a careless client
// would send for it (not UTF-8: the server must refuse them).
function enc(text) {
  let out = '';
  for (const ch of text) {
    const c = ch.codePointAt(0);
    if (c >= 0xd800 && c <= 0xdfff)
      out += [0xe0 | (c >> 12), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f)].map((b) => '%' + b.toString(16).toUpperCase()).join('');
    else out += encodeURIComponent(ch);
  }
  return out;
}

// Every request goes through here: the body is decoded as strict UTF-8 and parsed as JSON.
async function strict(base, method, path, { token, body } = {}) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const bytes = new Uint8Array(await res.arrayBuffer());
  let text;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new Error(`${method} ${path} answered ${res.status} with a body that is not UTF-8`);
  }
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    throw new Error(`${method} ${path} answered ${res.status} with a body that is not JSON: ${text.slice(0, 200)}`);
  }
  assert.ok(res.status < 500, `${method} ${path}: ${res.status} ${text}`);
  return { status: res.status, body: json };
}

function generator(random) {
  const pick = (list) => list[Math.floor(random() * list.length)];
  const int = (n) => Math.floor(random() * n);
  const pieces = [
    () => String.fromCharCode(0x20 + int(95)),                 // ASCII
    () => String.fromCharCode(0xa0 + int(0x700)),              // Latin, Greek, Cyrillic...
    () => String.fromCodePoint(0x1f300 + int(0x300)),          // emoji (astral plane)
    () => String.fromCharCode(int(0x20)),                      // control characters, NUL
    () => pick(['"', '\\', '/', '\u2028', '\u2029', '\ufeff']),
  ];
  // Now and then a lone surrogate: JSON can carry one as an escape, UTF-8 cannot.
  const piece = () => (random() < 0.005 ? String.fromCharCode(0xd800 + int(0x800)) : pick(pieces)());
  const text = (max = 12) => Array.from({ length: int(max) }, piece).join('');
  const value = (depth = 0) => {
    const k = int(depth > 2 ? 4 : 7);
    if (k === 0) return text();
    if (k === 1) return int(2) ? int(1000) : (int(2) ? -1 : 1) * Math.floor(random() * Number.MAX_SAFE_INTEGER);
    if (k === 2) return pick([true, false, null]);
    if (k === 3) return text(40);
    if (k === 4) return Array.from({ length: int(4) }, () => value(depth + 1));
    return Object.fromEntries(Array.from({ length: int(4) }, () => [text(6), value(depth + 1)]));
  };
  const object = () => Object.fromEntries(Array.from({ length: 1 + int(4) }, () => [text(8), value(1)]));
  return { pick, int, text, value, object };
}

// A /sync body without what may differ between two identical syncs (ages).
function normalise(sync) {
  return JSON.parse(JSON.stringify(sync, (k, v) => (k === 'age' ? undefined : v)));
}

test('whatever the server accepted survives a restart, exactly, as valid JSON', async () => {
  const seed = Number(process.env.MXVOIP_PROPERTY_SEED ?? Math.floor(Math.random() * 2 ** 31));
  const random = seeded(seed);
  const g = generator(random);
  const dir = makeDir();
  try {
    let server = await startServer({ dir });
    const users = [];
    for (let i = 0; i < 3; i++) users.push(await register(server.url, `prop${i}`));
    const rooms = [];         // { id, creator }
    const events = new Map(); // event_id -> { room, type, content }
    const accountData = new Map(); // JSON [user, room, type] -> content
    const profiles = new Map();
    let accepted = 0;
    let refused = 0;
    const call = (u, method, path, body) => strict(server.url, method, CS + path, { token: u.token, body });

    for (let step = 0; step < 300; step++) {
      const u = g.pick(users);
      const action = rooms.length === 0 ? 0 : g.int(8);
      let res;
      if (action === 0) {
        res = await call(u, 'POST', '/createRoom', { preset: g.pick(['public_chat', 'private_chat']), name: g.text() });
        if (res.status === 200) rooms.push({ id: res.body.room_id, creator: u });
      } else if (action === 1) {
        res = await call(u, 'POST', `/join/${enc(g.pick(rooms).id)}`, {});
      } else if (action === 2 || action === 3) {
        const room = g.pick(rooms);
        const type = g.pick(['m.room.message', 'm.call.candidates', 'org.example.' + g.text(6)]);
        const content = g.object();
        res = await call(u, 'PUT', `/rooms/${enc(room.id)}/send/${enc(type)}/${enc('t' + step)}`, content);
        if (res.status === 200) events.set(res.body.event_id, { room: room.id, type, content });
      } else if (action === 4) {
        const room = g.pick(rooms);
        const type = 'org.example.state.' + g.int(3);
        const content = g.object();
        res = await call(u, 'PUT', `/rooms/${enc(room.id)}/state/${enc(type)}/${enc(g.text(5))}`, content);
        if (res.status === 200) events.set(res.body.event_id, { room: room.id, type, content });
      } else if (action === 5) {
        const room = g.int(2) ? g.pick(rooms).id : '';
        const type = 'org.example.' + g.text(6);
        const content = g.object();
        const path = room ? `/user/${enc(u.userId)}/rooms/${enc(room)}/account_data/${enc(type)}` : `/user/${enc(u.userId)}/account_data/${enc(type)}`;
        res = await call(u, 'PUT', path, content);
        if (res.status === 200) accountData.set(JSON.stringify([u.userId, room, type]), content);
      } else if (action === 6) {
        const name = g.text(20);
        res = await call(u, 'PUT', `/profile/${enc(u.userId)}/displayname`, { displayname: name });
        if (res.status === 200) profiles.set(u.userId, name);
      } else {
        const to = g.pick(users);
        res = await call(u, 'PUT', `/sendToDevice/${enc('org.example.' + g.text(4))}/${enc('d' + step)}`, { messages: { [to.userId]: { [to.deviceId]: g.object() } } });
      }
      if (res.status === 200) accepted++;
      else refused++;
    }
    assert.ok(accepted > 100, `seed ${seed}: only ${accepted} requests accepted (${refused} refused)`);

    const syncs = async () => {
      const out = [];
      for (const u of users) {
        // set_presence=offline: the syncs themselves change nothing to compare.
        const res = await call(u, 'GET', `/sync?set_presence=offline&filter=${enc(JSON.stringify({ room: { timeline: { limit: 1000 } } }))}`);
        assert.equal(res.status, 200);
        out.push(normalise(res.body));
      }
      return out;
    };
    const before = await syncs();
    await server.stop();
    server = await startServer({ dir });
    const after = await syncs();
    for (let i = 0; i < users.length; i++) assert.deepEqual(after[i], before[i], `seed ${seed}: ${users[i].userId}'s /sync changed across the restart`);

    // Each accepted event, read by the room's creator (history is shared), as it was sent.
    for (const [id, ev] of events) {
      const creator = rooms.find((r) => r.id === ev.room).creator;
      const res = await call(creator, 'GET', `/rooms/${enc(ev.room)}/event/${enc(id)}`);
      assert.equal(res.status, 200, `seed ${seed}: event ${id} is gone`);
      assert.equal(res.body.type, ev.type, `seed ${seed}`);
      assert.deepEqual(res.body.content, ev.content, `seed ${seed}: event ${id} changed`);
    }
    for (const [key, content] of accountData) {
      const [user, room, type] = JSON.parse(key);
      const u = users.find((x) => x.userId === user);
      const path = room ? `/user/${enc(user)}/rooms/${enc(room)}/account_data/${enc(type)}` : `/user/${enc(user)}/account_data/${enc(type)}`;
      const res = await call(u, 'GET', path);
      assert.equal(res.status, 200, `seed ${seed}: account data ${type} is gone`);
      assert.deepEqual(res.body, content, `seed ${seed}: account data ${type} changed`);
    }
    for (const [user, name] of profiles) {
      const res = await strict(server.url, 'GET', `${CS}/profile/${enc(user)}`);
      // An empty displayname removes it, as in Synapse.
      assert.equal(res.body.displayname, name === '' ? undefined : name, `seed ${seed}: ${user}'s displayname changed`);
    }
    await server.stop();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
