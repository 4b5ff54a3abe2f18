// The client against the real server (TETHER_BIN): each test starts its own tether with
// users hashed at bcrypt cost 4, its WebSocket listener on a free loopback port and its
// admin API on an ephemeral one.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import WebSocket from 'ws';
import { TetherClient } from '../src/index.js';
import { Tether, TETHER_BIN, haveBinary, nextEvent, collect, waitFor } from './tether.js';

const RS = '\u001e';
const US = '\u001f';

test('the binary under test exists', () => {
  assert.ok(haveBinary(), `no tether binary at ${TETHER_BIN}: build it (cargo build) or set TETHER_BIN`);
});

/** A server for this test, removed when it ends. */
async function tether(t, options = {}) {
  const server = await Tether.start({ users: { alice: 'wonderland', bob: 'builder' }, ...options });
  t.after(() => server.dispose());
  return server;
}

/** A client for this test (ws as the WebSocket; no reconnect unless asked), closed at its end. */
async function connected(t, server, options = {}) {
  const client = new TetherClient({ WebSocket, reconnect: false, keepAliveMs: null, ...options });
  t.after(() => client.close());
  await client.connect(server.url);
  return client;
}

test('login answers true for the right password and false otherwise', async (t) => {
  const server = await tether(t);
  const client = await connected(t, server);
  assert.equal(await client.login('alice', 'wrong'), false);
  assert.equal(client.user, null);
  assert.equal(await client.login('nobody', 'wonderland'), false);
  assert.equal(await client.login('alice', 'wonderland'), true);
  assert.equal(client.user, 'alice');
  await client.logout();
  assert.equal(client.user, null);
});

test('pipelined commands each get their own reply, in order, with events in between', async (t) => {
  const server = await tether(t);
  const watcher = await connected(t, server);
  assert.equal(await watcher.login('alice', 'wonderland'), true);
  const client = await connected(t, server);
  const events = collect(client, 'event');
  const replies = [
    client.login('alice', 'wrong'),
    client.login('alice', 'wonderland'),
    client.command('nope', 'x'),
    client.command('login', 'alice'),
    client.prolongate().then(() => 'prolongate_ack'),
    client.command('prolongate'),
    client.invalidate().then(() => 'invalidate_ack'),
    client.login('bob', 'builder'),
    client.command('logout'),
  ];
  const invalidated = nextEvent(watcher, 'invalidated');
  assert.deepEqual(await Promise.all(replies), [
    false,
    true,
    'unknown_command',
    'invalid_args_count',
    'prolongate_ack',
    'prolongate_ack',
    'invalidate_ack',
    true,
    'logout_ack',
  ]);
  await invalidated;
  assert.equal(client.user, null);
  assert.deepEqual(events, []);
  // Many more in flight at once, with events published meanwhile.
  assert.equal(await client.login('bob', 'builder'), true);
  const published = Promise.all([1, 2, 3].map((n) => server.publish('bob', `e${n}`)));
  const many = await Promise.all(Array.from({ length: 200 }, (_, i) => (i % 2 ? client.command('prolongate') : client.command('what'))));
  assert.deepEqual(many, Array.from({ length: 200 }, (_, i) => (i % 2 ? 'prolongate_ack' : 'unknown_command')));
  await published;
  await waitFor(() => events.length === 3, 'three events');
  assert.deepEqual(events.map((e) => e.text), ['e1', 'e2', 'e3']);
});

test('events arrive in order with the time the admin API answered', async (t) => {
  const server = await tether(t);
  const client = await connected(t, server);
  const events = collect(client, 'event');
  assert.equal(await client.login('alice', 'wonderland'), true);
  const texts = ['one', 'two: ü€😀', '', 'with spaces and "quotes"'];
  const answers = [];
  for (const text of texts) {
    const answer = await server.publish('alice', text);
    assert.equal(answer.status, 202);
    assert.equal(answer.body.connections, 1);
    answers.push(answer.body.time);
  }
  await waitFor(() => events.length === texts.length, 'the events');
  assert.deepEqual(events, texts.map((text, i) => ({ time: answers[i], text })));
  // Bob's events do not reach alice.
  await server.publish('bob', 'not yours');
  await client.prolongate();
  assert.equal(events.length, texts.length);
});

