// Filters (filter.yaml) as /sync and /messages apply them: event types with wildcards and
// not_types, senders and not_senders, rooms and not_rooms, timeline limit 0, state types,
// lazy_load_members, ephemeral, account data and presence filters; a malformed filter is
// M_BAD_JSON whether it is posted, stored or inline.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, register } from '../lib/harness.mjs';

const enc = encodeURIComponent;
let server;
let alice;
let bob;
let carol;
let roomId;
let otherRoom;

before(async () => {
  server = await startServer();
  alice = await register(server.url, 'alice');
  bob = await register(server.url, 'bob');
  carol = await register(server.url, 'carol');
  roomId = await alice.createRoom({ preset: 'public_chat', name: 'Filtered' });
  otherRoom = await alice.createRoom({ preset: 'public_chat' });
  for (const u of [bob, carol]) assert.equal((await u.join(roomId)).status, 200);
  await bob.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'from bob' });
  await carol.send(roomId, 'm.room.message', { msgtype: 'm.image', body: 'pic', url: 'mxc://localhost/pic' });
  await bob.send(roomId, 'm.call.invite', { call_id: 'c1', party_id: 'p', version: '1', lifetime: 60000, offer: { type: 'offer', sdp: 'v=0' } });
  await bob.send(roomId, 'org.example.custom', { x: 1 });
  await alice.call('PUT', `/user/${enc(alice.userId)}/account_data/org.example.a`, { body: { a: 1 } });
  await alice.call('PUT', `/user/${enc(alice.userId)}/account_data/org.example.b`, { body: { b: 1 } });
  await bob.call('PUT', `/rooms/${enc(roomId)}/typing/${enc(bob.userId)}`, { body: { typing: true, timeout: 60000 } });
});
after(async () => server?.stop());

const syncWith = (filter, user = alice) => user.sync({ filter: JSON.stringify(filter) });
const timelineTypes = (sync, id = roomId) => sync.rooms.join[id].timeline.events.map((e) => e.type);

test('timeline: types with wildcards, not_types, senders, not_senders and contains_url', async () => {
  let s = await syncWith({ room: { timeline: { types: ['m.call.*', 'm.room.message'], limit: 50 } } });
  assert.deepEqual(timelineTypes(s), ['m.room.message', 'm.room.message', 'm.call.invite']);
  s = await syncWith({ room: { timeline: { not_types: ['m.room.*'], limit: 50 } } });
  assert.deepEqual(timelineTypes(s), ['m.call.invite', 'org.example.custom']);
  s = await syncWith({ room: { timeline: { senders: [bob.userId], not_types: ['m.room.member'], limit: 50 } } });
  assert.deepEqual(timelineTypes(s), ['m.room.message', 'm.call.invite', 'org.example.custom']);
  s = await syncWith({ room: { timeline: { not_senders: [alice.userId, bob.userId], limit: 50 } } });
  assert.ok(s.rooms.join[roomId].timeline.events.every((e) => e.sender === carol.userId));
  s = await syncWith({ room: { timeline: { contains_url: true, limit: 50 } } });
  assert.deepEqual(s.rooms.join[roomId].timeline.events.map((e) => e.content.body), ['pic']);
  // A limited timeline counts only what the filter lets through.
  s = await syncWith({ room: { timeline: { types: ['m.room.message'], limit: 1 } } });
  assert.deepEqual(s.rooms.join[roomId].timeline.events.map((e) => e.content.body), ['pic']);
  assert.equal(s.rooms.join[roomId].timeline.limited, true);
});

test('a timeline filter never hides a state change: what it leaves out comes in the state', async () => {
  const filter = JSON.stringify({ room: { timeline: { types: ['m.room.message'] } } });
  const start = await bob.sync({ filter });
  const set = await alice.call('PUT', `/rooms/${enc(roomId)}/state/m.room.topic/`, { body: { topic: 'filtered out' } });
  assert.equal(set.status, 200, set.text);
  const next = await bob.sync({ since: start.next_batch, filter });
  const room = next.rooms.join[roomId];
  assert.ok(room, 'the room has news although its timeline is empty');
  assert.deepEqual(room.timeline.events, []);
  assert.deepEqual(room.state.events.map((e) => [e.type, e.content.topic]), [['m.room.topic', 'filtered out']]);
  // Unfiltered, the change is in the timeline and not repeated in the state.
  const plain = await bob.sync({ since: start.next_batch });
  assert.ok(plain.rooms.join[roomId].timeline.events.some((e) => e.type === 'm.room.topic'));
  assert.ok(!plain.rooms.join[roomId].state.events.some((e) => e.type === 'm.room.topic'));
});

