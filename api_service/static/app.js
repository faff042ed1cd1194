// The strongroom page: where a grantee starts operations, watches them run, downloads (decrypting here),
// previews, deletes and reads the access log.
//
// Flow of a download (the browser twin of the SDK's download):
//   signed GET .../artifacts/{name} (Accept: application/json) -> presigned S3 URL + checksums + wrapped key
//   -> open the key wrap (identity file: tweetnacl; wallet: eth_decrypt), bound to this op id and name
//   -> stream the ciphertext (S3 over CORS, or the API in proxy mode), hashing it and decrypting Cobblestone-256
//      chunk by chunk as it arrives -> both SHA-256 checksums must match -> only then offer the file.
// Where the browser has the File System Access API (showSaveFilePicker), the file is chosen at the click and
// each authenticated plaintext chunk is written to it as it streams; the file is committed (close) only after
// both checksums match, and aborted otherwise. Elsewhere the plaintext is assembled in memory (capped).
// A dropped connection resumes with a fresh link and a Range request. Any mismatch shows an error in the
// artifact's row and offers nothing. Secrets live only in this module's closure; nothing is logged.

import { Wallet, hexlify, toUtf8Bytes } from './vendor/ethers.min.js';
import { IntegrityError, StreamDecryptor, artifactContext, ciphertextSize } from './cobblestone.js';
import { b64encode, signRequest } from './erc8128.js';
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
  relativeTime,
  suggestedPageUrl,
} from './format.js';
import { verifyAccessLog } from './auditchain.js';
import { b64decode, openWrap, parseWrapPayload } from './keywrap.js';
import { Sha256 } from './sha256.js';
import { WalletKeyError, deriveFromProvider } from './walletkey.js';

// Without the File System Access API the page assembles a download in memory before offering it; above this,
// `strongroom client get` streams. config.json may lower it (`max_browser_bytes`), never raise it.
const MAX_BROWSER_BYTES = 512 * 1024 * 1024;
const WRITE_BATCH_BYTES = 256 * 1024; // verified plaintext is written to disk in pieces of about this size
const MAX_PREVIEW_TEXT = 256 * 1024;
const CHAIN_ID = 1;
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
const POLL_MS = 2000; // between plain GETs, when the server does not long-poll
const WAIT_S = 25; // GET ?wait=: the server answers when the status changes (docs/api.md)
const PAGE_SIZE = 10;
const RESUME_TRIES = 5; // a dropped download is resumed after 1, 2, 4 and 8 s (a phone changing networks)
const RESUME_PAUSE_MS = 1000;
const API = new URL('../api/v1/', document.baseURI);
const API_PATH = '/api/v1/'; // how the API writes its own URLs (download_url, proxy tickets)
const IMAGE_TYPES = new Set(['image/png', 'image/jpeg', 'image/gif', 'image/webp']);

const $ = (id) => document.getElementById(id);
let identity = null; // {address, label, signMessage(text), openWrap(wrap) -> payload text, encryptionPublicKey()}
let pageConfig = { storage_origins: [], delivery_mode: 'presigned' };
let agents = null; // GET /agents answer
let grant = null; // GET /grant answer
// Newest access-log batch verified on this device, per operation ({sequence, digest}): a later cut or rewrite of
// the log is caught even when it comes with a matching head. Kept in localStorage per address so a reload does not
// forget it; "Forget identity" removes it with the rest.
const logSeen = {
  key: () => `strongroom.log-seen.${identity?.address ?? ''}`,
  all() {
    try {
      const saved = JSON.parse(localStorage.getItem(this.key()) ?? '{}');
      return saved && typeof saved === 'object' && !Array.isArray(saved) ? saved : {};
    } catch {
      return {}; // unreadable or storage disabled: start from nothing, as on a new device
    }
  },
  get(operationId) {
    const seen = this.all()[operationId];
    return Number.isSafeInteger(seen?.sequence) && typeof seen?.digest === 'string' ? seen : undefined;
  },
  set(operationId, newest) {
    try {
      localStorage.setItem(this.key(), JSON.stringify({ ...this.all(), [operationId]: newest }));
    } catch {
      // storage full or disabled: the memory then lasts only as long as the check itself
    }
  },
  clear(address) {
    try {
      localStorage.removeItem(`strongroom.log-seen.${address}`);
    } catch {
      // nothing stored
    }
  },
};
let current = null; // the operation on screen
let pollTimer = null;
let pollAbort = null; // the long poll in flight, aborted when another operation is opened
let elapsedTimer = null;
let listCursor = null;
const downloads = new Map(); // artifact name -> {controller}
const savedUrls = new Map(); // artifact name -> object URL of the last decrypted copy
let previewUrl = null;

// --- errors, placed where they happen ---

