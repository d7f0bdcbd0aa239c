"""hoist: a distributed uploader for the artifacts of multi-node ML training.

Example (needs a fleet: README's quickstart; run by tests/test_pipeline.py):
    >>> from hoist import ObjectStoreLogger, LogLevel, S3ObjectStore
    >>> logger = ObjectStoreLogger(object_store_cls=S3ObjectStore,  # doctest: +SKIP
    ...                            object_store_kwargs={"bucket": "ckpts"})
    >>> logger.file_artifact(LogLevel.EPOCH, "ep1.pt", "/tmp/ep1.pt")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ObjectStoreLogger": "hoist.logger.logger",
    "LogLevel": "hoist.logger.levels",
    "ObjectStore": "hoist.stores.base",
    "S3ObjectStore": "hoist.stores.s3",
    "SFTPObjectStore": "hoist.stores.sftp",
    "LibcloudObjectStore": "hoist.stores.libcloud",
    "download_artifact": "hoist.download",
    "download_checkpoint": "hoist.download",
    "errors": "hoist",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import hoist` does not pull in boto3, paramiko and Celery.
    if name == "errors":
        import hoist.errors

        return hoist.errors
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hoist' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
