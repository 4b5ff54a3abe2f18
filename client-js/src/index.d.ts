// Types of tether-client (src/index.js). Hand-written: the package has no build step.

/** The WebSocket subprotocol offered by default; the server selects it. */
export declare const SUBPROTOCOL: 'tether.v1';

/** A WebSocket constructor: the browser's, Node 22's global, or the `ws` package's. */
export interface WebSocketConstructor {
  new (url: string, protocols?: string | string[], options?: object): WebSocketLike;
}

/** The part of the WebSocket interface the client uses. */
export interface WebSocketLike {
  binaryType: string;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  onclose: ((event: { code: number; reason: string; wasClean: boolean }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** When and how often to reopen a connection that dropped. */
export interface ReconnectOptions {
  /** The first delay's ceiling, in ms (default 500). */
  initialDelayMs?: number;
  /** The largest delay ceiling, in ms (default 30 000). */
  maxDelayMs?: number;
  /** Each attempt's ceiling is the previous one times this (default 2, at least 1). */
  factor?: number;
  /** Attempts in a row before giving up with `reconnect_failed` (default Infinity). */
  maxAttempts?: number;
}

export interface TetherClientOptions {
  /** The WebSocket implementation; default `globalThis.WebSocket` (Node 20: pass `ws`). */
  WebSocket?: WebSocketConstructor;
  /** Longest message accepted from the server, in UTF-8 bytes without its terminator (default 65 536). */
  maxMessageBytes?: number;
  /** Send `prolongate` after this long without a command; `null` or 0 = never (default 60 000). */
  keepAliveMs?: number | null;
  /** How long opening a connection may take, in ms (default 10 000). */
  connectTimeoutMs?: number;
  /** After a reconnect, log in again with the last name and password that logged in (default false). */
  relogin?: boolean;
  /** Backoff settings, or `false` to never reconnect (default: on, with the defaults above). */
  reconnect?: ReconnectOptions | boolean;
  /** Subprotocols offered (default `['tether.v1']`). */
  protocols?: string | string[];
  /** Third constructor argument (the `ws` package's options; default `{maxPayload: maxMessageBytes + 1}`). */
  webSocketOptions?: object;
  /** Source of the backoff jitter, in [0, 1) (default `Math.random`). */
  random?: () => number;
}

export type TetherErrorCode =
  /** An argument holds U+001E or U+001F: nothing was sent. */
  | 'invalid_argument'
  /** A command was called while the client is not open. */
  | 'not_connected'
  /** The connection closed before the command's reply came. */
  | 'closed'
  /** The server answered with a reply that does not fit the command (`unknown_command`, …). */
  | 'unexpected_reply'
  /** A message from the server was longer than `maxMessageBytes`: the client closed the connection. */
  | 'message_too_long'
  /** The server sent something the protocol does not have: the client closed the connection. */
  | 'protocol'
  /** The connection could not be opened. */
  | 'connect_failed'
  /** `connect` was called while connecting, open or reconnecting. */
  | 'already_connected'
  /** No WebSocket implementation was given and there is no global one. */
  | 'no_websocket';

/** Why a command failed or a connection ended. */
export declare class TetherError extends Error {
  readonly name: 'TetherError';
  readonly code: TetherErrorCode;
  /** With `unexpected_reply`: the reply as sent. */
  readonly reply?: string;
  /** With `invalid_argument`: which argument (`name`, `password`, `argument 2`, …). */
  readonly argument?: string;
  /** With `closed` and `connect_failed`: the WebSocket close code, when known. */
  readonly closeCode?: number;
}

/** An event published for the user the connection is bound to. */
export interface TetherEvent {
  /** The server's event time: milliseconds of its `events.time_zone` wall clock read as UTC. */
  time: number;
  /** The event's text. */
  text: string;
}

export interface CloseDetail {
  /** The WebSocket close code (1000 after `timeout`, `io_error`, `disconnect`; 1001 after `shutdown`). */
  code: number;
  reason: string;
  wasClean: boolean;
  /** Set when the client closed the connection because the server broke the rules. */
  error: TetherError | null;
  /** Whether the client will try to reopen it (see `reconnecting`). */
  willReconnect: boolean;
}

export interface TetherEvents {
  /** The connection is open (`reconnected`: after a drop). */
  open: { reconnected: boolean };
  event: TetherEvent;
  /** The binding was revoked; the connection stays open, bound to no name. */
  invalidated: Record<string, never>;
  /** The server's inactivity timeout expired; it closes the connection. */
  timeout: Record<string, never>;
  /** The server hit an error on this connection; it closes the connection. */
  io_error: Record<string, never>;
  /** The server is stopping; it closes the connection. */
  shutdown: Record<string, never>;
  /** An open connection ended. */
  close: CloseDetail;
  /** A reconnect attempt is due after `delayMs`. */
  reconnecting: { attempt: number; delayMs: number };
  /** A reconnect attempt failed; another follows unless `maxAttempts` is reached. */
  reconnect_error: { attempt: number; error: TetherError };
  /** `maxAttempts` attempts failed; the client is closed. */
  reconnect_failed: { attempts: number };
  /** The answer to the login sent after a reconnect (with `relogin`). */
  relogin: { name: string; ok: boolean; error?: TetherError };
}

export type TetherState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

export declare class TetherClient {
  constructor(options?: TetherClientOptions);
  /** Where the client is in its life. */
  readonly state: TetherState;
  /** The name the connection is bound to as its replies say, or null. */
  readonly user: string | null;
  /** The URL given to `connect`. */
  readonly url: string | null;

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof TetherEvents>(type: K, listener: (detail: TetherEvents[K]) => void): () => void;
  off<K extends keyof TetherEvents>(type: K, listener: (detail: TetherEvents[K]) => void): void;
  once<K extends keyof TetherEvents>(type: K, listener: (detail: TetherEvents[K]) => void): () => void;

  /** Opens the connection (`ws://` or `wss://`); rejects with `connect_failed`. */
  connect(url: string | URL): Promise<void>;
  /** `login`: true when the connection is now bound to `name`. */
  login(name: string, password: string): Promise<boolean>;
  /** `logout`: binds the connection to no name. */
  logout(): Promise<void>;
  /** `prolongate`: resets the server's inactivity timer. */
  prolongate(): Promise<void>;
  /** `invalidate`: the user's other connections get `invalidated`. */
  invalidate(): Promise<void>;
  /** `disconnect`: resolves on `disconnect_ack`; the server closes, no reconnect. */
  disconnect(): Promise<void>;
  /** Any command; resolves with the reply as sent (`unknown_command`, `invalid_args_count`, …). */
  command(type: string, ...args: string[]): Promise<string>;
  /** Closes the connection from this side, or stops reconnecting. */
  close(): void;
}

/** What the client uses for options left out. */
export declare const DEFAULTS: Readonly<{
  maxMessageBytes: number;
  keepAliveMs: number;
  connectTimeoutMs: number;
  relogin: boolean;
  reconnect: Readonly<Required<ReconnectOptions>>;
}>;

/** UTF-8 length of a string in bytes. */
export declare function utf8Length(text: string): number;

/** Creates a client with `options` and connects it to `url`. */
export declare function connect(url: string | URL, options?: TetherClientOptions): Promise<TetherClient>;
