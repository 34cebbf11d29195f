// Several mxvoip-server processes on one PostgreSQL database (database.shared): a token made on
// one works on every other, a /sync parked on one process wakes for what another commits, and
// every event reaches every member exactly once, in the same order, whichever process each
// reads from.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { startServer, register, userHandle, postgres, roomEvents, psql as sql, changesPrunedUpTo as prunedUpTo } from '../lib/harness.mjs';
import { keyPair } from '../lib/e2e_keys.mjs';

const PROCESSES = 3;
// A process out of touch with the database for longer is no longer waited for by the pruning
// of the change feed: short here, so that the feed is pruned while the tests run.
const FEED_GRACE_S = 2;

// N processes sharing one new database (its name: `servers.db`).
async function startShared(n = PROCESSES, config = {}) {
  const pg = postgres();
  const db = pg.createDatabase();
  const database = { backend: 'postgres', dsn: pg.dsn(db), shared: true, feed_grace: `${FEED_GRACE_S}s` };
  // Push gateways here are on loopback.
  const push = { allow_private_addresses: true };
  const servers = [];
  for (let i = 0; i < n; i++) servers.push(await startServer({ config: { database, push, ...config } }));
  servers.db = db;
  return servers;
}

const servers = await startShared();
after(async () => {
  for (const s of servers) await s.stop();
});

test('a token made on one process works on the others', async () => {
  const alice = await register(servers[0].url, 'alice');
  for (const s of servers) {
    const res = await alice.at(s.url).call('GET', '/account/whoami');
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.user_id, alice.userId);
  }
});

test('a /sync parked on one process wakes for a message sent through another', async () => {
  const bob = await register(servers[0].url, 'bob');
  const carol = await register(servers[1].url, 'carol');
  const roomId = await bob.createRoom({ preset: 'public_chat' });
  assert.equal((await carol.join(roomId)).status, 200);
  // Carol reads from the third process, which has made nothing of this room.
  const reader = carol.at(servers[2].url);
  let since = (await reader.sync()).next_batch;
  const parked = reader.sync({ since, timeout: '30000' });
  const sent = await bob.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'across' });
  assert.equal(sent.status, 200, sent.text);
  let body = await parked;
  // The parked /sync may have woken for the join's echo first: read on until the message.
  for (let i = 0; i < 5 && !(body.rooms?.join?.[roomId]?.timeline?.events ?? []).some((e) => e.event_id === sent.body.event_id); i++) {
    since = body.next_batch;
    body = await reader.sync({ since, timeout: '30000' });
  }
  const timeline = body.rooms.join[roomId].timeline.events;
  assert.ok(timeline.some((e) => e.event_id === sent.body.event_id), JSON.stringify(body));
});

test('every member reads every event once, in one order, from every process', async () => {
  const members = [];
  for (let i = 0; i < PROCESSES; i++) members.push((await register(servers[i].url, `member${i}`)));
  const roomId = await members[0].createRoom({ preset: 'public_chat' });
  for (const m of members.slice(1)) assert.equal((await m.join(roomId)).status, 200);
  // Everyone sends through their own process, all at once.
  const sent = [];
  await Promise.all(
    members.map(async (m, i) => {
      for (let n = 0; n < 20; n++) {
        const res = await m.send(roomId, 'm.room.message', { msgtype: 'm.text', body: `m${i}-${n}` });
        assert.equal(res.status, 200, res.text);
        sent.push(res.body.event_id);
      }
    }),
  );
  // Each member's incremental /syncs on each process, from the start, see the same stream.
  const streams = [];
  for (const m of members) {
    for (const s of servers) {
      const user = m.at(s.url);
      const seen = [];
      let since;
      for (;;) {
        const body = await user.sync(since ? { since, timeout: '0' } : { filter: JSON.stringify({ room: { timeline: { limit: 1000 } } }) });
        const events = body.rooms?.join?.[roomId]?.timeline?.events ?? [];
        seen.push(...events.map((e) => e.event_id));
        if (since === body.next_batch || (since && events.length === 0)) break;
        since = body.next_batch;
      }
      streams.push(seen.filter((id) => sent.includes(id)));
    }
  }
  for (const s of streams) {
    assert.equal(new Set(s).size, s.length, 'an event was seen twice');
    assert.deepEqual(s, streams[0]);
  }
  assert.equal(streams[0].length, sent.length);
  // /messages agrees, on every process.
  for (const s of servers) {
    const ids = (await roomEvents(members[0].at(s.url), roomId)).map((e) => e.event_id).filter((id) => sent.includes(id));
    assert.deepEqual(ids, streams[0]);
  }
});

