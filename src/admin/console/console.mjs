// The web console: the token form, the node panel (refreshed every 2 s), the user list
// and one user's actions. Plain ES modules, no framework, no build step.

import { ApiError, call, forgetToken, storeToken, storedToken } from './api.mjs';
import {
  Pager,
  formatCount,
  formatNodes,
  formatRate,
  formatUptime,
  listQuery,
  sparklineArea,
  sparklinePoints,
  userPath,
} from './format.mjs';

/** How often the node panel (and the open page of users) is read again. */
const TICK_MS = 2000;
/** Points a sparkline spans: the server's history, 5 minutes at one every 2 s. */
const HISTORY = 149;
/** Users per page. */
const PAGE_SIZE = 50;
/** Empty pages ("online first" examines a bounded number of names per request) followed
 * on their own before showing one. */
const EMPTY_PAGES_FOLLOWED = 20;

const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  timer: null,
  pager: new Pager(false),
  search: '',
  page: { position: null, next: null },
  /** Counts the moves of the list, so a refresh that answers after a move is dropped. */
  moves: 0,
  user: null,
};

// ---- token ----------------------------------------------------------------------

function showLogin(reason) {
  stopTicking();
  state.token = null;
  $('app').hidden = true;
  $('sign-out').hidden = true;
  $('whoami').textContent = '';
  $('login').hidden = false;
  const error = $('login-error');
  error.hidden = !reason;
  error.textContent = reason || '';
  $('token').value = '';
  $('token').focus();
}

async function signIn(token) {
  state.token = token;
  try {
    const node = await call(token, 'GET', '../v1/node');
    storeToken(token);
    $('login').hidden = true;
    $('login-error').hidden = true;
    $('app').hidden = false;
    $('sign-out').hidden = false;
    showNode(node);
    await loadPage();
    $('search').focus();
    startTicking();
  } catch (err) {
    forgetToken();
    if (err instanceof ApiError && err.status === 401) {
      showLogin(`The server refused this token (401: ${err.message}).`);
    } else {
      showLogin(`Cannot open the console: ${err.message}`);
    }
  }
}

/** Every call but the sign-in: a 401 (token changed or removed) returns to the form. */
async function api(method, path, body) {
  try {
    return await call(state.token, method, path, body);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      forgetToken();
      showLogin(`The server no longer accepts this token (401: ${err.message}). Enter it again.`);
    }
    throw err;
  }
}

// ---- node panel -----------------------------------------------------------------

function startTicking() {
  stopTicking();
  state.timer = setInterval(tick, TICK_MS);
}

function stopTicking() {
  if (state.timer !== null) clearInterval(state.timer);
  state.timer = null;
}

async function tick() {
  try {
    showNode(await api('GET', '../v1/node'));
    banner('');
  } catch (err) {
    if (err.status === 401) return;
    $('fact-health').textContent = 'not answering';
    $('fact-health').className = 'bad';
    banner(`Cannot read the node: ${err.message}`);
    return;
  }
  if (!$('user').hidden && state.user !== null) refreshUser().catch(() => {});
  else refreshPage().catch(() => {});
}

function showNode(node) {
  const health = $('fact-health');
  const degraded =
    (node.users && node.users.state !== 'ok') || (node.cluster && node.cluster.state !== 'connected');
  health.textContent = degraded ? 'degraded' : node.status;
  health.className = degraded ? 'bad' : 'good';
  $('fact-version').textContent = node.version;
  $('fact-uptime').textContent = formatUptime(node.uptime_seconds);
  const users = node.users;
  $('fact-users').textContent =
    users.store === 'file'
      ? `users file, ${formatCount(users.count)} users` +
        (users.reloads_refused > 0 ? `, ${formatCount(users.reloads_refused)} bad edits refused` : '')
      : `PostgreSQL, ${users.state}`;
  $('fact-cluster').textContent = node.cluster
    ? `node ${node.cluster.node}, Redis ${node.cluster.state}` +
      (node.cluster.nodes ? `; live nodes: ${formatNodes(node.cluster.nodes)}` : '')
    : 'none (this node alone)';
  $('whoami').textContent = node.cluster ? `node ${node.cluster.node}` : '';

  const history = node.history;
  const last = (values) => (values.length ? values[values.length - 1] : null);
  const logins = Object.values(node.logins).reduce((sum, n) => sum + n, 0);
  const transports = Object.entries(node.connections.transports)
    .map(([name, count]) => `${name} ${formatCount(count)}`)
    .join(' · ');
  figure('connections', formatCount(node.connections.open), history.connections,
    `${transports}${transports ? ' · ' : ''}logged in ${formatCount(node.connections.bound)}`);
  const loginRate = last(history.logins_per_second);
  figure('logins', formatRate(loginRate), history.logins_per_second, `${formatCount(logins)} since start`);
  const eventRate = last(history.events_per_second);
  figure('events', formatRate(eventRate), history.events_per_second,
    `${formatCount(node.events.published)} since start`);
  figure('checks', formatCount(node.password_checks_waiting), history.password_checks_waiting, 'bcrypt queue');
}

