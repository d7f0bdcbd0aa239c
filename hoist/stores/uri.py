"""Build a store from a URI, for the command line and configuration files.

==========================================================  ===================
``s3://BUCKET/PREFIX?endpoint_url=URL&region=R&verify=V``   S3ObjectStore
``sftp://USER@HOST:PORT/DIR?known_hosts=F&key_filename=F``  SFTPObjectStore
``file:///DIR``                                             Libcloud ``local``
==========================================================  ===================

Secrets never go in a URI (it ends up in logs and shell history): S3 takes
boto3's usual credential chain, SFTP a key file or ``HOIST_SFTP_PASSWORD``.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from hoist.errors import ConfigurationError, UnknownProviderError
from hoist.stores.base import ObjectStore
from hoist.stores.spec import store_class

SCHEMES = ("s3", "sftp", "file")


def store_from_uri(uri: str, sftp_password: str | None = None) -> ObjectStore:
    """Return the store a URI names; ``sftp_password`` for an ``sftp://`` URI without a key.

    Example:
        >>> store_from_uri("file:///tmp/hoist-store").get_uri("a.txt")
        'local://hoist-store/a.txt'
    """
    kind, kwargs = parse_store_uri(uri, sftp_password)
    return store_class(kind)(**kwargs)


def parse_store_uri(uri: str, sftp_password: str | None = None) -> tuple[str, dict[str, Any]]:
    """The store kind (``"s3"``, ``"sftp"``, ``"libcloud"``) and constructor arguments a URI names.

    Example:
        >>> parse_store_uri("s3://ckpts/team?endpoint_url=http://minio:9000")
        ('s3', {'bucket': 'ckpts', 'prefix': 'team/', 'endpoint_url': 'http://minio:9000'})
    """
    parts = urlsplit(uri)
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    if parts.password:
        raise ConfigurationError(
            f"store URI {parts._replace(netloc=parts.hostname or '').geturl()!r} carries a "
            "password; put credentials in the environment instead"
        )
    if parts.scheme == "s3":
        prefix = unquote(parts.path).strip("/")
        # The URI names a folder: keys go below it, not glued to its name.
        kwargs: dict[str, Any] = {"bucket": parts.netloc, "prefix": f"{prefix}/" if prefix else ""}
        for option, name in (("endpoint_url", "endpoint_url"), ("region", "region_name"),
                             ("verify", "verify")):  # fmt: skip
            if option in query:
                kwargs[name] = query[option]
        return "s3", kwargs
    if parts.scheme == "sftp":
        kwargs = {"host": parts.hostname or "", "port": parts.port or 22}
        optional = {
            "username": unquote(parts.username) if parts.username else None,
            "password": sftp_password,
            "key_filename": query.get("key_filename"),
            "known_hosts": query.get("known_hosts"),
            "cwd": unquote(parts.path) or None,
        }
        kwargs.update({name: value for name, value in optional.items() if value is not None})
        return "sftp", kwargs
    if parts.scheme == "file":
        directory = os.path.abspath(unquote(parts.path))
        base, container = os.path.split(directory.rstrip("/"))
        if not container:
            raise ConfigurationError(f"store URI {uri!r} needs a directory below /")
        return "libcloud", {
            "provider": "local",
            "container": container,
            "provider_kwargs": {"key": base},
        }
    raise UnknownProviderError(
        f"store URI {uri!r} has an unknown scheme; use one of {', '.join(SCHEMES)}"
    )