// Reads `user`'s /syncs on their process until `done(body)` says so; returns that body.
async function syncUntil(user, since, done) {
  for (;;) {
    const body = await user.sync({ since, timeout: '30000' });
    if (done(body)) return body;
    since = body.next_batch;
  }
}

// Returns once the process at `url` shows `user` the event in the room: the process has then
// read every change committed before it too.
async function seenOn(user, url, roomId, eventId) {
  const reader = user.at(url);
  const has = (body) => (body.rooms?.join?.[roomId]?.timeline?.events ?? []).some((e) => e.event_id === eventId);
  const initial = await reader.sync();
  if (!has(initial)) await syncUntil(reader, initial.next_batch, has);
}

test('a token signed out on one process is refused on every other', async () => {
  const dave = await register(servers[0].url, 'dave');
  const witness = await register(servers[1].url, 'witness');
  const roomId = await dave.createRoom({ preset: 'public_chat' });
  assert.equal((await witness.join(roomId)).status, 200);
  // The token is used, and so held, on every process.
  for (const s of servers) assert.equal((await dave.at(s.url).call('GET', '/account/whoami')).status, 200);
  const other = await register(servers[0].url, 'dave-writer');
  assert.equal((await other.join(roomId)).status, 200);
  const since = (await witness.at(servers[2].url).sync()).next_batch;
  assert.equal((await dave.call('POST', '/logout', { body: {} })).status, 200);
  // Something committed after the sign-out: once a process shows it, it has read the
  // sign-out too (the change feed is read in order).
  const marker = await other.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'after' });
  assert.equal(marker.status, 200, marker.text);
  for (const s of servers) {
    await syncUntil(witness.at(s.url), since, (b) => (b.rooms?.join?.[roomId]?.timeline?.events ?? []).some((e) => e.event_id === marker.body.event_id));
    const res = await dave.at(s.url).call('GET', '/account/whoami');
    assert.equal(res.status, 401, `${s.url}: ${res.status} ${res.text}`);
    assert.equal(res.body.errcode, 'M_UNKNOWN_TOKEN');
  }
});

test('account data and device lists written on one process reach the others', async () => {
  const erin = await register(servers[0].url, 'erin');
  const frank = await register(servers[1].url, 'frank');
  const roomId = await erin.createRoom({ preset: 'public_chat' });
  assert.equal((await frank.join(roomId)).status, 200);
  const path = `/user/${encodeURIComponent(erin.userId)}/account_data/org.example.colour`;
  const at1 = erin.at(servers[1].url);
  assert.equal((await erin.call('PUT', path, { body: { colour: 'red' } })).status, 200);
  // Read (and so held) on the second process, then changed through the first.
  const since = (await at1.sync()).next_batch;
  assert.deepEqual((await at1.call('GET', path)).body, { colour: 'red' });
  assert.equal((await erin.call('PUT', path, { body: { colour: 'blue' } })).status, 200);
  await syncUntil(at1, since, (b) => (b.account_data?.events ?? []).some((e) => e.type === 'org.example.colour'));
  assert.deepEqual((await at1.call('GET', path)).body, { colour: 'blue' });

  // A new display name, through the first process: the second, which holds Erin's account,
  // answers with it once it shows the member event the change made.
  const nameAt1 = async () => (await frank.call('GET', `/profile/${encodeURIComponent(erin.userId)}/displayname`)).body.displayname;
  assert.equal(await nameAt1(), 'erin');
  const nameSince = (await frank.sync()).next_batch;
  assert.equal((await erin.call('PUT', `/profile/${encodeURIComponent(erin.userId)}/displayname`, { body: { displayname: 'Erin E' } })).status, 200);
  await syncUntil(frank, nameSince, (b) => (b.rooms?.join?.[roomId]?.timeline?.events ?? []).some((e) => e.type === 'm.room.member' && e.content.displayname === 'Erin E'));
  assert.equal(await nameAt1(), 'Erin E');

  // Erin's new device keys: Frank, syncing on another process, learns her device list changed.
  const frankSince = (await frank.sync()).next_batch;
  const { pub, keyId, signObject } = keyPair(erin.userId, erin.deviceId);
  const keys = signObject({
    user_id: erin.userId,
    device_id: erin.deviceId,
    algorithms: ['m.olm.v1.curve25519-aes-sha2'],
    keys: { [`curve25519:${erin.deviceId}`]: pub, [keyId]: pub },
  });
  const upload = await erin.call('POST', '/keys/upload', { body: { device_keys: keys } });
  assert.equal(upload.status, 200, upload.text);
  const body = await syncUntil(frank, frankSince, (b) => (b.device_lists?.changed ?? []).includes(erin.userId));
  assert.ok(body.device_lists.changed.includes(erin.userId));
});

