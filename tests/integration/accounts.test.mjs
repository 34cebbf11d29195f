// Accounts: discovery, registration with interactive auth, login, logout, whoami, profile.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, api, register, CS } from '../lib/harness.mjs';

let server;
before(async () => {
  server = await startServer({ config: { allow_guest_access: true } });
});
after(async () => server.stop());

test('versions lists v1.1 to v1.11 and r0', async () => {
  const res = await api(server.url, 'GET', '/_matrix/client/versions');
  assert.equal(res.status, 200);
  for (let i = 1; i <= 11; i++) assert.ok(res.body.versions.includes(`v1.${i}`), `v1.${i}`);
  assert.ok(res.body.versions.includes('r0.6.1'));
});

test('well-known names the base url, capabilities the room versions', async () => {
  const wk = await api(server.url, 'GET', '/.well-known/matrix/client');
  assert.equal(wk.status, 200);
  assert.equal(wk.body['m.homeserver'].base_url, server.url.replace(/\/?$/, '/'));
  const alice = await register(server.url, 'capa');
  const caps = await alice.call('GET', '/capabilities');
  assert.equal(caps.status, 200);
  assert.equal(caps.body.capabilities['m.room_versions'].default, '10');
  assert.equal(caps.body.capabilities['m.room_versions'].available['10'], 'stable');
});

test('register: first call is 401 with the dummy flow and a session', async () => {
  const res = await api(server.url, 'POST', `${CS}/register`, { body: { username: 'uia', password: 'pw' } });
  assert.equal(res.status, 401);
  assert.deepEqual(res.body.flows, [{ stages: ['m.login.dummy'] }]);
  assert.equal(typeof res.body.session, 'string');
  const done = await api(server.url, 'POST', `${CS}/register`, {
    body: { username: 'uia', password: 'pw', auth: { type: 'm.login.dummy', session: res.body.session } },
  });
  assert.equal(done.status, 200);
  assert.equal(done.body.user_id, '@uia:localhost');
  assert.match(done.body.access_token, /^mxv_[A-Za-z0-9_-]{43}$/);
  assert.ok(done.body.device_id);
});

test('register: taken, invalid and inhibit_login', async () => {
  await register(server.url, 'taken');
  const again = await api(server.url, 'POST', `${CS}/register`, {
    body: { username: 'taken', password: 'x', auth: { type: 'm.login.dummy' } },
  });
  assert.equal(again.status, 400);
  assert.equal(again.body.errcode, 'M_USER_IN_USE');
  const bad = await api(server.url, 'POST', `${CS}/register`, {
    body: { username: 'bad name!', password: 'x', auth: { type: 'm.login.dummy' } },
  });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.errcode, 'M_INVALID_USERNAME');
  const inhibit = await api(server.url, 'POST', `${CS}/register`, {
    body: { username: 'quiet', password: 'x', inhibit_login: true, auth: { type: 'm.login.dummy' } },
  });
  assert.equal(inhibit.status, 200);
  assert.equal(inhibit.body.user_id, '@quiet:localhost');
  assert.equal(inhibit.body.access_token, undefined);
  const missingPw = await api(server.url, 'POST', `${CS}/register`, {
    body: { username: 'nopw', auth: { type: 'm.login.dummy' } },
  });
  assert.equal(missingPw.body.errcode, 'M_MISSING_PARAM');
});

