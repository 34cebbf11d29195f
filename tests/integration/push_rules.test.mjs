// Push rules (pushrules.yaml), what they decide (unread_notifications in /sync, notifications.yaml):
// the predefined rules, every change a user can make and the errors the spec names, counts
// that follow messages, mentions and read receipts, and both after a restart.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, register } from '../lib/harness.mjs';

const enc = encodeURIComponent;
let server;
let alice;
let bob;
let roomId;

before(async () => {
  server = await startServer();
  alice = await register(server.url, 'alice');
  bob = await register(server.url, 'bob');
  roomId = await alice.createRoom({ preset: 'trusted_private_chat', is_direct: true, invite: [bob.userId] });
  assert.equal((await bob.join(roomId)).status, 200);
});
after(async () => server?.stop());

const rule = (user, kind, id, suffix = '') => `/pushrules/global/${kind}/${enc(id)}${suffix}`;
const ids = (list) => list.map((r) => r.rule_id);
async function counts(user) {
  const sync = await user.sync();
  return sync.rooms.join[roomId].unread_notifications;
}
const say = (user, body, extra = {}) => user.send(roomId, 'm.room.message', { msgtype: 'm.text', body, ...extra });

test('the predefined rules: calls ring, the user is named, GET at every level', async () => {
  const all = await alice.call('GET', '/pushrules/');
  assert.equal(all.status, 200);
  const g = all.body.global;
  assert.ok(ids(g.underride).includes('.m.rule.call'));
  assert.deepEqual(g.underride.find((r) => r.rule_id === '.m.rule.call').actions, ['notify', { set_tweak: 'sound', value: 'ring' }]);
  assert.deepEqual(g.content.map((r) => [r.rule_id, r.pattern]), [['.m.rule.contains_user_name', 'alice']]);
  const invite = g.override.find((r) => r.rule_id === '.m.rule.invite_for_me');
  assert.equal(invite.conditions.find((c) => c.key === 'state_key').pattern, alice.userId);
  assert.deepEqual((await alice.call('GET', '/pushrules/global/')).body, g);
  const one = await alice.call('GET', rule(alice, 'underride', '.m.rule.call'));
  assert.equal(one.body.rule_id, '.m.rule.call');
  assert.deepEqual((await alice.call('GET', rule(alice, 'underride', '.m.rule.call', '/enabled'))).body, { enabled: true });
  assert.deepEqual((await alice.call('GET', rule(alice, 'underride', '.m.rule.call', '/actions'))).body, { actions: one.body.actions });
  const missing = await alice.call('GET', rule(alice, 'underride', 'nope'));
  assert.equal(missing.status, 404);
  assert.equal(missing.body.errcode, 'M_NOT_FOUND');
  const kind = await alice.call('GET', rule(alice, 'sideways', 'x'));
  assert.equal(kind.status, 400);
});

