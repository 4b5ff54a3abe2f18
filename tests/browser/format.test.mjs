// Unit tests of the console's page logic (src/admin/console/format.mjs): `node --test`.

import assert from 'node:assert/strict';
import test from 'node:test';
import {
  Pager,
  errorText,
  formatCount,
  formatNodes,
  formatRate,
  formatUptime,
  listQuery,
  sparklineArea,
  sparklinePoints,
  userPath,
} from '../../src/admin/console/format.mjs';

test('uptime is written in its two largest units', () => {
  assert.equal(formatUptime(0), '0 s');
  assert.equal(formatUptime(59), '59 s');
  assert.equal(formatUptime(61), '1 min 1 s');
  assert.equal(formatUptime(3600 * 2 + 60 * 5 + 7), '2 h 5 min');
  assert.equal(formatUptime(86400 * 3 + 3600 * 4 + 1), '3 d 4 h');
  assert.equal(formatUptime(-5), '0 s');
  assert.equal(formatUptime(undefined), '0 s');
});

test('counts and rates are readable', () => {
  assert.equal(formatCount(12345), '12,345');
  assert.equal(formatCount(0), '0');
  assert.equal(formatRate(0.25), '0.3');
  assert.equal(formatRate(9.94), '9.9');
  assert.equal(formatRate(1234.4), '1,234');
  assert.equal(formatRate(null), '–');
});

test('the live nodes are one line, and an empty or missing list says none', () => {
  assert.equal(formatNodes(['n1', 'n2']), 'n1, n2');
  assert.equal(formatNodes([]), 'none');
  assert.equal(formatNodes(null), 'none');
});

test('a sparkline is right-aligned, scaled to its largest value, and skips gaps', () => {
  assert.equal(sparklinePoints([0, 5, 10], 3, 100, 20), '0,20 50,10 100,0');
  assert.equal(sparklinePoints([10], 3, 100, 20), '100,0', 'one value sits at the right edge');
  assert.equal(sparklinePoints([null, 2], 5, 100, 20), '100,0');
  assert.equal(sparklinePoints([0, 0], 2, 100, 20), '0,20 100,20', 'all zero: a flat line at the bottom');
  assert.equal(sparklinePoints([], 5, 100, 20), '');
  assert.equal(sparklineArea([0, 5, 10], 3, 100, 20), '0,20 0,20 50,10 100,0 100,20');
  assert.equal(sparklineArea([], 3, 100, 20), '');
});

test('user paths percent-encode the name', () => {
  assert.equal(userPath('alice', '/connections'), '../v1/users/alice/connections');
  assert.equal(userPath('Алиса'), '../v1/users/%D0%90%D0%BB%D0%B8%D1%81%D0%B0');
  assert.equal(userPath('a/b?c#d'), '../v1/users/a%2Fb%3Fc%23d');
});

test('the list query carries the cursor, the search and the online filter', () => {
  assert.equal(listQuery({ online: null, after: null }, '', 50), '../v1/users?limit=50');
  assert.equal(
    listQuery({ online: true, after: 'a&b' }, 'Al ice', 10),
    '../v1/users?limit=10&after=a%26b&search=Al+ice&online=true',
  );
  assert.equal(listQuery({ online: false, after: null }, '', 10), '../v1/users?limit=10&online=false');
});

test('paging by name follows next and goes back', () => {
  const pager = new Pager(false);
  assert.deepEqual(pager.current, { online: null, after: null });
  assert.equal(pager.hasPrevious, false);
  const second = Pager.following(pager.current, 'bob');
  assert.deepEqual(second, { online: null, after: 'bob' });
  pager.forward(second);
  assert.equal(pager.hasPrevious, true);
  assert.equal(Pager.following(pager.current, null), null, 'the last page');
  assert.equal(pager.back(), true);
  assert.deepEqual(pager.current, { online: null, after: null });
  assert.equal(pager.back(), false);
});

test('online first lists the online users, then the others from the start', () => {
  const pager = new Pager(true);
  assert.deepEqual(pager.current, { online: true, after: null });
  assert.deepEqual(Pager.following(pager.current, 'carol'), { online: true, after: 'carol' });
  const offline = Pager.following({ online: true, after: 'carol' }, null);
  assert.deepEqual(offline, { online: false, after: null });
  assert.deepEqual(Pager.following(offline, 'dave'), { online: false, after: 'dave' });
  assert.equal(Pager.following({ online: false, after: 'dave' }, null), null);
});

test('an error answer gives its reason', () => {
  assert.equal(errorText(400, { error: 'bad name' }), 'bad name');
  assert.equal(errorText(502, null), 'the server answered 502');
  assert.equal(errorText(500, { error: 5 }), 'the server answered 500');
});
