// The `mxvoip` command line without a server: `check-event`, the linter for call events, on
// the spec's examples and broken events; the exit status of usage errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';

const CLI = process.env.MXVOIP_CLI;
if (!CLI) throw new Error('MXVOIP_CLI must name the built mxvoip binary (run the tests with scripts/test)');
const DATA = 'libs/proto/tests/data';
const run = (args, input) => spawnSync(CLI, ['check-event', ...args], { encoding: 'utf8', input });

test('the spec examples pass, but for the typo in sdp_stream_metadata_changed', () => {
  const files = readdirSync(DATA).filter((f) => f.endsWith('.json')).map((f) => join(DATA, f));
  assert.equal(files.length, 8);
  const res = run(files);
  assert.equal(res.status, 1);
  const lines = res.stdout.trim().split('\n');
  assert.equal(lines.length, 8);
  assert.equal(lines.filter((l) => l.endsWith(': ok')).length, 7);
  assert.match(res.stdout, /m\.call\.sdp_stream_metadata_changed\.json: content\.sdp_stream_metadata\.2311546231\.audio_muted:: is not a stream metadata field/);
  const valid = run(files.filter((f) => !f.includes('metadata_changed')));
  assert.equal(valid.status, 0, valid.stdout);
});

test('bare content with --type from standard input; every violation is named by path', () => {
  const bad = run(['--type', 'm.call.invite', '-'], JSON.stringify({ call_id: 'c', party_id: 'p', version: '1', lifetime: 1, offer: { type: 'offer' } }));
  assert.equal(bad.status, 1);
  assert.equal(bad.stdout, 'stdin: content.offer.sdp: is required\n');
  const good = run(['--type', 'm.call.hangup'], JSON.stringify({ call_id: 'c', party_id: 'p', version: '1' }));
  assert.equal(good.status, 0);
  assert.equal(good.stdout, 'stdin: ok\n');
});

test('an array of full events; each gets its own verdict', () => {
  const events = [
    { type: 'm.call.candidates', content: { call_id: 'c', party_id: 'p', version: '1', candidates: [{ candidate: 'candidate:1 1 udp 1 1.2.3.4 9 typ host' }] } },
    { type: 'm.call.hangup', content: { call_id: 'c', party_id: 'p', version: '1', reason: 'replaced' } },
    { type: 'm.call.select_answer', content: { call_id: 'c', party_id: 'p', version: '1', selected_party_id: 'q' } },
    { content: {} },
  ];
  const res = run(['-'], JSON.stringify(events));
  assert.equal(res.status, 1);
  assert.deepEqual(res.stdout.trim().split('\n'), [
    'stdin[0]: content.candidates[0]: needs sdpMid or sdpMLineIndex (only the end-of-candidates marker may omit both)',
    "stdin[1]: content.reason: 'replaced' is not a spec hangup reason (ice_timeout, ice_failed, invite_timeout, user_hangup, user_media_failed, user_busy, unknown_error)",
    'stdin[2]: ok',
    'stdin[3]: type: is required (or give --type and pass bare content)',
  ]);
});

test('unreadable input is exit status 2, malformed JSON a violation', () => {
  assert.equal(run(['/nonexistent/event.json']).status, 2);
  const res = run(['-'], '{"type":');
  assert.equal(res.status, 1);
  assert.match(res.stdout, /^stdin: not JSON/);
});

test('a string version other than "1" is a note and valid; an integer other than 0 is a violation', () => {
  const hangup = (version) => JSON.stringify({ call_id: 'c', party_id: 'p', version });
  const experimental = run(['--type', 'm.call.hangup', '-'], hangup('2.5-experimental'));
  assert.equal(experimental.status, 0, experimental.stdout);
  assert.equal(experimental.stdout, 'stdin: content.version: note: experimental version "2.5-experimental": read as version "1"\nstdin: ok\n');
  const integer = run(['--type', 'm.call.hangup', '-'], hangup(2));
  assert.equal(integer.status, 1);
  assert.match(integer.stdout, /^stdin: content\.version: should be "1"/);
});

test('usage errors exit with status 1, as --help says; --help itself exits 0', () => {
  const mxvoip = (args) => spawnSync(CLI, args, { encoding: 'utf8' });
  for (const args of [['--no-such-option', 'check-event'], ['call'], ['answer', '--calls', '0'], []]) {
    const res = mxvoip(args);
    assert.equal(res.status, 1, `${args.join(' ')}: ${res.stderr}`);
    assert.notEqual(res.stderr, '', args.join(' '));
  }
  const help = mxvoip(['--help']);
  assert.equal(help.status, 0);
  assert.match(help.stdout, /1 usage/);
});
