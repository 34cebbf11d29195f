// Rooms: createRoom presets and event order, membership and auth rules, sending, state,
// members, history paging and single events.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, register } from '../lib/harness.mjs';

let server;
let n = 0;
const fresh = (name) => register(server.url, `${name}${n++}`);
before(async () => {
  server = await startServer();
});
after(async () => server.stop());

const enc = encodeURIComponent;

async function stateTypes(user, roomId) {
  const res = await user.call('GET', `/rooms/${enc(roomId)}/messages`, { query: { dir: 'f', from: 's0', limit: '100' } });
  assert.equal(res.status, 200, res.text);
  return res.body.chunk.map((e) => (e.state_key !== undefined ? `${e.type}|${e.state_key}` : e.type));
}

test('trusted_private_chat direct room: Synapse event order, invitee gets power 100 and is_direct', async () => {
  const alice = await fresh('alice');
  const bob = await fresh('bob');
  const roomId = await alice.createRoom({
    preset: 'trusted_private_chat', is_direct: true, invite: [bob.userId], name: 'Call', topic: 'calls',
    initial_state: [{ type: 'm.room.history_visibility', state_key: '', content: { history_visibility: 'invited' } }],
  });
  assert.match(roomId, /^![A-Za-z]{18}:localhost$/);
  assert.deepEqual(await stateTypes(alice, roomId), [
    'm.room.create|', `m.room.member|${alice.userId}`, 'm.room.power_levels|', 'm.room.join_rules|',
    'm.room.history_visibility|', 'm.room.guest_access|', 'm.room.history_visibility|', 'm.room.name|',
    'm.room.topic|', `m.room.member|${bob.userId}`,
  ]);
  const pl = await alice.call('GET', `/rooms/${enc(roomId)}/state/m.room.power_levels/`);
  assert.equal(pl.body.users[bob.userId], 100);
  assert.equal(pl.body.users[alice.userId], 100);
  const invite = await alice.call('GET', `/rooms/${enc(roomId)}/state/m.room.member/${enc(bob.userId)}`);
  assert.deepEqual({ m: invite.body.membership, d: invite.body.is_direct }, { m: 'invite', d: true });
  const jr = await alice.call('GET', `/rooms/${enc(roomId)}/state/m.room.join_rules`);
  assert.equal(jr.body.join_rule, 'invite');
  const create = await alice.call('GET', `/rooms/${enc(roomId)}/state/m.room.create/`);
  assert.equal(create.body.room_version, '10');
});

test('presets: public_chat is joinable by anyone, private_chat needs an invite', async () => {
  const alice = await fresh('alice');
  const carol = await fresh('carol');
  const pub = await alice.createRoom({ preset: 'public_chat' });
  const priv = await alice.createRoom({ preset: 'private_chat' });
  assert.equal((await carol.join(pub)).status, 200);
  const denied = await carol.join(priv);
  assert.equal(denied.status, 403);
  assert.equal(denied.body.errcode, 'M_FORBIDDEN');
  const types = await stateTypes(alice, pub);
  assert.ok(!types.includes('m.room.guest_access|'), 'public rooms get no guest access event');
});

test('createRoom: unknown room version, bad preset, bad invite, power_level_content_override', async () => {
  const alice = await fresh('alice');
  const v = await alice.call('POST', '/createRoom', { body: { room_version: '99' } });
  assert.equal(v.status, 400);
  assert.equal(v.body.errcode, 'M_UNSUPPORTED_ROOM_VERSION');
  const p = await alice.call('POST', '/createRoom', { body: { preset: 'party' } });
  assert.equal(p.body.errcode, 'M_INVALID_PARAM');
  const i = await alice.call('POST', '/createRoom', { body: { invite: ['not-a-user'] } });
  assert.equal(i.body.errcode, 'M_INVALID_PARAM');
  const roomId = await alice.createRoom({ room_version: '11', power_level_content_override: { invite: 50, events_default: 10 } });
  const pl = await alice.call('GET', `/rooms/${enc(roomId)}/state/m.room.power_levels`);
  assert.equal(pl.body.invite, 50);
  assert.equal(pl.body.events_default, 10);
  const create = await alice.call('GET', `/rooms/${enc(roomId)}/state/m.room.create`);
  assert.equal(create.body.room_version, '11');
  assert.equal(create.body.creator, undefined);
});