test('to-device messages, receipts and presence made on one process reach the others', async () => {
  const gina = await register(servers[0].url, 'gina');
  const hal = await register(servers[1].url, 'hal');
  const roomId = await gina.createRoom({ preset: 'public_chat' });
  assert.equal((await hal.join(roomId)).status, 200);
  let since = (await hal.sync()).next_batch;

  const sent = await gina.call('PUT', '/sendToDevice/org.example.ping/t1', {
    body: { messages: { [hal.userId]: { [hal.deviceId]: { n: 1 } } } },
  });
  assert.equal(sent.status, 200, sent.text);
  let body = await syncUntil(hal, since, (b) => (b.to_device?.events ?? []).length > 0);
  assert.deepEqual(body.to_device.events.map((e) => [e.sender, e.type, e.content.n]), [[gina.userId, 'org.example.ping', 1]]);
  // Fetched on the second process: the third, asked from there on, has nothing more.
  since = body.next_batch;
  const fromThird = await hal.at(servers[2].url).sync({ since, timeout: '0' });
  assert.deepEqual(fromThird.to_device?.events ?? [], []);

  const message = await gina.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'read me' });
  const receipt = await gina.call('POST', `/rooms/${encodeURIComponent(roomId)}/receipt/m.read/${encodeURIComponent(message.body.event_id)}`, { body: {} });
  assert.equal(receipt.status, 200, receipt.text);
  const receiptOf = (b) => (b.rooms?.join?.[roomId]?.ephemeral?.events ?? []).find((e) => e.type === 'm.receipt');
  body = await syncUntil(hal, since, receiptOf);
  assert.ok(receiptOf(body).content[message.body.event_id]['m.read'][gina.userId], JSON.stringify(receiptOf(body)));

  since = body.next_batch;
  const status = await gina.call('PUT', `/presence/${encodeURIComponent(gina.userId)}/status`, { body: { presence: 'online', status_msg: 'here' } });
  assert.equal(status.status, 200, status.text);
  const presenceOf = (b) => (b.presence?.events ?? []).find((e) => e.sender === gina.userId);
  body = await syncUntil(hal, since, presenceOf);
  assert.equal(presenceOf(body).content.status_msg, 'here');

  // Typing: who types through the first process, and then nobody.
  since = body.next_batch;
  const typingPath = `/rooms/${encodeURIComponent(roomId)}/typing/${encodeURIComponent(gina.userId)}`;
  const typingOf = (b) => (b.rooms?.join?.[roomId]?.ephemeral?.events ?? []).find((e) => e.type === 'm.typing');
  assert.equal((await gina.call('PUT', typingPath, { body: { typing: true, timeout: 30000 } })).status, 200);
  body = await syncUntil(hal, since, typingOf);
  assert.deepEqual(typingOf(body).content.user_ids, [gina.userId]);
  assert.equal((await gina.call('PUT', typingPath, { body: { typing: false } })).status, 200);
  body = await syncUntil(hal, body.next_batch, typingOf);
  assert.deepEqual(typingOf(body).content.user_ids, []);
});

test('a to-device message retried through other processes, one after another and all at once, is delivered once', async () => {
  const tess = await register(servers[0].url, 'tess');
  const uma = await register(servers[1].url, 'uma');
  const send = (s, txnId, n) =>
    tess.at(s.url).call('PUT', `/sendToDevice/org.example.ping/${txnId}`, { body: { messages: { [uma.userId]: { [uma.deviceId]: { n } } } } });
  let since = (await uma.sync()).next_batch;
  for (const s of servers) {
    const res = await send(s, 'one-by-one', 1);
    assert.equal(res.status, 200, res.text);
  }
  const racing = await Promise.all(servers.map((s) => send(s, 'at-once', 2)));
  for (const res of racing) assert.equal(res.status, 200, res.text);
  // A new transaction last: once it arrives, everything committed before it has.
  const last = await send(servers[2], 'last', 3);
  assert.equal(last.status, 200, last.text);
  const got = [];
  while (!got.includes(3)) {
    const body = await uma.sync({ since, timeout: '30000' });
    got.push(...(body.to_device?.events ?? []).map((e) => e.content.n));
    since = body.next_batch;
  }
  assert.deepEqual(got, [1, 2, 3]);
});

