// Signs one request the ERC-8128 way with ethers or viem, independently of the Python code.
// stdin: {"lib", "key", "method", "url", "body_b64", "created", "ttl", "nonce", "chain_id"}
// stdout: {"headers": {...}, "base": "..."}
import { createHash } from "node:crypto";
import { Wallet } from "ethers";
import { privateKeyToAccount } from "viem/accounts";

const input = JSON.parse(await new Response(process.stdin).text());
const body = Buffer.from(input.body_b64, "base64");
const url = new URL(input.url);
const sfString = (s) => `"${s.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;

const digest = `sha-256=:${createHash("sha256").update(body).digest("base64")}:`;
const address =
  input.lib === "viem" ? privateKeyToAccount(input.key).address : new Wallet(input.key).address;
const components = ["@method", "@authority", "@path", "@query", "content-digest"];
const params =
  `(${components.map(sfString).join(" ")})` +
  `;created=${input.created};expires=${input.created + input.ttl}` +
  `;nonce=${sfString(input.nonce)};keyid=${sfString(`erc8128:${input.chain_id}:${address.toLowerCase()}`)}`;
const values = {
  "@method": input.method.toUpperCase(),
  "@authority": url.host, // WHATWG URL: lowercase host, default port dropped
  "@path": url.pathname,
  "@query": url.search || "?",
  "content-digest": digest,
};
const base = [...components.map((c) => `"${c}": ${values[c]}`), `"@signature-params": ${params}`].join("\n");

let signatureHex;
if (input.lib === "viem") {
  signatureHex = await privateKeyToAccount(input.key).signMessage({ message: base });
} else {
  signatureHex = await new Wallet(input.key).signMessage(base);
}
const signature = Buffer.from(signatureHex.slice(2), "hex").toString("base64");
process.stdout.write(
  JSON.stringify({
    base,
    headers: {
      "Content-Digest": digest,
      "Signature-Input": `eth=${params}`,
      Signature: `eth=:${signature}:`,
    },
  }),
);
