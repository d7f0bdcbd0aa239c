"""Any storage provider Apache Libcloud speaks: local directories, S3, MinIO, GCS, Azure, ...

The constructor takes the same ``(provider, container, provider_kwargs)`` as
MosaicML Composer's ``LibcloudObjectStore``, so existing configurations carry
over unchanged.

Libcloud's own integrity checks are too weak to prove an upload:

- the ``local`` driver's ``Object.hash`` is a hash of the file's mtime, not of
  its content, and it writes objects in place, so a reader can see half a file;
- the S3 driver's streamed (multipart) upload skips its hash check, and a
  multipart ETag is not a content hash anyway.

So this store never trusts a reported hash (:attr:`ObjectStat.checksum` is
always None) and verifies every upload by reading the object back and
comparing its CRC64NVME with the one computed while sending it.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import inspect
import os
import re
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

import requests
from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
from libcloud.common.types import InvalidCredsError, LibcloudError, ProviderError
from libcloud.storage.base import Container, Object, StorageDriver
from libcloud.storage.providers import DRIVERS, get_driver
from libcloud.storage.types import (
    ContainerDoesNotExistError,
    ObjectDoesNotExistError,
    ObjectError,
)

from hoist.durability import fsync_directory, fsync_file
from hoist.errors import (
    ConfigurationError,
    ContainerNotFoundError,
    HoistError,
    ObjectNotFoundError,
    PermanentStoreError,
    SourceFileError,
    StoreAuthError,
    StoreConnectionError,
    StoreFullError,
    StoreThrottledError,
    TransientStoreError,
    UnknownProviderError,
)
from hoist.stores.base import ObjectStat, ObjectStore, Verification
from hoist.stores.checksum import CHUNK_SIZE, Checksum, HashingReader, Progress
from hoist.stores.names import FILE_SEGMENT_MAX_BYTES, temporary_name

LOCAL = "local"
_PROBE_OBJECT = ".hoist-check"
_COMMON_PROVIDERS = ("local", "s3", "minio", "google_storage", "azure_blobs")
# Libcloud reports many HTTP failures only as text: "Unknown error. Status code: 503",
# "Unexpected status code: 500", "Error in multipart abort. status_code=500".
_STATUS_IN_MESSAGE = re.compile(r"status[ _]code\D{0,3}(\d{3})", re.IGNORECASE)
_CONNECTION_ERRORS = (
    requests.exceptions.ConnectionError,  # refused, reset, DNS, SSL
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,  # a download cut short
    ConnectionError,
    TimeoutError,
)


class LibcloudObjectStore(ObjectStore):
    """A container (bucket) of any Apache Libcloud storage provider.

    Parameters:
        provider: a Libcloud storage provider name (``libcloud.storage.types.Provider``),
            for example ``"local"``, ``"s3"``, ``"minio"``, ``"google_storage"``,
            ``"azure_blobs"``. It is also the URI scheme: ``minio://bucket/name``.
        container: the container or bucket; it must already exist.
        provider_kwargs: passed to the provider's driver class. For ``local``:
            ``{"key": "/path/to/base_dir"}`` (the container is the directory
            ``base_dir/container``). For ``s3`` and ``minio``: ``{"key": ...,
            "secret": ..., "host": ..., "port": ..., "secure": False}``.

    How an upload becomes visible: the ``local`` driver writes straight into the
    final file, so there hoist uploads to a hidden temporary name beside it,
    verifies that, fsyncs it and renames it into place; a reader sees the old
    object or the whole new one, never part of one. HTTP object stores (s3,
    minio, google_storage, azure_blobs, ...) only create an object when its PUT
    or multipart completion succeeds, so there hoist uploads under the final
    name and then verifies it; an object that fails verification is deleted.

    Memory stays bounded whatever the file size: the file is streamed in
    8 MiB chunks, hashed on the way (Libcloud's S3 driver then sends 5 MiB parts).

    Each thread gets its own driver: a Libcloud driver keeps the request in
    flight on its one connection object (method, path and body, which the AWS
    signer reads back; the last response), so threads sharing it could sign or
    read each other's requests.

    Example:
        >>> import pathlib, shutil, tempfile
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> (root / "artifacts").mkdir()  # the container: a directory in the base
        >>> _ = (root / "ep1.pt").write_bytes(b"weights")
        >>> store = LibcloudObjectStore("local", "artifacts", {"key": str(root)})
        >>> store.upload_file("run1/ep1.pt", str(root / "ep1.pt")).uri
        'local://artifacts/run1/ep1.pt'
        >>> shutil.rmtree(root)
        >>> store = LibcloudObjectStore(
        ...     "minio", "checkpoints",
        ...     {"key": "AKIA...", "secret": "...", "host": "minio.lan", "port": 9000,
        ...      "secure": False},
        ... )
    """

    scheme = "libcloud"
    trusts_reported_checksum = False

    def __init__(
        self, provider: str, container: str, provider_kwargs: dict[str, Any] | None = None
    ) -> None:
        self.provider = _known_provider(provider)
        self.scheme = self.provider  # type: ignore[misc]  # per instance: one class, many providers
        if not container or "/" in container:
            raise ConfigurationError(
                f"container name {container!r} is invalid; give the bare container or bucket name"
            )
        self.container = container
        self._driver_cls = _driver_class(self.provider)
        self._given_kwargs = sorted(provider_kwargs or {})
        self._driver_kwargs = dict(provider_kwargs or {})
        # Only the local driver writes in place; see the class docstring.
        self._renames_into_place = self.provider == LOCAL
        if self._renames_into_place:
            self.max_segment_bytes = FILE_SEGMENT_MAX_BYTES
        if self._renames_into_place:
            # Libcloud's per-path lock leaves a lock file in /tmp for every path
            # written, one per upload with our temporary names. Each upload writes
            # a fresh temporary name and publishes it by an atomic rename, so the
            # lock protects nothing here.
            self._driver_kwargs.setdefault("ex_use_locking", False)
        self._local = threading.local()
        self._drivers: list[StorageDriver] = []
        self._drivers_lock = threading.Lock()
        self._endpoint = self._describe_endpoint(self._driver())  # also checks the kwargs now

    def get_uri(self, object_name: str) -> str:
        return f"{self.provider}://{self.container}/{object_name.lstrip('/')}"

    def close(self) -> None:
        with self._drivers_lock:
            drivers, self._drivers = self._drivers, []
        for driver in drivers:
            # HTTP drivers keep a requests.Session under driver.connection.connection.
            session = getattr(getattr(driver.connection, "connection", None), "session", None)
            if session is not None:
                session.close()

    # ----- primitives -------------------------------------------------------

    def _put_file(
        self, name: str, path: str, size: int, progress: Progress | None
    ) -> tuple[Checksum, Verification]:
        target = temporary_name(name) if self._renames_into_place else name
        with _open_source(path) as raw:
            reader = HashingReader(raw, progress)
            self._upload(reader.chunks(), target, cleanup_on_error=self._renames_into_place)
        sent, checksum = reader.hasher.size, reader.hasher.checksum
        try:
            if sent != size:
                raise SourceFileError(
                    f"{path} changed size while it was uploaded ({size} bytes, then {sent}); "
                    "upload it once it is completely written"
                )
            verified_by = self.verify(target, sent, checksum)
        except HoistError:
            # A bad object must not stay: a retry with overwrite=False would
            # take it for an object someone else wrote.
            self._delete_quietly(target)
            raise
        if target != name:
            self._publish(target, name)
        return checksum, verified_by

    def _put_bytes(self, name: str, data: bytes) -> Verification | None:
        target = temporary_name(name) if self._renames_into_place else name
        self._upload(iter([data]), target, cleanup_on_error=self._renames_into_place)
        if target != name:
            self._publish(target, name)
        return None  # Libcloud reports no checksum of what it wrote: verify reads back

    def _read_chunks(self, name: str) -> Iterator[bytes]:
        obj = self._object(name)
        try:
            yield from self._driver().download_object_as_stream(obj, chunk_size=CHUNK_SIZE)
        except FileNotFoundError:
            # The local driver opens the file only at the first read: it went
            # away after the lookup.
            raise ObjectNotFoundError(f"{self.get_uri(name)} does not exist") from None

    def _stat(self, name: str) -> ObjectStat:
        obj = self._object(name)
        # obj.hash is never a content checksum we can compare (see module docs).
        return ObjectStat(name, int(obj.size), None)

    def _delete(self, name: str) -> None:
        obj = self._object(name)
        # Both the local and the S3 drivers report some failures as False, not an exception.
        if not self._driver().delete_object(obj):
            raise PermanentStoreError(
                f"{self.provider} did not delete {self.get_uri(name)} ({self._endpoint})"
            )

    def _check(self) -> None:
        self._container()
        # S3 drivers ignore a 403 on the bucket lookup (it may be only HEAD that
        # is forbidden), so ask for one object too: wrong credentials fail here.
        with contextlib.suppress(ObjectDoesNotExistError):
            self._driver().get_object(self.container, _PROBE_OBJECT)

    def _translate(self, exc: Exception, name: str | None) -> HoistError | None:
        where = self.get_uri(name) if name else f"{self.provider}://{self.container}"
        if isinstance(exc, ContainerDoesNotExistError):
            return ContainerNotFoundError(self._missing_container_message())
        if isinstance(exc, ObjectDoesNotExistError):
            return ObjectNotFoundError(f"{where} does not exist")
        if isinstance(exc, _CONNECTION_ERRORS):
            return StoreConnectionError(
                f"cannot reach {self.provider} at {self._endpoint} for {where}: {exc}"
            )
        status = _http_status(exc)
        # Libcloud raises InvalidCredsError (http_code 401) for both 401 and 403.
        if isinstance(exc, InvalidCredsError) or status in (401, 403):
            return StoreAuthError(
                f"{self.provider} at {self._endpoint} refused access to {where}; check "
                f"key/secret in provider_kwargs and that they may read and write container "
                f"{self.container!r}"
            )
        if isinstance(exc, RateLimitReachedError) or status == 429:
            return StoreThrottledError(
                f"{self.provider} at {self._endpoint} answered HTTP {status} for {where}: "
                "too many requests; the fleet lowers its concurrency toward this store"
            )
        if (status or 0) >= 500:
            return TransientStoreError(
                f"{self.provider} at {self._endpoint} answered HTTP {status} for {where}; "
                "retry later"
            )
        if isinstance(exc, OSError):  # the local driver's own file operations
            return _translate_os_error(exc, where)
        return None

    # ----- helpers ----------------------------------------------------------

    def _driver(self) -> StorageDriver:
        driver: StorageDriver | None = getattr(self._local, "driver", None)
        if driver is None:
            driver = self._local.driver = self._new_driver()
            with self._drivers_lock:
                self._drivers.append(driver)
        return driver

    def _new_driver(self) -> StorageDriver:
        try:
            return self._driver_cls(**self._driver_kwargs)
        except TypeError as exc:
            takes = ", ".join(_parameters(self._driver_cls))
            raise ConfigurationError(
                f"provider_kwargs {self._given_kwargs} do not fit libcloud's "
                f"{self.provider!r} driver ({exc}); it takes: {takes}"
            ) from None
        except (LibcloudError, ValueError) as exc:
            base = self._driver_kwargs.get("key")
            if self._renames_into_place and base and not os.path.exists(base):
                raise ConfigurationError(
                    f"the base directory {base} of provider 'local' does not exist; create "
                    f"it first (container {self.container!r} is a directory inside it)"
                ) from None
            raise ConfigurationError(
                f"libcloud's {self.provider!r} driver rejected provider_kwargs: "
                f"{_libcloud_message(exc)}"
            ) from None

    def _object(self, name: str) -> Object:
        try:
            return self._driver().get_object(self.container, name)
        except ObjectDoesNotExistError:
            raise ObjectNotFoundError(f"{self.get_uri(name)} does not exist") from None
        except ObjectError:
            # The local driver's answer for a name that is a directory: a prefix
            # of other objects, as on S3, not an object.
            raise ObjectNotFoundError(
                f"{self.get_uri(name)} does not exist (it is a prefix of other objects)"
            ) from None

    def _container(self) -> Container:
        container: Container | None = getattr(self._local, "container", None)
        if container is None:
            container = self._local.container = self._driver().get_container(self.container)
        return container

    def _upload(self, chunks: Iterator[bytes], target: str, *, cleanup_on_error: bool) -> None:
        try:
            self._driver().upload_object_via_stream(chunks, self._container(), target)
        except BaseException:
            # A failed local write leaves a partial temporary file. A failed HTTP
            # upload creates nothing, and deleting the name could remove the
            # previous, good object.
            if cleanup_on_error:
                self._delete_quietly(target)
            raise

    def _publish(self, temporary: str, name: str) -> None:
        """Rename a verified temporary object of the local provider into place."""
        source, target = self._local_path(temporary), self._local_path(name)
        try:
            fsync_file(source)  # the bytes reach the disk before the name points at them
            os.replace(source, target)
            fsync_directory(os.path.dirname(target))
        except BaseException:
            self._delete_quietly(temporary)
            raise

    def _local_path(self, name: str) -> str:
        # The local driver keeps an object at base_path/container/object_name
        # (libcloud/storage/drivers/local.py, get_object_cdn_url).
        container_dir: str = self._driver().get_container_cdn_url(self._container())
        return os.path.join(container_dir, name)

    def _delete_quietly(self, name: str) -> None:
        """Best-effort cleanup on an error path: the original error matters more."""
        with contextlib.suppress(Exception):
            self._delete(name)

    def _missing_container_message(self) -> str:
        if self._renames_into_place:
            return (
                f"container {self.container!r} of provider 'local' does not exist: there is no "
                f"directory {self._endpoint}; create it first"
            )
        return (
            f"container {self.container!r} does not exist at {self.provider} "
            f"({self._endpoint}); create it first"
        )

    def _describe_endpoint(self, driver: StorageDriver) -> str:
        if self._renames_into_place:
            return os.path.join(str(getattr(driver, "base_path", "")), self.container)
        connection = driver.connection
        return f"{getattr(connection, 'host', '?')}:{getattr(connection, 'port', '?')}"


def _known_provider(provider: str) -> str:
    """The canonical provider name, or raise :class:`UnknownProviderError`."""
    known = {str(name).lower(): str(name) for name in DRIVERS}
    canonical = known.get(str(provider).lower())
    if canonical is None:
        close = difflib.get_close_matches(str(provider).lower(), list(known), n=3)
        suggestion = f"did you mean {', '.join(close)}? " if close else ""
        raise UnknownProviderError(
            f"libcloud has no storage provider {provider!r}; {suggestion}common ones are "
            f"{', '.join(_COMMON_PROVIDERS)} (all: libcloud.storage.types.Provider)"
        )
    return canonical


def _driver_class(provider: str) -> type[StorageDriver]:
    try:
        cls: type[StorageDriver] = get_driver(provider)
    except ImportError as exc:
        # e.g. the local driver needs fasteners, which libcloud does not depend on
        raise ConfigurationError(
            f"libcloud's {provider!r} driver cannot be imported: {exc}"
        ) from None
    return cls


def _parameters(cls: type) -> list[str]:
    try:
        names = list(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        return ["?"]
    return [name for name in names if name not in ("args", "kwargs")]


def _open_source(path: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise SourceFileError(f"cannot upload {path!r}: {exc.strerror}") from exc


def _http_status(exc: Exception) -> int | None:
    """The HTTP status behind a Libcloud exception, where it can be known."""
    if isinstance(exc, BaseHTTPError):
        return int(exc.code)
    if isinstance(exc, ProviderError):
        return int(exc.http_code)
    if isinstance(exc, LibcloudError):
        match = _STATUS_IN_MESSAGE.search(_libcloud_message(exc))
        return int(match.group(1)) if match else None
    return None


def _libcloud_message(exc: Exception) -> str:
    # str() of a LibcloudError is a repr that names the driver object.
    value = getattr(exc, "value", None)
    return str(value) if value else str(exc)


def _translate_os_error(exc: OSError, where: str) -> HoistError | None:
    if isinstance(exc, PermissionError):
        return StoreAuthError(f"permission denied writing or reading {where}: {exc}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFullError(f"no space left for {where}: {exc}")
    return None
