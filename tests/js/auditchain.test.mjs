// node --test: the page's access-log chain verifier (api_service/static/auditchain.js) against logs written and
// served by the Python implementation (tests/js/vectors/auditchain.json, made by tests/helpers/auditchain_vectors.py
// and checked against shared/audit_log.py by tests/unit/api/test_auditchain_vectors.py), and every way a response
// can be rewritten on its way to the page: a flipped byte, a recomputed digest, a dropped, reordered or repeated
// batch, a cut tail with a matching head, lies about what a batch is, events swapped in the server's list.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { GENESIS, base64Bytes, decodeBatch, verifyAccessLog } from '../../api_service/static/auditchain.js';
import { sha256Hex } from '../../api_service/static/sha256.js';

const VECTORS = JSON.parse(readFileSync(new URL('./vectors/auditchain.json', import.meta.url), 'utf8'));
const { cases } = VECTORS;
const copy = (value) => structuredClone(value);
const verify = (name, pages = cases[name].pages, options = {}) =>
  verifyAccessLog(pages, { operationId: cases[name].operation_id, ...options });
const b64 = (bytes) => Buffer.from(bytes).toString('base64');
const batchesOf = (pages) => pages.flatMap((page) => page.chain.batches);

/** Rewrite one served batch's bytes with `edit(bytes)`; with `rehash`, also its digest (a careful forger). */
function rewrite(pages, sequence, edit, { rehash = false } = {}) {
  const item = batchesOf(pages).find((b) => b.sequence === sequence);
  const bytes = edit(base64Bytes(item.plaintext));
  item.plaintext = b64(bytes);
  if (rehash) item.digest = sha256Hex(bytes);
  return pages;
}

function flipByte(bytes) {
  const out = Uint8Array.from(bytes);
  const at = new TextDecoder().decode(out).indexOf('"action":"') + 10; // a letter of the first action
  out[at] ^= 0x01;
  return out;
}

test('the vectors are the Python side\'s and genesis is 64 zeros', () => {
  assert.equal(VECTORS.genesis, GENESIS);
  assert.deepEqual(Object.keys(cases).sort(), ['empty', 'head_behind', 'honest', 'recorded_gap']);
});

test('every Python-written log gets the same verdict here as from shared/audit_log.verify_chain', () => {
  for (const [name, vector] of Object.entries(cases)) {
    const result = verify(name);
    assert.equal(result.problems.length === 0, vector.python.ok, `${name}: ${result.problems}`);
    assert.equal(result.warnings.length, vector.python.warnings.length, name);
  }
});

test('an honest log verifies across pages, and the events are the ones decoded from the bytes', () => {
  const { pages } = cases.honest;
  const result = verify('honest');
  assert.deepEqual(result.problems, []);
  assert.deepEqual(result.events, pages.flatMap((page) => page.events)); // what the Python side decoded too
  assert.equal(result.batches, 4);
  assert.deepEqual(result.newest, pages.at(-1).chain.head);
  assert.ok(result.events.some((event) => event.artifact === 'Résumé (履歴書).txt')); // UTF-8 bytes, not ASCII
});

test('the server\'s events list and chain_valid are ignored: only the verified bytes count', () => {
  const pages = copy(cases.honest.pages);
  for (const page of pages) {
    page.events = [{ id: 'forged', time: '2026-12-01T00:00:00Z', action: 'operation.read', result: 'allowed' }];
    page.chain_valid = false;
    page.problems = ['the server says so'];
  }
  const result = verify('honest', pages);
  assert.deepEqual(result.problems, []);
  assert.deepEqual(result.events, cases.honest.pages.flatMap((page) => page.events));
});

test('a flipped byte in a batch is caught and names that batch; its events are not shown', () => {
  const pages = rewrite(copy(cases.honest.pages), 2, flipByte);
  const result = verify('honest', pages);
  assert.ok(result.problems.some((p) => /^batch 2 was changed/.test(p)), result.problems.join('\n'));
  const batch2 = decodeBatch(base64Bytes(cases.honest.pages[0].chain.batches[1].plaintext));
  const shown = new Set(result.events.map((event) => event.id));
  assert.ok(batch2.events.every((event) => !shown.has(event.id)));
});

test('a changed batch with a recomputed digest breaks the next link, or the head when it is the newest', () => {
  let result = verify('honest', rewrite(copy(cases.honest.pages), 2, flipByte, { rehash: true }));
  assert.ok(result.problems.includes('batch 3 does not chain to batch 2 (edited, inserted or reordered)'), result.problems.join('\n'));
  result = verify('honest', rewrite(copy(cases.honest.pages), 4, flipByte, { rehash: true }));
  assert.ok(result.problems.includes('batch 4 differs from the digest in the head'), result.problems.join('\n'));
  assert.ok(result.problems.includes('batch 4 differs from the digest in the head kept outside S3'));
});

test('a dropped batch, in the middle or on a page boundary, is missing', () => {
  for (const sequence of [2, 3]) {
    const pages = copy(cases.honest.pages);
    for (const page of pages) page.chain.batches = page.chain.batches.filter((b) => b.sequence !== sequence);
    const result = verify('honest', pages);
    assert.ok(result.problems.includes(`batch ${sequence} is missing (the next one served is batch ${sequence + 1})`), result.problems.join('\n'));
  }
});

