// Test harness: a real tether binary (TETHER_BIN, default ../target/debug/tether) started
// on a temporary configuration and users file, with its WebSocket listener on a free
// loopback port and its admin API on an ephemeral one; plus waits with bounded timeouts.

import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

/** The binary under test. */
export const TETHER_BIN = process.env.TETHER_BIN ?? path.resolve(here, '../../target/debug/tether');

/** How long a test waits for anything the server or client should do. */
export const WAIT_MS = 10_000;

/** Whether the binary exists, so the tests can say plainly why they cannot run. */
export function haveBinary() {
  return existsSync(TETHER_BIN);
}

/** A loopback port nobody listens on now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** A TOML value: strings, numbers, booleans and arrays of them. */
function tomlValue(value) {
  if (Array.isArray(value)) return `[${value.map(tomlValue).join(', ')}]`;
  if (typeof value === 'string') return JSON.stringify(value);
  return String(value);
}

/** TOML text of nested objects: object-valued keys become tables. */
export function toToml(tables, prefix = '') {
  let text = '';
  const scalars = Object.entries(tables).filter(([, v]) => v === null || typeof v !== 'object' || Array.isArray(v));
  const nested = Object.entries(tables).filter(([, v]) => v !== null && typeof v === 'object' && !Array.isArray(v));
  if (prefix && scalars.length) text += `[${prefix}]\n`;
  for (const [key, value] of scalars) text += `${key} = ${tomlValue(value)}\n`;
  for (const [key, value] of nested) text += toToml(value, prefix ? `${prefix}.${key}` : key);
  return text;
}

/** Merges `extra` into `base`, table by table. */
function merge(base, extra) {
  const out = { ...base };
  for (const [key, value] of Object.entries(extra ?? {})) {
    out[key] = value && typeof value === 'object' && !Array.isArray(value) && typeof out[key] === 'object'
      ? merge(out[key], value)
      : value;
  }
  return out;
}

/** Resolves when `predicate()` holds, checking every 20 ms; rejects after `ms`. */
export async function waitFor(predicate, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Resolves with the next `type` event of `client`; rejects after `ms`. */
export function nextEvent(client, type, ms = WAIT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${type} event within ${ms} ms`));
    }, ms);
    const off = client.once(type, (detail) => {
      clearTimeout(timer);
      resolve(detail);
    });
  });
}

/** Collects every `type` event of `client` into an array. */
export function collect(client, type) {
  const seen = [];
  client.on(type, (detail) => seen.push(detail));
  return seen;
}

/**
 * A tether process. `users` maps names to passwords (hashed by `tether passwd` at cost
 * 4); `config` adds to or overrides the baseline configuration; `wsPort` fixes the
 * WebSocket port (a restart on the same port keeps clients' URL).
 */
export class Tether {
  constructor({ users = {}, config = {}, wsPort, dir } = {}) {
    this.users = users;
    this.extra = config;
    this.wsPort = wsPort;
    this.dir = dir ?? mkdtempSync(path.join(os.tmpdir(), 'tether-js-'));
    this.child = null;
    this.stderr = '';
  }

  /** Starts a server; resolves once its WebSocket listener and admin API accept. */
  static async start(options = {}) {
    const tether = new Tether(options);
    tether.wsPort ??= await freePort();
    tether.writeFiles();
    await tether.spawn();
    return tether;
  }

  /** The configuration in force. */
  get config() {
    return merge(
      {
        server: {
          listen: '127.0.0.1:0',
          websocket: { listen: `127.0.0.1:${this.wsPort}`, path: '/tether' },
        },
        admin: { listen: '127.0.0.1:0' },
        auth: { users_file: 'users.toml', bcrypt_cost: 4, login_failures_per_minute: 0 },
        log: { level: 'info' },
      },
      this.extra,
    );
  }

  /** Where WebSocket clients connect. */
  get url() {
    return `ws://127.0.0.1:${this.wsPort}/tether`;
  }

  /** Writes server.toml and creates the users with `tether passwd`. */
  writeFiles() {
    const configPath = path.join(this.dir, 'server.toml');
    writeFileSync(configPath, toToml(this.config));
    for (const [name, password] of Object.entries(this.users)) {
      const result = spawnSync(TETHER_BIN, ['--config', configPath, 'passwd', name], {
        input: `${password}\n`,
        encoding: 'utf8',
        env: { ...process.env, RUST_LOG: '' },
      });
      if (result.status !== 0) throw new Error(`tether passwd ${name} failed: ${result.stderr}`);
    }
  }

  /** Starts the process and waits until both listeners accept. */
  async spawn() {
    this.stderr = '';
    const env = { ...process.env };
    delete env.RUST_LOG;
    const child = spawn(TETHER_BIN, ['--config', path.join(this.dir, 'server.toml')], {
      cwd: this.dir,
      env,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    this.child = child;
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      this.stderr += chunk;
    });
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    let ended = false;
    this.exited.then(() => {
      ended = true;
    });
    await waitFor(() => {
      if (ended) throw new Error(`tether exited at start-up; its log:\n${this.stderr}`);
      return /listening on (\S+) \(admin API\)/.test(this.stderr);
    }, 'the admin API listening line');
    this.admin = `http://${this.stderr.match(/listening on (\S+) \(admin API\)/)[1].replace(/,$/, '')}`;
    await waitFor(() => canConnect(this.wsPort), `the WebSocket port ${this.wsPort}`);
  }

  /** Calls the admin API; resolves with `{status, body}`. */
  async call(method, route, body) {
    const response = await fetch(`${this.admin}${route}`, {
      method,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(WAIT_MS),
    });
    const text = await response.text();
    return { status: response.status, body: text ? JSON.parse(text) : null };
  }

  /** Publishes an event for `user`; resolves with the admin API's answer. */
  publish(user, text) {
    return this.call('POST', '/v1/events', { user, text });
  }

  /** Sends `signal` and waits for the process to exit. */
  async stop(signal = 'SIGTERM') {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill(signal);
    await this.exited;
  }

  /** Stops the process and removes its folder. */
  async dispose() {
    await this.stop('SIGKILL');
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Whether a TCP connection to the loopback `port` succeeds. */
function canConnect(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
