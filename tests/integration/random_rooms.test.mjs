// Randomised concurrency: users send, join, leave, invite, kick, ban, unban and change power
// levels in shared rooms at random, many requests at once. Afterwards every member's view of
// each room is the same ordered stream, the creator's incremental /syncs saw exactly that
// stream (no gap, no duplicate), every acknowledged event is in it, every event in it was
// allowed by the auth rules under the state before it, and the room's current state equals a
// replay of the stream. A failing seed prints the command that replays it
// (MXVOIP_SEED=<seed>). With MXVOIP_TEST_PROCESSES=<n> (ctest's scale.random_rooms), n
// processes share one PostgreSQL database and each user goes through one of them.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, register, roomEvents, postgres } from '../lib/harness.mjs';
import { seeded } from '../lib/random.mjs';

const SEED = Number(process.env.MXVOIP_SEED ?? Math.floor(Math.random() * 2 ** 31));
const PROCESSES = Number(process.env.MXVOIP_TEST_PROCESSES ?? 1);
const WAVES = 30;
const PER_WAVE = 8;
const enc = encodeURIComponent;

const servers = [];
before(async () => {
  if (PROCESSES === 1) return servers.push(await startServer());
  const pg = postgres();
  const database = { backend: 'postgres', dsn: pg.dsn(pg.createDatabase()), shared: true };
  for (let i = 0; i < PROCESSES; i++) servers.push(await startServer({ config: { database } }));
});
after(async () => {
  for (const s of servers) await s.stop();
});

// The auth rules for what this test sends, as the spec states them for a room whose
// creator has 100, everyone else the users_default of 0, kick/ban 50 and power levels 100.
function allowed(state, ev) {
  const membership = (u) => state.members.get(u) ?? 'leave';
  const level = (u) => state.power.users?.[u] ?? state.power.users_default ?? 0;
  const sender = ev.sender;
  if (ev.type === 'm.room.message') return membership(sender) === 'join';
  if (ev.type === 'm.room.power_levels') return membership(sender) === 'join' && level(sender) >= 100;
  if (ev.type !== 'm.room.member') return false;
  const target = ev.state_key;
  const next = ev.content.membership;
  const was = membership(target);
  if (next === 'join') return sender === target && was !== 'ban' && (state.joinRule === 'public' || was === 'invite' || was === 'join');
  if (membership(sender) !== 'join' && !(next === 'leave' && sender === target)) return false;
  if (next === 'invite') return was !== 'join' && was !== 'ban' && level(sender) >= (state.power.invite ?? 0);
  if (next === 'leave' && sender === target) return was === 'join' || was === 'invite';
  if (next === 'leave') {
    // An unban (/unban: only of someone banned), or a kick (/kick: only of a member).
    if (was === 'ban') return level(sender) >= (state.power.ban ?? 50) && level(target) < level(sender);
    return (was === 'join' || was === 'invite') && level(sender) >= (state.power.kick ?? 50) && level(target) < level(sender);
  }
  if (next === 'ban') return level(sender) >= (state.power.ban ?? 50) && level(target) < level(sender);
  return false;
}

function replay(events) {
  const state = { members: new Map(), power: {}, joinRule: 'invite' };
  const refused = [];
  for (const ev of events) {
    if (ev.type === 'm.room.create') continue;
    const isState = ev.state_key !== undefined;
    const checked = ['m.room.message', 'm.room.member', 'm.room.power_levels'].includes(ev.type);
    // createRoom's own first events (the creator's join, the first power levels) are
    // admitted by the rules for a room's creation.
    const setup =
      (ev.type === 'm.room.member' && state.members.size === 0) ||
      (ev.type === 'm.room.power_levels' && state.power.users === undefined);
    if (checked && !setup && !allowed(state, ev)) refused.push(ev);
    if (!isState) continue;
    if (ev.type === 'm.room.member') state.members.set(ev.state_key, ev.content.membership);
    if (ev.type === 'm.room.power_levels') state.power = ev.content;
    if (ev.type === 'm.room.join_rules') state.joinRule = ev.content.join_rule;
  }
  return { state, refused };
}

