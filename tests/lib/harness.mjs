// Test fixture: runs the real mxvoip-server binary on a free loopback port with a
// temporary database, and a small HTTP helper to talk to it.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, existsSync, chownSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

// Absolute: a server started inside another mount namespace (nsenter) starts from its root.
export const SERVER_BIN = process.env.MXVOIP_SERVER && resolve(process.env.MXVOIP_SERVER);
if (!SERVER_BIN || !existsSync(SERVER_BIN)) {
  throw new Error('MXVOIP_SERVER must name the built mxvoip-server binary (run the tests with scripts/test)');
}

// Settings every test server gets unless a test overrides them: generous rate limits and
// the cheapest password hash, so tests measure behaviour rather than Argon2.
const TEST_DEFAULTS = {
  server_name: 'localhost',
  listen: ['127.0.0.1:0'],
  enable_registration: true,
  password_hash_cost: 'min',
  rc_message: { per_second: 10000, burst_count: 10000 },
  rc_login: {
    address: { per_second: 10000, burst_count: 10000 },
    account: { per_second: 10000, burst_count: 10000 },
    failed_attempts: { per_second: 10000, burst_count: 10000 },
  },
  rc_registration: { per_second: 10000, burst_count: 10000 },
  log_level: 'info',
};

function yaml(value, indent = '') {
  if (Array.isArray(value)) return value.map((v) => `\n${indent}- ${JSON.stringify(v)}`).join('');
  if (value !== null && typeof value === 'object') {
    return Object.entries(value)
      .map(([k, v]) => (typeof v === 'object' && v !== null ? `\n${indent}${k}:${yaml(v, indent + '  ')}` : `\n${indent}${k}: ${JSON.stringify(v)}`))
      .join('');
  }
  return ` ${JSON.stringify(value)}`;
}

export function makeDir(prefix = 'mxvoip-test-') {
  return mkdtempSync(join(tmpdir(), prefix));
}

// MXVOIP_TEST_DATABASE=postgres runs the servers on PostgreSQL: one cluster per test process,
// started on first use (initdb in a temporary directory, a private unix socket, no TCP; as the
// postgres user when run as root) and stopped when the process ends; a database per test
// directory, so a restart on the same directory finds its data.
export const PG_BIN = '/usr/lib/postgresql/15/bin';
let pgCluster = null;
function postgresCluster() {
  if (pgCluster) return pgCluster;
  if (!existsSync(`${PG_BIN}/initdb`)) throw new Error(`PostgreSQL 15 is missing (no ${PG_BIN}/initdb): run scripts/setup`);
  const dir = makeDir('mxvoip-pg-');
  const data = join(dir, 'data');
  let prefix = [];
  if (process.getuid() === 0) {
    const id = (flag) => Number(execFileSync('id', [flag, 'postgres']).toString().trim());
    chownSync(dir, id('-u'), id('-g'));
    prefix = ['runuser', '-u', 'postgres', '--'];
  }
  const run = (program, args) => {
    const argv = [...prefix, `${PG_BIN}/${program}`, ...args];
    execFileSync(argv[0], argv.slice(1), { stdio: 'pipe' });
  };
  run('initdb', ['-D', data, '-U', 'mxvoip', '--auth=trust', '-E', 'UTF8', '--no-sync']);
  run('pg_ctl', ['-D', data, '-l', join(dir, 'server.log'), '-w', '-o', `-c listen_addresses='' -k ${dir}`, 'start']);
  process.on('exit', () => {
    try {
      run('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop']);
    } catch {
      // already gone
    }
    rmSync(dir, { recursive: true, force: true });
  });
  let n = 0;
  pgCluster = {
    dir,
    dsn: (db) => `host=${dir} port=5432 user=mxvoip dbname=${db}`,
    // As an operator's restart does it: connections are ended, new ones refused until start().
    // mode 'immediate' is a crash instead: no checkpoint, recovery from the WAL at start, and
    // unlogged tables emptied.
    stop(mode = 'fast') {
      run('pg_ctl', ['-D', data, '-m', mode, '-w', 'stop']);
    },
    start() {
      run('pg_ctl', ['-D', data, '-l', join(dir, 'server.log'), '-w', '-o', `-c listen_addresses='' -k ${dir}`, 'start']);
    },
    createDatabase() {
      const name = `t${process.pid}_${n++}`;
      execFileSync(`${PG_BIN}/createdb`, ['-h', dir, '-U', 'mxvoip', name], { stdio: 'pipe' });
      return name;
    },
  };
  return pgCluster;
}

// The test process's PostgreSQL cluster (started on first use), for tests that need one
// whatever MXVOIP_TEST_DATABASE says: { dir, dsn(db), createDatabase(), stop(), start() }.
export function postgres() {
  return postgresCluster();
}