/** Shows one live figure: its value, a detail line and the sparkline of `values`. */
function figure(name, text, values, detail) {
  $(`value-${name}`).textContent = text;
  $(`detail-${name}`).textContent = detail;
  const spark = $(`spark-${name}`);
  spark.querySelector('polyline').setAttribute('points', sparklinePoints(values, HISTORY, 120, 32));
  spark.querySelector('polygon').setAttribute('points', sparklineArea(values, HISTORY, 120, 32));
}

function banner(text) {
  $('banner').hidden = !text;
  $('banner').textContent = text;
}

// ---- users ----------------------------------------------------------------------

async function fetchPage(position) {
  let current = position;
  for (let followed = 0; ; followed += 1) {
    const answer = await api('GET', listQuery(current, state.search, PAGE_SIZE));
    const next = Pager.following(current, answer.next);
    if (answer.users.length > 0 || next === null || followed >= EMPTY_PAGES_FOLLOWED) {
      return { position: current, users: answer.users, next };
    }
    current = next;
  }
}

async function loadPage() {
  state.moves += 1;
  const move = state.moves;
  const page = await fetchPage(state.pager.current);
  if (move !== state.moves) return;
  state.page = page;
  renderPage(page);
}

/** Reads the page shown again (counts change); keeps the focus on the same row. */
async function refreshPage() {
  const { position } = state.page;
  if (!position) return;
  const move = state.moves;
  const answer = await api('GET', listQuery(position, state.search, PAGE_SIZE));
  if (move !== state.moves) return;
  state.page = { position, users: answer.users, next: Pager.following(position, answer.next) };
  renderPage(state.page);
}

function renderPage(page) {
  const focused = document.activeElement && document.activeElement.dataset
    ? document.activeElement.dataset.user
    : undefined;
  const rows = $('users-rows');
  rows.replaceChildren(
    ...page.users.map((user) => {
      const row = document.createElement('tr');
      if (user.connections > 0) row.className = 'online';
      const name = document.createElement('td');
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'link';
      button.textContent = user.name;
      button.dataset.user = user.name;
      button.setAttribute('aria-label', `Open user ${user.name}`);
      button.addEventListener('click', () => openUser(user.name));
      name.append(button);
      const count = document.createElement('td');
      count.className = 'num';
      count.textContent = formatCount(user.connections);
      row.append(name, count);
      return row;
    }),
  );
  if (focused !== undefined) {
    const again = [...rows.querySelectorAll('button')].find((b) => b.dataset.user === focused);
    if (again) again.focus();
  }
  const position = page.position;
  const what = position.online === true ? 'online users' : position.online === false ? 'users not online' : 'users';
  const search = state.search ? ` matching “${state.search}”` : '';
  $('users-caption').textContent = page.users.length
    ? `${formatCount(page.users.length)} ${what}${search}, from ${page.users[0].name}`
    : `No ${what}${search} here.`;
  $('page-prev').disabled = !state.pager.hasPrevious;
  $('page-next').disabled = page.next === null;
}