test('timeline limit 0: no events, limited, and the state is still there', async () => {
  const s = await syncWith({ room: { timeline: { limit: 0 } } });
  const room = s.rooms.join[roomId];
  assert.deepEqual(room.timeline.events, []);
  assert.equal(room.timeline.limited, true);
  assert.ok(room.state.events.some((e) => e.type === 'm.room.name'));
  assert.ok(room.timeline.prev_batch);
});

test('rooms and not_rooms pick the rooms; state types pick the state', async () => {
  let s = await syncWith({ room: { rooms: [otherRoom] } });
  assert.deepEqual(Object.keys(s.rooms.join), [otherRoom]);
  s = await syncWith({ room: { not_rooms: [otherRoom] } });
  assert.deepEqual(Object.keys(s.rooms.join), [roomId]);
  s = await syncWith({ room: { timeline: { limit: 0 }, state: { types: ['m.room.name', 'm.room.create'] } } });
  assert.deepEqual(s.rooms.join[roomId].state.events.map((e) => e.type).sort(), ['m.room.create', 'm.room.name']);
});

test('lazy_load_members: the state has the member events of the timeline senders and the user', async () => {
  const s = await syncWith({ room: { timeline: { limit: 1, types: ['m.room.message'] }, state: { lazy_load_members: true } } });
  const room = s.rooms.join[roomId];
  assert.deepEqual(room.timeline.events.map((e) => e.sender), [carol.userId]);
  const members = room.state.events.filter((e) => e.type === 'm.room.member').map((e) => e.state_key).sort();
  assert.deepEqual(members, [alice.userId, carol.userId].sort(), 'not bob, who sent nothing shown');
  assert.equal(room.summary['m.joined_member_count'], 3, 'the summary still counts everyone');
  // Incremental: a new message from bob brings bob's member event along.
  const next = await alice.sync({ since: s.next_batch, filter: JSON.stringify({ room: { state: { lazy_load_members: true } } }) });
  assert.ok(!next.rooms.join[roomId], 'nothing new yet');
  await bob.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'again' });
  const later = await alice.sync({ since: s.next_batch, filter: JSON.stringify({ room: { state: { lazy_load_members: true } } }) });
  const state = later.rooms.join[roomId].state.events;
  assert.ok(state.some((e) => e.type === 'm.room.member' && e.state_key === bob.userId), JSON.stringify(state));
  assert.ok(!state.some((e) => e.type === 'm.room.member' && e.state_key === carol.userId));
});

test('ephemeral, account data and presence filters', async () => {
  let s = await syncWith({ room: { ephemeral: { not_types: ['m.typing'] } } });
  assert.ok(!s.rooms.join[roomId].ephemeral.events.some((e) => e.type === 'm.typing'));
  s = await syncWith({});
  assert.ok(s.rooms.join[roomId].ephemeral.events.some((e) => e.type === 'm.typing'), 'bob is typing');
  s = await syncWith({ account_data: { types: ['org.example.a'] } });
  assert.deepEqual(s.account_data.events.map((e) => e.type), ['org.example.a']);
  s = await syncWith({ account_data: { not_types: ['org.example.*'] } });
  assert.ok(!s.account_data.events.some((e) => e.type.startsWith('org.example.')));
  await bob.call('PUT', `/presence/${enc(bob.userId)}/status`, { body: { presence: 'online' } });
  s = await syncWith({});
  assert.ok(s.presence.events.some((e) => e.sender === bob.userId));
  s = await syncWith({ presence: { types: [] } });
  assert.deepEqual(s.presence.events, []);
  s = await syncWith({ presence: { not_senders: [bob.userId] } });
  assert.ok(!s.presence.events.some((e) => e.sender === bob.userId));
  s = await syncWith({ presence: { senders: [bob.userId] } });
  assert.deepEqual(s.presence.events.map((e) => e.sender), [bob.userId]);
  s = await syncWith({ event_format: 'client' });
  assert.ok(s.rooms.join[roomId]);
});

