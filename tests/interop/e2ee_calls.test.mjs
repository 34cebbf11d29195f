// Encrypted direct chats as Element makes them: matrix-js-sdk with its Rust crypto in headless
// Chromium, every device its own browser context, against mxvoip-server, media through
// coturn. First js with js: each user sets up cross-signing, secret storage and a key backup;
// alice makes an encrypted DM; every call event travels as m.room.encrypted; a second device
// of bob rings after the device-list change; a third device of alice reads the first call
// from the backup. Then js with the mxvoip client and its libolm crypto, both ways.
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCallRig, exitOf } from '../lib/calls.mjs';
import { startBrowser } from '../lib/browser.mjs';

let rig;
let browser;
before(async () => {
  rig = await startCallRig({ users: ['alice', 'bob'] });
  browser = await startBrowser();
});
after(async () => {
  await browser?.stop();
  await rig?.stop();
});
afterEach(async () => {
  await rig.killClients();
});

// A new device of `name`: a fresh login, with the Rust crypto.
async function device(name, label, { recoveryKey } = {}) {
  const session = await rig.login(name);
  const client = await browser.client(`${name} (${label})`, session, {
    baseUrl: rig.server.url,
    forceTURN: true,
    encryption: { password: rig.accounts[name].password, recoveryKey },
  });
  await client.waitFor((e) => e.kind === 'ready', 30000, 'the first sync');
  return client;
}

