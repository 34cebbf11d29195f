// /sync: initial and incremental, long-polling on the notifier, filters, invites, leaves,
// account data, to-device, unsigned.age and transaction_id; plus filters and push rules.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, register } from '../lib/harness.mjs';

let server;
let n = 0;
const fresh = (name) => register(server.url, `${name}${n++}`);
const enc = encodeURIComponent;
before(async () => {
  // Debug: a test waits for the line that says a /sync is parked.
  server = await startServer({ config: { log_level: 'debug' } });
});
after(async () => server.stop());

async function dm() {
  const alice = await fresh('alice');
  const bob = await fresh('bob');
  const roomId = await alice.createRoom({ preset: 'trusted_private_chat', is_direct: true, invite: [bob.userId] });
  return { alice, bob, roomId };
}

test('an invite shows in rooms.invite with invite_state, then the join in rooms.join', async () => {
  const { alice, bob, roomId } = await dm();
  const first = await bob.sync();
  assert.match(first.next_batch, /^s\d+$/);
  const inv = first.rooms.invite[roomId];
  assert.ok(inv, 'invite listed');
  const types = inv.invite_state.events.map((e) => `${e.type}|${e.state_key}`);
  assert.ok(types.includes('m.room.create|'));
  assert.ok(types.includes('m.room.join_rules|'));
  assert.ok(types.includes(`m.room.member|${alice.userId}`), 'inviter member event');
  const me = inv.invite_state.events.find((e) => e.state_key === bob.userId);
  assert.equal(me.content.membership, 'invite');
  assert.equal(me.content.is_direct, true);
  assert.equal(me.sender, alice.userId);

  await bob.join(roomId);
  const next = await bob.sync({ since: first.next_batch });
  const joined = next.rooms.join[roomId];
  assert.ok(joined, 'joined room listed');
  assert.deepEqual(next.rooms.invite, {});
  assert.equal(joined.summary['m.joined_member_count'], 2);
  const members = [...joined.state.events, ...joined.timeline.events].filter((e) => e.type === 'm.room.member');
  const final = Object.fromEntries(members.map((e) => [e.state_key, e.content.membership]));
  assert.deepEqual(final, { [alice.userId]: 'join', [bob.userId]: 'join' });
});

test('a parked /sync wakes on the event, in order, once; age and transaction_id', async () => {
  const { alice, bob, roomId } = await dm();
  await bob.join(roomId);
  const base = await bob.sync();
  const baseAlice = await alice.sync();
  const parked = bob.sync({ since: base.next_batch, timeout: '20000' });
  const started = Date.now();
  await server.logged(new RegExp(`/sync of ${bob.userId.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} waits up to 20000 ms for something after ${base.next_batch}(?!\\d)`));
  const sent = await alice.send(roomId, 'm.call.invite', { call_id: 'c1', party_id: 'p', version: '1', lifetime: 60000, offer: { type: 'offer', sdp: 'v=0' } }, 'tx-42');
  const woke = await parked;
  assert.ok(Date.now() - started < 5000, 'woke long before the timeout');
  const events = woke.rooms.join[roomId].timeline.events;
  assert.deepEqual(events.map((e) => e.event_id), [sent.body.event_id]);
  assert.equal(typeof events[0].unsigned.age, 'number');
  assert.equal(events[0].unsigned.transaction_id, undefined, 'only the sending device sees transaction_id');
  const mine = await alice.sync({ since: baseAlice.next_batch });
  const echo = mine.rooms.join[roomId].timeline.events.find((e) => e.event_id === sent.body.event_id);
  assert.equal(echo.unsigned.transaction_id, 'tx-42');
  // Nothing new: the same since token yields nothing after a short timeout.
  const quiet = await bob.sync({ since: woke.next_batch, timeout: '300' });
  assert.deepEqual(quiet.rooms.join, {});
  assert.equal(quiet.next_batch, woke.next_batch);
});