test('a device signed out on another process takes its queued to-device messages there too, even if it signs in again', async () => {
  const ora = await register(servers[0].url, 'ora', { deviceId: 'ORAPHONE' });
  const pia = await register(servers[0].url, 'pia');
  const roomId = await pia.createRoom({ preset: 'public_chat' });
  const witness = await register(servers[0].url, 'ora-witness');
  assert.equal((await witness.join(roomId)).status, 200);
  // Queued for the device on the first process, which holds the queue.
  const sent = await pia.call('PUT', '/sendToDevice/org.example.ping/before', {
    body: { messages: { [ora.userId]: { ORAPHONE: { n: 'before' } } } },
  });
  assert.equal(sent.status, 200, sent.text);
  const since = (await witness.sync()).next_batch;
  // Signed out, and in again with the same device id, through the second process.
  assert.equal((await ora.at(servers[1].url).call('POST', '/logout', { body: {} })).status, 200);
  const login = await ora.at(servers[1].url).call('POST', '/login', {
    body: { type: 'm.login.password', identifier: { type: 'm.id.user', user: 'ora' }, password: 'secret-ora', device_id: 'ORAPHONE' },
  });
  assert.equal(login.status, 200, login.text);
  // Once the first process shows what was committed after, it has fed the sign-out.
  const marker = await pia.at(servers[1].url).send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'after' });
  assert.equal(marker.status, 200, marker.text);
  await syncUntil(witness, since, (b) => (b.rooms?.join?.[roomId]?.timeline?.events ?? []).some((e) => e.event_id === marker.body.event_id));
  const fresh = await userHandle(servers[0].url, login.body).sync({ timeout: '0' });
  assert.deepEqual(fresh.to_device?.events ?? [], [], 'the new sign-in got what the old one had queued');
});

test('a process that was stopped while the others wrote catches up, in order, when it resumes', async () => {
  const ida = await register(servers[0].url, 'ida');
  const jon = await register(servers[1].url, 'jon');
  const roomId = await ida.createRoom({ preset: 'public_chat' });
  assert.equal((await jon.join(roomId)).status, 200);
  const filter = JSON.stringify({ room: { timeline: { limit: 5000 } } });
  let since = (await jon.sync({ filter })).next_batch;
  // More positions than the feed reads in one round go by while the second process sleeps.
  servers[1].proc.kill('SIGSTOP');
  const sent = [];
  try {
    for (let n = 0; n < 1100; n++) {
      const res = await ida.send(roomId, 'm.room.message', { msgtype: 'm.text', body: `b${n}` });
      assert.equal(res.status, 200, res.text);
      sent.push(res.body.event_id);
    }
  } finally {
    servers[1].proc.kill('SIGCONT');
  }
  const seen = [];
  while (seen.length < sent.length) {
    const body = await jon.sync({ filter, since, timeout: '30000' });
    const room = body.rooms?.join?.[roomId];
    assert.ok(!room?.timeline?.limited, 'the timeline was limited');
    seen.push(...(room?.timeline?.events ?? []).map((e) => e.event_id).filter((id) => sent.includes(id)));
    since = body.next_batch;
  }
  assert.deepEqual(seen, sent);
});

test('a message retried on other processes is sent once, and every attempt answers its event id', async () => {
  const kim = await register(servers[0].url, 'kim');
  const roomId = await kim.createRoom({ preset: 'public_chat' });
  const content = { msgtype: 'm.text', body: 'once' };
  // One after another: the retry reaches a process that never saw the first attempt.
  const first = await kim.send(roomId, 'm.room.message', content, 'retried-1');
  assert.equal(first.status, 200, first.text);
  const again = await kim.at(servers[1].url).send(roomId, 'm.room.message', content, 'retried-1');
  assert.equal(again.status, 200, again.text);
  assert.equal(again.body.event_id, first.body.event_id);
  // All at once, on every process.
  const racing = await Promise.all(servers.map((s) => kim.at(s.url).send(roomId, 'm.room.message', content, 'retried-2')));
  for (const res of racing) assert.equal(res.status, 200, res.text);
  assert.equal(new Set(racing.map((r) => r.body.event_id)).size, 1, JSON.stringify(racing.map((r) => r.body)));
  // The room holds one event of each transaction, on every process.
  for (const s of servers) {
    await seenOn(kim, s.url, roomId, racing[0].body.event_id);
    const bodies = (await roomEvents(kim.at(s.url), roomId)).filter((e) => e.type === 'm.room.message').map((e) => e.event_id);
    assert.deepEqual(bodies, [first.body.event_id, racing[0].body.event_id]);
  }
});