// Polls `probe` until it returns something truthy: for state that arrives by /sync.
async function until(what, probe, timeoutMs = 30000) {
  const start = Date.now();
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// The events of `callId` that `client` decrypted from `sender` ({ eventId, type }), each of
// them sent as m.room.encrypted.
function decrypted(client, entries, callId, sender) {
  const mine = entries.filter((e) => e.kind === 'decrypted' && e.callId === callId && e.sender === sender);
  for (const e of mine) {
    assert.equal(e.failed, false, `${client.name} failed to decrypt ${JSON.stringify(e)}`);
    assert.equal(e.wireType, 'm.room.encrypted');
  }
  return mine;
}

const types = (events) => new Set(events.map((e) => e.type));

test('Element-style encrypted DM: cross-signing, secret storage, backup; encrypted video calls; a new device rings; the backup restores', async () => {
  const alice = await device('alice', 'laptop');
  const bob = await device('bob', 'laptop');

  // Element's first run on each account: the first cross-signing upload needs no password.
  for (const c of [alice, bob]) {
    const setup = await c.call('bootstrapEncryption');
    assert.deepEqual(setup.auth, ['none'], `${c.name}: ${JSON.stringify(setup)}`);
    assert.equal(setup.crossSigningReady, true, `${c.name}: ${JSON.stringify(setup)}\n${await c.describe()}`);
    assert.equal(setup.secretStorageReady, true, `${c.name}: ${JSON.stringify(setup)}`);
    assert.match(setup.backupVersion ?? '', /^\d+$/, `${c.name}: ${JSON.stringify(setup)}`);
    c.setup = setup;
  }
  const aliceId = rig.accounts.alice.user_id;
  const bobId = rig.accounts.bob.user_id;

  const room = await alice.call('createEncryptedDirectRoom', bobId);
  await until('bob invited', async () => (await bob.call('membership', room, bobId)) === 'invite');
  await bob.call('join', room);
  await until('alice to see bob join', async () => (await alice.call('membership', room, bobId)) === 'join');
  assert.equal(await alice.call('isEncrypted', room), true);

  // Call 1: alice calls bob with video; bob answers; media both ways; alice hangs up.
  const call1 = await alice.call('place', room, { video: true, invitee: bobId });
  const rang = await bob.waitFor((e) => e.kind === 'incoming' && e.callId === call1, 30000, 'the encrypted invite');
  assert.equal(rang.from, aliceId);
  await bob.call('answer', call1, { video: true });
  await alice.waitFor((e) => e.kind === 'state' && e.callId === call1 && e.state === 'connected', 30000, 'connected');
  await bob.waitFor((e) => e.kind === 'state' && e.callId === call1 && e.state === 'connected', 30000, 'connected');
  await alice.receives(call1, { video: true });
  await bob.receives(call1, { video: true });
  await alice.call('hangup', call1);
  const ended = await bob.waitFor((e) => e.kind === 'hangup' && e.callId === call1, 15000, 'the hangup');
  assert.equal(ended.reason, 'user_hangup');

  // Every call event was sent encrypted, and the other side decrypted each one. (Candidates
  // may all travel inside the SDP, so m.call.candidates is not required.)
  const bobSaw = decrypted(bob, await bob.log(), call1, aliceId);
  const aliceSaw = decrypted(alice, await alice.log(), call1, bobId);
  for (const type of ['m.call.invite', 'm.call.select_answer', 'm.call.hangup']) {
    assert.ok(types(bobSaw).has(type), `bob decrypted no ${type}: ${[...types(bobSaw)]}\n${await bob.describe()}`);
  }
  assert.ok(types(aliceSaw).has('m.call.answer'), `alice decrypted no answer\n${await alice.describe()}`);
  // And the server never held one of them in the clear.
  const timeline = await rig.timeline('alice', room);
  const messages = timeline.filter((e) => e.state_key === undefined);
  assert.deepEqual([...new Set(messages.map((e) => e.type))], ['m.room.encrypted']);
  assert.ok(!timeline.some((e) => e.type.startsWith('m.call.')));
  assert.deepEqual(new Set(messages.map((e) => e.event_id)), new Set([...bobSaw, ...aliceSaw].map((e) => e.eventId)));

  // Bob signs in on a second device: alice's next call rings on both, bob answers on the
  // first, the second stops ringing.
  const bob2 = await device('bob', 'phone');
  await until("alice's crypto to know bob's second device", async () => {
    const devices = await alice.call('deviceIds', bobId);
    return devices.length === 2 && devices;
  });
  const call2 = await alice.call('place', room, { video: true, invitee: bobId });
  await bob.waitFor((e) => e.kind === 'incoming' && e.callId === call2, 30000, 'the second invite');
  await bob2.waitFor((e) => e.kind === 'incoming' && e.callId === call2, 30000, 'the second invite on the new device');
  await bob.call('answer', call2, { video: true });
  await alice.waitFor((e) => e.kind === 'state' && e.callId === call2 && e.state === 'connected', 30000, 'connected');
  await alice.receives(call2, { video: true });
  await bob.receives(call2, { video: true });
  const elsewhere = await bob2.waitFor((e) => e.kind === 'hangup' && e.callId === call2, 15000, 'the end of ringing');
  assert.equal(elsewhere.reason, 'answered_elsewhere');
  assert.ok(types(decrypted(bob2, await bob2.log(), call2, aliceId)).has('m.call.invite'));
  await bob.call('hangup', call2);
  await alice.waitFor((e) => e.kind === 'hangup' && e.callId === call2, 15000, 'the hangup');

  // Alice's key backup holds the room's keys (the SDK uploads them in the background).
  const backup = alice.setup.backupVersion;
  await until("the room's keys in alice's backup", async () => {
    const res = await rig.accounts.alice.handle.call('GET', `/room_keys/keys/${encodeURIComponent(room)}`, { query: { version: backup } });
    return res.status === 200 && Object.keys(res.body.sessions ?? {}).length >= 2 && res.body;
  });

  // A third device of alice cannot read the first call by itself; after restoring the key
  // backup (its key from secret storage, opened with the recovery key) it can.
  const alice3 = await device('alice', 'new laptop', { recoveryKey: alice.setup.recoveryKey });
  const before = (await alice3.call('history', room)).filter((e) => e.wireType === 'm.room.encrypted');
  assert.ok(before.length > messages.length && before.every((e) => e.failed), JSON.stringify(before));
  const restored = await alice3.call('restoreKeyBackup');
  assert.ok(restored.imported >= 2, JSON.stringify(restored));
  const after = (await alice3.call('history', room)).filter((e) => e.wireType === 'm.room.encrypted');
  assert.ok(after.every((e) => !e.failed), JSON.stringify(after.filter((e) => e.failed)));
  const first = new Set(after.filter((e) => e.callId === call1).map((e) => e.type));
  for (const type of ['m.call.invite', 'm.call.answer', 'm.call.select_answer', 'm.call.hangup']) {
    assert.ok(first.has(type), `the restored history lacks ${type} of the first call: ${[...first]}`);
  }

  for (const c of [alice, bob, bob2, alice3]) await c.close();
});

// `mxvoip --json <args>` as bob on the device stored in `dir`: restarts keep its keys.
function mxvoipBob(dir, args) {
  return rig.cli('bob', ['--homeserver', rig.server.url, '--user', rig.accounts.bob.user_id, '--state-dir', dir, '--json', '-v', ...args]);
}

test('mxvoip and js (Rust crypto) in an encrypted DM: calls both ways with video and screen share, hold and resume; mxvoip restarted on its keys; a second js device rings', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mxvoip-e2ee-interop-'));
  const clients = [];
  try {
    const login = rig.cli('bob', ['--homeserver', rig.server.url, '--user', rig.accounts.bob.user_id, '--state-dir', dir, 'login'], { MXVOIP_PASSWORD: rig.accounts.bob.password });
    assert.equal((await exitOf(login, 30000)).code, 0, login.describe());
    const bobId = rig.accounts.bob.user_id;

    // js calls: alice (js) makes the encrypted DM, bob's mxvoip joins it and answers.
    const alice = await device('alice', 'browser');
    clients.push(alice);
    const bob = mxvoipBob(dir, ['answer', '--auto', '--video']);
    await bob.waitFor((e) => e.event === 'ready');
    const room = await alice.call('createEncryptedDirectRoom', bobId);
    await until('bob (mxvoip) to join', async () => (await alice.call('membership', room, bobId)) === 'join');
    const call1 = await alice.call('place', room, { video: true, invitee: bobId });
    await alice.waitFor((e) => e.kind === 'state' && e.callId === call1 && e.state === 'connected', 30000, 'connected');
    await alice.receives(call1, { video: true });
    assert.equal(await alice.call('screenshare', call1, true), true, 'js could not share its screen');
    const shared = await bob.waitFor((e) => e.event === 'stream_added' && e.purpose === 'm.screenshare', 15000);
    const sees = (e, id) => e.event === 'stats' && e.streams?.some((x) => x.stream_id === id && x.frames > 0);
    await bob.waitFor((e) => sees(e, shared.stream_id), 15000);
    await bob.waitFor((e) => e.event === 'stats' && e.streams?.some((x) => x.purpose === 'm.usermedia' && x.kind === 'video' && x.frames > 0), 15000);
    await alice.call('hangup', call1);
    let res = await exitOf(bob, 30000);
    assert.equal(res.code, 0, bob.describe());
    assert.equal(bob.summary().call_id, call1, bob.describe());
    assert.ok(bob.summary().streams.find((x) => x.stream_id === shared.stream_id)?.frames > 0, bob.describe());
    let saw = decrypted(alice, await alice.log(), call1, bobId);
    assert.ok(types(saw).has('m.call.answer'), `js decrypted no answer from mxvoip\n${await alice.describe()}`);

    // mxvoip calls, restarted on the same device: video, a screen share, hold and resume.
    const caller = mxvoipBob(dir, ['call', room, '--video', '--screenshare-at', '1', '--hold-at', '4', '--resume-at', '6', '--hangup-after', '9']);
    const incoming = await alice.waitFor((e) => e.kind === 'incoming' && e.callId !== call1, 30000, 'the encrypted invite from mxvoip');
    await alice.call('answer', incoming.callId, { video: true });
    await alice.waitFor((e) => e.kind === 'first_frame' && e.callId === incoming.callId && e.purpose === 'm.screenshare', 20000, 'screen share frames');
    await alice.waitFor((e) => e.kind === 'held_by_remote' && e.callId === incoming.callId && e.held === true, 20000, 'the hold');
    await alice.waitFor((e) => e.kind === 'held_by_remote' && e.callId === incoming.callId && e.held === false, 20000, 'the resume');
    await alice.receives(incoming.callId, { video: true });
    res = await exitOf(caller, 30000);
    assert.equal(res.code, 0, caller.describe());
    assert.equal(caller.summary().call_id, incoming.callId);
    assert.ok(caller.summary().streams.some((x) => x.kind === 'video' && x.frames > 0), caller.describe());
    // mxvoip exits once its hangup is sent; js reads it with its next /sync.
    await alice.waitFor((e) => e.kind === 'decrypted' && e.type === 'm.call.hangup' && e.callId === incoming.callId, 20000, 'the hangup from mxvoip');
    saw = decrypted(alice, await alice.log(), incoming.callId, bobId);
    for (const type of ['m.call.invite', 'm.call.select_answer', 'm.call.negotiate', 'm.call.hangup']) {
      assert.ok(types(saw).has(type), `js decrypted no ${type} from mxvoip: ${[...types(saw)]}\n${await alice.describe()}`);
    }

    // alice signs in on a second device: mxvoip's next call rings on both; the second answers.
    const phone = await device('alice', 'phone');
    clients.push(phone);
    const third = mxvoipBob(dir, ['call', room, '--hangup-after', '3']);
    const onLaptop = await alice.waitFor((e) => e.kind === 'incoming' && ![call1, incoming.callId].includes(e.callId), 30000, 'the third invite');
    await phone.waitFor((e) => e.kind === 'incoming' && e.callId === onLaptop.callId, 30000, 'the third invite on the new device');
    await phone.call('answer', onLaptop.callId, { video: false });
    const elsewhere = await alice.waitFor((e) => e.kind === 'hangup' && e.callId === onLaptop.callId, 15000, 'the end of ringing');
    assert.equal(elsewhere.reason, 'answered_elsewhere');
    res = await exitOf(third, 30000);
    assert.equal(res.code, 0, third.describe());
    assert.ok(third.summary().streams.some((x) => x.kind === 'audio' && x.frames > 0), third.describe());

    // Nothing in clear, one crypto state for the one mxvoip device, no decryption failure.
    const timeline = await rig.timeline('alice', room);
    assert.ok(!timeline.some((e) => e.type.startsWith('m.call.')), 'call events in clear');
    assert.equal(readdirSync(dir).filter((f) => f.endsWith('.state')).length, 1);
    for (const c of [bob, caller, third]) assert.doesNotMatch(c.stderr, /cannot decrypt|cannot share/, c.describe());
  } finally {
    for (const c of clients) await c.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
