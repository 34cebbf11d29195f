// matrix-js-sdk itself against mxvoip-server, in Node (no WebRTC): two users register and
// log in, alice opens a direct chat with bob, bob joins from his invite, and call events
// sent as raw room events reach the other side through the SDK's own sync loop, in order,
// exactly once, with the SDK logging no error or warning about the server.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from '../lib/harness.mjs';

// Debian 12's Node 18 lacks Promise.withResolvers, which the SDK's setAccountData uses.
Promise.withResolvers ??= function withResolvers() {
  let resolve, reject;
  const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
  return { promise, resolve, reject };
};

let sdk;
try {
  sdk = await import('matrix-js-sdk');
} catch (e) {
  throw new Error(`matrix-js-sdk is not installed (run scripts/setup): ${e.message}`);
}
const { logger } = await import('matrix-js-sdk/lib/logger.js');

// Everything the SDK says at warn or error level is captured and must stay empty, but for
// one message of its own: MatrixRTCSessionManager reports "Got room state event for unknown
// room" whenever a room first appears in a sync, because the SDK emits the room's state
// events before it stores the room (processSyncResponse). It does so against any homeserver
// and says nothing about the server's response.
const SDK_INTERNAL = /^\[MatrixRTCSessionManager\] Got room state event for unknown room/;
const complaints = [];
for (const level of ['warn', 'error']) {
  const original = console[level];
  console[level] = (...args) => {
    const text = args.map(String).join(' ');
    if (!SDK_INTERNAL.test(text)) complaints.push(`${level}: ${text}`);
    if (process.env.MXVOIP_VERBOSE) original(...args);
  };
}
logger.setLevel?.('warn');

let server;
before(async () => {
  server = await startServer();
});
after(async () => server?.stop());

async function registerAndLogin(username, password) {
  const anon = sdk.createClient({ baseUrl: server.url });
  let session;
  await assert.rejects(anon.registerRequest({ username, password }), (err) => {
    assert.equal(err.httpStatus, 401);
    session = err.data.session;
    assert.deepEqual(err.data.flows, [{ stages: ['m.login.dummy'] }]);
    return true;
  });
  const reg = await anon.registerRequest({ username, password, auth: { type: 'm.login.dummy', session } });
  assert.equal(reg.user_id, `@${username}:localhost`);
  const login = await anon.loginRequest({ type: 'm.login.password', identifier: { type: 'm.id.user', user: username }, password });
  return sdk.createClient({ baseUrl: server.url, accessToken: login.access_token, userId: login.user_id, deviceId: login.device_id });
}

function waitFor(predicate, what, ms = 10000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const tick = () => {
      const v = predicate();
      if (v) return resolve(v);
      if (Date.now() - started > ms) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(tick, 20);
    };
    tick();
  });
}

async function start(client) {
  const prepared = new Promise((resolve) => {
    client.on(sdk.ClientEvent.Sync, (state) => {
      if (state === 'PREPARED') resolve();
    });
  });
  await client.startClient({ initialSyncLimit: 20 });
  await prepared;
}

// Records m.call.* events the client receives from the other user, by event id.
function recordCalls(client) {
  const seen = [];
  client.on(sdk.RoomEvent.Timeline, (event, room, toStartOfTimeline) => {
    if (toStartOfTimeline || !event.getType().startsWith('m.call.')) return;
    if (event.getSender() === client.getUserId()) return;
    seen.push({ id: event.getId(), type: event.getType(), content: event.getContent() });
  });
  return seen;
}

