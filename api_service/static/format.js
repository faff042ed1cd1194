// Words and numbers for the page: sizes, speeds, local times, and plain-language messages for problem codes.
// Pure functions (no DOM), so they are unit-tested under Node (tests/js/format.test.mjs).

export function formatSize(n) {
  if (!Number.isFinite(n) || n < 0) return '';
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1073741824) return `${(n / 1048576).toFixed(1)} MiB`;
  return `${(n / 1073741824).toFixed(2)} GiB`;
}

export function formatSpeed(bytesPerSecond) {
  if (!Number.isFinite(bytesPerSecond) || bytesPerSecond <= 0) return '';
  return `${formatSize(Math.round(bytesPerSecond))}/s`;
}

/** "3.2 MiB of 20.0 MiB (16%), 1.4 MiB/s" */
export function formatProgress(done, total, bytesPerSecond) {
  const percent = total > 0 ? Math.min(100, Math.floor((done / total) * 100)) : 0;
  const speed = formatSpeed(bytesPerSecond);
  return `${formatSize(done)} of ${formatSize(total)} (${percent}%)${speed ? `, ${speed}` : ''}`;
}

/** A timestamp in the reader's own time zone and locale; '' for nothing, the raw text for an unparsable one. */
export function localTime(iso, { locale, timeZone } = {}) {
  if (!iso) return '';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return date.toLocaleString(locale, { dateStyle: 'medium', timeStyle: 'short', timeZone });
}

const UNITS = [
  ['day', 86400],
  ['hour', 3600],
  ['minute', 60],
  ['second', 1],
];

/** "in 6 days", "3 hours ago", "now": the largest whole unit, in English. */
export function relativeTime(iso, now = Date.now()) {
  const then = new Date(iso).getTime();
  if (Number.isNaN(then)) return '';
  const seconds = Math.round((then - now) / 1000);
  const size = Math.abs(seconds);
  if (size < 5) return 'now';
  for (const [unit, length] of UNITS) {
    if (size >= length) {
      const count = Math.floor(size / length);
      const words = `${count} ${unit}${count === 1 ? '' : 's'}`;
      return seconds > 0 ? `in ${words}` : `${words} ago`;
    }
  }
  return 'now';
}

