// End-to-end encryption keys over HTTP: device keys (signature checked), one-time and
// fallback keys (each one-time key handed out once), key queries, device lists in /sync and
// /keys/changes, and what logout and a restart do to them. Keys are made and signed here with
// Node's Ed25519, as a client's crypto would.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { startServer, register, api, userHandle, CS } from '../lib/harness.mjs';
import { b64, keyPair } from '../lib/e2e_keys.mjs';

// A device's Ed25519 identity: signs objects as the spec's "Signing JSON" says.
function identity(userId, deviceId) {
  const { pub, keyId, signObject } = keyPair(userId, deviceId);
  const deviceKeys = () =>
    signObject({
      user_id: userId,
      device_id: deviceId,
      algorithms: ['m.olm.v1.curve25519-aes-sha2', 'm.megolm.v1.aes-sha2'],
      keys: { [`curve25519:${deviceId}`]: b64(randomBytes(32)), [keyId]: pub },
    });
  const oneTimeKey = (fallback = false) => signObject({ key: b64(randomBytes(32)), ...(fallback ? { fallback: true } : {}) });
  return { pub, signObject, deviceKeys, oneTimeKey };
}

const upload = (user, body) => user.call('POST', '/keys/upload', { body });
const query = (user, deviceKeys) => user.call('POST', '/keys/query', { body: { device_keys: deviceKeys } });
const claim = (user, oneTimeKeys) => user.call('POST', '/keys/claim', { body: { one_time_keys: oneTimeKeys } });

async function signIn(server, name) {
  const res = await api(server.url, 'POST', `${CS}/register`, {
    body: { username: name, password: `secret-${name}`, device_id: `${name.toUpperCase()}DEV`, initial_device_display_name: `${name}'s laptop`, auth: { type: 'm.login.dummy' } },
  });
  assert.equal(res.status, 200, res.text);
  const user = userHandle(server.url, res.body);
  return { ...user, id: identity(user.userId, user.deviceId) };
}

test('device keys: only the device itself uploads them, signed by its own key; anyone can query them', async () => {
  const server = await startServer();
  try {
    const alice = await signIn(server, 'alice');
    const bob = await signIn(server, 'bob');
    const keys = alice.id.deviceKeys();

    const other = bob.id.deviceKeys();
    const forBob = await upload(alice, { device_keys: other });
    assert.equal(forBob.status, 400, forBob.text);
    assert.equal(forBob.body.errcode, 'M_INVALID_PARAM');
    const otherDevice = await upload(alice, { device_keys: { ...keys, device_id: 'ELSEWHERE' } });
    assert.equal(otherDevice.status, 400);
    const tampered = await upload(alice, { device_keys: { ...keys, algorithms: ['m.megolm.v1.aes-sha2'] } });
    assert.equal(tampered.status, 400, tampered.text);
    assert.equal(tampered.body.errcode, 'M_INVALID_SIGNATURE');
    const signedByBob = await upload(alice, { device_keys: { ...keys, signatures: { [alice.userId]: { [`ed25519:${alice.deviceId}`]: other.signatures[bob.userId][`ed25519:${bob.deviceId}`] } } } });
    assert.equal(signedByBob.body.errcode, 'M_INVALID_SIGNATURE');
    const { signatures, ...unsignedKeys } = keys;
    assert.equal((await upload(alice, { device_keys: unsignedKeys })).body.errcode, 'M_INVALID_SIGNATURE');
    assert.equal((await query(bob, { [alice.userId]: [] })).body.device_keys[alice.userId][alice.deviceId], undefined, 'nothing was kept');

    const ok = await upload(alice, { device_keys: keys });
    assert.equal(ok.status, 200, ok.text);
    assert.deepEqual(ok.body, { one_time_key_counts: { signed_curve25519: 0 } });

    const found = await query(bob, { [alice.userId]: [], '@nobody:localhost': [], '@carol:elsewhere.example': [] });
    assert.equal(found.status, 200, found.text);
    assert.deepEqual(found.body.device_keys[alice.userId], { [alice.deviceId]: { ...keys, unsigned: { device_display_name: "alice's laptop" } } });
    assert.deepEqual(found.body.device_keys['@nobody:localhost'], {});
    assert.ok(found.body.failures['elsewhere.example'], 'a server this one cannot ask is a failure');
    assert.deepEqual((await query(bob, { [alice.userId]: ['OTHER'] })).body.device_keys[alice.userId], {});
    const bad = await bob.call('POST', '/keys/query', { body: {} });
    assert.equal(bad.status, 400);
    assert.equal(bad.body.errcode, 'M_MISSING_PARAM');
  } finally {
    await server.stop();
  }
});

