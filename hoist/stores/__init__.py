"""Object stores: one interface, three backends.

Example:
    >>> from hoist.stores import LibcloudObjectStore, ObjectStore
    >>> issubclass(LibcloudObjectStore, ObjectStore)
    True

The names below are imported on first use, so that ``import hoist.stores``
does not pull in boto3, paramiko or Libcloud: a rank logging to S3 never
needs paramiko.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # For type checkers only; at run time __getattr__ imports on first use.
    from hoist.stores.base import ObjectStat, ObjectStore, UploadResult, Verification
    from hoist.stores.checksum import Checksum
    from hoist.stores.libcloud import LibcloudObjectStore
    from hoist.stores.s3 import S3ObjectStore, S3TransferConfig
    from hoist.stores.sftp import SFTPObjectStore
    from hoist.stores.uri import store_from_uri

_EXPORTS = {
    "ObjectStore": "hoist.stores.base",
    "ObjectStat": "hoist.stores.base",
    "UploadResult": "hoist.stores.base",
    "Verification": "hoist.stores.base",
    "Checksum": "hoist.stores.checksum",
    "S3ObjectStore": "hoist.stores.s3",
    "S3TransferConfig": "hoist.stores.s3",
    "SFTPObjectStore": "hoist.stores.sftp",
    "LibcloudObjectStore": "hoist.stores.libcloud",
    "store_from_uri": "hoist.stores.uri",
}

__all__ = [
    "Checksum",
    "LibcloudObjectStore",
    "ObjectStat",
    "ObjectStore",
    "S3ObjectStore",
    "S3TransferConfig",
    "SFTPObjectStore",
    "UploadResult",
    "Verification",
    "store_from_uri",
]


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562), so that importing one backend does not import the others' clients.
    module = _EXPORTS.get(name)
    if module is None:
        # AttributeError, not ImportError: `from hoist.stores import s3` relies on it
        # to fall back to importing the submodule.
        raise AttributeError(f"module 'hoist.stores' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
