// Test fixture: a real coturn (use-auth-secret) on free loopback ports in a temporary
// directory, and coturn's own TURN client to exercise it.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { createSocket } from 'node:dgram';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

function need(tool) {
  const found = spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0;
  if (!found) throw new Error(`${tool} is not installed: run scripts/setup (it installs coturn)`);
}

// A port free for both TCP and UDP on 127.0.0.1.
export async function freePort() {
  for (;;) {
    const port = await new Promise((resolve, reject) => {
      const srv = createServer();
      srv.on('error', reject);
      srv.listen(0, '127.0.0.1', () => {
        const { port } = srv.address();
        srv.close(() => resolve(port));
      });
    });
    const udpFree = await new Promise((resolve) => {
      const sock = createSocket('udp4');
      sock.on('error', () => resolve(false));
      sock.bind(port, '127.0.0.1', () => sock.close(() => resolve(true)));
    });
    if (udpFree) return port;
  }
}

export async function startCoturn({ secret }) {
  need('turnserver');
  const dir = mkdtempSync(join(tmpdir(), 'mxvoip-coturn-'));
  const port = await freePort();
  const minPort = 40000 + Math.floor(Math.random() * 200) * 100;
  const log = join(dir, 'turn.log');
  writeFileSync(join(dir, 'turnserver.conf'), [
    'listening-ip=127.0.0.1', `listening-port=${port}`, 'relay-ip=127.0.0.1',
    `min-port=${minPort}`, `max-port=${minPort + 99}`, 'realm=mxvoip.test',
    'use-auth-secret', `static-auth-secret=${secret}`, 'no-tls', 'no-dtls', 'fingerprint',
    // Loopback peers are refused by default (CREATE_PERMISSION 403); allowed for tests only.
    'allow-loopback-peers', 'no-cli', 'no-multicast-peers',
    `log-file=${log}`, 'simple-log', 'verbose', `pidfile=${join(dir, 'turn.pid')}`, `userdb=${join(dir, 'turndb')}`,
  ].join('\n') + '\n');
  const proc = spawn('turnserver', ['-c', join(dir, 'turnserver.conf')], { stdio: 'ignore' });
  const exited = new Promise((resolve) => proc.on('exit', resolve));
  // Ready once it accepts TCP on its port.
  const started = Date.now();
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = createServer();
      s.once('error', () => resolve(true));  // in use: coturn is listening
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(false)));
    });
    if (ok) break;
    if (Date.now() - started > 10000) throw new Error('coturn did not start');
    await new Promise((r) => setTimeout(r, 50));
  }
  const peerPort = await freePort();
  const peer = spawn('turnutils_peer', ['-p', String(peerPort), '-L', '127.0.0.1'], { stdio: 'ignore' });
  return {
    port,
    peerPort,
    log: () => (existsSync(log) ? readFileSync(log, 'utf8') : ''),
    async stop() {
      peer.kill('SIGTERM');
      proc.kill('SIGTERM');
      await exited;  // coturn takes over a second to exit
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

// Runs coturn's TURN client: allocate a relay with (username, password), then send `count`
// messages through it to the peer and back. Returns its exit status and output.
export function turnClient(coturn, username, password, { tcp = false, count = 10 } = {}) {
  need('turnutils_uclient');
  const args = ['-u', username, '-w', password, '-p', String(coturn.port), '-e', '127.0.0.1', '-r', String(coturn.peerPort), '-n', String(count), '-m', '1'];
  if (tcp) args.unshift('-t');
  args.push('127.0.0.1');
  const res = spawnSync('turnutils_uclient', args, { encoding: 'utf8', timeout: 30000 });
  const out = (res.stdout ?? '') + (res.stderr ?? '');
  const recv = /tot_recv_msgs=(\d+)/.exec(out.split('\n').reverse().find((l) => /tot_recv_msgs=/.test(l)) ?? '');
  const lost = /Total lost packets (\d+)/.exec(out);
  return { status: res.status, out, received: recv ? Number(recv[1]) : 0, lost: lost ? Number(lost[1]) : null };
}
