// Runs the browser page's own crypto modules (api_service/static/*.js) under Node.js for tests/browser.
// Node 20 has WebCrypto as globalThis.crypto and Blob, like a browser. Reads one JSON request on stdin:
//   {"decrypt": [{"key_hex", "op", "name", "ciphertext_b64"}],
//    "unwrap":  [{"secret_hex", "wrap", "op", "name"}],
//    "sign":    [{"key_hex", "method", "url", "body_b64", "created", "nonce", "chain_id", "ttl"}],
//    "base":    [{"method", "authority", "path", "query", "digest", "params"}]}
// and prints {"decrypt": [{"plaintext_b64"} | {"error"}], "unwrap": [...], "sign": [{"headers"}], "base": [str]}.
import { Wallet } from '../../../api_service/static/vendor/ethers.min.js';

// The UMD tweetnacl build sets `self.nacl` in a browser; Node loads it as CommonJS, so publish it the same way.
globalThis.nacl = (await import('../../../api_service/static/vendor/nacl-fast.min.js')).default;
const cobblestone = await import('../../../api_service/static/cobblestone.js');
const keywrap = await import('../../../api_service/static/keywrap.js');
const erc8128 = await import('../../../api_service/static/erc8128.js');
const { Sha256 } = await import('../../../api_service/static/sha256.js');

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const request = JSON.parse(Buffer.concat(chunks).toString('utf8'));

const bytes = (b64) => new Uint8Array(Buffer.from(b64, 'base64'));
const b64 = (data) => Buffer.from(data).toString('base64');

async function settle(fn) {
  try {
    return await fn();
  } catch (error) {
    return { error: `${error.name}: ${error.message}` };
  }
}

const answer = { decrypt: [], stream: [], unwrap: [], sign: [], base: [] };
// "stream": [{"key_hex", "op", "name", "ciphertext_b64", "step"}] -> the page's download path: the ciphertext
// pushed `step` bytes at a time through StreamDecryptor, both SHA-256s computed incrementally.
for (const c of request.stream ?? []) {
  answer.stream.push(
    await settle(async () => {
      const data = bytes(c.ciphertext_b64);
      const decryptor = new cobblestone.StreamDecryptor(erc8128.hexToBytes(c.key_hex), cobblestone.artifactContext(c.op, c.name));
      const cipherHash = new Sha256();
      const plainHash = new Sha256();
      const parts = [];
      for (let i = 0; i < data.length; i += c.step) {
        const piece = data.subarray(i, i + c.step);
        cipherHash.update(piece);
        parts.push(...(await decryptor.push(piece)));
      }
      parts.push(await decryptor.finish());
      for (const part of parts) plainHash.update(part);
      return {
        plaintext_b64: b64(cobblestone.concat(...parts)),
        cipher_sha256: cipherHash.hexdigest(),
        plain_sha256: plainHash.hexdigest(),
        consumed: decryptor.consumed,
      };
    }),
  );
}
for (const c of request.decrypt ?? []) {
  answer.decrypt.push(
    await settle(async () => {
      const ctx = cobblestone.artifactContext(c.op, c.name);
      const plain = await cobblestone.decryptBytes(erc8128.hexToBytes(c.key_hex), ctx, bytes(c.ciphertext_b64));
      return { plaintext_b64: b64(plain) };
    }),
  );
}
for (const c of request.unwrap ?? []) {
  answer.unwrap.push(
    await settle(async () => {
      const { dataKey, sha256 } = keywrap.unwrapDataKey(erc8128.hexToBytes(c.secret_hex), c.wrap, c.op, c.name);
      return { data_key_b64: b64(dataKey), sha256 };
    }),
  );
}
for (const c of request.sign ?? []) {
  answer.sign.push(
    await settle(async () => {
      const wallet = new Wallet(c.key_hex);
      const signer = { address: wallet.address, signMessage: (text) => wallet.signMessage(text) };
      const headers = await erc8128.signRequest(signer, c.method, c.url, bytes(c.body_b64), {
        chainId: c.chain_id,
        ttl: c.ttl,
        created: c.created,
        nonce: c.nonce,
      });
      return { headers };
    }),
  );
}
for (const c of request.base ?? []) {
  answer.base.push(erc8128.signatureBase(c, c.params));
}
process.stdout.write(JSON.stringify(answer));