test('matrix-js-sdk: register, direct room, join from invite, call events both ways', async () => {
  const alice = await registerAndLogin('alice', 'alice-password');
  const bob = await registerAndLogin('bob', 'bob-password');
  try {
    await start(alice);
    await start(bob);
    const aliceSeen = recordCalls(alice);
    const bobSeen = recordCalls(bob);

    const bobInvited = new Promise((resolve) => {
      bob.on(sdk.RoomEvent.MyMembership, (room, membership) => {
        if (membership === 'invite') resolve(room.roomId);
      });
    });
    const { room_id: roomId } = await alice.createRoom({
      preset: 'trusted_private_chat', is_direct: true, invite: [bob.getUserId()],
    });
    assert.equal(await bobInvited, roomId);
    const invitedRoom = await waitFor(() => bob.getRoom(roomId), 'bob to store the invited room');
    const inviteEvent = invitedRoom.currentState.getStateEvents('m.room.member', bob.getUserId());
    assert.equal(inviteEvent.getContent().is_direct, true);
    assert.equal(invitedRoom.getDMInviter(), alice.getUserId());

    await bob.joinRoom(roomId);
    await waitFor(() => alice.getRoom(roomId)?.getJoinedMemberCount() === 2, 'alice to see two joined members');
    await waitFor(() => bob.getRoom(roomId)?.getJoinedMemberCount() === 2, 'bob to see two joined members');
    assert.deepEqual(alice.getRoom(roomId).getJoinedMembers().map((m) => m.userId).sort(), [alice.getUserId(), bob.getUserId()].sort());

    const callId = 'c' + Date.now();
    const base = { call_id: callId, version: '1' };
    const aliceParty = { ...base, party_id: alice.getDeviceId() };
    const bobParty = { ...base, party_id: bob.getDeviceId() };
    const sent = { alice: [], bob: [] };
    const send = async (who, client, type, content) => {
      const { event_id } = await client.sendEvent(roomId, type, content);
      sent[who].push({ id: event_id, type });
    };
    await send('alice', alice, 'm.call.invite', { ...aliceParty, lifetime: 60000, invitee: bob.getUserId(), offer: { type: 'offer', sdp: 'v=0\r\n' } });
    await send('alice', alice, 'm.call.candidates', { ...aliceParty, candidates: [{ candidate: 'candidate:1 1 udp 1 127.0.0.1 5000 typ host', sdpMid: '0', sdpMLineIndex: 0 }] });
    await waitFor(() => bobSeen.length === 2, 'bob to receive the invite and candidates');
    await send('bob', bob, 'm.call.answer', { ...bobParty, answer: { type: 'answer', sdp: 'v=0\r\n' } });
    await send('bob', bob, 'm.call.candidates', { ...bobParty, candidates: [{ candidate: '', sdpMid: '0' }] });
    await send('alice', alice, 'm.call.candidates', { ...aliceParty, candidates: [{ candidate: '', sdpMid: '0' }] });
    await send('alice', alice, 'm.call.hangup', { ...aliceParty, reason: 'user_hangup' });

    await waitFor(() => bobSeen.length === 4 && aliceSeen.length === 2, 'every call event to arrive');
    // A duplicate would come before anything sent later: one more event each way, seen by
    // the other side, closes the window.
    const { event_id: aliceLast } = await alice.sendTextMessage(roomId, 'done');
    const { event_id: bobLast } = await bob.sendTextMessage(roomId, 'done');
    await waitFor(() => bob.getRoom(roomId).findEventById(aliceLast), 'bob to see alice\'s last event');
    await waitFor(() => alice.getRoom(roomId).findEventById(bobLast), 'alice to see bob\'s last event');
    assert.deepEqual(bobSeen.map(({ id, type }) => ({ id, type })), sent.alice);
    assert.deepEqual(aliceSeen.map(({ id, type }) => ({ id, type })), sent.bob);
    assert.equal(bobSeen[0].content.invitee, bob.getUserId());
    assert.equal(aliceSeen[0].content.answer.type, 'answer');
    assert.deepEqual(complaints, [], 'matrix-js-sdk logged errors or warnings');
  } finally {
    alice.stopClient();
    bob.stopClient();
  }
});