test(`random membership, power and messages at once: one consistent stream (MXVOIP_SEED=${SEED})`, async () => {
  const random = seeded(SEED);
  const pick = (list) => list[Math.floor(random() * list.length)];
  try {
    const alice = await register(servers[0].url, `creator${SEED}`);
    const others = [];
    for (let i = 0; i < 5; i++) others.push(await register(servers[(i + 1) % servers.length].url, `member${SEED}x${i}`));
    const everyone = [alice, ...others];
    const rooms = [];
    for (let i = 0; i < 2; i++) rooms.push(await alice.createRoom({ preset: 'public_chat' }));
    for (const roomId of rooms) for (const u of others) assert.equal((await u.join(roomId)).status, 200);

    // The creator's incremental /syncs, collected while everything happens.
    const filter = JSON.stringify({ room: { timeline: { limit: 1000 } } });
    const synced = new Map(rooms.map((r) => [r, []]));
    let since = (await alice.sync({ filter })).next_batch;
    const markers = new Set();
    let onMarkers;
    const markersSeen = new Promise((resolve) => (onMarkers = resolve));
    let last = null;  // the final messages' ids, once sent
    const seenLast = () => last && last.every((id) => markers.has(id)) && onMarkers();
    let stopSync = false;
    let failed = false;
    const collector = (async () => {
      while (!stopSync && !failed) {
        const body = await alice.sync({ filter, since, timeout: '1000' });
        since = body.next_batch;
        for (const [roomId, room] of Object.entries(body.rooms?.join ?? {})) {
          assert.ok(!room.timeline.limited, `seed ${SEED}: an incremental /sync of ${roomId} was limited`);
          for (const ev of room.timeline.events) {
            synced.get(roomId)?.push(ev.event_id);
            if (ev.content?.marker) markers.add(ev.event_id);
          }
        }
        seenLast();
      }
    })();

    const acknowledged = new Map(rooms.map((r) => [r, new Set()]));
    let txn = 0;
    const act = async () => {
      const roomId = pick(rooms);
      const user = pick(others);
      const target = pick(others);
      const path = (what) => `/rooms/${enc(roomId)}/${what}`;
      const kind = pick(['send', 'send', 'send', 'join', 'leave', 'invite', 'kick', 'ban', 'unban', 'power']);
      let res;
      if (kind === 'send') res = await user.send(roomId, 'm.room.message', { msgtype: 'm.text', body: `m${txn}` }, `r${SEED}-${txn++}`);
      else if (kind === 'join') res = await user.join(roomId);
      else if (kind === 'leave') res = await user.call('POST', path('leave'), { body: {} });
      else if (kind === 'invite') res = await user.call('POST', path('invite'), { body: { user_id: target.userId } });
      else if (kind === 'kick') res = await user.call('POST', path('kick'), { body: { user_id: target.userId } });
      else if (kind === 'ban') res = await user.call('POST', path('ban'), { body: { user_id: target.userId } });
      else if (kind === 'unban') res = await alice.call('POST', path('unban'), { body: { user_id: target.userId } });
      else {
        // The creator gives or takes a moderator's level, from the levels as it reads them.
        const now = await alice.call('GET', path('state/m.room.power_levels/'));
        assert.equal(now.status, 200, now.text);
        const users = { ...now.body.users, [target.userId]: random() < 0.5 ? 50 : 0 };
        res = await alice.call('PUT', path('state/m.room.power_levels/'), { body: { ...now.body, users } });
      }
      assert.ok([200, 403].includes(res.status), `seed ${SEED}: ${kind} answered ${res.status} ${res.text}`);
      if (res.status === 200 && res.body.event_id) acknowledged.get(roomId).add(res.body.event_id);
    };
    try {
      for (let wave = 0; wave < WAVES; wave++) await Promise.all(Array.from({ length: PER_WAVE }, act));
    } catch (e) {
      failed = true;
      await collector.catch(() => {});
      throw e;
    }

    // A last message in each room: once the collector has seen both, it has seen everything.
    const sent = [];
    for (const roomId of rooms) sent.push((await alice.send(roomId, 'm.room.message', { msgtype: 'm.text', body: 'end', marker: true })).body.event_id);
    last = sent;
    seenLast();
    await markersSeen;
    stopSync = true;
    await collector;

    for (const roomId of rooms) {
      const stream = await roomEvents(alice, roomId);
      const ids = stream.map((e) => e.event_id);
      assert.equal(new Set(ids).size, ids.length, `seed ${SEED}: an event appears twice in ${roomId}`);
      for (const id of acknowledged.get(roomId)) assert.ok(ids.includes(id), `seed ${SEED}: acknowledged ${id} is missing`);
      // The creator's /syncs saw the same events in the same order from where they began.
      const fromSync = synced.get(roomId);
      assert.deepEqual(fromSync, ids.slice(ids.length - fromSync.length), `seed ${SEED}: /sync and /messages differ in ${roomId}`);
      // Every member reads the same stream.
      for (const u of everyone) {
        const membership = (await alice.call('GET', `/rooms/${enc(roomId)}/state/m.room.member/${enc(u.userId)}`)).body.membership;
        if (membership !== 'join') continue;
        assert.deepEqual((await roomEvents(u, roomId)).map((e) => e.event_id), ids, `seed ${SEED}: ${u.userId} reads another stream`);
      }
      // Each event was allowed when it was made, and the current state is the replay's.
      const { state, refused } = replay(stream);
      assert.deepEqual(refused.map((e) => `${e.type} ${e.sender} ${e.state_key ?? ''} ${JSON.stringify(e.content)}`), [], `seed ${SEED}: events the auth rules refuse`);
      const current = await alice.call('GET', `/rooms/${enc(roomId)}/state`);
      assert.equal(current.status, 200);
      for (const ev of current.body) {
        if (ev.type === 'm.room.member') assert.equal(ev.content.membership, state.members.get(ev.state_key), `seed ${SEED}: ${ev.state_key}'s membership`);
        if (ev.type === 'm.room.power_levels') assert.deepEqual(ev.content, state.power, `seed ${SEED}: power levels`);
      }
    }
  } catch (e) {
    const processes = PROCESSES === 1 ? '' : `MXVOIP_TEST_PROCESSES=${PROCESSES} `;
    console.error(`replay with: MXVOIP_SEED=${SEED} ${processes}ctest --test-dir build -R random_rooms --output-on-failure`);
    throw e;
  }
});