class ApiError extends Error {
  constructor(message, { code = '', status = 0 } = {}) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

function messageOf(error) {
  const text = error?.message || String(error);
  const sentence = text.charAt(0).toUpperCase() + text.slice(1);
  return error instanceof IntegrityError ? `Integrity check failed — nothing was saved. ${sentence}` : sentence;
}

/** Show `error` in the box next to what caused it and move focus there, so it is seen and read. */
function showError(boxId, error) {
  const box = $(boxId);
  box.textContent = messageOf(error);
  box.hidden = false;
  box.focus();
  announce('');
}

function clearError(boxId) {
  $(boxId).hidden = true;
  $(boxId).textContent = '';
}

function announce(text) {
  $('notice').textContent = text;
}

/** Run a UI action, turning any failure into the given error box (never the console: messages may name files). */
function action(boxId, fn) {
  return async (event) => {
    clearError(boxId);
    try {
      await fn(event);
    } catch (error) {
      showError(boxId, error);
    }
  };
}

// --- identities ---

/** An identity file from `strongroom client keygen` (format version 1). */
function identityFromFile(doc) {
  if (!doc || doc.version !== 1 || typeof doc.signing_key !== 'string') {
    throw new Error('this is not a strongroom identity file (version 1)');
  }
  let wallet;
  try {
    wallet = new Wallet(doc.signing_key);
  } catch {
    // ethers' message quotes the value it could not parse: never let the key reach the page.
    throw new Error('the identity file has a malformed signing key');
  }
  const address = wallet.address.toLowerCase();
  if (doc.address && String(doc.address).toLowerCase() !== address) {
    throw new Error('the identity file is inconsistent: its address does not match its signing key');
  }
  const secret = b64decode(doc.encryption_secret_key);
  if (secret.length !== 32) throw new Error('the identity file has a malformed encryption key');
  const publicKey = b64encode(globalThis.nacl.box.keyPair.fromSecretKey(secret).publicKey);
  if (doc.encryption_public_key && publicKey !== doc.encryption_public_key) {
    throw new Error('the identity file is inconsistent: its public encryption key does not match its secret');
  }
  return {
    address,
    label: 'identity file',
    signMessage: (text) => wallet.signMessage(text),
    openWrap: async (wrap) => openWrap(secret, wrap),
    encryptionPublicKey: async () => publicKey,
  };
}

/**
 * An EIP-1193 wallet (MetaMask): personal_sign for requests; the encryption key is derived from a wallet
 * signature over strongroom's key message (walletkey.js, docs/encryption.md section 4), so the same wallet
 * re-derives it on any device and the CLI/SDK derive the same key. A wrap made for the wallet's older
 * `eth_getEncryptionPublicKey` key is still opened with `eth_decrypt` where the wallet offers it.
 */
async function identityFromWallet(ethereum) {
  const [account] = await ethereum.request({ method: 'eth_requestAccounts' });
  if (!account) throw new Error('the wallet shared no account');
  const address = account.toLowerCase();
  announce('Asking the wallet to sign strongroom\'s key message (twice: the same signature must come back).');
  let key;
  try {
    key = await deriveFromProvider(ethereum, { address: account, chainId: CHAIN_ID });
  } catch (error) {
    // The wallet's own wording may quote what it signed; say what happened in ours.
    if (error instanceof WalletKeyError) throw new Error(error.message);
    throw new Error('the wallet did not sign the key message, so no encryption key was derived');
  }
  if (key.address.toLowerCase() !== address) throw new Error('the wallet signed with another account');
  return {
    address,
    label: 'browser wallet, key derived from its signature',
    signMessage: (text) => ethereum.request({ method: 'personal_sign', params: [hexlify(toUtf8Bytes(text)), address] }),
    openWrap: async (wrap) => {
      try {
        return openWrap(key.secretKey, wrap);
      } catch (derivedFailed) {
        try {
          return await ethereum.request({ method: 'eth_decrypt', params: [hexlify(toUtf8Bytes(JSON.stringify(wrap))), address] });
        } catch {
          throw derivedFailed; // neither key opens it: say so in the page's words
        }
      }
    },
    encryptionPublicKey: async () => key.publicKey,
    forget: () => key.secretKey.fill(0),
  };
}

async function loadIdentityFile(file) {
  if (!file) return;
  let doc;
  try {
    doc = JSON.parse(await file.text());
  } catch {
    throw new Error('the identity file is not JSON');
  }
  await useIdentity(identityFromFile(doc));
}

async function useIdentity(next) {
  identity?.forget?.(); // a wallet-derived secret is zeroed when its identity goes
  identity = next;
  const loaded = identity !== null;
  $('identity-status').textContent = loaded ? `Signed in as ${identity.address} (${identity.label}).` : 'No identity loaded.';
  $('identity-forget').hidden = !loaded;
  $('start').hidden = !loaded;
  $('operations').hidden = !loaded;
  if (!loaded) {
    showOperation(null);
    $('operation').hidden = true;
    $('op-table').tBodies[0].replaceChildren();
    $('grant').hidden = true;
    grant = null;
    return;
  }
  announce(`Signed in as ${identity.address}.`);
  $('start-submit').disabled = true; // until the agents and the grant are known (describeAgent decides)
  const tasks = [
    action('start-error', async () => {
      await Promise.all([loadAgents(), action('grant-error', loadGrant)()]);
      describeAgent();
    })(),
    action('list-error', () => listOperations(false))(),
  ];
  const deepLink = operationFromHash(location.hash);
  if (deepLink) tasks.push(action('op-error', () => openOperation(deepLink))());
  await Promise.all(tasks);
}

// --- signed API calls ---

async function api(method, path, { accept = 'application/json', body = null, headers = {}, signal } = {}) {
  if (!identity) throw new ApiError('load an identity first');
  const url = new URL(path, API);
  const bytes = body === null ? new Uint8Array(0) : new TextEncoder().encode(JSON.stringify(body));
  const signed = await signRequest(identity, method, url.href, bytes, { chainId: CHAIN_ID });
  const all = { ...signed, ...headers, Accept: accept };
  if (body !== null) all['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(url.href, {
      method,
      headers: all,
      body: body === null ? undefined : bytes,
      credentials: 'same-origin',
      cache: 'no-store',
      redirect: 'manual',
      signal,
    });
  } catch (error) {
    if (error?.name === 'AbortError') throw error;
    throw new ApiError(`cannot reach the strongroom API at ${url.origin}: is the server running? (check your connection)`, { code: 'unreachable' });
  }
  if (!response.ok) throw await apiError(response);
  return response;
}

async function apiError(response) {
  let problem = null;
  try {
    problem = await response.json();
  } catch {
    /* not problem+json: the status is all we have */
  }
  return new ApiError(problemMessage(problem, response.status), { code: problem?.code ?? '', status: response.status });
}

const opPath = (id) => `operations/${encodeURIComponent(id)}`;
const artifactPath = (id, name) => `${opPath(id)}/artifacts/${encodeURIComponent(name)}`;

// --- page configuration: which origins storage lets download ---

