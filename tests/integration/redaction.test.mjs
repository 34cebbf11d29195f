// Redactions (redaction.yaml, and each room version's redaction algorithm) and
// /rooms/{id}/context/{eventId} (event_context.yaml), and createRoom across room versions 1-11.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, register } from '../lib/harness.mjs';

const enc = encodeURIComponent;
let server;
let alice;
let bob;

before(async () => {
  server = await startServer();
  alice = await register(server.url, 'alice');
  bob = await register(server.url, 'bob');
});
after(async () => server?.stop());

const redact = (user, roomId, eventId, txn, body = {}) =>
  user.call('PUT', `/rooms/${enc(roomId)}/redact/${enc(eventId)}/${enc(txn)}`, { body });
const getEvent = (user, roomId, eventId) => user.call('GET', `/rooms/${enc(roomId)}/event/${enc(eventId)}`);

async function sharedRoom(extra = {}) {
  const roomId = await alice.createRoom({ preset: 'public_chat', ...extra });
  assert.equal((await bob.join(roomId)).status, 200);
  return roomId;
}

test('createRoom accepts room versions 1 to 11 and no other', async () => {
  for (let v = 1; v <= 11; v++) {
    const res = await alice.call('POST', '/createRoom', { body: { room_version: String(v) } });
    assert.equal(res.status, 200, `version ${v}: ${res.text}`);
    const create = await alice.call('GET', `/rooms/${enc(res.body.room_id)}/state/m.room.create/`);
    assert.equal(create.body.room_version, String(v));
  }
  for (const v of ['0', '12', 'abc', '1.5']) {
    const res = await alice.call('POST', '/createRoom', { body: { room_version: v } });
    assert.equal(res.status, 400, v);
    assert.equal(res.body.errcode, 'M_UNSUPPORTED_ROOM_VERSION', v);
  }
});

test('a sender redacts their own event; others need the redact level; the redacted form is served everywhere', async () => {
  const roomId = await sharedRoom();
  const { event_id: secret } = (await alice.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'secret' })).body;
  const { event_id: bobs } = (await bob.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'mine' })).body;

  const denied = await redact(bob, roomId, secret, 'r1');
  assert.equal(denied.status, 403);
  assert.equal(denied.body.errcode, 'M_FORBIDDEN');
  const own = await redact(bob, roomId, bobs, 'r2', { reason: 'typo' });
  assert.equal(own.status, 200, own.text);
  const retry = await redact(bob, roomId, bobs, 'r2', { reason: 'typo' });
  assert.equal(retry.body.event_id, own.body.event_id, 'a retried transaction answers the same event');
  const byModerator = await redact(alice, roomId, secret, 'r3');
  assert.equal(byModerator.status, 200);

  const redacted = await getEvent(bob, roomId, secret);
  assert.deepEqual(redacted.body.content, {});
  assert.equal(redacted.body.type, 'm.room.message');
  assert.equal(redacted.body.unsigned.redacted_because.event_id, byModerator.body.event_id);
  assert.equal(redacted.body.unsigned.redacted_because.redacts, secret);
  const redaction = await getEvent(bob, roomId, own.body.event_id);
  assert.equal(redaction.body.type, 'm.room.redaction');
  assert.equal(redaction.body.redacts, bobs, 'before v11 redacts is a top-level key');
  assert.equal(redaction.body.content.reason, 'typo');

  // /sync and /messages serve the redacted form too, and the redaction in the timeline.
  const sync = await alice.sync();
  const timeline = sync.rooms.join[roomId].timeline.events;
  assert.deepEqual(timeline.find((e) => e.event_id === secret).content, {});
  assert.equal(timeline.find((e) => e.event_id === byModerator.body.event_id).redacts, secret);
  const messages = await alice.call('GET', `/rooms/${enc(roomId)}/messages`, { query: { dir: 'b', limit: '50' } });
  assert.deepEqual(messages.body.chunk.find((e) => e.event_id === bobs).content, {});
  const notifications = await bob.call('GET', '/notifications');
  const notified = notifications.body.notifications.find((n) => n.event.event_id === secret);
  assert.ok(notified, 'the message notified bob');
  assert.deepEqual(notified.event.content, {}, '/notifications serves it redacted');

  // Errors: an unknown event, an event of another room, /send of m.room.redaction, a bad reason.
  const unknown = await redact(alice, roomId, '$nope', 'r4');
  assert.equal(unknown.status, 404);
  assert.equal(unknown.body.errcode, 'M_NOT_FOUND');
  const elsewhere = await alice.createRoom({});
  assert.equal((await redact(alice, elsewhere, secret, 'r5')).status, 404);
  const viaSend = await alice.send(roomId, 'm.room.redaction', { redacts: secret });
  assert.equal(viaSend.status, 400);
  assert.equal((await redact(alice, roomId, secret, 'r6', { reason: 5 })).body.errcode, 'M_BAD_JSON');
  const outsider = await register(server.url, 'eve');
  assert.equal((await redact(outsider, roomId, secret, 'r7')).status, 403);
});

