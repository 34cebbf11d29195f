// Presence (presence.yaml, and /sync's `presence`): setting and reading it, who may read it,
// /sync's set_presence, the m.presence events the users sharing a room receive, errors, and
// presence.enabled: false.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, register } from '../lib/harness.mjs';

const enc = encodeURIComponent;
let server;
let alice;
let bob;
let carol; // shares no room with alice
let roomId;

before(async () => {
  server = await startServer();
  alice = await register(server.url, 'alice');
  bob = await register(server.url, 'bob');
  carol = await register(server.url, 'carol');
  roomId = await alice.createRoom({ preset: 'private_chat', invite: [bob.userId] });
  assert.equal((await bob.join(roomId)).status, 200);
});
after(async () => server?.stop());

const status = (user, who = user.userId) => user.call('GET', `/presence/${enc(who)}/status`);
const setStatus = (user, body, who = user.userId) => user.call('PUT', `/presence/${enc(who)}/status`, { body });
const presenceOf = (sync, who) => sync.presence.events.filter((e) => e.sender === who);

// The next /sync after `since` that reports presence of `who`.
async function nextPresence(user, since, who) {
  for (;;) {
    const sync = await user.sync({ since, timeout: '10000', set_presence: 'offline' });
    const found = presenceOf(sync, who);
    if (found.length) return { event: found.at(-1), since: sync.next_batch };
    assert.notEqual(sync.next_batch, since, `no presence of ${who} arrived`);
    since = sync.next_batch;
  }
}

test('a /sync brings its user online, seen by those who share a room', async () => {
  // bob syncs without affecting his presence, then alice's first sync makes her online.
  const since = (await bob.sync({ set_presence: 'offline' })).next_batch;
  // No set_presence: online is the default.
  assert.equal((await alice.call('GET', '/sync')).status, 200);
  const { event } = await nextPresence(bob, since, alice.userId);
  assert.equal(event.type, 'm.presence');
  assert.equal(event.content.presence, 'online');
  assert.equal(event.content.currently_active, true);
  assert.ok(event.content.last_active_ago >= 0);
  const res = await status(bob, alice.userId);
  assert.equal(res.status, 200, res.text);
  assert.equal(res.body.presence, 'online');
});

test('PUT status: unavailable with a message, then offline; everyone sharing a room sees it', async () => {
  let since = (await bob.sync({ set_presence: 'offline' })).next_batch;
  assert.equal((await setStatus(alice, { presence: 'unavailable', status_msg: 'in a call' })).status, 200);
  let got = await nextPresence(bob, since, alice.userId);
  assert.deepEqual({ p: got.event.content.presence, m: got.event.content.status_msg }, { p: 'unavailable', m: 'in a call' });
  assert.equal(got.event.content.currently_active, false);
  // A sync does not override a chosen unavailable.
  await alice.sync({ set_presence: 'online' });
  assert.equal((await status(alice)).body.presence, 'unavailable');
  since = got.since;
  assert.equal((await setStatus(alice, { presence: 'offline' })).status, 200);
  got = await nextPresence(bob, since, alice.userId);
  assert.equal(got.event.content.presence, 'offline');
  assert.equal(got.event.content.status_msg, undefined);
  // An offline user's sync brings them back online.
  await alice.sync({ set_presence: 'online' });
  assert.equal((await status(bob, alice.userId)).body.presence, 'online');
  // set_presence=unavailable on a sync of an offline user.
  await setStatus(bob, { presence: 'offline' });
  await bob.sync({ set_presence: 'unavailable' });
  assert.equal((await status(alice, bob.userId)).body.presence, 'unavailable');
});