test('user rules: added first, placed before or after, replaced in place, deleted', async () => {
  const put = (id, body, query) => alice.call('PUT', rule(alice, 'content', id), { body, query });
  assert.equal((await put('cake', { pattern: 'cake*', actions: ['notify'] })).status, 200);
  assert.equal((await put('pie', { pattern: 'pie', actions: ['notify'] })).status, 200);
  assert.equal((await put('tart', { pattern: 'tart', actions: ['notify'] }, { after: 'cake' })).status, 200);
  assert.equal((await put('bun', { pattern: 'bun', actions: ['notify'] }, { before: 'pie' })).status, 200);
  let content = (await alice.call('GET', '/pushrules/')).body.global.content;
  assert.deepEqual(ids(content), ['bun', 'pie', 'cake', 'tart', '.m.rule.contains_user_name']);
  const cake = content.find((r) => r.rule_id === 'cake');
  assert.deepEqual(cake, { rule_id: 'cake', default: false, enabled: true, actions: ['notify'], pattern: 'cake*' });
  // Replacing keeps the place.
  assert.equal((await put('pie', { pattern: 'pies', actions: [] })).status, 200);
  content = (await alice.call('GET', '/pushrules/')).body.global.content;
  assert.deepEqual(ids(content).slice(0, 2), ['bun', 'pie']);
  assert.equal(content[1].pattern, 'pies');
  // Errors.
  const cases = [
    [await put('.m.rule.mine', { pattern: 'x', actions: [] }), 400, 'M_INVALID_PARAM'],
    [await put('x', { pattern: 'x', actions: [] }, { before: 'nosuch' }), 400, 'M_UNKNOWN'],
    [await put('x', { pattern: 'x', actions: [] }, { after: '.m.rule.contains_user_name' }), 400, 'M_UNKNOWN'],
    [await put('x', { pattern: 'x' }), 400, 'M_MISSING_PARAM'],
    [await put('x', { actions: [] }), 400, 'M_MISSING_PARAM'],
    [await put('x', { pattern: 'x', actions: ['sing'] }), 400, 'M_INVALID_PARAM'],
    [await alice.call('PUT', rule(alice, 'room', 'not-a-room'), { body: { actions: [] } }), 400, 'M_INVALID_PARAM'],
    [await alice.call('DELETE', rule(alice, 'content', '.m.rule.contains_user_name')), 400, 'M_INVALID_PARAM'],
    [await alice.call('DELETE', rule(alice, 'content', 'nosuch')), 404, 'M_NOT_FOUND'],
    [await alice.call('PUT', rule(alice, 'content', 'nosuch', '/enabled'), { body: { enabled: false } }), 404, 'M_NOT_FOUND'],
    [await alice.call('PUT', rule(alice, 'content', 'cake', '/enabled'), { body: {} }), 400, 'M_MISSING_PARAM'],
    [await alice.call('PUT', rule(alice, 'content', 'cake', '/actions'), { body: { actions: 'notify' } }), 400, 'M_BAD_JSON'],
  ];
  for (const [res, status, errcode] of cases) {
    assert.equal(res.status, status, res.text);
    assert.equal(res.body.errcode, errcode, res.text);
  }
  for (const id of ['bun', 'pie', 'cake', 'tart'])
    assert.equal((await alice.call('DELETE', rule(alice, 'content', id))).status, 200);
  content = (await alice.call('GET', '/pushrules/')).body.global.content;
  assert.deepEqual(ids(content), ['.m.rule.contains_user_name']);
  // Changes reach the user's other devices as m.push_rules account data.
  const sync = await alice.sync();
  const data = sync.account_data.events.find((e) => e.type === 'm.push_rules');
  assert.deepEqual(ids(data.content.global.content), ['.m.rule.contains_user_name']);
});

test('counts follow messages, mentions and the read receipt', async () => {
  const start = await counts(alice);
  assert.deepEqual(start, { highlight_count: 0, notification_count: 0 });
  await say(bob, 'one');
  const two = await say(bob, 'hey alice, look');
  assert.deepEqual(await counts(alice), { highlight_count: 1, notification_count: 2 });
  // bob's own messages never count for him.
  assert.deepEqual(await counts(bob), { highlight_count: 0, notification_count: 0 });
  const read = await alice.call('POST', `/rooms/${enc(roomId)}/receipt/m.read/${enc(two.body.event_id)}`, { body: {} });
  assert.equal(read.status, 200);
  assert.deepEqual(await counts(alice), { highlight_count: 0, notification_count: 0 });
  // A private receipt counts as read too.
  const three = await say(bob, 'three');
  assert.equal((await counts(alice)).notification_count, 1);
  await alice.call('POST', `/rooms/${enc(roomId)}/receipt/m.read.private/${enc(three.body.event_id)}`, { body: {} });
  assert.equal((await counts(alice)).notification_count, 0);
});

test('muting a room with a room rule; disabling and changing predefined rules', async () => {
  assert.equal((await alice.call('PUT', rule(alice, 'room', roomId), { body: { actions: [] } })).status, 200);
  await say(bob, 'quiet please');
  assert.equal((await counts(alice)).notification_count, 0);
  assert.equal((await alice.call('DELETE', rule(alice, 'room', roomId))).status, 200);
  await say(bob, 'loud again');
  assert.equal((await counts(alice)).notification_count, 1);
  // The one-to-one rule off: messages fall to .m.rule.message, which still notifies; with its
  // actions emptied nothing does.
  assert.equal((await alice.call('PUT', rule(alice, 'underride', '.m.rule.room_one_to_one', '/enabled'), { body: { enabled: false } })).status, 200);
  assert.equal((await alice.call('PUT', rule(alice, 'underride', '.m.rule.message', '/actions'), { body: { actions: [] } })).status, 200);
  await say(bob, 'unheard');
  assert.equal((await counts(alice)).notification_count, 1);
  assert.deepEqual((await alice.call('GET', rule(alice, 'underride', '.m.rule.room_one_to_one', '/enabled'))).body, { enabled: false });
});

