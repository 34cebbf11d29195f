// Room aliases and the published room directory (directory.yaml, list_public_rooms.yaml):
// createRoom's room_alias_name, /directory/room/{alias} with its permission rules, joining by
// alias, m.room.canonical_alias checked against the aliases, /rooms/{id}/aliases, the
// directory visibility of a room and /publicRooms with its filter and paging; all of it
// the same after a restart.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, register, api, CS } from '../lib/harness.mjs';

const enc = encodeURIComponent;
let server;
let alice;
let bob;
let carol;

before(async () => {
  server = await startServer();
  alice = await register(server.url, 'alice');
  bob = await register(server.url, 'bob');
  carol = await register(server.url, 'carol');
});
after(async () => server?.stop());

const stateOf = async (user, roomId, type) => user.call('GET', `/rooms/${enc(roomId)}/state/${enc(type)}/`);

test('createRoom with room_alias_name makes the alias and the canonical alias; taken or malformed names are refused', async () => {
  const roomId = await alice.createRoom({ preset: 'public_chat', room_alias_name: 'lobby' });
  const got = await api(server.url, 'GET', `${CS}/directory/room/${enc('#lobby:localhost')}`);
  assert.equal(got.status, 200, got.text);
  assert.deepEqual(got.body, { room_id: roomId, servers: ['localhost'] });
  const canonical = await stateOf(alice, roomId, 'm.room.canonical_alias');
  assert.deepEqual(canonical.body, { alias: '#lobby:localhost' });

  const taken = await bob.call('POST', '/createRoom', { body: { room_alias_name: 'lobby' } });
  assert.equal(taken.status, 400);
  assert.equal(taken.body.errcode, 'M_ROOM_IN_USE');
  for (const name of ['a:b', 'has space', '']) {
    const bad = await bob.call('POST', '/createRoom', { body: { room_alias_name: name } });
    assert.equal(bad.status, 400, name);
    assert.equal(bad.body.errcode, 'M_INVALID_PARAM', name);
  }
  // A refused createRoom leaves no room behind for bob.
  assert.deepEqual((await bob.call('GET', '/joined_rooms')).body.joined_rooms, []);
});

test('aliases: put, get, join by alias and delete, with the permission rules', async () => {
  const roomId = await alice.createRoom({ preset: 'public_chat' });
  const alias = '#chat:localhost';
  const put = (user, a, body = { room_id: roomId }) => user.call('PUT', `/directory/room/${enc(a)}`, { body });

  const outsider = await bob.call('PUT', `/directory/room/${enc(alias)}`, { body: { room_id: roomId } });
  assert.equal(outsider.status, 403, 'only members make aliases');
  assert.equal(outsider.body.errcode, 'M_FORBIDDEN');
  assert.equal((await put(alice, alias)).status, 200);
  const again = await put(alice, alias);
  assert.equal(again.status, 409);
  assert.equal(again.body.errcode, 'M_UNKNOWN');
  const foreign = await put(alice, '#chat:elsewhere.example');
  assert.equal(foreign.status, 400);
  assert.equal(foreign.body.errcode, 'M_INVALID_PARAM');
  assert.equal((await put(alice, 'chat:localhost')).body.errcode, 'M_INVALID_PARAM');
  const unknownRoom = await put(alice, '#nowhere:localhost', { room_id: '!nope:localhost' });
  assert.equal(unknownRoom.status, 404);
  assert.equal((await put(alice, '#x:localhost', {})).body.errcode, 'M_MISSING_PARAM');

  const missing = await alice.call('GET', `/directory/room/${enc('#missing:localhost')}`);
  assert.equal(missing.status, 404);
  assert.equal(missing.body.errcode, 'M_NOT_FOUND');
  assert.equal((await alice.call('GET', `/directory/room/${enc('nohash')}`)).body.errcode, 'M_INVALID_PARAM');

  // Join by alias.
  const joined = await bob.call('POST', `/join/${enc(alias)}`, { body: {} });
  assert.equal(joined.status, 200, joined.text);
  assert.equal(joined.body.room_id, roomId);
  const nowhere = await bob.call('POST', `/join/${enc('#nowhere:localhost')}`, { body: {} });
  assert.equal(nowhere.status, 404);
  assert.equal(nowhere.body.errcode, 'M_NOT_FOUND');

  // Bob, now a member, makes an alias of his own; /rooms/{id}/aliases lists both for members.
  assert.equal((await put(bob, '#bobs:localhost')).status, 200);
  const list = await bob.call('GET', `/rooms/${enc(roomId)}/aliases`);
  assert.deepEqual(list.body.aliases.sort(), ['#bobs:localhost', alias]);
  const notMember = await carol.call('GET', `/rooms/${enc(roomId)}/aliases`);
  assert.equal(notMember.status, 403);
  assert.equal(notMember.body.errcode, 'M_FORBIDDEN');

  // Deleting: bob (power 0) may delete his own alias but not alice's; alice, a moderator,
  // may delete anyone's; carol nothing.
  const bobDeletesAlices = await bob.call('DELETE', `/directory/room/${enc(alias)}`);
  assert.equal(bobDeletesAlices.status, 403);
  assert.equal(bobDeletesAlices.body.errcode, 'M_FORBIDDEN');
  assert.equal((await carol.call('DELETE', `/directory/room/${enc('#bobs:localhost')}`)).status, 403);
  assert.equal((await bob.call('DELETE', `/directory/room/${enc('#bobs:localhost')}`)).status, 200);
  assert.equal((await put(bob, '#bobs2:localhost')).status, 200);
  assert.equal((await alice.call('DELETE', `/directory/room/${enc('#bobs2:localhost')}`)).status, 200);
  const gone = await alice.call('DELETE', `/directory/room/${enc('#bobs2:localhost')}`);
  assert.equal(gone.status, 404);
  assert.equal(gone.body.errcode, 'M_NOT_FOUND');
  assert.deepEqual((await alice.call('GET', `/rooms/${enc(roomId)}/aliases`)).body.aliases, [alias]);
});

