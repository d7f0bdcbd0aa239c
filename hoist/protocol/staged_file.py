"""A staged file as a worker holds it: opened once, safely, then uploaded and deleted.

Whoever can write in the staging root can change what a staged path leads to
at any moment, for instance by swapping a directory for a symlink to one
elsewhere, in a loop. A worker that resolves the path and opens it later
loses that race (measured before this module, tests/test_staged_race.py:
outside files uploaded in 3-6 of 24 uploads, and 4-5 deleted after them). So
the worker looks the name up exactly once, and never through a symlink:

- It opens the staging root by its configured path (the operator's choice;
  symlinks in *its* path are the operator's), then walks the message's path
  one component at a time, each ``openat`` relative to the directory opened
  before it with ``O_NOFOLLOW``: a symlink anywhere is refused (ELOOP, or
  ENOTDIR with ``O_DIRECTORY``), and ``..``, ``.`` and empty components are
  refused before any system call, so the walk cannot leave the tree below
  the root.
- The last component is opened with ``O_NONBLOCK`` (a FIFO would hang a
  plain open for ever) and checked with ``fstat``: a regular file. Its size,
  and in link mode its fingerprint, come from the descriptor, never from a
  name.
- Stores take a path, so they get ``/proc/self/fd/<fd>``. Opening that magic
  link opens the very file behind the descriptor (the kernel follows the
  descriptor's own reference, it does not look any name up again), so a swap
  after the check changes nothing, and every open a store makes (the upload,
  a checksum, a read-back) reads the inode that was checked. Without
  ``/proc/self/fd`` a worker refuses every upload (:func:`proc_fd_available`).
- Deletion is ``unlinkat`` on the parent directory's descriptor, and only if
  the name there still holds the inode opened (``fstatat`` without following
  symlinks): it deletes only the path the message names, never a file
  swapped in, never outside the staging root. A swap between that check and
  the unlink can only make it delete the swapped-in *name*, in that same
  directory, which the swapper could delete anyway; a symlink is removed,
  not followed.

Why a per-component walk and not ``openat2(RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS)``: Python has no ``os.openat2``, and through ctypes it
fails on kernels before 5.6 and under container seccomp profiles that return
EPERM or ENOSYS for it, so the walk would be needed anyway, and the rarely
run branch would be the one guarding against attackers. The walk gives the
same guarantees here (no symlink followed, nothing above the root once
``..`` is refused) for one ``openat`` per component, a few microseconds per
upload. Neither notices a mount point (mounting needs privileges), nor an
outside file hard-linked into the root: that is a regular file inside the
root, like a ``staging="link"`` file; ``fs.protected_hardlinks=1`` (the
default on most distributions) stops users linking files they do not own.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from types import TracebackType

from hoist.errors import SourceFileError
from hoist.protocol.layout import Fingerprint

log = logging.getLogger("hoist.worker")

PROC_FD = "/proc/self/fd"
"""Where a process's open descriptors appear as magic links (see the module notes)."""

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO opens at once instead of waiting for a writer (then fstat
# refuses it); O_NOCTTY: a terminal device never becomes the worker's.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

# Failures of the machine, not of the path: raised as they are, so the job
# retries them with backoff like any transient error, instead of failing the
# artifact for good as a refusal does.
_TRANSIENT = frozenset(
    {
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
        errno.ENOBUFS,
        errno.EIO,
        errno.EAGAIN,
        errno.EINTR,
        errno.ESTALE,
        errno.ETIMEDOUT,
    }
)

_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFLNK: "a symlink",
}


class StagedFileMissing(SourceFileError):
    """The staged file, or a directory on its way, does not exist (any more)."""


def gone(path: str) -> StagedFileMissing:
    """The error of a staged file that is not there."""
    return StagedFileMissing(
        f"the staged file {path!r} is gone (deleted by hand, or the staging root is not "
        "the one the rank wrote to); log the artifact again"
    )


@functools.cache
def proc_fd_available() -> bool:
    """Whether ``/proc/self/fd/<n>`` reopens descriptor ``n`` here; checked once per process.

    Stores are handed staged files by that name; a worker without ``/proc``
    (a container that does not mount it) must refuse uploads rather than
    fall back to opening staged files by their names.
    """
    read_end, write_end = os.pipe()
    try:
        return os.stat(f"{PROC_FD}/{read_end}").st_ino == os.fstat(read_end).st_ino
    except OSError:
        return False
    finally:
        os.close(read_end)
        os.close(write_end)