// One value read from a database of the test process's cluster, as an operator would with psql.
export function psql(db, query) {
  return execFileSync(`${PG_BIN}/psql`, ['-h', postgresCluster().dir, '-U', 'mxvoip', '-d', db, '-X', '-At', '-c', query], { encoding: 'utf8' }).trim();
}

// Resolves once a shared database's change feed is pruned up to `position` (every process
// not gone fed it), or throws after a minute, far past the seconds it takes (each process
// tells what it fed every 5 s, and a process gone is let go after database.feed_grace).
export async function changesPrunedUpTo(db, position) {
  const deadline = Date.now() + 60000;
  while (Number(psql(db, 'SELECT upto FROM changes_pruned')) < position) {
    if (Date.now() > deadline) throw new Error(`the change feed was not pruned up to ${position}; instances: ${psql(db, 'SELECT id, fed, seen FROM instances')}`);
    await new Promise((r) => setImmediate(r));
  }
}

function defaultDatabase(dir) {
  if (process.env.MXVOIP_TEST_DATABASE !== 'postgres') return { backend: 'sqlite', path: join(dir, 'homeserver.db') };
  const cluster = postgresCluster();
  const marker = join(dir, 'postgres-database');
  if (!existsSync(marker)) writeFileSync(marker, cluster.createDatabase());
  return { backend: 'postgres', dsn: cluster.dsn(readFileSync(marker, 'utf8')) };
}

// Everything the database of the server in `dir` holds, as text: SQLite's files (with the
// write-ahead log) byte for byte, or a dump of the PostgreSQL database.
export function storedBytes(dir) {
  const marker = join(dir, 'postgres-database');
  if (existsSync(marker)) {
    return execFileSync(`${PG_BIN}/pg_dump`, ['-h', pgCluster.dir, '-U', 'mxvoip', readFileSync(marker, 'utf8')]).toString('latin1');
  }
  return ['homeserver.db', 'homeserver.db-wal']
    .filter((f) => existsSync(join(dir, f)))
    .map((f) => readFileSync(join(dir, f)).toString('latin1'))
    .join('');
}

export function writeConfig(dir, overrides = {}) {
  // MXVOIP_TEST_SMALL_CACHE=<n> holds no more than n of each in memory: rooms, users' keys,
  // accounts, access tokens, users' memberships, to-device queues, push rules and pushers, and
  // rooms' receipts (ctest's small_cache.*: each read again from the database whenever another
  // was used in between).
  const small = Number(process.env.MXVOIP_TEST_SMALL_CACHE);
  const caches = small ? { caches: { rooms: small, keys: small, accounts: small, tokens: small, to_device: small, receipts: small, memberships: small, push_rules: small, pushers: small } } : {};
  const config = { ...TEST_DEFAULTS, ...caches, database: defaultDatabase(dir), ...overrides };
  const path = join(dir, 'homeserver.yaml');
  writeFileSync(path, yaml(config).trimStart() + '\n');
  return path;
}

// In a sanitizer build (scripts/test runs the suite under ASan+UBSan and TSan), a report in
// the server's output fails the test that ran it, whatever the exit status.
const SANITIZER_REPORT = /(ERROR: (Address|Leak)Sanitizer|WARNING: ThreadSanitizer|runtime error:)/;
export function sanitizerCheck(log) {
  const m = SANITIZER_REPORT.exec(log);
  if (m) throw new Error(`the server reported a sanitizer finding:\n${log.slice(Math.max(0, m.index - 200), m.index + 4000)}`);
}

// Every server started through this module is killed when the test process ends, also when a
// failed assertion skipped its stop().
const running = new Set();
process.on('exit', () => {
  for (const proc of running) proc.kill('SIGKILL');
});

// Starts the server and resolves once it listens. `dir` may be reused to restart on the same
// database (or use the server's restart()); `wrap` is a command the server runs under
// (nsenter into a mount namespace, say).
export async function startServer({ dir, config = {}, args = [], wrap = [], ownDir = !dir } = {}) {
  dir = dir ?? makeDir();
  const configPath = writeConfig(dir, config);
  const argv = [...wrap, SERVER_BIN, '--config', configPath, ...args];
  const proc = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(proc);
  proc.on('exit', () => running.delete(proc));
  let log = '';
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  proc.stderr.on('data', (c) => (log += c));
  proc.stdout.on('data', (c) => (log += c));
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${log}`)), 15000);
    const onData = () => {
      const m = /listening on (http:\/\/[^\s]+)/.exec(log);
      if (m && /mxvoip-server ready/.test(log)) {
        clearTimeout(timer);
        proc.stderr.off('data', onData);
        resolve(m[1]);
      }
    };
    proc.stderr.on('data', onData);
    proc.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening:\n${log}`));
    });
  });
  const server = {
    url,
    dir,
    proc,
    exited,
    get log() {
      return log;
    },
    // Resolves once the server's log matches `pattern` (at once if it already does).
    logged(pattern) {
      return new Promise((resolve) => {
        const check = () => {
          if (!pattern.test(log)) return false;
          proc.stderr.off('data', check);
          proc.stdout.off('data', check);
          resolve();
          return true;
        };
        if (check()) return;
        // After the listeners above that append to the log.
        proc.stderr.on('data', check);
        proc.stdout.on('data', check);
      });
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      const result = await exited;
      if (ownDir) rmSync(dir, { recursive: true, force: true });
      sanitizerCheck(log);
      return result;
    },
    async kill() {
      proc.kill('SIGKILL');
      return exited;
    },
    // Stops the server (SIGTERM, as an operator would) and starts it again on the same
    // database and configuration; resolves to the new server.
    async restart() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await exited;
      sanitizerCheck(log);
      return startServer({ dir, config, args, wrap, ownDir });
    },
  };
  return server;
}

