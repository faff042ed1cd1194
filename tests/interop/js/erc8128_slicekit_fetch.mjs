// Sends signed requests to a running strongroom API with @slicekit/erc8128, an independent ERC-8128 client.
// The library chooses the covered components itself (Request-Bound: @query only with a query, content-digest
// only with a body); nothing here builds a signature base.
// stdin: {"key", "chain_id", "requests": [{"method", "url", "body" (string or null), "headers"}]}
// stdout: {"responses": [{"status", "body", "signature_input"}]}
import { signRequest } from "@slicekit/erc8128";
import { privateKeyToAccount } from "viem/accounts";

const input = JSON.parse(await new Response(process.stdin).text());
const account = privateKeyToAccount(input.key);
const signer = {
  chainId: input.chain_id,
  address: account.address,
  signMessage: (message) => account.signMessage({ message: { raw: message } }),
};

const responses = [];
for (const request of input.requests) {
  const init = { method: request.method, headers: request.headers ?? {} };
  if (request.body !== null && request.body !== undefined) init.body = request.body;
  const signed = await signRequest(request.url, init, signer);
  const response = await fetch(signed, { redirect: "manual" });
  responses.push({
    status: response.status,
    body: await response.text(),
    signature_input: signed.headers.get("signature-input"),
  });
}
process.stdout.write(JSON.stringify({ responses }));