// A push gateway on loopback: every notification it is sent, and a wait for the ones to come.
async function gateway() {
  const g = { pushes: [], waiters: [] };
  g.server = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      g.pushes.push(JSON.parse(body).notification);
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end('{"rejected":[]}');
      g.waiters = g.waiters.filter((w) => !(g.pushes.some((p) => p.event_id === w.eventId) && (w.resolve(), true)));
    });
  });
  g.pushed = (eventId) =>
    g.pushes.some((p) => p.event_id === eventId) ? Promise.resolve() : new Promise((resolve) => g.waiters.push({ eventId, resolve }));
  await new Promise((resolve) => g.server.listen(0, '127.0.0.1', resolve));
  g.url = `http://127.0.0.1:${g.server.address().port}/_matrix/push/v1/notify`;
  return g;
}

test('a push leaves once, from the process that committed its event, for a pusher set on another', async () => {
  const gw = await gateway();
  try {
    const nina = await register(servers[0].url, 'nina');
    const omar = await register(servers[1].url, 'omar');
    const roomId = await nina.createRoom({ preset: 'trusted_private_chat', is_direct: true, invite: [omar.userId] });
    assert.equal((await omar.join(roomId)).status, 200);
    // Omar's phone sets its pusher through the third process, then says so in the room: once a
    // process shows that message, it has read the pusher too.
    const phone = omar.at(servers[2].url);
    const set = await phone.call('POST', '/pushers/set', {
      body: { kind: 'http', app_id: 'org.example.phone', pushkey: 'omar-phone', app_display_name: 'Phone', device_display_name: 'Phone', lang: 'en', data: { url: gw.url } },
    });
    assert.equal(set.status, 200, set.text);
    const said = await phone.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'pusher set' });
    assert.equal(said.status, 200, said.text);
    for (const s of servers) {
      await seenOn(nina, s.url, roomId, said.body.event_id);
      const shown = await omar.at(s.url).call('GET', '/pushers');
      assert.deepEqual(shown.body.pushers.map((p) => p.pushkey), ['omar-phone'], `process ${s.url}`);
    }
    // Nina writes through each process; each message is pushed.
    const sent = [];
    for (const s of servers) {
      const res = await nina.at(s.url).send(roomId, 'm.room.message', { msgtype: 'm.text', body: `via ${s.url}` });
      assert.equal(res.status, 200, res.text);
      sent.push(res.body.event_id);
    }
    for (const id of sent) await gw.pushed(id);
    // A process that pushed what another committed would have queued it before its own later
    // events: two rounds of one more message through each, and their pushes waited for, leave
    // no such push still to come.
    for (let round = 0; round < 2; round++)
      for (const s of servers) {
        const res = await nina.at(s.url).send(roomId, 'm.room.message', { msgtype: 'm.text', body: `marker ${round}` });
        assert.equal(res.status, 200, res.text);
        sent.push(res.body.event_id);
        await gw.pushed(res.body.event_id);
      }
    for (const id of sent) assert.equal(gw.pushes.filter((p) => p.event_id === id).length, 1, `pushes of ${id}: ${JSON.stringify(gw.pushes)}`);
    // Omar's own message is pushed to nobody.
    assert.ok(!gw.pushes.some((p) => p.event_id === said.body.event_id));
  } finally {
    gw.server.close();
  }
});

