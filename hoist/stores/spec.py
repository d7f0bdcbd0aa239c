"""A store described in a message: which class, which arguments, no secret in the clear.

Ranks describe the store they log to; workers build it. Only arguments known
to be public (:data:`PUBLIC_ARGUMENTS`: bucket, prefix, endpoint, host, port,
timeouts …) travel as they are; every other argument, whatever its name
(``secret``, ``password``, ``ex_force_auth_token`` …), is sealed with the fleet
key (``HOIST_FLEET_KEY``; see :mod:`hoist.keys`) or stays out of the message
entirely when the workers have their own credentials (boto3's chain, an SSH
key file on the worker).

A seal is bound to its store: it holds the identity of the store it was made
for (the kind and every public argument: endpoint or host, bucket or
container, prefix …) and opens only for a spec with that identity, so sealed
credentials pasted into another spec are refused instead of being sent to
another endpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import InvalidToken

from hoist.errors import ConfigurationError, InvalidMessageError, UnknownProviderError
from hoist.keys import FLEET_KEY_ENV, FleetKeys, keys_from
from hoist.stores.base import ObjectStore

PUBLIC_ARGUMENTS = frozenset(
    {
        # where: the store's identity
        "bucket",
        "container",
        "prefix",
        "provider",
        "endpoint_url",
        "region_name",
        "region",
        "host",
        "port",
        "secure",
        "path",
        "cwd",
        "username",
        "profile_name",
        "key_filename",
        "known_hosts",
        "api_version",
        # how: transfer and timeouts
        "provider_kwargs",
        "transfer_config",
        "multipart_threshold",
        "part_size",
        "max_concurrency",
        "request_checksum_calculation",
        "verify",
        "connect_timeout",
        "read_timeout",
        "io_timeout",
        "timeout",
        "max_attempts",
    }
)
"""Store arguments that travel in the clear; every other argument is sealed.

