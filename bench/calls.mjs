// Real-call benchmarks: call setup time over relay-only video calls through mxvoip-server and
// coturn on loopback, in an unencrypted and an encrypted direct chat in turn, and the CPU and
// memory of one `mxvoip` process during an encrypted audio+video call. Prints the figures
// recorded in bench/RESULTS.md.
//   bench/calls            (after scripts/build; uses build/)
//   bench/calls --calls 20 --long 30
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCallRig, exitOf } from '../tests/lib/calls.mjs';

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const CALLS = opt('--calls', 20);
const LONG = opt('--long', 30);

function percentile(values, p) {
  const s = values.slice().sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
}

// utime + stime in seconds, and resident memory, of a live process.
function usage(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key) => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(status)[1]);
  return { cpu: ticks / 100, rss: kb('VmRSS') / 1024, hwm: kb('VmHWM') / 1024 };
}

const rig = await startCallRig();
const stateDir = mkdtempSync(join(tmpdir(), 'mxvoip-bench-'));
try {
  // Two direct chats between the same two devices, one with m.room.encryption, called in turn
  // so that the machine's drift falls on both alike. alice keeps one device (a stored
  // session) as a user does; bob answers everything from one process.
  const plain = await rig.directRoom('alice', 'bob');
  const encrypted = await rig.directRoom('alice', 'bob', { encrypted: true });
  const alice = (args, env = {}) => rig.cli('alice', ['--homeserver', rig.server.url, '--user', rig.accounts.alice.user_id, '--state-dir', stateDir, '--json', ...args], env);
  const login = alice(['login'], { MXVOIP_PASSWORD: rig.accounts.alice.password });
  if ((await exitOf(login, 30000)).code !== 0) throw new Error(login.describe());
  const bob = rig.client('bob', ['answer', '--auto', '--video', '--relay-only', '--calls', String(2 * CALLS)]);
  await bob.waitFor((e) => e.event === 'ready');
  const results = { plain: { caller: [], placed: [], callee: [] }, encrypted: { caller: [], placed: [], callee: [] } };
  let answered = 0;
  for (let i = 0; i < CALLS; i++) {
    for (const [kind, room] of [['plain', plain], ['encrypted', encrypted]]) {
      const a = alice(['call', room, '--video', '--relay-only', '--hangup-after', '1']);
      const res = await exitOf(a, 60000);
      if (res.code !== 0) throw new Error(`${kind} call ${i} failed (${res.code}):\n${a.describe()}`);
      const s = a.summary();
      const placedAt = a.events.find((e) => e.event === 'state' && e.state === 'preparing').ts;
      results[kind].caller.push(s.setup_ms);
      results[kind].placed.push(s.first_media_unix_ms - placedAt);
      answered++;
      await bob.waitFor(() => bob.summaries().length >= answered, 10000);
      results[kind].callee.push(bob.summaries()[answered - 1].setup_ms);
    }
  }
  await exitOf(bob, 10000);
  const line = (what, v) => console.log(`${what}: ${v.length} calls, p50 ${percentile(v, 50)} ms, p95 ${percentile(v, 95)} ms, min ${Math.min(...v)} ms, max ${Math.max(...v)} ms`);
  for (const kind of ['plain', 'encrypted']) {
    line(`${kind} caller (invite sent -> first remote video frame)`, results[kind].caller);
    line(`${kind} caller (call placed -> first remote video frame)`, results[kind].placed);
    line(`${kind} callee (invite received -> first remote video frame)`, results[kind].callee);
  }

  // One long call: sample the caller's CPU and memory once connected and at the end.
  const bob2 = rig.client('bob', ['answer', '--auto', '--video', '--relay-only']);
  await bob2.waitFor((e) => e.event === 'ready');
  const caller = alice(['call', encrypted, '--video', '--relay-only', '--hangup-after', String(LONG + 1)]);
  await caller.waitFor((e) => e.event === 'state' && e.state === 'connected', 30000);
  const start = usage(caller.proc.pid);
  const t0 = Date.now();
  await new Promise((r) => setTimeout(r, LONG * 1000));
  const end = usage(caller.proc.pid);
  const seconds = (Date.now() - t0) / 1000;
  await exitOf(caller, 30000);
  await exitOf(bob2, 30000);
  console.log(`one mxvoip process, ${LONG} s audio+video call (relay-only): CPU ${(100 * (end.cpu - start.cpu) / seconds).toFixed(1)} % of one core, RSS ${end.rss.toFixed(1)} MB (peak ${end.hwm.toFixed(1)} MB)`);
} finally {
  await rig.stop();
  rmSync(stateDir, { recursive: true, force: true });
}