async function restartList() {
  state.search = $('search').value.trim();
  state.pager = new Pager($('online-first').checked);
  try {
    await loadPage();
    banner('');
  } catch (err) {
    if (err.status !== 401) banner(`Cannot list the users: ${err.message}`);
  }
}

// ---- one user -------------------------------------------------------------------

function openUser(name) {
  state.user = name;
  $('users').hidden = true;
  $('user').hidden = false;
  $('user-name').textContent = name;
  $('user-connections').textContent = '…';
  status('');
  refreshUser().catch((err) => status(err.message, true));
  $('event-text').focus();
}

function closeUser() {
  const name = state.user;
  state.user = null;
  $('user').hidden = true;
  $('users').hidden = false;
  refreshPage()
    .catch(() => {})
    .finally(() => {
      const button = [...$('users-rows').querySelectorAll('button')].find((b) => b.dataset.user === name);
      (button || $('search')).focus();
    });
}

async function refreshUser() {
  const name = state.user;
  const answer = await api('GET', userPath(name, '/connections'));
  if (state.user === name) $('user-connections').textContent = formatCount(answer.connections);
}

function status(text, failed = false) {
  $('user-status').textContent = text;
  $('user-status').className = failed ? 'status error' : 'status';
}

/** Runs an action on the open user and reports it in the status line. */
async function act(action) {
  try {
    status(await action());
    await refreshUser();
  } catch (err) {
    if (err.status !== 401) status(`Failed: ${err.message}`, true);
  }
}

/** Asks in a modal dialog; resolves true on "Yes". */
function confirmAction(text, yes) {
  const dialog = $('confirm');
  $('confirm-text').textContent = text;
  $('confirm-yes').textContent = yes;
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'yes'), { once: true });
    dialog.returnValue = '';
    dialog.showModal();
  });
}

// ---- wiring ---------------------------------------------------------------------

function wire() {
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    signIn($('token').value.trim());
  });
  $('sign-out').addEventListener('click', () => {
    forgetToken();
    showLogin('');
  });
  $('users-form').addEventListener('submit', (e) => {
    e.preventDefault();
    restartList();
  });
  $('online-first').addEventListener('change', restartList);
  $('page-next').addEventListener('click', async () => {
    if (state.page.next === null) return;
    state.pager.forward(state.page.next);
    await loadPage().catch((err) => banner(err.message));
  });
  $('page-prev').addEventListener('click', async () => {
    if (state.pager.back()) await loadPage().catch((err) => banner(err.message));
  });
  $('page-refresh').addEventListener('click', () => refreshPage().catch((err) => banner(err.message)));
  $('open-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = $('open-name').value;
    if (name) openUser(name);
  });
  $('user-close').addEventListener('click', closeUser);
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && !$('user').hidden && !$('confirm').open) closeUser();
  });
  $('event-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = $('event-text').value;
    act(async () => {
      const answer = await api('POST', '../v1/events', { user: state.user, text });
      $('event-text').value = '';
      return `Event published: handed to ${formatCount(answer.connections)} connection(s).`;
    });
  });
  $('password-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const name = state.user;
    const ok = await confirmAction(
      `Set a new password for ${name}? The old one stops working and the user's sessions are invalidated.`,
      'Set password',
    );
    if (!ok) return;
    const password = $('new-password').value;
    act(async () => {
      await api('PUT', userPath(name, '/password'), { password });
      $('new-password').value = '';
      return `Password of ${name} set; its sessions were invalidated.`;
    });
  });
  $('invalidate').addEventListener('click', () => {
    const name = state.user;
    act(async () => {
      const answer = await api('POST', userPath(name, '/invalidate'));
      return `Invalidated ${formatCount(answer.invalidated)} session(s) of ${name}.`;
    });
  });
  $('delete').addEventListener('click', async () => {
    const name = state.user;
    const ok = await confirmAction(
      `Delete the user ${name}? Its password is lost and its sessions are invalidated.`,
      'Delete',
    );
    if (!ok) return;
    act(async () => {
      await api('DELETE', userPath(name));
      return `User ${name} deleted.`;
    });
  });
}

wire();
const token = storedToken();
if (token !== null) signIn(token);
else showLogin('');
