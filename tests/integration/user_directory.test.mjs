// POST /user_directory/search (users.yaml): who a user can find, how results are ranked and
// cut, and the errors. Element's "Start chat" dialog searches here.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, api, register, CS } from '../lib/harness.mjs';

let server;
let u; // name -> user handle
before(async () => {
  server = await startServer();
  u = {};
  for (const name of ['alice', 'bob', 'carol', 'dave', 'eve', 'frank', 'bobcat']) u[name] = await register(server.url, name);
  // alice and bob share a private room; carol sits in a public room; eve and frank share a
  // private room; dave and bobcat are in no room.
  const shared = await u.alice.createRoom({ preset: 'private_chat', invite: [u.bob.userId] });
  assert.equal((await u.bob.join(shared)).status, 200);
  await u.carol.createRoom({ preset: 'public_chat' });
  const hidden = await u.eve.createRoom({ preset: 'private_chat', invite: [u.frank.userId] });
  assert.equal((await u.frank.join(hidden)).status, 200);
  const name = await u.bob.call('PUT', `/profile/${encodeURIComponent(u.bob.userId)}/displayname`, { body: { displayname: 'Robert Tables' } });
  assert.equal(name.status, 200);
});
after(async () => server.stop());

const search = (who, body) => u[who].call('POST', '/user_directory/search', { body });
const ids = (res) => res.body.results.map((r) => r.user_id);

test('finds those who share a room and those in public rooms, nobody else', async () => {
  assert.deepEqual(ids(await search('alice', { search_term: 'bob' })), [u.bob.userId]);
  assert.deepEqual(ids(await search('alice', { search_term: 'carol' })), [u.carol.userId]);
  for (const hidden of ['dave', 'eve', 'frank', 'bobcat']) {
    const res = await search('alice', { search_term: hidden });
    assert.equal(res.status, 200);
    assert.deepEqual(res.body, { results: [], limited: false }, hidden);
  }
  // eve finds frank (their room), carol (public), not bob.
  assert.deepEqual(ids(await search('eve', { search_term: 'frank' })), [u.frank.userId]);
  assert.deepEqual(ids(await search('eve', { search_term: 'bob' })), []);
});

test('matches display names by any word, user ids anywhere, ignoring case; ranks prefixes first', async () => {
  const byName = await search('alice', { search_term: 'TABLES' });
  assert.deepEqual(byName.body.results, [{ user_id: u.bob.userId, display_name: 'Robert Tables' }]);
  assert.deepEqual(ids(await search('alice', { search_term: 'robert' })), [u.bob.userId]);
  // "ro" starts a word of bob's name and is inside carol's id: bob first.
  assert.deepEqual(ids(await search('alice', { search_term: 'ro' })), [u.bob.userId, u.carol.userId]);
  // Every id here contains "a" (localhost); alice's starts with it, and she comes first even
  // though bob has a profile.
  const ranked = await search('bob', { search_term: 'a' });
  assert.deepEqual(ids(ranked), [u.alice.userId, u.bob.userId, u.carol.userId]);
});

test('limit cuts the results and says so', async () => {
  const all = await search('alice', { search_term: 'localhost' });
  assert.ok(all.body.results.length >= 3, JSON.stringify(all.body));
  const one = await search('alice', { search_term: 'localhost', limit: 1 });
  assert.equal(one.body.results.length, 1);
  assert.equal(one.body.limited, true);
  assert.equal(all.body.limited, false);
});

test('bad searches are Matrix errors', async () => {
  const cases = [
    [{}, 400, 'M_MISSING_PARAM'],
    [{ search_term: 42 }, 400, 'M_BAD_JSON'],
    [{ search_term: 'a', limit: 0 }, 400, 'M_INVALID_PARAM'],
    [{ search_term: 'a', limit: 'ten' }, 400, 'M_BAD_JSON'],
    [{ search_term: 'x'.repeat(300) }, 400, 'M_INVALID_PARAM'],
  ];
  for (const [body, status, errcode] of cases) {
    const res = await search('alice', body);
    assert.equal(res.status, status, JSON.stringify(body));
    assert.equal(res.body.errcode, errcode, JSON.stringify(body));
  }
  const anon = await api(server.url, 'POST', `${CS}/user_directory/search`, { body: { search_term: 'a' } });
  assert.equal(anon.status, 401);
});

test('user_directory.search_all_users: every local user can be found', async () => {
  const open = await startServer({ config: { user_directory: { search_all_users: true } } });
  try {
    const a = await register(open.url, 'alice');
    const d = await register(open.url, 'dave');
    const res = await a.call('POST', '/user_directory/search', { body: { search_term: 'dave' } });
    assert.deepEqual(res.body.results.map((r) => r.user_id), [d.userId]);
  } finally {
    await open.stop();
  }
});

test('a room is searched while anyone may join or read it, as its state changes, and after a restart', async () => {
  const gus = await register(server.url, 'gus');
  const room = await gus.createRoom({ preset: 'private_chat' });
  const state = async (type, content) => {
    const res = await gus.call('PUT', `/rooms/${encodeURIComponent(room)}/state/${type}/`, { body: content });
    assert.equal(res.status, 200, res.text);
  };
  const found = async () => ids(await search('alice', { search_term: 'gus' }));
  assert.deepEqual(await found(), []);
  await state('m.room.history_visibility', { history_visibility: 'world_readable' });
  assert.deepEqual(await found(), [gus.userId]);
  // Open by its join rule alone, then by neither.
  await state('m.room.join_rules', { join_rule: 'public' });
  await state('m.room.history_visibility', { history_visibility: 'shared' });
  assert.deepEqual(await found(), [gus.userId]);
  await state('m.room.join_rules', { join_rule: 'invite' });
  assert.deepEqual(await found(), []);
  // What is stored says so after a restart: this room closed, carol's public one open.
  server = await server.restart();
  for (const name of Object.keys(u)) u[name] = u[name].at(server.url);
  assert.deepEqual(await found(), []);
  assert.deepEqual(ids(await search('alice', { search_term: 'carol' })), [u.carol.userId]);
  const again = await gus.at(server.url).call('PUT', `/rooms/${encodeURIComponent(room)}/state/m.room.join_rules/`, { body: { join_rule: 'public' } });
  assert.equal(again.status, 200, again.text);
  assert.deepEqual(await found(), [gus.userId]);
});