test('one-time keys are claimed once each, oldest first, then the fallback key; counts reach /sync', async () => {
  const server = await startServer({ config: { limits: { one_time_keys_per_device: 3 } } });
  try {
    const alice = await signIn(server, 'alice');
    const bob = await signIn(server, 'bob');
    const otk = { 'signed_curve25519:AAAAAQ': alice.id.oneTimeKey(), 'signed_curve25519:AAAAAg': alice.id.oneTimeKey() };
    const fallback = { 'signed_curve25519:AAAAAw': alice.id.oneTimeKey(true) };
    const up = await upload(alice, { device_keys: alice.id.deviceKeys(), one_time_keys: otk, fallback_keys: fallback });
    assert.deepEqual(up.body, { one_time_key_counts: { signed_curve25519: 2 } });
    // The same key again (a retried upload) is fine; a different key under its id is not.
    assert.equal((await upload(alice, { one_time_keys: { 'signed_curve25519:AAAAAQ': otk['signed_curve25519:AAAAAQ'] } })).status, 200);
    const nul = await upload(alice, { one_time_keys: { 'signed_curve25519:A\u0000B': alice.id.oneTimeKey() } });
    assert.equal(nul.status, 400, 'a key id is a text column: no NUL');
    assert.equal(nul.body.errcode, 'M_BAD_JSON');
    const clash = await upload(alice, { one_time_keys: { 'signed_curve25519:AAAAAQ': alice.id.oneTimeKey() } });
    assert.equal(clash.status, 400, clash.text);
    const tooMany = await upload(alice, { one_time_keys: { 'signed_curve25519:B1': alice.id.oneTimeKey(), 'signed_curve25519:B2': alice.id.oneTimeKey() } });
    assert.equal(tooMany.status, 400, tooMany.text);
    assert.match(tooMany.body.error, /limits\.one_time_keys_per_device/);
    const badName = await upload(alice, { one_time_keys: { nocolon: alice.id.oneTimeKey() } });
    assert.equal(badName.status, 400);

    const sync = await alice.sync();
    assert.deepEqual(sync.device_one_time_keys_count, { signed_curve25519: 2 });
    assert.deepEqual(sync.device_unused_fallback_key_types, ['signed_curve25519']);

    const want = { [alice.userId]: { [alice.deviceId]: 'signed_curve25519' } };
    const first = await claim(bob, want);
    assert.equal(first.status, 200, first.text);
    assert.deepEqual(first.body.one_time_keys[alice.userId][alice.deviceId], { 'signed_curve25519:AAAAAQ': otk['signed_curve25519:AAAAAQ'] });
    const second = await claim(bob, want);
    assert.deepEqual(second.body.one_time_keys[alice.userId][alice.deviceId], { 'signed_curve25519:AAAAAg': otk['signed_curve25519:AAAAAg'] });
    // Exhausted: the fallback key, as often as asked, until the device replaces it.
    for (let i = 0; i < 2; i++) {
      const fb = await claim(bob, want);
      assert.deepEqual(fb.body.one_time_keys[alice.userId][alice.deviceId], fallback);
    }
    const after = await alice.sync({ since: sync.next_batch, timeout: '0' });
    assert.deepEqual(after.device_one_time_keys_count, { signed_curve25519: 0 });
    assert.deepEqual(after.device_unused_fallback_key_types, [], 'the fallback key was used');

    // Unknown users, devices and algorithms are left out; other servers are failures.
    const unknown = await claim(bob, {
      '@nobody:localhost': { DEV: 'signed_curve25519' },
      [alice.userId]: { NODEVICE: 'signed_curve25519', [alice.deviceId]: 'org.example.none' },
      '@carol:elsewhere.example': { DEV: 'signed_curve25519' },
    });
    assert.equal(unknown.status, 200, unknown.text);
    assert.deepEqual(unknown.body.one_time_keys['@nobody:localhost'] ?? {}, {});
    assert.deepEqual(unknown.body.one_time_keys[alice.userId], {});
    assert.ok(unknown.body.failures['elsewhere.example']);
  } finally {
    await server.stop();
  }
});

