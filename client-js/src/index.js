// tether-client: the tether protocol (docs/protocol.md) over WebSocket, for browsers and
// Node ≥ 20. One module, no dependencies: commands are promises answered in the order they
// were sent, the server's own messages are events, and a dropped connection is reopened
// with jittered backoff.

/** Terminates every message (U+001E). */
const RS = '\u001e';
/** Separates the parts of a message (U+001F). */
const US = '\u001f';

/** The WebSocket subprotocol the server selects when offered. */
export const SUBPROTOCOL = 'tether.v1';

/** One-part messages that answer a command, in the order the server sends them. */
const REPLIES = new Set([
  'login_valid',
  'login_invalid',
  'logout_ack',
  'disconnect_ack',
  'prolongate_ack',
  'invalidate_ack',
  'unknown_command',
  'invalid_args_count',
]);

/** One-part messages the server sends on its own; each becomes an event of that name. */
const NOTICES = new Set(['invalidated', 'timeout', 'io_error', 'shutdown']);

/** The time part of an event: a decimal integer (local milliseconds, SPEC §3). */
const EVENT_TIME = /^-?[0-9]{1,16}$/;

/** What {@link TetherClient} uses for every option the application leaves out. */
export const DEFAULTS = Object.freeze({
  maxMessageBytes: 64 * 1024,
  keepAliveMs: 60_000,
  connectTimeoutMs: 10_000,
  relogin: false,
  reconnect: Object.freeze({
    initialDelayMs: 500,
    maxDelayMs: 30_000,
    factor: 2,
    maxAttempts: Infinity,
  }),
});

/** Why a command failed or a connection ended; `code` says which case it is. */
export class TetherError extends Error {
  /**
   * @param {string} code one of the codes listed in index.d.ts
   * @param {string} message
   * @param {object} [details] extra fields (`reply`, `argument`, `closeCode`, `cause`)
   */
  constructor(code, message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'TetherError';
    this.code = code;
    for (const [key, value] of Object.entries(details)) {
      if (key !== 'cause') this[key] = value;
    }
  }
}

/** UTF-8 length of `text` in bytes (lone surrogates count as the 3 bytes of U+FFFD). */
export function utf8Length(text) {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0x80) bytes += 1;
    else if (unit < 0x800) bytes += 2;
    else if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        bytes += 4;
        i++;
      } else bytes += 3;
    } else bytes += 3;
  }
  return bytes;
}

/** Checks that `value` can be sent as one part: a string without RS or US. */
function checkPart(value, argument) {
  if (typeof value !== 'string') {
    throw new TypeError(`the ${argument} must be a string, got ${typeof value}`);
  }
  if (value.includes(RS) || value.includes(US)) {
    throw new TetherError(
      'invalid_argument',
      `the ${argument} holds a separator (U+001E or U+001F) and cannot be sent`,
      { argument },
    );
  }
}

/** Longest delay setTimeout takes; a longer one would fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Reads a non-negative number option, or the default when it is left out. */
function numberOption(options, key, fallback, { allowNull = false } = {}) {
  const value = options[key];
  if (value === undefined) return fallback;
  if (value === null && allowNull) return null;
  if (typeof value !== 'number' || Number.isNaN(value) || value < 0) {
    throw new TypeError(`options.${key} must be a non-negative number`);
  }
  return value;
}

/** The reconnect settings in force, or `null` when reconnecting is off. */
function reconnectOptions(value) {
  if (value === false || value === null) return null;
  if (value === undefined || value === true) return { ...DEFAULTS.reconnect };
  if (typeof value !== 'object') throw new TypeError('options.reconnect must be an object or false');
  const merged = { ...DEFAULTS.reconnect };
  for (const key of Object.keys(DEFAULTS.reconnect)) {
    merged[key] = numberOption(value, key, DEFAULTS.reconnect[key]);
  }
  if (merged.factor < 1) throw new TypeError('options.reconnect.factor must be at least 1');
  return merged;
}

/**
 * A connection to a tether server over WebSocket. See index.d.ts and README.md for the
 * contract; the comments here say how it is kept.
 */
