// The webrtcbin media engine on its own: two sessions in one process (media_pair_test),
// relay-only through a real coturn on loopback, with TURN over TCP (see README: libnice).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { startCoturn } from '../lib/coturn.mjs';

test('two webrtcbin sessions relay through coturn: tone, video, screen share, hold', async () => {
  const binary = process.env.MXVOIP_MEDIA_PAIR_TEST;
  assert.ok(binary, 'MXVOIP_MEDIA_PAIR_TEST is not set: run through ctest after scripts/build');
  const secret = randomBytes(24).toString('hex');
  const coturn = await startCoturn({ secret });
  try {
    const username = `${Math.floor(Date.now() / 1000) + 600}:@media:mxvoip.test`;
    const password = createHmac('sha1', secret).update(username).digest('base64');
    const res = spawnSync(binary, [], {
      encoding: 'utf8',
      timeout: 120000,
      env: {
        ...process.env,
        MXVOIP_TURN_URI: `turn:127.0.0.1:${coturn.port}?transport=tcp`,
        MXVOIP_TURN_USERNAME: username,
        MXVOIP_TURN_PASSWORD: password,
      },
    });
    assert.equal(res.status, 0, `media_pair_test failed:\n${res.stdout}\n${res.stderr}`);
    const log = coturn.log();
    assert.match(log, /ALLOCATE.*success/, 'coturn saw no allocation');
    assert.match(log, /CREATE_PERMISSION/, 'coturn saw no permission');
  } finally {
    await coturn.stop();
  }
});