test('register: many at once for one name make one account; nameless ones all get their own', async () => {
  const attempt = (password) => api(server.url, 'POST', `${CS}/register`, {
    body: { username: 'contested', password, auth: { type: 'm.login.dummy' } },
  });
  const results = await Promise.all(Array.from({ length: 8 }, (_, i) => attempt(`pw${i}`)));
  const won = results.filter((r) => r.status === 200);
  assert.equal(won.length, 1, results.map((r) => `${r.status} ${r.text}`).join('\n'));
  for (const r of results.filter((r) => r.status !== 200)) {
    assert.equal(r.status, 400);
    assert.equal(r.body.errcode, 'M_USER_IN_USE');
  }
  // The one account is the winner's: its token works and its password signs in.
  const who = await api(server.url, 'GET', `${CS}/account/whoami`, { token: won[0].body.access_token });
  assert.equal(who.body.user_id, '@contested:localhost');
  const winner = results.indexOf(won[0]);
  const login = (password) => api(server.url, 'POST', `${CS}/login`, {
    body: { type: 'm.login.password', identifier: { type: 'm.id.user', user: 'contested' }, password },
  });
  assert.equal((await login(`pw${winner}`)).status, 200);
  assert.equal((await login(`pw${(winner + 1) % 8}`)).status, 403);

  const guests = await Promise.all(Array.from({ length: 8 }, () => api(server.url, 'POST', `${CS}/register`, { query: { kind: 'guest' }, body: {} })));
  assert.deepEqual(guests.map((g) => g.status), Array(8).fill(200));
  assert.equal(new Set(guests.map((g) => g.body.user_id)).size, 8);
});

test('register/available', async () => {
  await register(server.url, 'avail1');
  const taken = await api(server.url, 'GET', `${CS}/register/available`, { query: { username: 'avail1' } });
  assert.equal(taken.status, 400);
  assert.equal(taken.body.errcode, 'M_USER_IN_USE');
  const free = await api(server.url, 'GET', `${CS}/register/available`, { query: { username: 'avail2' } });
  assert.equal(free.status, 200);
  assert.equal(free.body.available, true);
  const invalid = await api(server.url, 'GET', `${CS}/register/available`, { query: { username: 'A B' } });
  assert.equal(invalid.body.errcode, 'M_INVALID_USERNAME');
});

test('guest registration and whoami', async () => {
  const res = await api(server.url, 'POST', `${CS}/register`, { query: { kind: 'guest' }, body: {} });
  assert.equal(res.status, 200);
  const who = await api(server.url, 'GET', `${CS}/account/whoami`, { token: res.body.access_token });
  assert.equal(who.body.user_id, res.body.user_id);
  assert.equal(who.body.is_guest, true);
  const room = await api(server.url, 'POST', `${CS}/createRoom`, { token: res.body.access_token, body: {} });
  assert.equal(room.status, 403);
  assert.equal(room.body.errcode, 'M_GUEST_ACCESS_FORBIDDEN');
});

test('closed registration is M_FORBIDDEN; guests off is M_GUEST_ACCESS_FORBIDDEN', async () => {
  const closed = await startServer({ config: { enable_registration: false } });
  try {
    const res = await api(closed.url, 'POST', `${CS}/register`, { body: { username: 'x', password: 'y' } });
    assert.equal(res.status, 403);
    assert.equal(res.body.errcode, 'M_FORBIDDEN');
    const guest = await api(closed.url, 'POST', `${CS}/register`, { query: { kind: 'guest' }, body: {} });
    assert.equal(guest.status, 403);
    assert.equal(guest.body.errcode, 'M_GUEST_ACCESS_FORBIDDEN');
  } finally {
    await closed.stop();
  }
});