test('GET /notifications: newest first, read flags, highlights only, paging', async () => {
  const res = await alice.call('GET', '/notifications');
  assert.equal(res.status, 200, res.text);
  const list = res.body.notifications;
  assert.ok(list.length >= 4, res.text);
  assert.equal(list[0].event.content.body, 'loud again');
  assert.equal(list[0].read, false);
  assert.equal(list[0].room_id, roomId);
  assert.ok(list.find((n) => n.event.content.body === 'one').read);
  assert.ok(Array.isArray(list[0].actions) && list[0].actions.includes('notify'));
  const highlights = await alice.call('GET', '/notifications', { query: { only: 'highlight' } });
  assert.deepEqual(highlights.body.notifications.map((n) => n.event.content.body), ['hey alice, look']);
  const page1 = await alice.call('GET', '/notifications', { query: { limit: '2' } });
  assert.equal(page1.body.notifications.length, 2);
  const page2 = await alice.call('GET', '/notifications', { query: { limit: '2', from: page1.body.next_token } });
  assert.equal(page2.body.notifications[0].event.event_id, list[2].event.event_id);
  const bad = await alice.call('GET', '/notifications', { query: { from: 'x' } });
  assert.equal(bad.status, 400);
});

test('changes made at once all count: each reads the rules the one before it left', async () => {
  const made = Array.from({ length: 12 }, (_, i) => `at-once-${i}`);
  const puts = await Promise.all(made.map((id) => bob.call('PUT', rule(bob, 'content', id), { body: { pattern: id, actions: ['notify'] } })));
  assert.ok(puts.every((r) => r.status === 200), puts.map((r) => r.text).join());
  const content = (await bob.call('GET', '/pushrules/')).body.global.content;
  for (const id of made) assert.ok(ids(content).includes(id), id);
  const deletes = await Promise.all(made.map((id) => bob.call('DELETE', rule(bob, 'content', id))));
  assert.ok(deletes.every((r) => r.status === 200), deletes.map((r) => r.text).join());
  const after = (await bob.call('GET', '/pushrules/')).body.global.content;
  assert.deepEqual(ids(after).filter((id) => id.startsWith('at-once-')), []);
});

test('rules and counts after a restart', async () => {
  // Counts are counted again after a restart, under the rules in force then: put the rules back,
  // read everything, and have two new messages to count.
  assert.equal((await alice.call('PUT', rule(alice, 'underride', '.m.rule.message', '/actions'), { body: { actions: ['notify'] } })).status, 200);
  assert.equal((await alice.call('PUT', rule(alice, 'content', 'lunch'), { body: { pattern: 'lunch', actions: ['notify', { set_tweak: 'highlight' }] } })).status, 200);
  const last = await say(bob, 'read this');
  await alice.call('POST', `/rooms/${enc(roomId)}/receipt/m.read/${enc(last.body.event_id)}`, { body: {} });
  // More than a room keeps in memory (50 events), so some are counted again from the store.
  for (let i = 0; i < 60; i++) await say(bob, `more ${i}`);
  await say(bob, 'lunch?');
  const before = await counts(alice);
  assert.deepEqual(before, { highlight_count: 1, notification_count: 61 });
  server = await server.restart();
  [alice, bob] = [alice, bob].map((u) => u.at(server.url));
  assert.deepEqual(await counts(alice), before);
  const enabled = await alice.call('GET', rule(alice, 'underride', '.m.rule.room_one_to_one', '/enabled'));
  assert.deepEqual(enabled.body, { enabled: false });
  assert.equal((await alice.call('GET', rule(alice, 'content', 'lunch'))).body.pattern, 'lunch');
  await say(bob, 'after restart');
  assert.equal((await counts(alice)).notification_count, 62);
  // The call rule is untouched and still rings.
  const call = await alice.call('GET', rule(alice, 'underride', '.m.rule.call'));
  assert.equal(call.body.enabled, true);
});
