// The access log's hash chain, checked on the grantee's own device (docs/audit-log.md, "Verifying in a browser").
//
// Each page of GET /api/v1/operations/{id}/access-log carries `chain.batches`: every batch's plaintext (base64),
// the UTF-8 JSON {"v":1,"sequence":n,"prev":"<hex>","events":[...]} whose SHA-256 is the batch's digest and the
// next batch's `prev`, and `chain.head` / `chain.anchor`, the newest batch as recorded in S3 and in Redis. This
// module recomputes every digest from those bytes, follows the links from genesis (64 zeros) to the head, and
// returns the events decoded from the bytes it verified: the page shows those, never the server's `events` list,
// and never relies on the server's `chain_valid`. What it cannot see (a server that rewrites the whole chain and
// its head) the caller catches with `remembered`, the newest batch this device verified before.

import { sha256Hex } from './sha256.js';

export const GENESIS = '0'.repeat(64);
export const GAP_ACTION = 'access_log.gap';
const HEX64 = /^[0-9a-f]{64}$/;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Standard base64 to bytes; `null` if it is not base64. */
export function base64Bytes(text) {
  if (typeof text !== 'string' || text.length % 4 !== 0 || !BASE64.test(text)) return null;
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) out[i] = binary.charCodeAt(i);
  return out;
}

/** Parse a batch's plaintext as the Python side writes it (shared/audit_log.py `encode_batch`); `null` if it is
 * not a well-formed v1 batch. */
export function decodeBatch(bytes) {
  let doc;
  try {
    doc = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    return null;
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc) || doc.v !== 1) return null;
  const { sequence, prev, events } = doc;
  if (!Number.isSafeInteger(sequence) || sequence < 1 || typeof prev !== 'string' || !HEX64.test(prev)) return null;
  if (!Array.isArray(events) || !events.every(isEvent)) return null;
  return { sequence, prev, events };
}

function isEvent(event) {
  return Boolean(event) && typeof event === 'object' && !Array.isArray(event)
    && ['id', 'time', 'action', 'result'].every((key) => typeof event[key] === 'string');
}

function headOf(value) {
  return value && Number.isSafeInteger(value.sequence) && typeof value.digest === 'string' ? value : null;
}

/**
 * Verify the pages of one operation's access log, first to last, as this device sees them.
 *
 * - every batch's bytes hash to its digest, and what the bytes say (sequence, prev) is what the page says;
 * - sequence numbers run 1, 2, 3... with none missing or out of order, across pages;
 * - each batch's prev is the digest this module computed for the batch before (genesis for batch 1);
 * - the last batch is the one the head (head.json) and the anchor (the head kept outside S3) name; a head one or
 *   more batches behind is a warning (an interrupted append), as in `strongroom audit verify`;
 * - no batch records damage (an `access_log.gap` event), every event names this operation, none appears twice;
 * - `remembered` ({sequence, digest}, the newest batch this device verified earlier) is still there, unchanged.
 *
 * Returns {events, batches, newest, problems, warnings}: `events` are decoded from the verified bytes only (a
 * batch whose bytes do not match its digest contributes none), `newest` the last verified batch ({sequence,
 * digest} to remember, null for an empty log). The log verifies when `problems` is empty.
 */
