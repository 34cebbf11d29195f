// A shared server stopped while a write is in flight: the write is answered once it commits,
// the process exits, and what it was told is stored. (A write that committed after the change
// feed stopped used to wait for the feed for ever, and so did the process.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { startServer, register, postgres, psql, userHandle, PG_BIN } from '../lib/harness.mjs';

const PSQL = `${PG_BIN}/psql`;

test('a write in flight when a shared process stops is answered, stored, and the process exits', async () => {
  const pg = postgres();
  const db = pg.createDatabase();
  const config = { database: { backend: 'postgres', dsn: pg.dsn(db), shared: true } };
  const server = await startServer({ config });
  const alice = await register(server.url, 'alice');
  const roomId = await alice.createRoom({ preset: 'private_chat' });

  // Another session holds the room's row: the message's transaction waits for it.
  const holder = spawn(PSQL, ['-h', pg.dir, '-U', 'mxvoip', '-d', db, '-X', '-q', '-v', 'ON_ERROR_STOP=1'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let holderOut = '';
  holder.stdout.on('data', (c) => (holderOut += c));
  holder.stderr.on('data', (c) => (holderOut += c));
  const said = (text) => new Promise((resolve) => {
    const check = () => holderOut.includes(text) && (holder.stdout.off('data', check), resolve());
    holder.stdout.on('data', check);
    check();
  });
  holder.stdin.write(`BEGIN;\nSELECT 1 FROM rooms WHERE room_id = '${roomId}' FOR UPDATE;\n\\echo held\n`);
  await said('held');
  const sent = alice.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'in flight' }, 'shutdown-1');
  // PostgreSQL tells of a lock wait only when asked.
  let waiting = false;
  for (let i = 0; i < 600 && !waiting; i++) {
    waiting = psql(db, 'SELECT count(*) FROM pg_locks WHERE NOT granted') !== '0';
    if (!waiting) await new Promise((r) => setImmediate(r));
  }
  assert.ok(waiting, 'the message never waited for the room');

  // The shutdown begins (the change feed stops) with the write still waiting; then it goes on.
  server.proc.kill('SIGTERM');
  await server.logged(/shutting down: \d+ connections to finish/);
  holder.stdin.end('ROLLBACK;\n');
  await once(holder, 'exit');

  const res = await sent;
  assert.equal(res.status, 200, res.text);
  const exit = await Promise.race([server.exited, new Promise((r) => setTimeout(() => r('still running'), 60000).unref())]);
  assert.notEqual(exit, 'still running', `the process did not exit:\n${server.log}`);

  const again = await startServer({ config });
  try {
    const reader = userHandle(again.url, { user_id: alice.userId, access_token: alice.token, device_id: alice.deviceId });
    const messages = await reader.call('GET', `/rooms/${encodeURIComponent(roomId)}/messages`, { query: { dir: 'b', limit: '5' } });
    assert.ok(messages.body.chunk.some((e) => e.event_id === res.body.event_id), JSON.stringify(messages.body));
  } finally {
    await again.stop();
    await server.stop();
  }
});