test('login: flows, identifier, legacy user field, device_id, wrong password', async () => {
  await register(server.url, 'logan', { password: 'right' });
  const flows = await api(server.url, 'GET', `${CS}/login`);
  assert.deepEqual(flows.body.flows, [{ type: 'm.login.password' }]);

  const byId = await api(server.url, 'POST', `${CS}/login`, {
    body: { type: 'm.login.password', identifier: { type: 'm.id.user', user: 'logan' }, password: 'right', device_id: 'PHONE' },
  });
  assert.equal(byId.status, 200);
  assert.equal(byId.body.user_id, '@logan:localhost');
  assert.equal(byId.body.device_id, 'PHONE');

  const legacy = await api(server.url, 'POST', `${CS}/login`, {
    body: { type: 'm.login.password', user: '@logan:localhost', password: 'right' },
  });
  assert.equal(legacy.status, 200);
  assert.notEqual(legacy.body.device_id, 'PHONE');

  // Logging in again on the same device replaces that device's token.
  const again = await api(server.url, 'POST', `${CS}/login`, {
    body: { type: 'm.login.password', identifier: { type: 'm.id.user', user: 'logan' }, password: 'right', device_id: 'PHONE' },
  });
  const old = await api(server.url, 'GET', `${CS}/account/whoami`, { token: byId.body.access_token });
  assert.equal(old.status, 401);
  const fresh = await api(server.url, 'GET', `${CS}/account/whoami`, { token: again.body.access_token });
  assert.equal(fresh.body.device_id, 'PHONE');

  const wrong = await api(server.url, 'POST', `${CS}/login`, {
    body: { type: 'm.login.password', identifier: { type: 'm.id.user', user: 'logan' }, password: 'nope' },
  });
  assert.equal(wrong.status, 403);
  assert.equal(wrong.body.errcode, 'M_FORBIDDEN');
  const nobody = await api(server.url, 'POST', `${CS}/login`, {
    body: { type: 'm.login.password', identifier: { type: 'm.id.user', user: 'ghost' }, password: 'x' },
  });
  assert.equal(nobody.body.errcode, 'M_FORBIDDEN');
  const unknownType = await api(server.url, 'POST', `${CS}/login`, { body: { type: 'm.login.magic' } });
  assert.equal(unknownType.status, 400);
  assert.equal(unknownType.body.errcode, 'M_UNKNOWN');
});

test('tokens: header, query string, missing, unknown; logout and logout/all', async () => {
  const u = await register(server.url, 'tokens', { password: 'pw' });
  const viaQuery = await api(server.url, 'GET', `${CS}/account/whoami`, { query: { access_token: u.token } });
  assert.equal(viaQuery.body.user_id, '@tokens:localhost');
  const missing = await api(server.url, 'GET', `${CS}/account/whoami`);
  assert.equal(missing.status, 401);
  assert.equal(missing.body.errcode, 'M_MISSING_TOKEN');
  const unknown = await api(server.url, 'GET', `${CS}/account/whoami`, { token: 'mxv_nope' });
  assert.equal(unknown.status, 401);
  assert.equal(unknown.body.errcode, 'M_UNKNOWN_TOKEN');

  const second = await api(server.url, 'POST', `${CS}/login`, {
    body: { type: 'm.login.password', identifier: { type: 'm.id.user', user: 'tokens' }, password: 'pw' },
  });
  const third = await api(server.url, 'POST', `${CS}/login`, {
    body: { type: 'm.login.password', identifier: { type: 'm.id.user', user: 'tokens' }, password: 'pw' },
  });
  assert.equal((await u.call('POST', '/logout', { body: {} })).status, 200);
  assert.equal((await u.call('GET', '/account/whoami')).status, 401);
  assert.equal((await api(server.url, 'GET', `${CS}/account/whoami`, { token: second.body.access_token })).status, 200);
  assert.equal((await api(server.url, 'POST', `${CS}/logout/all`, { token: second.body.access_token, body: {} })).status, 200);
  assert.equal((await api(server.url, 'GET', `${CS}/account/whoami`, { token: third.body.access_token })).status, 401);
});

test('r0 paths answer like v3', async () => {
  const u = await register(server.url, 'rzero');
  const res = await api(server.url, 'GET', '/_matrix/client/r0/account/whoami', { token: u.token });
  assert.equal(res.body.user_id, '@rzero:localhost');
});

