// The strongroom page: a grantee reads their operations and downloads artifacts, decrypting them here.
//
// Flow of a download (the browser twin of strongroom/client/download.py):
//   signed GET .../artifacts/{name} (Accept: application/json) -> presigned S3 URL + checksums + wrapped key
//   -> fetch the ciphertext from S3 (CORS) -> SHA-256 must equal ciphertext_checksum
//   -> open the key wrap (identity file: tweetnacl; wallet: eth_decrypt), bound to this op id and name
//   -> Cobblestone-256 decrypt chunk by chunk -> SHA-256 must equal checksum -> offer the file.
// Any mismatch shows an error and offers nothing. Secrets live only in this module's closure; nothing is logged.

import { Wallet, hexlify, toUtf8Bytes } from './vendor/ethers.min.js';
import { IntegrityError, artifactContext, ciphertextSize, decryptBlob } from './cobblestone.js';
import { signRequest } from './erc8128.js';
import { b64decode, openWrap, parseWrapPayload } from './keywrap.js';

// Above this the page refuses (WebCrypto digests are one-shot, so the page holds the artifact in memory twice);
// the CLI streams any size: `strongroom client get`.
const MAX_BROWSER_BYTES = 512 * 1024 * 1024;
const CHAIN_ID = 1;
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
const POLL_MS = 3000;
const API = new URL('../api/v1/', document.baseURI);
const API_PATH = '/api/v1/'; // how the API writes its own URLs (download_url, proxy tickets)

const $ = (id) => document.getElementById(id);
let identity = null; // {address, label, signMessage(text), openWrap(wrap) -> payload text}
let current = null; // the operation on screen
let pollTimer = null;
let lastObjectUrl = null;

// --- identities ---

/** An identity file from `strongroom client keygen` (strongroom/client/identity.py, format version 1). */
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
  const publicKey = globalThis.nacl.box.keyPair.fromSecretKey(secret).publicKey;
  if (doc.encryption_public_key && b64(publicKey) !== doc.encryption_public_key) {
    throw new Error('the identity file is inconsistent: its public encryption key does not match its secret');
  }
  return {
    address,
    label: 'identity file',
    signMessage: (text) => wallet.signMessage(text),
    openWrap: async (wrap) => openWrap(secret, wrap),
  };
}

/** An EIP-1193 wallet (MetaMask): personal_sign for requests, eth_decrypt for key wraps. */
async function identityFromWallet(ethereum) {
  const [account] = await ethereum.request({ method: 'eth_requestAccounts' });
  if (!account) throw new Error('the wallet shared no account');
  const address = account.toLowerCase();
  return {
    address,
    label: 'browser wallet',
    signMessage: (text) => ethereum.request({ method: 'personal_sign', params: [hexlify(toUtf8Bytes(text)), address] }),
    openWrap: (wrap) => ethereum.request({ method: 'eth_decrypt', params: [hexlify(toUtf8Bytes(JSON.stringify(wrap))), address] }),
  };
}

function useIdentity(next) {
  identity = next;
  const loaded = identity !== null;
  $('identity-status').textContent = loaded ? `Signed in as ${identity.address} (${identity.label}).` : 'No identity loaded.';
  $('identity-forget').hidden = !loaded;
  $('op-open').disabled = !loaded;
  $('list-refresh').disabled = !loaded;
  if (!loaded) showOperation(null);
}

// --- signed API calls ---

class ApiError extends Error {}

async function api(method, path, { accept = 'application/json' } = {}) {
  if (!identity) throw new ApiError('load an identity first');
  const url = new URL(path, API);
  const headers = await signRequest(identity, method, url.href, new Uint8Array(0), { chainId: CHAIN_ID });
  let response;
  try {
    response = await fetch(url.href, {
      method,
      headers: { ...headers, Accept: accept },
      credentials: 'same-origin',
      cache: 'no-store',
      redirect: 'manual',
    });
  } catch {
    throw new ApiError('cannot reach the strongroom API');
  }
  if (!response.ok) throw await apiError(response);
  return response;
}

async function apiError(response) {
  let detail = `HTTP ${response.status}`;
  try {
    const problem = await response.json();
    detail = `${problem.title || 'Error'}: ${problem.detail || ''} (${problem.code || response.status})`;
  } catch {
    /* not problem+json: the status line is all we have */
  }
  return new ApiError(detail);
}

const opPath = (id) => `operations/${encodeURIComponent(id)}`;
const artifactPath = (id, name) => `${opPath(id)}/artifacts/${encodeURIComponent(name)}`;

// --- operations ---

async function openOperation(id) {
  clearMessages();
  stopPolling();
  const operation = await (await api('GET', opPath(id))).json();
  showOperation(operation);
  if (!TERMINAL.has(operation.status)) pollTimer = setTimeout(() => refresh(id), POLL_MS);
}

