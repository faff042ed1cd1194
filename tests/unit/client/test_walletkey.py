"""The wallet-derived X25519 key (docs/encryption.md section 4): the documented example, fixed vectors (the same
ones tests/js/walletkey.test.mjs checks against the page's walletkey.js), refusals, and the identity file / CLI
(`strongroom client keygen --from-wallet-key`)."""

from __future__ import annotations

import base64
import json
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from coincurve import PublicKey
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from eth_account import Account
from eth_account.messages import encode_defunct
from nacl.public import PrivateKey

from shared.auth.keys import SigningKey
from shared.auth.recovery import SECP256K1_ORDER, eip191_digest, recover_address
from shared.crypto import keywrap
from shared.errors import CryptoError
from strongroom.cli import main
from strongroom.client import walletkey
from strongroom.client.errors import IdentityError
from strongroom.client.identity import create_identity, create_wallet_identity, load_identity

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
HARDHAT_0 = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"

# The same table is in tests/js/walletkey.test.mjs: both implementations must give these bytes.
VECTORS: list[dict[str, Any]] = [
    {"private_key_hex": HARDHAT_0, "chain_id": 1, "address": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
     "x25519_public_b64": "jESpDPqhgY10EO42CF/4+XAAqU2YjIWn0wIRY8/ox3I=",
     "x25519_secret_hex": "3026b98f9be4b24bc47c9434c0b7a5061327c9fa789261990c8626328fe5ac42"},
    {"private_key_hex": HARDHAT_0, "chain_id": 8453, "address": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
     "x25519_public_b64": "Ke7J2pt9Jh0akHJLjTyRvzDds9jLxi/yUqmusrRCd10=",
     "x25519_secret_hex": "08bc4a0e67797609a2892b409ec24578c0cec85d53a5d36be5f6b15959576346"},
    {"private_key_hex": "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d", "chain_id": 1,
     "address": "0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
     "x25519_public_b64": "ki9lCXc2MP0BzeLLlO6N4SljJ3X6Cp6YKJFbskjXn3k=",
     "x25519_secret_hex": "881b31a4ee66f7d1b23ce47f1fb4a031dcc68ebda3f21ebd164e348f697c6c44"},
    {"private_key_hex": "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d", "chain_id": 8453,
     "address": "0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
     "x25519_public_b64": "v7p/JcBoQzYFlzz6g/6cNnLCyFnhQEY3N1aqrliLkXc=",
     "x25519_secret_hex": "c04decbbe4f68fb439227093e57f2902cc7aa70c0308ed65503fbed5e86b8b67"},
    {"private_key_hex": "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a", "chain_id": 1,
     "address": "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc",
     "x25519_public_b64": "y++MMyV2HkXxiDxhOskfp7EahYnS1ZGTUeR01PonFUs=",
     "x25519_secret_hex": "a092108fa0758d86eb4f6cdd98fd9e5419598e54d62e6a10675090b0aec2624d"},
    {"private_key_hex": "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a", "chain_id": 8453,
     "address": "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc",
     "x25519_public_b64": "uI3DRo6VKLtRllo7aDwydPKIiYD4PT8ETIZGDzrFGwI=",
     "x25519_secret_hex": "c0def04e345eac5ccb76c066d2e99103a70a13fb16e3345b784af42306bb5240"},
]  # fmt: skip

# A second valid signature of the documented message by Hardhat account 0, made with a fixed nonce instead of
# RFC 6979's (what a non-deterministic wallet would return); tests/js/walletkey.test.mjs uses the same bytes.
FIXED_NONCE = 0x5EED5EED5EED5EED5EED5EED5EED5EED5EED5EED5EED5EED5EED5EED5EED5EED
NONDETERMINISTIC_SIGNATURE = (
    "ae54ef198b6f84198edb6fbdf94a91237cc03f72c09f1bad2fc88452a5c30e45"
    "2f5d85f43edcce017f33875178a2022ec82fc4e058729863feca9653ab4c797f1c"
)


