// The example page's script: connects with tether-client, logs in, and lists what the
// server pushes as it comes. Open it with ?url=ws://host:port/path to preset the server.

import { TetherClient } from '../src/index.js';

const $ = (id) => document.getElementById(id);
const client = new TetherClient({ relogin: true });

const params = new URLSearchParams(location.search);
$('url').value = params.get('url') ?? 'ws://127.0.0.1:7780/';

/** Shows `text` as the status, and enables the buttons that fit the client's state. */
function status(text) {
  $('status').value = text;
  const open = client.state === 'open';
  $('connect').disabled = open || client.state === 'connecting' || client.state === 'reconnecting';
  $('disconnect').disabled = !open;
  $('login').disabled = !open;
  $('logout').disabled = !open || client.user === null;
}

/** Adds one line to the list of what the server sent (as text, never as HTML). */
function show(text) {
  const item = document.createElement('li');
  item.textContent = text;
  $('events').append(item);
}

client.on('open', ({ reconnected }) => status(reconnected ? 'reconnected' : 'connected'));
client.on('event', ({ time, text }) => show(`event ${time}: ${text}`));
client.on('relogin', ({ name, ok }) => status(ok ? `logged in again as ${name}` : `could not log in again as ${name}`));
for (const notice of ['invalidated', 'timeout', 'io_error', 'shutdown']) {
  client.on(notice, () => {
    show(notice);
    status(notice);
  });
}
client.on('close', ({ code, willReconnect }) => status(`closed (${code})${willReconnect ? ', reconnecting' : ''}`));
client.on('reconnecting', ({ attempt, delayMs }) => status(`reconnecting: attempt ${attempt} in ${delayMs} ms`));

/** Runs `action`, showing its error as the status. */
async function run(action) {
  try {
    await action();
  } catch (err) {
    status(`error: ${err.message}`);
  }
}

$('connect').addEventListener('click', () => run(async () => {
  status('connecting');
  await client.connect($('url').value);
}));
$('disconnect').addEventListener('click', () => run(async () => {
  await client.disconnect();
  status('disconnected');
}));
$('login').addEventListener('click', () => run(async () => {
  const name = $('name').value;
  const ok = await client.login(name, $('password').value);
  status(ok ? `logged in as ${name}` : 'login failed');
}));
$('logout').addEventListener('click', () => run(async () => {
  await client.logout();
  status('logged out');
}));
status('not connected');
