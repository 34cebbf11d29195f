// Call setup time by pairing: matrix-js-sdk (headless Chromium) and mxvoip, 10 relay-only
// video calls each, all signalled through one mxvoip-server with coturn on loopback. Setup
// time on each side: the invite (its origin_server_ts: the moment the server took it, which
// the caller learns and the callee can first learn of within a millisecond on loopback) ->
// that side's first decoded remote video frame, on the same machine clock for every client.
// js answers inside the page the moment the call rings; mxvoip with `answer --auto`.
//   bench/interop            (after scripts/setup and scripts/build)
//   bench/interop --calls 20 --only 'js -> js, js -> mxvoip'
import { startCallRig, exitOf } from '../tests/lib/calls.mjs';
import { startBrowser } from '../tests/lib/browser.mjs';

const args = process.argv.slice(2);
const CALLS = args.includes('--calls') ? Number(args[args.indexOf('--calls') + 1]) : 10;
const ONLY = args.includes('--only') ? args[args.indexOf('--only') + 1] : null; // e.g. "js -> js, js -> mxvoip"
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const p50 = (v) => v.slice().sort((a, b) => a - b)[Math.ceil(v.length / 2) - 1];
const p95 = (v) => v.slice().sort((a, b) => a - b)[Math.ceil(v.length * 0.95) - 1];

const rig = await startCallRig();
const browser = await startBrowser();
const room = await rig.directRoom('alice', 'bob');
const js = async (name, autoAnswer = null) => browser.client(name, await rig.login(name), { baseUrl: rig.server.url, forceTURN: true, autoAnswer });

async function inviteTs(callId) {
  const events = await rig.timeline('alice', room);
  return events.find((e) => e.type === 'm.call.invite' && e.content.call_id === callId).origin_server_ts;
}

// Setup time of a js side for `callId`, from its log.
async function jsSetup(client, callId) {
  const first = await client.waitFor((e) => e.kind === 'first_frame' && e.callId === callId && e.purpose === 'm.usermedia', 30000, 'the first frame');
  return first.t - (await inviteTs(callId));
}

async function mxvoipSetup(client) {
  const s = client.summary();
  return s.first_media_unix_ms - (await inviteTs(s.call_id));
}

// Pairings are registered first and then run round by round, one call of each per round, so
// that the slow drift of a shared machine falls on every pairing alike.
const pairings = [];
function pairing(label, run) {
  if (ONLY && !ONLY.split(',').map((s) => s.trim()).includes(label)) return;
  pairings.push({ label, run, caller: [], callee: [] });
}

async function runRounds() {
  for (let i = 0; i < CALLS; i++) {
    for (const p of pairings) {
      const [a, b] = await p.run(i);
      p.caller.push(a);
      p.callee.push(b);
    }
  }
  for (const { label, caller, callee } of pairings)
    console.log(`${label}: caller p50 ${p50(caller)} ms p95 ${p95(caller)} ms | callee p50 ${p50(callee)} ms p95 ${p95(callee)} ms`);
}

try {
  pairing('js -> js', async () => {
    const bob = await js('bob', { video: true });
    const alice = await js('alice');
    const callId = await alice.call('place', room, { video: true, invitee: rig.accounts.bob.user_id });
    const r = [await jsSetup(alice, callId), await jsSetup(bob, callId)];
    await alice.call('hangup', callId);
    await sleep(300);
    await alice.close();
    await bob.close();
    return r;
  });
  pairing('mxvoip -> js', async () => {
    const bob = await js('bob', { video: true });
    const alice = rig.client('alice', ['call', room, '--video', '--relay-only', '--hangup-after', '1']);
    const incoming = await bob.waitFor((e) => e.kind === 'incoming', 30000, 'the invite');
    const b = await jsSetup(bob, incoming.callId);
    await exitOf(alice, 30000);
    await bob.close();
    return [await mxvoipSetup(alice), b];
  });
  pairing('js -> mxvoip', async () => {
    const bob = rig.client('bob', ['answer', '--auto', '--video', '--relay-only', '--hangup-after', '1']);
    await bob.waitFor((e) => e.event === 'ready');
    await sleep(300);
    const alice = await js('alice');
    const callId = await alice.call('place', room, { video: true, invitee: rig.accounts.bob.user_id });
    const a = await jsSetup(alice, callId);
    await exitOf(bob, 30000);
    await alice.close();
    return [a, await mxvoipSetup(bob)];
  });
  pairing('mxvoip -> mxvoip', async () => {
    const bob = rig.client('bob', ['answer', '--auto', '--video', '--relay-only']);
    await bob.waitFor((e) => e.event === 'ready');
    await sleep(300);
    const alice = rig.client('alice', ['call', room, '--video', '--relay-only', '--hangup-after', '1']);
    await exitOf(alice, 30000);
    await exitOf(bob, 30000);
    return [await mxvoipSetup(alice), await mxvoipSetup(bob)];
  });
  await runRounds();
} finally {
  await browser.stop();
  await rig.stop();
}