def doc_example() -> dict[str, Any]:
    text = (ROOT / "docs" / "encryption.md").read_text()
    match = re.search(r"<!-- example:walletkey -->\s*```json\n(.*?)\n```", text, re.S)
    assert match, "docs/encryption.md lost its example:walletkey block"
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def sign_with_nonce(key: SigningKey, digest: bytes, k: int) -> bytes:
    """Textbook ECDSA with a chosen nonce (low S, Ethereum v)."""
    point = PublicKey.from_secret(k.to_bytes(32, "big")).format(compressed=False)
    x, y = int.from_bytes(point[1:33], "big"), int.from_bytes(point[33:], "big")
    r = x % SECP256K1_ORDER
    z, d = int.from_bytes(digest, "big"), int.from_bytes(key.key, "big")
    s = pow(k, -1, SECP256K1_ORDER) * (z + r * d) % SECP256K1_ORDER
    rec_id = y & 1
    if s > SECP256K1_ORDER // 2:
        s, rec_id = SECP256K1_ORDER - s, rec_id ^ 1
    return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes((27 + rec_id,))


class ScriptedSigner:
    """A wallet that answers with the given signatures in turn (and records what it was asked)."""

    def __init__(self, address: str, signatures: list[bytes]) -> None:
        self.address = address
        self.signatures = list(signatures)
        self.asked: list[bytes] = []

    def sign_message(self, signable: Any) -> Any:
        self.asked.append(signable.body)
        return type("Signed", (), {"signature": self.signatures.pop(0)})()


# --- the documented example, recomputed with independent code (eth-account, cryptography, pynacl) ---


def test_documented_example() -> None:
    ex = doc_example()
    account = Account.from_key(ex["private_key_hex"])
    assert account.address.lower() == ex["address"]
    assert walletkey.wallet_key_message(ex["address"], ex["chain_id"]) == ex["message_utf8"]
    assert ex["message_utf8"].isascii()
    signature = bytes(account.sign_message(encode_defunct(text=ex["message_utf8"])).signature)
    assert signature.hex() == ex["signature_hex"]
    assert SigningKey.from_key(ex["private_key_hex"]).sign_text(ex["message_utf8"]) == signature
    assert signature[:64].hex() == ex["ikm_hex"]
    assert int.from_bytes(signature[32:64], "big") <= SECP256K1_ORDER // 2
    seed = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=ex["salt_utf8"].encode(), info=ex["info_utf8"].encode()
    ).derive(bytes.fromhex(ex["ikm_hex"]))
    assert seed.hex() == ex["seed_hex"]
    secret = bytearray(seed)
    secret[0] &= 248
    secret[31] = (secret[31] & 127) | 64
    assert secret.hex() == ex["x25519_secret_hex"]
    public = base64.b64encode(bytes(PrivateKey(bytes(secret)).public_key)).decode()
    assert public == ex["x25519_public_b64"]

    derived = walletkey.derive_from_signature(ex["signature_hex"], ex["address"], ex["chain_id"])
    assert (derived.secret.hex(), derived.public_key) == (ex["x25519_secret_hex"], ex["x25519_public_b64"])
    assert walletkey.derive_from_signature(bytes.fromhex(ex["malleated_signature_hex"]), ex["address"]) == derived
    assert walletkey.derive_from_signer(SigningKey.from_key(ex["private_key_hex"])) == derived
    assert walletkey.derive_from_signer(account) == derived  # an eth-account signer


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['address'][:8]}-chain{v['chain_id']}")
def test_vectors(vector: dict[str, Any]) -> None:
    key = SigningKey.from_key(vector["private_key_hex"])
    assert key.address == vector["address"]
    derived = walletkey.derive_from_signer(key, vector["chain_id"])
    assert derived.secret.hex() == vector["x25519_secret_hex"]
    assert derived.public_key == vector["x25519_public_b64"]
    assert keywrap.parse_public_key(derived.public_key)  # an acceptable encryption_public_key


def test_chain_id_and_address_are_bound() -> None:
    keys = {(v["address"], v["chain_id"]): v["x25519_public_b64"] for v in VECTORS}
    assert len(set(keys.values())) == len(keys)
    assert "Chain ID: 8453" in walletkey.wallet_key_message(VECTORS[0]["address"], 8453)


def test_message_address_case_does_not_matter() -> None:
    checksummed = Account.from_key(HARDHAT_0).address
    assert checksummed != checksummed.lower()
    assert walletkey.wallet_key_message(checksummed) == walletkey.wallet_key_message(checksummed.lower())
    signature = SigningKey.from_key(HARDHAT_0).sign_text(walletkey.wallet_key_message(checksummed))
    assert walletkey.derive_from_signature(signature, checksummed).public_key == VECTORS[0]["x25519_public_b64"]


