// Test fixture: Debian's HAProxy in front of several mxvoip-server processes, as scripts/run
// --scale and a production layout put it: one address on a free loopback port, requests
// spread round-robin, each process's /health checked (every 200 ms here, out at the first
// failure), a connection refused by a dead process sent to another.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './coturn.mjs';

export async function startHaproxy(servers) {
  if (spawnSync('sh', ['-c', 'command -v haproxy']).status !== 0) throw new Error('haproxy is not installed: run scripts/setup');
  const dir = mkdtempSync(join(tmpdir(), 'mxvoip-haproxy-'));
  const port = await freePort();
  const backends = servers.map((s, i) => `    server p${i} ${new URL(s.url).host} check`).join('\n');
  writeFileSync(join(dir, 'haproxy.cfg'), `global
    maxconn 2000
    log stderr format short local0 notice
defaults
    mode http
    log global
    timeout connect 2s
    timeout client 2m
    timeout server 2m
    retries 2
    option redispatch
frontend matrix
    bind 127.0.0.1:${port}
    default_backend mxvoip
backend mxvoip
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    default-server inter 200ms fall 1 rise 1
${backends}
`);
  const proc = spawn('haproxy', ['-f', join(dir, 'haproxy.cfg'), '-db'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  proc.stdout.on('data', (c) => (log += c));
  proc.stderr.on('data', (c) => (log += c));
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  // Ready once it accepts a connection on its port.
  const deadline = Date.now() + 10000;
  for (;;) {
    const open = await new Promise((resolve) => {
      const s = connect(port, '127.0.0.1', () => (s.end(), resolve(true)));
      s.on('error', () => resolve(false));
    });
    if (open) break;
    if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`haproxy did not start:\n${log}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    url: `http://127.0.0.1:${port}`,
    get log() {
      return log;
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
