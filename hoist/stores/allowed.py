"""The stores a fleet uploads to: ``hoist worker --allow-store URI``.

A rank holds the fleet key, so a message can be signed and still aim
somewhere it should not (a compromised rank, a typo in a template). Workers
therefore compare every destination with their own allow-list before they
build a store, unseal credentials or open a staged file. An entry is a
store URI, the same that ``hoist selfcheck --store`` takes:

==========================================================  ============================
``s3://ckpts/runs/?endpoint_url=http://minio:9000``         bucket ``ckpts``, ``runs/``
``s3://ckpts``                                              the whole bucket, on AWS
``sftp://hoist@backup.lan:22/srv/ckpts``                    that host, below the folder
``file:///srv/hoist-store/artifacts``                       ``local``: base and container
``libcloud://google_storage/ckpts/runs/?host=storage.lan``  another Libcloud provider
==========================================================  ============================

A destination matches an entry when the kind, the endpoint or host, the
bucket or container are equal and its object lies below the entry's prefix.
Libcloud ``local`` is allowed only for a base directory named explicitly,
and never with the containers ``.`` or ``..`` or an object that resolves
outside the base, even on a fleet started with ``--allow-any-store``.

Example:
    >>> allowed = AllowedStores.parse(["s3://ckpts/runs/?endpoint_url=http://minio:9000"])
    >>> spec = ("s3", {"bucket": "ckpts", "prefix": "runs/", "endpoint_url": "http://minio:9000/"})
    >>> allowed.refusal(*spec, "bert/ep1.pt") is None
    True
    >>> allowed.refusal("s3", {"bucket": "evil", "endpoint_url": "http://minio:9000"}, "x")
    'store not allowed on this fleet: s3 bucket evil at http://minio:9000 (allowed: s3://ckpts/runs/?endpoint_url=http://minio:9000)'
"""

from __future__ import annotations

import functools
import os
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from hoist.errors import ConfigurationError
from hoist.stores.uri import parse_store_uri

ALLOWED_STORES_ENV = "HOIST_ALLOWED_STORES"
"""Allowed store URIs, separated by whitespace."""


@dataclass(frozen=True)
class Destination:
    """Where one object goes, in the terms an allow-list entry is written in.

    Parameters:
        kind: ``s3``, ``sftp`` or ``libcloud:<provider>``.
        location: the endpoint URL (``aws`` for AWS), ``host:port``, or a
            ``local`` store's real base directory.
        container: the bucket or container ('' for SFTP).
        path: the object's full name inside the container (the S3 prefix
            included; an SFTP path joined to its directory).
    """

    kind: str
    location: str
    container: str
    path: str

    def describe(self) -> str:
        if self.kind == "sftp":
            return f"sftp host {self.location} path {self.path}"
        noun = "bucket" if self.kind == "s3" else "container"
        return f"{self.kind} {noun} {self.container} at {self.location}"


def destination(kind: str, kwargs: dict[str, Any], object_name: str) -> Destination:
    """The :class:`Destination` of ``object_name`` in the store ``(kind, kwargs)``.

    ``kwargs`` are the spec's public arguments (identity is never sealed).
    """
    if kind == "s3":
        endpoint = _endpoint(kwargs.get("endpoint_url"))
        prefix = str(kwargs.get("prefix") or "")
        return Destination("s3", endpoint, str(kwargs.get("bucket", "")), prefix + object_name)
    if kind == "sftp":
        location = f"{str(kwargs.get('host', '')).lower()}:{int(kwargs.get('port') or 22)}"
        cwd = str(kwargs.get("cwd") or "")
        path = posixpath.normpath(posixpath.join(cwd, object_name))
        return Destination("sftp", location, "", path)
    provider = str(kwargs.get("provider", "")).lower()
    provider_kwargs = kwargs.get("provider_kwargs") or {}
    container = str(kwargs.get("container", ""))
    if provider == "local":
        base = os.path.realpath(str(provider_kwargs.get("key", "")))
        return Destination("libcloud:local", base, container, object_name)
    host = str(provider_kwargs.get("host") or "").lower()
    port = provider_kwargs.get("port")
    location = f"{host}:{port}" if host and port else host or "default"
    return Destination(f"libcloud:{provider}", location, container, object_name)


def _endpoint(url: Any) -> str:
    if not url:
        return "aws"
    parts = urlsplit(str(url))
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


