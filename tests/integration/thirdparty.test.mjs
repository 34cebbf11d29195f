// Third-party lookups (third_party_lookup.yaml) on a server that bridges to no network:
// Element asks for the protocols at every start and offers a dial pad only if one is a
// phone network.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, api, register, CS } from '../lib/harness.mjs';

let server;
let alice;
before(async () => {
  server = await startServer();
  alice = await register(server.url, 'alice');
});
after(async () => server.stop());

test('no protocols: an empty object, and every protocol, location and user lookup in one is 404 M_NOT_FOUND', async () => {
  const protocols = await alice.call('GET', '/thirdparty/protocols');
  assert.equal(protocols.status, 200);
  assert.deepEqual(protocols.body, {});
  for (const path of ['/thirdparty/protocol/im.vector.protocol.sip_native', '/thirdparty/location/irc', '/thirdparty/user/gitter']) {
    const res = await alice.call('GET', path, { query: { search: 'x' } });
    assert.equal(res.status, 404, path);
    assert.equal(res.body.errcode, 'M_NOT_FOUND', path);
    assert.match(res.body.error, /bridges to none/);
  }
});

test('reverse lookups find nothing, and name their missing parameter', async () => {
  const location = await alice.call('GET', '/thirdparty/location', { query: { alias: '#room:localhost' } });
  assert.equal(location.status, 200);
  assert.deepEqual(location.body, []);
  const user = await alice.call('GET', '/thirdparty/user', { query: { userid: alice.userId } });
  assert.equal(user.status, 200);
  assert.deepEqual(user.body, []);
  for (const [path, param] of [['/thirdparty/location', 'alias'], ['/thirdparty/user', 'userid']]) {
    const res = await alice.call('GET', path);
    assert.equal(res.status, 400, path);
    assert.equal(res.body.errcode, 'M_MISSING_PARAM');
    assert.match(res.body.error, new RegExp(param));
  }
});

test('lookups need an access token', async () => {
  for (const path of ['/thirdparty/protocols', '/thirdparty/protocol/irc', '/thirdparty/user?userid=@a:b']) {
    const res = await api(server.url, 'GET', CS + path);
    assert.equal(res.status, 401, path);
    assert.equal(res.body.errcode, 'M_MISSING_TOKEN');
  }
});
