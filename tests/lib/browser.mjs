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
  await esbuild.build({
    entryPoints: [join(here, '../interop/page/page.js')],
    bundle: true,
    format: 'iife',
    platform: 'browser',
    outfile: join(dir, 'bundle.js'),
    logLevel: 'warning',
    define: { 'process.env.NODE_ENV': '"production"', global: 'globalThis' },
  });
  const files = { '/': readFileSync(join(here, '../interop/page/index.html')), '/bundle.js': readFileSync(join(dir, 'bundle.js')) };
  const http = createServer((req, res) => {
    const body = files[new URL(req.url, 'http://x').pathname];
    if (!body) return res.writeHead(404).end();
    res.writeHead(200, { 'content-type': req.url.endsWith('.js') ? 'text/javascript' : 'text/html' }).end(body);
  });
  await new Promise((resolve) => http.listen(0, '127.0.0.1', resolve));
  const pageUrl = `http://127.0.0.1:${http.address().port}/`;
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true });
  const contexts = [];
  return {
    // A matrix-js-sdk client logged in as `session` ({ userId, token, deviceId }).
    async client(name, session, { baseUrl, forceTURN = false, autoAnswer = null } = {}) {
      const context = await browser.newContext();
      contexts.push(context);
      const page = await context.newPage();
      const consoleLines = [];
      page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
      page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
      await page.goto(pageUrl);
      await page.evaluate((a) => window.mx.start(a), { baseUrl, userId: session.userId, accessToken: session.token, deviceId: session.deviceId, forceTURN, autoAnswer });
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
