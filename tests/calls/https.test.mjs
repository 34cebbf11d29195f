// mxvoip on HTTPS, as on the real network: Debian's nginx terminates TLS in front of
// mxvoip-server (whose server name is nginx's localhost:<port>) and serves
// .well-known/matrix/client, so the clients are given only a user id and the test CA.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCallRig, exitOf } from '../lib/calls.mjs';
import { tlsProxy } from '../lib/tls.mjs';

let tls;
let rig;
let stateDir;
before(async () => {
  tls = await tlsProxy();
  rig = await startCallRig({ users: [], serverConfig: { server_name: tls.serverName } });
  await tls.start(rig.server.url);
  stateDir = mkdtempSync(join(tmpdir(), 'mxvoip-https-'));
});
after(async () => {
  await rig?.stop();
  await tls?.stop();
  if (stateDir) rmSync(stateDir, { recursive: true, force: true });
});

// `mxvoip` as `user` with the test's state directory; `args` go after the global options.
function mxvoip(user, args, { password, global = [] } = {}) {
  const env = password ? { MXVOIP_PASSWORD: password } : {};
  return rig.cli(user, ['--user', user, '--state-dir', stateDir, '--json', ...global, ...args], env);
}

// Runs a short command to its end: { code, stderr }.
async function finished(client) {
  const res = await exitOf(client, 30000);
  return { code: res.code, stderr: client.stderr, describe: client.describe() };
}

test('register, call and answer given only the user id and --ca-file', async () => {
  const ca = ['--ca-file', tls.caFile];
  const carol = `@carol:${tls.serverName}`;
  const dave = `@dave:${tls.serverName}`;
  for (const user of [carol, dave]) {
    const reg = mxvoip(user, ['register'], { password: `pw of ${user}`, global: ca });
    const res = await finished(reg);
    assert.equal(res.code, 0, res.describe);
    assert.equal(reg.events.find((e) => e.event === 'registered')?.user_id, user, res.describe);
  }
  // dave signs in again with his password (the homeserver found from his user id once more);
  // carol uses the session `register` stored (and the homeserver stored with it).
  const answer = mxvoip(dave, ['answer', '--auto'], { password: `pw of ${dave}`, global: ca });
  await answer.waitFor((e) => e.event === 'ready');
  const call = mxvoip(carol, ['call', dave, '--hangup-after', '2'], { global: ca });
  const [c, d] = await Promise.all([exitOf(call, 90000), exitOf(answer, 90000)]);
  const why = `${call.describe()}\n${answer.describe()}`;
  assert.equal(c.code, 0, why);
  assert.equal(d.code, 0, why);
  assert.equal(call.summary().end_reason, 'user_hangup', why);
  assert.equal(answer.summary().call_id, call.summary().call_id, why);
  for (const s of [call.summary(), answer.summary()]) {
    assert.ok(s.streams.find((x) => x.kind === 'audio')?.frames > 0, why);
  }
  // Every request went through nginx: TLS all the way.
  assert.match(tls.accessLog(), /GET \/\.well-known\/matrix\/client/);
  // The direct chat mxvoip made is encrypted: call events go out as m.room.encrypted, after
  // the room key went to-device.
  assert.match(tls.accessLog(), /PUT \/_matrix\/client\/v3\/sendToDevice\/m\.room\.encrypted\//);
  assert.match(tls.accessLog(), /PUT \/_matrix\/client\/v3\/rooms\/[^ ]+\/send\/m\.room\.encrypted\//);
});

test('certificates that must not be trusted are refused, each with its reason', async () => {
  const user = `@erin:${tls.serverName}`;
  const cases = [
    ['an unknown CA', [], /certificate of localhost is refused: it is issued by an unknown certificate authority/],
    ['a wrong host name', ['--ca-file', tls.caFile, '--homeserver', `https://127.0.0.1:${tls.port}`], /certificate of 127\.0\.0\.1 is refused: it is not valid for the host name 127\.0\.0\.1/],
    ['an expired certificate', ['--ca-file', tls.caFile, '--homeserver', `https://localhost:${tls.expiredPort}`], /certificate of localhost is refused: it has expired/],
  ];
  for (const [what, global, message] of cases) {
    const res = await finished(mxvoip(user, ['login'], { password: 'irrelevant', global }));
    assert.equal(res.code, 6, `${what}: ${res.describe}`);
    assert.match(res.stderr, message, what);
  }
});

test('no plain-HTTP request leaves the client unless allowed', async () => {
  const before = tls.accessLog();
  // Given on the command line...
  const direct = await finished(mxvoip('@frank:homeserver.invalid', ['login'], { password: 'pw', global: ['--homeserver', 'http://homeserver.invalid:8008'] }));
  assert.equal(direct.code, 1, direct.describe);
  assert.match(direct.stderr, /refusing plain HTTP to http:\/\/homeserver\.invalid:8008/);
  // ... or named by a server's .well-known.
  const found = await finished(mxvoip(`@frank:localhost:${tls.insecurePort}`, ['login'], { password: 'pw', global: ['--ca-file', tls.caFile] }));
  assert.equal(found.code, 6, found.describe);
  assert.match(found.stderr, /points to an unusable homeserver: refusing plain HTTP to http:\/\/homeserver\.invalid:8008/);
  // Neither sent its password anywhere: the only request was the .well-known lookup.
  const lines = tls.accessLog().slice(before.length).trim().split('\n');
  assert.equal(lines.length, 1, lines.join('\n'));
  assert.match(lines[0], /GET \/\.well-known\/matrix\/client/);
});