test('device lists: who shares a room learns of new and removed devices in /sync and /keys/changes', async () => {
  const server = await startServer();
  try {
    const alice = await signIn(server, 'alice');
    const bob = await signIn(server, 'bob');
    const carol = await signIn(server, 'carol');
    const room = await alice.createRoom({ preset: 'public_chat' });
    assert.equal((await bob.join(room)).status, 200);
    const start = await bob.sync();
    const carolStart = await carol.sync();

    // A parked /sync of bob wakes for alice's new device keys; carol shares no room.
    const parked = bob.sync({ since: start.next_batch, timeout: '30000' });
    assert.equal((await upload(alice, { device_keys: alice.id.deviceKeys() })).status, 200);
    const woke = await parked;
    assert.ok(woke.device_lists.changed.includes(alice.userId), JSON.stringify(woke.device_lists));
    const carolNext = await carol.sync({ since: carolStart.next_batch, timeout: '0' });
    assert.ok(!carolNext.device_lists.changed.includes(alice.userId));
    const changes = await bob.call('GET', '/keys/changes', { query: { from: start.next_batch, to: woke.next_batch } });
    assert.equal(changes.status, 200, changes.text);
    assert.ok(changes.body.changed.includes(alice.userId));
    assert.equal((await bob.call('GET', '/keys/changes', { query: { from: woke.next_batch } })).body.changed.length, 0);
    assert.equal((await bob.call('GET', '/keys/changes')).status, 400);

    // carol joins: bob and alice learn of her (her devices to fetch), and she of them.
    const beforeJoin = await bob.sync();
    assert.equal((await carol.join(room)).status, 200);
    const joined = await bob.sync({ since: beforeJoin.next_batch, timeout: '0' });
    assert.ok(joined.device_lists.changed.includes(carol.userId), JSON.stringify(joined.device_lists));
    const carolJoined = await carol.sync({ since: carolNext.next_batch, timeout: '0' });
    assert.ok(carolJoined.device_lists.changed.includes(alice.userId));
    assert.ok(carolJoined.device_lists.changed.includes(bob.userId));

    // carol leaves: she shares no room with bob any more.
    assert.equal((await carol.call('POST', `/rooms/${encodeURIComponent(room)}/leave`, { body: {} })).status, 200);
    const left = await bob.sync({ since: joined.next_batch, timeout: '0' });
    assert.deepEqual(left.device_lists.left, [carol.userId]);

    // alice signs out: her device and its keys are gone, and bob is told.
    const beforeLogout = await bob.sync();
    assert.equal((await alice.call('POST', '/logout', { body: {} })).status, 200);
    const gone = await bob.sync({ since: beforeLogout.next_batch, timeout: '0' });
    assert.ok(gone.device_lists.changed.includes(alice.userId));
    assert.deepEqual((await query(bob, { [alice.userId]: [] })).body.device_keys[alice.userId], {});
  } finally {
    await server.stop();
  }
});

