"""strongroom's formats: Cobblestone-256 artifact payloads, x25519 key wraps, and the server keyring.

Import from here; the submodules are implementation detail. See docs/encryption.md for the wire formats.
"""

from shared.crypto.keyring import Keyring

__all__ = ["Keyring"]
