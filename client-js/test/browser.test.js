// The example page in headless Chromium (Debian's /usr/bin/chromium, or CHROMIUM_BIN;
// driven by playwright-core, which downloads nothing): served from a local static server,
// it connects to a real tether, logs in, shows an event published through the admin API,
// and shows `invalidated` when the password changes.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createServer } from 'node:http';
import { mkdtempSync, readFile, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { Tether, WAIT_MS } from './tether.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8' };

/** Serves client-js/ (GET only, no path outside it) on a free loopback port. */
async function staticServer(t) {
  const server = createServer((request, response) => {
    const url = new URL(request.url, 'http://localhost');
    if (url.pathname === '/favicon.ico') {
      response.writeHead(204).end(); // the browser asks; a 404 would be logged as an error
      return;
    }
    const file = path.resolve(root, `.${decodeURIComponent(url.pathname)}`);
    const type = TYPES[path.extname(file)];
    if (request.method !== 'GET' || !file.startsWith(root + path.sep) || !type) {
      response.writeHead(404).end();
      return;
    }
    readFile(file, (err, body) => {
      if (err) response.writeHead(404).end();
      else response.writeHead(200, { 'content-type': type }).end(body);
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise((resolve) => {
    server.close(resolve);
    server.closeAllConnections(); // the browser's keep-alive ones too
  }));
  return `http://127.0.0.1:${server.address().port}`;
}

/** A headless Chromium with a fresh profile, closed when the test ends. */
async function browser(t) {
  const profile = mkdtempSync(path.join(os.tmpdir(), 'tether-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    timeout: 30_000,
  });
  t.after(async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  });
  return context;
}

test('the example page logs in, shows an event from the admin API, then invalidated', async (t) => {
  const origin = await staticServer(t);
  const server = await Tether.start({
    users: { alice: 'wonderland' },
    config: { server: { websocket: { allowed_origins: [origin] } } },
  });
  t.after(() => server.dispose());
  const context = await browser(t);
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console: ${message.text()}`);
  });
  await page.goto(`${origin}/examples/browser.html?url=${encodeURIComponent(server.url)}`);

  const statusIs = (text) => page.waitForFunction((want) => document.getElementById('status').value === want, text, { timeout: WAIT_MS });
  await page.click('#connect');
  await statusIs('connected');
  await page.fill('#name', 'alice');
  await page.fill('#password', 'wrong');
  await page.click('#login');
  await statusIs('login failed');
  await page.fill('#password', 'wonderland');
  await page.click('#login');
  await statusIs('logged in as alice');

  const text = 'hello from the admin API <b>not bold</b>';
  const published = await server.publish('alice', text);
  assert.equal(published.status, 202);
  assert.equal(published.body.connections, 1);
  await page.locator('#events li', { hasText: `event ${published.body.time}: ${text}` }).waitFor({ timeout: WAIT_MS });
  assert.equal(await page.locator('#events b').count(), 0, 'event text is shown as text, not HTML');

  const changed = await server.call('PUT', '/v1/users/alice/password', { password: 'n3w' });
  assert.equal(changed.status, 204);
  await page.locator('#events li', { hasText: /^invalidated$/ }).waitFor({ timeout: WAIT_MS });
  await statusIs('invalidated');

  // Bound to no name now: an event for alice reaches nobody.
  assert.equal((await server.publish('alice', 'after')).body.connections, 0);
  const items = await page.locator('#events li').allTextContents();
  assert.deepEqual(items, [`event ${published.body.time}: ${text}`, 'invalidated']);
  assert.deepEqual(problems, []);
});
