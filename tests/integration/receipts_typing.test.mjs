// Read receipts, read markers and typing notifications (receipts.yaml, read_markers.yaml,
// typing.yaml): what each endpoint accepts and refuses, and how /sync reports them as the
// room's ephemeral events: to whom, once, and after a restart.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, register } from '../lib/harness.mjs';

const enc = encodeURIComponent;
let server;
let alice;
let bob;
let carol; // not in the room
let roomId;
let first; // event ids bob sent
let second;

before(async () => {
  server = await startServer();
  alice = await register(server.url, 'alice');
  bob = await register(server.url, 'bob');
  carol = await register(server.url, 'carol');
  roomId = await alice.createRoom({ preset: 'private_chat', invite: [bob.userId] });
  assert.equal((await bob.join(roomId)).status, 200);
  first = (await bob.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'one' })).body.event_id;
  second = (await bob.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'two' })).body.event_id;
});
after(async () => server?.stop());

const receipt = (user, type, eventId, body = {}) =>
  user.call('POST', `/rooms/${enc(roomId)}/receipt/${enc(type)}/${enc(eventId)}`, { body });
const typing = (user, body, room = roomId, who = user.userId) =>
  user.call('PUT', `/rooms/${enc(room)}/typing/${enc(who)}`, { body });
const ephemeral = (sync, type) =>
  (sync.rooms.join[roomId]?.ephemeral.events ?? []).filter((e) => e.type === type);

// A /sync that waits for the next change after `since` and returns its ephemeral events of
// `type` (the long poll answers as soon as something is committed).
async function next(user, since, type) {
  for (;;) {
    const sync = await user.sync({ since, timeout: '10000' });
    const found = ephemeral(sync, type);
    if (found.length) return { events: found, since: sync.next_batch };
    assert.notEqual(sync.next_batch, since, `no ${type} arrived for ${user.userId}`);
    since = sync.next_batch;
  }
}

test('an m.read receipt reaches the other member once, with its time and thread', async () => {
  const start = (await bob.sync()).next_batch;
  const before = Date.now();
  assert.equal((await receipt(alice, 'm.read', first)).status, 200);
  const { events, since } = await next(bob, start, 'm.receipt');
  assert.equal(events.length, 1);
  const r = events[0].content[first]['m.read'][alice.userId];
  assert.ok(r.ts >= before - 1000 && r.ts <= Date.now() + 1000, JSON.stringify(r));
  assert.equal(r.thread_id, undefined);
  // Reported once: the next incremental sync (nothing else happened) has no receipt.
  const again = await bob.sync({ since, timeout: '0' });
  assert.deepEqual(ephemeral(again, 'm.receipt'), []);

  // A threaded receipt for the main timeline, beside the unthreaded one.
  assert.equal((await receipt(alice, 'm.read', second, { thread_id: 'main' })).status, 200);
  const threaded = await next(bob, since, 'm.receipt');
  assert.deepEqual(threaded.events[0].content[second]['m.read'][alice.userId].thread_id, 'main');
  // An initial sync has the newest receipt of each user, type and thread.
  const all = ephemeral(await bob.sync(), 'm.receipt');
  assert.equal(all.length, 1);
  assert.ok(all[0].content[first]['m.read'][alice.userId]);
  assert.equal(all[0].content[second]['m.read'][alice.userId].thread_id, 'main');
});

test('a receipt never moves back to an earlier event', async () => {
  assert.equal((await receipt(bob, 'm.read', second)).status, 200);
  assert.equal((await receipt(bob, 'm.read', first)).status, 200);
  const all = ephemeral(await alice.sync(), 'm.receipt')[0].content;
  assert.ok(all[second]['m.read'][bob.userId]);
  assert.equal(all[first]?.['m.read']?.[bob.userId], undefined);
});

test('receipts sent at once end on the latest event, whatever order they commit in', async () => {
  const room = await alice.createRoom({ preset: 'private_chat' });
  const ids = [];
  for (let i = 0; i < 6; i++) ids.push((await alice.send(room, 'm.room.message', { msgtype: 'm.text', body: `r${i}` })).body.event_id);
  const order = [3, 0, 5, 1, 4, 2];
  const results = await Promise.all(order.map((i) => alice.call('POST', `/rooms/${enc(room)}/receipt/m.read/${enc(ids[i])}`, { body: {} })));
  for (const r of results) assert.equal(r.status, 200, r.text);
  const all = (await alice.sync()).rooms.join[room].ephemeral.events.find((e) => e.type === 'm.receipt').content;
  const mine = Object.keys(all).filter((id) => all[id]['m.read']?.[alice.userId]);
  assert.deepEqual(mine, [ids[5]]);
});