async function loadConfig() {
  try {
    const response = await fetch(new URL('config.json', document.baseURI), { cache: 'no-store' });
    if (response.ok) pageConfig = await response.json();
  } catch {
    showError('identity-error', new Error(`cannot reach the strongroom server at ${location.origin}: is it running?`));
    return;
  }
  const allowed = pageConfig.storage_origins ?? [];
  if (pageConfig.delivery_mode === 'presigned' && allowed.length && !originAllowed(location.origin, allowed)) {
    const warning = $('origin-warning');
    const target = suggestedPageUrl(location.href, allowed);
    warning.replaceChildren(`This page was opened at ${location.origin}, but storage only sends downloads to pages at ${allowed.join(', ')}. `);
    if (target) {
      const link = el('a', `Open ${target}`);
      link.href = target;
      warning.append(link);
    }
    warning.hidden = false;
  }
}

function wrongOrigin() {
  const allowed = pageConfig.storage_origins ?? [];
  return pageConfig.delivery_mode === 'presigned' && allowed.length > 0 && !originAllowed(location.origin, allowed);
}

// --- agents and starting an operation ---

async function loadAgents() {
  agents = await (await api('GET', 'agents')).json();
  const select = $('start-agent');
  select.replaceChildren(...agents.agents.map((agent) => {
    const option = el('option', agent.name);
    option.value = agent.name;
    return option;
  }));
  const retention = $('start-retention');
  retention.max = String(agents.limits.max_retention_days);
  retention.value = String(agents.limits.max_retention_days);
}

// --- the grant: what this identity may run here, until when, and how much of each quota is used ---

async function loadGrant() {
  grant = await (await api('GET', 'grant')).json();
  const words = describeGrant(grant);
  $('grant-status').textContent = words.sentence;
  $('grant-status').className = words.canStart ? 'status' : 'notice';
  $('grant-facts').replaceChildren(...words.facts.flatMap(([term, text]) => [el('dt', term), el('dd', text)]));
  $('grant-facts').hidden = words.facts.length === 0;
  $('grant').hidden = false;
}

/** Agents the grant lets this identity start (all of them when the grant is unknown: the server decides). */
function grantedAgents() {
  const all = agents?.agents ?? [];
  if (!grant || grant.status !== 'active' || grant.agents.includes('*')) return all;
  return all.filter((agent) => grant.agents.includes(agent.name));
}

function selectedAgent() {
  return agents?.agents.find((agent) => agent.name === $('start-agent').value) ?? null;
}

function describeAgent() {
  if (!agents) return;
  const select = $('start-agent');
  const allowed = grantedAgents();
  if (select.options.length !== allowed.length) {
    select.replaceChildren(...allowed.map((agent) => {
      const option = el('option', agent.name);
      option.value = agent.name;
      return option;
    }));
  }
  const blocked = grant && grant.status !== 'active' ? describeGrant(grant).sentence : allowed.length ? '' : 'Your grant lists no agent this server runs.';
  $('start-blocked').textContent = blocked;
  $('start-blocked').hidden = !blocked;
  $('start-submit').disabled = Boolean(blocked);
  const maxDays = Math.min(agents.limits.max_retention_days, grant?.max_retention_days ?? Infinity);
  const retention = $('start-retention');
  retention.max = String(maxDays);
  if (Number(retention.value) > maxDays) retention.value = String(maxDays);
  const agent = selectedAgent();
  if (!agent) return;
  const props = agent.input_schema?.properties ?? {};
  $('start-agent-description').textContent = agent.description;
  $('start-text-field').hidden = !('text' in props || 'prompt' in props);
  $('start-files-field').hidden = !('files' in props);
  $('start-text').previousElementSibling.textContent = 'prompt' in props ? 'Prompt' : 'Text';
  $('start-size').textContent = `Input limit: ${formatSize(agents.limits.max_input_bytes)} (files count a third more, as base64).`;
}

async function startOperation() {
  const agent = selectedAgent();
  if (!agent) throw new Error('choose an agent');
  const props = agent.input_schema?.properties ?? {};
  const input = {};
  const text = $('start-text').value;
  if (text) input['prompt' in props ? 'prompt' : 'text'] = text;
  const files = [...$('start-files').files];
  if (files.length) {
    input.files = {};
    for (const file of files) input.files[file.name] = b64encode(new Uint8Array(await file.arrayBuffer()));
  }
  if (!text && !files.length) throw new Error('give the agent some text or files');
  const days = Number($('start-retention').value);
  const max = Number($('start-retention').max);
  if (!Number.isInteger(days) || days < 1 || days > max) throw new Error(`keep results for 1 to ${max} days`);
  const body = { agent: agent.name, input, encryption_public_key: await identity.encryptionPublicKey(), retention_days: days };
  const size = new TextEncoder().encode(JSON.stringify(body)).length;
  if (size > agents.limits.max_input_bytes) {
    throw new Error(`the input is ${formatSize(size)}; this server accepts at most ${formatSize(agents.limits.max_input_bytes)}`);
  }
  const button = $('start-submit');
  button.disabled = true;
  try {
    const created = await (await api('POST', 'operations', { body })).json();
    $('start-text').value = '';
    $('start-files').value = '';
    announce(`Operation ${created.id} started.`);
    await openOperation(created.id, { focus: true });
    listOperations(false).catch((error) => showError('list-error', error));
    loadGrant().catch((error) => showError('grant-error', error));
  } finally {
    button.disabled = false;
  }
}

// --- the operations list ---

async function listOperations(more) {
  const status = $('list-status').value;
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (status) query.set('status', status);
  if (more && listCursor) query.set('cursor', listCursor);
  const { operations, next_cursor: next } = await (await api('GET', `operations?${query}`)).json();
  const body = $('op-table').tBodies[0];
  if (!more) body.replaceChildren();
  for (const op of operations) body.append(operationRow(op));
  listCursor = next;
  $('list-more').hidden = !next;
  $('list-empty').hidden = body.rows.length > 0;
  $('op-table').hidden = body.rows.length === 0;
}

