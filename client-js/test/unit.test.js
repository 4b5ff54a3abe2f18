// The client against a scripted WebSocket server (the ws package): what a real tether never
// sends — several messages in one frame, one split over frames, binary frames, unknown
// messages, replies nobody asked for — and the backoff arithmetic. The behaviour against
// the real server is in tether.test.js.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import WebSocket, { WebSocketServer } from 'ws';
import { TetherClient, TetherError, utf8Length, SUBPROTOCOL } from '../src/index.js';
import { nextEvent, collect, waitFor } from './tether.js';

const RS = '\u001e';
const US = '\u001f';

/** A server that hands each client connection to `script(socket, commands)`. */
async function scripted(t, script) {
  const server = new WebSocketServer({
    host: '127.0.0.1',
    port: 0,
    handleProtocols: (offered) => (offered.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
    verifyClient: () => script.accept?.() ?? true,
  });
  await new Promise((resolve) => server.once('listening', resolve));
  server.on('connection', (socket) => {
    const commands = [];
    socket.on('message', (data) => {
      commands.push(...String(data).split(RS).filter(Boolean).map((m) => m.split(US)));
      script.onCommand?.(socket, commands);
    });
    script.onConnection?.(socket, commands);
  });
  t.after(() => new Promise((resolve) => {
    for (const client of server.clients) client.terminate();
    server.close(resolve);
  }));
  return `ws://127.0.0.1:${server.address().port}/`;
}

function client(t, options = {}) {
  const c = new TetherClient({ WebSocket, reconnect: false, keepAliveMs: null, ...options });
  t.after(() => c.close());
  return c;
}

test('utf8Length counts bytes as UTF-8 does', () => {
  for (const text of ['', 'abc', 'ü', '€', '😀', 'a😀ü€', '\ud800', '\udc00x']) {
    assert.equal(utf8Length(text), new TextEncoder().encode(text).length, JSON.stringify(text));
  }
});

test('several messages in one frame and one message over several frames', async (t) => {
  const url = await scripted(t, {
    onCommand(socket, commands) {
      if (commands.length === 2) {
        socket.send(`login_valid${RS}event${US}17${US}he`);
        socket.send(`llo${RS}prolongate_ack${RS}`);
      }
    },
  });
  const c = client(t);
  await c.connect(url);
  const events = collect(c, 'event');
  const replies = await Promise.all([c.login('alice', 'pw'), c.prolongate()]);
  assert.deepEqual(replies, [true, undefined]);
  assert.deepEqual(events, [{ time: 17, text: 'hello' }]);
  assert.equal(c.user, 'alice');
});

test('binary frames are bytes of the same stream, UTF-8 split anywhere', async (t) => {
  const bytes = new TextEncoder().encode(`event${US}5${US}ü€😀${RS}`);
  const url = await scripted(t, {
    onConnection(socket) {
      for (let i = 0; i < bytes.length; i += 3) socket.send(bytes.subarray(i, i + 3), { binary: true });
    },
  });
  const c = client(t);
  const event = nextEvent(c, 'event');
  await c.connect(url);
  assert.deepEqual(await event, { time: 5, text: 'ü€😀' });
});

for (const [name, message] of [
  ['an unknown message', 'hello'],
  ['an empty message', ''],
  ['a reply with an argument', `login_valid${US}x`],
  ['an event without text', `event${US}12`],
  ['an event whose time is no integer', `event${US}noon${US}text`],
  ['a reply while no command waits', 'logout_ack'],
]) {
  test(`${name} ends the connection with a protocol error`, async (t) => {
    const url = await scripted(t, { onConnection: (socket) => socket.send(message + RS) });
    const c = client(t);
    const closed = nextEvent(c, 'close');
    await c.connect(url);
    const detail = await closed;
    assert.ok(detail.error instanceof TetherError);
    assert.equal(detail.error.code, 'protocol');
    assert.equal(detail.willReconnect, false);
    assert.equal(c.state, 'closed');
  });
}

test('each notice becomes its event, and the server closing after it is a close', async (t) => {
  for (const notice of ['invalidated', 'timeout', 'io_error', 'shutdown']) {
    const url = await scripted(t, {
      onConnection(socket) {
        socket.send(notice + RS);
        if (notice !== 'invalidated') socket.close(notice === 'shutdown' ? 1001 : 1000);
      },
    });
    const c = client(t);
    const seen = nextEvent(c, notice);
    const closes = collect(c, 'close');
    await c.connect(url);
    assert.deepEqual(await seen, {});
    if (notice === 'invalidated') {
      assert.equal(c.state, 'open');
      continue;
    }
    await waitFor(() => closes.length === 1, `the close after ${notice}`);
    assert.equal(closes[0].code, notice === 'shutdown' ? 1001 : 1000);
    assert.equal(closes[0].error, null);
  }
});

test('invalid UTF-8 in a binary frame is a protocol error', async (t) => {
  const url = await scripted(t, { onConnection: (socket) => socket.send(Buffer.from([0xff, 0x1e]), { binary: true }) });
  const c = client(t);
  const closed = nextEvent(c, 'close');
  await c.connect(url);
  assert.equal((await closed).error.code, 'protocol');
});

test('the message bound holds across frames, without the transport limit too', async (t) => {
  // webSocketOptions {} lifts ws's maxPayload, so the client's own count must catch it.
  const url = await scripted(t, {
    onConnection(socket) {
      socket.send(`event${US}1${US}${'x'.repeat(8)}${RS}`); // 16 bytes: at the limit
      for (let i = 0; i < 3; i++) socket.send('y'.repeat(6)); // 18 bytes, no terminator
    },
  });
  const c = client(t, { maxMessageBytes: 16, webSocketOptions: {} });
  const events = collect(c, 'event');
  const closed = nextEvent(c, 'close');
  await c.connect(url);
  const detail = await closed;
  assert.equal(detail.error?.code, 'message_too_long');
  assert.deepEqual(events, [{ time: 1, text: 'xxxxxxxx' }]);
});

test('a command pipelined behind the failure is rejected, not left hanging', async (t) => {
  const url = await scripted(t, { onCommand: (socket) => socket.close(1000) });
  const c = client(t);
  await c.connect(url);
  const results = await Promise.allSettled([c.prolongate(), c.logout()]);
  for (const result of results) {
    assert.equal(result.status, 'rejected');
    assert.equal(result.reason.code, 'closed');
  }
  await assert.rejects(c.prolongate(), { code: 'not_connected' });
});

test('arguments with RS or US are refused before anything is sent', async (t) => {
  const url = await scripted(t, { onCommand: (socket) => socket.send(`prolongate_ack${RS}`) });
  const c = client(t);
  await c.connect(url);
  await assert.rejects(c.login(`a${US}b`, 'pw'), { code: 'invalid_argument', argument: 'name' });
  await assert.rejects(c.login('a', `p${RS}w`), { code: 'invalid_argument', argument: 'password' });
  await assert.rejects(c.command('login', 'a', `x${RS}`), { code: 'invalid_argument', argument: 'argument 2' });
  await assert.rejects(c.login('a', 5), TypeError);
  // Had any of them been sent, this reply would be matched to it instead.
  assert.equal(await c.command('prolongate'), 'prolongate_ack');
});

test('reconnect delays grow by the factor up to the cap, jittered within [ceiling/2, ceiling]', async (t) => {
  for (const random of [() => 0, () => 0.999999]) {
    let up = true;
    // Once down, handshakes are refused (401) and the one open connection is cut.
    const url = await scripted(t, {
      accept: () => up,
      onCommand(socket) {
        up = false;
        socket.terminate();
      },
    });
    const c = new TetherClient({
      WebSocket,
      keepAliveMs: null,
      random,
      reconnect: { initialDelayMs: 10, factor: 3, maxDelayMs: 100, maxAttempts: 5 },
    });
    t.after(() => c.close());
    const delays = collect(c, 'reconnecting');
    const failed = nextEvent(c, 'reconnect_failed');
    await c.connect(url);
    await assert.rejects(c.command('x'), { code: 'closed' });
    await failed;
    const expected = [10, 30, 90, 100, 100].map((ceiling) => Math.round(ceiling / 2 + random() * (ceiling / 2)));
    assert.deepEqual(delays.map((d) => d.delayMs), expected);
    assert.deepEqual(delays.map((d) => d.attempt), [1, 2, 3, 4, 5]);
    assert.equal(c.state, 'closed');
  }
});

test('close() from a reconnecting listener stops the attempts', async (t) => {
  const url = await scripted(t, { onCommand: (socket) => socket.terminate() });
  const c = new TetherClient({ WebSocket, keepAliveMs: null, reconnect: { initialDelayMs: 5 } });
  t.after(() => c.close());
  const attempts = collect(c, 'reconnecting');
  c.on('reconnecting', () => c.close());
  await c.connect(url);
  await c.command('x').catch(() => {});
  await waitFor(() => c.state === 'closed', 'the client to stop');
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(attempts.length, 1);
  assert.equal(c.state, 'closed');
});

test('a keep-alive prolongate goes out after the interval without commands', async (t) => {
  let prolongates = 0;
  const url = await scripted(t, {
    onCommand(socket, commands) {
      const last = commands.at(-1);
      if (last[0] === 'prolongate') prolongates++;
      socket.send(`prolongate_ack${RS}`);
    },
  });
  const c = client(t, { keepAliveMs: 30 });
  await c.connect(url);
  await waitFor(() => prolongates >= 3, 'three keep-alive prolongates');
  // Their replies were taken by the client: a command now gets its own.
  assert.equal(await c.command('prolongate'), 'prolongate_ack');
});

test('a keep-alive interval past what setTimeout takes never fires early', async (t) => {
  const commands = [];
  const url = await scripted(t, { onCommand: (socket, seen) => commands.push(...seen.splice(0)) });
  const c = client(t, { keepAliveMs: 1e12 });
  await c.connect(url);
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.deepEqual(commands, []);
});

test('without a WebSocket implementation connect says what to pass', async () => {
  const c = new TetherClient({ WebSocket: undefined });
  if (globalThis.WebSocket) return; // Node ≥ 22 and browsers have one
  await assert.rejects(c.connect('ws://127.0.0.1:1/'), { code: 'no_websocket' });
});

test('index.d.ts declares every export of index.js, and nothing else', async () => {
  const { readFile } = await import('node:fs/promises');
  const declared = [...(await readFile(new URL('../src/index.d.ts', import.meta.url), 'utf8'))
    .matchAll(/^export declare (?:const|class|function) (\w+)/gm)].map((m) => m[1]);
  const module = await import('../src/index.js');
  assert.deepEqual(declared.sort(), Object.keys(module).sort());
});