test('invite, join, leave, joined_rooms and the auth rules around them', async () => {
  const alice = await fresh('alice');
  const bob = await fresh('bob');
  const carol = await fresh('carol');
  const roomId = await alice.createRoom({ preset: 'private_chat', power_level_content_override: { invite: 50 } });
  // bob is not in the room: he can neither send nor invite.
  const send = await bob.send(roomId, 'm.room.message', { body: 'hi', msgtype: 'm.text' });
  assert.equal(send.status, 403);
  assert.equal(send.body.errcode, 'M_FORBIDDEN');
  assert.equal((await alice.call('POST', `/rooms/${enc(roomId)}/invite`, { body: { user_id: bob.userId } })).status, 200);
  assert.equal((await bob.call('POST', `/rooms/${enc(roomId)}/join`, { body: {} })).status, 200);
  assert.deepEqual((await bob.call('GET', '/joined_rooms')).body.joined_rooms, [roomId]);
  // bob has power 0 and invites need 50.
  const inv = await bob.call('POST', `/rooms/${enc(roomId)}/invite`, { body: { user_id: carol.userId } });
  assert.equal(inv.status, 403);
  // inviting someone who is already joined is refused.
  const twice = await alice.call('POST', `/rooms/${enc(roomId)}/invite`, { body: { user_id: bob.userId } });
  assert.equal(twice.status, 403);
  // bob cannot change the room name (state_default 50 / m.room.name 50).
  const name = await bob.call('PUT', `/rooms/${enc(roomId)}/state/m.room.name/`, { body: { name: 'x' } });
  assert.equal(name.status, 403);
  // nor claim another user's state key.
  const claim = await bob.call('PUT', `/rooms/${enc(roomId)}/state/org.example/${enc(alice.userId)}`, { body: {} });
  assert.equal(claim.status, 403);
  assert.equal((await bob.call('POST', `/rooms/${enc(roomId)}/leave`, { body: {} })).status, 200);
  assert.deepEqual((await bob.call('GET', '/joined_rooms')).body.joined_rooms, []);
  const after = await bob.send(roomId, 'm.room.message', { body: 'gone', msgtype: 'm.text' });
  assert.equal(after.status, 403);
  // unknown rooms and aliases
  const unknown = await bob.join('!nope:localhost');
  assert.equal(unknown.status, 404);
  assert.equal(unknown.body.errcode, 'M_NOT_FOUND');
  assert.equal((await bob.join('#alias:localhost')).status, 404);
  const unknownUser = await alice.call('POST', `/rooms/${enc(roomId)}/invite`, { body: { user_id: '@ghost:localhost' } });
  assert.equal(unknownUser.status, 404);
  const noUser = await alice.call('POST', `/rooms/${enc(roomId)}/invite`, { body: {} });
  assert.equal(noUser.body.errcode, 'M_MISSING_PARAM');
});

