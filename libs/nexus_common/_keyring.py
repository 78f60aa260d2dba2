"""AES-256-GCM sealing of secrets at rest under a versioned keyring.

A sealed value is ``FORMAT || key_version (4 bytes, big-endian) || nonce (12) ||
ciphertext+tag``. The key version lets old values open after a new primary key
is added, so keys rotate without downtime; the primary (the key that seals)
may be an older version than the newest, so a new key can reach every replica
before any of them seals with it. The associated data binds each
ciphertext to its row and column, so a value copied into another row fails to
open instead of leaking under the wrong identity.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["Keyring", "KeyringError", "generate_key_spec"]

_FORMAT = 1
_HEADER = struct.Struct(">BI")
_NONCE_BYTES = 12
_KEY_BYTES = 32


class KeyringError(Exception):
    """A keyring is misconfigured or a sealed value cannot be opened."""


class Keyring:
    def __init__(self, keys: Mapping[int, bytes], primary: int | None = None) -> None:
        if not keys:
            raise KeyringError("the keyring holds no keys")
        for version, key in keys.items():
            if len(key) != _KEY_BYTES:
                raise KeyringError(f"key version {version} is not 32 bytes (AES-256)")
        self._ciphers = {version: AESGCM(key) for version, key in keys.items()}
        self.primary = max(keys) if primary is None else primary
        if self.primary not in self._ciphers:
            raise KeyringError(f"primary key version {self.primary} is not in the keyring")

    def __repr__(self) -> str:
        # Versions only: the keys themselves never appear where settings are printed.
        return f"Keyring(primary={self.primary}, versions={self.versions})"

    @property
    def versions(self) -> list[int]:
        return sorted(self._ciphers)

    @classmethod
    def from_spec(cls, spec: str, primary: int | None = None) -> Keyring:
        """Parse ``"1:<base64 key>,2:<base64 key>"``; ``primary`` seals, by
        default the highest version."""
        keys: dict[int, bytes] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            version_text, sep, encoded = item.partition(":")
            if not sep or not version_text.isdigit():
                raise KeyringError("keyring entries look like '<version>:<base64 key>'")
            try:
                keys[int(version_text)] = base64.b64decode(encoded, validate=True)
            except binascii.Error as exc:
                raise KeyringError(f"key version {version_text} is not valid base64") from exc
        return cls(keys, primary)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        body = self._ciphers[self.primary].encrypt(nonce, plaintext, aad)
        return _HEADER.pack(_FORMAT, self.primary) + nonce + body

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) < _HEADER.size + _NONCE_BYTES:
            raise KeyringError("sealed value is truncated")
        fmt, version = _HEADER.unpack_from(sealed)
        if fmt != _FORMAT:
            raise KeyringError(f"unknown sealed format {fmt}")
        cipher = self._ciphers.get(version)
        if cipher is None:
            raise KeyringError(f"sealed with key version {version}, which the keyring lacks")
        nonce = sealed[_HEADER.size : _HEADER.size + _NONCE_BYTES]
        try:
            return cipher.decrypt(nonce, sealed[_HEADER.size + _NONCE_BYTES :], aad)
        except InvalidTag as exc:
            raise KeyringError("sealed value failed authentication") from exc

    def needs_reseal(self, sealed: bytes) -> bool:
        """True when a value was sealed under a key other than the primary."""
        version: int = _HEADER.unpack_from(sealed)[1]
        return version != self.primary


def generate_key_spec(version: int = 1) -> str:
    return f"{version}:{base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}"