test('/messages applies a RoomEventFilter and lazy-loads the senders\' members', async () => {
  const res = await alice.call('GET', `/rooms/${enc(roomId)}/messages`, {
    query: { dir: 'b', limit: '50', filter: JSON.stringify({ types: ['m.room.message'], senders: [bob.userId], lazy_load_members: true }) },
  });
  assert.equal(res.status, 200, res.text);
  assert.ok(res.body.chunk.length >= 1);
  assert.ok(res.body.chunk.every((e) => e.type === 'm.room.message' && e.sender === bob.userId));
  assert.deepEqual(res.body.state.map((e) => e.state_key), [bob.userId]);
  const limited = await alice.call('GET', `/rooms/${enc(roomId)}/messages`, { query: { dir: 'b', filter: JSON.stringify({ limit: 2 }) } });
  assert.equal(limited.body.chunk.length, 2);
  assert.ok(limited.body.end, 'there is more to page to');
  const bad = await alice.call('GET', `/rooms/${enc(roomId)}/messages`, { query: { dir: 'b', filter: '{"senders":"x"}' } });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.errcode, 'M_BAD_JSON');
});

test('malformed filters: M_BAD_JSON when posted and inline; a stored filter works by id', async () => {
  for (const filter of [{ room: { timeline: { types: 'm.room.message' } } }, { room: { timeline: { limit: 'ten' } } }, { event_format: 'xml' }, { presence: [] }]) {
    const posted = await alice.call('POST', `/user/${enc(alice.userId)}/filter`, { body: filter });
    assert.equal(posted.status, 400, JSON.stringify(filter));
    assert.equal(posted.body.errcode, 'M_BAD_JSON', JSON.stringify(filter));
    const inline = await alice.call('GET', '/sync', { query: { filter: JSON.stringify(filter), set_presence: 'offline' } });
    assert.equal(inline.status, 400, JSON.stringify(filter));
    assert.equal(inline.body.errcode, 'M_BAD_JSON');
  }
  const posted = await alice.call('POST', `/user/${enc(alice.userId)}/filter`, { body: { room: { rooms: [otherRoom] } } });
  assert.equal(posted.status, 200);
  const s = await alice.sync({ filter: posted.body.filter_id });
  assert.deepEqual(Object.keys(s.rooms.join), [otherRoom]);
});

test('stored filters: one id per distinct filter, even posted at once; read back past the cache and after a restart', async () => {
  // One cached filter: every other one is read from the database.
  let own = await startServer({ config: { caches: { filters: 1 } } });
  try {
    const dave = await register(own.url, 'dave');
    const room = await dave.createRoom({ name: 'mine' });
    const other = await dave.createRoom({ name: 'other' });
    const post = (body, user = dave) => user.call('POST', `/user/${enc(user.userId)}/filter`, { body });
    const only = (id) => ({ room: { rooms: [id] } });
    // The same filter posted many times at once is decided in the database: one id.
    const same = await Promise.all(Array.from({ length: 8 }, () => post(only(room))));
    assert.ok(same.every((r) => r.status === 200), same.map((r) => r.text).join());
    assert.deepEqual(new Set(same.map((r) => r.body.filter_id)), new Set([same[0].body.filter_id]));
    const second = await post(only(other));
    assert.equal(second.status, 200);
    assert.notEqual(second.body.filter_id, same[0].body.filter_id);
    // Another user's ids are their own.
    const erin = await register(own.url, 'erin');
    const erins = await post(only(room), erin);
    assert.equal(erins.status, 200);
    const check = async (server, user) => {
      const u = user.at(server.url);
      const first = await u.call('GET', `/user/${enc(u.userId)}/filter/${same[0].body.filter_id}`);
      assert.equal(first.status, 200, first.text);
      assert.deepEqual(first.body, only(room));
      assert.deepEqual(Object.keys((await u.sync({ filter: second.body.filter_id })).rooms.join), [other]);
      assert.deepEqual(Object.keys((await u.sync({ filter: same[0].body.filter_id })).rooms.join), [room]);
      const missing = await u.call('GET', `/user/${enc(u.userId)}/filter/99`);
      assert.equal(missing.status, 404);
      assert.equal(missing.body.errcode, 'M_NOT_FOUND');
      const missingSync = await u.call('GET', '/sync', { query: { filter: '99', set_presence: 'offline' } });
      assert.equal(missingSync.status, 404);
      // Erin cannot read dave's filter by its id.
      const foreign = await u.call('GET', `/user/${enc(erin.userId)}/filter/${second.body.filter_id}`);
      assert.equal(foreign.status, 403);
    };
    await check(own, dave);
    own = await own.restart();
    await check(own, dave);
    assert.equal((await post(only(other), dave.at(own.url))).body.filter_id, second.body.filter_id, 'the same filter after a restart');
  } finally {
    await own.stop();
  }
});
