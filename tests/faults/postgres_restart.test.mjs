// PostgreSQL stopped and started again under load: the server stays up, what needs the
// database gets 503 M_UNKNOWN with Retry-After while it is gone (and /health says so), the
// writes that were in flight wait and then commit, and once it is back every client carries
// on. Afterwards every acknowledged message is in the room exactly once, and a retry with the
// same transaction id was answered with the same event.
//
// With MXVOIP_TEST_PROCESSES=<n> (ctest's scale.faults.postgres_restart), n processes share the
// database, each writer sends through its own, and PostgreSQL crashes instead (an immediate
// stop: recovery from the log, the processes' unlogged registrations gone): every process
// learns of the outage from its change feed within a second and refuses new requests with 503
// (the writes in flight wait: their commits cannot be read back until the database returns),
// every process stays up, and each member's /sync on each process reads the same stream
// afterwards.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, register, api, postgres, roomEvents, signal, syncedMessages } from '../lib/harness.mjs';

const enc = encodeURIComponent;
const PROCESSES = Number(process.env.MXVOIP_TEST_PROCESSES ?? 1);

test('a restart of PostgreSQL under load: 503 meanwhile, nothing lost, all recover', async () => {
  const pg = postgres();
  const db = pg.createDatabase();
  // Shared, the change feed is pruned with a short grace: after the restart each process is
  // back long before another prunes what it has not fed (and none exits for want of it).
  const database = { backend: 'postgres', dsn: pg.dsn(db), shared: PROCESSES > 1, ...(PROCESSES > 1 ? { feed_grace: '5s' } : {}) };
  const servers = [];
  for (let i = 0; i < PROCESSES; i++) servers.push(await startServer({ config: { database } }));
  const server = servers[0];
  let pgStopped = false;
  try {
    const clients = [];
    for (let i = 0; i < 3; i++) clients.push(await register(servers[i % PROCESSES].url, `writer${i}`));
    const roomId = await clients[0].createRoom({ preset: 'public_chat' });
    for (const c of clients.slice(1)) assert.equal((await c.join(roomId)).status, 200);

    const acked = new Map(); // body -> event_id
    const unavailable = []; // the 503 responses seen
    let phase = 'before';
    const counts = { before: 0, after: 0 };
    const enoughBefore = signal();
    const firstOutage = signal();
    const enoughAfter = signal();
    let stop = false;

    // Each writer sends numbered messages, one at a time, and retries a message with the same
    // transaction id until it is acknowledged, after the Retry-After a 503 asks for.
    const writers = clients.map(async (c, ci) => {
      for (let n = 0; !stop; n++) {
        const body = `w${ci}-${n}`;
        for (;;) {
          const res = await c.send(roomId, 'm.room.message', { msgtype: 'm.text', body }, `txn-${body}`);
          if (res.status === 200) {
            const earlier = acked.get(body);
            if (earlier) assert.equal(res.body.event_id, earlier, 'a retry got a different event id');
            acked.set(body, res.body.event_id);
            break;
          }
          assert.equal(res.status, 503, `${res.status} ${res.text}`);
          assert.equal(res.body.errcode, 'M_UNKNOWN');
          assert.ok(Number(res.headers.get('retry-after')) >= 1, 'a 503 without Retry-After');
          unavailable.push(res);
          firstOutage.resolve();
          await new Promise((r) => setTimeout(r, res.body.retry_after_ms));
        }
        counts[phase]++;
        if (phase === 'before' && counts.before >= 30) enoughBefore.resolve();
        if (phase === 'after' && counts.after >= 30) enoughAfter.resolve();
      }
    });

    await enoughBefore.promise;
    pg.stop(PROCESSES > 1 ? 'immediate' : 'fast');
    pgStopped = true;
    if (PROCESSES > 1) await Promise.all(servers.map((s) => s.logged(/the change feed cannot read the database/)));
    else await firstOutage.promise;
    // Down: the processes are still there, and the load balancer's check and a read say 503.
    for (const s of servers) {
      assert.equal(s.proc.exitCode, null, 'a server exited while the database was down');
      const health = await api(s.url, 'GET', '/health');
      assert.equal(health.status, 503, health.text);
      assert.equal((await api(s.url, 'GET', '/_matrix/client/versions')).status, 200);
    }
    const read = await clients[0].call('GET', `/rooms/${enc(roomId)}/messages`, { query: { dir: 'b', limit: '5' } });
    assert.equal(read.status, 503, read.text);
    const refused = await clients[0].send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'refused' }, 'txn-refused');
    assert.equal(refused.status, 503, refused.text);
    assert.ok(Number(refused.headers.get('retry-after')) >= 1, 'a 503 without Retry-After');

    phase = 'after';
    pg.start();
    pgStopped = false;
    await enoughAfter.promise;
    stop = true;
    await Promise.all(writers);

    for (const s of servers) {
      assert.equal(s.proc.exitCode, null);
      assert.equal((await api(s.url, 'GET', '/health')).status, 200);
    }
    if (PROCESSES === 1) assert.ok(unavailable.length > 0);
    // Every acknowledged message exactly once, under the event id it was acknowledged with.
    const seen = new Map();
    for (const ev of await roomEvents(clients[1], roomId)) {
      if (ev.type !== 'm.room.message') continue;
      assert.ok(!seen.has(ev.content.body), `${ev.content.body} is in the room twice`);
      seen.set(ev.content.body, ev.event_id);
    }
    for (const [body, eventId] of acked) assert.equal(seen.get(body), eventId, `${body} is missing or changed`);
    assert.equal(seen.size, acked.size, 'the room has messages no one was told were stored');
    if (PROCESSES > 1) {
      // Every member's incremental /syncs on every process read that stream, in one order.
      const streams = [];
      for (const c of clients) for (const s of servers) streams.push(await syncedMessages(c.at(s.url), roomId));
      for (const ids of streams) assert.deepEqual(ids, streams[0]);
      assert.equal(streams[0].length, acked.size);
    }
    for (const s of servers) {
      if (PROCESSES === 1) {
        assert.match(s.log, /the database is unavailable/);
        assert.match(s.log, /the database is back after \d+ ms/);
      } else {
        assert.match(s.log, /the change feed reads the database again/);
      }
      const { code } = await s.stop();
      assert.equal(code, 0);
    }
  } finally {
    if (pgStopped) pg.start();
    for (const s of servers) await s.stop();
  }
});