test('a redacted state event changes the state: the algorithm of the room version decides what stays', async () => {
  for (const version of ['10', '11']) {
    const roomId = await sharedRoom({ room_version: version, name: 'Named' });
    const nameEvent = (await alice.call('GET', `/rooms/${enc(roomId)}/state`)).body.find((e) => e.type === 'm.room.name');
    assert.equal((await redact(alice, roomId, nameEvent.event_id, `n${version}`)).status, 200);
    const name = await alice.call('GET', `/rooms/${enc(roomId)}/state/m.room.name/`);
    assert.deepEqual(name.body, {}, `v${version}: the name is gone`);

    // Power levels keep the levels; v11 also keeps invite. Bob, promoted to 50 in a new event,
    // keeps it; the level of m.room.name kept too.
    const levels = (await alice.call('GET', `/rooms/${enc(roomId)}/state/m.room.power_levels/`)).body;
    levels.invite = 50;
    levels.users[bob.userId] = 50;
    levels.notifications = { room: 20 };
    const { event_id: plId } = (await alice.call('PUT', `/rooms/${enc(roomId)}/state/m.room.power_levels/`, { body: levels })).body;
    assert.equal((await redact(alice, roomId, plId, `p${version}`)).status, 200);
    const after = (await alice.call('GET', `/rooms/${enc(roomId)}/state/m.room.power_levels/`)).body;
    assert.equal(after.users[bob.userId], 50);
    assert.equal(after.notifications, undefined);
    assert.equal(after.invite, version === '11' ? 50 : undefined);
    // The rule still applies from the redacted levels: bob (50) may now redact alice's events.
    const { event_id: msg } = (await alice.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'x' })).body;
    const res = await redact(bob, roomId, msg, `b${version}`);
    assert.equal(res.status, 200, res.text);
    const redaction = await getEvent(alice, roomId, res.body.event_id);
    assert.equal(redaction.body.content.redacts, msg, 'the target is in the content as well');
  }
});

test('an event older than the in-memory window is redacted in the store, and stays redacted after a restart', async () => {
  const roomId = await sharedRoom();
  const { event_id: old } = (await alice.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'old' })).body;
  for (let i = 0; i < 60; i++) await bob.send(roomId, 'm.room.message', { msgtype: 'm.text', body: `filler ${i}` });
  const res = await redact(alice, roomId, old, 'old1');
  assert.equal(res.status, 200, res.text);
  assert.deepEqual((await getEvent(bob, roomId, old)).body.content, {});
  server = await server.restart();
  const again = bob.at(server.url);
  const ev = await again.call('GET', `/rooms/${enc(roomId)}/event/${enc(old)}`);
  assert.deepEqual(ev.body.content, {});
  assert.equal(ev.body.unsigned.redacted_because.event_id, res.body.event_id);
  alice = alice.at(server.url);
  bob = again;
});

test('/context: events around an event, tokens that page on, the filter and lazy-loaded members', async () => {
  const roomId = await sharedRoom();
  const carol = await register(server.url, 'carol');
  assert.equal((await carol.join(roomId)).status, 200);
  const ids = [];
  for (let i = 0; i < 9; i++) {
    const who = [alice, bob, carol][i % 3];
    ids.push((await who.send(roomId, 'm.room.message', { msgtype: 'm.text', body: `m${i}` })).body.event_id);
  }
  const context = (query, user = alice, eventId = ids[4]) => user.call('GET', `/rooms/${enc(roomId)}/context/${enc(eventId)}`, { query });
  const res = await context({ limit: '4' });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.body.event.event_id, ids[4]);
  assert.deepEqual(res.body.events_before.map((e) => e.event_id), [ids[3], ids[2]], 'newest first');
  assert.deepEqual(res.body.events_after.map((e) => e.event_id), [ids[5], ids[6]]);
  // The tokens continue with /messages where the context ends.
  const older = await alice.call('GET', `/rooms/${enc(roomId)}/messages`, { query: { dir: 'b', from: res.body.start, limit: '2' } });
  assert.deepEqual(older.body.chunk.map((e) => e.event_id), [ids[1], ids[0]]);
  const newer = await alice.call('GET', `/rooms/${enc(roomId)}/messages`, { query: { dir: 'f', from: res.body.end, limit: '2' } });
  assert.deepEqual(newer.body.chunk.map((e) => e.event_id), [ids[7], ids[8]]);
  // The state at the last event returned: every member.
  const members = res.body.state.filter((e) => e.type === 'm.room.member').map((e) => e.state_key).sort();
  assert.deepEqual(members, [alice.userId, bob.userId, carol.userId].sort());

  // A filter on senders and lazy-loaded members: only carol's events, only carol's member event
  // (and the sender of the event itself, bob).
  const filtered = await context({ limit: '4', filter: JSON.stringify({ senders: [carol.userId], lazy_load_members: true }) }, alice, ids[4]);
  assert.equal(filtered.status, 200, filtered.text);
  // Before: carol's m2, then her join; after: m5 and m8.
  assert.equal(filtered.body.events_before[0].event_id, ids[2]);
  assert.equal(filtered.body.events_before[1].type, 'm.room.member');
  assert.deepEqual(filtered.body.events_after.map((e) => e.event_id), [ids[5], ids[8]]);
  for (const e of [...filtered.body.events_before, ...filtered.body.events_after]) assert.equal(e.sender, carol.userId);
  const lazy = filtered.body.state.filter((e) => e.type === 'm.room.member').map((e) => e.state_key).sort();
  assert.deepEqual(lazy, [bob.userId, carol.userId].sort());

  // Errors.
  assert.equal((await context({}, alice, '$unknown')).status, 404);
  assert.equal((await context({ limit: 'ten' })).body.errcode, 'M_INVALID_PARAM');
  assert.equal((await context({ filter: '{"types":"x"}' })).body.errcode, 'M_BAD_JSON');
  assert.equal((await context({ filter: 'not json' })).body.errcode, 'M_NOT_JSON');
  const outsider = await register(server.url, 'frank');
  assert.equal((await context({}, outsider)).status, 403);
});