def _entry(uri: str) -> Destination:
    """An allow-list entry: the destination prefix a URI names."""
    parts = urlsplit(uri)
    if parts.scheme == "libcloud":
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        container, _, prefix = unquote(parts.path).lstrip("/").partition("/")
        kwargs: dict[str, Any] = {
            "provider": parts.netloc,
            "container": container,
            "provider_kwargs": {k: v for k, v in query.items() if k in ("host", "port")},
        }
        if not parts.netloc or not container:
            raise ConfigurationError(
                f"allowed store {uri!r} needs a provider and a container: "
                "libcloud://PROVIDER/CONTAINER[/PREFIX]?host=HOST"
            )
        return destination("libcloud", kwargs, prefix)
    kind, kwargs = parse_store_uri(uri)
    if kind == "sftp":
        kwargs = {**kwargs, "cwd": kwargs.get("cwd") or ""}
        entry = destination("sftp", kwargs, "")
        folder = "" if entry.path in (".", "") else entry.path.rstrip("/") + "/"
        return Destination(entry.kind, entry.location, "", folder)
    if kind == "libcloud" and not os.path.isabs(kwargs["provider_kwargs"]["key"]):
        raise ConfigurationError(f"allowed store {uri!r} must name an absolute directory")
    return destination(kind, kwargs, "")


@dataclass(frozen=True)
class AllowedStores:
    """The destinations a worker may upload to; ``any_store`` lifts the list.

    Parameters:
        entries: parsed allow-list entries.
        uris: the URIs they came from, for messages.
        any_store: ``--allow-any-store``: every destination but unsafe local paths.
    """

    entries: tuple[Destination, ...] = ()
    uris: tuple[str, ...] = ()
    any_store: bool = False

    @classmethod
    def parse(cls, uris: Iterable[str], any_store: bool = False) -> AllowedStores:
        """Read ``--allow-store`` URIs.

        Raises:
            ConfigurationError: a URI that names no store, in one sentence.
        """
        kept = tuple(uri for uri in uris if uri.strip())
        return cls(tuple(_entry(uri) for uri in kept), kept, any_store)

    @property
    def configured(self) -> bool:
        """Whether the worker was told where it may upload (a list, or any store)."""
        return bool(self.entries) or self.any_store

    def refusal_of(self, kind: str, kwargs: dict[str, Any]) -> Callable[..., str | None]:
        """:meth:`refusal` bound to one store: how retention checks the marks it reads back."""
        return functools.partial(self.refusal, kind, kwargs)

    def refusal(self, kind: str, kwargs: dict[str, Any], *object_names: str) -> str | None:
        """Why the fleet must not write ``object_names`` to this store, or None if it may."""
        for object_name in object_names:
            target = destination(kind, kwargs, object_name)
            unsafe = _unsafe_local(kwargs, target) if target.kind == "libcloud:local" else None
            if unsafe is not None:
                return unsafe
            if self.any_store:
                continue
            if not any(_matches(entry, target) for entry in self.entries):
                shown = ", ".join(_short(uri) for uri in self.uris[:3]) or "none"
                return f"store not allowed on this fleet: {target.describe()} (allowed: {shown})"
        return None


def _matches(entry: Destination, target: Destination) -> bool:
    return (
        entry.kind == target.kind
        and entry.location == target.location
        and entry.container == target.container
        and target.path.startswith(entry.path)
    )


def _unsafe_local(kwargs: dict[str, Any], target: Destination) -> str | None:
    """Why a Libcloud ``local`` destination could leave its base directory, or None."""
    key = str((kwargs.get("provider_kwargs") or {}).get("key", ""))
    if not os.path.isabs(key):
        return f"a local store's base directory must be absolute, not {key[:80]!r}"
    container = target.container
    if container in ("", ".", "..") or "/" in container or "\\" in container or "\0" in container:
        return f"local store container {container[:80]!r} is not a plain directory name"
    home = os.path.join(target.location, container)
    resolved = os.path.realpath(os.path.join(home, target.path))
    if os.path.commonpath([home, resolved]) != home or resolved == home:
        return f"object {target.path[:80]!r} would resolve outside the local store's container"
    return None


def _short(uri: str, limit: int = 60) -> str:
    return uri if len(uri) <= limit else uri[: limit - 3] + "..."