test('filters: stored id and inline JSON; timeline limit gives limited and prev_batch', async () => {
  const { alice, bob, roomId } = await dm();
  await bob.join(roomId);
  const base = await bob.sync();
  for (let i = 0; i < 8; i++) await alice.send(roomId, 'm.room.message', { body: `${i}`, msgtype: 'm.text' });
  const made = await bob.call('POST', `/user/${enc(bob.userId)}/filter`, { body: { room: { timeline: { limit: 3 }, state: { lazy_load_members: true } } } });
  assert.equal(made.status, 200);
  assert.match(made.body.filter_id, /^\d+$/);
  const fetched = await bob.call('GET', `/user/${enc(bob.userId)}/filter/${made.body.filter_id}`);
  assert.equal(fetched.body.room.timeline.limit, 3);
  assert.equal((await bob.call('GET', `/user/${enc(bob.userId)}/filter/999`)).status, 404);
  assert.equal((await alice.call('POST', `/user/${enc(bob.userId)}/filter`, { body: {} })).status, 403);

  const limited = await bob.sync({ since: base.next_batch, filter: made.body.filter_id });
  const tl = limited.rooms.join[roomId].timeline;
  assert.equal(tl.events.length, 3);
  assert.deepEqual(tl.events.map((e) => e.content.body), ['5', '6', '7']);
  assert.equal(tl.limited, true);
  // prev_batch continues exactly where the timeline starts.
  const back = await bob.call('GET', `/rooms/${enc(roomId)}/messages`, { query: { dir: 'b', from: tl.prev_batch, limit: '2' } });
  assert.deepEqual(back.body.chunk.map((e) => e.content.body), ['4', '3']);

  const inline = await bob.sync({ since: base.next_batch, filter: JSON.stringify({ room: { timeline: { limit: 20 } } }) });
  assert.equal(inline.rooms.join[roomId].timeline.events.length, 8);
  assert.equal(inline.rooms.join[roomId].timeline.limited, false);
  const badFilter = await bob.call('GET', '/sync', { query: { filter: 'nope' } });
  assert.equal(badFilter.status, 400);
});

test('full_state returns the room state again; initial sync carries state and timeline', async () => {
  const { alice, bob, roomId } = await dm();
  await bob.join(roomId);
  const first = await bob.sync();
  const room = first.rooms.join[roomId];
  const all = [...room.state.events, ...room.timeline.events];
  assert.ok(all.some((e) => e.type === 'm.room.create'));
  assert.ok(all.some((e) => e.type === 'm.room.power_levels'));
  const again = await bob.sync({ since: first.next_batch, full_state: 'true' });
  assert.ok(again.rooms.join[roomId].state.events.some((e) => e.type === 'm.room.create'));
  assert.deepEqual(Object.keys(room.unread_notifications).sort(), ['highlight_count', 'notification_count']);
  assert.ok(Array.isArray(room.ephemeral.events));
  await alice.send(roomId, 'm.room.message', { body: 'x', msgtype: 'm.text' });
});

test('leaving shows the room once in rooms.leave', async () => {
  const { bob, roomId } = await dm();
  await bob.join(roomId);
  const base = await bob.sync();
  await bob.call('POST', `/rooms/${enc(roomId)}/leave`, { body: {} });
  const next = await bob.sync({ since: base.next_batch });
  const left = next.rooms.leave[roomId];
  assert.ok(left);
  assert.equal(left.timeline.events.at(-1).content.membership, 'leave');
  const after = await bob.sync({ since: next.next_batch });
  assert.deepEqual(after.rooms.leave, {});
});

test('account data: m.direct globally and per room, through GET and /sync', async () => {
  const { alice, bob, roomId } = await dm();
  const base = await alice.sync();
  const direct = { [bob.userId]: [roomId] };
  assert.equal((await alice.call('PUT', `/user/${enc(alice.userId)}/account_data/m.direct`, { body: direct })).status, 200);
  assert.deepEqual((await alice.call('GET', `/user/${enc(alice.userId)}/account_data/m.direct`)).body, direct);
  assert.equal((await alice.call('GET', `/user/${enc(alice.userId)}/account_data/m.nothing`)).status, 404);
  assert.equal((await alice.call('PUT', `/user/${enc(alice.userId)}/rooms/${enc(roomId)}/account_data/org.example.tag`, { body: { a: 1 } })).status, 200);
  assert.equal((await bob.call('PUT', `/user/${enc(alice.userId)}/account_data/m.direct`, { body: {} })).status, 403);
  const next = await alice.sync({ since: base.next_batch });
  assert.deepEqual(next.account_data.events, [{ type: 'm.direct', content: direct }]);
  assert.deepEqual(next.rooms.join[roomId].account_data.events, [{ type: 'org.example.tag', content: { a: 1 } }]);
});

