"""Where staged files live: the layout ranks write and workers read.

A file handed to the logger is placed under the staging root as
``<staging>/<run_name>/rank<rank>/<seq>-<name>``; it appears under that name
only once complete, written first under a temporary name that wraps it
(``.<name>.partial-<random>``).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from hoist.errors import ConfigurationError
from hoist.protocol.naming import validate_artifact_name, validate_run_name

STAGING_DIR_ENV = "HOIST_STAGING_DIR"
"""Environment variable naming the staging root when none is passed."""

NAME_MAX = 255
"""Longest file name, in bytes, on the filesystems hoist stages to."""

_TEMP_PREFIX = "."
_TEMP_INFIX = ".partial-"
_TEMP_RANDOM_BYTES = 4
# The temporary name wraps the staged name, so the staged name must leave room
# for the wrapping or the temporary file could not be created at all.
MAX_STAGED_NAME_BYTES = NAME_MAX - len(_TEMP_PREFIX) - len(_TEMP_INFIX) - 2 * _TEMP_RANDOM_BYTES
"""Longest staged file name, in bytes: 255 minus the temporary name's affixes."""


@dataclass(frozen=True)
class Fingerprint:
    """What a hard-linked file looked like when it was staged.

    A rewrite in place changes the size or the modification time; one that
    puts the modification time back still changes the inode's ctime. Adding
    or removing a link (the caller deleting or renaming its own name for the
    file, which is fine) also changes ctime, so ctime counts only when the
    link count did not change.

    Parameters:
        size: bytes.
        mtime_ns, ctime_ns: modification and inode-change times.
        nlink: the number of hard links.

    Example:
        >>> before = Fingerprint(10, 1, 1, 2)
        >>> before.change(Fingerprint(10, 1, 5, 1)) is None  # the caller deleted its name
        True
        >>> before.change(Fingerprint(12, 7, 7, 2))
        'its size went from 10 to 12 bytes'
    """

    size: int
    mtime_ns: int
    ctime_ns: int
    nlink: int

    @classmethod
    def of(cls, path: str) -> Fingerprint:
        info = os.stat(path)
        return cls(info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_nlink)

    def change(self, now: Fingerprint) -> str | None:
        """How the file changed since this fingerprint, or None if it did not."""
        if now.size != self.size:
            return f"its size went from {self.size} to {now.size} bytes"
        if now.mtime_ns != self.mtime_ns:
            return "it was modified"
        if now.ctime_ns != self.ctime_ns and now.nlink == self.nlink:
            return "its inode changed (ctime) with no link added or removed"
        return None

    def to_json(self) -> list[int]:
        return [self.size, self.mtime_ns, self.ctime_ns, self.nlink]

    @classmethod
    def from_json(cls, data: list[int]) -> Fingerprint:
        return cls(*(int(x) for x in data))


def staged_path(staging_root: str, run_name: str, rank: int, seq: int, artifact_name: str) -> str:
    """Return where an artifact is staged: ``<root>/<run>/rank<rank>/<seq>-<name>``.

    The artifact name is flattened (``/`` becomes ``__``) so that every staged
    file of a rank sits directly in the rank's directory; the sequence number
    keeps names unique, so flattening cannot make two artifacts collide. A
    name too long for the filesystem keeps its end (where the extension is)
    and its sequence prefix.

    Parameters:
        staging_root: the staging root.
        run_name: the run's name; one safe path segment.
        rank: global rank of the calling process.
        seq: the artifact's sequence number within this rank.
        artifact_name: the name the user gave the artifact.

    Returns:
        The path of the staged file.

    Raises:
        ConfigurationError: ``run_name`` is invalid (see
            :func:`~hoist.protocol.naming.validate_run_name`); ``rank`` or ``seq``
            is negative; the artifact name is invalid.

    Example:
        >>> staged_path("/staging", "llama", 3, 12, "checkpoints/ep1.pt")
        '/staging/llama/rank3/00000012-checkpoints__ep1.pt'
    """
    validate_run_name(run_name)
    if rank < 0 or seq < 0:
        raise ConfigurationError(f"rank ({rank}) and seq ({seq}) must not be negative")
    validate_artifact_name(artifact_name)
    prefix = f"{seq:08d}-"
    flat = artifact_name.lstrip("/").replace("/", "__")
    budget = MAX_STAGED_NAME_BYTES - len(prefix)
    if len(os.fsencode(flat)) > budget:
        # Walk back from the end char by char so a multi-byte character is
        # never cut in half.
        kept: list[str] = []
        used = 0
        for char in reversed(flat):
            size = len(os.fsencode(char))
            if used + size > budget:
                break
            kept.append(char)
            used += size
        flat = "".join(reversed(kept))
    return os.path.join(staging_root, run_name, f"rank{rank}", prefix + flat)


def staging_root_from(path: str | None) -> str:
    """Return the staging root as an absolute path, creating it if missing.

    Parameters:
        path: the staging folder (the logger's ``upload_staging_folder``,
            else ``HOIST_STAGING_DIR`` from its settings), or None.

    Returns:
        The absolute path of the staging root (``~`` expanded).

    Raises:
        ConfigurationError: none is given, or the directory cannot be created.

    Example:
        >>> staging_root_from("/tmp/hoist-staging")
        '/tmp/hoist-staging'
    """
    chosen = path
    if not chosen:
        raise ConfigurationError(
            f"no staging directory: set {STAGING_DIR_ENV} or pass upload_staging_folder "
            "(a directory the upload workers can read)"
        )
    root = os.path.abspath(os.path.expanduser(chosen))
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot use staging directory {root!r}: {exc.strerror or exc}; "
            f"set {STAGING_DIR_ENV} or pass upload_staging_folder"
        ) from exc
    return root


def temporary_name(destination: str) -> str:
    """A fresh temporary name beside ``destination``, for writing it before it is complete.

    Example:
        >>> temporary_name("/staging/run/rank0/00000001-ep1.pt")[:-8]
        '/staging/run/rank0/.00000001-ep1.pt.partial-'
    """
    directory, base = os.path.split(destination)
    return os.path.join(
        directory, f"{_TEMP_PREFIX}{base}{_TEMP_INFIX}{secrets.token_hex(_TEMP_RANDOM_BYTES)}"
    )
