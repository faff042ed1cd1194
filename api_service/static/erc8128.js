// ERC-8128 signed requests (RFC 9421 + RFC 9530 + EIP-191), exactly as docs/signing.md specifies.
//
// The browser twin of shared/auth/signer.py. A signer is anything with `address` (0x hex) and
// `signMessage(text) -> Promise<0x hex 65-byte signature>` applying EIP-191 to the UTF-8 text: an ethers Wallet
// built from an identity file, or a MetaMask account through personal_sign.

export const COMPONENTS = ['@method', '@authority', '@path', '@query', 'content-digest'];
export const LABEL = 'eth';
const DEFAULT_PORTS = { 'http:': '80', 'https:': '443' };

export function b64encode(bytes) {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

export function hexToBytes(hex) {
  const clean = hex.startsWith('0x') ? hex.slice(2) : hex;
  if (!/^([0-9a-fA-F]{2})*$/.test(clean)) throw new Error('not a hex string');
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i += 1) out[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** RFC 9530: `sha-256=:<base64>:` of the raw body bytes (also for an empty body). */
export async function contentDigest(body) {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', body));
  return `sha-256=:${b64encode(digest)}:`;
}

/** 128 random bits, base64url without padding. */
export function newNonce() {
  return b64encode(crypto.getRandomValues(new Uint8Array(16))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** RFC 9421 section 2.2.3: lowercase host, the port only when it is not the scheme's default. */
export function normalizeAuthority(url) {
  const host = url.hostname.toLowerCase();
  return url.port && url.port !== DEFAULT_PORTS[url.protocol] ? `${host}:${url.port}` : host;
}

function sfString(value) {
  if (!/^[\x20-\x7e]*$/.test(value)) throw new Error('signature parameters must be printable ASCII');
  return `"${value.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

/** `@signature-params`: the inner list exactly as serialized into Signature-Input. */
export function serializeParams(params) {
  const items = COMPONENTS.map((name) => `"${name}"`).join(' ');
  const rendered = Object.entries(params).map(([key, value]) =>
    typeof value === 'number' ? `;${key}=${value}` : `;${key}=${sfString(value)}`,
  );
  return `(${items})${rendered.join('')}`;
}

/** RFC 9421 section 2.5 over the required components; lines joined with LF, no trailing newline. */
export function signatureBase({ method, authority, path, query, digest }, params) {
  const values = [method.toUpperCase(), authority, path || '/', query || '?', digest];
  const lines = COMPONENTS.map((name, i) => `"${name}": ${values[i]}`);
  lines.push(`"@signature-params": ${serializeParams(params)}`);
  return lines.join('\n');
}

/**
 * The three headers for one request to `url` (absolute, as fetch() will send it). `created` and `nonce` exist
 * for reproducible tests; leave them unset in real use.
 */
export async function signRequest(signer, method, url, body = new Uint8Array(0), options = {}) {
  const target = new URL(url);
  const { chainId = 1, ttl = 60, created = Math.floor(Date.now() / 1000), nonce = newNonce() } = options;
  const digest = await contentDigest(body);
  const params = {
    created,
    expires: created + ttl,
    nonce,
    keyid: `erc8128:${chainId}:${signer.address.toLowerCase()}`,
  };
  const base = signatureBase(
    { method, authority: normalizeAuthority(target), path: target.pathname, query: target.search || '?', digest },
    params,
  );
  const signature = hexToBytes(await signer.signMessage(base));
  if (signature.length !== 65) throw new Error('the signer did not return a 65-byte signature');
  return {
    'Content-Digest': digest,
    'Signature-Input': `${LABEL}=${serializeParams(params)}`,
    Signature: `${LABEL}=:${b64encode(signature)}:`,
  };
}