function operationRow(op) {
  const open = el('button', op.id);
  open.type = 'button';
  open.className = 'link';
  open.dataset.op = op.id;
  open.setAttribute('aria-label', `Open operation ${op.id}`);
  const artifacts = TERMINAL.has(op.status)
    ? `${op.artifacts.count} (${formatSize(op.artifacts.total_size)})`
    : 'after it finishes';
  const created = el('time', localTime(op.created_at));
  created.dateTime = op.created_at;
  return el('tr',
    cell('Operation', open),
    cell('Status', badge(op.status)),
    cell('Created', created),
    cell('Artifacts', artifacts));
}

// --- one operation ---

async function openOperation(id, { focus = false } = {}) {
  stopPolling();
  clearError('op-error');
  $('operation').hidden = false;
  let operation;
  try {
    operation = await (await api('GET', opPath(id))).json();
  } catch (error) {
    showOperation(null); // never leave the previous operation's details under this one's error
    $('op-title').textContent = `Operation ${id}`;
    throw error;
  }
  if (current?.id !== operation.id) resetOperationPanels();
  showOperation(operation);
  if (location.hash !== `#op=${operation.id}`) history.replaceState(null, '', `#op=${operation.id}`);
  if (focus) $('op-title').focus();
  if (!TERMINAL.has(operation.status)) pollTimer = setTimeout(() => poll(id), POLL_MS);
}

async function poll(id) {
  pollTimer = null;
  if (current?.id !== id) return;
  const controller = new AbortController();
  pollAbort = controller;
  try {
    // A long poll: the answer comes when the status changes (or after WAIT_S). A server without ?wait= answers
    // at once without X-Wait-Applied; then the page asks again every POLL_MS.
    const response = await api('GET', `${opPath(id)}?wait=${WAIT_S}`, { signal: controller.signal });
    const operation = await response.json();
    if (current?.id !== id || controller.signal.aborted) return;
    showOperation(operation);
    const longPoll = response.headers.get('x-wait-applied') !== null;
    if (!TERMINAL.has(operation.status)) pollTimer = setTimeout(() => poll(id), longPoll ? 0 : POLL_MS);
    else {
      announce(`Operation ${id} ${operation.status}.`);
      loadGrant().catch((error) => showError('grant-error', error)); // quota usage moved
      listOperations(false).catch((error) => showError('list-error', error)); // its row still says running
    }
  } catch (error) {
    if (controller.signal.aborted) return; // another operation was opened, or the identity forgotten
    showError('op-error', error);
    pollTimer = setTimeout(() => poll(id), POLL_MS * 3); // keep watching: the API may be back soon
  } finally {
    if (pollAbort === controller) pollAbort = null;
  }
}

function stopPolling() {
  if (pollTimer !== null) clearTimeout(pollTimer);
  pollTimer = null;
  pollAbort?.abort();
  pollAbort = null;
}

function resetOperationPanels() {
  for (const { controller } of downloads.values()) controller.abort();
  downloads.clear();
  closePreview();
  $('artifacts').tBodies[0].replaceChildren();
  $('log-table').hidden = true;
  $('log-table').tBodies[0].replaceChildren();
  $('log-verdict').hidden = true;
  $('log-problems').hidden = true;
  $('log-problems').replaceChildren();
  $('log-load').textContent = 'Show access log';
  clearError('log-error');
}

function showOperation(operation) {
  current = operation;
  $('op-details').hidden = !operation;
  if (elapsedTimer !== null) clearInterval(elapsedTimer);
  elapsedTimer = null;
  if (!operation) return;
  const running = !TERMINAL.has(operation.status);
  $('op-title').textContent = `Operation ${operation.id}`;
  $('op-field-id').textContent = operation.id;
  const status = $('op-status');
  status.textContent = operation.status;
  status.className = `badge ${operation.status}`;
  setTime('op-created', operation.created_at);
  setTime('op-started', operation.started_at);
  setTime('op-finished', operation.finished_at);
  setTime('op-expires', operation.expires_at, true);
  const result = operation.result;
  $('op-result').textContent = result ? `${result.status}: ${result.summary ?? ''}` : '—';
  const logs = result?.logs ?? [];
  $('op-logs').hidden = logs.length === 0;
  $('op-logs-text').textContent = logs.join('\n');
  $('op-cancel').hidden = !running;
  $('op-running').hidden = !running;
  $('artifacts-block').hidden = running;
  const tick = () => {
    const since = Date.parse(operation.started_at ?? operation.created_at);
    $('op-elapsed').textContent = `for ${formatDuration((Date.now() - since) / 1000)}`;
  };
  $('op-elapsed').textContent = '';
  if (running) {
    tick();
    elapsedTimer = setInterval(tick, 1000);
  } else if (result) {
    $('op-elapsed').textContent = `in ${formatDuration(result.execution_time)}`;
  }
  showArtifacts(operation.artifacts?.artifacts ?? []);
}

function setTime(id, iso, relative = false) {
  const node = $(id);
  if (!iso) {
    node.textContent = '—';
    return;
  }
  const time = el('time', localTime(iso));
  time.dateTime = iso;
  node.replaceChildren(time, relative ? ` (${relativeTime(iso)})` : '');
}

/** Rows keyed by name: a row with a download in flight keeps its state when the operation is re-read. */
function showArtifacts(artifacts) {
  $('artifact-count').textContent = `(${artifacts.length})`;
  const body = $('artifacts').tBodies[0];
  const existing = new Map([...body.rows].map((row) => [row.dataset.artifact, row]));
  const rows = artifacts.map((artifact) => existing.get(artifact.name) ?? artifactRow(artifact));
  body.replaceChildren(...rows);
}

