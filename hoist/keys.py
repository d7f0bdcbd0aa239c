"""The fleet key and the keys derived from it: one secret, one key per purpose.

Ranks and workers share ``HOIST_FLEET_KEY`` (``hoist keygen`` or ``hoist up``
makes one: 32 random bytes, URL-safe base64). Nothing uses it directly: HKDF
(SHA-256) derives a key per purpose with its own label, so a key that signs
messages can never open a seal, and a later purpose cannot weaken an earlier
one.

- **message MAC** (``hoist/v1/message-mac``): HMAC-SHA256 over each
  message's canonical body (:mod:`hoist.protocol.signing`).
- **seal** (``hoist/v1/seal``): the Fernet key that encrypts store
  credentials, bound to their store (:mod:`hoist.stores.spec`).

Rotation: ``HOIST_FLEET_KEY`` may hold several keys separated by commas,
the new one first. Ranks sign and seal with the first; workers accept a
message signed, or a seal made, with any of them. Roll out ``new,old`` to the
workers, then ``new`` (or ``new,old``) to the ranks, then ``new`` everywhere
once no message signed with ``old`` is queued (docs/operations.md).

Example:
    >>> keys = FleetKeys.parse(new_fleet_key())
    >>> len(keys.mac_keys), len(keys.mac_keys[0])
    (1, 32)
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from functools import cached_property

from cryptography.fernet import Fernet, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hoist.errors import ConfigurationError

FLEET_KEY_ENV = "HOIST_FLEET_KEY"

_MAC_LABEL = b"hoist/v1/message-mac"
_SEAL_LABEL = b"hoist/v1/seal"


def new_fleet_key() -> str:
    """A new key for ``HOIST_FLEET_KEY`` (32 random bytes, URL-safe base64)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


def _derive(secret: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(secret)


@dataclass(frozen=True)
class FleetKeys:
    """The fleet keys in force, newest first.

    Parameters:
        secrets: the decoded keys, the one to sign and seal with first.
    """

    secrets: tuple[bytes, ...]

    @classmethod
    def parse(cls, text: str) -> FleetKeys:
        """Read ``HOIST_FLEET_KEY``'s value: one key, or several separated by commas.

        Raises:
            ConfigurationError: empty, or a key that is not 32 bytes of base64.
        """
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts:
            raise ConfigurationError(f"{FLEET_KEY_ENV} is empty; make a key with `hoist keygen`")
        secrets = []
        for position, part in enumerate(parts, 1):
            try:
                secret = base64.urlsafe_b64decode(part.encode("ascii"))
            except (binascii.Error, UnicodeEncodeError, ValueError):
                secret = b""
            if len(secret) != 32:
                # Never echo the key itself: it is the fleet's one secret.
                raise ConfigurationError(
                    f"key {position} of {FLEET_KEY_ENV} is not a hoist fleet key (32 bytes of "
                    "URL-safe base64); make one with `hoist keygen`"
                )
            secrets.append(secret)
        return cls(tuple(secrets))

    @cached_property
    def mac_keys(self) -> tuple[bytes, ...]:
        """The message-signing keys, newest first (sign with the first, accept any)."""
        return tuple(_derive(secret, _MAC_LABEL) for secret in self.secrets)

    @cached_property
    def sealer(self) -> MultiFernet:
        """Seals with the newest key and opens with any."""
        return MultiFernet(
            [
                Fernet(base64.urlsafe_b64encode(_derive(secret, _SEAL_LABEL)))
                for secret in self.secrets
            ]
        )


def keys_from(value: str | FleetKeys | None) -> FleetKeys | None:
    """Accept a key as callers give it (text, parsed, or None) and parse text once."""
    if value is None or isinstance(value, FleetKeys):
        return value
    return FleetKeys.parse(value) if value.strip() else None