export class TetherClient {
  /** The options in force, defaults filled in. */
  #options;
  /** The WebSocket constructor: the application's, or the global one. */
  #WebSocket;
  /** Listeners by event name. */
  #listeners = new Map();
  /** Where to connect (and reconnect). */
  #url = null;
  /** The open (or opening) socket; `null` between connections. */
  #socket = null;
  /** 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed'. */
  #state = 'idle';
  /** Commands sent and not answered yet, oldest first: the server answers in order. */
  #waiting = [];
  /** The start of a message whose terminator has not arrived yet, and its UTF-8 size. */
  #partial = '';
  #partialBytes = 0;
  /** Decodes binary frames (the server sends text; tolerated, as bytes of the stream). */
  #decoder = null;
  /** Why the current socket is being closed by this client, if it is. */
  #failure = null;
  /** The application ended the connection (disconnect or close): do not reconnect. */
  #leaving = false;
  /** The name the connection is bound to, as the replies so far say. */
  #user = null;
  /** Name and password to log in with after a reconnect (only with `relogin`). */
  #credentials = null;
  /** Pending keep-alive and reconnect timers. */
  #keepAliveTimer = null;
  #reconnectTimer = null;
  /** Reconnect attempts since the connection was last open. */
  #attempt = 0;

  /** Checks and keeps `options` (TetherClientOptions in index.d.ts); connects nothing yet. */
  constructor(options = {}) {
    if (options === null || typeof options !== 'object') {
      throw new TypeError('options must be an object');
    }
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    const maxMessageBytes = numberOption(options, 'maxMessageBytes', DEFAULTS.maxMessageBytes);
    this.#options = {
      maxMessageBytes,
      keepAliveMs: numberOption(options, 'keepAliveMs', DEFAULTS.keepAliveMs, { allowNull: true }),
      connectTimeoutMs: numberOption(options, 'connectTimeoutMs', DEFAULTS.connectTimeoutMs),
      relogin: Boolean(options.relogin ?? DEFAULTS.relogin),
      reconnect: reconnectOptions(options.reconnect),
      protocols: options.protocols ?? [SUBPROTOCOL],
      // The `ws` package takes a third argument; browsers and undici ignore it. A frame
      // holds one message and its terminator, so a bigger one is refused unread.
      webSocketOptions: options.webSocketOptions ?? { maxPayload: maxMessageBytes + 1 },
      random: options.random ?? Math.random,
    };
    if (this.#options.keepAliveMs === 0) this.#options.keepAliveMs = null;
  }

  /** 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed'. */
  get state() {
    return this.#state;
  }

  /** The name the connection is bound to after the replies received so far, or `null`. */
  get user() {
    return this.#user;
  }

  /** The URL given to {@link connect}. */
  get url() {
    return this.#url;
  }

  /** Adds `listener` for `type`; returns a function that removes it. */
  on(type, listener) {
    if (typeof listener !== 'function') throw new TypeError('listener must be a function');
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => this.off(type, listener);
  }

  /** Removes `listener` for `type`. */
  off(type, listener) {
    this.#listeners.get(type)?.delete(listener);
  }

  /** Adds a listener called at most once. */
  once(type, listener) {
    const off = this.on(type, (detail) => {
      off();
      listener(detail);
    });
    return off;
  }