function artifactRow(artifact) {
  const { name } = artifact;
  const download = actionButton('Download', `Download ${name}`, 'download');
  const cancel = actionButton('Cancel', `Cancel download of ${name}`, 'cancel', 'secondary');
  cancel.hidden = true;
  const actions = el('div', download, cancel);
  actions.className = 'actions';
  if (previewKind(artifact.content_type, name)) actions.append(actionButton('Preview', `Preview ${name}`, 'preview', 'secondary'));
  actions.append(actionButton('Delete', `Delete ${name}`, 'delete', 'danger'));
  const progress = el('progress');
  progress.max = 100;
  progress.value = 0;
  progress.hidden = true;
  progress.setAttribute('aria-label', `Download progress of ${name}`);
  const text = el('span', 'Not downloaded');
  text.className = 'text';
  const status = cell('Status', progress, text);
  status.className = 'row-status';
  status.tabIndex = -1;
  const nameCell = cell('Name', name);
  nameCell.className = 'name';
  const row = el('tr',
    nameCell,
    cell('Size', formatSize(artifact.size)),
    cell('Type', artifact.content_type),
    status,
    cell('Actions', actions));
  row.dataset.artifact = name;
  return row;
}

function actionButton(label, accessibleName, kind, style = '') {
  const button = el('button', label);
  button.type = 'button';
  button.dataset.action = kind;
  button.setAttribute('aria-label', accessibleName);
  if (style) button.className = style;
  return button;
}

function rowOf(name) {
  return [...$('artifacts').tBodies[0].rows].find((row) => row.dataset.artifact === name) ?? null;
}

/** A row's status: plain text, optionally a tone ('ok', 'bad') and a progress value (0-100). */
function rowStatus(name, text, { tone = '', percent = null, extra = null, focus = false } = {}) {
  const row = rowOf(name);
  if (!row) return;
  const cellNode = row.querySelector('.row-status');
  const progress = cellNode.querySelector('progress');
  const span = cellNode.querySelector('.text');
  progress.hidden = percent === null;
  if (percent !== null) progress.value = percent;
  span.className = `text ${tone}`;
  span.replaceChildren(text, ...(extra ? [' ', extra] : []));
  if (focus) cellNode.focus();
}

function rowBusy(name, busy) {
  const row = rowOf(name);
  if (!row) return;
  row.querySelector('[data-action=download]').disabled = busy;
  const preview = row.querySelector('[data-action=preview]');
  if (preview) preview.disabled = busy;
  row.querySelector('[data-action=delete]').disabled = busy;
  row.querySelector('[data-action=cancel]').hidden = !busy;
}

// --- download: stream, verify, decrypt ---

async function runDownload(operationId, artifact, mode) {
  const { name } = artifact;
  if (downloads.has(name)) return;
  const picking = chooseDestination(name, mode); // first, before any await: the picker needs the click's gesture
  const controller = new AbortController();
  downloads.set(name, { controller });
  rowBusy(name, true);
  let disk = null; // {handle, writable}: the file this download streams into, until it is committed
  try {
    if (picking) {
      rowStatus(name, 'Choose where to save it…');
      let handle;
      try {
        handle = await picking;
      } catch {
        rowStatus(name, 'Not saved: no file was chosen.');
        return;
      }
      if (handle) disk = await openDestination(handle, name);
      controller.signal.throwIfAborted();
    }
    rowStatus(name, 'Requesting a download link…', { percent: 0 });
    const { plaintext, ticket } = await fetchAndDecrypt(operationId, name, controller.signal, disk?.writable);
    if (disk) {
      await committed(disk, name);
      rowStatus(name, `Saved to ${disk.handle.name}: ${formatSize(ticket.size)}, checksums verified, decrypted.`, { tone: 'ok' });
      announce(`${name} saved: checksums verified.`);
      disk = null;
    } else if (mode === 'preview') {
      rowStatus(name, `Verified and decrypted (${formatSize(plaintext.size)}); shown below.`, { tone: 'ok' });
      await showPreview(name, ticket.content_type ?? artifact.content_type, plaintext);
    } else {
      offer(name, plaintext);
    }
  } catch (error) {
    if (disk) await discard(disk); // unverified or cancelled: no file, not even a partial one, is kept
    if (controller.signal.aborted) {
      rowStatus(name, 'Cancelled. Nothing was saved.');
      announce(`Download of ${name} cancelled.`);
    } else {
      rowStatus(name, messageOf(error), { tone: 'bad', focus: true });
      announce(`Download of ${name} failed.`);
    }
  } finally {
    downloads.delete(name);
    rowBusy(name, false);
  }
}

/**
 * Where the browser can write a file as it streams (the File System Access API), ask where to save `name`.
 * Called inside the click, before anything is awaited: the picker needs the user gesture. Returns null when
 * the page will assemble in memory instead (no picker, or Preview), else a promise of the FileSystemFileHandle
 * (null when the browser refused the picker, e.g. a blocked file name: memory again), which rejects when the
 * user closed the dialog.
 */
function chooseDestination(name, mode) {
  if (mode !== 'download' || typeof globalThis.showSaveFilePicker !== 'function') return null;
  let picking;
  try {
    picking = globalThis.showSaveFilePicker({ suggestedName: name, startIn: 'downloads' });
  } catch {
    return null;
  }
  return Promise.resolve(picking).catch((error) => {
    if (error?.name === 'AbortError') throw error;
    return null;
  });
}

async function openDestination(handle, name) {
  try {
    return { handle, writable: await handle.createWritable() };
  } catch (error) {
    await discard({ handle, writable: null });
    throw new Error(`cannot write ${name} to ${handle.name}: ${error?.message || error}`);
  }
}

/** Commit a streamed file: only now does it appear under its name (until then the browser writes a swap file). */
async function committed(disk, name) {
  try {
    await disk.writable.close();
  } catch (error) {
    throw new Error(`${name} could not be saved to ${disk.handle.name}: ${error?.message || error}`);
  }
}

/** Throw a streamed file away: abort the writable (its swap file goes), then remove the empty file the picker made. */
async function discard(disk) {
  try {
    await disk.writable?.abort();
  } catch {
    /* already closed or failed */
  }
  try {
    await disk.handle.remove?.();
  } catch {
    /* the browser keeps the empty file it created when the destination was chosen */
  }
}

