// What the server does when it cannot store what it was asked to: a full disk under load,
// and a second process writing to its database.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, register, userHandle, makeDir, SERVER_BIN, CS, api, roomEvents } from '../lib/harness.mjs';

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

test('a full disk: the server stays up, answers 503 while full, loses nothing, and carries on once there is space', async () => {
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
    // acknowledged or served is recorded. A 503 is retried after its Retry-After, a message
    // with its own transaction id, as clients do.
    const acknowledged = new Map();  // body -> event id
    const served = new Set();
    let ackedSinceSpace = -1;
    let onRecovered;
    const recovered = new Promise((resolve) => (onRecovered = resolve));
    let running = true;
    const backOff = async (res) => {
      assert.equal(res.status, 503, `unexpected ${res.status}: ${res.text}`);
      assert.equal(res.body.errcode, 'M_UNKNOWN');
      assert.ok(Number(res.headers.get('retry-after')) >= 1, 'a 503 without Retry-After');
      await new Promise((r) => setTimeout(r, res.body.retry_after_ms));
    };
    const padding = 'x'.repeat(2000);
    const writing = writers.map(async (w, wi) => {
      for (let i = 0; running; i++) {
        const body = `${wi}/${i} ${padding}`;
        for (;;) {
          const res = await w.send(roomId, 'm.room.message', { msgtype: 'm.text', body }, `w${wi}-${i}`);
          if (res.status !== 200) {
            await backOff(res);
            continue;
          }
          const earlier = acknowledged.get(body);
          if (earlier) assert.equal(res.body.event_id, earlier, 'a retry got a different event id');
          acknowledged.set(body, res.body.event_id);
          break;
        }
        if (ackedSinceSpace >= 0 && ++ackedSinceSpace >= 20) onRecovered();
      }
    });
    const reading = writers.slice(0, 2).map(async (r) => {
      let since;
      while (running) {
        const res = await r.call('GET', '/sync', { query: since ? { since, timeout: '1000' } : {} });
        if (res.status !== 200) {
          await backOff(res);
          continue;
        }
        since = res.body.next_batch;
        for (const e of res.body.rooms?.join?.[roomId]?.timeline?.events ?? []) served.add(e.event_id);
      }
    });
    // The disk fills (every client may then be waiting in a request admitted before: a new
    // one is what learns of it).
    await server.logged(/the database is unavailable/);
    assert.equal(server.proc.exitCode, null, 'the server exited when the disk was full');
    assert.equal((await api(server.url, 'GET', '/health')).status, 503);
    const refused = await writers[0].send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'while full' }, 'probe');
    assert.equal(refused.status, 503, refused.text);
    assert.equal(refused.body.errcode, 'M_UNKNOWN');
    assert.ok(Number(refused.headers.get('retry-after')) >= 1, 'a 503 without Retry-After');
    assert.ok(acknowledged.size > 50, `only ${acknowledged.size} events before the disk was full`);

    // Space comes back: the writes that waited commit, and the load carries on by itself.
    ackedSinceSpace = 0;
    disk.giveBack();
    await recovered;
    running = false;
    await Promise.all([...writing, ...reading]);
    assert.equal(server.proc.exitCode, null);
    assert.equal((await api(server.url, 'GET', '/health')).status, 200);
    assert.match(server.log, /the database is unavailable \(.*full/i, 'the log names the cause');
    assert.match(server.log, /the database is back after/);

    // Every event acknowledged or served is stored exactly once, also after a restart.
    for (let round = 0; round < 2; round++) {
      const reader = userHandle(server.url, { user_id: writers[0].userId, access_token: writers[0].token, device_id: writers[0].deviceId });
      const events = await roomEvents(reader, roomId);
      const stored = new Set(events.map((e) => e.event_id));
      assert.equal(stored.size, events.length, 'an event is stored twice');
      for (const id of acknowledged.values()) assert.ok(stored.has(id), `acknowledged ${id} is missing`);
      for (const id of served) assert.ok(stored.has(id), `served ${id} is missing`);
      const messages = events.filter((e) => e.type === 'm.room.message').length;
      assert.equal(messages, acknowledged.size, 'the room has messages no one was told were stored');
      if (round === 0) server = await server.restart();
    }
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