test('a pushkey another user takes through another process leaves the first on every process; the pusher limit holds across processes', async () => {
  const rita = await register(servers[0].url, 'rita');
  const sam = await register(servers[1].url, 'sam');
  const pusher = (pushkey) => ({
    body: { kind: 'http', app_id: 'org.example.app', pushkey, app_display_name: 'App', device_display_name: 'Phone', lang: 'en', data: { url: 'https://push.example.org/_matrix/push/v1/notify' } },
  });
  let res = await rita.call('POST', '/pushers/set', pusher('shared-phone'));
  assert.equal(res.status, 200, res.text);
  // The phone signs in to Sam's account: without append, the pushkey moves to him.
  res = await sam.call('POST', '/pushers/set', pusher('shared-phone'));
  assert.equal(res.status, 200, res.text);
  // Once a process shows a message written after both, it has read them.
  const roomId = await rita.createRoom({ preset: 'private_chat' });
  const marker = await rita.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'pushers set' });
  assert.equal(marker.status, 200, marker.text);
  for (const s of servers) {
    await seenOn(rita, s.url, roomId, marker.body.event_id);
    assert.deepEqual((await rita.at(s.url).call('GET', '/pushers')).body.pushers, [], s.url);
    assert.deepEqual((await sam.at(s.url).call('GET', '/pushers')).body.pushers.map((p) => p.pushkey), ['shared-phone'], s.url);
  }
  // limits.pushers_per_user (20): with 19 set, two more at once through two processes, and
  // only one is kept.
  for (let i = 0; i < 19; i++) {
    res = await rita.call('POST', '/pushers/set', pusher(`rita-${i}`));
    assert.equal(res.status, 200, res.text);
  }
  const both = await Promise.all([servers[1], servers[2]].map((s, i) => rita.at(s.url).call('POST', '/pushers/set', pusher(`rita-late-${i}`))));
  assert.deepEqual(both.map((r) => r.status).sort(), [200, 403], both.map((r) => r.text).join(' '));
  assert.equal(both.find((r) => r.status === 403).body.errcode, 'M_FORBIDDEN');
  // Read where it was kept: that process applied it before it answered.
  const keptBy = [servers[1], servers[2]][both.findIndex((r) => r.status === 200)];
  assert.equal((await rita.at(keptBy.url).call('GET', '/pushers')).body.pushers.length, 20);
});

test('a rate limit holds across the processes: each takes its share of the burst', async () => {
  // 6 messages at once, then one every 1000 s: 2 through each of 3 processes.
  const limited = await startShared(PROCESSES, { rc_message: { per_second: 0.001, burst_count: 6 } });
  try {
    // Each process counts the others within seconds of their start.
    await Promise.all(limited.map((s) => s.logged(/3 processes share the database/)));
    const pia = await register(limited[0].url, 'pia');
    const roomId = await pia.createRoom({ preset: 'private_chat' });
    const answers = [];
    for (const s of limited)
      for (let n = 0; n < 3; n++) answers.push(await pia.at(s.url).send(roomId, 'm.room.message', { msgtype: 'm.text', body: `${n}` }));
    const statuses = answers.map((r) => r.status);
    // The room's creation was the first action on the first process.
    assert.deepEqual(statuses, [200, 429, 429, 200, 200, 429, 200, 200, 429]);
    assert.equal(answers[2].body.errcode, 'M_LIMIT_EXCEEDED');
  } finally {
    for (const s of limited) await s.stop();
  }
});

test('aliases and the room directory made on one process reach the others; one alias made twice at once goes to one room', async () => {
  const quinn = await register(servers[0].url, 'quinn');
  const domain = quinn.userId.split(':')[1];
  const enc = encodeURIComponent;
  const alias = `#shared-a:${domain}`;
  const roomId = await quinn.createRoom({ preset: 'public_chat', room_alias_name: 'shared-a', visibility: 'public' });
  // Once a process shows a message written after them, it has read the alias and the
  // directory entry too.
  const seenEverywhere = async (eventId) => {
    for (const s of servers) await seenOn(quinn, s.url, roomId, eventId);
  };
  let marker = await quinn.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'made' });
  await seenEverywhere(marker.body.event_id);
  for (const s of servers) {
    const got = await quinn.at(s.url).call('GET', `/directory/room/${enc(alias)}`);
    assert.equal(got.status, 200, `${s.url}: ${got.text}`);
    assert.equal(got.body.room_id, roomId);
    const listed = await quinn.at(s.url).call('GET', '/publicRooms');
    assert.ok(listed.body.chunk.some((r) => r.room_id === roomId), `${s.url}: ${listed.text}`);
  }
  // Deleted through another process, and taken out of the directory through a third.
  assert.equal((await quinn.at(servers[1].url).call('DELETE', `/directory/room/${enc(alias)}`)).status, 200);
  assert.equal((await quinn.at(servers[2].url).call('PUT', `/directory/list/room/${enc(roomId)}`, { body: { visibility: 'private' } })).status, 200);
  marker = await quinn.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'deleted' });
  await seenEverywhere(marker.body.event_id);
  for (const s of servers) {
    assert.equal((await quinn.at(s.url).call('GET', `/directory/room/${enc(alias)}`)).status, 404, s.url);
    const listed = await quinn.at(s.url).call('GET', '/publicRooms');
    assert.ok(!listed.body.chunk.some((r) => r.room_id === roomId), `${s.url}: ${listed.text}`);
  }
  // One alias for two rooms, through two processes at once: one gets it, the other is told
  // no, and every process agrees on which.
  const other = await quinn.createRoom({ preset: 'public_chat' });
  const race = `#race:${domain}`;
  const [a, b] = await Promise.all([
    quinn.at(servers[0].url).call('PUT', `/directory/room/${enc(race)}`, { body: { room_id: roomId } }),
    quinn.at(servers[1].url).call('PUT', `/directory/room/${enc(race)}`, { body: { room_id: other } }),
  ]);
  assert.deepEqual([a.status, b.status].sort(), [200, 409], `${a.text} ${b.text}`);
  const winner = a.status === 200 ? roomId : other;
  marker = await quinn.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'raced' });
  await seenEverywhere(marker.body.event_id);
  for (const s of servers) assert.equal((await quinn.at(s.url).call('GET', `/directory/room/${enc(race)}`)).body.room_id, winner, s.url);
  // The same room_alias_name in two createRooms at once: one room gets it.
  const made = await Promise.all(
    [servers[1], servers[2]].map((s) => quinn.at(s.url).call('POST', '/createRoom', { body: { preset: 'public_chat', room_alias_name: 'race-create' } })),
  );
  assert.deepEqual(made.map((r) => r.status).sort(), [200, 400], made.map((r) => r.text).join(' '));
  assert.equal(made.find((r) => r.status === 400).body.errcode, 'M_ROOM_IN_USE');
});