test('m.room.canonical_alias may name only aliases of the room; deleting an alias takes it out', async () => {
  const roomId = await alice.createRoom({ preset: 'public_chat' });
  const other = await alice.createRoom({ preset: 'public_chat', room_alias_name: 'other' });
  assert.ok(other);
  const setCanonical = (content) => alice.call('PUT', `/rooms/${enc(roomId)}/state/m.room.canonical_alias/`, { body: content });
  for (const content of [{ alias: '#unknown:localhost' }, { alias: '#other:localhost' }, { alt_aliases: ['#unknown:localhost'] }]) {
    const res = await setCanonical(content);
    assert.equal(res.status, 400, JSON.stringify(content));
    assert.equal(res.body.errcode, 'M_BAD_ALIAS', JSON.stringify(content));
  }
  assert.equal((await setCanonical({ alias: 'not-an-alias' })).body.errcode, 'M_INVALID_PARAM');
  for (const a of ['#main:localhost', '#alt:localhost'])
    assert.equal((await alice.call('PUT', `/directory/room/${enc(a)}`, { body: { room_id: roomId } })).status, 200);
  assert.equal((await setCanonical({ alias: '#main:localhost', alt_aliases: ['#alt:localhost'] })).status, 200);
  assert.equal((await alice.call('DELETE', `/directory/room/${enc('#alt:localhost')}`)).status, 200);
  assert.deepEqual((await stateOf(alice, roomId, 'm.room.canonical_alias')).body, { alias: '#main:localhost', alt_aliases: [] });
  assert.equal((await alice.call('DELETE', `/directory/room/${enc('#main:localhost')}`)).status, 200);
  assert.deepEqual((await stateOf(alice, roomId, 'm.room.canonical_alias')).body, { alt_aliases: [] });
});

