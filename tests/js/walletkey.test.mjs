// node --test: the wallet-derived X25519 key (api_service/static/walletkey.js, docs/encryption.md section 4).
// The vectors are the same as tests/unit/client/test_walletkey.py's: both implementations give these bytes.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';

import { Wallet, getBytes, hexlify, toUtf8String } from '../../api_service/static/vendor/ethers.min.js';

// The page loads tweetnacl as a classic script (it sets globalThis.nacl); Node loads the UMD file as CommonJS.
globalThis.nacl = (await import('../../api_service/static/vendor/nacl-fast.min.js')).default;
const {
  WalletKeyError,
  canonicalSignature,
  deriveFromProvider,
  deriveFromSignature,
  deriveFromSigner,
  secretFromCanonical,
  walletKeyMessage,
} = await import('../../api_service/static/walletkey.js');

const HARDHAT_0 = 'ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80';
const VECTORS = [
  { private_key_hex: HARDHAT_0, chain_id: 1, address: '0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266',
    x25519_public_b64: 'jESpDPqhgY10EO42CF/4+XAAqU2YjIWn0wIRY8/ox3I=',
    x25519_secret_hex: '3026b98f9be4b24bc47c9434c0b7a5061327c9fa789261990c8626328fe5ac42' },
  { private_key_hex: HARDHAT_0, chain_id: 8453, address: '0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266',
    x25519_public_b64: 'Ke7J2pt9Jh0akHJLjTyRvzDds9jLxi/yUqmusrRCd10=',
    x25519_secret_hex: '08bc4a0e67797609a2892b409ec24578c0cec85d53a5d36be5f6b15959576346' },
  { private_key_hex: '59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d', chain_id: 1,
    address: '0x70997970c51812dc3a010c7d01b50e0d17dc79c8',
    x25519_public_b64: 'ki9lCXc2MP0BzeLLlO6N4SljJ3X6Cp6YKJFbskjXn3k=',
    x25519_secret_hex: '881b31a4ee66f7d1b23ce47f1fb4a031dcc68ebda3f21ebd164e348f697c6c44' },
  { private_key_hex: '59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d', chain_id: 8453,
    address: '0x70997970c51812dc3a010c7d01b50e0d17dc79c8',
    x25519_public_b64: 'v7p/JcBoQzYFlzz6g/6cNnLCyFnhQEY3N1aqrliLkXc=',
    x25519_secret_hex: 'c04decbbe4f68fb439227093e57f2902cc7aa70c0308ed65503fbed5e86b8b67' },
  { private_key_hex: '5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a', chain_id: 1,
    address: '0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc',
    x25519_public_b64: 'y++MMyV2HkXxiDxhOskfp7EahYnS1ZGTUeR01PonFUs=',
    x25519_secret_hex: 'a092108fa0758d86eb4f6cdd98fd9e5419598e54d62e6a10675090b0aec2624d' },
  { private_key_hex: '5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a', chain_id: 8453,
    address: '0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc',
    x25519_public_b64: 'uI3DRo6VKLtRllo7aDwydPKIiYD4PT8ETIZGDzrFGwI=',
    x25519_secret_hex: 'c0def04e345eac5ccb76c066d2e99103a70a13fb16e3345b784af42306bb5240' },
];
// A second valid signature of the documented message by Hardhat account 0 with a fixed (not RFC 6979) nonce:
// what a non-deterministic wallet returns. tests/unit/client/test_walletkey.py recomputes and verifies it.
const NONDETERMINISTIC_SIGNATURE =
  '0xae54ef198b6f84198edb6fbdf94a91237cc03f72c09f1bad2fc88452a5c30e45' +
  '2f5d85f43edcce017f33875178a2022ec82fc4e058729863feca9653ab4c797f1c';

const hex = (bytes) => Buffer.from(bytes).toString('hex');

async function docExample() {
  const text = await readFile(new URL('../../docs/encryption.md', import.meta.url), 'utf8');
  const match = /<!-- example:walletkey -->\s*```json\n([\s\S]*?)\n```/.exec(text);
  assert.ok(match, 'docs/encryption.md lost its example:walletkey block');
  return JSON.parse(match[1]);
}

/** A minimal EIP-1193 provider over an ethers Wallet (personal_sign takes hex of the UTF-8 message). */
function fakeProvider(wallet, { answers } = {}) {
  const calls = [];
  return {
    calls,
    async request({ method, params }) {
      calls.push({ method, params });
      if (method === 'eth_requestAccounts') return [wallet.address];
      if (method === 'personal_sign') {
        if (answers) return answers.shift();
        return wallet.signMessage(toUtf8String(getBytes(params[0])));
      }
      throw new Error(`unexpected ${method}`);
    },
  };
}

async function refusedWith(promise, code) {
  await assert.rejects(promise, (error) => error instanceof WalletKeyError && error.code === code);
}

test('the documented example, byte for byte', async () => {
  const ex = await docExample();
  const wallet = new Wallet(`0x${ex.private_key_hex}`);
  assert.equal(wallet.address.toLowerCase(), ex.address);
  assert.equal(walletKeyMessage(ex.address, ex.chain_id), ex.message_utf8);
  const signature = await wallet.signMessage(ex.message_utf8);
  assert.equal(signature, `0x${ex.signature_hex}`);
  assert.equal(hex(canonicalSignature(signature).subarray(0, 64)), ex.ikm_hex);
  const secret = await secretFromCanonical(canonicalSignature(signature));
  assert.equal(hex(secret), ex.x25519_secret_hex);
  const seed = Buffer.from(ex.seed_hex, 'hex');
  seed[0] &= 248;
  seed[31] = (seed[31] & 127) | 64;
  assert.equal(hex(seed), ex.x25519_secret_hex);
  const derived = await deriveFromSignature(signature, ex.address, { chainId: ex.chain_id });
  assert.equal(hex(derived.secretKey), ex.x25519_secret_hex);
  assert.equal(derived.publicKey, ex.x25519_public_b64);
  const malleated = await deriveFromSignature(`0x${ex.malleated_signature_hex}`, ex.address);
  assert.equal(malleated.publicKey, ex.x25519_public_b64);
  assert.equal(hexlify(canonicalSignature(`0x${ex.malleated_signature_hex}`)), signature);
});

