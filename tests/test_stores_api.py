"""The names `hoist.stores` offers, and that offering them imports no client library."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import hoist.stores
from hoist.stores import (
    LibcloudObjectStore,
    ObjectStore,
    S3ObjectStore,
    SFTPObjectStore,
    base,
    libcloud,
    s3,
    sftp,
)

CLIENT_LIBRARIES = ("boto3", "botocore", "paramiko", "libcloud")


def test_the_stores_import_from_the_package() -> None:
    # The names a user expects, the very classes the backend modules define.
    assert ObjectStore is base.ObjectStore
    assert S3ObjectStore is s3.S3ObjectStore
    assert SFTPObjectStore is sftp.SFTPObjectStore
    assert LibcloudObjectStore is libcloud.LibcloudObjectStore
    for store_cls in (S3ObjectStore, SFTPObjectStore, LibcloudObjectStore):
        assert issubclass(store_cls, ObjectStore)


def test_every_exported_name_resolves_and_is_listed() -> None:
    assert set(hoist.stores.__all__) == set(hoist.stores._EXPORTS)
    for name in hoist.stores.__all__:
        assert getattr(hoist.stores, name) is not None
        assert name in dir(hoist.stores)
    for name in ("ObjectStore", "S3ObjectStore", "SFTPObjectStore", "LibcloudObjectStore"):
        assert name in hoist.stores.__all__


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_store"):
        hoist.stores.no_such_store  # noqa: B018 - the lookup is the test


def _modules_after(code: str) -> set[str]:
    """The client libraries imported by ``code`` in a fresh interpreter."""
    probe = (
        f"{code}\n"
        "import json, sys\n"
        f"roots = {{m.split('.')[0] for m in sys.modules}} & set({CLIENT_LIBRARIES!r})\n"
        "print(json.dumps(sorted(roots)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_importing_the_package_imports_no_client_library() -> None:
    assert _modules_after("import hoist.stores") == set()


def test_the_interface_alone_imports_no_client_library() -> None:
    assert _modules_after("from hoist.stores import ObjectStore") == set()


def test_one_backend_imports_only_its_own_client() -> None:
    assert _modules_after("from hoist.stores import SFTPObjectStore") == {"paramiko"}


def test_the_light_modules_import_no_client_library() -> None:
    # hoist.settings imports the allow-list, which parses URIs and names store kinds:
    # none of that may cost a rank or the CLI boto3, paramiko or libcloud.
    code = "import hoist.stores.allowed, hoist.stores.spec, hoist.stores.uri"
    assert _modules_after(code) == set()
