"""The one interface every object store implements.

:class:`ObjectStore` holds the logic all stores share (name checks, the
overwrite rule, verification, atomic downloads, error translation); a backend
supplies a handful of primitives that each talk to its server once:

==================  =========================================================
``_put_file``       upload a local file, hashing it in the same pass, and
                    make it visible only once complete and verified
``_put_file_if_absent``  optional: ``_put_file`` only if nothing holds the name,
                    in the same request (S3's ``If-None-Match: *``)
``_put_bytes``      write a small object in one request (and say whether
                    the store's answer already proved its bytes)
``_read_chunks``    stream an object's bytes
``_stat``           size and, where the store reports one, its checksum
``_delete``         remove an object
``_translate``      turn a client library's exception into a hoist error
==================  =========================================================

Object names are ``/``-separated and relative to the store's prefix or
working directory. Names are checked before any request is made.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, NoReturn, TypeVar

from hoist.durability import fsync_directory
from hoist.errors import (
    ChecksumMismatchError,
    HoistError,
    InvalidObjectNameError,
    ObjectExistsError,
    ObjectNotFoundError,
)
from hoist.stores.checksum import Checksum, Progress, StreamHasher, checksum_file
from hoist.stores.leftovers import Leftover
from hoist.stores.names import source_file_size, validate_object_name

T = TypeVar("T")


class Verification(str, Enum):
    """How an upload was shown to hold exactly the bytes that were sent."""

    STORE_CHECKSUM = "store-checksum"
    """The store reported a whole-object checksum equal to ours."""
    STORE_MD5 = "store-md5"
    """The store computed the MD5 of every request's bytes (its ETag) and each
    equalled ours; a multipart object was also shown to be exactly those parts
    (its composite ETag, or where the server answers none, its size)."""
    SERVER_HASH = "server-hash"
    """The server hashed the object it holds (SFTP: ``sha256sum`` or ``md5sum``
    over SSH) and the digest equalled the one hoist computed while sending."""
    READ_BACK = "read-back"
    """hoist read the object back and hashed it."""


@dataclass(frozen=True)
class ObjectStat:
    """What a store says about one object.

    Parameters:
        object_name: the name the object was asked for by.
        size: its size in bytes.
        checksum: the whole-object checksum the store reports, or None where
            it reports none hoist can compare (a multipart ETag, a composite
            checksum or an mtime-based hash is never taken as one).
    """

    object_name: str
    size: int
    checksum: Checksum | None = None


@dataclass(frozen=True)
class UploadResult:
    """The outcome of one verified upload.

    Parameters:
        object_name: the object written.
        uri: where it is, in the store's URI form.
        size: bytes written.
        checksum: CRC64NVME of the bytes, computed while sending them.
        verified_by: how the store was shown to hold those bytes.
        seconds: wall time of the whole call.
        already_present: the object already held these bytes, so nothing
            was sent (a redelivered upload, or ``overwrite=False`` on a retry).
    """

    object_name: str
    uri: str
    size: int
    checksum: Checksum
    verified_by: Verification
    seconds: float = 0.0
    already_present: bool = False


class ObjectStore(ABC):
    """An object store hoist can upload to, read from and verify.

    Subclasses set ``scheme`` and implement the primitives listed in the module
    docstring. The public methods here check names, translate errors and
    verify; they are what the workers and the CLI call.

    Example:
        >>> import pathlib, shutil, tempfile
        >>> from hoist.stores.libcloud import LibcloudObjectStore
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> (root / "artifacts").mkdir()
        >>> _ = (root / "ckpt.pt").write_bytes(b"weights")
        >>> store = LibcloudObjectStore("local", "artifacts", {"key": str(root)})
        >>> result = store.upload_file("run1/ckpt.pt", str(root / "ckpt.pt"))
        >>> result.verified_by
        <Verification.READ_BACK: 'read-back'>
        >>> shutil.rmtree(root)
    """

    scheme: ClassVar[str]
    trusts_reported_checksum: bool = False
    """Whether a checksum the store reports proves the bytes it holds.

    True only where the server computes or validates it; otherwise
    verification reads the object back."""

    thread_safe: ClassVar[bool] = True
    """Whether threads may share one instance (a ``--pool threads`` worker does)."""

    max_segment_bytes: int | None = None
    """Longest ``/``-separated segment of an object name, in UTF-8 bytes; None for no
    limit. Stores that keep objects as files set :data:`FILE_SEGMENT_MAX_BYTES`."""
    max_name_bytes: int | None = None
    """Longest object name, in UTF-8 bytes; None for no limit (S3: 1024)."""

    def validate_name(self, object_name: str) -> str:
        """:func:`validate_object_name`, plus this store's length limits.

        The logger calls it too, so a name this store cannot hold fails in the
        training process, not on a worker after retries.

        Raises:
            InvalidObjectNameError: the name is invalid or too long for this store.
        """
        name = validate_object_name(object_name)
        limit = self.max_segment_bytes
        if limit is not None:
            for segment in name.split("/"):
                if len(segment.encode("utf-8")) > limit:
                    raise InvalidObjectNameError(
                        f"object name {object_name!r} has a segment of "
                        f"{len(segment.encode('utf-8'))} bytes; this store keeps objects as "
                        f"files and takes at most {limit} bytes between two '/'"
                    )
        if self.max_name_bytes is not None and len(name.encode("utf-8")) > self.max_name_bytes:
            raise InvalidObjectNameError(
                f"object name {object_name!r} is {len(name.encode('utf-8'))} bytes; this "
                f"store takes at most {self.max_name_bytes}"
            )
        return name

    # ----- public API -------------------------------------------------------

    def upload_file(
        self,
        object_name: str,
        path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        progress: Progress | None = None,
        replace_own_leftover: bool = False,
    ) -> UploadResult:
        """Upload the file at ``path`` as ``object_name`` and verify it.

        Streams the file once, computing its checksum on the way. With
        ``overwrite=False`` an existing object holding the same bytes is
        accepted (``already_present=True``) and one holding other bytes raises
        :class:`~hoist.errors.ObjectExistsError`, unless ``replace_own_leftover``
        says that an earlier attempt of this same upload wrote to the name:
        then the object with other bytes is that attempt's unverified write (its
        verification failed and so did deleting it, or its answer was lost), and
        it is replaced.
        """
        started = time.monotonic()
        name = self.validate_name(object_name)
        size = source_file_size(path)
        if not overwrite:
            if self._writes_if_absent(size):
                # One request instead of a look then a write; a name found taken
                # is then judged below as it would have been.
                written = self._call(
                    self._put_file_if_absent, name, os.fspath(path), size, progress, name=name
                )
                if written is not None:
                    return UploadResult(
                        name, self.get_uri(name), size, *written, time.monotonic() - started
                    )
            existing = self._stat_or_none(name)
            if existing is not None:
                try:
                    return self._accept_existing(existing, os.fspath(path), started)
                except ObjectExistsError:
                    if not replace_own_leftover:
                        raise
        checksum, verified_by = self._call(
            self._put_file, name, os.fspath(path), size, progress, name=name
        )
        return UploadResult(
            name, self.get_uri(name), size, checksum, verified_by, time.monotonic() - started
        )

    def put_bytes(self, object_name: str, data: bytes, *, overwrite: bool = True) -> UploadResult:
        """Write a small object (a ``.symlink`` pointer, a manifest) and verify it."""
        started = time.monotonic()
        name = self.validate_name(object_name)
        if not overwrite and self._stat_or_none(name) is not None:
            raise ObjectExistsError(
                f"{self.get_uri(name)} exists; pass overwrite=True to replace it"
            )
        checksum = Checksum.of(data)
        proved = self._call(self._put_bytes, name, data, name=name)
        verified_by = proved or self.verify(name, len(data), checksum)
        return UploadResult(
            name, self.get_uri(name), len(data), checksum, verified_by, time.monotonic() - started
        )

    def get_bytes(self, object_name: str) -> bytes:
        """Return the whole content of a small object."""
        name = validate_object_name(object_name)
        return b"".join(self._chunks(name))

    def stat(self, object_name: str) -> ObjectStat:
        """Size and reported checksum; :class:`~hoist.errors.ObjectNotFoundError` if absent."""
        name = validate_object_name(object_name)
        return self._call(self._stat, name, name=name)

    def exists(self, object_name: str) -> bool:
        """Whether the object exists. A permission error is raised, never read as "absent"."""
        name = validate_object_name(object_name)
        return self._stat_or_none(name) is not None

    def delete(self, object_name: str) -> None:
        """Delete the object; deleting an absent object is not an error."""
        name = validate_object_name(object_name)
        with contextlib.suppress(ObjectNotFoundError):
            self._call(self._delete, name, name=name)

    def download_file(
        self,
        object_name: str,
        path: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        expected: ObjectStat | None = None,
        durable: bool = False,
    ) -> ObjectStat:
        """Download to ``path`` atomically (a temporary sibling, renamed); return its size and CRC.

        ``expected`` size and checksum (a record's, a manifest's) must match before the rename,
        else :class:`~hoist.errors.ChecksumMismatchError`, and nothing at ``path``. ``durable``
        fsyncs file and directory (off: fetching again is cheaper; it took 3x a 1 GiB download).
        """
        name = validate_object_name(object_name)
        target = os.path.abspath(os.fspath(path))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hoist-download-", dir=os.path.dirname(target))
        try:
            try:
                held = self._call(self._download_into, name, fd, expected, progress, name=name)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if expected is not None:
                self._compare_download(expected, held, target)
            os.replace(tmp, target)
            if durable:
                fsync_directory(os.path.dirname(target))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return held

    def _download_into(
        self, name: str, fd: int, expected: ObjectStat | None, progress: Progress | None
    ) -> ObjectStat:
        """Write the object into the empty file ``fd``; S3 fetches ranges in parallel."""
        hasher = StreamHasher(progress)
        with open(fd, "wb", closefd=False) as out:
            for chunk in self._chunks(name):
                out.write(chunk)
                hasher.update(chunk)
        return ObjectStat(name, hasher.size, hasher.checksum)

    def _compare_download(self, expected: ObjectStat, held: ObjectStat, target: str) -> None:
        if expected.size != held.size or expected.checksum not in (None, held.checksum):
            raise ChecksumMismatchError(
                f"{self.get_uri(held.object_name)} arrived as other bytes than expected, so "
                f"{target} was not written: {held.size} bytes with {held.checksum}, expected "
                f"{expected.size} bytes with {expected.checksum or 'no checksum known'}"
            )

    def read_back(self, object_name: str) -> ObjectStat:
        """Stream the object and return the size and checksum of what the store holds."""
        name = validate_object_name(object_name)

        hasher = StreamHasher()
        for chunk in self._chunks(name):
            hasher.update(chunk)
        return ObjectStat(name, hasher.size, hasher.checksum)

    def verify(self, object_name: str, size: int, checksum: Checksum) -> Verification:
        """Show that the store holds exactly ``size`` bytes with ``checksum``.

        Uses the store's reported checksum where :attr:`trusts_reported_checksum`,
        else reads the object back. Raises
        :class:`~hoist.errors.ChecksumMismatchError` on any difference.
        """
        name = validate_object_name(object_name)
        if self.trusts_reported_checksum:
            reported = self._call(self._stat, name, name=name)
            self._compare(name, "size", size, reported.size)
            if reported.checksum is not None:
                self._compare(name, "checksum", checksum, reported.checksum)
                return Verification.STORE_CHECKSUM
        # Reading back gives the size too: no separate stat (one request less
        # per upload, which counts for small files).
        held = self.read_back(name)
        self._compare(name, "size", size, held.size)
        self._compare(name, "checksum", checksum, held.checksum)
        return Verification.READ_BACK

    def leftovers(self, older_than: float) -> list[Leftover]:
        """Uploads that never finished, begun more than ``older_than`` seconds ago
        (:mod:`hoist.stores.leftovers`); none for a store that leaves none behind."""
        return self._call(self._leftovers, time.time() - older_than)

    def discard(self, leftover: Leftover) -> None:
        """Remove one of :meth:`leftovers`."""
        self._call(self._discard, leftover, name=None)

    def check(self) -> None:
        """Make one cheap request that fails with a clear error if the store is unusable.

        Wrong credentials, a missing bucket or container and an unreachable
        host raise here, before any upload is attempted.
        """
        self._call(self._check)

    @abstractmethod
    def get_uri(self, object_name: str) -> str:
        """The URI of ``object_name`` (``s3://bucket/key``, ``sftp://user@host:port/path``, …)."""

    def close(self) -> None:  # noqa: B027 (optional hook, not abstract)
        """Release connections; the store can not be used afterwards."""

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----- primitives for backends ------------------------------------------

    @abstractmethod
    def _put_file(
        self, name: str, path: str, size: int, progress: Progress | None
    ) -> tuple[Checksum, Verification]:
        """Upload ``path``, hashing it on the way; return the checksum and the verification.

        The object must not be visible under ``name`` before it is complete."""

    def _leftovers(self, before: float) -> list[Leftover]:
        return []  # writes in place, or renames a file it removes on failure

    def _discard(self, leftover: Leftover) -> None:
        raise NotImplementedError  # only what _leftovers found is discarded

    def _writes_if_absent(self, size: int) -> bool:
        """Whether :meth:`_put_file_if_absent` serves a file of ``size`` bytes."""
        return False

    def _put_file_if_absent(
        self, name: str, path: str, size: int, progress: Progress | None
    ) -> tuple[Checksum, Verification] | None:
        """:meth:`_put_file` if nothing holds ``name``, decided by the server; None if taken."""
        raise NotImplementedError  # only called where _writes_if_absent says so

    @abstractmethod
    def _put_bytes(self, name: str, data: bytes) -> Verification | None:
        """Write ``data``; return how the write itself proved the bytes, or None
        to have :meth:`verify` check them afterwards."""

    @abstractmethod
    def _read_chunks(self, name: str) -> Iterator[bytes]: ...

    @abstractmethod
    def _stat(self, name: str) -> ObjectStat:
        """Raise :class:`~hoist.errors.ObjectNotFoundError` when absent."""

    @abstractmethod
    def _delete(self, name: str) -> None: ...

    @abstractmethod
    def _check(self) -> None: ...

    @abstractmethod
    def _translate(self, exc: Exception, name: str | None) -> HoistError | None:
        """Map a client library's exception to a hoist error, or None to let it pass."""

    # ----- shared machinery -------------------------------------------------

    def _call(self, fn: Callable[..., T], *args: Any, name: str | None = None) -> T:
        """Run ``fn`` and raise any client-library error as a hoist error."""
        try:
            return fn(*args)
        except HoistError:
            raise  # already translated; keep its own cause
        except Exception as exc:
            self._reraise(exc, name)

    def _chunks(self, name: str) -> Iterator[bytes]:
        """:meth:`_read_chunks` with errors translated, also those raised mid-stream."""
        try:
            yield from self._read_chunks(name)
        except HoistError:
            raise  # already translated; keep its own cause
        except Exception as exc:
            self._reraise(exc, name)

    def _reraise(self, exc: Exception, name: str | None) -> NoReturn:
        translated = self._translate(exc, name)
        if translated is None:
            raise exc
        raise translated from exc

    def _stat_or_none(self, name: str) -> ObjectStat | None:
        try:
            return self._call(self._stat, name, name=name)
        except ObjectNotFoundError:
            return None

    def _accept_existing(self, existing: ObjectStat, path: str, started: float) -> UploadResult:
        name = existing.object_name
        size, checksum = checksum_file(path)
        try:
            verified_by = self.verify(name, size, checksum)
        except ChecksumMismatchError:
            raise ObjectExistsError(
                f"{self.get_uri(name)} already exists with other bytes; pass overwrite=True "
                "to replace it, or log the file under another name"
            ) from None
        return UploadResult(
            name,
            self.get_uri(name),
            size,
            checksum,
            verified_by,
            time.monotonic() - started,
            already_present=True,
        )

    def _compare(self, name: str, what: str, expected: object, held: object) -> None:
        if expected != held:
            raise ChecksumMismatchError(
                f"{self.get_uri(name)} holds other bytes than were sent: {what} is {held}, "
                f"expected {expected}"
            )
