"""Staging: the one step a training rank blocks for.

A file handed to the logger is placed under the staging root, which the
workers read, as ``<staging>/<run_name>/rank<rank>/<seq>-<name>``. The copy is
as cheap as the filesystem allows (see :func:`stage_file`) and a staged file
appears under its final name only once it is complete, so a worker never
uploads half a file. Workers open staged files without following links and
refuse any path outside the staging root (:mod:`hoist.protocol.staged_file`).
"""

from __future__ import annotations

import errno
import fcntl
import io
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import NoReturn

from hoist.durability import fsync_directory, fsync_file
from hoist.errors import ConfigurationError, HoistError, SourceFileError, StagingError
from hoist.protocol.layout import Fingerprint, temporary_name

logger = logging.getLogger("hoist.rank")

COPY_BUFFER_SIZE = 8 * 1024 * 1024
"""Chunk size of the plain streaming copy, the last fallback."""

# Same value on every Linux architecture: _IOW(0x94, 9, int).
FICLONE = 0x40049409
# One copy_file_range call moves at most this much; the kernel caps a call at
# about 2 GiB anyway, and the loop goes on until end of file.
_COPY_RANGE_CHUNK = 1 << 30

# errnos meaning "this filesystem (pair) cannot do that", as opposed to a real
# failure such as ENOSPC: on these the next, more general method is tried.
_REFLINK_UNSUPPORTED = frozenset(
    {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS}
)
_COPY_RANGE_UNSUPPORTED = frozenset(
    {errno.ENOSYS, errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}
)

_RENAME_FALLBACK = frozenset({errno.EXDEV, errno.EACCES, errno.EPERM})
_LINK_FALLBACK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP})

_HINTS = {
    errno.ENOSPC: "free space in the staging root or point HOIST_STAGING_DIR elsewhere",
    errno.EDQUOT: "raise the quota of the staging root or point HOIST_STAGING_DIR elsewhere",
    errno.EROFS: "the staging root is read-only; point HOIST_STAGING_DIR at a writable directory",
    errno.EACCES: "check that this process may write to the staging root",
    errno.EPERM: "check that this process may write to the staging root",
}


class StagingMode(str, Enum):
    """How ``file_artifact`` hands a file to the workers.

    - ``copy`` (the default): a private copy, by the cheapest means the
      filesystem offers: a reflink (no data copied) on Btrfs/XFS, else an
      in-kernel ``copy_file_range``. The caller's file stays theirs to change.
    - ``move``: the caller gives the file away; a rename on one filesystem.
    - ``link``: a hard link on one filesystem (microseconds, like a move),
      while the caller keeps the file. The caller promises not to rewrite it
      in place until it is uploaded: the link *is* the file, so a
      ``torch.save`` to the same path would change the staged bytes. A
      rewrite is detected (:class:`Fingerprint`) and fails that artifact with
      a clear error instead of uploading mixed bytes. Across filesystems it
      falls back to a copy.
    """

    COPY = "copy"
    MOVE = "move"
    LINK = "link"


def staging_mode(value: StagingMode | str) -> StagingMode:
    """``value`` as a :class:`StagingMode`; a bad one is a :class:`ConfigurationError`.

    Example:
        >>> staging_mode("link")
        <StagingMode.LINK: 'link'>
        >>> staging_mode("hardlink")
        Traceback (most recent call last):
        ...
        hoist.errors.ConfigurationError: staging='hardlink' is not a staging mode; use 'copy', ...
    """
    try:
        return StagingMode(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in StagingMode)
        raise ConfigurationError(
            f"staging={value!r} is not a staging mode; use {choices}"
        ) from None


@dataclass(frozen=True)
class StagedFile:
    """A file placed under the staging root.

    Parameters:
        path: absolute or caller-given path of the staged file.
        size: its size in bytes.
        method: how it got there: ``"rename"``, ``"link"``, ``"reflink"``,
            ``"copy_file_range"`` or ``"copy"`` (user-space streaming copy).
        fingerprint: for a hard link, the file as staged (see :class:`Fingerprint`).

    Example:
        >>> StagedFile("/staging/run/rank0/00000001-ep1.pt", 1024, "rename").method
        'rename'
    """

    path: str
    size: int
    method: str
    fingerprint: Fingerprint | None = None


def _staging_failure(source: str, destination: str, exc: OSError) -> NoReturn:
    """Raise the error of a staging-filesystem failure; the one place that picks its type."""
    hint = _HINTS.get(exc.errno or 0, "check the staging filesystem")
    raise StagingError(
        f"cannot stage {source!r} into {destination!r}: {exc.strerror or exc}; {hint}"
    ) from exc