test('invalidated comes from invalidate on another connection and from a password change', async (t) => {
  const server = await tether(t);
  const first = await connected(t, server);
  const second = await connected(t, server);
  assert.equal(await first.login('alice', 'wonderland'), true);
  assert.equal(await second.login('alice', 'wonderland'), true);
  const gone = nextEvent(first, 'invalidated');
  await second.invalidate();
  await gone;
  assert.equal(first.user, null);
  assert.equal(second.user, 'alice');
  const changed = nextEvent(second, 'invalidated');
  const answer = await server.call('PUT', '/v1/users/alice/password', { password: 'n3w' });
  assert.equal(answer.status, 204);
  await changed;
  assert.equal(second.user, null);
  assert.equal(await second.login('alice', 'wonderland'), false);
  assert.equal(await second.login('alice', 'n3w'), true);
});

test('an idle connection gets timeout and a close with 1000', async (t) => {
  const server = await tether(t, { config: { server: { idle_timeout: '1s' } } });
  const client = await connected(t, server);
  const timedOut = nextEvent(client, 'timeout');
  const closed = nextEvent(client, 'close');
  await timedOut;
  const detail = await closed;
  assert.equal(detail.code, 1000);
  assert.equal(detail.willReconnect, false);
  assert.equal(client.state, 'closed');
});

test('keep-alive prolongates keep a connection open past the idle timeout', async (t) => {
  const server = await tether(t, { config: { server: { idle_timeout: '2s' } } });
  const client = await connected(t, server, { keepAliveMs: 500 });
  const timeouts = collect(client, 'timeout');
  assert.equal(await client.login('alice', 'wonderland'), true);
  // Two and a half idle timeouts without a command of the application's.
  await new Promise((resolve) => setTimeout(resolve, 5000));
  assert.deepEqual(timeouts, []);
  assert.equal(client.state, 'open');
  const event = nextEvent(client, 'event');
  await server.publish('alice', 'still here');
  assert.equal((await event).text, 'still here');
});

test('disconnect resolves on its reply, then the server closes with 1000 and nothing reconnects', async (t) => {
  const server = await tether(t);
  const client = await connected(t, server, { reconnect: { initialDelayMs: 10 } });
  const closes = collect(client, 'close');
  const reconnects = collect(client, 'reconnecting');
  assert.equal(await client.login('alice', 'wonderland'), true);
  await client.disconnect();
  await waitFor(() => closes.length === 1, 'the close');
  assert.equal(closes[0].code, 1000);
  assert.equal(closes[0].willReconnect, false);
  await assert.rejects(client.prolongate(), { code: 'not_connected' });
  assert.deepEqual(reconnects, []);
});

test('shutdown comes before a close with 1001', async (t) => {
  const server = await tether(t);
  const client = await connected(t, server);
  const notices = collect(client, 'shutdown');
  const closed = nextEvent(client, 'close');
  await server.stop('SIGTERM');
  const detail = await closed;
  assert.equal(notices.length, 1);
  assert.equal(detail.code, 1001);
});

test('a command longer than the server takes is refused with 1009; its promise is rejected', async (t) => {
  const server = await tether(t, { config: { server: { max_message_bytes: 256 } } });
  const client = await connected(t, server);
  const closed = nextEvent(client, 'close');
  // 257 bytes: one over. (One at the limit is answered.)
  assert.equal(await client.command('login', 'alice', 'x'.repeat(256 - 12)), 'login_invalid');
  await assert.rejects(client.command('login', 'alice', 'x'.repeat(256 - 11)), { code: 'closed', closeCode: 1009 });
  const detail = await closed;
  assert.equal(detail.code, 1009);
  assert.equal(detail.error, null, 'the server refused our message: no error of the client');
});

test('a message longer than maxMessageBytes closes the connection, one at the limit does not', async (t) => {
  const server = await tether(t);
  for (const webSocketOptions of [undefined, {}]) {
    // undefined: ws refuses the frame itself (maxPayload); {}: the client's own count does.
    const client = await connected(t, server, { maxMessageBytes: 100, webSocketOptions });
    const events = collect(client, 'event');
    const closed = nextEvent(client, 'close');
    assert.equal(await client.login('alice', 'wonderland'), true);
    // `event␟<13 digits>␟<text>` is 20 bytes plus the text.
    const fits = (await server.publish('alice', 'a'.repeat(80))).body.time;
    assert.equal(String(fits).length, 13);
    await waitFor(() => events.length === 1, 'the event at the limit');
    await server.publish('alice', 'b'.repeat(81));
    const detail = await closed;
    assert.equal(detail.error?.code, 'message_too_long', JSON.stringify(detail));
    assert.deepEqual(events.map((e) => e.text.length), [80]);
    client.close();
  }
});

