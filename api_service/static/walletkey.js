// An X25519 encryption key re-derived from a wallet signature, exactly as docs/encryption.md section 4 specifies.
//
// The browser twin of strongroom/client/walletkey.py: given the same private key, both derive the same key pair
// (tests/interop/test_walletkey_interop.py). The wallet signs (EIP-191 personal_sign) a fixed message naming
// strongroom, this purpose, a version, the address and a chain id; the canonical signature goes through
// HKDF-SHA256 (WebCrypto) and is clamped into an X25519 secret; tweetnacl (globalThis.nacl, loaded by the page)
// gives the public key.
//
// The signature IS the secret: never send, log or store it. Nothing here does; callers must not either.

import { hashMessage, hexlify, recoverAddress, toUtf8Bytes } from './vendor/ethers.min.js';
import { b64encode, hexToBytes } from './erc8128.js';

export const VERSION = 1;
export const DEFAULT_CHAIN_ID = 1; // what the page signs requests with
export const HKDF_SALT = 'strongroom/walletkey/v1';
export const HKDF_INFO = 'strongroom x25519 v1';

const N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n; // secp256k1 order
const HALF_N = N >> 1n;
const ADDRESS = /^0x[0-9a-fA-F]{40}$/;

export class WalletKeyError extends Error {
  constructor(message, code) {
    super(message);
    this.name = 'WalletKeyError';
    this.code = code;
  }
}

/** The exact text the wallet signs (ASCII, LF line ends, no trailing newline); the address is lowercased. */
export function walletKeyMessage(address, chainId = DEFAULT_CHAIN_ID) {
  if (typeof address !== 'string' || !ADDRESS.test(address)) {
    throw new WalletKeyError('address must be 0x followed by 40 hex digits', 'address_invalid');
  }
  if (!Number.isSafeInteger(chainId) || chainId <= 0) {
    throw new WalletKeyError('chain id must be a positive integer', 'chain_id_invalid');
  }
  return (
    `strongroom encryption key v${VERSION}\n` +
    '\n' +
    'Signing this message derives the X25519 key that decrypts what is shared with you on strongroom. ' +
    "Anyone holding this signature can read it: sign only in strongroom's own page or CLI, " +
    'never on another site. It sends no transaction and costs nothing.\n' +
    '\n' +
    `Address: ${address.toLowerCase()}\n` +
    `Chain ID: ${chainId}`
  );
}

function invalid(message) {
  return new WalletKeyError(message, 'wallet_signature_invalid');
}

function toBigInt(bytes) {
  let value = 0n;
  for (const byte of bytes) value = (value << 8n) | BigInt(byte);
  return value;
}

function fromBigInt(value) {
  const out = new Uint8Array(32);
  for (let i = 31; i >= 0; i -= 1) {
    out[i] = Number(value & 0xffn);
    value >>= 8n;
  }
  return out;
}

/**
 * `r || s || v` (65 bytes) with low S and v in {27, 28}: the one form every wallet's signature maps to (wallets
 * write v as 0/1 or 27/28, and (r, n - s) with the other v is the same signature).
 */
export function canonicalSignature(signature) {
  let raw;
  if (typeof signature === 'string') {
    try {
      raw = hexToBytes(signature);
    } catch {
      throw invalid('the wallet signature is not hex');
    }
  } else if (signature instanceof Uint8Array) {
    raw = signature;
  } else {
    throw invalid('the wallet signature is not hex');
  }
  if (raw.length !== 65) {
    throw invalid(
      "the wallet's signature is not a 65-byte ECDSA signature (a smart-contract wallet cannot derive a key): " +
        'use an identity file instead',
    );
  }
  let v = raw[64];
  if (v === 0 || v === 1) v += 27;
  if (v !== 27 && v !== 28) throw invalid('the wallet signature has an invalid v byte');
  const r = toBigInt(raw.subarray(0, 32));
  let s = toBigInt(raw.subarray(32, 64));
  if (!(r > 0n && r < N && s > 0n && s < N)) throw invalid('the wallet signature is out of range');
  if (s > HALF_N) {
    s = N - s;
    v = 55 - v; // the other recovery id: 27 <-> 28
  }
  const out = new Uint8Array(65);
  out.set(raw.subarray(0, 32), 0);
  out.set(fromBigInt(s), 32);
  out[64] = v;
  return out;
}

