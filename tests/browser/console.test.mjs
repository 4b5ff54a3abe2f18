// Drives the web console in Debian's headless Chromium (playwright-core, no downloaded
// browser) against a running tether, with a real TCP client logged in beside it.
// Started by tests/it/console.rs, which starts tether and passes:
//   TETHER_ADMIN     http://127.0.0.1:PORT (the admin listener)
//   TETHER_CLIENT    127.0.0.1:PORT (the client protocol)
//   TETHER_TOKEN     admin.token
//   SCREENSHOT_DIR   where the screenshots go (under target/)
//   CHROMIUM         the browser (default /usr/bin/chromium)
//   DOCS_SCREENSHOT  optional: also write the wide screenshot there (docs/console.png;
//                    with WARMUP_TICKS=45 the sparklines show 1.5 minutes of traffic)
// The users file holds alice (pw-alice), bob (pw-bob) and carol (pw-carol).
// Exits 0 when every step passed; otherwise prints the failed step and exits 1.

import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync, copyFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const ADMIN = required('TETHER_ADMIN');
const CLIENT = required('TETHER_CLIENT');
const TOKEN = required('TETHER_TOKEN');
const SHOTS = required('SCREENSHOT_DIR');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT = 10_000;

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is not set (run through tests/it/console.rs)`);
    process.exit(2);
  }
  return value;
}

// ---- a protocol client over TCP ------------------------------------------------------

const RS = 0x1e;
const US = '\x1f';

/** A client of the tether protocol: sends commands, waits for messages. */
class TcpClient {
  static connect(address) {
    const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.slice(address.lastIndexOf(':') + 1))];
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host, port }, () => resolve(new TcpClient(socket)));
      socket.once('error', reject);
    });
  }

  constructor(socket) {
    this.socket = socket;
    this.buffer = Buffer.alloc(0);
    this.messages = [];
    this.waiters = [];
    socket.on('data', (chunk) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      let end;
      while ((end = this.buffer.indexOf(RS)) >= 0) {
        this.messages.push(this.buffer.subarray(0, end).toString('utf8').split(US));
        this.buffer = this.buffer.subarray(end + 1);
      }
      this.wake();
    });
  }

  send(...parts) {
    this.socket.write(Buffer.concat([Buffer.from(parts.join(US), 'utf8'), Buffer.from([RS])]));
  }

  wake() {
    for (const waiter of this.waiters.splice(0)) waiter();
  }

  /** The next message, within `timeout` ms. */
  async next(timeout = WAIT) {
    const deadline = Date.now() + timeout;
    while (this.messages.length === 0) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('no message from the server in time');
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return this.messages.shift();
  }

  async expect(...parts) {
    const message = await this.next();
    assert.deepEqual(message, parts);
    return message;
  }

  close() {
    this.socket.destroy();
  }
}

// ---- the admin API, for checks the page does not show --------------------------------

async function admin(method, route, body) {
  const response = await fetch(`${ADMIN}${route}`, {
    method,
    headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

// ---- the steps -----------------------------------------------------------------------

const steps = [];
function step(name, run) {
  steps.push({ name, run });
}

const problems = [];
let context;
let profile;
let page;
let alice;

step('a TCP client logs in as alice', async () => {
  alice = await TcpClient.connect(CLIENT);
  alice.send('login', 'alice', 'pw-alice');
  await alice.expect('login_valid');
});

step('Chromium opens /console/ with a fresh profile, and the token form shows', async () => {
  profile = mkdtempSync(path.join(tmpdir(), 'tether-console-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
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
    viewport: { width: 1280, height: 900 },
  });
  page = context.pages()[0] || (await context.newPage());
  const origin = new URL(ADMIN).origin;
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error' && !/401|Unauthorized/.test(message.text())) {
      problems.push(`console error: ${message.text()}`);
    }
  });
  page.on('request', (request) => {
    if (new URL(request.url()).origin !== origin) problems.push(`request outside the origin: ${request.url()}`);
  });
  const response = await page.goto(`${ADMIN}/console/`);
  assert.equal(response.status(), 200);
  assert.match(response.headers()['content-security-policy'], /default-src 'self'/);
  await page.locator('#login-form').waitFor({ state: 'visible', timeout: WAIT });
  assert.equal(await page.locator('#app').isVisible(), false);
});

step('a wrong token shows the reason on the form', async () => {
  await page.fill('#token', 'not-the-token');
  await page.click('#login-form button[type=submit]');
  const error = page.locator('#login-error');
  await error.waitFor({ state: 'visible', timeout: WAIT });
  assert.match(await error.textContent(), /refused this token \(401/);
  assert.equal(await page.locator('#app').isVisible(), false);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'a refused token is not kept');
});

step('the right token, typed and sent with Enter, opens the console', async () => {
  await page.focus('#token');
  await page.keyboard.type(TOKEN);
  await page.keyboard.press('Enter');
  await page.locator('#app').waitFor({ state: 'visible', timeout: WAIT });
  assert.equal(await page.locator('#login').isVisible(), false);
});

step('the token is in sessionStorage only: not in the URL, a cookie or localStorage', async () => {
  const kept = await page.evaluate(() => ({
    session: Object.keys(sessionStorage).map((key) => sessionStorage.getItem(key)),
    local: localStorage.length,
    cookie: document.cookie,
    url: location.href,
  }));
  assert.deepEqual(kept.session, [TOKEN]);
  assert.equal(kept.local, 0);
  assert.equal(kept.cookie, '');
  assert.ok(!kept.url.includes(TOKEN), kept.url);
  assert.deepEqual(await context.cookies(), []);
});

step('the node panel shows health, version and the TCP connection', async () => {
  await waitForText('#fact-health', /^ok$/);
  await waitForText('#fact-version', /^\d+\.\d+\.\d+/);
  await waitForText('#fact-users', /users file, 3 users/);
  await waitForText('#fact-cluster', /this node alone/);
  await waitForText('#value-connections', /^1$/);
  await waitForText('#detail-connections', /tcp 1/);
});

step('the user list shows alice online with one connection', async () => {
  const row = page.locator('#users-rows tr', { has: page.locator('button[data-user="alice"]') });
  await row.waitFor({ timeout: WAIT });
  await waitFor(async () => (await row.locator('td.num').textContent()) === '1', 'alice counted 1');
  assert.match(await row.getAttribute('class'), /online/);
  const bob = page.locator('#users-rows tr', { has: page.locator('button[data-user="bob"]') });
  assert.equal(await bob.locator('td.num').textContent(), '0');
});

step('"Online first" puts alice first; a search narrows the list', async () => {
  const names = () => page.locator('#users-rows button').allTextContents();
  // carol, whose name sorts after alice, logs in: online first lists both before bob.
  const carol = await TcpClient.connect(CLIENT);
  carol.send('login', 'carol', 'pw-carol');
  await carol.expect('login_valid');
  await page.check('#online-first');
  await waitFor(async () => JSON.stringify(await names()) === '["alice","carol"]', 'online users first');
  await page.click('#page-next');
  await waitFor(async () => JSON.stringify(await names()) === '["bob"]', 'then the others');
  await page.click('#page-prev');
  await waitFor(async () => JSON.stringify(await names()) === '["alice","carol"]', 'back to the first page');
  carol.close();
  await page.uncheck('#online-first');
  await page.fill('#search', 'BO');
  await page.press('#search', 'Enter');
  await waitFor(async () => JSON.stringify(await names()) === '["bob"]', 'search "BO" finds bob only');
  await page.fill('#search', '');
  await page.press('#search', 'Enter');
  await waitFor(async () => (await names()).length === 3, 'all three users again');
});

step('screenshots, wide and at phone width', async () => {
  mkdirSync(SHOTS, { recursive: true });
  // Some traffic, so the sparklines have something to draw (longer for the docs' picture).
  const ticks = Number(process.env.WARMUP_TICKS || 3);
  for (let i = 0; i < ticks; i += 1) {
    const events = Array.from({ length: 1 + ((i * 7) % 5) }, (_, n) => ({ user: 'alice', text: `warm-up ${i}.${n}` }));
    await admin('POST', '/v1/events', { events });
    for (let n = 0; n < events.length; n += 1) await alice.next();
    if (i % 4 === 1) {
      const visitor = await TcpClient.connect(CLIENT);
      visitor.send('login', 'carol', 'pw-carol');
      await visitor.expect('login_valid');
      visitor.close();
    }
    await page.waitForTimeout(2000);
  }
  const wide = path.join(SHOTS, 'console.png');
  await page.screenshot({ path: wide, fullPage: true });
  if (process.env.DOCS_SCREENSHOT) copyFileSync(wide, process.env.DOCS_SCREENSHOT);
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone screen`);
  await page.screenshot({ path: path.join(SHOTS, 'console-phone.png'), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });
});