test('keys, claims and device list positions survive a restart', async () => {
  let server = await startServer();
  try {
    const alice = await signIn(server, 'alice');
    const bob = await signIn(server, 'bob');
    const room = await alice.createRoom({ preset: 'public_chat' });
    await bob.join(room);
    const otk = { 'signed_curve25519:K1': alice.id.oneTimeKey(), 'signed_curve25519:K2': alice.id.oneTimeKey() };
    const fallback = { 'signed_curve25519:F1': alice.id.oneTimeKey(true) };
    const keys = alice.id.deviceKeys();
    const start = await bob.sync();
    await upload(alice, { device_keys: keys, one_time_keys: otk, fallback_keys: fallback });
    const want = { [alice.userId]: { [alice.deviceId]: 'signed_curve25519' } };
    assert.deepEqual((await claim(bob, want)).body.one_time_keys[alice.userId][alice.deviceId], { 'signed_curve25519:K1': otk['signed_curve25519:K1'] });
    const seen = await bob.sync({ since: start.next_batch, timeout: '0' });
    assert.ok(seen.device_lists.changed.includes(alice.userId));
    server = await server.restart();
    const bob2 = bob.at(server.url);
    const alice2 = alice.at(server.url);
    assert.deepEqual((await query(bob2, { [alice.userId]: [] })).body.device_keys[alice.userId][alice.deviceId], { ...keys, unsigned: { device_display_name: "alice's laptop" } });
    assert.deepEqual((await claim(bob2, want)).body.one_time_keys[alice.userId][alice.deviceId], { 'signed_curve25519:K2': otk['signed_curve25519:K2'] }, 'K1 was claimed before the restart');
    assert.deepEqual((await claim(bob2, want)).body.one_time_keys[alice.userId][alice.deviceId], fallback);
    // Changes from before the start are read from the database: reported after a position
    // before them, and not after one past them.
    const later = await bob2.sync({ since: start.next_batch, timeout: '0' });
    assert.ok(later.device_lists.changed.includes(alice.userId));
    const quiet = await bob2.sync({ since: seen.next_batch, timeout: '0' });
    assert.ok(!(quiet.device_lists?.changed ?? []).includes(alice.userId), JSON.stringify(quiet.device_lists));
    const changes = async (from) => (await bob2.call('GET', '/keys/changes', { query: { from, to: later.next_batch } })).body.changed;
    assert.ok((await changes(start.next_batch)).includes(alice.userId));
    assert.ok(!(await changes(seen.next_batch)).includes(alice.userId));
    const aliceSync = await alice2.sync();
    assert.deepEqual(aliceSync.device_unused_fallback_key_types, []);
  } finally {
    await server.stop();
  }
});

function crossSigning(userId) {
  const master = keyPair(userId);
  const selfSigning = keyPair(userId);
  const userSigning = keyPair(userId);
  const key = (pair, usage) => ({ user_id: userId, usage: [usage], keys: { [pair.keyId]: pair.pub } });
  return {
    master,
    selfSigning,
    userSigning,
    masterKey: key(master, 'master'),
    selfSigningKey: master.signObject(key(selfSigning, 'self_signing')),
    userSigningKey: master.signObject(key(userSigning, 'user_signing')),
  };
}

const signingUpload = (user, body) => user.call('POST', '/keys/device_signing/upload', { body });
const signaturesUpload = (user, body) => user.call('POST', '/keys/signatures/upload', { body });
const auth = (name) => ({ type: 'm.login.password', identifier: { type: 'm.id.user', user: name }, password: `secret-${name}` });

test('cross-signing keys: the first upload is free, replacing them needs the password; each key signed by the master key', async () => {
  const server = await startServer();
  try {
    const alice = await signIn(server, 'alice');
    const bob = await signIn(server, 'bob');
    const cs = crossSigning(alice.userId);

    const lonely = await signingUpload(bob, { self_signing_key: crossSigning(bob.userId).selfSigningKey });
    assert.equal(lonely.status, 400, lonely.text);
    assert.equal(lonely.body.errcode, 'M_MISSING_PARAM');
    const unsignedSsk = await signingUpload(alice, { master_key: cs.masterKey, self_signing_key: { ...cs.selfSigningKey, signatures: {} } });
    assert.equal(unsignedSsk.body.errcode, 'M_INVALID_SIGNATURE');
    const forBob = await signingUpload(alice, { master_key: { ...cs.masterKey, user_id: bob.userId } });
    assert.equal(forBob.status, 400);

    const body = { master_key: cs.masterKey, self_signing_key: cs.selfSigningKey, user_signing_key: cs.userSigningKey };
    const first = await signingUpload(alice, body);
    assert.equal(first.status, 200, first.text);
    assert.equal((await signingUpload(alice, body)).status, 200, 'the same keys again need no password');

    const seenByBob = await query(bob, { [alice.userId]: [] });
    assert.deepEqual(seenByBob.body.master_keys[alice.userId], cs.masterKey);
    assert.deepEqual(seenByBob.body.self_signing_keys[alice.userId], cs.selfSigningKey);
    assert.equal(seenByBob.body.user_signing_keys[alice.userId], undefined, 'only its owner reads a user-signing key');
    assert.deepEqual((await query(alice, { [alice.userId]: [] })).body.user_signing_keys[alice.userId], cs.userSigningKey);

    // New keys replace the old only with the password.
    const next = crossSigning(alice.userId);
    const replace = { master_key: next.masterKey, self_signing_key: next.selfSigningKey };
    const challenge = await signingUpload(alice, replace);
    assert.equal(challenge.status, 401, challenge.text);
    assert.deepEqual(challenge.body.flows, [{ stages: ['m.login.password'] }]);
    const wrong = await signingUpload(alice, { ...replace, auth: { ...auth('alice'), password: 'guess', session: challenge.body.session } });
    assert.equal(wrong.status, 401);
    assert.equal(wrong.body.errcode, 'M_FORBIDDEN');
    assert.deepEqual((await query(bob, { [alice.userId]: [] })).body.master_keys[alice.userId], cs.masterKey);
    const replaced = await signingUpload(alice, { ...replace, auth: { ...auth('alice'), session: challenge.body.session } });
    assert.equal(replaced.status, 200, replaced.text);
    assert.deepEqual((await query(bob, { [alice.userId]: [] })).body.master_keys[alice.userId], next.masterKey);
  } finally {
    await server.stop();
  }
});

