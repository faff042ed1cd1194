// Verifies a request signed by the Python signer: rebuilds the RFC 9421 base from the request and recovers the
// EIP-191 signer with ethers and with viem. stdin: {"method", "url", "body_b64", "headers"}
// stdout: {"base", "digest_ok", "keyid", "ethers": "0x...", "viem": "0x..."}
import { createHash } from "node:crypto";
import { verifyMessage } from "ethers";
import { recoverMessageAddress } from "viem";

const input = JSON.parse(await new Response(process.stdin).text());
const h = Object.fromEntries(Object.entries(input.headers).map(([k, v]) => [k.toLowerCase(), v]));
const url = new URL(input.url);
const body = Buffer.from(input.body_b64, "base64");

// Signature-Input: <label>=(<components>)<params>; this test only needs the one member the signer sends.
const [, label, params] = h["signature-input"].match(/^([a-z*][a-z0-9_.*-]*)=(\(.*)$/);
const components = [...params.slice(1, params.indexOf(")")).matchAll(/"([^"]+)"/g)].map((m) => m[1]);
const keyid = params.match(/;keyid="([^"]+)"/)[1];
const sig = h["signature"].match(new RegExp(`^${label}=:([A-Za-z0-9+/=]+):$`))[1];

const values = {
  "@method": input.method.toUpperCase(),
  "@authority": url.host,
  "@path": url.pathname,
  "@query": url.search || "?",
  "content-digest": h["content-digest"],
};
const base = [...components.map((c) => `"${c}": ${values[c]}`), `"@signature-params": ${params}`].join("\n");
const signatureHex = `0x${Buffer.from(sig, "base64").toString("hex")}`;
const digestOk = h["content-digest"] === `sha-256=:${createHash("sha256").update(body).digest("base64")}:`;

process.stdout.write(
  JSON.stringify({
    base,
    digest_ok: digestOk,
    keyid,
    ethers: verifyMessage(base, signatureHex).toLowerCase(),
    viem: (await recoverMessageAddress({ message: base, signature: signatureHex })).toLowerCase(),
  }),
);
