// node --test: the page's words and numbers (api_service/static/format.js).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  formatDuration,
  formatProgress,
  formatSize,
  localTime,
  operationFromHash,
  originAllowed,
  previewKind,
  problemMessage,
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
