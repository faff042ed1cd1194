"""The wallet-derived X25519 key (docs/encryption.md section 4) is the same in Python and in the browser page.

Node.js runs the page's own modules (api_service/static/walletkey.js, keywrap.js, cobblestone.js, with the
vendored ethers and tweetnacl): an ethers Wallet behind a minimal EIP-1193 provider stands in for the browser
wallet. For each private key, the X25519 pair the page derives must equal the SDK's, and an artifact encrypted
and wrapped in Python for the SDK-derived public key must open and decrypt with the page-derived secret. An
identity file written by `strongroom client keygen --from-wallet-key` holds the key the page derives.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shared.auth.keys import SigningKey
from shared.crypto import cobblestone, keywrap
from strongroom.cli import main
from strongroom.client import walletkey
from tests.helpers.node import requires_node

pytestmark = [pytest.mark.interop, requires_node]

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "api_service" / "static"
OP, NAME = "privacy-audit_01J9Z8WALLETKEY", "report (wallet).md"

# Reads {"urls": {...}, "cases": [{private_key_hex, chain_id, wrap?, op?, name?, ciphertext_b64?}]} on stdin and
# prints [{address, public_b64, secret_hex, plaintext_b64?} | {error}].
SCRIPT = r"""
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const request = JSON.parse(Buffer.concat(chunks).toString('utf8'));
const { Wallet, getBytes, toUtf8String } = await import(request.urls.ethers);
globalThis.nacl = (await import(request.urls.nacl)).default;
const walletkey = await import(request.urls.walletkey);
const keywrap = await import(request.urls.keywrap);
const cobblestone = await import(request.urls.cobblestone);

const answers = [];
for (const c of request.cases) {
  try {
    const wallet = new Wallet(`0x${c.private_key_hex}`);
    const provider = {
      async request({ method, params }) {
        if (method === 'eth_requestAccounts') return [wallet.address];
        if (method === 'personal_sign') return wallet.signMessage(toUtf8String(getBytes(params[0])));
        throw new Error(`unexpected ${method}`);
      },
    };
    const derived = await walletkey.deriveFromProvider(provider, { chainId: c.chain_id });
    const answer = {
      address: derived.address,
      public_b64: derived.publicKey,
      secret_hex: Buffer.from(derived.secretKey).toString('hex'),
    };
    if (c.wrap) {
      const { dataKey, sha256 } = keywrap.unwrapDataKey(derived.secretKey, c.wrap, c.op, c.name);
      const ctx = cobblestone.artifactContext(c.op, c.name);
      const plaintext = await cobblestone.decryptBytes(dataKey, ctx, Buffer.from(c.ciphertext_b64, 'base64'));
      answer.sha256 = sha256;
      answer.plaintext_b64 = Buffer.from(plaintext).toString('base64');
    }
    answers.push(answer);
  } catch (error) {
    answers.push({ error: `${error.name}: ${error.message}` });
  }
}
process.stdout.write(JSON.stringify(answers));
"""


def run_page(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    node = shutil.which("node")
    assert node is not None, "Node.js is required (apt-get install -y nodejs npm)"
    urls = {
        "ethers": (STATIC / "vendor" / "ethers.min.js").as_uri(),
        "nacl": (STATIC / "vendor" / "nacl-fast.min.js").as_uri(),
        "walletkey": (STATIC / "walletkey.js").as_uri(),
        "keywrap": (STATIC / "keywrap.js").as_uri(),
        "cobblestone": (STATIC / "cobblestone.js").as_uri(),
    }
    done = subprocess.run(
        [node, "--input-type=module", "-e", SCRIPT],
        input=json.dumps({"urls": urls, "cases": cases}),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answers: list[dict[str, Any]] = json.loads(done.stdout)
    return answers


def sealed_for(public_b64: str, plaintext: bytes) -> dict[str, Any]:
    """What the worker stores for a grantee: the Cobblestone-256 payload and the data key wrapped for them."""
    data_key = os.urandom(32)
    sha256 = hashlib.sha256(plaintext).hexdigest()
    ciphertext = b"".join(cobblestone.encrypt_stream(data_key, cobblestone.artifact_context(OP, NAME), [plaintext]))
    return {
        "wrap": keywrap.wrap_data_key(public_b64, OP, NAME, data_key, sha256),
        "op": OP,
        "name": NAME,
        "ciphertext_b64": base64.b64encode(ciphertext).decode(),
    }


HARDHAT = [
    "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
]


def test_same_key_pair_and_the_page_opens_what_python_sealed() -> None:
    keys = [SigningKey.from_key(k) for k in HARDHAT] + [SigningKey.generate() for _ in range(5)]
    chain_ids = [1, 1, 8453, 1, 10, 1, 137, 1]
    cases, expected = [], []
    for index, (key, chain_id) in enumerate(zip(keys, chain_ids, strict=True)):
        derived = walletkey.derive_from_signer(key, chain_id)
        plaintext = os.urandom(16384 * index + 7)  # 7 B up to seven full chunks and a bit
        sealed = sealed_for(derived.public_key, plaintext)
        cases.append({"private_key_hex": key.key.hex(), "chain_id": chain_id, **sealed})
        expected.append((key.address, derived, plaintext))

    answers = run_page(cases)

    assert len(answers) == len(expected)
    for answer, (address, derived, plaintext) in zip(answers, expected, strict=True):
        assert "error" not in answer, answer
        assert answer["address"] == address
        assert answer["public_b64"] == derived.public_key
        assert answer["secret_hex"] == derived.secret.hex()
        assert answer["sha256"] == hashlib.sha256(plaintext).hexdigest()
        assert base64.b64decode(answer["plaintext_b64"]) == plaintext
    assert len({answer["public_b64"] for answer in answers}) == len(answers)


def test_wrap_for_another_chain_id_does_not_open() -> None:
    key = SigningKey.from_key(HARDHAT[0])
    sealed = sealed_for(walletkey.derive_from_signer(key, 8453).public_key, b"chain-bound")
    [answer] = run_page([{"private_key_hex": HARDHAT[0], "chain_id": 1, **sealed}])
    assert answer["error"].startswith("IntegrityError: key wrap does not open")


def test_identity_file_from_wallet_key_matches_the_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = [tmp_path / f"id{i}.json" for i in range(3)]
    for path in paths:
        assert main(["client", "--identity", str(path), "keygen", "--from-wallet-key"]) == 0
    capsys.readouterr()
    files = [json.loads(path.read_text()) for path in paths]

    answers = run_page([{"private_key_hex": doc["signing_key"].removeprefix("0x"), "chain_id": 1} for doc in files])

    for doc, answer in zip(files, answers, strict=True):
        assert answer["address"] == doc["address"]
        assert answer["public_b64"] == doc["encryption_public_key"]
        assert answer["secret_hex"] == base64.b64decode(doc["encryption_secret_key"]).hex()