test('signatures: a device by its self-signing key, the master key by a device, another user by the user-signing key; failures per key', async () => {
  let server = await startServer();
  try {
    const alice = await signIn(server, 'alice');
    const bob = await signIn(server, 'bob');
    const carol = await signIn(server, 'carol');
    const aliceDevice = alice.id.deviceKeys();
    await upload(alice, { device_keys: aliceDevice });
    await upload(bob, { device_keys: bob.id.deviceKeys() });
    const acs = crossSigning(alice.userId);
    const bcs = crossSigning(bob.userId);
    await signingUpload(alice, { master_key: acs.masterKey, self_signing_key: acs.selfSigningKey, user_signing_key: acs.userSigningKey });
    await signingUpload(bob, { master_key: bcs.masterKey, self_signing_key: bcs.selfSigningKey, user_signing_key: bcs.userSigningKey });

    const room = await alice.createRoom({ preset: 'public_chat' });
    await bob.join(room);
    const bobStart = await bob.sync();
    const deviceSigned = acs.selfSigning.signObject(aliceDevice);
    const masterSigned = alice.id.signObject(acs.masterKey);
    const res = await signaturesUpload(alice, { [alice.userId]: { [alice.deviceId]: deviceSigned, [acs.master.pub]: masterSigned } });
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.body.failures, {});
    const seen = await query(bob, { [alice.userId]: [] });
    assert.equal(seen.body.device_keys[alice.userId][alice.deviceId].signatures[alice.userId][acs.selfSigning.keyId], deviceSigned.signatures[alice.userId][acs.selfSigning.keyId]);
    assert.equal(seen.body.master_keys[alice.userId].signatures[alice.userId][`ed25519:${alice.deviceId}`], masterSigned.signatures[alice.userId][`ed25519:${alice.deviceId}`]);
    const woke = await bob.sync({ since: bobStart.next_batch, timeout: '0' });
    assert.ok(woke.device_lists.changed.includes(alice.userId), 'who sees the keys fetches the new signatures');

    // bob verifies alice: his signature on her master key is his to see, not carol's.
    const verified = bcs.userSigning.signObject(acs.masterKey);
    const byBob = await signaturesUpload(bob, { [alice.userId]: { [acs.master.pub]: verified } });
    assert.deepEqual(byBob.body.failures, {});
    const bobView = (await query(bob, { [alice.userId]: [] })).body.master_keys[alice.userId];
    assert.equal(bobView.signatures[bob.userId][bcs.userSigning.keyId], verified.signatures[bob.userId][bcs.userSigning.keyId]);
    const carolView = (await query(carol, { [alice.userId]: [] })).body.master_keys[alice.userId];
    assert.equal(carolView.signatures?.[bob.userId], undefined);

    // Failures, each for its own key.
    const bad = await signaturesUpload(alice, {
      [bob.userId]: { [bob.deviceId]: acs.selfSigning.signObject(bob.id.deviceKeys()) },
      [alice.userId]: {
        NOSUCH: acs.selfSigning.signObject({ ...aliceDevice, device_id: 'NOSUCH' }),
        [alice.deviceId]: bcs.selfSigning.signObject({ ...aliceDevice, signatures: {} }),
      },
    });
    assert.equal(bad.status, 200, bad.text);
    assert.equal(bad.body.failures[bob.userId][bob.deviceId].errcode, 'M_NOT_FOUND', 'another user\'s device is not alice\'s to sign');
    assert.equal(bad.body.failures[alice.userId].NOSUCH.errcode, 'M_NOT_FOUND');
    assert.equal(bad.body.failures[alice.userId][alice.deviceId].errcode, 'M_INVALID_SIGNATURE');
    const mismatch = await signaturesUpload(alice, { [alice.userId]: { [alice.deviceId]: acs.selfSigning.signObject({ ...aliceDevice, algorithms: [] }) } });
    assert.equal(mismatch.body.failures[alice.userId][alice.deviceId].errcode, 'M_INVALID_PARAM');

    // All of it after a restart.
    server = await server.restart();
    const bob2 = bob.at(server.url);
    const after = await query(bob2, { [alice.userId]: [] });
    assert.deepEqual(after.body.self_signing_keys[alice.userId], acs.selfSigningKey);
    assert.equal(after.body.device_keys[alice.userId][alice.deviceId].signatures[alice.userId][acs.selfSigning.keyId], deviceSigned.signatures[alice.userId][acs.selfSigning.keyId]);
    assert.equal(after.body.master_keys[alice.userId].signatures[bob.userId][bcs.userSigning.keyId], verified.signatures[bob.userId][bcs.userSigning.keyId]);
  } finally {
    await server.stop();
  }
});