test('sendToDevice reaches the named device once, and * reaches all devices', async () => {
  const { alice, bob } = await dm();
  const base = await bob.sync();
  const put = await alice.call('PUT', '/sendToDevice/m.call.test/txn1', { body: { messages: { [bob.userId]: { [bob.deviceId]: { hello: 1 } } } } });
  assert.equal(put.status, 200);
  const dup = await alice.call('PUT', '/sendToDevice/m.call.test/txn1', { body: { messages: { [bob.userId]: { [bob.deviceId]: { hello: 1 } } } } });
  assert.equal(dup.status, 200);
  const got = await bob.sync({ since: base.next_batch });
  assert.deepEqual(got.to_device.events, [{ content: { hello: 1 }, sender: alice.userId, type: 'm.call.test' }]);
  const again = await bob.sync({ since: got.next_batch });
  assert.deepEqual(again.to_device.events, []);
  await alice.call('PUT', '/sendToDevice/m.call.test/txn2', { body: { messages: { [bob.userId]: { '*': { all: true } } } } });
  const star = await bob.sync({ since: again.next_batch });
  assert.equal(star.to_device.events.length, 1);
  const bad = await alice.call('PUT', '/sendToDevice/m.call.test/txn3', { body: {} });
  assert.equal(bad.body.errcode, 'M_MISSING_PARAM');
});

test('sendToDevice retried while its first attempt is being written is delivered once', async () => {
  const { alice, bob } = await dm();
  const base = await bob.sync();
  const body = { messages: { [bob.userId]: { [bob.deviceId]: { once: true } } } };
  const puts = await Promise.all(Array.from({ length: 8 }, () => alice.call('PUT', '/sendToDevice/m.call.test/same', { body })));
  for (const put of puts) assert.equal(put.status, 200, put.text);
  const got = await bob.sync({ since: base.next_batch });
  assert.deepEqual(got.to_device.events, [{ content: { once: true }, sender: alice.userId, type: 'm.call.test' }]);
});