test('a cut tail is caught by the head, and when the head is rewritten too, by what this device saw before', () => {
  const pages = copy(cases.honest.pages);
  const third = pages[1].chain.batches[0];
  pages[1].chain.batches.pop();
  let result = verify('honest', pages);
  assert.ok(result.problems.includes('batches 4..4 named by the head are missing (tail removed)'), result.problems.join('\n'));

  const remembered = verify('honest').newest;
  pages[1].chain.head = { sequence: 3, digest: third.digest };
  pages[1].chain.anchor = { sequence: 3, digest: third.digest };
  result = verify('honest', pages); // consistent on its own...
  assert.deepEqual(result.problems, []);
  result = verify('honest', pages, { remembered }); // ...but not with what this device verified earlier
  assert.deepEqual(result.problems, ['the log ends at batch 3, but this device verified batch 4 before: the log was cut']);
});

test('a rewritten history with a consistent new head differs from the batch this device remembered', () => {
  const remembered = verify('honest').newest;
  const pages = rewrite(copy(cases.honest.pages), 4, flipByte, { rehash: true });
  const forged = pages[1].chain.batches[1].digest;
  pages[1].chain.head = { sequence: 4, digest: forged };
  pages[1].chain.anchor = { sequence: 4, digest: forged };
  assert.deepEqual(verify('honest', pages).problems, []);
  assert.deepEqual(verify('honest', pages, { remembered }).problems, [
    'batch 4 differs from the one this device verified before: the log was rewritten',
  ]);
});

test('reordered or repeated batches are caught', () => {
  let pages = copy(cases.honest.pages);
  pages[0].chain.batches.reverse();
  let result = verify('honest', pages);
  assert.ok(result.problems.includes('batch 1 is out of order (after batch 2)'), result.problems.join('\n'));
  assert.ok(result.problems.some((p) => /^batch 1 is missing/.test(p)));

  pages = copy(cases.honest.pages);
  pages[1].chain.batches.unshift(copy(pages[0].chain.batches[1]));
  result = verify('honest', pages);
  assert.ok(result.problems.includes('batch 2 is out of order (after batch 2)'), result.problems.join('\n'));
  assert.ok(result.problems.some((p) => /appears twice/.test(p)));

  pages = copy(cases.honest.pages); // whole pages swapped
  pages.reverse();
  assert.ok(verify('honest', pages).problems.length > 0);
});

test('a batch whose page says another number or link than its bytes is caught', () => {
  let pages = copy(cases.honest.pages);
  pages[0].chain.batches[1].prev = GENESIS;
  assert.ok(verify('honest', pages).problems.some((p) => /^batch 2 says it is batch 2 after/.test(p)));
  pages = copy(cases.honest.pages); // batch 3's bytes served as batch 2's
  pages[0].chain.batches[1] = { ...copy(pages[1].chain.batches[0]), sequence: 2 };
  assert.ok(verify('honest', pages).problems.some((p) => /^batch 2 says it is batch 3/.test(p)));
});

test('damage the appender recorded, and events of another operation, are problems', () => {
  assert.deepEqual(verify('recorded_gap').problems, [
    'batch 2 records that the log was damaged before it: batches 2..3 named by head.json are missing',
  ]);
  const pages = rewrite(copy(cases.honest.pages), 4, (bytes) => {
    const doc = JSON.parse(new TextDecoder().decode(bytes));
    doc.events[0].operation_id = 'privacy-audit_zzzzzzzzzzzzzzzzzzzzzzzzzz';
    return new TextEncoder().encode(JSON.stringify(doc));
  }, { rehash: true });
  pages[1].chain.head.digest = pages[1].chain.batches[1].digest;
  pages[1].chain.anchor.digest = pages[1].chain.batches[1].digest;
  assert.deepEqual(verify('honest', pages).problems, [
    `event ${cases.honest.pages[1].events[2].id} in batch 4 belongs to another operation (privacy-audit_zzzzzzzzzzzzzzzzzzzzzzzzzz)`,
  ]);
});

test('a head behind is a warning; a missing head or a rolled-back head.json is a problem', () => {
  const result = verify('head_behind');
  assert.deepEqual(result.problems, []);
  assert.match(result.warnings.join(), /1 batch\(es\) behind/);
  let pages = copy(cases.honest.pages);
  pages[1].chain.head = null;
  pages[1].chain.anchor = null;
  assert.deepEqual(verify('honest', pages).problems, ['the head is missing while batches exist']);
  pages = copy(cases.honest.pages);
  pages[1].chain.head = { sequence: 3, digest: pages[1].chain.batches[0].digest };
  assert.ok(verify('honest', pages).problems.some((p) => /older than batch 4 kept outside S3 \(rolled back\)/.test(p)));
});

test('an empty log verifies; pages without chain bytes or with unreadable bytes do not', () => {
  assert.deepEqual(verify('empty'), { events: [], batches: 0, newest: null, problems: [], warnings: [] });
  const pages = copy(cases.honest.pages);
  delete pages[1].chain;
  assert.match(verify('honest', pages).problems.join(), /page 2 carries no batch bytes/);
  const bad = copy(cases.honest.pages);
  bad[0].chain.batches[0].plaintext = 'not base64!';
  assert.ok(verify('honest', bad).problems.includes('batch 1 has no readable bytes'));
  assert.equal(decodeBatch(new TextEncoder().encode('{"v":2,"sequence":1,"prev":"","events":[]}')), null);
  assert.equal(decodeBatch(Uint8Array.from([0xff, 0xfe])), null);
});
