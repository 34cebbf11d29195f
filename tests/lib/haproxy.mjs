// Test fixture: Debian's HAProxy in front of several mxvoip-server processes, as scripts/run
// --scale and a production layout put it: one address on a free loopback port, requests
// spread round-robin, each process's /health checked (every 200 ms here, out at the first
// failure), a connection refused by a dead process sent to another.
//
// Its listening socket is made here and handed to it (`bind fd@3`): the port is known and
// taken before it starts, and a connection made before it is ready waits in the backlog, so
// nothing waits for it to listen.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export async function startHaproxy(servers) {
  if (spawnSync('sh', ['-c', 'command -v haproxy']).status !== 0) throw new Error('haproxy is not installed: run scripts/setup');
  const dir = mkdtempSync(join(tmpdir(), 'mxvoip-haproxy-'));
  const socket = createServer();
  await new Promise((resolve) => socket.listen(0, '127.0.0.1', resolve));
  const { port } = socket.address();
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
    bind fd@3
    default_backend mxvoip
backend mxvoip
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    default-server inter 200ms fall 1 rise 1
${backends}
`);
  const proc = spawn('haproxy', ['-f', join(dir, 'haproxy.cfg'), '-db'], { stdio: ['ignore', 'pipe', 'pipe', socket._handle.fd] });
  // HAProxy holds the socket now; this process lets go of its copy without accepting on it.
  await new Promise((resolve) => socket.close(resolve));
  let log = '';
  proc.stdout.on('data', (c) => (log += c));
  proc.stderr.on('data', (c) => (log += c));
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  // A configuration it refuses ends it at once.
  proc.on('exit', (code) => {
    if (code) console.error(`haproxy exited with ${code}:\n${log}`);
  });
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