  /** Calls the listeners of `type`; one that throws does not stop the others. */
  #emit(type, detail) {
    for (const listener of [...(this.#listeners.get(type) ?? [])]) {
      try {
        listener(detail);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }

  /**
   * Opens the connection to `url` (`ws://` or `wss://`); resolves once it is open.
   * Rejects with a `TetherError` `connect_failed` if it cannot be opened (no reconnect
   * then: that starts only after a connection that was open drops).
   */
  async connect(url) {
    if (this.#state === 'connecting' || this.#state === 'open' || this.#state === 'reconnecting') {
      throw new TetherError('already_connected', `the client is already ${this.#state}`);
    }
    if (!this.#WebSocket) {
      throw new TetherError(
        'no_websocket',
        'no WebSocket implementation: pass one as options.WebSocket (on Node 20, the ws package)',
      );
    }
    this.#url = String(url);
    this.#leaving = false;
    this.#attempt = 0;
    this.#state = 'connecting';
    try {
      await this.#open();
    } catch (err) {
      if (this.#state === 'connecting') this.#state = 'closed';
      throw err;
    }
    this.#emit('open', { reconnected: false });
  }

  /** Opens a socket to the URL; resolves when it is open, rejects if it closes first. */
  #open() {
    return new Promise((resolve, reject) => {
      let socket;
      try {
        socket = new this.#WebSocket(this.#url, this.#options.protocols, this.#options.webSocketOptions);
      } catch (err) {
        reject(new TetherError('connect_failed', `cannot connect to ${this.#url}: ${err.message}`, { cause: err }));
        return;
      }
      socket.binaryType = 'arraybuffer';
      this.#socket = socket;
      let opened = false;
      const timer = setTimeout(() => {
        if (opened || this.#socket !== socket) return;
        this.#socket = null;
        try {
          socket.close();
        } catch {
          // Closing a socket that is still connecting may throw; it is dropped either way.
        }
        reject(new TetherError('connect_failed', `no connection to ${this.#url} within ${this.#options.connectTimeoutMs} ms`));
      }, Math.min(this.#options.connectTimeoutMs, MAX_TIMER_MS));
      socket.onopen = () => {
        clearTimeout(timer);
        if (this.#socket !== socket) return;
        opened = true;
        this.#partial = '';
        this.#partialBytes = 0;
        this.#decoder = null;
        this.#failure = null;
        this.#state = 'open';
        this.#armKeepAlive();
        resolve();
      };
      socket.onmessage = (message) => {
        if (this.#socket === socket) this.#receive(message.data);
      };
      socket.onerror = (event) => {
        // A close event always follows. The ws package reports here that it refused a
        // frame over maxPayload; browsers say nothing more than the close does.
        if (this.#socket === socket && event?.error?.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') {
          this.#failure = this.#tooLong();
        }
      };
      socket.onclose = (event) => {
        clearTimeout(timer);
        if (!opened) {
          if (this.#socket === socket) this.#socket = null;
          reject(new TetherError('connect_failed', `cannot connect to ${this.#url} (close code ${event.code})`, { closeCode: event.code }));
          return;
        }
        this.#closed(socket, event);
      };
    });
  }

  /** Takes one frame's data: splits it into messages, bounded by `maxMessageBytes`. */
  #receive(data) {
    let text;
    if (typeof data === 'string') {
      text = data;
    } else {
      try {
        this.#decoder ??= new TextDecoder('utf-8', { fatal: true });
        const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
        text = this.#decoder.decode(bytes, { stream: true });
      } catch {
        this.#fail(new TetherError('protocol', 'the server sent bytes that are not UTF-8'), 1007);
        return;
      }
    }
    const socket = this.#socket;
    let start = 0;
    while (this.#socket === socket) {
      const end = text.indexOf(RS, start);
      const piece = end < 0 ? text.slice(start) : text.slice(start, end);
      this.#partialBytes += utf8Length(piece);
      if (this.#partialBytes > this.#options.maxMessageBytes) {
        this.#fail(this.#tooLong(), 1009);
        return;
      }
      if (end < 0) {
        this.#partial += piece;
        return;
      }
      const message = this.#partial + piece;
      this.#partial = '';
      this.#partialBytes = 0;
      this.#dispatch(message);
      start = end + 1;
    }
  }

  /** The error of a message over `maxMessageBytes`. */
  #tooLong() {
    return new TetherError('message_too_long', `a message from the server is longer than ${this.#options.maxMessageBytes} bytes`);
  }

  /** Hands one message to the command it answers, or emits it as a push. */
  #dispatch(message) {
    const parts = message.split(US);
    const kind = parts[0];
    if (parts.length === 1 && REPLIES.has(kind)) {
      const waiting = this.#waiting.shift();
      if (!waiting) {
        this.#fail(new TetherError('protocol', `the server sent the reply ${kind} while no command was waiting`), 1002);
        return;
      }
      this.#track(waiting, kind);
      waiting.resolve(kind);
      return;
    }
    if (parts.length === 1 && NOTICES.has(kind)) {
      if (kind === 'invalidated') {
        this.#user = null;
        this.#credentials = null;
      }
      this.#emit(kind, {});
      return;
    }
    if (kind === 'event' && parts.length === 3 && EVENT_TIME.test(parts[1])) {
      this.#emit('event', { time: Number(parts[1]), text: parts[2] });
      return;
    }
    const excerpt = message.slice(0, 80).replaceAll(US, '␟');
    this.#fail(new TetherError('protocol', `the server sent a message the protocol does not have: ${JSON.stringify(excerpt)}`), 1002);
  }

  /** Follows the binding through the replies, as the server changes it (SPEC §2). */
  #track(waiting, reply) {
    if (waiting.command === 'login' && reply === 'login_valid') {
      this.#user = waiting.name;
      this.#credentials = this.#options.relogin ? { name: waiting.name, password: waiting.password } : null;
    } else if (waiting.command === 'logout' && reply === 'logout_ack') {
      this.#user = null;
      this.#credentials = null;
    }
  }

  /** Closes the socket because of `error`; the close event then ends the connection. */
  #fail(error, code) {
    const socket = this.#socket;
    if (!socket) return;
    this.#failure = error;
    this.#closed(socket, { code, reason: error.message, wasClean: false });
    try {
      // Browsers allow only 1000 and 3000–4999 here; the ws package takes the RFC codes.
      socket.close(code);
    } catch {
      try {
        socket.close(1000);
      } catch {
        // Already closing.
      }
    }
  }

  /** The socket `socket` ended: fails the waiting commands, emits `close`, reconnects. */
  #closed(socket, event) {
    if (this.#socket !== socket) return;
    this.#socket = null;
    clearTimeout(this.#keepAliveTimer);
    this.#keepAliveTimer = null;
    // A 1009 from the server means the client's command was too long: no error of ours.
    const error = this.#failure;
    this.#failure = null;
    const waiting = this.#waiting;
    this.#waiting = [];
    this.#user = null;
    for (const entry of waiting) {
      entry.reject(new TetherError('closed', `the connection closed before the reply to ${entry.command} (code ${event.code})`, {
        closeCode: event.code,
        cause: error ?? undefined,
      }));
    }
    const reconnect = this.#options.reconnect;
    const willReconnect = !this.#leaving && reconnect !== null && this.#attempt < reconnect.maxAttempts;
    this.#state = willReconnect ? 'reconnecting' : 'closed';
    this.#emit('close', {
      code: event.code,
      reason: event.reason ?? '',
      wasClean: Boolean(event.wasClean),
      error,
      willReconnect,
    });
    if (willReconnect && this.#state === 'reconnecting') this.#scheduleReconnect();
  }

  /** Waits the next backoff delay, then tries to open the connection again. */
  #scheduleReconnect() {
    const { initialDelayMs, maxDelayMs, factor, maxAttempts } = this.#options.reconnect;
    if (this.#attempt >= maxAttempts) {
      this.#state = 'closed';
      this.#emit('reconnect_failed', { attempts: this.#attempt });
      return;
    }
    this.#attempt += 1;
    const attempt = this.#attempt;
    const ceiling = Math.min(maxDelayMs, initialDelayMs * factor ** (attempt - 1));
    // Equal jitter: half the ceiling, plus up to the other half at random, so clients that
    // lost the same server do not come back in step, and no retry comes at once.
    const delayMs = Math.round(ceiling / 2 + this.#options.random() * (ceiling / 2));
    this.#emit('reconnecting', { attempt, delayMs });
    if (this.#state !== 'reconnecting') return; // a listener called close()
    this.#reconnectTimer = setTimeout(() => this.#reconnect(), Math.min(delayMs, MAX_TIMER_MS));
  }

  /** One reconnect attempt; on success logs in again when the application asked for it. */
  async #reconnect() {
    this.#reconnectTimer = null;
    if (this.#state !== 'reconnecting') return;
    try {
      await this.#open();
    } catch (err) {
      if (this.#state !== 'reconnecting') return;
      this.#emit('reconnect_error', { attempt: this.#attempt, error: err });
      this.#scheduleReconnect();
      return;
    }
    this.#attempt = 0;
    const credentials = this.#credentials;
    let relogin = null;
    if (credentials) {
      // Sent before the 'open' listeners run, so it is answered ahead of their commands.
      relogin = this.login(credentials.name, credentials.password);
    }
    this.#emit('open', { reconnected: true });
    if (relogin) {
      relogin.then(
        (ok) => this.#emit('relogin', { name: credentials.name, ok }),
        (error) => this.#emit('relogin', { name: credentials.name, ok: false, error }),
      );
    }
  }

  /** Schedules a keep-alive `prolongate` `keepAliveMs` after the last command. */
  #armKeepAlive() {
    clearTimeout(this.#keepAliveTimer);
    this.#keepAliveTimer = null;
    const interval = this.#options.keepAliveMs;
    if (interval === null || this.#state !== 'open') return;
    this.#keepAliveTimer = setTimeout(() => {
      this.#keepAliveTimer = null;
      this.#send({ command: 'prolongate', parts: ['prolongate'] }).catch(() => {});
    }, Math.min(interval, MAX_TIMER_MS));
  }

  /** Sends one command; the promise gets its reply (a string) or a `TetherError`. */
  #send(entry) {
    return new Promise((resolve, reject) => {
      const socket = this.#socket;
      if (!socket || this.#state !== 'open') {
        reject(new TetherError('not_connected', `cannot send ${entry.command}: the client is ${this.#state}`));
        return;
      }
      const frame = entry.parts.join(US) + RS;
      delete entry.parts;
      this.#waiting.push({ ...entry, resolve, reject });
      try {
        socket.send(frame);
      } catch (err) {
        this.#fail(new TetherError('closed', `cannot send: ${err.message}`, { cause: err }), 1000);
        return;
      }
      this.#armKeepAlive();
    });
  }

  /** Sends an argument-less command and checks its reply. */
  async #expect(command, expected) {
    const reply = await this.#send({ command, parts: [command] });
    if (reply !== expected) {
      throw new TetherError('unexpected_reply', `the server answered ${command} with ${reply}`, { reply });
    }
  }

  /** `login`: true when the connection is now bound to `name`, false otherwise. */
  async login(name, password) {
    checkPart(name, 'name');
    checkPart(password, 'password');
    // The password is kept past the reply only with `relogin`.
    const remembered = this.#options.relogin ? password : undefined;
    const reply = await this.#send({ command: 'login', parts: ['login', name, password], name, password: remembered });
    if (reply === 'login_valid') return true;
    if (reply === 'login_invalid') return false;
    throw new TetherError('unexpected_reply', `the server answered login with ${reply}`, { reply });
  }

  /** `logout`: binds the connection to no name. */
  logout() {
    return this.#expect('logout', 'logout_ack');
  }

  /** `prolongate`: resets the server's inactivity timer. */
  prolongate() {
    return this.#expect('prolongate', 'prolongate_ack');
  }

  /** `invalidate`: every other connection bound to the same name gets `invalidated`. */
  invalidate() {
    return this.#expect('invalidate', 'invalidate_ack');
  }

  /**
   * `disconnect`: resolves with the server's `disconnect_ack`; the server then closes the
   * connection, and the client does not reconnect.
   */
  disconnect() {
    if (this.#state === 'open') this.#leaving = true;
    return this.#expect('disconnect', 'disconnect_ack');
  }

  /**
   * Sends any command (its type, then its arguments) and resolves with the reply as sent,
   * such as `unknown_command` or `invalid_args_count`.
   */
  async command(type, ...args) {
    checkPart(type, 'command');
    args.forEach((arg, i) => checkPart(arg, `argument ${i + 1}`));
    return this.#send({ command: type, parts: [type, ...args] });
  }

  /**
   * Closes the connection from this side (or stops reconnecting) and forgets the
   * credentials; waiting commands fail with `closed`.
   */
  close() {
    this.#leaving = true;
    this.#credentials = null;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    const socket = this.#socket;
    if (socket && this.#state === 'open') {
      this.#closed(socket, { code: 1000, reason: 'closed by the client', wasClean: true });
      try {
        socket.close(1000);
      } catch {
        // Already closing.
      }
      return;
    }
    if (socket) {
      // Still connecting: drop it; the pending connect() rejects.
      try {
        socket.close();
      } catch {
        // A socket still connecting may refuse to close; it is dropped either way.
      }
    }
    this.#state = 'closed';
  }
}

/** Creates a client with `options` and connects it to `url`. */
export async function connect(url, options) {
  const client = new TetherClient(options);
  await client.connect(url);
  return client;
}
