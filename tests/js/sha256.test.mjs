// node --test: the page's incremental SHA-256 against FIPS 180-4 vectors and WebCrypto, split at every boundary.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Sha256, sha256Hex } from '../../api_service/static/sha256.js';

const enc = new TextEncoder();

test('NIST vectors', () => {
  assert.equal(sha256Hex(enc.encode('')), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  assert.equal(sha256Hex(enc.encode('abc')), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  assert.equal(
    sha256Hex(enc.encode('abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq')),
    '248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1',
  );
  assert.equal(
    sha256Hex(new Uint8Array(1000000).fill(0x61)),
    'cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0',
  );
});

test('any split into updates gives the WebCrypto digest', async () => {
  for (const size of [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 70000]) {
    const data = new Uint8Array(size).map((_, i) => (i * 131 + (i >> 8)) & 0xff);
    const expected = Buffer.from(await crypto.subtle.digest('SHA-256', data)).toString('hex');
    for (const step of [1, 7, 63, 64, 65, 16400]) {
      const hash = new Sha256();
      for (let i = 0; i < size; i += step) hash.update(data.subarray(i, i + step));
      assert.equal(hash.hexdigest(), expected, `size ${size} step ${step}`);
    }
  }
});

test('a finished hash refuses more input', () => {
  const hash = new Sha256();
  hash.digest();
  assert.throws(() => hash.update(new Uint8Array(1)));
});