test('one-time keys claimed through one process are counted so by the others', async () => {
  const iris = await register(servers[0].url, 'iris');
  const jack = await register(servers[1].url, 'jack');
  const roomId = await iris.createRoom({ preset: 'public_chat' });
  assert.equal((await jack.join(roomId)).status, 200);
  const { pub, signObject } = keyPair(iris.userId, iris.deviceId);
  const oneTime = {};
  for (let i = 0; i < 3; i++) oneTime[`signed_curve25519:K${i}`] = signObject({ key: pub });
  const up = await iris.call('POST', '/keys/upload', { body: { one_time_keys: oneTime } });
  assert.equal(up.status, 200, up.text);
  // Her counts, read (and so held) by the second process.
  const atSecond = iris.at(servers[1].url);
  const first = await atSecond.sync();
  assert.equal(first.device_one_time_keys_count?.signed_curve25519, 3, JSON.stringify(first.device_one_time_keys_count));
  // Jack takes one through the third process, then writes in the room: once the second
  // process shows that message, it has read the claim too.
  const claim = await jack.at(servers[2].url).call('POST', '/keys/claim', {
    body: { one_time_keys: { [iris.userId]: { [iris.deviceId]: 'signed_curve25519' } } },
  });
  assert.equal(claim.status, 200, claim.text);
  assert.equal(Object.keys(claim.body.one_time_keys[iris.userId][iris.deviceId]).length, 1);
  const said = await jack.at(servers[2].url).send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'claimed' });
  const after = await syncUntil(atSecond, first.next_batch, (b) =>
    (b.rooms?.join?.[roomId]?.timeline?.events ?? []).some((e) => e.event_id === said.body.event_id));
  const counts = after.device_one_time_keys_count ?? (await atSecond.sync({ since: after.next_batch, timeout: '0' })).device_one_time_keys_count;
  assert.equal(counts?.signed_curve25519, 2, JSON.stringify(counts));
});