/** "1 min 05 s": elapsed time of a running operation. */
export function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return '';
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, '0')} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} min`;
}

// Every problem code the API can answer, in words a grantee can act on. `detail` from the server is appended
// for the validation codes, where it names what was wrong.
const MESSAGES = {
  not_grantee: 'This operation belongs to another identity: the one loaded here is not its grantee. Load the identity that started it.',
  operation_not_found: 'There is no operation with this id on this server. Check the id (it looks like privacy-audit_…).',
  operation_id_invalid: 'That is not an operation id (it looks like privacy-audit_…).',
  artifact_not_found: 'This artifact no longer exists (deleted, or its operation expired).',
  expired: 'This operation has expired: its retention period is over and its artifacts were deleted.',
  not_found: 'Not found on this server.',
  operation_finished: 'The operation has already finished; there is nothing to cancel.',
  signature_missing: 'The request was not signed. Load an identity and try again.',
  signature_malformed: 'The request signature was malformed. Reload the page and try again.',
  signature_invalid: 'The server did not accept the signature. Reload the identity and try again.',
  signature_expired: "The request signature expired before it arrived. Check this device's clock.",
  nonce_replayed: 'The server saw this request before (a replay); try again.',
  authority_not_allowed: 'The server does not accept requests addressed to this host name. Open the page at the address the operator published.',
  chain_not_allowed: 'The server does not accept signatures for this chain id.',
  contract_wallet_unsupported: 'Smart-contract wallets cannot sign for this server; use an ordinary account.',
  rate_limited: 'Too many requests. Wait a minute and try again.',
  agent_unknown: 'This server does not run that agent.',
  input_invalid: 'The input is not valid',
  input_too_large: 'The input is larger than this server accepts. Send smaller files or less text.',
  body_invalid: 'The request was not valid',
  encryption_public_key_invalid: 'The identity has an invalid encryption key.',
  retention_days_invalid: 'The retention period is outside what this server allows',
  limit_invalid: 'The page size is not valid.',
  cursor_invalid: 'The list position is no longer valid; start again from the first page.',
  status_invalid: 'Unknown status filter.',
  redis_unavailable: 'The server cannot reach its database right now (Redis). Try again in a minute.',
  nonce_store_unavailable: 'The server cannot check signatures right now (its database is down). Try again in a minute.',
  audit_unavailable: 'The server cannot record accesses right now, so it refuses them (the audit log is down). Try again later.',
  audit_log_busy: 'The access log is being written; try again in a moment.',
  queue_unavailable: 'The server cannot queue work right now; the operation was not started.',
  storage_error: 'The server cannot reach its storage (S3) right now. Try again later.',
  bucket_missing: 'The server storage is not set up (bucket missing). Tell the operator.',
  credentials_missing: 'The server has no storage credentials. Tell the operator.',
  range_not_satisfiable: 'The download could not resume at that position; start it again.',
  no_grant: 'This identity has no grant on this server, so it may not start operations here. Ask the operator to grant its address.',
  agent_not_granted: 'Your grant does not include this agent. Choose another one, or ask the operator to add it.',
  grant_expired: 'Your grant on this server has ended. Ask the operator to renew it.',
  grant_revoked: 'Your grant on this server was withdrawn, so its operations can no longer be opened here.',
  quota_exceeded: 'You have used up a quota of your grant',
  internal_error: 'The server failed unexpectedly',
  unavailable: 'A service the server needs is unavailable. Try again later.',
};

const WITH_DETAIL = new Set(['input_invalid', 'body_invalid', 'retention_days_invalid', 'internal_error', 'quota_exceeded']);

/** A sentence for a problem+json answer (or just a status when the body was not one). */
export function problemMessage(problem, status) {
  const code = problem && typeof problem.code === 'string' ? problem.code : '';
  const known = MESSAGES[code];
  if (known) {
    const detail = WITH_DETAIL.has(code) && problem.detail ? `: ${problem.detail}` : '.';
    return known.endsWith('.') ? known : known + detail;
  }
  if (status === 503) return 'A service the server needs is unavailable. Try again in a minute.';
  if (status >= 500) return `The server failed (HTTP ${status}). Try again later.`;
  const detail = problem && typeof problem.detail === 'string' && problem.detail ? problem.detail : `HTTP ${status}`;
  return `The server refused the request: ${detail}${code ? ` (${code})` : ''}.`;
}

/** Is `origin` one of `allowed`? Compared as URL origins (case, default ports). */
export function originAllowed(origin, allowed) {
  const norm = (value) => {
    try {
      return new URL(value).origin;
    } catch {
      return null;
    }
  };
  const mine = norm(origin);
  return allowed.some((candidate) => norm(candidate) === mine);
}

/**
 * When storage only allows other origins: the address to open instead, keeping path and hash. Prefers the allowed
 * origin that differs from ours only by host name (localhost vs 127.0.0.1), then the first one.
 */
export function suggestedPageUrl(location, allowed) {
  const here = new URL(location);
  const origins = allowed.map((o) => {
    try {
      return new URL(o);
    } catch {
      return null;
    }
  }).filter(Boolean);
  if (!origins.length) return null;
  const sameShape = origins.find((o) => o.protocol === here.protocol && o.port === here.port);
  const target = sameShape || origins[0];
  return `${target.origin}${here.pathname}${here.search}${here.hash}`;
}

/** `#op=<id>` deep links: the id in a hash, or null. */
export function operationFromHash(hash) {
  const params = new URLSearchParams(String(hash || '').replace(/^#/, ''));
  const id = params.get('op');
  return id && /^[a-z0-9][a-z0-9-]{0,47}_[a-z2-7]{26}$/.test(id) ? id : null;
}

/** Content types the page previews (as text or as an image); never HTML or SVG. */
export function previewKind(contentType, name = '') {
  const type = String(contentType || '').split(';')[0].trim().toLowerCase();
  if (['image/png', 'image/jpeg', 'image/gif', 'image/webp'].includes(type)) return 'image';
  if (type === 'image/svg+xml' || type === 'text/html' || type === 'application/xhtml+xml') return null;
  if (type.startsWith('text/') || type === 'application/json' || /\.(md|txt|csv|json|log)$/i.test(name)) {
    return type === 'application/json' || /\.json$/i.test(name) ? 'json' : 'text';
  }
  return null;
}

/** "2 of 5", or "2 (no limit)" when the quota is absent. */
export function quotaText(used, limit, format = String) {
  const shown = used === null || used === undefined ? '—' : format(used);
  return limit === null || limit === undefined ? `${shown} (no limit)` : `${shown} of ${format(limit)}`;
}

/**
 * What `GET /api/v1/grant` says, in words: `{sentence, canStart, facts: [[term, text], ...]}`.
 * `now` is injectable for the tests; times are local.
 */
export function describeGrant(view, now = Date.now(), { locale, timeZone } = {}) {
  if (!view || view.status === 'none') {
    return {
      sentence: `This server has not granted ${view?.address ?? 'this identity'} anything: it cannot start operations here. Ask the operator to add this address to the grants.`,
      canStart: false,
      facts: [],
    };
  }
  const until = view.expires_at
    ? `${localTime(view.expires_at, { locale, timeZone })} (${relativeTime(view.expires_at, now)})`
    : 'no end date';
  if (view.status === 'expired') {
    return {
      sentence: `Your grant ended ${localTime(view.expires_at, { locale, timeZone })} (${relativeTime(view.expires_at, now)}): you cannot start or open operations until the operator renews it.`,
      canStart: false,
      facts: [['Ended', until]],
    };
  }
  const agents = view.agents.includes('*') ? 'every agent' : view.agents.join(', ') || 'none';
  const usage = view.usage ?? {};
  const quotas = view.quotas ?? {};
  const facts = [
    ['Agents', agents],
    ['Until', until],
    ['Keep results', view.max_retention_days ? `up to ${view.max_retention_days} days` : 'as long as the server allows'],
    ['Running', quotaText(usage.concurrent_operations, quotas.concurrent_operations)],
    ['Last hour', quotaText(usage.operations_last_hour, quotas.operations_per_hour)],
    ['Stored', quotaText(usage.stored_bytes, quotas.stored_bytes, formatSize)],
  ];
  const open = view.source === 'open';
  return {
    sentence: open ? 'This server is open: any identity may run every agent, without quotas.' : `You may run ${agents}${view.expires_at ? ` until ${until}` : ''}.`,
    canStart: view.agents.length > 0,
    facts: open ? facts.slice(0, 2) : facts,
  };
}

/**
 * The page's own checks of access-log pages (on top of the server's `chain_valid`): every page continues after
 * the previous cursor, every event belongs to this operation and appears once, and every event this page saw
 * earlier for the operation is still there, in the same place (a log that shrank or was rewritten since).
 * Returns a list of problems in words (empty: all checks hold).
 */
export function checkLogPages(pages, operationId, seenBefore = []) {
  const problems = [];
  const ids = [];
  let cursor = 0;
  pages.forEach((page, index) => {
    if (page.chain_valid !== true) {
      const said = Array.isArray(page.problems) && page.problems.length ? page.problems : ['the server reports a broken chain'];
      problems.push(...said.map((p) => `server: ${p}`));
    }
    const next = page.next_cursor === null || page.next_cursor === undefined ? null : Number(page.next_cursor);
    if (next !== null && !(Number.isSafeInteger(next) && next > cursor)) {
      problems.push(`page ${index + 1} does not move forward in the log`);
    }
    if (next !== null) cursor = next;
    for (const event of page.events ?? []) {
      if (event.operation_id && event.operation_id !== operationId) {
        problems.push(`event ${event.id} belongs to another operation (${event.operation_id})`);
      }
      ids.push(event.id);
    }
  });
  if (new Set(ids).size !== ids.length) problems.push('an event appears twice');
  const missing = seenBefore.filter((id, i) => ids[i] !== id);
  if (missing.length) {
    problems.push(`${missing.length} event${missing.length === 1 ? '' : 's'} this page showed earlier ${missing.length === 1 ? 'is' : 'are'} gone or moved: the log was cut or rewritten`);
  }
  return problems;
}
