// Interop: matrix-js-sdk's own MatrixCall in headless Chromium against the `mxvoip` client,
// every call signalled through mxvoip-server, media through coturn with credentials from
// mxvoip-server. js clients use TURN only (forceTURN) so media stays on loopback; "relay-only
// on both sides" adds --relay-only on the mxvoip side.
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startCallRig, exitOf } from '../lib/calls.mjs';
import { startBrowser } from '../lib/browser.mjs';

let rig;
let browser;
let room; // alice <-> bob direct chat
before(async () => {
  rig = await startCallRig({ users: ['alice', 'bob'] });
  browser = await startBrowser();
  room = await rig.directRoom('alice', 'bob');
});
after(async () => {
  await browser?.stop();
  await rig?.stop();
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// js clients of the running test: closed after it, so no old device keeps ringing.
let open = [];
afterEach(async () => {
  for (const c of open) await c.close();
  open = [];
  await rig.killClients();
});

async function js(name) {
  const session = await rig.login(name);
  const client = await browser.client(`${name} (js)`, session, { baseUrl: rig.urlOf(), forceTURN: true });
  open.push(client);
  return client;
}

async function done(...clients) {
  for (const c of clients) await c.close();
  open = open.filter((c) => !clients.includes(c));
}

function mxvoip(name, args) {
  return rig.client(name, args);
}

async function ready(client) {
  await client.waitFor((e) => e.event === 'ready');
  await sleep(300); // its first long-poll is parked
}

// Resolves once an mxvoip stats line counts decoded frames of the js side's audio (and video):
// before then a hangup from js would leave mxvoip nothing to count.
function mxvoipGets(client, { video }) {
  const has = (e, kind) => e.streams?.some((x) => x.kind === kind && x.frames > 0);
  return client.waitFor((e) => e.event === 'stats' && has(e, 'audio') && (!video || has(e, 'video')), 15000);
}

function mxvoipReceived(client, { video, purpose = 'm.usermedia' }) {
  const s = client.summary();
  assert.ok(s, client.describe());
  const audio = s.streams.find((x) => x.purpose === purpose && x.kind === 'audio');
  if (purpose === 'm.usermedia') assert.ok(audio?.frames > 0, `${client.name} got no audio\n${client.describe()}`);
  if (video) {
    const v = s.streams.find((x) => x.purpose === purpose && x.kind === 'video');
    assert.ok(v?.frames > 0, `${client.name} got no ${purpose} video\n${client.describe()}`);
  }
}

async function jsEnded(client, callId) {
  return client.waitFor((e) => e.kind === 'hangup' && e.callId === callId, 15000, `the end of ${callId}`);
}

// The frames of a remote stream in the mxvoip stats line nearest to `t` seconds in.
function framesAt(client, purpose, kind, t) {
  let best = null;
  for (const l of client.events.filter((e) => e.event === 'stats'))
    if (!best || Math.abs(l.t_ms - t * 1000) < Math.abs(best.t_ms - t * 1000)) best = l;
  return best?.streams.find((x) => x.purpose === purpose && x.kind === kind)?.frames ?? 0;
}

for (const video of [false, true]) {
  const kind = video ? 'video' : 'voice';

  test(`js calls mxvoip (${kind}): media both ways; js hangs up, then mxvoip hangs up`, async () => {
    for (const hangupBy of ['js', 'mxvoip']) {
      const alice = await js('alice');
      const bobArgs = ['answer', '--auto', ...(video ? ['--video'] : []), ...(hangupBy === 'mxvoip' ? ['--hangup-after', '3'] : [])];
      const bob = mxvoip('bob', bobArgs);
      await ready(bob);
      const callId = await alice.call('place', room, { video, invitee: rig.accounts.bob.user_id });
      await alice.waitFor((e) => e.kind === 'state' && e.state === 'connected', 30000, 'connected');
      await alice.receives(callId, { video });
      if (hangupBy === 'js') {
        await mxvoipGets(bob, { video });
        await alice.call('hangup', callId);
      }
      const res = await exitOf(bob, 30000);
      assert.equal(res.code, 0, bob.describe());
      const s = bob.summary();
      assert.equal(s.call_id, callId);
      assert.equal(s.end_reason, 'user_hangup');
      assert.equal(s.ended_by_remote, hangupBy === 'js');
      mxvoipReceived(bob, { video });
      const end = await jsEnded(alice, callId);
      assert.equal(end.reason, 'user_hangup');
      assert.equal(end.party, hangupBy === 'js' ? 'local' : 'remote');
      await done(alice);
    }
  });

  test(`mxvoip calls js (${kind}): media both ways; mxvoip hangs up, then js hangs up`, async () => {
    for (const hangupBy of ['mxvoip', 'js']) {
      const bob = await js('bob');
      const aliceArgs = ['call', room, ...(video ? ['--video'] : []), ...(hangupBy === 'mxvoip' ? ['--hangup-after', '3'] : [])];
      const alice = mxvoip('alice', aliceArgs);
      const incoming = await bob.waitFor((e) => e.kind === 'incoming', 30000, 'the invite');
      await bob.call('answer', incoming.callId, { video });
      await bob.waitFor((e) => e.kind === 'state' && e.state === 'connected', 30000, 'connected');
      await bob.receives(incoming.callId, { video });
      if (hangupBy === 'js') {
        await mxvoipGets(alice, { video });
        await bob.call('hangup', incoming.callId);
      }
      const res = await exitOf(alice, 30000);
      assert.equal(res.code, 0, alice.describe());
      assert.equal(alice.summary().call_id, incoming.callId);
      assert.equal(alice.summary().end_reason, 'user_hangup');
      assert.equal(alice.summary().ended_by_remote, hangupBy === 'js');
      mxvoipReceived(alice, { video });
      const end = await jsEnded(bob, incoming.callId);
      assert.equal(end.reason, 'user_hangup');
      await done(bob);
    }
  });
}

for (const relayBoth of [false, true]) {
  const label = relayBoth ? ' (relay-only on both sides)' : '';
  const relay = relayBoth ? ['--relay-only'] : [];

  test(`screen share both ways${label}`, async () => {
    // js shares its screen mid-call: mxvoip sees an m.screenshare stream with frames, then its removal.
    const alice = await js('alice');
    const bob = mxvoip('bob', ['answer', '--auto', '--video', ...relay, '--hangup-after', '9']);
    await ready(bob);
    const callId = await alice.call('place', room, { video: true, invitee: rig.accounts.bob.user_id });
    await alice.waitFor((e) => e.kind === 'state' && e.state === 'connected', 30000, 'connected');
    await sleep(1000);
    assert.equal(await alice.call('screenshare', callId, true), true, 'js could not share its screen');
    const added = await bob.waitFor((e) => e.event === 'stream_added' && e.purpose === 'm.screenshare', 15000);
    assert.equal(added.kind, 'video');
    await sleep(2500);
    assert.equal(await alice.call('screenshare', callId, false), false);
    await bob.waitFor((e) => e.event === 'stream_removed' && e.stream_id === added.stream_id, 15000);
    assert.equal((await exitOf(bob, 30000)).code, 0, bob.describe());
    const shared = bob.summary().streams.find((s) => s.stream_id === added.stream_id);
    assert.ok(shared?.frames > 0, `no screen share frames\n${bob.describe()}`);
    mxvoipReceived(bob, { video: true });
    if (relayBoth) assert.equal(bob.summary().relay, true);
    await done(alice);

    // mxvoip shares its screen: js gets a feed with purpose m.screenshare, with frames.
    const bob2 = await js('bob');
    const alice2 = mxvoip('alice', ['call', room, '--video', ...relay, '--screenshare-at', '2', '--hangup-after', '6']);
    const incoming = await bob2.waitFor((e) => e.kind === 'incoming', 30000, 'the invite');
    await bob2.call('answer', incoming.callId, { video: true });
    const feed = await bob2.waitFor((e) => e.kind === 'first_frame' && e.purpose === 'm.screenshare', 20000, 'screen share frames');
    assert.equal(feed.callId, incoming.callId);
    assert.equal((await exitOf(alice2, 30000)).code, 0, alice2.describe());
    const info = await bob2.call('info', incoming.callId);
    const screen = info.feeds.find((f) => f.purpose === 'm.screenshare');
    assert.ok(screen.frames > 5, `js got ${screen.frames} screen share frames`);
    const camera = info.feeds.find((f) => f.purpose === 'm.usermedia');
    assert.notEqual(screen.streamId, camera.streamId);
    if (relayBoth) assert.equal(alice2.summary().relay, true);
  });

  if (!relayBoth) {
    test('hold and resume: js holds mxvoip, mxvoip holds js; media resumes both ways', async () => {
      const alice = await js('alice');
      const bob = mxvoip('bob', ['answer', '--auto', '--video', '--hangup-after', '12']);
      await ready(bob);
      const callId = await alice.call('place', room, { video: true, invitee: rig.accounts.bob.user_id });
      await alice.waitFor((e) => e.kind === 'state' && e.state === 'connected', 30000, 'connected');
      const connectedAt = Date.now();
      await sleep(2000);
      await alice.call('hold', callId, true);
      await sleep(3000);
      const onHold = await alice.call('media', callId);
      await sleep(1500);
      const stillOnHold = await alice.call('media', callId);
      assert.ok(stillOnHold.videoFrames - onHold.videoFrames <= 2, `js still receives video on hold: ${JSON.stringify([onHold, stillOnHold])}`);
      const tHold = (Date.now() - connectedAt) / 1000;
      await alice.call('hold', callId, false);
      await sleep(2500);
      await alice.receives(callId, { video: true });
      assert.equal((await exitOf(bob, 30000)).code, 0, bob.describe());
      // matrix-js-sdk holds with sendonly: it keeps sending while mxvoip, held, sends nothing.
      const heldEnd = framesAt(bob, 'm.usermedia', 'video', tHold);
      assert.ok(framesAt(bob, 'm.usermedia', 'video', 11) - heldEnd >= 10, `mxvoip video stopped\n${bob.describe()}`);
      assert.ok(bob.events.some((e) => e.event === 'stats'), bob.describe());
      await done(alice);

      // mxvoip holds js.
      const bob2 = await js('bob');
      const alice2 = mxvoip('alice', ['call', room, '--video', '--hold-at', '2', '--resume-at', '5', '--hangup-after', '9']);
      const incoming = await bob2.waitFor((e) => e.kind === 'incoming', 30000, 'the invite');
      await bob2.call('answer', incoming.callId, { video: true });
      await bob2.waitFor((e) => e.kind === 'state' && e.state === 'connected', 30000, 'connected');
      await alice2.waitFor((e) => e.event === 'hold' && e.on === true, 15000);
      await sleep(1500);
      const h1 = await bob2.call('media', incoming.callId);
      await sleep(1000);
      const h2 = await bob2.call('media', incoming.callId);
      assert.ok(h2.videoFrames - h1.videoFrames <= 2, `js received video while held: ${JSON.stringify([h1, h2])}`);
      await alice2.waitFor((e) => e.event === 'hold' && e.on === false, 15000);
      await sleep(1500);
      await bob2.receives(incoming.callId, { video: true });
      assert.equal((await exitOf(alice2, 30000)).code, 0, alice2.describe());
      assert.ok(framesAt(alice2, 'm.usermedia', 'video', 8.5) - framesAt(alice2, 'm.usermedia', 'video', 4.5) >= 10, `mxvoip video did not resume\n${alice2.describe()}`);
    });
  }
}

test('rejects and no answer: each side ends with the right reason', async () => {
  // js rejects mxvoip's call.
  let bob = await js('bob');
  const alice = mxvoip('alice', ['call', room]);
  let incoming = await bob.waitFor((e) => e.kind === 'incoming', 30000, 'the invite');
  await bob.call('reject', incoming.callId);
  let res = await exitOf(alice, 30000);
  assert.equal(res.code, 4, alice.describe());
  assert.equal(alice.summary().end_reason, 'rejected');
  assert.equal(alice.summary().ended_by_remote, true);
  await done(bob);

  // mxvoip rejects js's call.
  const aliceJs = await js('alice');
  const bobCli = mxvoip('bob', ['answer', '--reject']);
  await ready(bobCli);
  const callId = await aliceJs.call('place', room, { invitee: rig.accounts.bob.user_id });
  res = await exitOf(bobCli, 30000);
  assert.equal(res.code, 0, bobCli.describe());
  assert.equal(bobCli.summary().end_reason, 'rejected');
  const end = await jsEnded(aliceJs, callId);
  assert.equal(end.reason, 'user_hangup', await aliceJs.describe()); // matrix-js-sdk reports a reject as user_hangup
  await done(aliceJs);

  // mxvoip calls, nobody answers: mxvoip gives up with invite_timeout; js stops ringing.
  bob = await js('bob');
  const caller = mxvoip('alice', ['call', room, '--invite-lifetime', '4000']);
  incoming = await bob.waitFor((e) => e.kind === 'incoming', 30000, 'the invite');
  res = await exitOf(caller, 30000);
  assert.equal(res.code, 3, caller.describe());
  assert.equal(caller.summary().end_reason, 'invite_timeout');
  const stopped = await jsEnded(bob, incoming.callId);
  // Our hangup says invite_timeout; matrix-js-sdk's own ringing timer (the same lifetime)
  // often fires first and ends the call with no reason at all (README, interoperability).
  assert.ok([undefined, 'invite_timeout'].includes(stopped.reason), await bob.describe());
  await done(bob);

  // js calls, mxvoip lets it ring: js gives up after its own 60 s invite lifetime.
  const aliceJs2 = await js('alice');
  const ringing = mxvoip('bob', ['answer']); // asks the user, who never answers
  await ready(ringing);
  const callId2 = await aliceJs2.call('place', room, { invitee: rig.accounts.bob.user_id });
  const timedOut = await aliceJs2.waitFor((e) => e.kind === 'hangup' && e.callId === callId2, 75000, 'the invite timeout');
  assert.equal(timedOut.reason, 'invite_timeout');
  res = await exitOf(ringing, 15000);
  assert.equal(res.code, 3, ringing.describe());
  assert.equal(ringing.summary().end_reason, 'invite_timeout');
});

test('glare between js and mxvoip, 10 rounds: one connected call or a clean, explained ending', async (t) => {
  const outcomes = {};
  for (let round = 0; round < 10; round++) {
    const alice = await js('alice');
    const at = Date.now() + 1500;
    const offset = Math.floor(Math.random() * 300) - 150;
    const bob = mxvoip('bob', ['call', room, '--start-at', String(at + offset), '--invite-lifetime', '8000', '--hangup-after', '2']);
    await ready(bob);
    await sleep(Math.max(0, at - Date.now()));
    const jsCall = await alice.call('place', room, { invitee: rig.accounts.bob.user_id });
    const res = await exitOf(bob, 40000);
    const why = `round ${round}, offset ${offset} ms\n${bob.describe()}\n${await alice.describe()}`;
    assert.notEqual(res.code, null, `mxvoip hung\n${why}`);
    const s = bob.summary();
    // Whatever happened, nothing is left half-open on the js side.
    await sleep(1000);
    const log = await alice.log();
    const jsIds = [...new Set(log.filter((e) => e.callId).map((e) => e.callId))];
    for (const id of jsIds) {
      const info = await alice.call('info', id);
      assert.ok(!info || info.state === 'ended', `js call ${id} is still ${info?.state}\n${why}`);
    }
    const connectedJs = log.filter((e) => e.kind === 'state' && e.state === 'connected').map((e) => e.callId);
    let outcome;
    if (s.end_reason === 'user_hangup' && connectedJs.length === 1 && connectedJs[0] === s.call_id) {
      outcome = s.call_id === jsCall ? 'connected: the js call survived' : 'connected: the mxvoip call survived';
      mxvoipReceived(bob, { video: false });
    } else {
      // A clean ending: mxvoip says why, js ended its call too, nobody is connected.
      assert.equal(connectedJs.length, 0, `two half-calls\n${why}`);
      assert.ok(['invite_timeout', 'user_busy', 'rejected'].includes(s.end_reason), why);
      outcome = `no call: ${s.end_reason}`;
    }
    outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
    await done(alice);
  }
  t.diagnostic(`outcomes: ${JSON.stringify(outcomes)}`);
});

test('js calls bob, who has mxvoip on one device and js on another: one answers, the other stops ringing', async () => {
  for (const answering of ['mxvoip', 'js']) {
    const alice = await js('alice');
    const bobJs = await js('bob');
    const bobCli = mxvoip('bob', answering === 'mxvoip' ? ['answer', '--auto', '--hangup-after', '2'] : ['answer']);
    await ready(bobCli);
    const callId = await alice.call('place', room, { invitee: rig.accounts.bob.user_id });
    const incoming = await bobJs.waitFor((e) => e.kind === 'incoming', 30000, 'the invite');
    assert.equal(incoming.callId, callId);
    if (answering === 'js') {
      await bobCli.waitFor((e) => e.event === 'state' && e.state === 'ringing', 15000);
      await bobJs.call('answer', callId, { video: false });
      const res = await exitOf(bobCli, 30000);
      assert.equal(res.code, 0, bobCli.describe());
      assert.equal(bobCli.summary().end_reason, 'answered_elsewhere');
      await alice.waitFor((e) => e.kind === 'state' && e.state === 'connected', 30000, 'connected');
      await alice.receives(callId, { video: false });
      await alice.call('hangup', callId);
    } else {
      const end = await jsEnded(bobJs, callId);
      assert.equal(end.reason, 'answered_elsewhere', await bobJs.describe());
      const res = await exitOf(bobCli, 30000);
      assert.equal(res.code, 0, bobCli.describe());
      assert.equal(bobCli.summary().end_reason, 'user_hangup');
      mxvoipReceived(bobCli, { video: false });
    }
    await jsEnded(alice, callId);
    await done(alice, bobJs);
  }
});

test('baseline: js calls js through mxvoip-server (video, relay)', async () => {
  const alice = await js('alice');
  const bob = await js('bob');
  const callId = await alice.call('place', room, { video: true, invitee: rig.accounts.bob.user_id });
  const incoming = await bob.waitFor((e) => e.kind === 'incoming', 30000, 'the invite');
  await bob.call('answer', incoming.callId, { video: true });
  await alice.waitFor((e) => e.kind === 'state' && e.state === 'connected', 30000, 'connected');
  await alice.receives(callId, { video: true });
  await bob.receives(callId, { video: true });
  assert.equal((await alice.call('media', callId)).relay, true);
  await alice.call('hangup', callId);
  const end = await jsEnded(bob, callId);
  assert.equal(end.reason, 'user_hangup');
});