def _source_failure(source: str, exc: OSError) -> NoReturn:
    raise SourceFileError(
        f"cannot stage {source!r}: {exc.strerror or exc}; "
        "pass the path of an existing, readable regular file"
    ) from exc


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("could not remove the partial staging file %r: %s", path, exc)


def _rename_into(source: str, destination: str) -> bool:
    """Rename ``source`` onto ``destination``; return False where a copy must do instead."""
    # Across filesystems a rename cannot work; without permission to take the
    # file out of its directory a copy still stages it (and if the staging
    # side is what refuses, the copy says so clearly).
    return _place(os.replace, source, destination, destination, _RENAME_FALLBACK, os.path.lexists)


def _link_into(source: str, destination: str) -> bool:
    """Hard-link ``source`` (followed if a symlink) at ``destination``; False where a copy must do.

    Linked under a temporary name and renamed, so an existing staged file is
    replaced as a copy would replace it.
    """
    temp = temporary_name(destination)
    # Falls back on another filesystem, a filesystem without hard links, or
    # the kernel's protected_hardlinks refusing a file we do not own.
    if not _place(_hard_link, source, temp, destination, _LINK_FALLBACK, os.path.exists):
        return False
    try:
        os.replace(temp, destination)
    except OSError as exc:
        _unlink_quietly(temp)
        _staging_failure(source, destination, exc)
    return True


def _hard_link(source: str, target: str) -> None:
    os.link(source, target, follow_symlinks=True)


def _place(
    place: Callable[[str, str], None],
    source: str,
    target: str,
    destination: str,
    fallback: frozenset[int],
    source_exists: Callable[[str], bool],
) -> bool:
    """``place(source, target)``; False where it failed with an errno in ``fallback``.

    Only the rank directory can be missing: it is created on first use
    rather than checked for on every call. Other errors become the caller's
    :class:`SourceFileError` or :class:`StagingError` about ``destination``.
    """
    for attempt in range(2):
        try:
            place(source, target)
            return True
        except FileNotFoundError as exc:
            if not source_exists(source):
                _source_failure(source, exc)
            if attempt:
                _staging_failure(source, destination, exc)
            try:
                os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            except OSError as mkdir_exc:
                _staging_failure(source, destination, mkdir_exc)
        except OSError as exc:
            if exc.errno in fallback:
                return False
            _staging_failure(source, destination, exc)
    return False


def _open_temporary(destination: str) -> tuple[str, io.BufferedWriter]:
    directory = os.path.dirname(destination)
    temp = temporary_name(destination)
    try:
        return temp, open(temp, "xb")  # noqa: SIM115 - closed by the caller
    except FileNotFoundError:
        # The rank directory exists after the first artifact, so it is created
        # only when missing rather than checked on every call.
        os.makedirs(directory or ".", exist_ok=True)
        return temp, open(temp, "xb")  # noqa: SIM115 - closed by the caller


def _copy_into(src: io.BufferedReader, dst: io.BufferedWriter, source: str) -> str:
    """Copy all of ``src`` into the empty ``dst``; return the method that worked."""
    src_fd, dst_fd = src.fileno(), dst.fileno()
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return "reflink"
    except OSError as exc:
        if exc.errno not in _REFLINK_UNSUPPORTED:
            raise
    copied = 0
    try:
        while True:
            n = os.copy_file_range(src_fd, dst_fd, _COPY_RANGE_CHUNK)
            if n == 0:
                return "copy_file_range"
            copied += n
    except OSError as exc:
        if exc.errno not in _COPY_RANGE_UNSUPPORTED:
            raise
    # Continue where copy_file_range stopped (usually at 0); seek() also
    # resets the file objects' view of the offsets that the raw calls moved.
    src.seek(copied)
    dst.seek(copied)
    buffer = bytearray(COPY_BUFFER_SIZE)
    view = memoryview(buffer)
    while True:
        try:
            n = src.readinto(view)
        except OSError as exc:
            _source_failure(source, exc)
        if not n:
            return "copy"
        dst.write(view[:n])