step('every control has a label', async () => {
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll('input, button, select, textarea')]
      .filter((control) => {
        const labelled = control.labels && control.labels.length > 0;
        const named = control.getAttribute('aria-label') || (control.tagName === 'BUTTON' && control.textContent.trim());
        return !labelled && !named;
      })
      .map((control) => control.id || control.outerHTML),
  );
  assert.deepEqual(unlabelled, []);
});

step("alice's page, opened from the keyboard, shows her connection", async () => {
  await page.focus('#users-rows button[data-user="alice"]');
  await page.keyboard.press('Enter');
  await page.locator('#user').waitFor({ state: 'visible', timeout: WAIT });
  await waitForText('#user-name', /^alice$/);
  await waitForText('#user-connections', /^1$/);
});

step('publishing an event from the page reaches the TCP client', async () => {
  await page.fill('#event-text', 'hello from the console');
  await page.click('#event-form button[type=submit]');
  const [type, time, text] = await alice.next();
  assert.equal(type, 'event');
  assert.match(time, /^\d+$/);
  assert.equal(text, 'hello from the console');
  await waitForText('#user-status', /handed to 1 connection/);
  await page.screenshot({ path: path.join(SHOTS, 'console-user.png'), fullPage: true });
});

step('invalidating from the page sends the TCP client `invalidated`', async () => {
  await page.click('#invalidate');
  await alice.expect('invalidated');
  await waitForText('#user-status', /Invalidated 1 session/);
  await waitForText('#user-connections', /^0$/);
});

