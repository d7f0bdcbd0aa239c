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
from urllib.parse import parse_qs, unquote, urlsplit

from hoist.errors import ConfigurationError, UnknownProviderError
from hoist.stores.base import ObjectStore

SCHEMES = ("s3", "sftp", "file")


def store_from_uri(uri: str) -> ObjectStore:
    """Return the store a URI names.

    Example:
        >>> store_from_uri("file:///tmp/hoist-store").get_uri("a.txt")
        'local://hoist-store/a.txt'
    """
    parts = urlsplit(uri)
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    if parts.password:
        raise ConfigurationError(
            f"store URI {parts._replace(netloc=parts.hostname or '').geturl()!r} carries a "
            "password; put credentials in the environment instead"
        )
    if parts.scheme == "s3":
        from hoist.stores.s3 import S3ObjectStore

        return S3ObjectStore(
            parts.netloc,
            unquote(parts.path).lstrip("/"),
            endpoint_url=query.get("endpoint_url"),
            region_name=query.get("region"),
            verify=query.get("verify", "auto"),  # type: ignore[arg-type]
        )
    if parts.scheme == "sftp":
        from hoist.stores.sftp import SFTPObjectStore

        return SFTPObjectStore(
            parts.hostname or "",
            parts.port or 22,
            username=unquote(parts.username) if parts.username else None,
            password=os.environ.get("HOIST_SFTP_PASSWORD"),
            key_filename=query.get("key_filename"),
            known_hosts=query.get("known_hosts"),
            cwd=unquote(parts.path) or None,
        )
    if parts.scheme == "file":
        from hoist.stores.libcloud import LibcloudObjectStore

        directory = os.path.abspath(unquote(parts.path))
        base, container = os.path.split(directory.rstrip("/"))
        if not container:
            raise ConfigurationError(f"store URI {uri!r} needs a directory below /")
        return LibcloudObjectStore("local", container, {"key": base})
    raise UnknownProviderError(
        f"store URI {uri!r} has an unknown scheme; use one of {', '.join(SCHEMES)}"
    )
