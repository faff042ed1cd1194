"""The client's identity on disk: an Ethereum signing key (who you are) and an X25519 key (what you can read).

One JSON file, ``0600``, created with ``O_EXCL`` so an existing identity is never silently replaced (``force``
replaces it atomically instead). Loading refuses a file that group or others can read, as ssh does, because
whoever holds it can sign as you and decrypt every artifact wrapped for you.

Default location: ``$STRONGROOM_IDENTITY``, else ``~/.config/strongroom/identity.json``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.auth.keys import SigningKey
from shared.crypto import keywrap
from shared.errors import CryptoError
from strongroom.client.defaults import IDENTITY_ENV as IDENTITY_ENV
from strongroom.client.defaults import default_identity_path as default_identity_path
from strongroom.client.errors import IdentityError
from strongroom.client.walletkey import derive_from_signer

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Identity:
    """Secrets stay out of ``repr`` so an identity can be logged or shown in a traceback safely."""

    account: SigningKey = field(repr=False)
    encryption_secret_key: bytes = field(repr=False)
    encryption_public_key: str

    @property
    def address(self) -> str:
        """Lowercase 0x address: the form the API uses for grantees."""
        return self.account.address

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "address": self.address,
            "signing_key": self.account.key.hex(),
            "encryption_secret_key": base64.b64encode(self.encryption_secret_key).decode("ascii"),
            "encryption_public_key": self.encryption_public_key,
        }


def generate_identity() -> Identity:
    secret, public = keywrap.generate_encryption_keypair()
    return Identity(SigningKey.generate(), secret, public)


def wallet_identity(account: SigningKey) -> Identity:
    """``account`` with the X25519 key derived from its signature (docs/encryption.md section 4): a browser
    wallet holding the same key derives the same encryption key in the page."""
    derived = derive_from_signer(account)
    return Identity(account, derived.secret, derived.public_key)


def create_wallet_identity(path: Path, *, force: bool = False) -> tuple[Identity, bool]:
    """Write an identity whose encryption key is derived from its signing key; returns it and whether the file
    changed.

    An identity already at ``path`` keeps its signing key (its address): unchanged when its encryption key already
    is the derived one, else the derived key replaces it only with ``force`` (artifacts wrapped for the old key can
    no longer be opened). Without a file, or with ``force`` over one that is not an identity at all, a new signing
    key is generated; a file readable by others is refused even with ``force`` (its signing key would be lost).
    """
    current: Identity | None = None
    account: SigningKey | None = None
    if path.exists():
        try:
            current = load_identity(path)
            account = current.account
        except IdentityError as error:
            if not force or error.code != "identity_invalid":
                raise
            account = _salvaged_signing_key(path)  # a damaged file's usable key is its address: keep it
    if account is None:
        identity = wallet_identity(SigningKey.generate())
        save_identity(identity, path, force=force)
        return identity, True
    identity = wallet_identity(account)
    if current is not None and identity.encryption_public_key == current.encryption_public_key:
        return current, False
    if not force:
        raise IdentityError(
            f"{path} already exists with another encryption key; use --force to replace it with the one derived "
            "from its signing key (artifacts wrapped for the old key can no longer be opened)",
            code="identity_exists",
        )
    save_identity(identity, path, force=True)
    return identity, True


def _salvaged_signing_key(path: Path) -> SigningKey | None:
    """The signing key of an identity file that fails its other checks (a wrong public key or address), or None
    when it has none; a file of a format version this client does not know is refused, not rewritten."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if data.get("version", FORMAT_VERSION) != FORMAT_VERSION:
        raise IdentityError(f"{path} has an unsupported format version", code="identity_invalid")
    try:
        return SigningKey.from_key(data["signing_key"])
    except (KeyError, TypeError, ValueError, AttributeError, CryptoError):
        return None


def create_identity(path: Path, *, force: bool = False) -> Identity:
    """Generate a new identity and write it to ``path`` (0600); ``IdentityError`` if it exists and not ``force``."""
    if path.exists() and not force:
        raise IdentityError(f"{path} already exists; use --force to replace it", code="identity_exists")
    identity = generate_identity()
    save_identity(identity, path, force=force)
    return identity


def save_identity(identity: Identity, path: Path, *, force: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = (json.dumps(identity.to_json(), indent=2) + "\n").encode()
    if not force:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise IdentityError(f"{path} already exists; use --force to replace it", code="identity_exists") from None
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return
    # mkstemp creates the file 0600; replacing keeps a reader from ever seeing a half-written identity.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_identity(path: Path) -> Identity:
    """Read and check an identity file; every failure is an ``IdentityError`` naming the file, never a secret."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise IdentityError(
            f"no identity at {path}; create one with `strongroom client keygen`", code="identity_missing"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(f"{path} is readable by others; run `chmod 600 {path}`", code="identity_permissions")
    try:
        data = json.loads(path.read_text())
        if data.get("version") != FORMAT_VERSION:
            raise IdentityError(f"{path} has an unsupported format version", code="identity_invalid")
        account = SigningKey.from_key(data["signing_key"])
        secret = base64.b64decode(data["encryption_secret_key"], validate=True)
        identity = Identity(account, secret, keywrap.public_key_from_secret(secret))
    except IdentityError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error, CryptoError):
        raise IdentityError(f"{path} is not a valid strongroom identity file", code="identity_invalid") from None
    if "address" in data and str(data["address"]).lower() != identity.address:
        raise IdentityError(f"{path}: the address does not match the signing key", code="identity_invalid")
    if data.get("encryption_public_key") not in (None, identity.encryption_public_key):
        raise IdentityError(f"{path}: the public encryption key does not match its secret", code="identity_invalid")
    return identity
