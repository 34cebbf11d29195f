// Who reads what of a room: history visibility for members who joined later, left or came
// back (in /messages, /event and /sync, also after a restart), what former members read of
// the state, and guest access.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, register, userHandle, api, CS } from '../lib/harness.mjs';

const enc = encodeURIComponent;

async function say(user, roomId, body) {
  const res = await user.send(roomId, 'm.room.message', { msgtype: 'm.text', body });
  assert.equal(res.status, 200, res.text);
  return res.body.event_id;
}

// The bodies of the messages `user` reads in the room through /messages, oldest first.
async function readMessages(user, roomId) {
  const res = await user.call('GET', `/rooms/${enc(roomId)}/messages`, { query: { dir: 'b', limit: '100' } });
  assert.equal(res.status, 200, res.text);
  return res.body.chunk.filter((e) => e.type === 'm.room.message').map((e) => e.content.body).reverse();
}

function timelineBodies(sync, roomId, section = 'join') {
  return (sync.rooms?.[section]?.[roomId]?.timeline?.events ?? []).filter((e) => e.type === 'm.room.message').map((e) => e.content.body);
}

async function scenario(server, visibility) {
  const a = await register(server.url, `a-${visibility}`);
  const b = await register(server.url, `b-${visibility}`);
  const roomId = await a.createRoom({
    preset: 'public_chat',
    initial_state: [{ type: 'm.room.history_visibility', state_key: '', content: { history_visibility: visibility } }],
  });
  const ids = {};
  ids.before = await say(a, roomId, 'before');
  assert.equal((await b.join(roomId)).status, 200);
  ids.joined = await say(a, roomId, 'joined');
  assert.equal((await b.call('POST', `/rooms/${enc(roomId)}/leave`, { body: {} })).status, 200);
  ids.away = await say(a, roomId, 'away');
  assert.equal((await b.join(roomId)).status, 200);
  ids.back = await say(a, roomId, 'back');
  return { a, b, roomId, ids };
}

async function expectSeen(server, { b, roomId, ids }, expected) {
  const reader = userHandle(server.url, { user_id: b.userId, access_token: b.token, device_id: b.deviceId });
  assert.deepEqual(await readMessages(reader, roomId), expected, '/messages');
  const sync = await reader.sync({ filter: JSON.stringify({ room: { timeline: { limit: 50 } } }) });
  assert.deepEqual(timelineBodies(sync, roomId), expected, 'initial /sync');
  for (const [name, id] of Object.entries(ids)) {
    const res = await reader.call('GET', `/rooms/${enc(roomId)}/event/${enc(id)}`);
    assert.equal(res.status, expected.includes(name) ? 200 : 404, `/event of '${name}': ${res.text}`);
  }
}

test('history visibility decides what a member who joined later, left and came back reads, also after a restart', async () => {
  let server = await startServer();
  try {
    const joined = await scenario(server, 'joined');
    const shared = await scenario(server, 'shared');
    const invited = await scenario(server, 'invited');
    const check = async () => {
      // "joined": nothing from before the first join nor from while away.
      await expectSeen(server, joined, ['joined', 'back']);
      // "shared": all of it, as they joined again after every message.
      await expectSeen(server, shared, ['before', 'joined', 'away', 'back']);
      // "invited" without an invite: as "joined".
      await expectSeen(server, invited, ['joined', 'back']);
    };
    await check();
    server = await server.restart();
    await check();
  } finally {
    await server.stop();
  }
});

test('the incremental /sync of a member who comes back does not carry what was said while away', async () => {
  const server = await startServer();
  const a = await register(server.url, 'alice');
  const b = await register(server.url, 'bob');
  const roomId = await a.createRoom({
    preset: 'public_chat',
    initial_state: [{ type: 'm.room.history_visibility', state_key: '', content: { history_visibility: 'joined' } }],
  });
  assert.equal((await b.join(roomId)).status, 200);
  await say(a, roomId, 'hello');
  assert.equal((await b.call('POST', `/rooms/${enc(roomId)}/leave`, { body: {} })).status, 200);
  const afterLeave = await b.sync();
  await say(a, roomId, 'secret');
  assert.equal((await b.join(roomId)).status, 200);
  await say(a, roomId, 'welcome back');
  const sync = await b.sync({ since: afterLeave.next_batch, timeout: '0' });
  // The room comes back as newly joined: what bob may see of its history, without 'secret'.
  assert.deepEqual(timelineBodies(sync, roomId), ['hello', 'welcome back']);
  await server.stop();
});

test('a former member reads the room as it was when they left, and nothing said since', async () => {
  const server = await startServer();
  const a = await register(server.url, 'alice');
  const b = await register(server.url, 'bob');
  const c = await register(server.url, 'carol');
  const roomId = await a.createRoom({ preset: 'public_chat', name: 'Old name' });
  assert.equal((await b.join(roomId)).status, 200);
  await say(a, roomId, 'while b was here');
  assert.equal((await b.call('POST', `/rooms/${enc(roomId)}/leave`, { body: {} })).status, 200);
  assert.equal((await c.join(roomId)).status, 200);
  assert.equal((await a.call('PUT', `/rooms/${enc(roomId)}/state/m.room.name`, { body: { name: 'New name' } })).status, 200);
  await say(a, roomId, 'after b left');

  const members = await b.call('GET', `/rooms/${enc(roomId)}/members`);
  assert.equal(members.status, 200, members.text);
  const byUser = Object.fromEntries(members.body.chunk.map((e) => [e.state_key, e.content.membership]));
  assert.deepEqual(byUser, { [a.userId]: 'join', [b.userId]: 'leave' }, 'carol joined after bob left');
  const joinedOnly = await b.call('GET', `/rooms/${enc(roomId)}/members`, { query: { membership: 'join' } });
  assert.deepEqual(joinedOnly.body.chunk.map((e) => e.state_key), [a.userId]);
  const name = await b.call('GET', `/rooms/${enc(roomId)}/state/m.room.name`);
  assert.equal(name.status, 200);
  assert.equal(name.body.name, 'Old name');
  const state = await b.call('GET', `/rooms/${enc(roomId)}/state`);
  assert.equal(state.status, 200);
  assert.equal(state.body.find((e) => e.type === 'm.room.name').content.name, 'Old name');
  assert.deepEqual(await readMessages(b, roomId), ['while b was here']);

  // Someone who never was in the (not world-readable) room reads nothing.
  const d = await register(server.url, 'dave');
  for (const path of ['/members', '/state', '/messages'])
    assert.equal((await d.call('GET', `/rooms/${enc(roomId)}${path}`)).status, 403, path);
  await server.stop();
});

test('guests join only rooms whose guest_access is can_join', async () => {
  const server = await startServer({ config: { allow_guest_access: true } });
  const a = await register(server.url, 'alice');
  const closed = await a.createRoom({ preset: 'public_chat' });
  const open = await a.createRoom({
    preset: 'public_chat',
    initial_state: [{ type: 'm.room.guest_access', state_key: '', content: { guest_access: 'can_join' } }],
  });
  const reg = await api(server.url, 'POST', `${CS}/register`, { query: { kind: 'guest' }, body: {} });
  assert.equal(reg.status, 200, reg.text);
  const guest = userHandle(server.url, reg.body);
  const refused = await guest.join(closed);
  assert.equal(refused.status, 403, refused.text);
  assert.equal(refused.body.errcode, 'M_GUEST_ACCESS_FORBIDDEN');
  assert.equal((await guest.join(open)).status, 200);
  await server.stop();
});
