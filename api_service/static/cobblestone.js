// Cobblestone-256 decryption (c2sp.org/chunked-encryption, AES-256-GCM + HKDF-Expand-SHA-512) with WebCrypto.
//
// The browser twin of shared/crypto/cobblestone.py; docs/encryption.md section 1 is the contract:
//   payload = salt(24) || commitment(32) || chunk_0 || ... || chunk_n
//   key(32) || base_nonce(12) || commitment(32) = HKDF-Expand-SHA-512(prk = data key,
//       "c2sp.org/chunked-encryption@v1+AEAD_AES_256_GCM" || 0x00 || salt || ctx, 76)
//   chunk_i = AES-256-GCM(key, base_nonce XOR i (12-byte big-endian), plaintext_i, aad = empty)
// 16 KiB plaintext chunks; the last one is always shorter (possibly empty) and marks the end.
// WebCrypto's HKDF always runs Extract first, so Expand is built from HMAC-SHA-512 (RFC 5869 section 2.3).

export const KEY_SIZE = 32;
export const NONCE_SIZE = 12;
export const TAG_SIZE = 16;
export const SALT_SIZE = 24;
export const COMMITMENT_SIZE = 32;
export const HEADER_SIZE = SALT_SIZE + COMMITMENT_SIZE;
export const CHUNK_SIZE = 16 * 1024;
export const SEALED_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE;

const encoder = new TextEncoder();
const INFO_PREFIX = concat(encoder.encode('c2sp.org/chunked-encryption@v1+AEAD_AES_256_GCM'), new Uint8Array([0]));

/** A failed integrity check: the caller must discard every byte it got from this payload. */
export class IntegrityError extends Error {
  constructor(message) {
    super(message);
    this.name = 'IntegrityError';
  }
}

/** The context binding a payload to its operation and artifact name (a moved ciphertext fails the commitment). */
export function artifactContext(operationId, name) {
  return encoder.encode(`strongroom/v1|${operationId}|${name}`);
}

export function ciphertextSize(plaintextSize) {
  const full = Math.floor(plaintextSize / CHUNK_SIZE);
  return HEADER_SIZE + full * SEALED_CHUNK_SIZE + (plaintextSize % CHUNK_SIZE) + TAG_SIZE;
}

/** Inverse of ciphertextSize; lengths no honest encryption produces are a truncation. */
export function plaintextSize(size) {
  if (size < HEADER_SIZE + TAG_SIZE) throw new IntegrityError('ciphertext is too short to be a Cobblestone payload');
  const full = Math.floor((size - HEADER_SIZE) / SEALED_CHUNK_SIZE);
  const rest = (size - HEADER_SIZE) % SEALED_CHUNK_SIZE;
  if (rest < TAG_SIZE) throw new IntegrityError('ciphertext length is impossible: the short final chunk is missing');
  return full * CHUNK_SIZE + rest - TAG_SIZE;
}

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** RFC 5869 HKDF-Expand with HMAC-SHA-512 (no Extract: the data key is already uniform). */
export async function hkdfExpandSha512(prk, info, length) {
  if (length > 255 * 64) throw new RangeError('HKDF-Expand-SHA-512 output is at most 16320 bytes');
  const hmacKey = await crypto.subtle.importKey('raw', prk, { name: 'HMAC', hash: 'SHA-512' }, false, ['sign']);
  const blocks = [];
  let previous = new Uint8Array(0);
  for (let counter = 1; blocks.length * 64 < length; counter += 1) {
    previous = new Uint8Array(
      await crypto.subtle.sign('HMAC', hmacKey, concat(previous, info, new Uint8Array([counter]))),
    );
    blocks.push(previous);
  }
  return concat(...blocks).slice(0, length);
}

/** Constant-time equality of two byte arrays (the commitment is a MAC-like value). */
export function bytesEqual(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i += 1) diff |= a[i] ^ b[i];
  return diff === 0;
}

/** Derive the AEAD key and base nonce from the header; refuses a header whose commitment does not match. */
export async function openHeader(dataKey, ctx, header) {
  if (dataKey.length !== KEY_SIZE) throw new IntegrityError('Cobblestone-256 data keys are 32 bytes');
  if (header.length !== HEADER_SIZE) throw new IntegrityError('payload truncated inside its 56-byte header');
  const salt = header.subarray(0, SALT_SIZE);
  const okm = await hkdfExpandSha512(dataKey, concat(INFO_PREFIX, salt, ctx), KEY_SIZE + NONCE_SIZE + COMMITMENT_SIZE);
  if (!bytesEqual(okm.subarray(KEY_SIZE + NONCE_SIZE), header.subarray(SALT_SIZE))) {
    throw new IntegrityError(
      'key commitment mismatch: wrong data key or context (artifact moved to another operation or name?)',
    );
  }
  const aesKey = await crypto.subtle.importKey('raw', okm.subarray(0, KEY_SIZE), 'AES-GCM', false, ['decrypt']);
  return { aesKey, baseNonce: okm.slice(KEY_SIZE, KEY_SIZE + NONCE_SIZE) };
}

