// Test fixture: matrix-js-sdk's call code in Debian's headless Chromium (fake camera,
// microphone and screen), bundled with esbuild, served from loopback, driven by
// playwright-core. Each client is its own browser context with its own page.
import { createServer } from 'node:http';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const here = dirname(fileURLToPath(import.meta.url));
export const CHROMIUM = '/usr/bin/chromium';

const FLAGS = [
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--autoplay-policy=no-user-gesture-required',
  // Nothing but loopback: every other host name fails to resolve.
  '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
];

export async function startBrowser() {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run scripts/setup (it installs chromium)`);
  let esbuild, chromium;
  try {
    esbuild = require('esbuild');
    ({ chromium } = require('playwright-core'));
  } catch (e) {
    throw new Error(`esbuild or playwright-core is missing: run scripts/setup (npm ci): ${e.message}`);
  }
  const dir = mkdtempSync(join(tmpdir(), 'mxvoip-page-'));
  // An ES module, so that matrix-js-sdk's Rust crypto finds its WebAssembly beside the bundle
  // (import.meta.url), served from the package as it is.
  await esbuild.build({
    entryPoints: [join(here, '../interop/page/page.js')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    outfile: join(dir, 'bundle.js'),
    logLevel: 'warning',
    define: { 'process.env.NODE_ENV': '"production"', global: 'globalThis' },
  });
  const sdkRequire = createRequire(require.resolve('matrix-js-sdk-browser'));
  const wasm = join(dirname(sdkRequire.resolve('@matrix-org/matrix-sdk-crypto-wasm')), 'pkg/matrix_sdk_crypto_wasm_bg.wasm');
  const files = {
    '/': [readFileSync(join(here, '../interop/page/index.html')), 'text/html'],
    '/bundle.js': [readFileSync(join(dir, 'bundle.js')), 'text/javascript'],
    '/pkg/matrix_sdk_crypto_wasm_bg.wasm': [readFileSync(wasm), 'application/wasm'],
  };
  const http = createServer((req, res) => {
    const file = files[new URL(req.url, 'http://x').pathname];
    if (!file) return res.writeHead(404).end();
    res.writeHead(200, { 'content-type': file[1] }).end(file[0]);
  });
  await new Promise((resolve) => http.listen(0, '127.0.0.1', resolve));
  const pageUrl = `http://127.0.0.1:${http.address().port}/`;
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true });
  const contexts = [];
  return {
    // A matrix-js-sdk client logged in as `session` ({ userId, token, deviceId }).
    // With `encryption` ({ password, recoveryKey? }) it runs the SDK's Rust crypto, as Element
    // does: the password answers user-interactive auth, the recovery key opens secret storage.
    async client(name, session, { baseUrl, forceTURN = false, autoAnswer = null, encryption = null } = {}) {
      const context = await browser.newContext();
      contexts.push(context);
      const page = await context.newPage();
      const consoleLines = [];
      page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
      page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
      await page.goto(pageUrl);
      await page.evaluate((a) => window.mx.start(a), { baseUrl, userId: session.userId, accessToken: session.token, deviceId: session.deviceId, forceTURN, autoAnswer, encryption });
      const js = {
        name,
        page,
        call: (method, ...args) => page.evaluate(([m, a]) => window.mx[m](...a), [method, args]),
        log: () => page.evaluate(() => window.mxLog),
        async waitFor(pred, timeoutMs = 30000, what = 'a log entry') {
          const start = Date.now();
          for (;;) {
            const entries = await js.log();
            const found = entries.find(pred);
            if (found) return found;
            if (Date.now() - start > timeoutMs) throw new Error(`${name}: timed out waiting for ${what}\n${await js.describe()}`);
            await new Promise((r) => setTimeout(r, 50));
          }
        },
        // Resolves once about a second of media has arrived on `callId` since the call: 50
        // audio packets (20 ms each) and, with `video`, 10 video frames. Media is flowing
        // now, not only at some time before, and has flowed long enough to be counted on
        // the other side too.
        async receives(callId, { video }, timeoutMs = 15000) {
          const before = await js.call('media', callId);
          const start = Date.now();
          for (;;) {
            const now = await js.call('media', callId);
            if (now.audioPackets >= before.audioPackets + 50 && (!video || now.videoFrames >= before.videoFrames + 10)) return now;
            if (Date.now() - start > timeoutMs) {
              throw new Error(`${name} receives no ${video ? 'audio and video' : 'audio'} on ${callId}: ${JSON.stringify(before)} -> ${JSON.stringify(now)}\n${await js.describe()}`);
            }
            await new Promise((r) => setTimeout(r, 100));
          }
        },
        async close() {
          await page.evaluate(() => window.mx.stop()).catch(() => {});
          await context.close().catch(() => {});
        },
        async describe() {
          const entries = await js.log().catch(() => []);
          return `${name} (matrix-js-sdk) log:\n${entries.map((e) => JSON.stringify(e)).join('\n')}\nconsole (last 30):\n${consoleLines.slice(-30).join('\n')}`;
        },
      };
      return js;
    },
    async stop() {
      for (const c of contexts) await c.close().catch(() => {});
      await browser.close();
      await new Promise((r) => http.close(r));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