test('a device signing out is a device list change, keys or not', async () => {
  const server = await startServer();
  try {
    const alice = await signIn(server, 'alice');
    const bob = await signIn(server, 'bob');
    const room = await alice.createRoom({ preset: 'public_chat' });
    assert.equal((await bob.join(room)).status, 200);
    // A second device of alice's that never uploads keys.
    const login = await api(server.url, 'POST', `${CS}/login`, {
      body: { type: 'm.login.password', identifier: { type: 'm.id.user', user: 'alice' }, password: 'secret-alice', device_id: 'SPARE' },
    });
    assert.equal(login.status, 200, login.text);
    const spare = userHandle(server.url, login.body);
    const before = await bob.sync();
    assert.equal((await spare.call('POST', '/logout', { body: {} })).status, 200);
    const after = await bob.sync({ since: before.next_batch, timeout: '0' });
    assert.deepEqual(after.device_lists?.changed, [alice.userId]);
    const quiet = await bob.sync({ since: after.next_batch, timeout: '0' });
    assert.deepEqual(quiet.device_lists?.changed ?? [], []);
  } finally {
    await server.stop();
  }
});

test('claims at once hand each one-time key out once, then the fallback key', async () => {
  const server = await startServer();
  try {
    const alice = await signIn(server, 'alice');
    const claimers = await Promise.all(['bob', 'carol', 'dave'].map((n) => signIn(server, n)));
    const otk = {};
    for (let i = 0; i < 5; i++) otk[`signed_curve25519:K${i}`] = alice.id.oneTimeKey();
    const fallback = { 'signed_curve25519:FB': alice.id.oneTimeKey(true) };
    assert.equal((await upload(alice, { device_keys: alice.id.deviceKeys(), one_time_keys: otk, fallback_keys: fallback })).status, 200);
    const want = { [alice.userId]: { [alice.deviceId]: 'signed_curve25519' } };
    const results = await Promise.all(Array.from({ length: 9 }, (_, i) => claim(claimers[i % 3], want)));
    const got = results.map((r) => {
      assert.equal(r.status, 200, r.text);
      return Object.keys(r.body.one_time_keys[alice.userId][alice.deviceId])[0];
    });
    const keys = got.filter((k) => k !== 'signed_curve25519:FB');
    assert.deepEqual([...keys].sort(), Object.keys(otk).sort(), `each one-time key once: ${got}`);
    assert.equal(got.length - keys.length, 4, 'then the fallback key');
    const sync = await alice.sync();
    assert.deepEqual(sync.device_one_time_keys_count, { signed_curve25519: 0 });
    assert.deepEqual(sync.device_unused_fallback_key_types, []);
  } finally {
    await server.stop();
  }
});

