"""Making a write survive a crash: fsync of a file, and of the directory naming it."""

from __future__ import annotations

import os


def fsync_file(path: str) -> None:
    """Flush a file's data to its disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: str) -> None:
    """Flush a directory's entries, so that a rename into it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