test('threaded receipts are kept for at most 100 threads per user and room, also when sent at once', async () => {
  const room = await alice.createRoom({ preset: 'private_chat' });
  const roots = [];
  for (let i = 0; i < 101; i++) roots.push((await alice.send(room, 'm.room.message', { msgtype: 'm.text', body: `root ${i}` })).body.event_id);
  // Each root is in its own thread: 101 receipts at once, each for a thread of its own.
  const results = await Promise.all(
    roots.map((root) => alice.call('POST', `/rooms/${enc(room)}/receipt/m.read/${enc(root)}`, { body: { thread_id: root } })),
  );
  const ok = results.filter((r) => r.status === 200).length;
  const refused = results.filter((r) => r.status === 403);
  assert.equal(ok, 100, results.filter((r) => r.status !== 200).map((r) => r.text).join(' '));
  assert.equal(refused.length, 1);
  assert.match(refused[0].body.error, /threads/);
});

test('a private receipt is seen by its owner only', async () => {
  const start = (await alice.sync()).next_batch;
  assert.equal((await receipt(bob, 'm.read.private', second)).status, 200);
  const own = ephemeral(await bob.sync(), 'm.receipt')[0].content;
  assert.ok(own[second]['m.read.private'][bob.userId]);
  const other = await alice.sync({ since: start, timeout: '0' });
  for (const e of ephemeral(other, 'm.receipt')) assert.equal(e.content[second]?.['m.read.private'], undefined);
  const initial = ephemeral(await alice.sync(), 'm.receipt')[0].content;
  assert.equal(initial[second]['m.read.private'], undefined);
});

test('receipt errors: type, thread_id, event, membership', async () => {
  const cases = [
    [await receipt(alice, 'm.seen', first), 400, 'M_INVALID_PARAM'],
    [await receipt(alice, 'm.read', first, { thread_id: '' }), 400, 'M_INVALID_PARAM'],
    [await receipt(alice, 'm.read', first, { thread_id: 7 }), 400, 'M_INVALID_PARAM'],
    [await receipt(alice, 'm.fully_read', first, { thread_id: 'main' }), 400, 'M_INVALID_PARAM'],
    // bob's message is the root of no thread and in none.
    [await receipt(alice, 'm.read', first, { thread_id: second }), 400, 'M_INVALID_PARAM'],
    [await receipt(alice, 'm.read', '$nosuchevent'), 404, 'M_NOT_FOUND'],
    [await receipt(alice, 'm.read', '$AAAAAAAAAP8AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'), 404, 'M_NOT_FOUND'],
    [await receipt(carol, 'm.read', first), 403, 'M_FORBIDDEN'],
  ];
  for (const [res, status, errcode] of cases) {
    assert.equal(res.status, status, res.text);
    assert.equal(res.body.errcode, errcode, res.text);
  }
  // An event of another room is not found in this one.
  const other = await alice.createRoom({ preset: 'private_chat' });
  const elsewhere = (await alice.send(other, 'm.room.message', { msgtype: 'm.text', body: 'x' })).body.event_id;
  const res = await receipt(alice, 'm.read', elsewhere);
  assert.equal(res.status, 404, res.text);
});

test('threaded receipts: the thread root and an event in the thread', async () => {
  const reply = await alice.send(roomId, 'm.room.message', {
    msgtype: 'm.text', body: 'in thread', 'm.relates_to': { rel_type: 'm.thread', event_id: first },
  });
  assert.equal((await receipt(bob, 'm.read', first, { thread_id: first })).status, 200);
  assert.equal((await receipt(bob, 'm.read', reply.body.event_id, { thread_id: first })).status, 200);
  // The reply is in a thread, not the main timeline.
  const main = await receipt(bob, 'm.read', reply.body.event_id, { thread_id: 'main' });
  assert.equal(main.status, 400, main.text);
  const content = ephemeral(await alice.sync(), 'm.receipt')[0].content;
  assert.equal(content[reply.body.event_id]['m.read'][bob.userId].thread_id, first);
});

