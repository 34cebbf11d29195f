// Test fixture for real calls: coturn (use-auth-secret, loopback), an mxvoip-server that
// hands out its credentials, and `mxvoip` client processes whose --json lines are collected.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer, register, postgres } from './harness.mjs';
import { startCoturn } from './coturn.mjs';

export const CLI_BIN = process.env.MXVOIP_CLI;
if (!CLI_BIN || !existsSync(CLI_BIN)) {
  throw new Error('MXVOIP_CLI must name the built mxvoip binary (run the tests with scripts/test)');
}

// coturn + mxvoip-server configured for it. TURN over TCP as well as UDP: libnice (inside
// webrtcbin) cannot reach a loopback TURN server over UDP on these machines.
// `serverConfig` adds to (or overrides) the homeserver's configuration.
//
// With MXVOIP_TEST_PROCESSES=<n> (ctest's scale.interop.calls), n mxvoip-server processes
// share one PostgreSQL database, and each client the rig starts (client(), or urlOf() for a
// js client) is given the next process in turn: the two ends of a call sync from, and send
// through, different processes.
export async function startCallRig({ users = ['alice', 'bob'], serverConfig = {} } = {}) {
  const secret = randomBytes(24).toString('hex');
  const coturn = await startCoturn({ secret });
  const processes = Number(process.env.MXVOIP_TEST_PROCESSES ?? 1);
  const shared = processes > 1 ? { database: { backend: 'postgres', dsn: postgres().dsn(postgres().createDatabase()), shared: true } } : {};
  const servers = [];
  for (let i = 0; i < processes; i++)
    servers.push(await startServer({
      config: {
        turn_uris: [`turn:127.0.0.1:${coturn.port}?transport=udp`, `turn:127.0.0.1:${coturn.port}?transport=tcp`],
        turn_shared_secret: secret,
        turn_user_lifetime: '1h',
        rc_turn: { per_second: 1000, burst_count: 1000 },
        ...shared,
        ...serverConfig,
      },
    }));
  const server = servers[0];
  let turn = 0;
  const accounts = {};
  for (const name of users) {
    const password = `pw-${name}-${randomBytes(4).toString('hex')}`;
    const session = await register(server.url, name, { password });
    accounts[name] = { user_id: session.userId, password, handle: session };
  }
  const stateDir = mkdtempSync(join(tmpdir(), 'mxvoip-cli-'));
  const running = new Set();
  return {
    coturn,
    server,
    servers,
    accounts,
    // The address the next client uses: the next process in turn (the only one, usually).
    urlOf() {
      return servers[turn++ % servers.length].url;
    },
    // A direct chat between two users, both joined, in both users' m.direct; with
    // `encrypted`, m.room.encryption (Megolm) in its initial state, as Element makes them.
    async directRoom(a, b, { encrypted = false } = {}) {
      const A = accounts[a].handle;
      const B = accounts[b].handle;
      const initial_state = encrypted ? [{ type: 'm.room.encryption', state_key: '', content: { algorithm: 'm.megolm.v1.aes-sha2' } }] : [];
      const room = await A.createRoom({ preset: 'trusted_private_chat', is_direct: true, invite: [B.userId], initial_state });
      const joined = await B.join(room);
      if (joined.status !== 200) throw new Error(`join: ${joined.status} ${joined.text}`);
      for (const [me, other] of [[A, B], [B, A]]) {
        const res = await me.call('PUT', `/user/${encodeURIComponent(me.userId)}/account_data/m.direct`, { body: { [other.userId]: [room] } });
        if (res.status !== 200) throw new Error(`m.direct: ${res.status} ${res.text}`);
      }
      return room;
    },
    // A new device of `name` (a fresh login), as { userId, token, deviceId }.
    async login(name) {
      const res = await fetch(`${server.url}/_matrix/client/v3/login`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ type: 'm.login.password', identifier: { type: 'm.id.user', user: accounts[name].user_id }, password: accounts[name].password }),
      });
      const body = await res.json();
      if (res.status !== 200) throw new Error(`login ${name}: ${res.status} ${JSON.stringify(body)}`);
      return { userId: body.user_id, token: body.access_token, deviceId: body.device_id };
    },
    // The room's events, oldest first, as `name` reads them.
    async timeline(name, room) {
      const res = await accounts[name].handle.call('GET', `/rooms/${encodeURIComponent(room)}/messages`, { query: { dir: 'f', limit: '1000' } });
      if (res.status !== 200) throw new Error(`messages: ${res.status} ${res.text}`);
      return res.body.chunk;
    },
    // Starts `mxvoip --json ... <args>` as `name` (a fresh login: a new device each time).
    client(name, args) {
      const { user_id, password } = accounts[name];
      return this.cli(name, ['--homeserver', this.urlOf(), '--user', user_id, '--state-dir', stateDir, '--json', '-v', ...args], { MXVOIP_PASSWORD: password });
    },
    // Starts `mxvoip` with exactly `argv`, `env` added to the environment.
    cli(name, argv, env = {}) {
      const proc = spawn(CLI_BIN, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
      running.add(proc);
      const events = [];
      let stdout = '';
      let stderr = '';
      proc.stdout.on('data', (chunk) => {
        stdout += chunk;
        let nl;
        while ((nl = stdout.indexOf('\n')) >= 0) {
          const line = stdout.slice(0, nl);
          stdout = stdout.slice(nl + 1);
          if (line.trim()) events.push(JSON.parse(line));
        }
      });
      proc.stderr.on('data', (chunk) => (stderr += chunk));
      const exited = new Promise((resolve) => proc.on('exit', (code, signal) => {
        running.delete(proc);
        resolve({ code, signal });
      }));
      return {
        name,
        proc,
        events,
        exited,
        get stderr() {
          return stderr;
        },
        summary: () => events.find((e) => e.event === 'summary'),
        summaries: () => events.filter((e) => e.event === 'summary'),
        // Resolves when an event matching `pred` has been printed.
        async waitFor(pred, timeoutMs = 30000) {
          const start = Date.now();
          for (;;) {
            const found = events.find(pred);
            if (found) return found;
            if (Date.now() - start > timeoutMs) throw new Error(`${name}: timed out waiting; stderr:\n${stderr}`);
            await new Promise((r) => setTimeout(r, 20));
          }
        },
        describe() {
          return `${name} events:\n${events.map((e) => JSON.stringify(e)).join('\n')}\n${name} stderr:\n${stderr}`;
        },
      };
    },
    // Kills the `mxvoip` processes still running: a failed test must not leave one behind
    // to answer (or refuse as busy) the next test's calls.
    async killClients() {
      const exits = [...running].map((proc) => new Promise((resolve) => {
        proc.once('exit', resolve);
        proc.kill('SIGKILL');
      }));
      await Promise.all(exits);
    },
    async stop() {
      for (const proc of running) proc.kill('SIGKILL');
      for (const s of servers) await s.stop();
      await coturn.stop();
      rmSync(stateDir, { recursive: true, force: true });
    },
  };
}

// Waits for a client to exit, killing it after `timeoutMs`.
export async function exitOf(client, timeoutMs = 60000) {
  const timer = setTimeout(() => client.proc.kill('SIGKILL'), timeoutMs);
  const res = await client.exited;
  clearTimeout(timer);
  return res;
}
