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

__all__ = [
    "EncryptResult",
    "Keyring",
    "artifact_context",
    "authenticate_length",
    "ciphertext_range",
    "ciphertext_size",
    "decrypt_range",
    "decrypt_stream",
    "encrypt_file",
    "encrypt_stream",
    "plaintext_size",
]