test('a key backup made on one process is the backup on every other; two made at once get two numbers', async () => {
  const rosa = await register(servers[0].url, 'rosa');
  const ALGORITHM = 'm.megolm_backup.v1.curve25519-aes-sha2';
  const session = (fmi, tag) => ({
    first_message_index: fmi,
    forwarded_count: 0,
    is_verified: false,
    session_data: { ephemeral: `e-${tag}`, ciphertext: `c-${tag}`, mac: `m-${tag}` },
  });
  const made = await rosa.call('POST', '/room_keys/version', { body: { algorithm: ALGORITHM, auth_data: { public_key: 'k1' } } });
  assert.equal(made.status, 200, made.text);
  // Keys go in through the second process, into the version the first made.
  const put = await rosa.at(servers[1].url).call('PUT', '/room_keys/keys/!r:localhost/s1', { query: { version: made.body.version }, body: session(4, 'a') });
  assert.equal(put.status, 200, put.text);
  assert.equal(put.body.count, 1);
  // The third reads them, and keeps the better key whichever process wrote the worse one.
  const better = await rosa.at(servers[2].url).call('PUT', '/room_keys/keys/!r:localhost/s1', { query: { version: made.body.version }, body: session(1, 'b') });
  assert.equal(better.status, 200, better.text);
  const worse = await rosa.at(servers[0].url).call('PUT', '/room_keys/keys/!r:localhost/s1', { query: { version: made.body.version }, body: session(3, 'c') });
  assert.deepEqual(worse.body, better.body, 'a worse key changes neither count nor etag');
  const read = await rosa.at(servers[1].url).call('GET', '/room_keys/keys/!r:localhost/s1', { query: { version: made.body.version } });
  assert.equal(read.body.session_data.ciphertext, 'c-b');

  // Two new versions at once, through different processes: two numbers, and the later one is current.
  const both = await Promise.all(
    [servers[1], servers[2]].map((s, i) =>
      rosa.at(s.url).call('POST', '/room_keys/version', { body: { algorithm: ALGORITHM, auth_data: { public_key: `n${i}` } } })),
  );
  for (const r of both) assert.equal(r.status, 200, r.text);
  const numbers = both.map((r) => Number(r.body.version)).sort((a, b) => a - b);
  assert.notEqual(numbers[0], numbers[1], JSON.stringify(numbers));
  assert.ok(numbers[0] > Number(made.body.version), JSON.stringify(numbers));
  for (const s of servers) {
    const current = await rosa.at(s.url).call('GET', '/room_keys/version');
    assert.equal(current.body.version, String(numbers[1]), `current version on ${s.url}`);
  }
  // The first version no longer takes keys, on any process.
  const stale = await rosa.at(servers[2].url).call('PUT', '/room_keys/keys/!r:localhost/s2', { query: { version: made.body.version }, body: session(0, 'd') });
  assert.equal(stale.status, 403, stale.text);
  assert.equal(stale.body.errcode, 'M_WRONG_ROOM_KEYS_VERSION');
  assert.equal(stale.body.current_version, String(numbers[1]));
});

test('the change feed is pruned once every process has fed it, and only then', async () => {
  const lee = await register(servers[0].url, 'lee');
  const roomId = await lee.createRoom({ preset: 'public_chat' });
  const sent = await lee.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'fed everywhere' });
  assert.equal(sent.status, 200, sent.text);
  const top = Number(sql(servers.db, 'SELECT MAX(stream_id) FROM changes'));
  assert.ok(top > 0, 'nothing was written to the change feed');
  await prunedUpTo(servers.db, top);
  assert.equal(sql(servers.db, `SELECT COUNT(*) FROM changes WHERE stream_id <= ${top}`), '0');
  // Every process fed it: what it holds is what the others wrote.
  for (const s of servers) {
    const read = await lee.at(s.url).call('GET', `/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(sent.body.event_id)}`);
    assert.equal(read.status, 200, read.text);
  }
});

test('a process cut off from the database for longer than feed_grace exits when it comes back, and says why', async () => {
  const pair = await startShared(2);
  const [stays, cut] = pair;
  try {
    const max = await register(stays.url, 'max');
    const roomId = await max.createRoom({ preset: 'public_chat' });
    // The second process sleeps, and its sessions (its instance's locks) are ended: it is out of
    // touch, and after the grace the first prunes what it never fed.
    cut.proc.kill('SIGSTOP');
    const id = sql(pair.db, 'SELECT MAX(id) FROM instances');
    sql(pair.db, `SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND classid IN (28024, 28025) AND objid = ${id} AND objsubid = 2 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`);
    const sent = await max.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'not fed there' });
    assert.equal(sent.status, 200, sent.text);
    await prunedUpTo(pair.db, Number(sql(pair.db, `SELECT last_event FROM rooms WHERE room_id = '${roomId}'`)));
    cut.proc.kill('SIGCONT');
    const exit = await cut.exited;
    assert.notEqual(exit.code, 0, cut.log);
    assert.match(cut.log, /out of touch with the database for longer than database\.feed_grace/);
    // The other carries on.
    const again = await max.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'still here' });
    assert.equal(again.status, 200, again.text);
  } finally {
    cut.proc.kill('SIGCONT');
    await cut.stop();
    await stays.stop();
  }
});