export function verifyAccessLog(pages, { operationId = null, remembered = null } = {}) {
  const problems = [];
  const warnings = [];
  const events = [];
  const digests = new Map(); // sequence -> digest computed here
  const ids = new Set();
  let expected = 1;
  let prev = GENESIS; // '' when the batch before is missing or unverified: that is the problem, not the link
  let batches = 0;
  let newest = null;
  let last = null;
  pages.forEach((page, index) => {
    const served = page?.chain?.batches;
    if (!Array.isArray(served)) {
      problems.push(`page ${index + 1} carries no batch bytes: this device cannot check the chain (an older server?)`);
      return;
    }
    last = page.chain;
    for (const item of served) {
      const sequence = Number.isSafeInteger(item?.sequence) ? item.sequence : null;
      const name = sequence === null ? `an unnumbered batch on page ${index + 1}` : `batch ${sequence}`;
      const bytes = base64Bytes(item?.plaintext);
      if (sequence === null || bytes === null) {
        problems.push(`${name} has no readable bytes`);
        prev = '';
        continue;
      }
      if (sequence !== expected) {
        problems.push(sequence > expected
          ? `batch ${expected}${sequence - 1 > expected ? `..${sequence - 1}` : ''} ${sequence - 1 > expected ? 'are' : 'is'} missing (the next one served is batch ${sequence})`
          : `batch ${sequence} is out of order (after batch ${expected - 1})`);
        prev = '';
      }
      expected = Math.max(expected, sequence + 1);
      const digest = sha256Hex(bytes);
      if (digest !== item.digest) {
        problems.push(`batch ${sequence} was changed: its bytes do not hash to its digest`);
        prev = '';
        continue;
      }
      const batch = decodeBatch(bytes);
      if (batch === null) {
        problems.push(`batch ${sequence} is malformed`);
        prev = '';
        continue;
      }
      if (batch.sequence !== sequence || batch.prev !== item.prev) {
        problems.push(`batch ${sequence} says it is batch ${batch.sequence} after ${batch.prev.slice(0, 12)}…, not what the page says`);
      }
      if (prev && batch.prev !== prev) {
        problems.push(`batch ${sequence} does not chain to batch ${sequence - 1} (edited, inserted or reordered)`);
      }
      for (const event of batch.events) {
        if (event.action === GAP_ACTION) {
          problems.push(`batch ${sequence} records that the log was damaged before it: ${event.reason || 'no detail'}`);
        }
        if (operationId && event.operation_id && event.operation_id !== operationId) {
          problems.push(`event ${event.id} in batch ${sequence} belongs to another operation (${event.operation_id})`);
        }
        if (ids.has(event.id)) problems.push(`event ${event.id} appears twice`);
        ids.add(event.id);
        events.push(event);
      }
      digests.set(sequence, digest);
      batches += 1;
      newest = { sequence, digest };
      prev = digest;
    }
  });
  const lastSequence = expected - 1;
  if (last) checkHead(problems, warnings, lastSequence, digests, headOf(last.head), headOf(last.anchor));
  if (remembered && Number.isSafeInteger(remembered.sequence)) {
    if (remembered.sequence > lastSequence) {
      problems.push(`the log ends at batch ${lastSequence}, but this device verified batch ${remembered.sequence} before: the log was cut`);
    } else if (digests.has(remembered.sequence) && digests.get(remembered.sequence) !== remembered.digest) {
      problems.push(`batch ${remembered.sequence} differs from the one this device verified before: the log was rewritten`);
    }
  }
  return { events, batches, newest, problems, warnings };
}

// The same rules as shared/audit_log.py `_check_head` and `_check_anchor`.
function checkHead(problems, warnings, lastSequence, digests, head, anchor) {
  if (anchor) {
    if (anchor.sequence > lastSequence && (!head || head.sequence < anchor.sequence)) {
      problems.push(`batches ${lastSequence + 1}..${anchor.sequence} named by the head kept outside S3 are missing (tail removed)`);
    } else if (digests.has(anchor.sequence) && digests.get(anchor.sequence) !== anchor.digest) {
      problems.push(`batch ${anchor.sequence} differs from the digest in the head kept outside S3`);
    }
    if (head && head.sequence < anchor.sequence) {
      problems.push(`head.json names batch ${head.sequence}, older than batch ${anchor.sequence} kept outside S3 (rolled back)`);
    }
  }
  if (!head) {
    if (lastSequence > 0) problems.push('the head is missing while batches exist');
    return;
  }
  if (head.sequence > lastSequence) {
    problems.push(`batches ${lastSequence + 1}..${head.sequence} named by the head are missing (tail removed)`);
  } else if (digests.has(head.sequence) && digests.get(head.sequence) !== head.digest) {
    problems.push(`batch ${head.sequence} differs from the digest in the head`);
  } else if (head.sequence < lastSequence) {
    warnings.push(`the head is ${lastSequence - head.sequence} batch(es) behind: an append was interrupted (the next append repairs it)`);
  }
}