NO_PROC_FD = (
    f"this worker cannot open staged files safely: {PROC_FD} is missing (mount /proc "
    "in the worker's container); stores read a staged file through its open descriptor there"
)
"""The refusal of every upload on a worker without ``/proc/self/fd``."""


def staged_components(staging_root: str, path: str) -> list[str]:
    """The names to walk, from the staging root down to the staged file.

    Only looks at the text; nothing is opened. An absolute ``path`` must start
    with the staging root as configured (or its real path) and ``/``; a
    relative one is taken below the root.

    Parameters:
        staging_root: the worker's staging root.
        path: the staged path from the message.

    Returns:
        The path's components below the root, none of them ``''``, ``.`` or ``..``.

    Raises:
        SourceFileError: the path is no string, holds a NUL or a lone
            surrogate, is empty, lies outside the root, or has a ``''``,
            ``.`` or ``..`` component.

    Example:
        >>> staged_components("/staging", "/staging/run/rank0/00000001-ep1.pt")
        ['run', 'rank0', '00000001-ep1.pt']
    """
    if not isinstance(path, str):
        raise SourceFileError(f"refusing to read {path!r}: a staged path is a string")
    if "\0" in path or "\0" in staging_root:
        raise SourceFileError(f"refusing to read {path!r}: it contains a NUL character")
    try:
        # JSON can carry a lone surrogate ("\ud800"), which no file name holds;
        # the system call would raise UnicodeEncodeError, which is no refusal.
        os.fsencode(path)
    except UnicodeEncodeError:
        raise SourceFileError(
            f"refusing to read {path!r}: it is not a valid file name (a lone surrogate)"
        ) from None
    if not path:
        raise SourceFileError("refusing to read '': a staged path names a file")
    rest = path
    if path.startswith("/"):
        rest = _below_root(staging_root, path)
    names = rest.split("/")
    if ".." in names:
        raise SourceFileError(
            f"refusing to read {path!r}: it has a '..' component, which could lead "
            f"outside the staging root {staging_root!r}"
        )
    if "" in names or "." in names:
        raise SourceFileError(
            f"refusing to read {path!r}: it has an empty or '.' component ('//', '/./' or a "
            "trailing '/'), and a staged path names each directory once"
        )
    return names


def _below_root(staging_root: str, path: str) -> str:
    """What follows the staging root in the absolute ``path``, or a refusal."""
    configured = os.path.abspath(staging_root)
    try:
        real = os.path.realpath(configured)
    except OSError:  # realpath can fail (EINVAL, ELOOP) while the tree changes under it
        real = configured
    for root in (configured, real):
        prefix = root if root.endswith("/") else root + "/"
        if path.startswith(prefix):
            return path[len(prefix) :]
    raise SourceFileError(
        f"refusing to read {path!r}: it is outside the staging root {staging_root!r}"
    )


