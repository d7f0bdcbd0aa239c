"""Message authentication: a rank signs each message, a worker acts only on signed ones.

Anyone who can write to the broker (the Redis password, a buggy client on a
shared Redis) can put a task message on a queue. A worker therefore checks,
before it reads anything else, that the message carries a valid MAC: an
HMAC-SHA256 over the message's canonical body (every field but ``mac``, as
JSON with sorted keys and no spaces), keyed by the fleet key's message-MAC
key (:mod:`hoist.keys`). Ids, order keys, the store spec, the staged path:
all are covered, so none can be changed without the fleet key.

Why our own HMAC rather than Celery's message signing (``security`` with
``auth`` serializer): Celery's signs with X.509 keys and certificates per
sender, needs ``cryptography`` certificates on every rank and worker, signs
the whole serialized envelope (so a re-send by the resender or ``hoist
retry``, which builds a new envelope, would need a rank's private key on the
workers) and changes the serializer name, which Flower and the JSON-only
policy depend on. A MAC over hoist's own message body survives any number
of re-sends from the record unchanged and costs microseconds.

The record keeps the signed message; a worker acts only on a broker message
identical to its record's (:meth:`hoist.state.records.Records.claim`).

Example:
    >>> from hoist.keys import FleetKeys, new_fleet_key
    >>> keys = FleetKeys.parse(new_fleet_key())
    >>> signed = sign({"id": "hoist-r-r0-1", "seq": 1}, keys)
    >>> verify(signed, keys)
    >>> verify({**signed, "seq": 2}, keys)
    Traceback (most recent call last):
    ...
    hoist.errors.ForgedMessageError: the message's signature does not match its body ...
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from hoist.errors import ForgedMessageError, UnsignedMessageError
from hoist.keys import FLEET_KEY_ENV, FleetKeys

MAC_FIELD = "mac"


def canonical(body: dict[str, Any]) -> bytes:
    """The bytes a MAC covers: ``body`` without its ``mac``, sorted, compact JSON."""
    unsigned = {name: value for name, value in body.items() if name != MAC_FIELD}
    text = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text.encode("ascii")


def mac_of(body: dict[str, Any], key: bytes) -> str:
    """The hex HMAC-SHA256 of ``body``'s canonical form under ``key``."""
    return hmac.new(key, canonical(body), hashlib.sha256).hexdigest()


def newest_mac(body: dict[str, Any], keys: FleetKeys) -> str:
    """The MAC a rank gives ``body``: made with the newest key (workers accept any)."""
    return mac_of(body, keys.mac_keys[0])


def sign(body: dict[str, Any], keys: FleetKeys) -> dict[str, Any]:
    """``body`` with a ``mac`` field made with the newest key."""
    return {**body, MAC_FIELD: newest_mac(body, keys)}


def verify(body: dict[str, Any], keys: FleetKeys | None, *, insecure: bool = False) -> None:
    """Check ``body``'s MAC against every key in force; return only if one matches.

    Parameters:
        body: the message as it came off the broker (a dict, size already checked).
        keys: the worker's fleet keys, newest first, or None if it has none.
        insecure: accept unsigned messages (``hoist worker --insecure-unsigned``).

    Raises:
        UnsignedMessageError: no ``mac`` field (and not ``insecure``).
        ForgedMessageError: a ``mac`` that no key in force made for this body.
    """
    if not isinstance(body, dict):
        raise UnsignedMessageError(
            f"a message must be a JSON object carrying its signature, not {type(body).__name__}"
        )
    mac = body.get(MAC_FIELD)
    if mac is None or keys is None:
        if insecure:
            return
        if keys is None:
            raise UnsignedMessageError(
                f"the worker has no {FLEET_KEY_ENV} and cannot check the message's signature"
            )
        raise UnsignedMessageError("the message is unsigned; hoist workers act only on signed ones")
    if not isinstance(mac, str):
        raise ForgedMessageError(f"the message's {MAC_FIELD!r} is not a string")
    data = canonical(body)
    for key in keys.mac_keys:
        if hmac.compare_digest(hmac.new(key, data, hashlib.sha256).hexdigest(), mac):
            return
    raise ForgedMessageError(
        "the message's signature does not match its body under any fleet key in force "
        "(forged, altered, or signed with a key the workers no longer accept)"
    )
