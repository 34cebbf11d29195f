// Server-side key backup (room_keys): versions, keys at the three levels with etag and count,
// the spec's rule for which of two keys of a session the backup keeps, the current version
// as the only one that takes keys, and all of it across a restart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { startServer, register, makeDir, userHandle } from '../lib/harness.mjs';

const ALGORITHM = 'm.megolm_backup.v1.curve25519-aes-sha2';
const key = (fmi, fc, verified, tag = 'x') => ({
  first_message_index: fmi,
  forwarded_count: fc,
  is_verified: verified,
  session_data: { ephemeral: `e-${tag}`, ciphertext: `c-${tag}`, mac: `m-${tag}` },
});

test('backup versions: create, read the latest or one, update auth_data, delete', async () => {
  const server = await startServer();
  try {
    const alice = await register(server.url, 'alice');
    const bob = await register(server.url, 'bob');
    const none = await alice.call('GET', '/room_keys/version');
    assert.equal(none.status, 404, none.text);
    assert.equal(none.body.errcode, 'M_NOT_FOUND');

    const v1 = await alice.call('POST', '/room_keys/version', { body: { algorithm: ALGORITHM, auth_data: { public_key: 'k1' } } });
    assert.equal(v1.status, 200, v1.text);
    assert.equal(v1.body.version, '1');
    const v2 = await alice.call('POST', '/room_keys/version', { body: { algorithm: ALGORITHM, auth_data: { public_key: 'k2' } } });
    assert.equal(v2.body.version, '2');
    const latest = await alice.call('GET', '/room_keys/version');
    assert.deepEqual(latest.body, { algorithm: ALGORITHM, auth_data: { public_key: 'k2' }, count: 0, etag: '0', version: '2' });
    assert.equal((await alice.call('GET', '/room_keys/version/1')).body.auth_data.public_key, 'k1');
    assert.equal((await bob.call('GET', '/room_keys/version')).status, 404, 'each user has their own backups');
    assert.equal((await alice.call('GET', '/room_keys/version/7')).status, 404);
    assert.equal((await alice.call('GET', '/room_keys/version/x')).status, 404);

    const update = await alice.call('PUT', '/room_keys/version/2', { body: { algorithm: ALGORITHM, auth_data: { public_key: 'k2', signatures: {} }, version: '2' } });
    assert.equal(update.status, 200, update.text);
    assert.deepEqual((await alice.call('GET', '/room_keys/version/2')).body.auth_data, { public_key: 'k2', signatures: {} });
    const otherAlgorithm = await alice.call('PUT', '/room_keys/version/2', { body: { algorithm: 'org.example.other', auth_data: {} } });
    assert.equal(otherAlgorithm.status, 400);
    assert.equal(otherAlgorithm.body.errcode, 'M_INVALID_PARAM');
    const otherVersion = await alice.call('PUT', '/room_keys/version/2', { body: { algorithm: ALGORITHM, auth_data: {}, version: '1' } });
    assert.equal(otherVersion.status, 400);
    assert.equal((await alice.call('PUT', '/room_keys/version/9', { body: { algorithm: ALGORITHM, auth_data: {} } })).status, 404);
    assert.equal((await alice.call('POST', '/room_keys/version', { body: { algorithm: ALGORITHM } })).status, 400);

    assert.equal((await alice.call('DELETE', '/room_keys/version/2')).status, 200);
    assert.equal((await alice.call('GET', '/room_keys/version')).body.version, '1', 'the latest left');
    assert.equal((await alice.call('GET', '/room_keys/version/2')).status, 404);
    assert.equal((await alice.call('DELETE', '/room_keys/version/2')).status, 404);
    const v3 = await alice.call('POST', '/room_keys/version', { body: { algorithm: ALGORITHM, auth_data: {} } });
    assert.equal(v3.body.version, '3', 'a deleted version\'s number is not reused');
  } finally {
    await server.stop();
  }
});