test('kick, ban and unban: who may, and whom', async () => {
  const alice = await fresh('alice');
  const bob = await fresh('bob');
  const carol = await fresh('carol');
  const roomId = await alice.createRoom({ preset: 'public_chat' });
  assert.equal((await bob.join(roomId)).status, 200);
  const path = (what) => `/rooms/${enc(roomId)}/${what}`;
  const membership = async (u) => (await alice.call('GET', path(`state/m.room.member/${enc(u.userId)}`))).body.membership;
  const kickCarol = await alice.call('POST', path('kick'), { body: { user_id: carol.userId } });
  assert.equal(kickCarol.status, 403, kickCarol.text);
  assert.match(kickCarol.body.error, /not in the room/);
  const byBob = await bob.call('POST', path('kick'), { body: { user_id: alice.userId } });
  assert.equal(byBob.status, 403, byBob.text);
  const noUser = await alice.call('POST', path('ban'), { body: {} });
  assert.equal(noUser.status, 400);
  assert.equal(noUser.body.errcode, 'M_MISSING_PARAM');
  const notBanned = await alice.call('POST', path('unban'), { body: { user_id: bob.userId } });
  assert.equal(notBanned.status, 403, notBanned.text);
  assert.equal(await membership(bob), 'join');
  assert.equal((await alice.call('POST', path('kick'), { body: { user_id: bob.userId, reason: 'out' } })).status, 200);
  assert.equal(await membership(bob), 'leave');
  assert.equal((await bob.join(roomId)).status, 200);
  assert.equal((await alice.call('POST', path('ban'), { body: { user_id: bob.userId } })).status, 200);
  assert.equal(await membership(bob), 'ban');
  assert.equal((await bob.join(roomId)).status, 403);
  assert.equal((await alice.call('POST', path('kick'), { body: { user_id: bob.userId } })).status, 403);
  assert.equal((await alice.call('POST', path('unban'), { body: { user_id: bob.userId } })).status, 200);
  assert.equal(await membership(bob), 'leave');
  assert.equal((await bob.join(roomId)).status, 200);
});

test('power levels decide who may send which event type', async () => {
  const alice = await fresh('alice');
  const bob = await fresh('bob');
  const roomId = await alice.createRoom({
    preset: 'public_chat', power_level_content_override: { events: { 'm.call.invite': 50 } },
  });
  await bob.join(roomId);
  const denied = await bob.send(roomId, 'm.call.invite', { call_id: 'c', party_id: 'p', version: '1', lifetime: 1, offer: { type: 'offer', sdp: 'x' } });
  assert.equal(denied.status, 403);
  assert.match(denied.body.error, /m\.call\.invite/);
  assert.equal((await alice.send(roomId, 'm.call.invite', { call_id: 'c' })).status, 200);
  assert.equal((await bob.send(roomId, 'm.room.message', { body: 'ok', msgtype: 'm.text' })).status, 200);
  // bob cannot raise himself.
  const raise = await bob.call('PUT', `/rooms/${enc(roomId)}/state/m.room.power_levels/`, {
    body: { users: { [alice.userId]: 100, [bob.userId]: 100 } },
  });
  assert.equal(raise.status, 403);
});

test('send is idempotent per device, room and txnId; another room makes a new event', async () => {
  const alice = await fresh('alice');
  const r1 = await alice.createRoom({});
  const r2 = await alice.createRoom({});
  const a = await alice.send(r1, 'm.room.message', { body: 'one', msgtype: 'm.text' }, 'txn1');
  const b = await alice.send(r1, 'm.room.message', { body: 'one', msgtype: 'm.text' }, 'txn1');
  const c = await alice.send(r2, 'm.room.message', { body: 'one', msgtype: 'm.text' }, 'txn1');
  assert.equal(a.status, 200);
  assert.match(a.body.event_id, /^\$[A-Za-z0-9_-]{43}$/);
  assert.equal(b.body.event_id, a.body.event_id);
  assert.notEqual(c.body.event_id, a.body.event_id);
  const history = await alice.call('GET', `/rooms/${enc(r1)}/messages`, { query: { dir: 'b', limit: '50' } });
  assert.equal(history.body.chunk.filter((e) => e.type === 'm.room.message').length, 1);
});

test('a send retried while its first attempt is still being written gets the same event', async () => {
  const alice = await fresh('alice');
  const roomId = await alice.createRoom({});
  // All at once: the first to arrive is written, the others wait for its outcome.
  const sends = await Promise.all(
    Array.from({ length: 8 }, () => alice.send(roomId, 'm.room.message', { body: 'once', msgtype: 'm.text' }, 'same')),
  );
  for (const res of sends) assert.equal(res.status, 200, res.text);
  assert.equal(new Set(sends.map((r) => r.body.event_id)).size, 1);
  const redactions = await Promise.all(
    Array.from({ length: 4 }, () =>
      alice.call('PUT', `/rooms/${enc(roomId)}/redact/${enc(sends[0].body.event_id)}/r1`, { body: {} }),
    ),
  );
  for (const res of redactions) assert.equal(res.status, 200, res.text);
  assert.equal(new Set(redactions.map((r) => r.body.event_id)).size, 1);
  const history = await alice.call('GET', `/rooms/${enc(roomId)}/messages`, { query: { dir: 'b', limit: '50' } });
  assert.equal(history.body.chunk.filter((e) => e.type === 'm.room.message').length, 1);
  assert.equal(history.body.chunk.filter((e) => e.type === 'm.room.redaction').length, 1);
});

