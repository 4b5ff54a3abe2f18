// The console's logic that does not touch the page: formatting, rates, the sparkline's
// points and the paging of the user list. Tested with `node --test` (tests/browser/).

/** "3 d 4 h", "2 h 5 min", "5 min 3 s", "12 s" for a number of seconds. */
export function formatUptime(seconds) {
  const s = Math.max(0, Math.floor(Number(seconds) || 0));
  const days = Math.floor(s / 86400);
  const hours = Math.floor((s % 86400) / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  const rest = s % 60;
  if (days > 0) return `${days} d ${hours} h`;
  if (hours > 0) return `${hours} h ${minutes} min`;
  if (minutes > 0) return `${minutes} min ${rest} s`;
  return `${rest} s`;
}

/** A count with thousands separated: 12345 → "12,345". */
export function formatCount(value) {
  return Math.round(Number(value) || 0).toLocaleString('en-US');
}

/** The cluster's live nodes as one line: "n1, n2, n3" ("none" for an empty list). */
export function formatNodes(nodes) {
  return Array.isArray(nodes) && nodes.length ? nodes.join(', ') : 'none';
}

/** A rate per second: whole above 10, one decimal below ("0.5", "12"). */
export function formatRate(value) {
  if (value === null || !Number.isFinite(value)) return '–';
  return value >= 10 ? formatCount(value) : value.toFixed(1);
}

/**
 * The `points` of an SVG polyline drawing `values` (oldest first, nulls skipped) right-
 * aligned in a `width` × `height` box, the last `capacity` values spread over the width,
 * 0 at the bottom, the largest value (at least 1) at the top.
 */
export function sparklinePoints(values, capacity, width, height) {
  const max = Math.max(1, ...values.filter((v) => v !== null));
  const step = capacity > 1 ? width / (capacity - 1) : 0;
  const offset = capacity - values.length;
  const points = [];
  values.forEach((value, index) => {
    if (value === null) return;
    const x = (offset + index) * step;
    const y = height - (value / max) * height;
    points.push(`${round(x)},${round(y)}`);
  });
  return points.join(' ');
}

/**
 * The `points` of an SVG polygon filling the area under `sparklinePoints`' line down to
 * the bottom of the box; empty when there is nothing to draw.
 */
export function sparklineArea(values, capacity, width, height) {
  const line = sparklinePoints(values, capacity, width, height);
  if (!line) return '';
  const xs = line.split(' ').map((point) => point.split(',')[0]);
  return `${xs[0]},${height} ${line} ${xs[xs.length - 1]},${height}`;
}

function round(number) {
  return Math.round(number * 10) / 10;
}

/** The path of a user's route: `/v1/users/<name percent-encoded><rest>`, relative to the page. */
export function userPath(name, rest = '') {
  return `../v1/users/${encodeURIComponent(name)}${rest}`;
}

/** The query of `GET /v1/users` for a page `position` (see `Pager`). */
export function listQuery(position, search, limit) {
  const query = new URLSearchParams();
  query.set('limit', String(limit));
  if (position.after !== null) query.set('after', position.after);
  if (search) query.set('search', search);
  if (position.online !== null) query.set('online', String(position.online));
  return `../v1/users?${query}`;
}

/**
 * Where the list is: a position is `{online, after}` — `online` null for all users in
 * name order, true then false for "online first" (the online users, then the others);
 * `after` the cursor of `GET /v1/users`. Keeps the positions visited, for "previous".
 */
export class Pager {
  constructor(onlineFirst) {
    this.history = [{ online: onlineFirst ? true : null, after: null }];
  }

  get current() {
    return this.history[this.history.length - 1];
  }

  get hasPrevious() {
    return this.history.length > 1;
  }

  /** The position after the current one, given the page's answer; null on the last page. */
  static following(position, next) {
    if (next !== null && next !== undefined) return { online: position.online, after: next };
    if (position.online === true) return { online: false, after: null };
    return null;
  }

  /** Moves to `position` (the one `following` gave). */
  forward(position) {
    this.history.push(position);
  }

  /** Moves back one page; false on the first. */
  back() {
    if (!this.hasPrevious) return false;
    this.history.pop();
    return true;
  }
}

/** The text of an error answer's body `{"error": …}`, or a fallback. */
export function errorText(status, body) {
  if (body && typeof body.error === 'string') return body.error;
  return `the server answered ${status}`;
}