test('read markers set m.fully_read account data and the receipts', async () => {
  const res = await alice.call('POST', `/rooms/${enc(roomId)}/read_markers`, {
    body: { 'm.fully_read': second, 'm.read': second, 'm.read.private': second },
  });
  assert.equal(res.status, 200, res.text);
  const marker = await alice.call('GET', `/user/${enc(alice.userId)}/rooms/${enc(roomId)}/account_data/m.fully_read`);
  assert.deepEqual(marker.body, { event_id: second });
  const sync = await alice.sync();
  const data = sync.rooms.join[roomId].account_data.events.find((e) => e.type === 'm.fully_read');
  assert.deepEqual(data.content, { event_id: second });
  const content = ephemeral(sync, 'm.receipt')[0].content;
  assert.ok(content[second]['m.read'][alice.userId]);
  assert.ok(content[second]['m.read.private'][alice.userId]);
  // m.fully_read through the receipt endpoint is the same marker.
  assert.equal((await receipt(bob, 'm.fully_read', first)).status, 200);
  const bobs = await bob.call('GET', `/user/${enc(bob.userId)}/rooms/${enc(roomId)}/account_data/m.fully_read`);
  assert.deepEqual(bobs.body, { event_id: first });
  // Errors: a marker that is not an event id, an unknown event, someone outside the room.
  for (const [who, body, status] of [[alice, { 'm.read': 5 }, 400], [alice, { 'm.fully_read': '$nope' }, 404], [carol, { 'm.read': first }, 403]]) {
    const r = await who.call('POST', `/rooms/${enc(roomId)}/read_markers`, { body });
    assert.equal(r.status, status, r.text);
  }
  // Account data cannot set the marker directly (the spec reserves it for read_markers).
  const direct = await alice.call('PUT', `/user/${enc(alice.userId)}/rooms/${enc(roomId)}/account_data/m.fully_read`, { body: { event_id: first } });
  assert.equal(direct.status, 400);
});

test('typing: start, stop, and a timeout that ends it without anyone asking', async () => {
  let since = (await bob.sync()).next_batch;
  assert.equal((await typing(alice, { typing: true, timeout: 30000 })).status, 200);
  let got = await next(bob, since, 'm.typing');
  assert.deepEqual(got.events[0].content.user_ids, [alice.userId]);
  // An initial sync shows who is typing now.
  assert.deepEqual(ephemeral(await bob.sync(), 'm.typing')[0].content.user_ids, [alice.userId]);
  assert.equal((await typing(alice, { typing: false })).status, 200);
  got = await next(bob, got.since, 'm.typing');
  assert.deepEqual(got.events[0].content.user_ids, []);
  // Nobody typing: an initial sync has no m.typing.
  assert.deepEqual(ephemeral(await bob.sync(), 'm.typing'), []);

  // A short timeout: the parked /sync learns that alice stopped when it runs out.
  since = got.since;
  assert.equal((await typing(alice, { typing: true, timeout: 300 })).status, 200);
  got = await next(bob, since, 'm.typing');
  assert.deepEqual(got.events[0].content.user_ids, [alice.userId]);
  got = await next(bob, got.since, 'm.typing');
  assert.deepEqual(got.events[0].content.user_ids, []);
});

test('typing errors', async () => {
  const cases = [
    [await typing(carol, { typing: true }), 403, 'M_FORBIDDEN'],
    [await typing(alice, { typing: true }, roomId, bob.userId), 403, 'M_FORBIDDEN'],
    [await typing(alice, {}), 400, 'M_BAD_JSON'],
    [await typing(alice, { typing: 'yes' }), 400, 'M_BAD_JSON'],
    [await typing(alice, { typing: true }, '!nowhere:localhost'), 404, 'M_NOT_FOUND'],
  ];
  for (const [res, status, errcode] of cases) {
    assert.equal(res.status, status, res.text);
    assert.equal(res.body.errcode, errcode, res.text);
  }
});

test('receipts survive a restart; typing does not', async () => {
  assert.equal((await typing(bob, { typing: true, timeout: 60000 })).status, 200);
  const beforeRestart = ephemeral(await alice.sync(), 'm.receipt')[0].content;
  server = await server.restart();
  [alice, bob] = [alice, bob].map((u) => u.at(server.url));
  const sync = await alice.sync();
  assert.deepEqual(ephemeral(sync, 'm.receipt')[0].content, beforeRestart);
  assert.deepEqual(ephemeral(sync, 'm.typing'), []);
});

