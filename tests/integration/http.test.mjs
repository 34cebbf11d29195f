// HTTP behaviour shared by every endpoint: CORS, OPTIONS, unknown paths and methods, body
// limits and rate limiting.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, api, register, CS } from '../lib/harness.mjs';

let server;
before(async () => {
  server = await startServer({
    config: {
      max_request_body_size: '100K',
      rc_message: { per_second: 0.5, burst_count: 3 },
      rc_login: { per_second: 0.1, burst_count: 2 },
      rc_registration: { per_second: 0.1, burst_count: 3 },
    },
  });
});
after(async () => server.stop());

test('every response carries CORS headers; OPTIONS needs no token', async () => {
  const opt = await api(server.url, 'OPTIONS', `${CS}/sync`, { headers: { Origin: 'https://app.example', 'Access-Control-Request-Method': 'GET' } });
  assert.equal(opt.status, 200);
  assert.equal(opt.headers.get('access-control-allow-origin'), '*');
  assert.match(opt.headers.get('access-control-allow-methods'), /PUT/);
  assert.match(opt.headers.get('access-control-allow-headers'), /Authorization/);
  const err = await api(server.url, 'GET', `${CS}/sync`);
  assert.equal(err.status, 401);
  assert.equal(err.headers.get('access-control-allow-origin'), '*');
  assert.equal(err.headers.get('content-type'), 'application/json');
});

test('unknown endpoint is 404 M_UNRECOGNIZED, a known one with the wrong method 405', async () => {
  const missing = await api(server.url, 'GET', `${CS}/no/such/thing`);
  assert.equal(missing.status, 404);
  assert.equal(missing.body.errcode, 'M_UNRECOGNIZED');
  const method = await api(server.url, 'DELETE', `${CS}/login`);
  assert.equal(method.status, 405);
  assert.equal(method.body.errcode, 'M_UNRECOGNIZED');
});

test('a body over max_request_body_size is 413 M_TOO_LARGE', async () => {
  const res = await api(server.url, 'POST', `${CS}/login`, { raw: JSON.stringify({ pad: 'x'.repeat(200 * 1024) }) });
  assert.equal(res.status, 413);
  assert.equal(res.body.errcode, 'M_TOO_LARGE');
});

test('rc_message: 429 M_LIMIT_EXCEEDED with retry_after_ms and Retry-After', async () => {
  const u = await register(server.url, 'chatty');
  const roomId = await u.createRoom({});  // takes one action from the bucket
  const statuses = [];
  let limited;
  for (let i = 0; i < 4; i++) {
    const res = await u.send(roomId, 'm.room.message', { body: `${i}`, msgtype: 'm.text' });
    statuses.push(res.status);
    if (res.status === 429) limited = res;
  }
  assert.deepEqual(statuses.slice(0, 2), [200, 200]);
  assert.ok(limited, `expected a 429 in ${statuses}`);
  assert.equal(limited.body.errcode, 'M_LIMIT_EXCEEDED');
  assert.ok(limited.body.retry_after_ms > 0 && limited.body.retry_after_ms <= 2000, `${limited.body.retry_after_ms}`);
  assert.ok(Number(limited.headers.get('retry-after')) >= 1);
  assert.match(limited.headers.get('access-control-expose-headers'), /Retry-After/);
});

test('rc_login and rc_registration limit by address', async () => {
  const codes = [];
  for (let i = 0; i < 3; i++) {
    const res = await api(server.url, 'POST', `${CS}/login`, { body: { type: 'm.login.password', user: 'x', password: 'y' } });
    codes.push(res.status);
  }
  assert.deepEqual(codes, [403, 403, 429]);
  const reg = [];
  for (let i = 0; i < 3; i++) {
    const res = await api(server.url, 'POST', `${CS}/register`, { body: { username: `r${i}`, password: 'y', auth: { type: 'm.login.dummy' } } });
    reg.push(res.status);
  }
  assert.equal(reg.at(-1), 429);
});

test('malformed requests never crash the server', async () => {
  const u = await register(server.url, 'fuzzy').catch(() => null);
  const token = u?.token;
  const bodies = ['', 'null', '{"a":', '\u0000', '{"a":"\ud800"}', '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]'];
  for (const raw of bodies) {
    const res = await api(server.url, 'POST', `${CS}/createRoom`, { token, raw });
    assert.ok([400, 401, 429].includes(res.status), `${JSON.stringify(raw)} -> ${res.status}`);
  }
  const alive = await api(server.url, 'GET', '/_matrix/client/versions');
  assert.equal(alive.status, 200);
});
