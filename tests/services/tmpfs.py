"""A small tmpfs mounted for a test, to fill a disk for real (ENOSPC) without filling the host's."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``"1m"``) at ``path`` (created); skip the test if we cannot.

    Mounting needs root (the tests' sshd runs as root as well); elsewhere the
    test is skipped with the reason rather than faked.
    """
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to simulate a full disk: {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
