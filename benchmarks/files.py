"""The files a benchmark works on, where they live, and how sizes and times are printed."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")
KIB, MIB, GIB = 1024, 1024**2, 1024**3


def write_source(path: str, size: int) -> str:
    """Write ``size`` random bytes at ``path`` (incompressible, like a checkpoint); return it."""
    block = os.urandom(min(size, 8 * MIB))
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = block[: min(left, len(block))]
            out.write(chunk)
            left -= len(chunk)
    return path


def warm(root: str) -> None:
    """Read every file below ``root`` once, so that a run finds it in the page cache.

    This VM pages out file pages nobody touched for about a minute (DAMON's
    ``pageout`` scheme): without this, whichever candidate ran first after a
    pause read the server's copy from disk, and the same download measured
    0.72x to 1.05x s5cmd from one run of the suite to the next (2026-12-03).
    """
    if not os.path.isdir(root):  # os.walk would find nothing and warm nothing
        raise FileNotFoundError(f"nothing to warm: {root} is not a directory")
    buffer = bytearray(MIB)
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb", buffering=0) as held:
                while held.readinto(buffer):
                    pass


def filesystem_of(path: str) -> str:
    """The type of the filesystem ``path`` is on (``ext4``, ``tmpfs``, ...)."""
    real = os.path.realpath(path)
    best, fstype = "", "unknown"
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            _device, mount_point, kind = line.split()[:3]
            inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best):
                best, fstype = mount_point, kind
    return fstype


def label(size: int) -> str:
    """``1 GiB``, ``64 KiB``: a size as the tables print it."""
    for unit, factor in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def fmt_seconds(seconds: float) -> str:
    """A duration with a unit that keeps three significant figures."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


@contextmanager
def bench_dir() -> Iterator[str]:
    """A fresh directory under ``<repo>/.hoist-bench``, removed afterwards.

    Not ``/tmp``: that may be another filesystem than the one a real staging
    root sits on, and rename, hard links and ``copy_file_range`` depend on it.
    """
    parent = os.path.join(REPO, ".hoist-bench")
    os.makedirs(parent, exist_ok=True)
    path = tempfile.mkdtemp(dir=parent)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        with suppress(OSError):  # another run may be using the parent
            os.rmdir(parent)