@pytest.mark.parametrize(
    ("address", "chain_id"),
    [("f39fd6e51aad88f6f4ce6ab8827279cfffb92266", 1), ("0x1234", 1), (VECTORS[0]["address"], 0),
     (VECTORS[0]["address"], -1), (VECTORS[0]["address"], True), (VECTORS[0]["address"], 2**53),
     (VECTORS[0]["address"] + "\n", 1)],  # a regex "$" would have let it in: another message than the page's
)  # fmt: skip
def test_message_refuses_bad_inputs(address: str, chain_id: int) -> None:
    with pytest.raises(ValueError):
        walletkey.wallet_key_message(address, chain_id)


def test_v_written_as_0_or_1_derives_the_same() -> None:
    ex = doc_example()
    signature = bytes.fromhex(ex["signature_hex"])
    as_rec_id = signature[:64] + bytes((signature[64] - 27,))
    assert walletkey.derive_from_signature(as_rec_id, ex["address"]).public_key == ex["x25519_public_b64"]
    assert walletkey.canonical_signature(bytes.fromhex(ex["malleated_signature_hex"])) == signature


# --- refusals ---


def test_non_deterministic_signer_is_refused() -> None:
    ex = doc_example()
    digest = eip191_digest(ex["message_utf8"])
    key = SigningKey.from_key(HARDHAT_0)
    other = sign_with_nonce(key, digest, FIXED_NONCE)
    assert other.hex() == NONDETERMINISTIC_SIGNATURE
    assert recover_address(digest, other) == ex["address"]  # a perfectly valid signature, just a different one
    signer = ScriptedSigner(ex["address"], [bytes.fromhex(ex["signature_hex"]), other])
    with pytest.raises(CryptoError) as refused:
        walletkey.derive_from_signer(signer)
    assert refused.value.code == "wallet_not_deterministic"
    assert "identity file" in str(refused.value)
    assert ex["signature_hex"] not in str(refused.value) and other.hex() not in str(refused.value)
    assert signer.asked == [ex["message_utf8"].encode()] * 2


def test_malleated_second_signature_is_still_deterministic() -> None:
    ex = doc_example()
    signatures = [bytes.fromhex(ex["signature_hex"]), bytes.fromhex(ex["malleated_signature_hex"])]
    derived = walletkey.derive_from_signer(ScriptedSigner(ex["address"], signatures))
    assert derived.public_key == ex["x25519_public_b64"]


@pytest.mark.parametrize(
    "signature",
    [
        "zz",
        b"\x01" * 64,
        b"\x01" * 66,
        b"\x01" * 200,  # an ERC-1271 / ERC-6492 contract-wallet blob
        b"\x01" * 64 + bytes((29,)),
        b"\x00" * 64 + bytes((27,)),
        SECP256K1_ORDER.to_bytes(32, "big") + b"\x01" * 32 + bytes((27,)),
    ],
)
def test_malformed_signatures_are_refused(signature: bytes | str) -> None:
    with pytest.raises(CryptoError) as refused:
        walletkey.derive_from_signature(signature, VECTORS[0]["address"])
    assert refused.value.code == "wallet_signature_invalid"


def test_signature_by_another_account_or_over_another_message_is_refused() -> None:
    ex = doc_example()
    other = SigningKey.from_key(VECTORS[2]["private_key_hex"])
    for signature in (other.sign_text(ex["message_utf8"]), SigningKey.from_key(HARDHAT_0).sign_text("hello")):
        with pytest.raises(CryptoError) as refused:
            walletkey.derive_from_signature(signature, ex["address"])
        assert refused.value.code == "wallet_signature_invalid"
    # A wallet that switched accounts between "connect" and "sign".
    signer = ScriptedSigner(ex["address"], [other.sign_text(ex["message_utf8"])] * 2)
    with pytest.raises(CryptoError, match="not made by this address"):
        walletkey.derive_from_signer(signer)


def test_repr_hides_the_secret() -> None:
    derived = walletkey.derive_from_signer(SigningKey.from_key(HARDHAT_0))
    assert derived.secret.hex() not in repr(derived) and str(list(derived.secret)) not in repr(derived)