test('to-device queues past the cache: read from the database, a parked /sync still wakes, a restart keeps them', { timeout: 60000 }, async () => {
  // One user's queues held at a time (more while /syncs hold them): the others are read back.
  let own = await startServer({ config: { caches: { to_device: 1 }, log_level: 'debug' } });
  try {
    const [ann, ben, cat] = [await register(own.url, 'ann'), await register(own.url, 'ben'), await register(own.url, 'cat')];
    const re = (text) => new RegExp(text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
    const since = {};
    for (const u of [ann, ben, cat]) since[u.userId] = (await u.sync()).next_batch;
    const send = async (txn, messages) => {
      const put = await cat.call('PUT', `/sendToDevice/org.example.n/${txn}`, { body: { messages } });
      assert.equal(put.status, 200, put.text);
    };
    const fetch = async (u, query = {}) => {
      const got = await u.sync({ since: since[u.userId], ...query });
      since[u.userId] = got.next_batch;
      return got.to_device.events.map((e) => e.content.n);
    };
    await send('t1', { [ann.userId]: { [ann.deviceId]: { n: 1 } }, [ben.userId]: { '*': { n: 1 } } });
    assert.deepEqual(await fetch(ann), [1]);
    await own.logged(re(`the to-device queue of ${ann.userId} ${ann.deviceId} read from the database (1 waiting)`));
    assert.deepEqual(await fetch(ben), [1]);
    // Ann's /sync waits, holding her queue while ben's is read; a message for her wakes it.
    const waiting = fetch(ann, { timeout: '30000' });
    await own.logged(re(`/sync of ${ann.userId} waits up to 30000 ms for something after ${since[ann.userId]}`));
    assert.deepEqual(await fetch(ben), []);
    await send('t2', { [ann.userId]: { [ann.deviceId]: { n: 2 } } });
    assert.deepEqual(await waiting, [2]);
    assert.deepEqual(await fetch(ann), [], 'acknowledged, not shown again');
    // What waits survives a restart, and what was acknowledged stays gone.
    await send('t3', { [ann.userId]: { [ann.deviceId]: { n: 3 } }, [ben.userId]: { [ben.deviceId]: { n: 3 } } });
    own = await own.restart();
    assert.deepEqual(await fetch(ann.at(own.url)), [3]);
    assert.deepEqual(await fetch(ben.at(own.url)), [3]);
  } finally {
    await own.stop();
  }
});

test('push rules: the default rule set with the user substituted', async () => {
  const u = await fresh('pusher');
  const res = await u.call('GET', '/pushrules/');
  assert.equal(res.status, 200);
  const ids = res.body.global.override.map((r) => r.rule_id);
  assert.ok(ids.includes('.m.rule.master'));
  assert.ok(res.body.global.underride.some((r) => r.rule_id === '.m.rule.call'));
  const invite = res.body.global.override.find((r) => r.rule_id === '.m.rule.invite_for_me');
  assert.equal(invite.conditions.find((c) => c.key === 'state_key').pattern, u.userId);
});

test('bad since token and bad timeout are M_INVALID_PARAM', async () => {
  const u = await fresh('tok');
  assert.equal((await u.call('GET', '/sync', { query: { since: 'x1' } })).body.errcode, 'M_INVALID_PARAM');
  assert.equal((await u.call('GET', '/sync', { query: { timeout: 'soon' } })).body.errcode, 'M_INVALID_PARAM');
});

test('account data past the cache: read from the database, and a parked /sync still wakes on it', async () => {
  // One user's account data held at a time: every other user's is read back when needed.
  let own = await startServer({ config: { caches: { account_data: 1 } } });
  try {
    const users = [];
    for (const name of ['ann', 'ben', 'cat']) users.push(await register(own.url, name));
    const put = (u, type, body) => u.call('PUT', `/user/${enc(u.userId)}/account_data/${type}`, { body });
    for (const [i, u] of users.entries()) {
      assert.equal((await put(u, 'org.example.own', { i })).status, 200);
      assert.equal((await put(u, 'org.example.more', { i, more: true })).status, 200);
    }
    const own_data = (sync) => Object.fromEntries(sync.account_data.events.filter((e) => e.type.startsWith('org.example.')).map((e) => [e.type, e.content]));
    const starts = [];
    for (const [i, u] of users.entries()) {
      const s = await u.sync();
      assert.deepEqual(own_data(s), { 'org.example.own': { i }, 'org.example.more': { i, more: true } });
      starts.push(s.next_batch);
    }
    // Ann waits; the others' account data is read meanwhile (pushing hers out if it could).
    const waiting = users[0].sync({ since: starts[0], timeout: '30000' });
    for (const u of users.slice(1)) assert.equal((await u.call('GET', `/user/${enc(u.userId)}/account_data/org.example.own`)).status, 200);
    assert.equal((await put(users[0], 'org.example.own', { i: 0, changed: true })).status, 200);
    const woken = await waiting;
    assert.deepEqual(own_data(woken), { 'org.example.own': { i: 0, changed: true } });
    // Read back after the change, and after a restart.
    for (const restart of [false, true]) {
      if (restart) own = await own.restart();
      for (const [i, u0] of users.entries()) {
        const u = u0.at(own.url);
        const got = await u.call('GET', `/user/${enc(u.userId)}/account_data/org.example.own`);
        assert.equal(got.status, 200);
        assert.deepEqual(got.body, i === 0 ? { i, changed: true } : { i });
        const s = await u.sync();
        assert.equal(own_data(s)['org.example.more'].i, i);
      }
    }
  } finally {
    await own.stop();
  }
});
