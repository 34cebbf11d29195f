// The device management API: listing and renaming devices, and deleting them, which needs the
// account's password through user-interactive auth and takes the device's keys, tokens and
// queued messages with it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { startServer, api, makeDir, userHandle, CS } from '../lib/harness.mjs';

async function login(server, user, deviceId, name) {
  const res = await api(server.url, 'POST', `${CS}/login`, {
    body: { type: 'm.login.password', identifier: { type: 'm.id.user', user }, password: `secret-${user}`, device_id: deviceId, initial_device_display_name: name },
  });
  assert.equal(res.status, 200, res.text);
  return userHandle(server.url, res.body);
}

async function registerWithDevice(server, name, deviceId, displayName) {
  const res = await api(server.url, 'POST', `${CS}/register`, {
    body: { username: name, password: `secret-${name}`, device_id: deviceId, initial_device_display_name: displayName, auth: { type: 'm.login.dummy' } },
  });
  assert.equal(res.status, 200, res.text);
  return userHandle(server.url, res.body);
}

const password = (user, pw) => ({ type: 'm.login.password', identifier: { type: 'm.id.user', user }, password: pw });

test('devices are listed, renamed (also across a restart) and read one by one', async () => {
  const dir = makeDir();
  try {
    let server = await startServer({ dir });
    const phone = await registerWithDevice(server, 'alice', 'PHONE', 'Phone');
    await login(server, 'alice', 'LAPTOP', 'Laptop');
    const list = await phone.call('GET', '/devices');
    assert.equal(list.status, 200, list.text);
    const names = Object.fromEntries(list.body.devices.map((d) => [d.device_id, d.display_name]));
    assert.deepEqual(names, { PHONE: 'Phone', LAPTOP: 'Laptop' });
    assert.equal((await phone.call('PUT', '/devices/LAPTOP', { body: { display_name: 'Work laptop' } })).status, 200);
    assert.equal((await phone.call('PUT', '/devices/LAPTOP', { body: {} })).status, 200, 'no name: unchanged');
    const missing = await phone.call('PUT', '/devices/NOSUCH', { body: { display_name: 'x' } });
    assert.equal(missing.status, 404);
    assert.equal(missing.body.errcode, 'M_NOT_FOUND');
    await server.stop();
    server = await startServer({ dir });
    const again = userHandle(server.url, { user_id: phone.userId, access_token: phone.token, device_id: 'PHONE' });
    const one = await again.call('GET', '/devices/LAPTOP');
    assert.deepEqual(one.body, { device_id: 'LAPTOP', display_name: 'Work laptop' });
    assert.equal((await again.call('GET', '/devices/NOSUCH')).status, 404);
    await server.stop();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('deleting devices asks for the password (user-interactive auth) and signs them out', async () => {
  const server = await startServer();
  try {
    const phone = await registerWithDevice(server, 'alice', 'PHONE', 'Phone');
    const laptop = await login(server, 'alice', 'LAPTOP', 'Laptop');
    const tablet = await login(server, 'alice', 'TABLET', 'Tablet');
    await registerWithDevice(server, 'mallory', 'MDEV', 'M');

    const start = await phone.call('DELETE', '/devices/LAPTOP', { body: {} });
    assert.equal(start.status, 401, start.text);
    assert.deepEqual(start.body.flows, [{ stages: ['m.login.password'] }]);
    assert.ok(start.body.session);
    const wrong = await phone.call('DELETE', '/devices/LAPTOP', { body: { auth: { ...password('alice', 'guess'), session: start.body.session } } });
    assert.equal(wrong.status, 401);
    assert.equal(wrong.body.errcode, 'M_FORBIDDEN');
    assert.equal(wrong.body.session, start.body.session);
    const otherUser = await phone.call('DELETE', '/devices/LAPTOP', { body: { auth: password('mallory', 'secret-mallory') } });
    assert.equal(otherUser.status, 401);
    assert.equal(otherUser.body.errcode, 'M_FORBIDDEN');
    assert.equal((await laptop.call('GET', '/account/whoami')).status, 200, 'nothing was deleted yet');

    const done = await phone.call('DELETE', '/devices/LAPTOP', { body: { auth: { ...password('alice', 'secret-alice'), session: start.body.session } } });
    assert.equal(done.status, 200, done.text);
    const gone = await laptop.call('GET', '/account/whoami');
    assert.equal(gone.status, 401);
    assert.equal(gone.body.errcode, 'M_UNKNOWN_TOKEN');
    assert.equal((await phone.call('DELETE', '/devices/LAPTOP', { body: {} })).status, 404);

    const bulk = await phone.call('POST', '/delete_devices', { body: { devices: ['TABLET', 'NEVER'], auth: password('@alice:localhost', 'secret-alice') } });
    assert.equal(bulk.status, 200, bulk.text);
    assert.equal((await tablet.call('GET', '/account/whoami')).status, 401);
    assert.deepEqual((await phone.call('GET', '/devices')).body.devices.map((d) => d.device_id), ['PHONE']);
    const noList = await phone.call('POST', '/delete_devices', { body: {} });
    assert.equal(noList.status, 400);
  } finally {
    await server.stop();
  }
});

test('a device signed out takes its messages, pushers and transactions with it, for good', async () => {
  const dir = makeDir();
  try {
    let server = await startServer({ dir, config: { push: { allow_private_addresses: true } } });
    let phone = await registerWithDevice(server, 'erin', 'PHONE', 'Phone');
    const frank = await registerWithDevice(server, 'frank', 'FDEV', 'F');
    const room = await phone.createRoom({});
    const sent = await phone.send(room, 'm.room.message', { msgtype: 'm.text', body: 'once' }, 'txn-1');
    assert.equal(sent.status, 200);
    const toDevice = await frank.call('PUT', '/sendToDevice/m.test/t1', { body: { messages: { [phone.userId]: { PHONE: { n: 1 } } } } });
    assert.equal(toDevice.status, 200);
    const pusher = {
      kind: 'http', app_id: 'org.example.phone', pushkey: 'erin-phone', app_display_name: 'Phone',
      device_display_name: 'Phone', lang: 'en', data: { url: 'http://127.0.0.1:9/_matrix/push/v1/notify' },
    };
    assert.equal((await phone.call('POST', '/pushers/set', { body: pusher })).status, 200);
    assert.equal((await phone.call('POST', '/logout', { body: {} })).status, 200);

    await server.stop();
    server = await startServer({ dir, config: { push: { allow_private_addresses: true } } });
    // The same device id signs in again: a new device as far as anything kept goes.
    phone = await login(server, 'erin', 'PHONE', 'Phone again');
    const sync = await phone.sync();
    assert.deepEqual(sync.to_device?.events ?? [], []);
    assert.deepEqual((await phone.call('GET', '/pushers')).body.pushers, []);
    const again = await phone.send(room, 'm.room.message', { msgtype: 'm.text', body: 'twice' }, 'txn-1');
    assert.equal(again.status, 200);
    assert.notEqual(again.body.event_id, sent.body.event_id, 'the signed-out device\'s transaction is not recalled');
    assert.deepEqual((await phone.call('GET', '/devices')).body.devices.map((d) => [d.device_id, d.display_name]), [['PHONE', 'Phone again']]);
    await server.stop();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