test('receipts past the cache: read from the database when used, a waiting /sync still wakes, and unread counts follow', { timeout: 60000 }, async () => {
  // One room's receipts held at a time: every other room's are read back when used.
  let own = await startServer({ config: { caches: { receipts: 1 }, log_level: 'debug' } });
  try {
    const [ann, ben] = [await register(own.url, 'ann'), await register(own.url, 'ben')];
    const rooms = [];
    const said = [];
    for (const name of ['one', 'two']) {
      const room = await ann.createRoom({ name, preset: 'private_chat', invite: [ben.userId] });
      assert.equal((await ben.join(room)).status, 200);
      said.push((await ben.send(room, 'm.room.message', { msgtype: 'm.text', body: name })).body.event_id);
      rooms.push(room);
    }
    const read = (u, i, eventId) => u.call('POST', `/rooms/${enc(rooms[i])}/receipt/m.read/${enc(eventId)}`, { body: {} });
    const receipts = (sync, i) => (sync.rooms.join[rooms[i]]?.ephemeral.events ?? []).filter((e) => e.type === 'm.receipt').map((e) => e.content);
    for (const i of [0, 1]) assert.equal((await read(ann, i, said[i])).status, 200);
    // Ben's first /sync has both rooms' receipts, read from the database before the lock:
    // both are held for it, although the cache holds one, so none is read again under it.
    const underLock = () => (own.log.match(/read from the database under the lock/g) ?? []).length;
    const readUnderLock = underLock();
    const first = await ben.sync();
    for (const i of [0, 1]) assert.deepEqual(Object.keys(receipts(first, i)[0] ?? {}), [said[i]], `room ${i}`);
    await own.logged(/the receipts of \S+ read from the database \(/);
    assert.equal(underLock(), readUnderLock, 'a room read for the /sync was read again under the lock');
    // Ben waits; ann's receipt in either room wakes him, held or not.
    const annFirst = await ann.sync();
    assert.equal(annFirst.rooms.join[rooms[0]].unread_notifications.notification_count, 0);
    let since = first.next_batch;
    const lates = [];
    for (const i of [0, 1]) {
      const later = (await ann.send(rooms[i], 'm.room.message', { msgtype: 'm.text', body: 'later' })).body.event_id;
      since = (await ben.sync({ since, timeout: '0' })).next_batch;
      const waiting = ben.sync({ since, timeout: '30000' });
      await own.logged(new RegExp(`/sync of ${ben.userId.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} waits up to 30000 ms for something after ${since}(?!\\d)`));
      // Ann's first /sync reads both rooms' receipts meanwhile: the second room's stay held,
      // the first's are let go.
      await ann.sync();
      assert.equal((await read(ben, i, later)).status, 200);
      const woken = await waiting;
      assert.deepEqual(Object.keys(receipts(woken, i)[0] ?? {}), [later]);
      assert.ok(receipts(woken, i)[0][later]['m.read'][ben.userId]);
      lates.push(later);
      since = woken.next_batch;
    }
    // Ben's messages are unread by ann until her receipt, whichever room's receipts are held.
    const unread = async () => {
      const s = await ann.sync();
      return rooms.map((r) => s.rooms.join[r].unread_notifications.notification_count);
    };
    assert.deepEqual(await unread(), [0, 0]);
    for (const i of [0, 1]) assert.equal((await ben.send(rooms[i], 'm.room.message', { msgtype: 'm.text', body: 'news' })).status, 200);
    const news = (await ben.send(rooms[0], 'm.room.message', { msgtype: 'm.text', body: 'more' })).body.event_id;
    assert.deepEqual(await unread(), [2, 1]);
    assert.equal((await read(ann, 0, news)).status, 200);
    assert.deepEqual(await unread(), [0, 1]);
    // After a restart nothing is held: each room's receipts are read when a /sync shows it.
    own = await own.restart();
    const after = await ben.at(own.url).sync();
    const newest = [[news, lates[0]], [said[1], lates[1]]];
    for (const i of [0, 1]) {
      const [annRead, benRead] = newest[i];
      const content = receipts(after, i)[0];
      assert.deepEqual(Object.keys(content).sort(), [annRead, benRead].sort(), `room ${i}`);
      assert.deepEqual(Object.keys(content[annRead]['m.read']), [ann.userId]);
      assert.deepEqual(Object.keys(content[benRead]['m.read']), [ben.userId]);
    }
  } finally {
    await own.stop();
  }
});
