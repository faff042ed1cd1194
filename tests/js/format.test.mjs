// node --test: the page's words and numbers (api_service/static/format.js).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  checkLogPages,
  describeGrant,
  formatDuration,
  formatProgress,
  formatSize,
  localTime,
  operationFromHash,
  originAllowed,
  previewKind,
  problemMessage,
  quotaText,
  relativeTime,
  suggestedPageUrl,
} from '../../api_service/static/format.js';

test('sizes and progress', () => {
  assert.equal(formatSize(0), '0 B');
  assert.equal(formatSize(1536), '1.5 KiB');
  assert.equal(formatSize(20 * 1048576), '20.0 MiB');
  assert.equal(formatProgress(5 * 1048576, 20 * 1048576, 1.5 * 1048576), '5.0 MiB of 20.0 MiB (25%), 1.5 MiB/s');
  assert.equal(formatProgress(10, 0, 0), '10 B of 0 B (0%)');
});

test('times are local and relative', () => {
  const now = Date.parse('2030-01-10T12:00:00Z');
  assert.equal(relativeTime('2030-01-16T12:00:00Z', now), 'in 6 days');
  assert.equal(relativeTime('2030-01-10T09:00:00Z', now), '3 hours ago');
  assert.equal(relativeTime('2030-01-10T12:00:01Z', now), 'now');
  assert.equal(localTime('2030-01-10T12:00:00Z', { locale: 'en-GB', timeZone: 'Asia/Tokyo' }), '10 Jan 2030, 21:00');
  assert.equal(localTime(null), '');
  assert.equal(formatDuration(65), '1 min 05 s');
});

test('problem codes become sentences', () => {
  assert.match(problemMessage({ code: 'not_grantee' }, 403), /not its grantee/);
  assert.doesNotMatch(problemMessage({ code: 'not_grantee' }, 403), /not_grantee/);
  assert.equal(
    problemMessage({ code: 'input_invalid', detail: 'input: bad' }, 422),
    'The input is not valid: input: bad',
  );
  assert.match(problemMessage({ code: 'storage_error' }, 503), /storage/);
  assert.match(problemMessage(null, 502), /HTTP 502/);
  assert.match(problemMessage({ code: 'something_new', detail: 'why' }, 409), /why \(something_new\)/);
});

test('origin mismatch names the right address', () => {
  assert.ok(originAllowed('http://127.0.0.1:8000', ['http://127.0.0.1:8000']));
  assert.ok(!originAllowed('http://localhost:8000', ['http://127.0.0.1:8000']));
  assert.equal(
    suggestedPageUrl('http://localhost:8000/app/#op=x', ['https://other.example', 'http://127.0.0.1:8000']),
    'http://127.0.0.1:8000/app/#op=x',
  );
  assert.equal(suggestedPageUrl('http://localhost:8000/app/', []), null);
});

test('deep links and previews', () => {
  assert.equal(operationFromHash('#op=privacy-audit_abcdefghijklmnopqrstuvwxyz'), 'privacy-audit_abcdefghijklmnopqrstuvwxyz');
  assert.equal(operationFromHash('#op=../etc'), null);
  assert.equal(previewKind('text/markdown', 'a.md'), 'text');
  assert.equal(previewKind('application/json', 'r.json'), 'json');
  assert.equal(previewKind('image/png'), 'image');
  assert.equal(previewKind('image/svg+xml', 'x.svg'), null);
  assert.equal(previewKind('text/html', 'x.html'), null);
  assert.equal(previewKind('application/octet-stream', 'x.bin'), null);
});

test('the grant in words', () => {
  const now = Date.parse('2030-01-10T12:00:00Z');
  const opts = { locale: 'en-GB', timeZone: 'UTC' };
  const none = describeGrant({ address: '0xabc', status: 'none', agents: [], quotas: {} }, now, opts);
  assert.equal(none.canStart, false);
  assert.match(none.sentence, /has not granted 0xabc anything/);
  const active = describeGrant({
    address: '0xabc', source: 'static', status: 'active', agents: ['privacy-audit'], expires_at: '2030-01-16T12:00:00Z',
    max_retention_days: 3, quotas: { concurrent_operations: 2, operations_per_hour: null, stored_bytes: 1048576 },
    usage: { concurrent_operations: 1, operations_last_hour: 4, stored_bytes: 524288 },
  }, now, opts);
  assert.equal(active.canStart, true);
  assert.equal(active.sentence, 'You may run privacy-audit until 16 Jan 2030, 12:00 (in 6 days).');
  assert.deepEqual(Object.fromEntries(active.facts), {
    Agents: 'privacy-audit', Until: '16 Jan 2030, 12:00 (in 6 days)', 'Keep results': 'up to 3 days',
    Running: '1 of 2', 'Last hour': '4 (no limit)', Stored: '512.0 KiB of 1.0 MiB',
  });
  const expired = describeGrant({ status: 'expired', agents: ['*'], expires_at: '2030-01-09T12:00:00Z', quotas: {} }, now, opts);
  assert.equal(expired.canStart, false);
  assert.match(expired.sentence, /ended .*1 day ago/);
  const open = describeGrant({ source: 'open', status: 'active', agents: ['*'], expires_at: null, quotas: {}, usage: null }, now);
  assert.match(open.sentence, /open/);
  assert.deepEqual(open.facts.map(([term]) => term), ['Agents', 'Until']);
  assert.equal(quotaText(0, 5), '0 of 5');
  assert.equal(quotaText(undefined, null), '— (no limit)');
});

test('access-log pages are checked in the page too', () => {
  const ev = (id, op = 'op_1') => ({ id, operation_id: op });
  const good = [
    { chain_valid: true, problems: [], events: [ev('a'), ev('b')], next_cursor: '2' },
    { chain_valid: true, problems: [], events: [ev('c')], next_cursor: null },
  ];
  assert.deepEqual(checkLogPages(good, 'op_1'), []);
  assert.deepEqual(checkLogPages(good, 'op_1', ['a', 'b', 'c']), []);
  assert.match(checkLogPages(good, 'op_1', ['a', 'b', 'c', 'd']).join(), /1 event this page showed earlier is gone/);
  assert.match(checkLogPages(good, 'op_1', ['a', 'x']).join(), /gone or moved/);
  const bad = [{ chain_valid: false, problems: ['batch 3 is missing'], events: [ev('a'), ev('a'), ev('z', 'op_2')], next_cursor: null }];
  const problems = checkLogPages(bad, 'op_1').join('\n');
  assert.match(problems, /server: batch 3 is missing/);
  assert.match(problems, /appears twice/);
  assert.match(problems, /another operation \(op_2\)/);
  const stuck = [{ chain_valid: true, events: [], next_cursor: '2' }, { chain_valid: true, events: [], next_cursor: '2' }];
  assert.match(checkLogPages(stuck, 'op_1').join(), /does not move forward/);
});

test('grant problem codes become sentences', () => {
  for (const code of ['no_grant', 'agent_not_granted', 'grant_expired', 'grant_revoked']) {
    assert.doesNotMatch(problemMessage({ code }, 403), new RegExp(code));
  }
  assert.equal(problemMessage({ code: 'quota_exceeded', detail: 'operations_per_hour is 5' }, 429),
    'You have used up a quota of your grant: operations_per_hour is 5');
});