/** base_nonce XOR index, the index as a 12-byte big-endian integer (only the low 8 bytes can be non-zero). */
export function chunkNonce(baseNonce, index) {
  const nonce = baseNonce.slice();
  let value = BigInt(index);
  for (let i = NONCE_SIZE - 1; i >= 0 && value > 0n; i -= 1) {
    nonce[i] ^= Number(value & 0xffn);
    value >>= 8n;
  }
  return nonce;
}

async function openChunk(message, index, sealed) {
  try {
    const iv = chunkNonce(message.baseNonce, index);
    return new Uint8Array(await crypto.subtle.decrypt({ name: 'AES-GCM', iv, tagLength: 128 }, message.aesKey, sealed));
  } catch {
    throw new IntegrityError(`chunk ${index} failed authentication: the payload was modified, truncated or reordered`);
  }
}

/**
 * Decrypt a whole payload held in a Blob (or anything with .size and .slice(start, end).arrayBuffer()),
 * reading one sealed chunk at a time so the working set stays one chunk. Yields authenticated plaintext
 * chunks in order; throws IntegrityError on any modification, truncation or trailing data. Plaintext already
 * yielded is unverified until the generator finishes cleanly.
 */
export async function* decryptBlob(dataKey, ctx, blob) {
  const total = blob.size;
  plaintextSize(total); // refuses impossible lengths before any work
  const header = new Uint8Array(await blob.slice(0, HEADER_SIZE).arrayBuffer());
  const message = await openHeader(dataKey, ctx, header);
  const finalIndex = Math.floor((total - HEADER_SIZE) / SEALED_CHUNK_SIZE);
  for (let index = 0; index <= finalIndex; index += 1) {
    const start = HEADER_SIZE + index * SEALED_CHUNK_SIZE;
    const end = Math.min(start + SEALED_CHUNK_SIZE, total);
    const sealed = new Uint8Array(await blob.slice(start, end).arrayBuffer());
    if (index === finalIndex && !(sealed.length >= TAG_SIZE && sealed.length < SEALED_CHUNK_SIZE)) {
      throw new IntegrityError('payload truncated: the short final chunk is missing or incomplete');
    }
    yield await openChunk(message, index, sealed);
  }
}

/** Convenience for small payloads and tests: decrypt bytes to bytes. */
export async function decryptBytes(dataKey, ctx, ciphertext) {
  const parts = [];
  for await (const part of decryptBlob(dataKey, ctx, new Blob([ciphertext]))) parts.push(part);
  return concat(...parts);
}

/**
 * Decrypt a payload as it arrives (a download stream), one sealed chunk at a time.
 *
 * `push(bytes)` returns the plaintext chunks that became complete (a full sealed chunk is opened only once a
 * byte after it has arrived, because the short final chunk is what marks the end); `finish()` opens the final
 * chunk and refuses a truncated payload. `consumed` is how many ciphertext bytes are behind the chunks already
 * authenticated: a resumed download continues from there with a Range request. Plaintext is unverified until
 * finish() returns.
 */
export class StreamDecryptor {
  constructor(dataKey, ctx) {
    this.dataKey = dataKey;
    this.ctx = ctx;
    this.message = null;
    this.index = 0;
    this.consumed = 0;
    this.pending = [];
    this.pendingBytes = 0;
  }

  async push(bytes) {
    this.pending.push(bytes);
    this.pendingBytes += bytes.length;
    const out = [];
    if (!this.message) {
      if (this.pendingBytes < HEADER_SIZE) return out;
      this.message = await openHeader(this.dataKey, this.ctx, this.take(HEADER_SIZE));
      this.consumed = HEADER_SIZE;
    }
    while (this.pendingBytes > SEALED_CHUNK_SIZE) {
      out.push(await openChunk(this.message, this.index, this.take(SEALED_CHUNK_SIZE)));
      this.index += 1;
      this.consumed += SEALED_CHUNK_SIZE;
    }
    return out;
  }

  async finish() {
    if (!this.message) throw new IntegrityError('payload truncated inside its 56-byte header');
    const sealed = this.take(this.pendingBytes);
    if (!(sealed.length >= TAG_SIZE && sealed.length < SEALED_CHUNK_SIZE)) {
      throw new IntegrityError('payload truncated: the short final chunk is missing or incomplete');
    }
    const last = await openChunk(this.message, this.index, sealed);
    this.consumed += sealed.length;
    return last;
  }

  take(count) {
    const joined = this.pending.length === 1 ? this.pending[0] : concat(...this.pending);
    const head = joined.slice(0, count);
    const rest = joined.subarray(count);
    this.pending = rest.length ? [rest] : [];
    this.pendingBytes = rest.length;
    return head;
  }
}
