// Real-call benchmarks: call setup time over relay-only video calls through mxvoip-server and
// coturn on loopback, and the CPU and memory of one `mxvoip` process during an audio+video
// call. Prints the figures recorded in bench/RESULTS.md.
//   bench/calls            (after scripts/build; uses build/)
//   bench/calls --calls 20 --long 30
import { readFileSync } from 'node:fs';
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
try {
  const caller = [];
  const callee = [];
  const bob = rig.client('bob', ['answer', '--auto', '--video', '--relay-only', '--calls', String(CALLS)]);
  await bob.waitFor((e) => e.event === 'ready');
  for (let i = 0; i < CALLS; i++) {
    const alice = rig.client('alice', ['call', rig.accounts.bob.user_id, '--video', '--relay-only', '--hangup-after', '1']);
    const res = await exitOf(alice, 60000);
    if (res.code !== 0) throw new Error(`call ${i} failed (${res.code}):\n${alice.describe()}`);
    caller.push(alice.summary().setup_ms);
    await bob.waitFor(() => bob.summaries().length > i, 10000);
    callee.push(bob.summaries()[i].setup_ms);
  }
  await exitOf(bob, 10000);
  const line = (who, v) => console.log(`setup ${who}: ${v.length} calls, p50 ${percentile(v, 50)} ms, p95 ${percentile(v, 95)} ms, min ${Math.min(...v)} ms, max ${Math.max(...v)} ms`);
  line('caller (invite sent -> first remote video frame)', caller);
  line('callee (invite received -> first remote video frame)', callee);

  // One long call: sample the caller's CPU and memory once connected and at the end.
  const bob2 = rig.client('bob', ['answer', '--auto', '--video', '--relay-only']);
  await bob2.waitFor((e) => e.event === 'ready');
  const alice = rig.client('alice', ['call', rig.accounts.bob.user_id, '--video', '--relay-only', '--hangup-after', String(LONG + 1)]);
  await alice.waitFor((e) => e.event === 'state' && e.state === 'connected', 30000);
  const start = usage(alice.proc.pid);
  const t0 = Date.now();
  await new Promise((r) => setTimeout(r, LONG * 1000));
  const end = usage(alice.proc.pid);
  const seconds = (Date.now() - t0) / 1000;
  await exitOf(alice, 30000);
  await exitOf(bob2, 30000);
  console.log(`one mxvoip process, ${LONG} s audio+video call (relay-only): CPU ${(100 * (end.cpu - start.cpu) / seconds).toFixed(1)} % of one core, RSS ${end.rss.toFixed(1)} MB (peak ${end.hwm.toFixed(1)} MB)`);
} finally {
  await rig.stop();
}