def _copy_to_temporary(source: str, destination: str, fsync: bool) -> tuple[str, str, int]:
    """Copy ``source`` to a new temporary file next to ``destination``.

    Returns the temporary path, the method and the size; removes the temporary
    file on any failure.
    """
    try:
        src = open(source, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        _source_failure(source, exc)
    with src:
        try:
            temp, dst = _open_temporary(destination)
        except OSError as exc:
            _staging_failure(source, destination, exc)
        try:
            with dst:
                method = _copy_into(src, dst, source)
                dst.flush()
                size = os.fstat(dst.fileno()).st_size
                if fsync:
                    os.fsync(dst.fileno())
        except BaseException as exc:
            _unlink_quietly(temp)
            if isinstance(exc, OSError) and not isinstance(exc, HoistError):
                _staging_failure(source, destination, exc)
            raise
    return temp, method, size


def stage_file(
    source: str,
    destination: str,
    *,
    mode: StagingMode | str = StagingMode.COPY,
    move: bool = False,
    fsync: bool = False,
) -> StagedFile:
    """Place ``source`` at ``destination`` so that it appears there only complete.

    The cheapest method the filesystem allows is used:

    - ``move`` on the same filesystem: one ``rename``, whatever the size.
      A rename is atomic, so no temporary name is needed.
    - ``link`` on the same filesystem: one hard link (then a rename into
      place), whatever the size; the result carries a :class:`Fingerprint`.
    - otherwise a new file is written under a temporary name
      (``.<name>.partial-<random>``) in the destination's directory and renamed
      onto ``destination`` once complete. Its bytes come from a reflink
      (``FICLONE``: shared extents, no data copied) where the filesystem can
      (Btrfs, XFS), else ``copy_file_range`` (an in-kernel copy, server-side on
      NFS 4.2), else a user-space copy in 8 MiB chunks. ``move`` across
      filesystems copies likewise, then removes the source once the copy is in
      place; ``link`` across filesystems is a copy.

    In copy mode the source is only read, never modified or removed.

    Nothing is fsynced by default, because this runs on the training thread
    and fsync makes it wait for the disk. The rename already gives workers
    atomic visibility; what fsync adds is survival of a power loss, and a
    staging file does not need it: in copy mode the source still holds the
    bytes, and after a crash the run is resumed from its checkpoints anyway.
    ``move`` hands the only copy over, so pass ``fsync=True`` if the
    staged file must survive a power loss of the node on its own.

    Parameters:
        source: the file to stage; a symlink is followed.
        destination: where to place it, usually from :func:`~hoist.protocol.layout.staged_path`;
            missing parent directories are created, an existing file replaced.
        mode: a :class:`StagingMode`. In ``move`` mode a symlink ``source``
            is copied from its target and the link itself removed.
        move: ``True`` is ``mode="move"`` (the logger's ``move=True``).
        fsync: flush the staged file and its directory to disk before
            returning.

    Returns:
        The staged file: its path, size and the method that staged it.

    Raises:
        SourceFileError: ``source`` is missing, not a regular file or unreadable.
        StagingError: the staging filesystem failed (full, read-only, no
            permission); the message says what to do. No temporary file is left
            behind and the source is untouched.

    Example:
        >>> import pathlib, shutil, tempfile
        >>> from hoist.protocol.layout import staged_path
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (root / "ep1.pt").write_bytes(b"weights")
        >>> staged = stage_file(str(root / "ep1.pt"), staged_path(str(root), "run", 0, 1, "ep1.pt"))
        >>> staged.method in {"reflink", "copy_file_range", "copy"}
        True
        >>> pathlib.Path(staged.path).read_bytes()
        b'weights'
        >>> shutil.rmtree(root)
    """
    try:
        link_info = os.lstat(source)
        info = os.stat(source) if stat.S_ISLNK(link_info.st_mode) else link_info
    except OSError as exc:
        _source_failure(source, exc)
    if not stat.S_ISREG(info.st_mode):
        raise SourceFileError(
            f"cannot stage {source!r}: it is not a regular file; "
            "pass the path of a file, not a directory or device"
        )

    mode = StagingMode.MOVE if move else StagingMode(mode)
    move = mode is StagingMode.MOVE
    if mode is StagingMode.LINK and _link_into(source, destination):
        try:
            return StagedFile(destination, info.st_size, "link", Fingerprint.of(destination))
        except OSError as exc:
            _staging_failure(source, destination, exc)
    if move and not stat.S_ISLNK(link_info.st_mode) and _rename_into(source, destination):
        if fsync:
            try:
                fsync_file(destination)
                fsync_directory(os.path.dirname(destination) or ".")
            except OSError as exc:
                _staging_failure(source, destination, exc)
        return StagedFile(destination, info.st_size, "rename")

    temp, method, size = _copy_to_temporary(source, destination, fsync)
    try:
        os.replace(temp, destination)
        if fsync:
            fsync_directory(os.path.dirname(destination) or ".")
    except OSError as exc:
        _unlink_quietly(temp)
        _staging_failure(source, destination, exc)
    if move:
        # Only now is the staged copy complete and in place, so the caller's
        # file may go.
        try:
            os.unlink(source)
        except OSError as exc:
            logger.warning("staged %r but could not remove the source: %s", source, exc)
    return StagedFile(destination, size, method)