function nacl() {
  const lib = globalThis.nacl;
  if (!lib || !lib.scalarMult) throw new Error('tweetnacl is not loaded');
  return lib;
}

/** HKDF-SHA256(ikm = r || s, salt, info) -> 32 bytes, clamped (RFC 7748) into an X25519 secret. */
export async function secretFromCanonical(canonical) {
  const ikm = await crypto.subtle.importKey('raw', canonical.subarray(0, 64), 'HKDF', false, ['deriveBits']);
  const encoder = new TextEncoder();
  const seed = new Uint8Array(
    await crypto.subtle.deriveBits(
      { name: 'HKDF', hash: 'SHA-256', salt: encoder.encode(HKDF_SALT), info: encoder.encode(HKDF_INFO) },
      ikm,
      256,
    ),
  );
  seed[0] &= 248;
  seed[31] &= 127;
  seed[31] |= 64;
  return seed;
}

/**
 * The key pair from `address`'s signature (hex or bytes) over walletKeyMessage(address, chainId):
 * {secretKey: Uint8Array(32), publicKey: base64}. The signature must recover to `address` (a wallet that signed
 * with another account would otherwise yield a key nobody could re-derive for this address).
 */
export async function deriveFromSignature(signature, address, { chainId = DEFAULT_CHAIN_ID } = {}) {
  const message = walletKeyMessage(address, chainId);
  const canonical = canonicalSignature(signature);
  let signer;
  try {
    signer = recoverAddress(hashMessage(message), hexlify(canonical));
  } catch {
    signer = null;
  }
  if (!signer || signer.toLowerCase() !== address.toLowerCase()) {
    throw invalid("the wallet signature was not made by this address over strongroom's key message");
  }
  const secretKey = await secretFromCanonical(canonical);
  return { secretKey, publicKey: b64encode(nacl().scalarMult.base(secretKey)) };
}

function sameBytes(a, b) {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

/**
 * Ask a signer ({address, signMessage(text) -> 0x hex}: an ethers Wallet, the page's identities) to sign the key
 * message twice and derive the key; a signer that does not sign deterministically (RFC 6979) is refused, since a
 * key derived from it could never be derived again.
 */
export async function deriveFromSigner(signer, { chainId = DEFAULT_CHAIN_ID } = {}) {
  const address = String(signer.address).toLowerCase();
  const message = walletKeyMessage(address, chainId);
  const first = canonicalSignature(await signer.signMessage(message));
  const second = canonicalSignature(await signer.signMessage(message));
  if (!sameBytes(first, second)) {
    throw new WalletKeyError(
      'this wallet does not sign deterministically (RFC 6979), so a key derived from its signature could not be ' +
        'derived again: use an identity file instead',
      'wallet_not_deterministic',
    );
  }
  return { address, ...(await deriveFromSignature(first, address, { chainId })) };
}

/**
 * The same through an EIP-1193 provider (window.ethereum): personal_sign twice from `address` (default: the
 * first account the wallet shares), compare, derive.
 */
export async function deriveFromProvider(provider, { address, chainId = DEFAULT_CHAIN_ID } = {}) {
  let account = address;
  if (!account) [account] = await provider.request({ method: 'eth_requestAccounts' });
  if (!account) throw new WalletKeyError('the wallet shared no account', 'wallet_no_account');
  const signer = {
    address: account,
    signMessage: (text) =>
      provider.request({ method: 'personal_sign', params: [hexlify(toUtf8Bytes(text)), account.toLowerCase()] }),
  };
  return deriveFromSigner(signer, { chainId });
}
