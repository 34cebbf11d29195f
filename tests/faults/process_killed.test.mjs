// One of three mxvoip-server processes sharing a PostgreSQL database killed (SIGKILL) under
// load, behind HAProxy: the clients carry on through the other two, retrying what failed with
// its transaction id; afterwards every acknowledged message is in the room exactly once,
// under the event id it was acknowledged with, nothing is there that no one was told was
// stored, every member's /sync on both survivors reads the same stream, and the change feed
// is pruned past the dead process.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, register, postgres, psql, changesPrunedUpTo, roomEvents, signal, syncedMessages } from '../lib/harness.mjs';
import { startHaproxy } from '../lib/haproxy.mjs';

test('a process killed under load: the others carry on, every acknowledged message once', async () => {
  const pg = postgres();
  const db = pg.createDatabase();
  // A process gone is let go by the pruning of the change feed after 5 s.
  const database = { backend: 'postgres', dsn: pg.dsn(db), shared: true, feed_grace: '5s' };
  const servers = [];
  for (let i = 0; i < 3; i++) servers.push(await startServer({ config: { database } }));
  const lb = await startHaproxy(servers);
  try {
    const clients = [];
    for (let i = 0; i < 4; i++) clients.push(await register(lb.url, `writer${i}`));
    const roomId = await clients[0].createRoom({ preset: 'public_chat' });
    for (const c of clients.slice(1)) assert.equal((await c.join(roomId)).status, 200);

    const acked = new Map(); // body -> event_id
    const failures = []; // what a client saw of the kill: statuses and errors
    let phase = 'before';
    const counts = { before: 0, after: 0 };
    const enoughBefore = signal();
    const enoughAfter = signal();
    let stop = false;
    // Each writer sends numbered messages one at a time; a message that failed (the process
    // died with it, or HAProxy found no process for it) is sent again with its transaction id.
    const writers = clients.map(async (c, ci) => {
      for (let n = 0; !stop; n++) {
        const body = `w${ci}-${n}`;
        for (let attempt = 0; ; attempt++) {
          assert.ok(attempt < 50, `${body} was never acknowledged: ${JSON.stringify(failures.slice(-5))}`);
          let res;
          try {
            res = await c.send(roomId, 'm.room.message', { msgtype: 'm.text', body }, `txn-${body}`);
          } catch (e) {
            failures.push(String(e.cause?.code ?? e.message));
            continue;
          }
          if (res.status === 200) {
            const earlier = acked.get(body);
            if (earlier) assert.equal(res.body.event_id, earlier, 'a retry got a different event id');
            acked.set(body, res.body.event_id);
            break;
          }
          // What a dead process's requests get from HAProxy.
          assert.ok([502, 503].includes(res.status), `${res.status} ${res.text}`);
          failures.push(res.status);
        }
        counts[phase]++;
        if (phase === 'before' && counts.before >= 40) enoughBefore.resolve();
        if (phase === 'after' && counts.after >= 80) enoughAfter.resolve();
      }
    });

    await enoughBefore.promise;
    await servers[1].kill();
    phase = 'after';
    await enoughAfter.promise;
    stop = true;
    await Promise.all(writers);
    assert.equal(servers[0].proc.exitCode, null);
    assert.equal(servers[2].proc.exitCode, null);
    // A message acknowledged by one survivor reaches the other through its change feed: each
    // is read once it shows a marker written after the last acknowledgement (it has then read
    // every message committed before it).
    const marker = await clients[0].at(servers[0].url).send(roomId, 'org.example.marker', {}, 'marker');
    assert.equal(marker.status, 200, marker.text);
    for (const s of [servers[0], servers[2]]) {
      const reader = clients[0].at(s.url);
      const shown = (body) => (body.rooms?.join?.[roomId]?.timeline?.events ?? []).some((e) => e.event_id === marker.body.event_id);
      let body = await reader.sync();
      while (!shown(body)) body = await reader.sync({ since: body.next_batch, timeout: '30000' });
    }

    // Every acknowledged message exactly once, under the event id it was acknowledged with,
    // as each survivor serves the room.
    for (const s of [servers[0], servers[2]]) {
      const reader = clients[1].at(s.url);
      const seen = new Map();
      for (const ev of await roomEvents(reader, roomId)) {
        if (ev.type !== 'm.room.message') continue;
        assert.ok(!seen.has(ev.content.body), `${ev.content.body} is in the room twice`);
        seen.set(ev.content.body, ev.event_id);
      }
      for (const [body, eventId] of acked) assert.equal(seen.get(body), eventId, `${body} is missing or changed on ${s.url}`);
      assert.equal(seen.size, acked.size, 'the room has messages no one was told were stored');
    }
    // Each member's incremental /syncs from the start, on each survivor, read that stream in
    // one order.
    const streams = [];
    for (const c of clients) for (const s of [servers[0], servers[2]]) streams.push(await syncedMessages(c.at(s.url), roomId));
    for (const s of streams) assert.deepEqual(s, streams[0]);
    assert.equal(streams[0].length, acked.size);
    // The dead process holds back the pruning of the change feed no longer than the grace.
    await changesPrunedUpTo(db, Number(psql(db, `SELECT last_event FROM rooms WHERE room_id = '${roomId}'`)));
  } finally {
    await lb.stop();
    for (const s of servers) await s.stop();
  }
});