class OpenStagedFile:
    """A staged file held open, with its directory, for the length of an upload.

    Made by :func:`open_staged_file`; a context manager that closes both
    descriptors.

    Parameters:
        path: the staged path as the message named it (for messages).
        dir_fd: the descriptor of the file's directory.
        fd: the descriptor of the file itself.
        name: the file's name in that directory.
        info: ``fstat`` of ``fd`` when it was opened.
    """

    def __init__(self, path: str, dir_fd: int, fd: int, name: str, info: os.stat_result) -> None:
        self.path = path
        self.dir_fd = dir_fd
        self.fd = fd
        self.name = name
        self.info = info

    def __enter__(self) -> OpenStagedFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def proc_path(self) -> str:
        """A path that opens this very file, whatever its name leads to now."""
        return f"{PROC_FD}/{self.fd}"

    @property
    def size(self) -> int:
        """Its size in bytes when it was opened."""
        return self.info.st_size

    def fingerprint(self) -> Fingerprint:
        """What the file looks like now (``fstat``; as :meth:`Fingerprint.of` would say)."""
        now = os.fstat(self.fd)
        return Fingerprint(now.st_size, now.st_mtime_ns, now.st_ctime_ns, now.st_nlink)

    def unlink(self) -> bool:
        """Delete the staged file's name if it still holds this file; True if deleted.

        A name that is gone or holds another file (swapped in since the open)
        is left alone; so is one the worker may not delete (logged): the
        upload it follows has landed either way.
        """
        try:
            now = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) != (self.info.st_dev, self.info.st_ino):
                log.warning(
                    "not deleting the staged file %r: its name now holds another file", self.path
                )
                return False
            os.unlink(self.name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("could not delete the staged file %r: %s", self.path, exc.strerror or exc)
            return False
        return True

    def close(self) -> None:
        """Close both descriptors; closing twice is harmless."""
        for fd in (self.fd, self.dir_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.dir_fd = -1


def open_staged_file(staging_root: str, path: str) -> OpenStagedFile:
    """Open the staged file ``path`` below ``staging_root`` without following any symlink.

    See the module notes for why and how.

    Parameters:
        staging_root: the worker's staging root.
        path: the staged path from the message (absolute under the root, or
            relative to it).

    Returns:
        The file and its directory, open; close it (``with``).

    Raises:
        StagedFileMissing: the file or a directory on its way does not exist.
        SourceFileError: any other refusal: the text of the path (see
            :func:`staged_components`), a symlink, a component that is no
            directory, not a regular file, no permission. One sentence naming
            the path.
        OSError: the machine failed, not the path (out of descriptors or
            memory, an I/O error, a stale NFS handle): worth a retry.

    Example:
        >>> import pathlib, tempfile
        >>> root = tempfile.mkdtemp()
        >>> rank = pathlib.Path(root, "run", "rank0")
        >>> rank.mkdir(parents=True)
        >>> _ = (rank / "00000001-ep1.pt").write_bytes(b"x" * 1024)
        >>> with open_staged_file(root, "run/rank0/00000001-ep1.pt") as staged:
        ...     staged.size
        1024
        >>> (rank / "00000002-link.pt").symlink_to(rank / "00000001-ep1.pt")
        >>> open_staged_file(root, "run/rank0/00000002-link.pt")
        Traceback (most recent call last):
        ...
        hoist.errors.SourceFileError: ...
    """
    names = staged_components(staging_root, path)
    try:
        directory = os.open(staging_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in _TRANSIENT:
            raise
        raise SourceFileError(
            f"cannot read {path!r}: the staging root {staging_root!r} cannot be opened "
            f"({exc.strerror or exc}); start the worker with the staging root the ranks write to"
        ) from None
    fd = -1
    try:
        for depth, name in enumerate(names):
            try:
                if depth < len(names) - 1:
                    below = os.open(name, _DIRECTORY_FLAGS, dir_fd=directory)
                    os.close(directory)
                    directory = below
                else:
                    fd = os.open(name, _FILE_FLAGS, dir_fd=directory)
            except OSError as exc:
                raise _refusal(staging_root, path, names[: depth + 1], directory, exc) from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a file")
            raise SourceFileError(f"refusing to read {path!r}: it is {kind}, not a regular file")
    except BaseException:
        if fd >= 0:
            os.close(fd)
        os.close(directory)
        raise
    return OpenStagedFile(path, directory, fd, names[-1], info)


def _refusal(
    staging_root: str, path: str, walked: list[str], directory: int, exc: OSError
) -> Exception:
    """The error for a failed open of ``walked[-1]`` in ``directory``: one sentence."""
    if exc.errno in _TRANSIENT:
        return exc
    if exc.errno == errno.ENOENT:
        return gone(path)
    where = "/".join(walked)
    try:
        # Only to word the refusal: the open already failed, nothing is read.
        mode = os.stat(walked[-1], dir_fd=directory, follow_symlinks=False).st_mode
    except OSError:
        mode = 0
    if exc.errno == errno.ELOOP or stat.S_ISLNK(mode):
        return SourceFileError(
            f"refusing to read {path!r}: {where!r} is a symlink, which could lead outside "
            f"the staging root {staging_root!r}, and workers follow none below it"
        )
    if exc.errno == errno.ENOTDIR:
        return SourceFileError(f"refusing to read {path!r}: {where!r} is not a directory")
    if mode and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):  # ENXIO: a socket
        kind = _KINDS.get(stat.S_IFMT(mode), "not a file")
        return SourceFileError(f"refusing to read {path!r}: it is {kind}, not a regular file")
    return SourceFileError(f"refusing to read {path!r}: {where!r}: {exc.strerror or exc}")
