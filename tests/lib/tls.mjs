// Test fixture: HTTPS in front of mxvoip-server the way it is deployed, with Debian's nginx
// terminating TLS on free loopback ports and a certificate authority made for the test with
// the openssl command line. Three sites proxy to the same homeserver:
//   port         - a certificate for `localhost` from the test CA, and a .well-known/matrix/client
//                  naming this site
//   expiredPort  - the same name and CA, but valid only in 2020
//   insecurePort - the good certificate, and a .well-known naming a plain-HTTP homeserver
// The ports are reserved before the homeserver starts, so its server name can be
// localhost:<port> and user ids lead to the first site.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, mkdirSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './coturn.mjs';

const NGINX = '/usr/sbin/nginx';

function run(cmd, args, cwd) {
  const res = spawnSync(cmd, args, { cwd, encoding: 'utf8' });
  if (res.error?.code === 'ENOENT') throw new Error(`${cmd} is not installed: run scripts/setup`);
  if (res.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed:\n${res.stdout}${res.stderr}`);
  return res.stdout;
}

// A CA and two certificates for `localhost` signed by it: one valid now, one that expired.
export function makeCertificates(dir) {
  const ssl = (...args) => run('openssl', args, dir);
  ssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=mxvoip test CA');
  writeFileSync(join(dir, 'index.txt'), '');
  writeFileSync(join(dir, 'serial'), '1000\n');
  writeFileSync(join(dir, 'ca.cnf'), [
    '[ca]', 'default_ca = test',
    '[test]', `dir = ${dir}`, 'database = $dir/index.txt', 'new_certs_dir = $dir', 'serial = $dir/serial',
    'certificate = $dir/ca.pem', 'private_key = $dir/ca.key', 'default_md = sha256', 'policy = any',
    'unique_subject = no', 'x509_extensions = server',
    '[any]', 'commonName = supplied',
    '[server]', 'subjectAltName = DNS:localhost', 'extendedKeyUsage = serverAuth', 'basicConstraints = CA:FALSE',
  ].join('\n') + '\n');
  for (const [name, dates] of [['good', ['-days', '2']], ['expired', ['-startdate', '20200101000000Z', '-enddate', '20200102000000Z']]]) {
    ssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', '/CN=localhost');
    ssl('ca', '-batch', '-config', 'ca.cnf', '-notext', '-in', `${name}.csr`, '-out', `${name}.pem`, ...dates);
  }
}

async function listening(port, timeoutMs = 10000) {
  const start = Date.now();
  for (;;) {
    const up = await new Promise((resolve) => {
      const s = connect(port, '127.0.0.1', () => s.end(() => resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (up) return;
    if (Date.now() - start > timeoutMs) throw new Error(`nginx does not listen on ${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// Reserves the ports; `start(upstreamUrl)` then runs nginx in front of the homeserver.
export async function tlsProxy() {
  if (!existsSync(NGINX)) throw new Error(`${NGINX} is missing: run scripts/setup (it installs nginx-light)`);
  const dir = mkdtempSync(join(tmpdir(), 'mxvoip-tls-'));
  makeCertificates(dir);
  const port = await freePort();
  const expiredPort = await freePort();
  const insecurePort = await freePort();
  let proc = null;
  let exited = null;
  let log = '';
  return {
    port,
    expiredPort,
    insecurePort,
    caFile: join(dir, 'ca.pem'),
    serverName: `localhost:${port}`,
    url: `https://localhost:${port}`,
    async start(upstream) {
      for (const d of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) mkdirSync(join(dir, d), { recursive: true });
      const proxy = [
        `location / { proxy_pass ${upstream}; proxy_http_version 1.1; proxy_set_header Host $host;`,
        '  proxy_set_header X-Forwarded-For $remote_addr; proxy_buffering off; proxy_read_timeout 300s; }',
      ].join('\n');
      const site = (p, cert, extra = '') => `server {
  listen 127.0.0.1:${p} ssl; server_name localhost;
  ssl_certificate ${join(dir, cert)}.pem; ssl_certificate_key ${join(dir, cert)}.key;
  ssl_protocols TLSv1.2 TLSv1.3;
  ${extra}
  ${proxy}
}`;
      const wk = (baseUrl) => `location = /.well-known/matrix/client { default_type application/json; return 200 '${JSON.stringify({ 'm.homeserver': { base_url: baseUrl } })}'; }`;
      writeFileSync(join(dir, 'nginx.conf'), `daemon off;
master_process off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events { worker_connections 512; }
http {
  access_log ${dir}/access.log;
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  ${site(port, 'good', wk(`https://localhost:${port}`))}
  ${site(expiredPort, 'expired')}
  ${site(insecurePort, 'good', wk('http://homeserver.invalid:8008'))}
}
`);
      proc = spawn(NGINX, ['-p', dir, '-c', join(dir, 'nginx.conf')], { stdio: ['ignore', 'pipe', 'pipe'] });
      proc.on('error', () => {});
      proc.stdout.on('data', (c) => (log += c));
      proc.stderr.on('data', (c) => (log += c));
      exited = new Promise((resolve) => proc.on('close', resolve));
      const failed = exited.then((code) => {
        throw new Error(`nginx exited (${code}) at start:\n${log}`);
      });
      failed.catch(() => {}); // once started, its exit at stop() is expected
      await Promise.race([Promise.all([port, expiredPort, insecurePort].map((p) => listening(p))), failed]);
    },
    // Requests nginx saw, one line each (the client's plain-HTTP refusal leaves none).
    accessLog: () => readFileSync(join(dir, 'access.log'), 'utf8'),
    async stop() {
      if (proc && proc.exitCode === null) {
        proc.kill('SIGQUIT');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