test('createRoom refused by one of its own events makes no room and keeps no alias', async () => {
  const alice = await fresh('alice');
  const alias = `refused${n++}`;
  const before = await alice.call('GET', '/joined_rooms');
  const refused = await alice.call('POST', '/createRoom', {
    body: { room_alias_name: alias, initial_state: [{ type: 'm.room.topic', content: { topic: 'x', n: 1.5 } }] },
  });
  assert.equal(refused.status, 400, refused.text);
  assert.equal(refused.body.errcode, 'M_BAD_JSON');
  const after = await alice.call('GET', '/joined_rooms');
  assert.deepEqual(after.body.joined_rooms, before.body.joined_rooms);
  const lookup = await alice.call('GET', `/directory/room/${enc(`#${alias}:localhost`)}`);
  assert.equal(lookup.status, 404, lookup.text);
  const made = await alice.call('POST', '/createRoom', { body: { room_alias_name: alias } });
  assert.equal(made.status, 200, made.text);
});

test('state: put, get one, get all, members with filters', async () => {
  const alice = await fresh('alice');
  const bob = await fresh('bob');
  const roomId = await alice.createRoom({ preset: 'public_chat' });
  await bob.join(roomId);
  const put = await alice.call('PUT', `/rooms/${enc(roomId)}/state/org.example.thing/key1`, { body: { v: 1 } });
  assert.equal(put.status, 200);
  assert.match(put.body.event_id, /^\$/);
  assert.deepEqual((await bob.call('GET', `/rooms/${enc(roomId)}/state/org.example.thing/key1`)).body, { v: 1 });
  const missing = await bob.call('GET', `/rooms/${enc(roomId)}/state/org.example.thing/nokey`);
  assert.equal(missing.status, 404);
  assert.equal(missing.body.errcode, 'M_NOT_FOUND');
  const all = await bob.call('GET', `/rooms/${enc(roomId)}/state`);
  assert.ok(all.body.some((e) => e.type === 'org.example.thing' && e.state_key === 'key1'));
  assert.ok(all.body.every((e) => typeof e.unsigned?.age === 'number'));
  const members = await bob.call('GET', `/rooms/${enc(roomId)}/members`);
  assert.deepEqual(members.body.chunk.map((e) => e.state_key).sort(), [alice.userId, bob.userId].sort());
  const notJoined = await bob.call('GET', `/rooms/${enc(roomId)}/members`, { query: { not_membership: 'join' } });
  assert.deepEqual(notJoined.body.chunk, []);
  const outsider = await fresh('eve');
  assert.equal((await outsider.call('GET', `/rooms/${enc(roomId)}/state`)).status, 403);
});

test('messages pages backwards and forwards with tokens; event by id', async () => {
  const alice = await fresh('alice');
  const roomId = await alice.createRoom({});
  const ids = [];
  for (let i = 0; i < 25; i++) ids.push((await alice.send(roomId, 'm.room.message', { body: `m${i}`, msgtype: 'm.text' })).body.event_id);
  const page1 = await alice.call('GET', `/rooms/${enc(roomId)}/messages`, { query: { dir: 'b', limit: '10' } });
  assert.equal(page1.status, 200);
  assert.deepEqual(page1.body.chunk.map((e) => e.event_id), ids.slice(15).reverse());
  const page2 = await alice.call('GET', `/rooms/${enc(roomId)}/messages`, { query: { dir: 'b', limit: '10', from: page1.body.end } });
  assert.deepEqual(page2.body.chunk.map((e) => e.event_id), ids.slice(5, 15).reverse());
  const fwd = await alice.call('GET', `/rooms/${enc(roomId)}/messages`, { query: { dir: 'f', limit: '3', from: page2.body.end } });
  assert.deepEqual(fwd.body.chunk.map((e) => e.event_id), ids.slice(5, 8));
  const bad = await alice.call('GET', `/rooms/${enc(roomId)}/messages`, { query: { from: 'garbage' } });
  assert.equal(bad.body.errcode, 'M_INVALID_PARAM');
  const ev = await alice.call('GET', `/rooms/${enc(roomId)}/event/${enc(ids[3])}`);
  assert.equal(ev.body.content.body, 'm3');
  assert.equal(typeof ev.body.unsigned.age, 'number');
  const none = await alice.call('GET', `/rooms/${enc(roomId)}/event/${enc('$missing')}`);
  assert.equal(none.status, 404);
});

test('event content: M_NOT_JSON, M_BAD_JSON, M_TOO_LARGE', async () => {
  const alice = await fresh('alice');
  const roomId = await alice.createRoom({});
  const path = `/rooms/${enc(roomId)}/send/m.room.message/`;
  const notJson = await alice.call('PUT', path + 'a', { raw: '{"body": ' });
  assert.equal(notJson.status, 400);
  assert.equal(notJson.body.errcode, 'M_NOT_JSON');
  const array = await alice.call('PUT', path + 'b', { raw: '[1,2]' });
  assert.equal(array.body.errcode, 'M_BAD_JSON');
  const big = await alice.call('PUT', path + 'c', { raw: '{"n": 9007199254740992}' });
  assert.equal(big.status, 400);
  assert.equal(big.body.errcode, 'M_BAD_JSON');
  const negative = await alice.call('PUT', path + 'd', { raw: '{"n": -9007199254740992}' });
  assert.equal(negative.body.errcode, 'M_BAD_JSON');
  const edge = await alice.call('PUT', path + 'e', { raw: '{"n": 9007199254740991}' });
  assert.equal(edge.status, 200);
  const float = await alice.call('PUT', path + 'f', { raw: '{"n": 1.5}' });
  assert.equal(float.body.errcode, 'M_BAD_JSON');
  const large = await alice.call('PUT', path + 'g', { body: { body: 'x'.repeat(66000) } });
  assert.equal(large.status, 413);
  assert.equal(large.body.errcode, 'M_TOO_LARGE');
  const justUnder = await alice.call('PUT', path + 'h', { body: { body: 'x'.repeat(60000) } });
  assert.equal(justUnder.status, 200);
});

test('memberships past caches.memberships: each user\'s rooms are read from the database when used, and a waiting /sync sees its new invite', { timeout: 60000 }, async () => {
  let small = await startServer({ config: { caches: { memberships: 1 }, log_level: 'debug' } });
  try {
    const [ann, ben, cat] = [await register(small.url, 'ann'), await register(small.url, 'ben'), await register(small.url, 'cat')];
    const joined = async (u) => {
      const res = await u.call('GET', '/joined_rooms');
      assert.equal(res.status, 200, res.text);
      return res.body.joined_rooms.sort();
    };
    const shared = await ann.createRoom({ preset: 'private_chat', invite: [ben.userId] });
    assert.equal((await ben.join(shared)).status, 200);
    const cats = await cat.createRoom({ preset: 'private_chat' });
    assert.deepEqual(await joined(ann), [shared]);
    assert.deepEqual(await joined(ben), [shared]);
    assert.deepEqual(await joined(cat), [cats]);
    await small.logged(/the memberships of \d+ users let go \(1 held\)/);
    // Ben's /sync waits, holding his rooms while cat's are read; cat's invite wakes it.
    const base = await ben.sync();
    const waiting = ben.sync({ since: base.next_batch, timeout: '30000' });
    const quoted = ben.userId.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    await small.logged(new RegExp(`/sync of ${quoted} waits up to 30000 ms for something after ${base.next_batch}(?!\\d)`));
    assert.deepEqual(await joined(cat), [cats]);
    assert.equal((await cat.call('POST', `/rooms/${enc(cats)}/invite`, { body: { user_id: ben.userId } })).status, 200);
    const woken = await waiting;
    assert.ok(woken.rooms.invite[cats], JSON.stringify(woken.rooms));
    // Ann leaves while her rooms are not held: read again, they say so.
    const annBase = await ann.sync();
    assert.deepEqual(await joined(cat), [cats]);
    assert.equal((await ann.call('POST', `/rooms/${enc(shared)}/leave`, { body: {} })).status, 200);
    assert.deepEqual(await joined(cat), [cats]);
    assert.deepEqual(await joined(ann), []);
    const left = await ann.sync({ since: annBase.next_batch });
    assert.ok(left.rooms.leave[shared], JSON.stringify(left.rooms));
    // After a restart nobody's rooms are held: each is read when used.
    small = await small.restart();
    const benAgain = ben.at(small.url);
    assert.deepEqual(await joined(benAgain), [shared]);
    const fresh = await benAgain.sync();
    assert.deepEqual(Object.keys(fresh.rooms.join), [shared]);
    assert.deepEqual(Object.keys(fresh.rooms.invite), [cats]);
    assert.deepEqual(await joined(ann.at(small.url)), []);
  } finally {
    await small.stop();
  }
});

test('rooms past caches.rooms are let go and read again from the database when used', { timeout: 60000 }, async () => {
  const small = await startServer({ config: { caches: { rooms: 2 }, log_level: 'debug' } });
  try {
    const alice = await register(small.url, 'alice');
    const bob = await register(small.url, 'bob');
    const rooms = [];
    for (let i = 0; i < 4; i++) {
      const roomId = await alice.createRoom({ name: `room ${i}`, preset: 'public_chat' });
      assert.equal((await bob.join(roomId)).status, 200);
      assert.equal((await alice.send(roomId, 'm.room.message', { msgtype: 'm.text', body: `hello ${i}` })).status, 200);
      rooms.push(roomId);
    }
    await small.logged(/rooms let go \(2 held\)/);
    // The first room was let go: using it reads it again, with its state, members and history.
    const first = rooms[0];
    const name = await alice.call('GET', `/rooms/${enc(first)}/state/m.room.name/`);
    assert.equal(name.status, 200, name.text);
    assert.equal(name.body.name, 'room 0');
    await small.logged(new RegExp(`room ${first.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} read from the database`));
    const members = await alice.call('GET', `/rooms/${enc(first)}/members`, { query: { membership: 'join' } });
    assert.deepEqual(members.body.chunk.map((e) => e.state_key).sort(), [alice.userId, bob.userId].sort());
    // The rules still hold there: bob has no power to rename it; alice has.
    const refused = await bob.call('PUT', `/rooms/${enc(first)}/state/m.room.name/`, { body: { name: 'mine' } });
    assert.equal(refused.status, 403);
    assert.equal((await bob.send(first, 'm.room.message', { msgtype: 'm.text', body: 'back' })).status, 200);
    // Every room, held or not, is in a first /sync with its name and its newest messages.
    const sync = await bob.sync();
    for (const [i, roomId] of rooms.entries()) {
      const joined = sync.rooms.join[roomId];
      assert.ok(joined, `room ${i} in the sync`);
      const names = joined.state.events.concat(joined.timeline.events).filter((e) => e.type === 'm.room.name');
      assert.equal(names.at(-1).content.name, `room ${i}`);
      const bodies = joined.timeline.events.filter((e) => e.type === 'm.room.message').map((e) => e.content.body);
      assert.deepEqual(bodies, i === 0 ? ['hello 0', 'back'] : [`hello ${i}`]);
    }
    // An incremental /sync sees a new message in a room read again, once.
    const next = bob.call('GET', '/sync', { query: { since: sync.next_batch, timeout: '10000', set_presence: 'offline' } });
    assert.equal((await alice.send(rooms[1], 'm.room.message', { msgtype: 'm.text', body: 'later' })).status, 200);
    const later = (await next).body;
    assert.deepEqual(Object.keys(later.rooms.join), [rooms[1]]);
    assert.deepEqual(later.rooms.join[rooms[1]].timeline.events.map((e) => e.content.body), ['later']);
  } finally {
    await small.stop();
  }
});
