"""strongroom's formats: Cobblestone-256 artifact payloads, x25519 key wraps, and the server keyring.

Import from here; the submodules are implementation detail. See docs/encryption.md for the wire formats.
"""

from shared.crypto.cobblestone import (
    EncryptResult,
    artifact_context,
    authenticate_length,
    ciphertext_range,
    ciphertext_size,
    decrypt_range,
    decrypt_stream,
    encrypt_file,
    encrypt_stream,
    plaintext_size,
)
from shared.crypto.keyring import Keyring
from shared.crypto.keywrap import (
    UnwrappedKey,
    decrypt_with,
    encrypt_for,
    generate_encryption_keypair,
    parse_public_key,
    public_key_from_secret,
    unwrap_data_key,
    wrap_data_key,
)

__all__ = [
    "EncryptResult",
    "Keyring",
    "UnwrappedKey",
    "artifact_context",
    "authenticate_length",
    "ciphertext_range",
    "ciphertext_size",
    "decrypt_range",
    "decrypt_stream",
    "decrypt_with",
    "encrypt_file",
    "encrypt_for",
    "encrypt_stream",
    "generate_encryption_keypair",
    "parse_public_key",
    "plaintext_size",
    "public_key_from_secret",
    "unwrap_data_key",
    "wrap_data_key",
]