// One HTTP request; returns { status, body (parsed JSON or null), text, headers }.
export async function api(base, method, path, { token, body, raw, headers = {}, query } = {}) {
  let url = base + path;
  if (query) url += '?' + new URLSearchParams(query).toString();
  const h = { ...headers };
  if (token) h.Authorization = `Bearer ${token}`;
  let payload;
  if (raw !== undefined) payload = raw;
  else if (body !== undefined) payload = JSON.stringify(body);
  if (payload !== undefined && !h['Content-Type']) h['Content-Type'] = 'application/json';
  const res = await fetch(url, { method, headers: h, body: payload });
  const text = await res.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  return { status: res.status, body: parsed, text, headers: res.headers };
}

const CS = '/_matrix/client/v3';

// A logged-in user with helpers for the common calls.
export async function register(base, username, { password = 'secret-' + username, deviceId } = {}) {
  const res = await api(base, 'POST', `${CS}/register`, {
    body: { username, password, device_id: deviceId, auth: { type: 'm.login.dummy' } },
  });
  if (res.status !== 200) throw new Error(`register ${username}: ${res.status} ${res.text}`);
  return userHandle(base, res.body);
}

export function userHandle(base, { user_id, access_token, device_id }) {
  let txn = 0;
  const call = (method, path, opts = {}) => api(base, method, CS + path, { token: access_token, ...opts });
  return {
    userId: user_id,
    token: access_token,
    deviceId: device_id,
    call,
    // The same user and device on another server base URL (a restarted server's, say).
    at(otherBase) {
      return userHandle(otherBase, { user_id, access_token, device_id });
    },
    async createRoom(body) {
      const res = await call('POST', '/createRoom', { body });
      if (res.status !== 200) throw new Error(`createRoom: ${res.status} ${res.text}`);
      return res.body.room_id;
    },
    async send(roomId, type, content, txnId = `t${Date.now()}-${txn++}`) {
      return call('PUT', `/rooms/${encodeURIComponent(roomId)}/send/${encodeURIComponent(type)}/${encodeURIComponent(txnId)}`, { body: content });
    },
    async join(roomId) {
      return call('POST', `/join/${encodeURIComponent(roomId)}`, { body: {} });
    },
    // set_presence=offline unless asked: a test's own /syncs do not make presence changes
    // that wake everyone's parked /syncs (tests/integration/presence.test.mjs asks).
    async sync(query = {}) {
      const res = await call('GET', '/sync', { query: { set_presence: 'offline', ...query } });
      if (res.status !== 200) throw new Error(`sync: ${res.status} ${res.text}`);
      return res.body;
    },
  };
}

// Every event of the room the user can see, oldest first, through /messages pages.
export async function roomEvents(user, roomId) {
  const out = [];
  let from = 's0';
  for (;;) {
    const res = await user.call('GET', `/rooms/${encodeURIComponent(roomId)}/messages`, { query: { dir: 'f', limit: '500', from } });
    if (res.status !== 200) throw new Error(`/messages: ${res.status} ${res.text}`);
    out.push(...res.body.chunk);
    if (!res.body.end) return out;
    from = res.body.end;
  }
}

export { CS };


// A promise with its resolve function, for "wait until this happens".
export function signal() {
  let resolve;
  const promise = new Promise((r) => (resolve = r));
  return { promise, resolve };
}

// The ids of the room's messages as the user's /syncs read them: the first, then incremental
// ones until the room has nothing more (timelines up to 1000 events a response).
export async function syncedMessages(user, roomId) {
  const filter = JSON.stringify({ room: { timeline: { limit: 1000 } } });
  let body = await user.sync({ filter });
  const ids = [];
  for (;;) {
    const room = body.rooms?.join?.[roomId];
    ids.push(...(room?.timeline?.events ?? []).filter((e) => e.type === 'm.room.message').map((e) => e.event_id));
    if (!room) return ids;
    body = await user.sync({ filter, since: body.next_batch, timeout: '0' });
  }
}