step('setting a password asks first, then invalidates; the new password logs in', async () => {
  alice.send('login', 'alice', 'pw-alice');
  await alice.expect('login_valid');
  await page.fill('#new-password', 'n3w-pass');
  await page.click('#password-form button[type=submit]');
  const dialog = page.locator('#confirm');
  await dialog.waitFor({ state: 'visible', timeout: WAIT });
  await page.click('#confirm-no');
  await dialog.waitFor({ state: 'hidden', timeout: WAIT });
  await page.click('#password-form button[type=submit]');
  await dialog.waitFor({ state: 'visible', timeout: WAIT });
  await page.click('#confirm-yes');
  await alice.expect('invalidated');
  await waitForText('#user-status', /Password of alice set/);
  alice.send('login', 'alice', 'pw-alice');
  await alice.expect('login_invalid');
  alice.send('login', 'alice', 'n3w-pass');
  await alice.expect('login_valid');
});

step('deleting asks first; Cancel keeps the user, Yes removes it', async () => {
  await page.click('#user-close');
  await page.locator('#users').waitFor({ state: 'visible', timeout: WAIT });
  await page.fill('#open-name', 'bob');
  await page.press('#open-name', 'Enter');
  await waitForText('#user-name', /^bob$/);
  await page.click('#delete');
  await page.locator('#confirm').waitFor({ state: 'visible', timeout: WAIT });
  await page.keyboard.press('Escape');
  await page.locator('#confirm').waitFor({ state: 'hidden', timeout: WAIT });
  let listed = await admin('GET', '/v1/users?search=bob');
  assert.deepEqual(listed.body.users.map((user) => user.name), ['bob'], 'Escape cancelled the delete');
  await page.click('#delete');
  await page.click('#confirm-yes');
  await waitForText('#user-status', /User bob deleted/);
  listed = await admin('GET', '/v1/users?search=bob');
  assert.deepEqual(listed.body.users, []);
});

step('a name that looks like HTML is shown as text', async () => {
  const name = '<img src=x onerror=alert(1)><i>x</i>';
  assert.equal((await admin('PUT', `/v1/users/${encodeURIComponent(name)}/password`, { password: 'pw' })).status, 201);
  await page.click('#user-close');
  await page.click('#page-refresh');
  const button = page.locator('#users-rows button').filter({ hasText: name });
  await button.waitFor({ timeout: WAIT });
  assert.equal(await button.textContent(), name);
  assert.equal(await page.locator('#users-rows img, #users-rows i').count(), 0);
  await button.click();
  await waitForText('#user-name', /^<img src=x onerror=alert\(1\)><i>x<\/i>$/);
  await waitForText('#user-connections', /^0$/);
});

step('"Forget the token" clears it from the tab and returns to the form', async () => {
  await page.click('#sign-out');
  await page.locator('#login-form').waitFor({ state: 'visible', timeout: WAIT });
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  assert.equal(await page.locator('#login-error').isVisible(), false, 'no error for a sign-out');
  await page.reload();
  await page.locator('#login-form').waitFor({ state: 'visible', timeout: WAIT });
  assert.equal(await page.locator('#app').isVisible(), false, 'a reload does not sign in again');
  await page.fill('#token', TOKEN);
  await page.press('#token', 'Enter');
  await page.locator('#app').waitFor({ state: 'visible', timeout: WAIT });
  assert.equal(await page.evaluate(() => document.activeElement.id), 'search', 'the focus moves to the list');
});

step('a token the server no longer accepts returns to the form with the reason', async () => {
  await page.evaluate(() => sessionStorage.setItem('tether.console.token', 'expired-token'));
  await page.reload();
  const error = page.locator('#login-error');
  await error.waitFor({ state: 'visible', timeout: WAIT });
  assert.match(await error.textContent(), /401/);
  assert.equal(await page.locator('#app').isVisible(), false);
});

step('no script error, no CSP violation, no request outside the origin', async () => {
  assert.deepEqual(problems, []);
});

async function waitForText(selector, pattern) {
  await waitFor(async () => pattern.test((await page.locator(selector).textContent()) || ''), `${selector} matching ${pattern}`);
}

async function waitFor(condition, what) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

rmSync(path.join(SHOTS, 'console-failure.png'), { force: true });
let failed = false;
for (const { name, run } of steps) {
  try {
    await run();
    console.log(`ok - ${name}`);
  } catch (err) {
    failed = true;
    console.log(`not ok - ${name}\n${err.stack || err}`);
    if (page) {
      mkdirSync(SHOTS, { recursive: true });
      await page.screenshot({ path: path.join(SHOTS, 'console-failure.png'), fullPage: true }).catch(() => {});
      console.log(`(screenshot of the failure: ${path.join(SHOTS, 'console-failure.png')})`);
    }
    break;
  }
}
if (alice) alice.close();
if (context) await context.close().catch(() => {});
if (profile) rmSync(profile, { recursive: true, force: true, maxRetries: 5 });
process.exit(failed ? 1 : 0);