An allow-list, not a list of secrets: a credential under a name nobody
thought of (Libcloud's ``ex_force_auth_token``) is sealed all the same.
"""

STORE_KINDS = ("s3", "sftp", "libcloud")


def store_class(kind: str) -> type[ObjectStore]:
    """The store class of a spec kind (``"s3"`` → ``S3ObjectStore``).

    Example:
        >>> store_class("libcloud").__name__
        'LibcloudObjectStore'
    """
    if kind == "s3":
        # Here, not at the top: it imports boto3, which only an S3 user needs.
        from hoist.stores.s3 import S3ObjectStore

        return S3ObjectStore
    if kind == "sftp":
        # Here, not at the top: it imports paramiko, which only an SFTP user needs.
        from hoist.stores.sftp import SFTPObjectStore

        return SFTPObjectStore
    if kind == "libcloud":
        # Here, not at the top: it imports libcloud, which only a Libcloud user needs.
        from hoist.stores.libcloud import LibcloudObjectStore

        return LibcloudObjectStore
    raise UnknownProviderError(f"unknown store kind {kind!r}; use one of {', '.join(STORE_KINDS)}")


def kind_of(store_cls: type[ObjectStore]) -> str:
    """The spec kind for a store class (``S3ObjectStore`` → ``"s3"``)."""
    for kind in STORE_KINDS:
        # A subclass of a kind's class exists only once that class's module is
        # loaded: the other kinds (boto3, paramiko: 0.2 s a process) need not be.
        if f"hoist.stores.{kind}" in sys.modules and issubclass(store_cls, store_class(kind)):
            return kind
    raise ConfigurationError(
        f"{store_cls.__name__} is not a hoist store class; use S3ObjectStore, SFTPObjectStore "
        "or LibcloudObjectStore"
    )


def _public_names(kind: str, kwargs: dict[str, Any]) -> frozenset[str]:
    # Libcloud's `local` driver takes its base directory as `key`: a path, not a
    # credential, and the allow-list of stores must see it.
    if kind == "libcloud" and str(kwargs.get("provider", "")).lower() == "local":
        return PUBLIC_ARGUMENTS | {"key"}
    return PUBLIC_ARGUMENTS


def store_identity(kind: str, kwargs: dict[str, Any]) -> str:
    """The canonical text of a store's kind and public arguments: what a seal is bound to."""
    return json.dumps([kind, kwargs], sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class StoreSpec:
    """A store as it travels in task messages.

    Parameters:
        kind: ``"s3"``, ``"sftp"`` or ``"libcloud"``.
        kwargs: the constructor's arguments without credentials.
        sealed: the credentials, encrypted with the fleet key, or None.

    Example:
        >>> import json
        >>> from hoist.keys import new_fleet_key
        >>> key = new_fleet_key()
        >>> spec = StoreSpec.describe("s3", {"bucket": "b", "aws_secret_access_key": "s"}, key)
        >>> spec.kwargs
        {'bucket': 'b'}
        >>> "aws_secret_access_key" in json.dumps(spec.to_json())
        False
        >>> spec.unseal(key)
        {'aws_secret_access_key': 's'}
    """

    kind: str
    kwargs: dict[str, Any]
    sealed: str | None = None
    store_id: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.store_id:
            identity = store_identity(self.kind, self.kwargs)
            object.__setattr__(self, "store_id", hashlib.sha256(identity.encode()).hexdigest()[:16])

    @classmethod
    def describe(
        cls, kind: str, kwargs: dict[str, Any], fleet_key: str | FleetKeys | None
    ) -> StoreSpec:
        """Split ``kwargs`` into public arguments and credentials sealed for this store."""
        store_class(kind)  # unknown kinds fail here, in the caller
        public, secrets = _split(kwargs, _public_names(kind, kwargs))
        if not secrets:
            return cls(kind, public)
        keys = keys_from(fleet_key)
        if keys is None:
            names = ", ".join(sorted(_flatten_names(secrets)))
            raise ConfigurationError(
                f"the store arguments carry credentials ({names}) and hoist never puts them on "
                f"the broker in the clear: set {FLEET_KEY_ENV} to the same key on ranks and "
                "workers (`hoist keygen` makes one), or give the workers the credentials in "
                "their own environment and leave them out here"
            )
        sealed = {"store": store_identity(kind, public), "secrets": secrets}
        token = keys.sealer.encrypt(json.dumps(sealed).encode()).decode("ascii")
        return cls(kind, public, token)

    def unseal(self, fleet_key: str | FleetKeys | None) -> dict[str, Any]:
        """The sealed credentials, opened with ``fleet_key`` (empty when none were sealed).

        Raises:
            ConfigurationError: no key, a key that does not open the seal, or a
                seal made for another store (another endpoint, bucket, kind …).
        """
        if self.sealed is None:
            return {}
        keys = keys_from(fleet_key)
        if keys is None:
            raise ConfigurationError(
                f"this upload's store credentials are sealed, but the worker has no "
                f"{FLEET_KEY_ENV}; start workers with the same key as the ranks"
            )
        try:
            opened = json.loads(keys.sealer.decrypt(self.sealed.encode("ascii")))
        except (InvalidToken, UnicodeEncodeError):
            raise ConfigurationError(
                f"the worker's {FLEET_KEY_ENV} does not open this upload's sealed "
                "credentials; ranks and workers must share one key"
            ) from None
        if not isinstance(opened, dict) or opened.get("store") != store_identity(
            self.kind, self.kwargs
        ):
            raise ConfigurationError(
                "this upload's sealed credentials were sealed for another store; a seal opens "
                "only for the store (kind, endpoint or host, bucket or container, prefix) it "
                "was made for"
            )
        return dict(opened["secrets"])

    def client_identity(self, fleet_key: str | FleetKeys | None) -> str:
        """What makes two specs share one client: the store and the credentials inside the
        seal (each logger seals with a fresh nonce, so the sealed text differs)."""
        secrets = json.dumps(self.unseal(fleet_key), sort_keys=True, default=str)
        return f"{self.store_id}:{hashlib.sha256(secrets.encode()).hexdigest()[:32]}"

    def build(self, fleet_key: str | FleetKeys | None) -> ObjectStore:
        """Construct the store, unsealing credentials with ``fleet_key``."""
        kwargs = _merge(dict(self.kwargs), self.unseal(fleet_key))
        return store_class(self.kind)(**kwargs)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "kwargs": self.kwargs, "sealed": self.sealed}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoreSpec:
        """Rebuild a spec from a message, refusing any that is not the shape ``to_json`` gives."""
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("kind"), str)
            or not isinstance(data.get("kwargs"), dict)
            or not isinstance(data.get("sealed"), (str, type(None)))
        ):
            raise InvalidMessageError(
                "the message's store must be an object with a string 'kind', an object "
                f"'kwargs' and a string or null 'sealed', not {str(data)[:80]}"
            )
        return cls(data["kind"], dict(data["kwargs"]), data.get("sealed"))


def _split(
    kwargs: dict[str, Any], public_names: frozenset[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate public arguments from the rest, at any depth of nesting."""
    public: dict[str, Any] = {}
    secrets: dict[str, Any] = {}
    for name, value in kwargs.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)  # e.g. S3TransferConfig, rebuilt by the store
        if isinstance(value, dict):
            if name not in public_names:  # a dict under an unknown name is sealed whole
                _check_serializable(name, value)
                secrets[name] = value
                continue
            inner_public, inner_secrets = _split(value, public_names)
            public[name] = inner_public
            if inner_secrets:
                secrets[name] = inner_secrets
        elif name not in public_names and value is not None:
            _check_serializable(name, value)
            secrets[name] = value
        else:
            _check_serializable(name, value)
            public[name] = value
    return public, secrets


def _merge(public: dict[str, Any], secrets: dict[str, Any]) -> dict[str, Any]:
    merged = dict(public)
    for name, value in secrets.items():
        merged[name] = _merge(merged.get(name, {}), value) if isinstance(value, dict) else value
    return merged


def _flatten_names(secrets: dict[str, Any], prefix: str = "") -> list[str]:
    names: list[str] = []
    for name, value in secrets.items():
        if isinstance(value, dict):
            names.extend(_flatten_names(value, f"{prefix}{name}."))
        else:
            names.append(f"{prefix}{name}")
    return names


def _check_serializable(name: str, value: Any) -> None:
    try:
        json.dumps(value)
    except TypeError:
        raise ConfigurationError(
            f"store argument {name}={value!r} cannot travel to the workers (not JSON); pass "
            "plain values (strings, numbers, lists, dicts)"
        ) from None