async function refresh(id) {
  pollTimer = null;
  if (current?.id !== id) return;
  try {
    await openOperation(id);
  } catch (error) {
    showError(error);
  }
}

function stopPolling() {
  if (pollTimer !== null) clearTimeout(pollTimer);
  pollTimer = null;
}

async function listOperations() {
  clearMessages();
  const { operations } = await (await api('GET', 'operations?limit=20')).json();
  const list = $('op-list');
  list.replaceChildren();
  if (!operations.length) list.append(el('li', 'No operations yet.'));
  for (const row of operations) {
    const button = el('button', row.id);
    button.type = 'button';
    button.className = 'link';
    button.dataset.op = row.id;
    list.append(el('li', button, ` ${row.status}, created ${row.created_at}`));
  }
}

function showOperation(operation) {
  current = operation;
  $('op-details').hidden = !operation;
  if (!operation) return;
  $('op-field-id').textContent = operation.id;
  const badge = $('op-status');
  badge.textContent = operation.status;
  badge.className = `badge ${operation.status}`;
  $('op-created').textContent = operation.created_at ?? '';
  $('op-started').textContent = operation.started_at ?? '—';
  $('op-finished').textContent = operation.finished_at ?? '—';
  $('op-expires').textContent = operation.expires_at ?? '';
  const result = operation.result;
  $('op-result').textContent = result ? `${result.status}: ${result.summary ?? ''}` : '—';
  const artifacts = operation.artifacts?.artifacts ?? [];
  $('artifact-count').textContent = `(${artifacts.length})`;
  const body = $('artifacts').tBodies[0];
  body.replaceChildren();
  for (const artifact of artifacts) {
    const button = el('button', 'Download');
    button.type = 'button';
    button.dataset.artifact = artifact.name;
    const checksum = el('td', String(artifact.checksum).replace(/^sha256:/, '').slice(0, 16) + '…');
    checksum.className = 'mono';
    checksum.title = artifact.checksum;
    body.append(el('tr', el('td', artifact.name), el('td', formatSize(artifact.size)), el('td', artifact.content_type), checksum, el('td', button)));
  }
}

// --- download, verify, decrypt ---

async function downloadArtifact(operationId, name) {
  clearMessages();
  const meta = (current?.artifacts?.artifacts ?? []).find((a) => a.name === name);
  notice(`Fetching ${name}…`);
  const response = await api('GET', artifactPath(operationId, name));
  const kind = (response.headers.get('content-type') || '').split(';')[0].trim().toLowerCase();
  let ticket;
  let ciphertext;
  if (kind === 'application/json') {
    ticket = await response.json();
    ciphertext = ticket.url?.startsWith?.(API_PATH)
      ? await fetchThroughApi(ticket.url) // proxy delivery: the ticket points back at the API
      : await fetchPresigned(ticket.url);
  } else {
    // Proxy delivery: the API streamed the ciphertext itself; the checksums come from the operation's metadata.
    if (!meta) throw new ApiError('the artifact is not in the operation shown; open the operation again');
    ticket = meta;
    ciphertext = await response.blob();
  }
  if (ticket.encryption?.scheme !== 'cobblestone-256') throw new ApiError('unsupported encryption scheme');
  const plaintext = await verifyAndDecrypt(operationId, name, ticket, ciphertext);
  offer(name, plaintext);
}

/** Proxy delivery: a signed GET of the API's own download path, relative to this page's API base (so a path
 * prefix added by an ingress is kept). */
async function fetchThroughApi(path) {
  const response = await api('GET', path.slice(API_PATH.length), { accept: 'application/octet-stream' });
  return response.blob();
}