test('keys not held in memory are read back whole: a query of more users than are held, counts in /sync', async () => {
  const server = await startServer({ config: { caches: { keys: 1 } } });
  try {
    const alice = await signIn(server, 'alice');
    const bob = await signIn(server, 'bob');
    const aliceDevice = alice.id.deviceKeys();
    const bobDevice = bob.id.deviceKeys();
    const acs = crossSigning(alice.userId);
    await signingUpload(alice, { master_key: acs.masterKey, self_signing_key: acs.selfSigningKey });
    const otk = { 'signed_curve25519:A1': alice.id.oneTimeKey(), 'signed_curve25519:A2': alice.id.oneTimeKey() };
    assert.equal((await upload(alice, { device_keys: aliceDevice, one_time_keys: otk })).status, 200);
    assert.equal((await upload(bob, { device_keys: bobDevice })).status, 200);  // alice's let go
    const signed = acs.selfSigning.signObject(aliceDevice);
    assert.deepEqual((await signaturesUpload(alice, { [alice.userId]: { [alice.deviceId]: signed } })).body.failures, {});
    // bob claims while only bob's keys are held: alice's count is read from the store.
    assert.deepEqual(Object.keys((await claim(bob, { [alice.userId]: { [alice.deviceId]: 'signed_curve25519' } })).body.one_time_keys[alice.userId][alice.deviceId]), ['signed_curve25519:A1']);
    await upload(bob, { one_time_keys: { 'signed_curve25519:B1': bob.id.oneTimeKey() } });
    assert.deepEqual((await alice.sync()).device_one_time_keys_count, { signed_curve25519: 1 });
    assert.deepEqual((await bob.sync()).device_one_time_keys_count, { signed_curve25519: 1 });
    // Both users in one query, with one held at a time.
    const both = await query(bob, { [alice.userId]: [], [bob.userId]: [] });
    assert.equal(both.status, 200, both.text);
    const seen = both.body.device_keys[alice.userId][alice.deviceId];
    assert.equal(seen.signatures[alice.userId][acs.selfSigning.keyId], signed.signatures[alice.userId][acs.selfSigning.keyId]);
    assert.equal(seen.keys[`ed25519:${alice.deviceId}`], aliceDevice.keys[`ed25519:${alice.deviceId}`]);
    assert.deepEqual(both.body.device_keys[bob.userId][bob.deviceId].keys, bobDevice.keys);
    assert.deepEqual(both.body.master_keys[alice.userId], acs.masterKey);
  } finally {
    await server.stop();
  }
});

test('two devices uploading different first cross-signing keys at once: one set wins, none replaced without the password', async () => {
  const server = await startServer();
  try {
    const alice = await signIn(server, 'alice');
    const res = await api(server.url, 'POST', `${CS}/login`, {
      body: { type: 'm.login.password', identifier: { type: 'm.id.user', user: 'alice' }, password: 'secret-alice', device_id: 'SECOND' },
    });
    assert.equal(res.status, 200, res.text);
    const second = userHandle(server.url, res.body);
    const sets = [crossSigning(alice.userId), crossSigning(alice.userId)];
    const [a, b] = await Promise.all([alice, second].map((u, i) => signingUpload(u, { master_key: sets[i].masterKey, self_signing_key: sets[i].selfSigningKey })));
    const statuses = [a.status, b.status];
    assert.equal(statuses.filter((s) => s === 200).length, 1, `exactly one wins: ${a.text} ${b.text}`);
    const loser = statuses[0] === 200 ? b : a;
    assert.ok(loser.status === 401 || loser.status === 409, loser.text);
    const winner = sets[statuses.indexOf(200)];
    const seen = await query(alice, { [alice.userId]: [] });
    assert.deepEqual(seen.body.master_keys[alice.userId], winner.masterKey);
    assert.deepEqual(seen.body.self_signing_keys[alice.userId], winner.selfSigningKey);
  } finally {
    await server.stop();
  }
});