test('fixed vectors, through an ethers signer', async () => {
  for (const v of VECTORS) {
    const derived = await deriveFromSigner(new Wallet(`0x${v.private_key_hex}`), { chainId: v.chain_id });
    assert.equal(derived.address, v.address);
    assert.equal(hex(derived.secretKey), v.x25519_secret_hex, `${v.address} chain ${v.chain_id}`);
    assert.equal(derived.publicKey, v.x25519_public_b64, `${v.address} chain ${v.chain_id}`);
  }
});

test('an EIP-1193 provider: personal_sign twice, of the message, from the lowercase address', async () => {
  const ex = await docExample();
  const wallet = new Wallet(`0x${ex.private_key_hex}`);
  const provider = fakeProvider(wallet);
  const derived = await deriveFromProvider(provider);
  assert.equal(derived.publicKey, ex.x25519_public_b64);
  assert.deepEqual(
    provider.calls.map((c) => c.method),
    ['eth_requestAccounts', 'personal_sign', 'personal_sign'],
  );
  for (const call of provider.calls.slice(1)) {
    assert.equal(toUtf8String(getBytes(call.params[0])), ex.message_utf8);
    assert.equal(call.params[1], ex.address);
  }
  const given = fakeProvider(wallet);
  assert.equal((await deriveFromProvider(given, { address: wallet.address })).publicKey, ex.x25519_public_b64);
  assert.deepEqual(given.calls.map((c) => c.method), ['personal_sign', 'personal_sign']);
});

test('v as 0/1 and a malleated second signature still derive the same key', async () => {
  const ex = await docExample();
  const sig = Buffer.from(ex.signature_hex, 'hex');
  sig[64] -= 27;
  const provider = fakeProvider(new Wallet(`0x${ex.private_key_hex}`), {
    answers: [hexlify(sig), `0x${ex.malleated_signature_hex}`],
  });
  assert.equal((await deriveFromProvider(provider)).publicKey, ex.x25519_public_b64);
});

test('a wallet that does not sign deterministically is refused', async () => {
  const ex = await docExample();
  // Both are valid signatures by this address over the message; they differ only in the nonce.
  const fresh = await deriveFromSignature(NONDETERMINISTIC_SIGNATURE, ex.address);
  assert.notEqual(fresh.publicKey, ex.x25519_public_b64);
  const provider = fakeProvider(new Wallet(`0x${ex.private_key_hex}`), {
    answers: [`0x${ex.signature_hex}`, NONDETERMINISTIC_SIGNATURE],
  });
  await assert.rejects(deriveFromProvider(provider), (error) => {
    assert.equal(error.code, 'wallet_not_deterministic');
    assert.match(error.message, /identity file/);
    assert.ok(!error.message.includes(ex.signature_hex.slice(0, 16)));
    return true;
  });
});

test('malformed signatures, contract-wallet blobs and other signers are refused', async () => {
  const ex = await docExample();
  const bad = [
    'zz',
    `0x${'01'.repeat(64)}`,
    `0x${'01'.repeat(66)}`,
    `0x${'01'.repeat(200)}`,
    `0x${'01'.repeat(64)}1d`,
    `0x${'00'.repeat(64)}1b`,
    `0x${'ff'.repeat(32)}${'01'.repeat(32)}1b`,
    42,
  ];
  for (const signature of bad) {
    await refusedWith(deriveFromSignature(signature, ex.address), 'wallet_signature_invalid');
  }
  const other = new Wallet(`0x${VECTORS[2].private_key_hex}`);
  await refusedWith(
    deriveFromSignature(await other.signMessage(ex.message_utf8), ex.address),
    'wallet_signature_invalid',
  );
  const wallet = new Wallet(`0x${ex.private_key_hex}`);
  await refusedWith(deriveFromSignature(await wallet.signMessage('hello'), ex.address), 'wallet_signature_invalid');
  // The wallet switched accounts: it signs with `other` while the page asked for `wallet.address`.
  const switched = fakeProvider(other);
  await refusedWith(deriveFromProvider(switched, { address: wallet.address }), 'wallet_signature_invalid');
});

test('the message is bound to address and chain id, and refuses bad inputs', () => {
  const ex = VECTORS[0];
  const checksummed = new Wallet(`0x${ex.private_key_hex}`).address;
  assert.equal(walletKeyMessage(checksummed), walletKeyMessage(ex.address));
  assert.match(walletKeyMessage(ex.address, 8453), /\nChain ID: 8453$/);
  assert.ok(/^[\x0a\x20-\x7e]*$/.test(walletKeyMessage(ex.address)));
  assert.equal(new Set(VECTORS.map((v) => v.x25519_public_b64)).size, VECTORS.length);
  for (const [address, chainId] of [
    [ex.address.slice(2), 1],
    ['0x1234', 1],
    [ex.address, 0],
    [ex.address, -1],
    [ex.address, 1.5],
    [ex.address, '1'],
    [ex.address, 2 ** 53],
  ]) {
    assert.throws(() => walletKeyMessage(address, chainId), WalletKeyError);
  }
});