async function fetchPresigned(url) {
  if (typeof url !== 'string' || !/^https?:\/\//.test(url)) throw new ApiError('the API gave no download URL');
  let response;
  try {
    response = await fetch(url, { credentials: 'omit', cache: 'no-store', referrerPolicy: 'no-referrer', mode: 'cors' });
  } catch {
    throw new ApiError('cannot reach storage (is the bucket CORS rule allowing this page\'s origin?)');
  }
  if (response.status === 403) throw new ApiError('storage refused the download link (expired? clock skew?); try again');
  if (!response.ok) throw new ApiError(`storage answered HTTP ${response.status}`);
  return response.blob();
}

async function verifyAndDecrypt(operationId, name, ticket, ciphertext) {
  if (!Number.isSafeInteger(ticket.size) || ticket.size < 0) throw new ApiError('the artifact has no valid size');
  if (ticket.size > MAX_BROWSER_BYTES) {
    throw new ApiError(`${name} is too large to decrypt in a browser; use \`strongroom client get\``);
  }
  if (ciphertext.size !== ciphertextSize(ticket.size)) {
    throw new IntegrityError(`the stored object for ${name} does not have the artifact's size`);
  }
  notice(`Verifying ${name}…`);
  if (!sameHex(await sha256Hex(ciphertext), ticket.ciphertext_checksum)) {
    throw new IntegrityError(`ciphertext checksum mismatch for ${name}: the stored object is not this artifact`);
  }
  const wrapped = ticket.encryption.wrapped_key;
  const { dataKey, sha256 } = parseWrapPayload(await identity.openWrap(wrapped), operationId, name);
  if (!sameHex(sha256, ticket.checksum)) {
    throw new IntegrityError(`the key wrap of ${name} names a different checksum than its metadata`);
  }
  notice(`Decrypting ${name}…`);
  const parts = [];
  for await (const part of decryptBlob(dataKey, artifactContext(operationId, name), ciphertext)) parts.push(part);
  dataKey.fill(0);
  const plaintext = new Blob(parts, { type: 'application/octet-stream' });
  if (!sameHex(await sha256Hex(plaintext), ticket.checksum)) {
    throw new IntegrityError(`plaintext checksum mismatch for ${name}`);
  }
  return plaintext;
}

function offer(name, blob) {
  if (lastObjectUrl) URL.revokeObjectURL(lastObjectUrl);
  lastObjectUrl = URL.createObjectURL(blob);
  const link = el('a', `Save ${name} again`);
  link.href = lastObjectUrl;
  link.download = name;
  link.id = 'saved-link';
  const saved = $('saved');
  saved.replaceChildren(`${name}: ${formatSize(blob.size)}, checksums verified, decrypted. `, link);
  saved.hidden = false;
  notice('');
  link.click();
}

// --- helpers ---

async function sha256Hex(blob) {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', await blob.arrayBuffer()));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
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

function b64(bytes) {
  return btoa(String.fromCharCode(...bytes));
}

function el(tag, ...children) {
  const node = document.createElement(tag);
  node.append(...children.map((c) => (c instanceof Node ? c : String(c ?? ''))));
  return node;
}

function formatSize(n) {
  if (!Number.isFinite(n)) return '';
  return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`;
}

function notice(text) {
  $('notice').textContent = text;
  $('notice').hidden = !text;
}

function showError(error) {
  notice('');
  const box = $('error');
  const prefix = error instanceof IntegrityError ? 'Integrity check failed — nothing was saved. ' : '';
  const message = error?.message || String(error);
  box.textContent = prefix + message.charAt(0).toUpperCase() + message.slice(1);
  box.hidden = false;
}

function clearMessages() {
  $('error').hidden = true;
  $('error').textContent = '';
  $('saved').hidden = true;
}

/** Run a UI action, turning any failure into the error box (never the console: messages may name files). */
function action(fn) {
  return async (event) => {
    try {
      await fn(event);
    } catch (error) {
      showError(error);
    }
  };
}

// --- wiring ---

$('identity-file').addEventListener(
  'change',
  action(async (event) => {
    const [file] = event.target.files;
    event.target.value = ''; // the file input must not keep a handle on the secret file
    if (!file) return;
    clearMessages();
    let doc;
    try {
      doc = JSON.parse(await file.text());
    } catch {
      throw new Error('the identity file is not JSON');
    }
    useIdentity(identityFromFile(doc));
  }),
);

if (globalThis.ethereum?.request) {
  $('wallet-connect').hidden = false;
  $('wallet-connect').addEventListener('click', action(async () => useIdentity(await identityFromWallet(globalThis.ethereum))));
}

$('identity-forget').addEventListener('click', () => {
  stopPolling();
  useIdentity(null);
  if (lastObjectUrl) URL.revokeObjectURL(lastObjectUrl); // the decrypted file goes with the identity
  lastObjectUrl = null;
  $('saved').replaceChildren();
  $('saved').hidden = true;
});

$('op-form').addEventListener(
  'submit',
  action(async (event) => {
    event.preventDefault();
    const id = $('op-id').value.trim();
    if (id) await openOperation(id);
  }),
);

$('list-refresh').addEventListener('click', action(listOperations));

$('op-list').addEventListener(
  'click',
  action(async (event) => {
    const id = event.target?.dataset?.op;
    if (!id) return;
    $('op-id').value = id;
    await openOperation(id);
  }),
);

$('artifacts').addEventListener(
  'click',
  action(async (event) => {
    const name = event.target?.dataset?.artifact;
    if (!name || !current) return;
    event.target.disabled = true;
    try {
      await downloadArtifact(current.id, name);
    } finally {
      event.target.disabled = false;
    }
  }),
);

document.body.dataset.ready = 'true';
