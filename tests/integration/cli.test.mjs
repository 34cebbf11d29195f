// The mxvoip-server command line: configuration errors name the key and its line, and
// `user add` creates accounts when registration is closed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { SERVER_BIN, startServer, api, makeDir, CS } from '../lib/harness.mjs';

function runWithConfig(text) {
  const dir = makeDir();
  try {
    const path = join(dir, 'bad.yaml');
    writeFileSync(path, text);
    return spawnSync(SERVER_BIN, ['--config', path], { encoding: 'utf8', timeout: 10000 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('an unknown key stops start-up naming the key and its line', () => {
  const res = runWithConfig('server_name: example.org\nlisten: ["127.0.0.1:0"]\nturn_urix: []\n');
  assert.equal(res.status, 2);
  assert.match(res.stderr, /bad\.yaml:3: turn_urix: unknown key/);
});

test('bad values name the key and line', () => {
  const cases = [
    ['listen: ["127.0.0.1:99999"]\n', /:1: listen: port must be 0 to 65535/],
    ['enable_registration: maybe\n', /:1: enable_registration: must be true or false/],
    ['rc_message:\n  per_second: fast\n  burst_count: 3\n', /:2: rc_message\.per_second: must be a number/],
    ['rc_login:\n  per_second: 1\n', /rc_login\.burst_count: is required/],
    ['database:\n  backend: mongodb\n', /:2: database\.backend: must be sqlite or postgres/],
    ['database:\n  backend: postgres\n', /:2: database: backend postgres needs a dsn/],
    ['database:\n  path: x\n  colour: blue\n', /:3: database\.colour: unknown key/],
    ['max_request_body_size: 10\n', /max_request_body_size: must be at least/],
    ['log_level: loud\n', /log_level: must be one of/],
    ['server_name: "bad name"\n', /server_name: must be a host name/],
    ['listen: [\n', /not valid YAML/],
  ];
  for (const [text, pattern] of cases) {
    const res = runWithConfig(text);
    assert.equal(res.status, 2, text);
    assert.match(res.stderr, pattern, text);
  }
});

test('--help explains the options', () => {
  const res = spawnSync(SERVER_BIN, ['--help'], { encoding: 'utf8' });
  assert.equal(res.status, 0);
  assert.match(res.stdout, /--config/);
  assert.match(res.stdout, /development defaults/);
});

test('user add creates an account that can log in while registration is closed', async () => {
  const dir = makeDir();
  try {
    const pwFile = join(dir, 'pw');
    writeFileSync(pwFile, 'correct horse\n');
    let server = await startServer({ dir, config: { enable_registration: false } });
    await server.stop();
    const configPath = join(dir, 'homeserver.yaml');
    const add = spawnSync(SERVER_BIN, ['--config', configPath, 'user', 'add', '@dana:localhost', '--password-file', pwFile], { encoding: 'utf8' });
    assert.equal(add.status, 0, add.stderr);
    const dup = spawnSync(SERVER_BIN, ['--config', configPath, 'user', 'add', '@dana:localhost', '--password-file', pwFile], { encoding: 'utf8' });
    assert.equal(dup.status, 1);
    assert.match(dup.stderr, /already exists/);
    const other = spawnSync(SERVER_BIN, ['--config', configPath, 'user', 'add', '@dana:elsewhere.org', '--password-file', pwFile], { encoding: 'utf8' });
    assert.equal(other.status, 1);
    const viaEnv = spawnSync(SERVER_BIN, ['--config', configPath, 'user', 'add', '@erin:localhost'], { encoding: 'utf8', env: { ...process.env, MXVOIP_PASSWORD: 'from env' }, input: '' });
    assert.equal(viaEnv.status, 0, viaEnv.stderr);
    server = await startServer({ dir, config: { enable_registration: false } });
    const login = await api(server.url, 'POST', `${CS}/login`, { body: { type: 'm.login.password', user: 'dana', password: 'correct horse' } });
    assert.equal(login.status, 200, login.text);
    const erin = await api(server.url, 'POST', `${CS}/login`, { body: { type: 'm.login.password', user: 'erin', password: 'from env' } });
    assert.equal(erin.status, 200, erin.text);
    await server.stop();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('without --config the first log line says development defaults are in force', async () => {
  const dir = makeDir();
  try {
    // The server runs until its first log line is out, then is stopped.
    const proc = spawn(SERVER_BIN, [], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
    const exited = new Promise((resolve) => proc.on('exit', resolve));
    let err = '';
    const first = await new Promise((resolve) => {
      proc.stderr.on('data', (chunk) => {
        err += chunk;
        if (err.includes('\n')) resolve(err.split('\n')[0]);
      });
      exited.then(() => resolve(err.split('\n')[0]));
    });
    proc.kill('SIGTERM');
    await exited;
    assert.match(first, /development defaults/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
