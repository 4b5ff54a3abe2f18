// Calls to the public admin API (docs/admin-api.md) with the token of this tab, which
// lives in this tab's session storage only: never in a URL, a cookie or the browser's
// lasting (local) storage.

import { errorText } from './format.mjs';

const TOKEN_KEY = 'tether.console.token';

/** An answer that was not a success: its status and the server's reason. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The token kept for this tab, or null. */
export function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** Keeps `token` for this tab. */
export function storeToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

/** Forgets the token. */
export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/**
 * Calls `method path` (relative to the page, e.g. `../v1/node`) with `token` and a JSON
 * `body` when given; answers the parsed JSON (null for an empty answer) or throws
 * `ApiError` (status 0 when the server could not be reached).
 */
export async function call(token, method, path, body) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
      redirect: 'error',
    });
  } catch (err) {
    if (err instanceof TypeError && token && !/^[\x21-\x7e]*$/.test(token)) {
      throw new ApiError(0, 'the token must be printable ASCII without spaces');
    }
    throw new ApiError(0, `the server does not answer (${err.message})`);
  }
  const text = await response.text();
  let parsed = null;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = null;
    }
  }
  if (!response.ok) throw new ApiError(response.status, errorText(response.status, parsed));
  return parsed;
}