# --- identity file and CLI ---


def test_wallet_identity_new_file(tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    identity, changed = create_wallet_identity(path)
    assert changed and stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_identity(path)
    assert loaded.encryption_public_key == walletkey.derive_from_signer(loaded.account).public_key
    assert loaded.encryption_secret_key == identity.encryption_secret_key
    again, changed = create_wallet_identity(path)
    assert not changed and again.encryption_public_key == identity.encryption_public_key


def test_wallet_identity_keeps_an_existing_signing_key(tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    random = create_identity(path)
    before = path.read_bytes()
    with pytest.raises(IdentityError) as refused:
        create_wallet_identity(path)
    assert refused.value.code == "identity_exists" and "--force" in str(refused.value)
    assert path.read_bytes() == before
    derived, changed = create_wallet_identity(path, force=True)
    assert changed and derived.address == random.address
    assert derived.encryption_public_key != random.encryption_public_key
    assert derived.encryption_public_key == walletkey.derive_from_signer(random.account).public_key
    assert load_identity(path).encryption_public_key == derived.encryption_public_key


def test_wallet_identity_never_drops_the_signing_key_of_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    create_identity(path)
    path.chmod(0o644)
    before = path.read_bytes()
    for force in (False, True):
        with pytest.raises(IdentityError) as refused:
            create_wallet_identity(path, force=force)
        assert refused.value.code == "identity_permissions"
    assert path.read_bytes() == before


def test_wallet_identity_replaces_a_broken_file_only_when_forced(tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    path.write_text("not json")
    path.chmod(0o600)
    with pytest.raises(IdentityError) as refused:
        create_wallet_identity(path)
    assert refused.value.code == "identity_invalid"
    identity, changed = create_wallet_identity(path, force=True)
    assert changed and load_identity(path).encryption_public_key == identity.encryption_public_key


def test_wallet_identity_keeps_the_signing_key_of_a_damaged_identity(tmp_path: Path) -> None:
    """A wrong public key (or address) fails the identity's checks, but its signing key is still the address."""
    path = tmp_path / "id.json"
    original = create_identity(path)
    document = json.loads(path.read_text())
    path.write_text(json.dumps({**document, "encryption_public_key": "d3Jvbmc="}))
    identity, changed = create_wallet_identity(path, force=True)
    assert changed and identity.address == original.address
    path.write_text(json.dumps({**document, "version": 2}))  # a future format: refused, never rewritten
    with pytest.raises(IdentityError, match="unsupported format version"):
        create_wallet_identity(path, force=True)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["client", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_keygen_from_wallet_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    code, out, err = run(capsys, "--identity", str(path), "--json", "keygen", "--from-wallet-key")
    assert code == 0, err
    shown = json.loads(out)
    stored = json.loads(path.read_text())
    assert shown["encryption_key"] == "wallet-derived" and shown["changed"] is True
    assert shown["encryption_public_key"] == stored["encryption_public_key"]
    assert stored["signing_key"].removeprefix("0x") not in out and stored["encryption_secret_key"] not in out
    account = SigningKey.from_key(stored["signing_key"])
    assert stored["encryption_public_key"] == walletkey.derive_from_signer(account).public_key

    code, out, _ = run(capsys, "--identity", str(path), "keygen", "--from-wallet-key")
    assert code == 0 and "unchanged" in out and stored["encryption_public_key"] in out
    assert json.loads(path.read_text()) == stored


def test_cli_keygen_from_wallet_key_over_a_random_identity(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    assert run(capsys, "--identity", str(path), "keygen")[0] == 0
    random = json.loads(path.read_text())
    code, _, err = run(capsys, "--identity", str(path), "keygen", "--from-wallet-key")
    assert code == 10 and err.startswith("error: ") and "--force" in err and "Traceback" not in err
    code, out, _ = run(capsys, "--identity", str(path), "--json", "keygen", "--from-wallet-key", "--force")
    assert code == 0
    stored = json.loads(path.read_text())
    assert stored["address"] == random["address"] and stored["signing_key"] == random["signing_key"]
    assert stored["encryption_public_key"] != random["encryption_public_key"]
    assert json.loads(out)["encryption_public_key"] == stored["encryption_public_key"]