/** The in-memory cap: MAX_BROWSER_BYTES, or less when config.json says so. */
function memoryCap() {
  const configured = pageConfig.max_browser_bytes;
  return Number.isSafeInteger(configured) && configured >= 0 ? Math.min(configured, MAX_BROWSER_BYTES) : MAX_BROWSER_BYTES;
}

async function requestTicket(operationId, name, signal) {
  const response = await api('GET', artifactPath(operationId, name), { signal });
  const ticket = await response.json();
  if (ticket.encryption?.scheme !== 'cobblestone-256') throw new ApiError('unsupported encryption scheme');
  if (!Number.isSafeInteger(ticket.size) || ticket.size < 0) throw new ApiError('the artifact has no valid size');
  return ticket;
}

/** Open the ciphertext at `offset` (a Range request when resuming); returns the Response. */
async function openCiphertext(ticket, offset, signal) {
  const headers = offset > 0 ? { Range: `bytes=${offset}-` } : {};
  let response;
  if (typeof ticket.url === 'string' && ticket.url.startsWith(API_PATH)) {
    // Proxy delivery: a signed GET of the API's own path, relative to this page's API base.
    response = await api('GET', ticket.url.slice(API_PATH.length), { accept: 'application/octet-stream', headers, signal });
  } else {
    if (typeof ticket.url !== 'string' || !/^https?:\/\//.test(ticket.url)) throw new ApiError('the API gave no download URL');
    try {
      response = await fetch(ticket.url, { credentials: 'omit', cache: 'no-store', referrerPolicy: 'no-referrer', mode: 'cors', headers, signal });
    } catch (error) {
      if (error?.name === 'AbortError') throw error;
      if (wrongOrigin()) {
        const target = suggestedPageUrl(location.href, pageConfig.storage_origins);
        throw new ApiError(`storage does not send downloads to pages opened at ${location.origin}; open ${target} instead`);
      }
      throw new ApiError(`cannot reach storage at ${new URL(ticket.url).origin}: it is down or unreachable from this device`, { code: 'unreachable' });
    }
    if (response.status === 403) throw new ApiError('storage refused the download link (expired, or this device\'s clock is off); try again', { code: 'link_refused' });
    if (response.status >= 500) throw new ApiError(`storage is failing (HTTP ${response.status}); try again later`);
    if (!response.ok) throw new ApiError(`storage answered HTTP ${response.status}`);
  }
  if (offset > 0) {
    const range = /^bytes (\d+)-/.exec(response.headers.get('content-range') || '');
    if (response.status !== 206 || !range || Number(range[1]) !== offset) {
      throw new ApiError('the download could not resume where it stopped; start it again');
    }
  }
  return response;
}

/**
 * Stream, hash and decrypt one artifact. With `writable` (a FileSystemWritableFileStream) each authenticated
 * plaintext chunk is written to it as it streams and no size cap applies; the caller commits it only when this
 * returns (both checksums matched) and aborts it otherwise. Without, the plaintext is returned as a Blob.
 */
async function fetchAndDecrypt(operationId, name, signal, writable = null) {
  let ticket = await requestTicket(operationId, name, signal);
  if (!writable && ticket.size > memoryCap()) {
    const hint = typeof globalThis.showSaveFilePicker === 'function' ? '' : ' (a browser that can write files as they stream, such as Chrome or Edge, can)';
    throw new ApiError(`${name} is too large to decrypt in this browser's memory${hint}; use \`strongroom client get\``);
  }
  const { dataKey, sha256 } = parseWrapPayload(await identity.openWrap(ticket.encryption.wrapped_key), operationId, name);
  if (!sameHex(sha256, ticket.checksum)) {
    throw new IntegrityError(`the key wrap of ${name} names a different checksum than its metadata`);
  }
  const total = ciphertextSize(ticket.size);
  const decryptor = new StreamDecryptor(dataKey, artifactContext(operationId, name));
  const cipherHash = new Sha256();
  const plainHash = new Sha256();
  const parts = [];
  const started = performance.now();
  let received = 0;
  let streaming = false; // the current response's body is being read (a failure now is a dropped connection)
  let shown = 0;
  let trailing = null; // a timer: a read that came too soon after the last figures is shown when it is due
  const showProgress = () => {
    trailing = null;
    shown = performance.now();
    const speed = received / Math.max(0.001, (shown - started) / 1000);
    rowStatus(name, formatProgress(received, total, speed), { percent: Math.floor((received / total) * 100) });
  };
  const cancelProgress = () => {
    clearTimeout(trailing);
    trailing = null;
  };
  let unwritten = 0; // bytes at the end of `parts` not yet written to `writable`
  // Only chunks that passed their AES-GCM tag get here; with a file they are written in batches, in order.
  const take = async (chunks, last = false) => {
    for (const chunk of chunks) {
      plainHash.update(chunk);
      parts.push(chunk);
      unwritten += chunk.length;
    }
    if (writable && unwritten > 0 && (last || unwritten >= WRITE_BATCH_BYTES)) {
      const batch = new Blob(parts);
      parts.length = 0;
      unwritten = 0;
      try {
        await writable.write(batch);
      } catch (error) {
        throw new Error(`cannot write ${name} to the chosen file: ${error?.message || error}`);
      }
    }
  };
  try {
    for (let attempt = 0; ; attempt += 1) {
      try {
        streaming = false;
        if (attempt > 0) ticket = await requestTicket(operationId, name, signal); // a fresh link for the Range
        const response = await openCiphertext(ticket, received, signal);
        streaming = true;
        const length = Number(response.headers.get('content-length'));
        if (received === 0 && response.headers.get('content-length') !== null && length !== total) {
          throw new IntegrityError(`the stored object for ${name} does not have the artifact's size`);
        }
        const reader = response.body.getReader();
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          received += value.length;
          if (received > total) throw new IntegrityError(`the stored object for ${name} does not have the artifact's size`);
          cipherHash.update(value);
          await take(await decryptor.push(value));
          // At most ten updates a second, but never stale: when the stream stalls, the last bytes still show.
          const early = 100 - (performance.now() - shown);
          if (early <= 0 || received === total) {
            cancelProgress();
            showProgress();
          } else if (trailing === null) {
            trailing = setTimeout(showProgress, early);
          }
        }
        break;
      } catch (error) {
        // Once the body started, a dropped connection, an unreachable API or storage, or an expired link is worth
        // a pause and a fresh link, then a Range from here. Before that, the error is shown as it is.
        const dropped = error instanceof TypeError || ['unreachable', 'link_refused'].includes(error?.code);
        cancelProgress();
        if (signal.aborted || (received === 0 && !streaming) || !dropped || attempt + 1 >= RESUME_TRIES) throw error;
        rowStatus(name, `Connection lost at ${formatSize(received)}; resuming…`, { percent: Math.floor((received / total) * 100) });
        await pause(RESUME_PAUSE_MS * 2 ** attempt, signal);
      }
    }
    if (received !== total) throw new IntegrityError(`the stored object for ${name} does not have the artifact's size`);
    rowStatus(name, `Verifying ${name}…`, { percent: 100 });
    await take([await decryptor.finish()], true);
  } finally {
    cancelProgress();
    dataKey.fill(0);
  }
  if (!sameHex(cipherHash.hexdigest(), ticket.ciphertext_checksum)) {
    throw new IntegrityError(`ciphertext checksum mismatch for ${name}: the stored object is not this artifact`);
  }
  if (!sameHex(plainHash.hexdigest(), ticket.checksum)) {
    throw new IntegrityError(`plaintext checksum mismatch for ${name}`);
  }
  return { plaintext: writable ? null : new Blob(parts, { type: 'application/octet-stream' }), ticket };
}

