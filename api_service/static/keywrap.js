// Opening a data-key wrap: MetaMask's x25519-xsalsa20-poly1305 JSON (docs/encryption.md section 2).
//
// The browser twin of shared/crypto/keywrap.py's unwrap side. XSalsa20-Poly1305 is not in WebCrypto, so the
// box is opened with tweetnacl (vendor/nacl-fast.min.js, loaded by the page; it sets globalThis.nacl).
// A wallet that holds the secret (MetaMask eth_decrypt) opens the box itself and hands us only the payload text,
// so the payload checks are a separate function both paths share.

import { IntegrityError } from './cobblestone.js';

export const WRAP_VERSION = 'x25519-xsalsa20-poly1305';
export const PAYLOAD_ALG = 'cobblestone-256';
const SHA256_HEX = /^[0-9a-f]{64}$/;

export function b64decode(text) {
  if (typeof text !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) {
    throw new IntegrityError('key wrap field is not base64');
  }
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) out[i] = binary.charCodeAt(i);
  return out;
}

function nacl() {
  const lib = globalThis.nacl;
  if (!lib || !lib.box) throw new Error('tweetnacl is not loaded');
  return lib;
}

/** Open the box with the grantee's 32-byte X25519 secret; returns the payload text (UTF-8 JSON). */
export function openWrap(secretKey, wrapped) {
  if (!wrapped || wrapped.version !== WRAP_VERSION) throw new IntegrityError(`key wrap is not ${WRAP_VERSION}`);
  if (!(secretKey instanceof Uint8Array) || secretKey.length !== 32) {
    throw new IntegrityError('the X25519 secret key must be 32 bytes');
  }
  const nonce = b64decode(wrapped.nonce);
  const ephemeral = b64decode(wrapped.ephemPublicKey);
  const ciphertext = b64decode(wrapped.ciphertext);
  if (nonce.length !== 24 || ephemeral.length !== 32) throw new IntegrityError('key wrap has a malformed nonce or key');
  const opened = nacl().box.open(ciphertext, nonce, ephemeral, secretKey);
  if (!opened) throw new IntegrityError('key wrap does not open with this identity (wrapped for another key?)');
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(opened);
  } catch {
    throw new IntegrityError('key wrap payload is not UTF-8');
  }
}

/**
 * Check a wrap payload belongs to (operationId, name) and return {dataKey, sha256}. A wrap copied onto another
 * artifact names a different op or name and is refused here, before its key touches any ciphertext.
 */
export function parseWrapPayload(text, operationId, name) {
  let doc;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new IntegrityError('key wrap payload is not JSON');
  }
  if (!doc || typeof doc !== 'object' || doc.v !== 1 || doc.alg !== PAYLOAD_ALG) {
    throw new IntegrityError(`key wrap payload is not a v1 ${PAYLOAD_ALG} key`);
  }
  if (doc.op !== operationId || doc.name !== name) {
    throw new IntegrityError('key wrap belongs to another artifact (operation id or name differs): refusing to use it');
  }
  const dataKey = b64decode(doc.dk);
  if (dataKey.length !== 32) throw new IntegrityError('key wrap payload has a malformed data key');
  if (typeof doc.sha256 !== 'string' || !SHA256_HEX.test(doc.sha256)) {
    throw new IntegrityError('key wrap payload has a malformed sha256');
  }
  return { dataKey, sha256: doc.sha256 };
}

/** Open and check in one step (the identity-file path). */
export function unwrapDataKey(secretKey, wrapped, operationId, name) {
  return parseWrapPayload(openWrap(secretKey, wrapped), operationId, name);
}