test('profile: displayname defaults to the localpart and can be changed', async () => {
  const u = await register(server.url, 'prof');
  const p = await api(server.url, 'GET', `${CS}/profile/${encodeURIComponent(u.userId)}`);
  assert.equal(p.body.displayname, 'prof');
  assert.equal((await u.call('PUT', `/profile/${encodeURIComponent(u.userId)}/displayname`, { body: { displayname: 'Prof X' } })).status, 200);
  const dn = await api(server.url, 'GET', `${CS}/profile/${encodeURIComponent(u.userId)}/displayname`);
  assert.equal(dn.body.displayname, 'Prof X');
  const noAvatar = await api(server.url, 'GET', `${CS}/profile/${encodeURIComponent(u.userId)}/avatar_url`);
  assert.equal(noAvatar.status, 404);
  const other = await register(server.url, 'prof2');
  const forbidden = await other.call('PUT', `/profile/${encodeURIComponent(u.userId)}/displayname`, { body: { displayname: 'x' } });
  assert.equal(forbidden.status, 403);
  assert.equal((await api(server.url, 'GET', `${CS}/profile/${encodeURIComponent('@nobody:localhost')}`)).status, 404);
});

test('accounts and tokens not held in memory are read when used; a token signed out is refused at once', async () => {
  let small = await startServer({ config: { caches: { accounts: 1, tokens: 1 } } });
  try {
    const alice = await register(small.url, 'alice', { password: 'pw', deviceId: 'ONE' });
    const bob = await register(small.url, 'bob');
    const login = async (deviceId) =>
      (await api(small.url, 'POST', `${CS}/login`, {
        body: { type: 'm.login.password', identifier: { type: 'm.id.user', user: 'alice' }, password: 'pw', device_id: deviceId, initial_device_display_name: `alice ${deviceId}` },
      })).body.access_token;
    const two = await login('TWO');
    const whoami = async (token) => api(small.url, 'GET', `${CS}/account/whoami`, { token });
    // One token and one account held at a time: each of these reads the other's again.
    for (let i = 0; i < 2; i++) {
      assert.deepEqual((await whoami(alice.token)).body, { user_id: '@alice:localhost', device_id: 'ONE', is_guest: false });
      assert.equal((await whoami(bob.token)).body.user_id, '@bob:localhost');
      assert.equal((await whoami(two)).body.device_id, 'TWO');
    }
    const devices = await alice.call('GET', '/devices');
    assert.deepEqual(devices.body.devices.map((d) => d.device_id).sort(), ['ONE', 'TWO']);
    assert.equal(devices.body.devices.find((d) => d.device_id === 'TWO').display_name, 'alice TWO');

    // Signed out: refused at once, and still after the cache was used for others.
    assert.equal((await api(small.url, 'POST', `${CS}/logout`, { token: two, body: {} })).status, 200);
    assert.equal((await whoami(two)).body.errcode, 'M_UNKNOWN_TOKEN');
    await whoami(bob.token);
    assert.equal((await whoami(two)).status, 401);
    assert.deepEqual((await alice.call('GET', '/devices')).body.devices.map((d) => d.device_id), ['ONE']);

    // A profile changed while the account is not held; both fields changed at once both stay.
    const enc = encodeURIComponent('@bob:localhost');
    const [name, avatar] = await Promise.all([
      bob.call('PUT', `/profile/${enc}/displayname`, { body: { displayname: 'Bobby' } }),
      bob.call('PUT', `/profile/${enc}/avatar_url`, { body: { avatar_url: 'mxc://localhost/bob' } }),
    ]);
    assert.equal(name.status, 200, name.text);
    assert.equal(avatar.status, 200, avatar.text);
    await whoami(alice.token);
    assert.deepEqual((await api(small.url, 'GET', `${CS}/profile/${enc}`)).body, { displayname: 'Bobby', avatar_url: 'mxc://localhost/bob' });

    // Nothing of it is read at start: after a restart every token is read when first used.
    small = await small.restart();
    assert.equal((await api(small.url, 'GET', `${CS}/account/whoami`, { token: alice.token })).body.device_id, 'ONE');
    assert.equal((await api(small.url, 'GET', `${CS}/account/whoami`, { token: two })).status, 401);
    assert.deepEqual((await api(small.url, 'GET', `${CS}/profile/${enc}`)).body, { displayname: 'Bobby', avatar_url: 'mxc://localhost/bob' });
  } finally {
    await small.stop();
  }
});