test('after the server drops, the client reconnects with backoff and logs in again when asked to', async (t) => {
  const server = await tether(t);
  const client = await connected(t, server, {
    relogin: true,
    reconnect: { initialDelayMs: 100, factor: 2, maxDelayMs: 400 },
  });
  const attempts = collect(client, 'reconnecting');
  const failures = collect(client, 'reconnect_error');
  const closed = nextEvent(client, 'close');
  assert.equal(await client.login('alice', 'wonderland'), true);
  await server.stop('SIGKILL');
  const detail = await closed;
  assert.equal(detail.willReconnect, true);
  await waitFor(() => failures.length >= 3, 'three failed attempts', 15_000);
  const reopened = nextEvent(client, 'open', 15_000);
  const relogin = nextEvent(client, 'relogin', 15_000);
  await server.spawn();
  assert.deepEqual(await reopened, { reconnected: true });
  assert.deepEqual(await relogin, { name: 'alice', ok: true });
  assert.equal(client.user, 'alice');
  const ceilings = [100, 200, 400, 400, 400, 400, 400, 400, 400, 400];
  attempts.forEach(({ attempt, delayMs }, i) => {
    assert.equal(attempt, i + 1);
    assert.ok(delayMs >= ceilings[i] / 2 && delayMs <= ceilings[i], `attempt ${attempt}: ${delayMs} ms`);
  });
  const event = nextEvent(client, 'event');
  const answer = await server.publish('alice', 'welcome back');
  assert.equal(answer.body.connections, 1);
  assert.equal((await event).text, 'welcome back');
});

test('without relogin a reconnected client is bound to no name; invalidated forgets the password', async (t) => {
  const server = await tether(t);
  const plain = await connected(t, server, { reconnect: { initialDelayMs: 50 } });
  const remembering = await connected(t, server, { relogin: true, reconnect: { initialDelayMs: 50 } });
  const other = await connected(t, server);
  for (const client of [plain, remembering, other]) assert.equal(await client.login('alice', 'wonderland'), true);
  // An invalidated session must not come back on its own after a reconnect.
  const invalidated = nextEvent(remembering, 'invalidated');
  await other.invalidate();
  await invalidated;
  const reopened = [nextEvent(plain, 'open', 15_000), nextEvent(remembering, 'open', 15_000)];
  const relogins = collect(remembering, 'relogin');
  await server.stop('SIGKILL');
  await server.spawn();
  await Promise.all(reopened);
  assert.equal(plain.user, null);
  assert.equal(remembering.user, null);
  assert.deepEqual(relogins, []);
  assert.equal((await server.publish('alice', 'anyone?')).body.connections, 0);
});

test('a relogin with a password changed meanwhile reports false', async (t) => {
  const server = await tether(t);
  const client = await connected(t, server, { relogin: true, reconnect: { initialDelayMs: 50 } });
  assert.equal(await client.login('bob', 'builder'), true);
  const closed = nextEvent(client, 'close');
  await server.stop('SIGKILL');
  await closed;
  // Changed while the server is down: the users file is the one it reads at start.
  server.users = { bob: 'changed' };
  server.writeFiles();
  const relogin = nextEvent(client, 'relogin', 15_000);
  await server.spawn();
  assert.deepEqual(await relogin, { name: 'bob', ok: false });
  assert.equal(client.user, null);
});

test('the client can stop reconnecting: close() while attempts fail', async (t) => {
  const server = await tether(t);
  const client = await connected(t, server, { reconnect: { initialDelayMs: 20, maxDelayMs: 40 } });
  const failures = collect(client, 'reconnect_error');
  await server.stop('SIGKILL');
  await waitFor(() => failures.length >= 2, 'two failed attempts');
  client.close();
  assert.equal(client.state, 'closed');
  const seen = failures.length;
  await server.spawn();
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(client.state, 'closed');
  assert.ok(failures.length <= seen + 1);
});

test('raw frames: every server message is one text frame ending in RS', async (t) => {
  const server = await tether(t);
  const socket = new WebSocket(server.url, ['tether.v1']);
  t.after(() => socket.terminate());
  await new Promise((resolve, reject) => {
    socket.once('open', resolve);
    socket.once('error', reject);
  });
  assert.equal(socket.protocol, 'tether.v1');
  const frames = [];
  socket.on('message', (data, isBinary) => frames.push({ text: String(data), isBinary }));
  socket.send(`login${US}alice${US}wonderland${RS}prolongate${RS}nope${RS}`);
  await waitFor(() => frames.length === 3, 'three replies');
  assert.deepEqual(frames, [
    { text: `login_valid${RS}`, isBinary: false },
    { text: `prolongate_ack${RS}`, isBinary: false },
    { text: `unknown_command${RS}`, isBinary: false },
  ]);
});
