// Acknowledged data is never lost: SIGKILL in the middle of a stream of writes, restart on
// the same database, every event that got a 200 is there exactly once and a retried PUT
// returns the same event id. Also graceful shutdown on SIGTERM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { startServer, register, userHandle, api, makeDir, storedBytes, CS, roomEvents } from '../lib/harness.mjs';

test('SIGKILL mid-stream loses no acknowledged event and duplicates none', async () => {
  const dir = makeDir();
  try {
    let server = await startServer({ dir });
    const clients = [];
    for (let i = 0; i < 4; i++) clients.push(await register(server.url, `writer${i}`));
    const owner = clients[0];
    const roomId = await owner.createRoom({ preset: 'public_chat' });
    for (const c of clients.slice(1)) assert.equal((await c.join(roomId)).status, 200);

    const acked = new Map();  // txnId -> event_id
    const attempted = [];
    let stop = false;
    // The kill comes once enough writes were acknowledged, with more still in flight.
    let enough;
    const enoughAcked = new Promise((resolve) => (enough = resolve));
    const writers = clients.map(async (c, ci) => {
      for (let i = 0; !stop; i++) {
        const txn = `c${ci}-${i}`;
        attempted.push({ c, txn });
        try {
          const res = await c.send(roomId, 'm.call.candidates', { call_id: `call${ci}`, party_id: `p${ci}`, version: '1', candidates: [{ candidate: `cand ${i}`, sdpMid: '0' }] }, txn);
          if (res.status === 200) acked.set(txn, res.body.event_id);
          if (acked.size >= 60) enough();
        } catch {
          return;  // the connection died with the server
        }
      }
    });
    await enoughAcked;
    const { signal } = await server.kill();
    stop = true;
    await Promise.all(writers);
    assert.equal(signal, 'SIGKILL');
    assert.ok(acked.size > 50, `only ${acked.size} events were acknowledged before the kill`);

    server = await startServer({ dir });
    const reader = userHandle(server.url, { user_id: owner.userId, access_token: owner.token, device_id: owner.deviceId });
    const events = await roomEvents(reader, roomId);
    const counts = new Map();
    for (const e of events) counts.set(e.event_id, (counts.get(e.event_id) ?? 0) + 1);
    for (const [txn, id] of acked) assert.equal(counts.get(id), 1, `acknowledged ${txn} (${id}) appears ${counts.get(id) ?? 0} times`);
    for (const [id, count] of counts) assert.equal(count, 1, `${id} appears ${count} times`);

    // Each writer's events are in the order it sent them.
    for (let ci = 0; ci < clients.length; ci++) {
      const seq = events.filter((e) => e.type === 'm.call.candidates' && e.content.call_id === `call${ci}`).map((e) => Number(e.content.candidates[0].candidate.split(' ')[1]));
      assert.deepEqual(seq, [...seq].sort((a, b) => a - b));
    }

    // Retrying acknowledged transactions after the restart returns the same ids and adds nothing.
    let retried = 0;
    for (const { c, txn } of attempted.slice(-8)) {
      const again = await userHandle(server.url, { user_id: c.userId, access_token: c.token, device_id: c.deviceId })
        .send(roomId, 'm.call.candidates', { call_id: 'retry', party_id: 'p', version: '1', candidates: [] }, txn);
      assert.equal(again.status, 200);
      if (acked.has(txn)) {
        assert.equal(again.body.event_id, acked.get(txn), `retry of ${txn}`);
        retried++;
      }
    }
    assert.ok(retried > 0, 'at least one acknowledged transaction was retried');
    const after = await roomEvents(reader, roomId);
    const retryEvents = after.filter((e) => e.content.call_id === 'retry');
    assert.ok(retryEvents.length <= 8 - retried, 'acknowledged retries created no new events');
    await server.stop();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('SIGTERM answers a parked /sync, finishes, and the database reopens cleanly', async () => {
  const dir = makeDir();
  try {
    let server = await startServer({ dir, config: { log_level: 'debug' } });
    const u = await register(server.url, 'sleeper');
    // set_presence=offline: the sync itself changes nothing (no presence), so it parks.
    const base = await u.sync({ set_presence: 'offline' });
    const parked = u.sync({ since: base.next_batch, timeout: '60000', set_presence: 'offline' });
    await server.logged(new RegExp(`/sync of @sleeper:localhost waits up to 60000 ms for something after ${base.next_batch}(?!\\d)`));
    const started = Date.now();
    const { code } = await server.stop();
    const res = await parked;
    assert.equal(code, 0);
    assert.ok(Date.now() - started < 5000, 'shutdown did not wait for the sync timeout');
    assert.equal(res.next_batch, base.next_batch);
    assert.match(server.log, /received SIGTERM/);
    assert.match(server.log, /database closed/);
    server = await startServer({ dir });
    const again = await api(server.url, 'GET', `${CS}/account/whoami`, { token: u.token });
    assert.equal(again.body.user_id, '@sleeper:localhost', 'tokens survive a restart');
    await server.stop();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('secrets never reach the log or the database', async () => {
  const server = await startServer({ config: { log_level: 'debug' } });
  const u = await register(server.url, 'secretive', { password: 'hunter2-password' });
  await api(server.url, 'GET', `${CS}/account/whoami`, { query: { access_token: u.token } });
  await api(server.url, 'POST', `${CS}/login`, { body: { type: 'm.login.password', user: 'secretive', password: 'wrong-password-xyz' } });
  const whileRunning = storedBytes(server.dir);
  assert.ok(whileRunning.includes('@secretive:localhost'), 'the account is in the database');
  assert.ok(whileRunning.includes('$argon2id$'), 'passwords are stored as Argon2id hashes');
  assert.ok(!whileRunning.includes(u.token), 'access token stored in clear');
  assert.ok(!whileRunning.includes(u.token.slice(4)), 'access token stored in clear');
  assert.ok(!whileRunning.includes('hunter2-password'), 'password stored in clear');
  await server.stop();
  assert.ok(!server.log.includes(u.token), 'access token logged');
  assert.ok(!server.log.includes('hunter2-password'), 'password logged');
  assert.ok(!server.log.includes('wrong-password-xyz'), 'password logged');
  assert.match(server.log, /whoami -> 200/, 'requests are logged at debug level');
});
