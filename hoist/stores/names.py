"""What a store checks before any request, and the names it writes under: object names,
source files, and the temporary name an upload is written under before it is complete.
"""

from __future__ import annotations

import os
import stat as stat_module
import uuid

from hoist.errors import InvalidObjectNameError, SourceFileError


def validate_object_name(name: str) -> str:
    """Return ``name`` without leading ``/``, or raise :class:`InvalidObjectNameError`.

    Example:
        >>> validate_object_name("/run1/rank0/ep1.pt")
        'run1/rank0/ep1.pt'
    """
    if not isinstance(name, str):
        raise InvalidObjectNameError(f"object name must be a string, not {type(name).__name__}")
    stripped = name.lstrip("/")
    if not stripped:
        raise InvalidObjectNameError(f"object name {name!r} is empty; give a non-empty name")
    if "\x00" in stripped:
        raise InvalidObjectNameError(f"object name {name!r} contains a NUL character")
    try:
        stripped.encode("utf-8")
    except UnicodeEncodeError:
        # A str may hold a lone surrogate; every store's keys are UTF-8.
        raise InvalidObjectNameError(
            f"object name {name!r} is not valid UTF-8 (it holds a lone surrogate)"
        ) from None
    if ".." in stripped.split("/"):
        raise InvalidObjectNameError(
            f"object name {name!r} contains a '..' segment; object names may not climb "
            "out of the store's prefix"
        )
    return stripped


def source_file_size(path: str | os.PathLike[str]) -> int:
    """Return the size of the regular file at ``path``, or raise :class:`SourceFileError`."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise SourceFileError(f"cannot upload {os.fspath(path)!r}: no such file") from None
    except OSError as exc:
        raise SourceFileError(f"cannot upload {os.fspath(path)!r}: {exc.strerror}") from exc
    if not stat_module.S_ISREG(info.st_mode):
        raise SourceFileError(f"cannot upload {os.fspath(path)!r}: it is not a regular file")
    if not os.access(path, os.R_OK):
        raise SourceFileError(f"cannot upload {os.fspath(path)!r}: it is not readable")
    return info.st_size


_TEMPORARY_AFFIX_BYTES = len(".hoist-tmp-") + 12 + len("-")

FILE_SEGMENT_MAX_BYTES = 255 - _TEMPORARY_AFFIX_BYTES
"""Longest segment of an object name in stores that keep objects as files
(Libcloud ``local``, SFTP): a file name is at most 255 bytes, and the
temporary name an upload is written under (:func:`temporary_name`) is longer."""


def temporary_name(object_name: str) -> str:
    """A hidden sibling name for writing ``object_name`` before it is complete."""
    head, _, base = object_name.rpartition("/")
    tmp = f".hoist-tmp-{uuid.uuid4().hex[:12]}-{base}"
    return f"{head}/{tmp}" if head else tmp
