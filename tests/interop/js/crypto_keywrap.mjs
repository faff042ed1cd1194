// Reference side of strongroom's key-wrap interop tests: @metamask/eth-sig-util's x25519-xsalsa20-poly1305.
// Reads one JSON request on stdin and prints one JSON answer on stdout:
//   {"action": "encrypt", "publicKey": "<b64>", "data": "<utf-8 text>"}        -> the encrypted-data object
//   {"action": "decrypt", "privateKey": "<hex>", "encryptedData": {...}}      -> {"data": "<utf-8 text>"}
//   {"action": "publicKey", "privateKey": "<hex>"}                            -> {"publicKey": "<b64>"}
import sigUtil from '@metamask/eth-sig-util';

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const request = JSON.parse(Buffer.concat(chunks).toString('utf8'));

let answer;
switch (request.action) {
  case 'encrypt':
    answer = sigUtil.encrypt({ publicKey: request.publicKey, data: request.data, version: 'x25519-xsalsa20-poly1305' });
    break;
  case 'decrypt':
    answer = { data: sigUtil.decrypt({ encryptedData: request.encryptedData, privateKey: request.privateKey }) };
    break;
  case 'publicKey':
    answer = { publicKey: sigUtil.getEncryptionPublicKey(request.privateKey) };
    break;
  default:
    throw new Error(`unknown action ${request.action}`);
}
process.stdout.write(JSON.stringify(answer));
