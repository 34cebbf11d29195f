// unsigned.prev_content, prev_sender and replaces_state on state events (the client-server
// spec's "unsigned" of ClientEvent): what a state event replaced, on every path that serves
// events, beside the per-response age and transaction_id, and the same after a restart.
// matrix-js-sdk reads the callee's DM flag from the join's prev_content (is_direct on the
// invite), so without it a new DM is filed under "Rooms".
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, register } from '../lib/harness.mjs';

const enc = encodeURIComponent;
let server;
let alice;
let bob;
let roomId;
let inviteId;
let joinId;

before(async () => {
  server = await startServer();
  alice = await register(server.url, 'alice');
  bob = await register(server.url, 'bob');
  roomId = await alice.createRoom({ preset: 'trusted_private_chat', is_direct: true, invite: [bob.userId] });
  const joined = await bob.join(roomId);
  assert.equal(joined.status, 200, joined.text);
  const members = await alice.call('GET', `/rooms/${enc(roomId)}/messages`, { query: { dir: 'f', from: 's0', limit: '100' } });
  const bobs = members.body.chunk.filter((e) => e.type === 'm.room.member' && e.state_key === bob.userId);
  assert.equal(bobs.length, 2);
  [inviteId, joinId] = bobs.map((e) => e.event_id);
});
after(async () => server?.stop());

function checkJoin(ev, where) {
  assert.equal(ev.event_id, joinId, where);
  assert.equal(ev.content.membership, 'join', where);
  assert.equal(ev.unsigned.replaces_state, inviteId, where);
  assert.equal(ev.unsigned.prev_sender, alice.userId, where);
  assert.equal(ev.unsigned.prev_content.membership, 'invite', where);
  assert.equal(ev.unsigned.prev_content.is_direct, true, where);
  assert.equal(typeof ev.unsigned.age, 'number', where);
}

async function everyPath(label) {
  const sync = await bob.sync();
  const room = sync.rooms.join[roomId];
  const all = [...room.state.events, ...room.timeline.events];
  checkJoin(all.find((e) => e.event_id === joinId), `${label}: /sync`);
  // The first event of a (type, state_key) replaced nothing.
  const create = all.find((e) => e.type === 'm.room.create');
  assert.deepEqual(Object.keys(create.unsigned), ['age'], `${label}: m.room.create`);
  const messages = await bob.call('GET', `/rooms/${enc(roomId)}/messages`, { query: { dir: 'b', limit: '100' } });
  checkJoin(messages.body.chunk.find((e) => e.event_id === joinId), `${label}: /messages`);
  const state = await bob.call('GET', `/rooms/${enc(roomId)}/state`);
  checkJoin(state.body.find((e) => e.event_id === joinId), `${label}: /state`);
  const members = await bob.call('GET', `/rooms/${enc(roomId)}/members`);
  checkJoin(members.body.chunk.find((e) => e.event_id === joinId), `${label}: /members`);
  const single = await bob.call('GET', `/rooms/${enc(roomId)}/event/${enc(joinId)}`);
  checkJoin(single.body, `${label}: /event`);
  // The state content endpoint serves the content alone.
  const content = await bob.call('GET', `/rooms/${enc(roomId)}/state/m.room.member/${enc(bob.userId)}`);
  assert.equal(content.body.membership, 'join', label);
  assert.equal(content.body.unsigned, undefined, label);
}

test('a join after an invite carries the invite as prev_content on every path', async () => {
  await everyPath('running');
});

test('a state change sent with a transaction id has both its transaction_id and what it replaced', async () => {
  const first = await alice.call('PUT', `/rooms/${enc(roomId)}/state/m.room.topic/`, { body: { topic: 'calls' } });
  assert.equal(first.status, 200, first.text);
  const res = await alice.call('PUT', `/rooms/${enc(roomId)}/state/m.room.topic/`, { body: { topic: 'more calls' } });
  const sync = await alice.sync({ filter: JSON.stringify({ room: { timeline: { limit: 2 } } }) });
  const ev = sync.rooms.join[roomId].timeline.events.find((e) => e.event_id === res.body.event_id);
  assert.deepEqual(ev.unsigned.prev_content, { topic: 'calls' });
  assert.equal(ev.unsigned.replaces_state, first.body.event_id);
  // A message with a transaction id: transaction_id for the sender only.
  const sent = await alice.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'hi' }, 'txn-u1');
  const mine = await alice.sync({ filter: JSON.stringify({ room: { timeline: { limit: 1 } } }) });
  const msg = mine.rooms.join[roomId].timeline.events.at(-1);
  assert.equal(msg.event_id, sent.body.event_id);
  assert.equal(msg.unsigned.transaction_id, 'txn-u1');
  assert.equal(msg.unsigned.prev_content, undefined);
});

test('what a state event replaced survives a restart', async () => {
  server = await server.restart();
  [alice, bob] = [alice, bob].map((u) => u.at(server.url));
  await everyPath('restarted');
});

test('transaction_id for the sending device on every path, for an event read from the store after a restart', async () => {
  // Sent before the restart above, so now read from the store, not the recent window.
  const seen = async (user) => {
    const sync = await user.sync({ filter: JSON.stringify({ room: { timeline: { limit: 20 } } }) });
    const fromSync = sync.rooms.join[roomId].timeline.events.find((e) => e.content.body === 'hi');
    assert.ok(fromSync, `${user.userId}'s /sync has the message`);
    const id = fromSync.event_id;
    const messages = await user.call('GET', `/rooms/${enc(roomId)}/messages`, { query: { dir: 'b', limit: '20' } });
    const event = await user.call('GET', `/rooms/${enc(roomId)}/event/${enc(id)}`);
    const context = await user.call('GET', `/rooms/${enc(roomId)}/context/${enc(id)}`);
    for (const res of [messages, event, context]) assert.equal(res.status, 200, res.text);
    return [fromSync, messages.body.chunk.find((e) => e.event_id === id), event.body, context.body.event].map((e) => e.unsigned.transaction_id);
  };
  assert.deepEqual(await seen(alice), ['txn-u1', 'txn-u1', 'txn-u1', 'txn-u1']);
  assert.deepEqual(await seen(bob), [undefined, undefined, undefined, undefined]);
});