test('directory visibility and /publicRooms: published public rooms, largest first, with filter and paging', async () => {
  const fresh = await register(server.url, 'dora');
  const rooms = [];
  for (let i = 0; i < 5; i++)
    rooms.push(await fresh.createRoom({ preset: 'public_chat', visibility: 'public', name: `Room ${i}`, topic: i === 3 ? 'Calls about zebras' : undefined }));
  // Room 2 gets more members: it comes first.
  for (const u of [bob, carol]) assert.equal((await u.join(rooms[2])).status, 200);
  const hidden = await fresh.createRoom({ preset: 'public_chat', name: 'Not published' });
  const inviteOnly = await fresh.createRoom({ preset: 'private_chat', visibility: 'public', name: 'Invite only' });
  const space = await fresh.createRoom({ preset: 'public_chat', visibility: 'public', name: 'A space', creation_content: { type: 'm.space' } });

  const vis = (roomId) => api(server.url, 'GET', `${CS}/directory/list/room/${enc(roomId)}`);
  assert.deepEqual((await vis(rooms[0])).body, { visibility: 'public' });
  assert.deepEqual((await vis(hidden)).body, { visibility: 'private' });
  assert.equal((await vis('!nope:localhost')).status, 404);

  // Everything published here (earlier tests published nothing).
  const all = await api(server.url, 'GET', `${CS}/publicRooms`);
  assert.equal(all.status, 200, all.text);
  const ids = all.body.chunk.map((c) => c.room_id);
  assert.equal(ids[0], rooms[2]);
  assert.deepEqual([...ids].sort(), [...rooms, space].sort(), 'unpublished and invite-only rooms are not listed');
  assert.ok(!ids.includes(inviteOnly) && !ids.includes(hidden));
  assert.equal(all.body.total_room_count_estimate, 6);
  const first = all.body.chunk[0];
  assert.equal(first.num_joined_members, 3);
  assert.equal(first.name, 'Room 2');
  assert.equal(first.join_rule, 'public');
  assert.equal(first.world_readable, false);
  assert.equal(first.guest_can_join, false);
  assert.equal(all.body.chunk.find((c) => c.room_id === space).room_type, 'm.space');

  // Paging through with limit 4: the pages join up to the whole list, with no repeat.
  const page1 = await api(server.url, 'GET', `${CS}/publicRooms`, { query: { limit: '4' } });
  assert.equal(page1.body.chunk.length, 4);
  assert.equal(page1.body.prev_batch, undefined);
  const page2 = await api(server.url, 'GET', `${CS}/publicRooms`, { query: { limit: '4', since: page1.body.next_batch } });
  assert.equal(page2.body.chunk.length, 2);
  assert.equal(page2.body.next_batch, undefined);
  assert.ok(page2.body.prev_batch);
  assert.deepEqual([...page1.body.chunk, ...page2.body.chunk].map((c) => c.room_id), ids);
  const back = await api(server.url, 'GET', `${CS}/publicRooms`, { query: { limit: '4', since: page2.body.prev_batch } });
  assert.deepEqual(back.body.chunk.map((c) => c.room_id), page1.body.chunk.map((c) => c.room_id));
  assert.equal((await api(server.url, 'GET', `${CS}/publicRooms`, { query: { since: 'bogus' } })).body.errcode, 'M_INVALID_PARAM');
  assert.equal((await api(server.url, 'GET', `${CS}/publicRooms`, { query: { server: 'elsewhere.example' } })).status, 400);

  // POST: the filter (name, topic, alias; case-insensitive) and room types; it needs a token.
  const search = await bob.call('POST', '/publicRooms', { body: { filter: { generic_search_term: 'ZEBRA' } } });
  assert.deepEqual(search.body.chunk.map((c) => c.room_id), [rooms[3]]);
  const spaces = await bob.call('POST', '/publicRooms', { body: { filter: { room_types: ['m.space'] } } });
  assert.deepEqual(spaces.body.chunk.map((c) => c.room_id), [space]);
  const plain = await bob.call('POST', '/publicRooms', { body: { filter: { room_types: [null] }, limit: 2 } });
  assert.equal(plain.body.chunk.length, 2);
  assert.ok(!plain.body.chunk.some((c) => c.room_id === space));
  const bridged = await bob.call('POST', '/publicRooms', { body: { third_party_instance_id: 'irc' } });
  assert.deepEqual(bridged.body.chunk, []);
  assert.equal((await api(server.url, 'POST', `${CS}/publicRooms`, { body: {} })).status, 401);

  // Visibility changes: only members with the power to change the canonical alias.
  const unpublish = (user) => user.call('PUT', `/directory/list/room/${enc(rooms[2])}`, { body: { visibility: 'private' } });
  const refused = await bob.call('PUT', `/directory/list/room/${enc(rooms[2])}`, { body: { visibility: 'private' } });
  assert.equal(refused.status, 403);
  assert.equal(refused.body.errcode, 'M_FORBIDDEN');
  assert.equal((await fresh.call('PUT', `/directory/list/room/${enc(rooms[2])}`, { body: { visibility: 'sideways' } })).body.errcode, 'M_INVALID_PARAM');
  assert.equal((await unpublish(fresh)).status, 200);
  assert.deepEqual((await vis(rooms[2])).body, { visibility: 'private' });
  assert.equal((await fresh.call('PUT', `/directory/list/room/${enc(hidden)}`, { body: { visibility: 'public' } })).status, 200);

  // The directory and the aliases survive a restart.
  server = await server.restart();
  assert.deepEqual((await vis(rooms[2])).body, { visibility: 'private' });
  assert.deepEqual((await vis(hidden)).body, { visibility: 'public' });
  const after = await api(server.url, 'GET', `${CS}/publicRooms`);
  assert.deepEqual(after.body.chunk.map((c) => c.room_id).sort(), [rooms[0], rooms[1], rooms[3], rooms[4], space, hidden].sort());
  const lobby = await api(server.url, 'GET', `${CS}/directory/room/${enc('#lobby:localhost')}`);
  assert.equal(lobby.status, 200);
  const bobAgain = bob.at(server.url);
  assert.equal((await bobAgain.call('POST', `/join/${enc('#lobby:localhost')}`, { body: {} })).status, 200);
});