// What Element reads through the SDK beyond calls: the callee's client recognises the new
// room as a direct chat from the invite's is_direct, and after joining from the join's
// prev_content and prev_sender (RoomMember.getDMInviter), which is how Element decides to
// record it in m.direct; receipts (public and private), typing and presence travel between
// the two clients through the SDK's own sync loop and land where the SDK's API reports them.
test('matrix-js-sdk: DM detection, receipts, typing and presence between two clients', async () => {
  const alice = await registerAndLogin('carol', 'carol-password');
  const bob = await registerAndLogin('dave', 'dave-password');
  let bobAgain;
  try {
    await start(alice);
    await start(bob);
    const bobInvited = new Promise((resolve) => {
      bob.on(sdk.RoomEvent.MyMembership, (room, membership) => {
        if (membership === 'invite') resolve(room.roomId);
      });
    });
    const { room_id: roomId } = await alice.createRoom({
      preset: 'trusted_private_chat', is_direct: true, invite: [bob.getUserId()],
    });
    // Element records the DM in m.direct on both sides: the inviter when creating it, the
    // invitee once it knows who invited it to a direct chat.
    await alice.setAccountData('m.direct', { [bob.getUserId()]: [roomId] });
    assert.equal(await bobInvited, roomId);
    const invited = await waitFor(() => bob.getRoom(roomId), 'bob to store the invited room');
    assert.equal(invited.getDMInviter(), alice.getUserId());
    await bob.joinRoom(roomId);
    const joinedMember = await waitFor(() => {
      const me = bob.getRoom(roomId)?.getMember(bob.getUserId());
      return me?.membership === 'join' ? me : null;
    }, 'bob to see his own join');
    // Only the join's unsigned prev_content/prev_sender tell that it came from a DM invite.
    assert.equal(joinedMember.getDMInviter(), alice.getUserId());
    await bob.setAccountData('m.direct', { [joinedMember.getDMInviter()]: [roomId] });

    // A fresh session of bob (a second device, or Element after a reload) sees the same from
    // its initial sync: the m.direct it recorded and a join that still names the inviter.
    const login = await bob.loginRequest({ type: 'm.login.password', identifier: { type: 'm.id.user', user: 'dave' }, password: 'dave-password' });
    bobAgain = sdk.createClient({ baseUrl: server.url, accessToken: login.access_token, userId: login.user_id, deviceId: login.device_id });
    await start(bobAgain);
    assert.deepEqual(bobAgain.getAccountData('m.direct')?.getContent(), { [alice.getUserId()]: [roomId] });
    assert.equal(bobAgain.getRoom(roomId).getMember(bob.getUserId()).getDMInviter(), alice.getUserId());
    await waitFor(() => alice.getRoom(roomId)?.getJoinedMemberCount() === 2, 'alice to see bob join');

    // Receipts: a public one reaches alice; a private one only bob's own sessions.
    const { event_id: first } = await alice.sendTextMessage(roomId, 'first');
    const { event_id: second } = await alice.sendTextMessage(roomId, 'second');
    const bobRoom = bob.getRoom(roomId);
    const firstEvent = await waitFor(() => bobRoom.findEventById(first), 'bob to receive the first message');
    const secondEvent = await waitFor(() => bobRoom.findEventById(second), 'bob to receive the second message');
    await bob.sendReadReceipt(firstEvent, sdk.ReceiptType.Read);
    const aliceRoom = alice.getRoom(roomId);
    await waitFor(() => aliceRoom.getEventReadUpTo(bob.getUserId()) === first, "alice to see bob's read receipt");
    assert.ok(aliceRoom.getUsersReadUpTo(aliceRoom.findEventById(first)).includes(bob.getUserId()));
    await bob.sendReadReceipt(secondEvent, sdk.ReceiptType.ReadPrivate);
    await waitFor(() => bobAgain.getRoom(roomId)?.getReadReceiptForUserId(bob.getUserId(), true, sdk.ReceiptType.ReadPrivate)?.eventId === second,
      "bob's other session to see his private receipt");
    // Alice goes on seeing only the public receipt: her next message is the event that
    // proves she has synced past the private one.
    const { event_id: third } = await alice.sendTextMessage(roomId, 'third');
    await waitFor(() => bobRoom.findEventById(third), 'bob to receive the third message');
    await waitFor(() => aliceRoom.findEventById(third), 'alice to receive her own message');
    assert.equal(aliceRoom.getReadReceiptForUserId(bob.getUserId(), true, sdk.ReceiptType.ReadPrivate), null);
    assert.equal(aliceRoom.getEventReadUpTo(bob.getUserId(), true), first);

    // Typing starts and stops.
    const typing = [];
    alice.on(sdk.RoomMemberEvent.Typing, (event, member) => {
      if (member.userId === bob.getUserId()) typing.push(member.typing);
    });
    await bob.sendTyping(roomId, true, 30000);
    await waitFor(() => typing.at(-1) === true, 'alice to see bob typing');
    await bob.sendTyping(roomId, false);
    await waitFor(() => typing.at(-1) === false, 'alice to see bob stop typing');

    // Presence: alice says she is away, with a status; bob's client reports it.
    await alice.setPresence({ presence: 'unavailable', status_msg: 'in a call' });
    const seenByBob = await waitFor(() => {
      const user = bob.getUser(alice.getUserId());
      return user?.presence === 'unavailable' && user.presenceStatusMsg === 'in a call' ? user : null;
    }, "bob to see alice's presence");
    assert.equal(seenByBob.currentlyActive, false);
    await alice.setPresence({ presence: 'online', status_msg: 'back' });
    await waitFor(() => bob.getUser(alice.getUserId())?.presence === 'online' && bob.getUser(alice.getUserId()).presenceStatusMsg === 'back',
      "bob to see alice back online");
    assert.deepEqual(complaints, [], 'matrix-js-sdk logged errors or warnings');
  } finally {
    alice.stopClient();
    bob.stopClient();
    bobAgain?.stopClient();
  }
});