function offer(name, blob) {
  const previous = savedUrls.get(name);
  if (previous) URL.revokeObjectURL(previous);
  const url = URL.createObjectURL(blob);
  savedUrls.set(name, url);
  const link = el('a', 'Save again');
  link.href = url;
  link.download = name;
  link.className = 'saved-link';
  link.setAttribute('aria-label', `Save ${name} again`);
  rowStatus(name, `Saved: ${formatSize(blob.size)}, checksums verified, decrypted.`, { tone: 'ok', extra: link });
  announce(`${name} saved: checksums verified.`);
  const save = el('a');
  save.href = url;
  save.download = name;
  save.click();
}

// --- preview (text as text, images through a blob: URL of the declared type; never HTML or SVG) ---

async function showPreview(name, contentType, blob) {
  closePreview();
  const kind = previewKind(contentType, name);
  const body = $('preview-body');
  const type = String(contentType).split(';')[0].trim().toLowerCase();
  if (kind === 'image' && IMAGE_TYPES.has(type)) {
    previewUrl = URL.createObjectURL(new Blob([blob], { type }));
    const image = el('img');
    image.src = previewUrl;
    image.alt = `Preview of ${name}`;
    body.replaceChildren(image);
  } else if (kind === 'text' || kind === 'json') {
    let text = await blob.slice(0, MAX_PREVIEW_TEXT).text();
    if (kind === 'json' && blob.size <= MAX_PREVIEW_TEXT) {
      try {
        text = JSON.stringify(JSON.parse(text), null, 2);
      } catch {
        /* shown as it is */
      }
    }
    const pre = el('pre', text);
    pre.tabIndex = 0;
    pre.setAttribute('aria-label', `Contents of ${name}`);
    body.replaceChildren(pre, blob.size > MAX_PREVIEW_TEXT ? el('p', `First ${formatSize(MAX_PREVIEW_TEXT)} shown.`) : '');
  } else {
    body.replaceChildren(el('p', 'This type is not previewed here; download it instead.'));
  }
  $('preview-title').textContent = `Preview: ${name}`;
  $('preview').hidden = false;
  $('preview-title').tabIndex = -1;
  $('preview-title').focus();
}

function closePreview() {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = null;
  $('preview-body').replaceChildren();
  $('preview').hidden = true;
}

// --- delete ---

async function deleteArtifact(operationId, name) {
  if (!globalThis.confirm(`Delete the artifact “${name}” of operation ${operationId}? This cannot be undone.`)) return;
  rowStatus(name, 'Deleting…');
  try {
    await api('DELETE', artifactPath(operationId, name));
  } catch (error) {
    rowStatus(name, messageOf(error), { tone: 'bad', focus: true });
    return;
  }
  rowOf(name)?.remove();
  if (current) {
    current.artifacts.artifacts = current.artifacts.artifacts.filter((a) => a.name !== name);
    $('artifact-count').textContent = `(${current.artifacts.artifacts.length})`;
  }
  announce(`${name} deleted.`);
  $('artifacts-title').tabIndex = -1;
  $('artifacts-title').focus();
}

// --- access log ---

// The chain is recomputed here from the batches' bytes (auditchain.js): the table shows the events decoded from
// the verified bytes, never the server's `events` list, and the verdict does not rest on its `chain_valid`.