test('who may read presence, and the errors', async () => {
  const hidden = await status(carol, alice.userId);
  assert.equal(hidden.status, 403);
  assert.equal(hidden.body.errcode, 'M_FORBIDDEN');
  assert.equal((await status(carol)).status, 200);
  const unknown = await status(alice, '@nobody:localhost');
  assert.equal(unknown.status, 404);
  const cases = [
    [await setStatus(alice, { presence: 'online' }, bob.userId), 403, 'M_FORBIDDEN'],
    [await setStatus(alice, { presence: 'busy' }), 400, 'M_INVALID_PARAM'],
    [await setStatus(alice, {}), 400, 'M_MISSING_PARAM'],
    [await setStatus(alice, { presence: 'online', status_msg: 'x'.repeat(1025) }), 400, 'M_INVALID_PARAM'],
    [await alice.call('GET', '/sync', { query: { set_presence: 'asleep' } }), 400, 'M_INVALID_PARAM'],
  ];
  for (const [res, code, errcode] of cases) {
    assert.equal(res.status, code, res.text);
    assert.equal(res.body.errcode, errcode, res.text);
  }
  // carol's /sync never carries alice's presence.
  const sync = await carol.sync();
  assert.deepEqual(presenceOf(sync, alice.userId), []);
});

test('an initial sync has the presence of everyone sharing a room; a status survives a restart', async () => {
  assert.equal((await setStatus(bob, { presence: 'online', status_msg: 'on call duty' })).status, 200);
  const initial = await alice.sync({ set_presence: 'offline' });
  assert.equal(presenceOf(initial, bob.userId)[0].content.status_msg, 'on call duty');
  server = await server.restart();
  [alice, bob] = [alice, bob].map((u) => u.at(server.url));
  const res = await status(alice, bob.userId);
  assert.equal(res.body.status_msg, 'on call duty');
});

test('after a restart, the presence of users offline then is read when needed: status, initial and incremental /syncs', async () => {
  // Only who is not offline is read at start; eve is offline with a status message.
  const dan = await register(server.url, 'dan');
  let eve = await register(server.url, 'eve');
  const room = await dan.createRoom({ preset: 'private_chat', invite: [eve.userId] });
  assert.equal((await eve.join(room)).status, 200);
  const before = (await dan.sync({ set_presence: 'offline' })).next_batch;
  assert.equal((await setStatus(eve, { presence: 'offline', status_msg: 'gone fishing' })).status, 200);
  const got = await nextPresence(dan, before, eve.userId);
  assert.equal(got.event.content.status_msg, 'gone fishing');
  const after = got.since;
  server = await server.restart();
  const [d, e] = [dan, eve].map((u) => u.at(server.url));
  eve = e;
  const res = await status(d, eve.userId);
  assert.deepEqual([res.body.presence, res.body.status_msg], ['offline', 'gone fishing']);
  const initial = await d.sync({ set_presence: 'offline' });
  assert.equal(presenceOf(initial, eve.userId)[0]?.content.status_msg, 'gone fishing');
  // Since a position before her change: it is there; since one after it: it is not.
  const older = await d.sync({ since: before, timeout: '0', set_presence: 'offline' });
  assert.equal(presenceOf(older, eve.userId)[0]?.content.status_msg, 'gone fishing');
  const newer = await d.sync({ since: after, timeout: '0', set_presence: 'offline' });
  assert.deepEqual(presenceOf(newer, eve.userId), []);
  // Her next /sync brings her online with her status message as it was.
  await eve.sync({ set_presence: 'online' });
  const now = await status(d, eve.userId);
  assert.deepEqual([now.body.presence, now.body.status_msg], ['online', 'gone fishing']);
  const seen = await nextPresence(d, newer.next_batch, eve.userId);
  assert.equal(seen.event.content.presence, 'online');
});

test('presence.enabled: false turns it off', async () => {
  const off = await startServer({ config: { presence: { enabled: false } } });
  try {
    const a = await register(off.url, 'alice');
    const b = await register(off.url, 'bob');
    const room = await a.createRoom({ preset: 'private_chat', invite: [b.userId] });
    await b.join(room);
    assert.equal((await setStatus(a, { presence: 'online', status_msg: 'here' })).status, 200);
    await a.sync({ set_presence: 'online' });
    assert.deepEqual((await status(b, a.userId)).body, { presence: 'offline' });
    assert.deepEqual((await b.sync()).presence.events, []);
  } finally {
    await off.stop();
  }
});