test('backup keys at three levels, with etag and count; the better key of a session is kept; only the current version takes keys', async () => {
  const dir = makeDir();
  let server = await startServer({ dir });
  try {
    const alice = await register(server.url, 'alice');
    await alice.call('POST', '/room_keys/version', { body: { algorithm: ALGORITHM, auth_data: { public_key: 'old' } } });
    await alice.call('POST', '/room_keys/version', { body: { algorithm: ALGORITHM, auth_data: { public_key: 'new' } } });
    const put = (path, body, version = '2') => alice.call('PUT', `/room_keys/keys${path}`, { query: { version }, body });
    const get = (path, version = '2') => alice.call('GET', `/room_keys/keys${path}`, { query: { version } });

    const all = await put('', { rooms: { '!a:localhost': { sessions: { s1: key(5, 0, false), s2: key(0, 0, false) } } } });
    assert.equal(all.status, 200, all.text);
    assert.deepEqual(all.body, { count: 2, etag: '1' });
    const room = await put('/!b:localhost', { sessions: { s3: key(0, 0, true) } });
    assert.deepEqual(room.body, { count: 3, etag: '2' });
    const one = await put('/!b:localhost/s4', key(0, 1, false));
    assert.deepEqual(one.body, { count: 4, etag: '3' });

    // Which key of a session the backup keeps.
    assert.deepEqual((await put('/!a:localhost/s1', key(7, 0, false, 'worse'))).body, { count: 4, etag: '3' }, 'a later first index changes nothing');
    assert.deepEqual((await put('/!a:localhost/s1', key(2, 0, false, 'lower'))).body, { count: 4, etag: '4' });
    assert.equal((await get('/!a:localhost/s1')).body.session_data.ciphertext, 'c-lower');
    await put('/!a:localhost/s1', key(9, 3, true, 'verified'));
    assert.equal((await get('/!a:localhost/s1')).body.session_data.ciphertext, 'c-verified', 'verified beats unverified');
    await put('/!a:localhost/s1', key(0, 0, false, 'unverified'));
    assert.equal((await get('/!a:localhost/s1')).body.session_data.ciphertext, 'c-verified');
    await put('/!b:localhost/s4', key(0, 0, false, 'fewer-forwards'));
    assert.equal((await get('/!b:localhost/s4')).body.session_data.ciphertext, 'c-fewer-forwards');

    // Reading at three levels.
    const everything = await get('');
    assert.deepEqual(Object.keys(everything.body.rooms).sort(), ['!a:localhost', '!b:localhost']);
    assert.deepEqual(Object.keys(everything.body.rooms['!a:localhost'].sessions).sort(), ['s1', 's2']);
    assert.deepEqual((await get('/!b:localhost')).body.sessions.s3, key(0, 0, true));
    assert.deepEqual((await get('/!c:localhost')).body, { sessions: {} });
    const missing = await get('/!c:localhost/s9');
    assert.equal(missing.status, 404);
    assert.equal(missing.body.errcode, 'M_NOT_FOUND');

    // An old version does not take keys; an unknown one does not exist.
    const wrong = await put('/!a:localhost/s5', key(0, 0, false), '1');
    assert.equal(wrong.status, 403, wrong.text);
    assert.equal(wrong.body.errcode, 'M_WRONG_ROOM_KEYS_VERSION');
    assert.equal(wrong.body.current_version, '2');
    assert.equal((await put('/!a:localhost/s5', key(0, 0, false), '8')).status, 404);
    assert.equal((await get('', '8')).status, 404);
    assert.equal((await alice.call('GET', '/room_keys/keys')).status, 400, 'version is required');
    assert.equal((await put('/!a:localhost/s5', { first_message_index: 0 })).status, 400);
    assert.equal((await put('', { rooms: { '!a:localhost': { sessions: { s6: key(0, 0, false), s7: 'bad' } } } })).status, 400);
    assert.equal((await get('/!a:localhost/s6')).status, 404, 'a refused request keeps nothing');

    // After a restart: the keys, the counts and what decides a replacement.
    await server.stop();
    server = await startServer({ dir });
    const alice2 = userHandle(server.url, { user_id: alice.userId, access_token: alice.token, device_id: alice.deviceId });
    const version = await alice2.call('GET', '/room_keys/version');
    assert.equal(version.body.count, 4);
    const etag = version.body.etag;
    const again = await alice2.call('PUT', '/room_keys/keys/!a:localhost/s1', { query: { version: '2' }, body: key(0, 0, false, 'still-unverified') });
    assert.deepEqual(again.body, { count: 4, etag }, 'the verified key still wins');

    // Deleting at three levels.
    const del = (path) => alice2.call('DELETE', `/room_keys/keys${path}`, { query: { version: '2' } });
    assert.equal((await del('/!b:localhost/s4')).body.count, 3);
    assert.equal((await del('/!a:localhost')).body.count, 1);
    const cleared = await del('');
    assert.equal(cleared.body.count, 0);
    assert.notEqual(cleared.body.etag, etag);
    assert.deepEqual((await alice2.call('GET', '/room_keys/keys', { query: { version: '2' } })).body, { rooms: {} });
  } finally {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a user keeps a bounded number of backup versions and keys: past either, 403, and nothing of the request is kept', async () => {
  const server = await startServer({ config: { limits: { backup_versions_per_user: 2, backup_keys_per_version: 3 } } });
  try {
    const alice = await register(server.url, 'alice');
    const create = () => alice.call('POST', '/room_keys/version', { body: { algorithm: ALGORITHM, auth_data: {} } });
    assert.equal((await create()).body.version, '1');
    assert.equal((await create()).body.version, '2');
    const third = await create();
    assert.equal(third.status, 403, third.text);
    assert.equal(third.body.errcode, 'M_FORBIDDEN');
    // Deleted versions do not count, and their numbers are still not made again.
    assert.equal((await alice.call('DELETE', '/room_keys/version/1')).status, 200);
    assert.equal((await create()).body.version, '3');
    assert.equal((await alice.call('DELETE', '/room_keys/version/3')).status, 200);
    assert.equal((await alice.call('DELETE', '/room_keys/version/2')).status, 200);
    assert.equal((await create()).body.version, '4');

    const put = (body) => alice.call('PUT', '/room_keys/keys/!a:localhost', { query: { version: '4' }, body: { sessions: body } });
    assert.deepEqual((await put({ s1: key(5, 0, false), s2: key(5, 0, false) })).body, { count: 2, etag: '1' });
    const over = await put({ s3: key(0, 0, false), s4: key(0, 0, false) });
    assert.equal(over.status, 403, over.text);
    assert.equal(over.body.errcode, 'M_FORBIDDEN');
    const version = await alice.call('GET', '/room_keys/version/4');
    assert.equal(version.body.count, 2, 'an upload past the limit keeps none of its keys');
    assert.equal(version.body.etag, '1');
    assert.deepEqual((await put({ s3: key(0, 0, false) })).body, { count: 3, etag: '2' });
    // Full, a version still takes better keys for the sessions it has.
    assert.deepEqual((await put({ s1: key(0, 0, true, 'better') })).body, { count: 3, etag: '3' });
    assert.equal((await put({ s5: key(0, 0, false) })).status, 403);
  } finally {
    await server.stop();
  }
});

test('secret storage lives in account data: m.secret_storage.* and the encrypted secrets round-trip', async () => {
  const server = await startServer();
  try {
    const alice = await register(server.url, 'alice');
    const user = encodeURIComponent(alice.userId);
    const secrets = {
      'm.secret_storage.key.KEYID': { algorithm: 'm.secret_storage.v1.aes-hmac-sha2', iv: 'aXY', mac: 'bWFj', passphrase: { algorithm: 'm.pbkdf2', iterations: 500000, salt: 'c2FsdA' } },
      'm.secret_storage.default_key': { key: 'KEYID' },
      'm.cross_signing.master': { encrypted: { KEYID: { iv: 'aXY', ciphertext: 'Y2lwaGVy', mac: 'bWFj' } } },
      'm.cross_signing.self_signing': { encrypted: { KEYID: { iv: 'aXY', ciphertext: 'c2VsZg', mac: 'bWFj' } } },
      'm.cross_signing.user_signing': { encrypted: { KEYID: { iv: 'aXY', ciphertext: 'dXNlcg', mac: 'bWFj' } } },
      'm.megolm_backup.v1': { encrypted: { KEYID: { iv: 'aXY', ciphertext: 'YmFja3Vw', mac: 'bWFj' } } },
    };
    for (const [type, content] of Object.entries(secrets)) {
      const res = await alice.call('PUT', `/user/${user}/account_data/${type}`, { body: content });
      assert.equal(res.status, 200, `${type}: ${res.text}`);
    }
    for (const [type, content] of Object.entries(secrets))
      assert.deepEqual((await alice.call('GET', `/user/${user}/account_data/${type}`)).body, content);
    const sync = await alice.sync();
    const synced = Object.fromEntries(sync.account_data.events.map((e) => [e.type, e.content]));
    for (const [type, content] of Object.entries(secrets)) assert.deepEqual(synced[type], content);
  } finally {
    await server.stop();
  }
});
