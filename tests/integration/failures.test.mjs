// What the server does when it cannot store what it was asked to: a full disk under load,
// and a second process writing to its database.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, register, userHandle, makeDir, SERVER_BIN, CS, api } from '../lib/harness.mjs';

const enc = encodeURIComponent;

async function allEvents(user, roomId) {
  const out = [];
  let from = 's0';
  for (;;) {
    const res = await user.call('GET', `/rooms/${enc(roomId)}/messages`, { query: { dir: 'f', limit: '500', from } });
    assert.equal(res.status, 200, res.text);
    out.push(...res.body.chunk);
    if (!res.body.end) return out;
    from = res.body.end;
  }
}

// A small tmpfs in a mount namespace of its own, held open by a process the servers join
// with nsenter. As root the namespace is made directly; otherwise in a user namespace.
async function smallDisk(dir, size) {
  const asRoot = process.getuid() === 0;
  const userns = asRoot ? [] : ['--user', '--map-root-user'];
  for (const tool of ['unshare', 'nsenter', 'mount'])
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) throw new Error(`${tool} is missing: run scripts/setup (util-linux, mount)`);
  const holder = spawn('unshare', [...userns, '--mount', '--propagation', 'private', 'sh', '-c',
    'mount -t tmpfs -o size="$1" tmpfs "$0" && echo mounted && exec sleep 3600', dir, size], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  holder.stderr.on('data', (c) => (out += c));
  await new Promise((resolve, reject) => {
    holder.stdout.on('data', (c) => ((out += c), /mounted/.test(out) && resolve()));
    holder.on('exit', (code) => reject(new Error(`cannot mount a tmpfs in a new mount namespace (exit ${code}): ${out}`)));
  });
  const enter = ['nsenter', '-t', String(holder.pid), '--mount', ...(asRoot ? [] : ['--user', '--preserve-credentials'])];
  const inside = (script) => {
    const r = spawnSync(enter[0], [...enter.slice(1), '--', 'sh', '-c', script, 'sh', dir], { encoding: 'utf8' });
    assert.equal(r.status, 0, `${script}: ${r.stderr}`);
  };
  return {
    wrap: [...enter, '--'],
    // Takes space away with a file of its own, and gives it back (no remount: that needs
    // more privilege than a user namespace has).
    take(kib) {
      inside(`head -c ${kib * 1024} /dev/zero > "$1/filler"`);
    },
    giveBack() {
      inside('rm "$1/filler"');
    },
    close() {
      holder.kill('SIGKILL');
    },
  };
}

test('a full disk: nothing acknowledged or served is lost, and the server exits non-zero', async () => {
  const dir = makeDir();
  const db = join(dir, 'db');
  mkdirSync(db);
  const disk = await smallDisk(db, '4m');
  disk.take(2048);  // 2 MB left for the load to fill
  try {
    const config = { database: { backend: 'sqlite', path: join(db, 'homeserver.db') } };
    let server = await startServer({ dir, config, wrap: disk.wrap });
    const writers = [];
    for (let i = 0; i < 4; i++) writers.push(await register(server.url, `filler${i}`));
    const roomId = await writers[0].createRoom({ preset: 'public_chat' });
    for (const w of writers.slice(1)) assert.equal((await w.join(roomId)).status, 200);

    // Writers fill the disk with events while two readers /sync: every event id that was
    // acknowledged or served is recorded.
    const acknowledged = new Set();
    const served = new Set();
    const statuses = new Map();
    let running = true;
    const padding = 'x'.repeat(2000);
    const writing = writers.map(async (w, wi) => {
      for (let i = 0; running; i++) {
        let res;
        try {
          res = await w.send(roomId, 'm.room.message', { msgtype: 'm.text', body: `${wi}/${i} ${padding}` }, `w${wi}-${i}`);
        } catch {
          return;  // the server has gone
        }
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        if (res.status === 200) acknowledged.add(res.body.event_id);
        else assert.equal(res.status, 503, `unexpected ${res.status}: ${res.text}`);
        if (res.status === 503) assert.equal(res.body.errcode, 'M_UNKNOWN');
      }
    });
    const reading = writers.slice(0, 2).map(async (r) => {
      let since;
      while (running) {
        let res;
        try {
          res = await r.call('GET', '/sync', { query: since ? { since, timeout: '1000' } : {} });
        } catch {
          return;
        }
        if (res.status !== 200) continue;
        since = res.body.next_batch;
        for (const e of res.body.rooms?.join?.[roomId]?.timeline?.events ?? []) served.add(e.event_id);
      }
    });
    const { code } = await server.exited;
    running = false;
    await Promise.all([...writing, ...reading]);
    assert.notEqual(code, 0, 'the server must exit non-zero when it cannot store what it accepted');
    assert.match(server.log, /database write failed: .*full/i, 'the log names the cause');
    assert.ok(acknowledged.size > 50, `only ${acknowledged.size} events before the disk was full`);
    assert.ok((statuses.get(503) ?? 0) >= 1, `the request whose commit failed was answered 503: ${[...statuses]}`);

    // Space comes back; the restarted server has every event it acknowledged or served.
    disk.giveBack();
    server = await startServer({ dir, config, wrap: disk.wrap });
    const reader = userHandle(server.url, { user_id: writers[0].userId, access_token: writers[0].token, device_id: writers[0].deviceId });
    const stored = new Set((await allEvents(reader, roomId)).map((e) => e.event_id));
    for (const id of acknowledged) assert.ok(stored.has(id), `acknowledged ${id} is missing after the restart`);
    for (const id of served) assert.ok(stored.has(id), `served ${id} is missing after the restart`);
    const after = await reader.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'space again' });
    assert.equal(after.status, 200, after.text);
    await server.stop();
  } finally {
    disk.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('user add refuses while a server owns the database, and works once it has stopped', async () => {
  const dir = makeDir();
  try {
    const server = await startServer({ dir, config: { enable_registration: false } });
    const pwFile = join(dir, 'pw');
    writeFileSync(pwFile, 'correct horse\n');
    const configPath = join(dir, 'homeserver.yaml');
    const add = () => spawnSync(SERVER_BIN, ['--config', configPath, 'user', 'add', '@fern:localhost', '--password-file', pwFile], { encoding: 'utf8' });
    const busy = add();
    assert.equal(busy.status, 1, busy.stderr);
    assert.match(busy.stderr, /in use by another process/);
    // The running server goes on undisturbed, and does not know the account.
    const login = await api(server.url, 'POST', `${CS}/login`, { body: { type: 'm.login.password', user: 'fern', password: 'correct horse' } });
    assert.equal(login.status, 403);
    assert.equal((await server.stop()).code, 0);
    const free = add();
    assert.equal(free.status, 0, free.stderr);

    // Nor can a second server start on a database in use.
    const first = await startServer({ dir, config: { enable_registration: false } });
    await assert.rejects(startServer({ dir, config: { enable_registration: false } }), /in use by another process/);
    const fern = await api(first.url, 'POST', `${CS}/login`, { body: { type: 'm.login.password', user: 'fern', password: 'correct horse' } });
    assert.equal(fern.status, 200, fern.text);
    await first.stop();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