async function loadAccessLog(operationId) {
  const pages = [];
  let cursor = null;
  $('log-load').disabled = true;
  try {
    for (let page = 0; page < 200; page += 1) {
      const query = cursor ? `?after=${encodeURIComponent(cursor)}` : '';
      const body = await (await api('GET', `${opPath(operationId)}/access-log${query}`)).json();
      pages.push(body);
      cursor = body.next_cursor;
      if (!cursor) break;
    }
  } finally {
    $('log-load').disabled = false;
  }
  if (current?.id !== operationId) return; // another operation was opened meanwhile
  if (cursor) throw new Error('the access log is too long to check in the page; use `strongroom client log`');
  const remembered = logSeen.get(operationId);
  const chain = verifyAccessLog(pages, { operationId, remembered });
  // Also shown: what the server itself reported, and whether its cursors move forward (its events are not used).
  const problems = [...chain.problems, ...checkLogPages(pages.map((page) => ({ ...page, events: [] })), operationId)];
  if (!problems.length && chain.newest) logSeen.set(operationId, chain.newest);
  const { events, batches } = chain;
  const table = $('log-table');
  table.tBodies[0].replaceChildren(...events.map((event) => {
    const time = el('time', localTime(event.time));
    time.dateTime = event.time;
    return el('tr',
      cell('Time', time),
      cell('Action', event.action),
      cell('Result', event.result),
      cell('Artifact', event.artifact ?? '—'),
      cell('Reason', event.reason ?? '—'));
  }));
  table.hidden = events.length === 0;
  const verdict = $('log-verdict');
  verdict.textContent = problems.length
    ? 'The access log does NOT verify on this device: it was changed or cut. Tell the operator. What failed:'
    : `${events.length} event${events.length === 1 ? '' : 's'} in ${batches} batch${batches === 1 ? '' : 'es'}, oldest first: hash chain verified on this device (every batch's SHA-256 recomputed here from its bytes, each linked to the one before it, the newest one the head${remembered ? ', nothing this device verified before gone or changed' : ''}).${chain.warnings.length ? ` Note: ${chain.warnings.join('; ')}.` : ''}`;
  verdict.className = problems.length ? 'error' : 'status';
  verdict.hidden = false;
  $('log-problems').replaceChildren(...problems.map((problem) => el('li', problem)));
  $('log-problems').hidden = problems.length === 0;
  announce(problems.length ? 'The access log does not verify.' : 'Access log verified on this device.');
  $('log-load').textContent = 'Reload access log';
}

// --- helpers ---

/** Wait `ms`, or reject at once when `signal` aborts (a cancelled download does not sit out its pause). */
function pause(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      reject(new DOMException('cancelled', 'AbortError'));
    }, { once: true });
  });
}

/** Compare two `sha256:<hex>` / `<hex>` values without an early exit. */
function sameHex(a, b) {
  const x = String(a).replace(/^sha256:/, '').toLowerCase();
  const y = String(b).replace(/^sha256:/, '').toLowerCase();
  if (x.length !== 64 || y.length !== 64) return false;
  let diff = 0;
  for (let i = 0; i < 64; i += 1) diff |= x.charCodeAt(i) ^ y.charCodeAt(i);
  return diff === 0;
}

function el(tag, ...children) {
  const node = document.createElement(tag);
  node.append(...children.map((c) => (c instanceof Node ? c : String(c ?? ''))));
  return node;
}

function cell(label, ...children) {
  const node = el('td', ...children);
  node.dataset.label = label;
  return node;
}

function badge(status) {
  const node = el('span', status);
  node.className = `badge ${status}`;
  return node;
}

// --- wiring ---

$('identity-pick').addEventListener('click', () => $('identity-file').click());
$('identity-file').addEventListener(
  'change',
  action('identity-error', async (event) => {
    const [file] = event.target.files;
    event.target.value = ''; // the file input must not keep a handle on the secret file
    await loadIdentityFile(file);
  }),
);
const drop = $('identity-drop');
drop.addEventListener('dragover', (event) => {
  event.preventDefault();
  drop.classList.add('over');
});
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener(
  'drop',
  action('identity-error', async (event) => {
    event.preventDefault();
    drop.classList.remove('over');
    await loadIdentityFile(event.dataTransfer?.files?.[0]);
  }),
);

if (globalThis.ethereum?.request) {
  $('wallet-connect').hidden = false;
  $('wallet-connect').addEventListener(
    'click',
    action('identity-error', async () => useIdentity(await identityFromWallet(globalThis.ethereum))),
  );
}

$('identity-forget').addEventListener('click', () => {
  stopPolling();
  if (identity) logSeen.clear(identity.address);
  useIdentity(null);
  for (const url of savedUrls.values()) URL.revokeObjectURL(url); // decrypted files go with the identity
  savedUrls.clear();
  closePreview();
});

$('start-agent').addEventListener('change', describeAgent);
$('start-form').addEventListener(
  'submit',
  action('start-error', async (event) => {
    event.preventDefault();
    await startOperation();
  }),
);

$('op-form').addEventListener(
  'submit',
  action('op-error', async (event) => {
    event.preventDefault();
    const id = $('op-id').value.trim();
    if (id) await openOperation(id, { focus: true });
  }),
);

$('list-refresh').addEventListener('click', action('list-error', () => listOperations(false)));
$('list-status').addEventListener('change', action('list-error', () => listOperations(false)));
$('list-more').addEventListener('click', action('list-error', () => listOperations(true)));
$('op-table').addEventListener(
  'click',
  action('op-error', async (event) => {
    const id = event.target?.closest?.('button')?.dataset?.op;
    if (!id) return;
    $('op-id').value = id;
    await openOperation(id, { focus: true });
  }),
);

$('op-cancel').addEventListener(
  'click',
  action('op-error', async () => {
    if (!current) return;
    await api('POST', `${opPath(current.id)}/cancel`);
    announce('Cancellation requested.');
    await openOperation(current.id);
  }),
);

$('artifacts').addEventListener('click', (event) => {
  const button = event.target?.closest?.('button');
  const row = button?.closest('tr');
  if (!button || !row || !current) return;
  const name = row.dataset.artifact;
  const artifact = current.artifacts.artifacts.find((a) => a.name === name);
  if (!artifact) return;
  const kind = button.dataset.action;
  if (kind === 'download' || kind === 'preview') runDownload(current.id, artifact, kind);
  else if (kind === 'cancel') downloads.get(name)?.controller.abort();
  else if (kind === 'delete') deleteArtifact(current.id, name);
});

$('preview-close').addEventListener('click', closePreview);
$('log-load').addEventListener(
  'click',
  action('log-error', async () => {
    if (current) await loadAccessLog(current.id);
  }),
);

window.addEventListener(
  'hashchange',
  action('op-error', async () => {
    const id = operationFromHash(location.hash);
    if (id && identity && current?.id !== id) await openOperation(id);
  }),
);

await loadConfig();
document.body.dataset.ready = 'true';
