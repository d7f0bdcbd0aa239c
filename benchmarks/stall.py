"""How long a training rank blocks to hand a file over: hoist's staging against its peer.

The peer is what the in-process uploader users have today runs on the training
thread (Composer's ``RemoteUploaderDownloader``): ``shutil.copy2`` into a
staging folder. Both run in the same process, on the same files and the same
filesystem, alternating call by call so that drift (page cache, writeback, a
noisy neighbour) hits both alike.

Run from the repository root::

    .venv/bin/python benchmarks/stall.py            # 1 KiB, 1 MiB, 100 MiB
    .venv/bin/python benchmarks/stall.py --large    # and 1 GiB

It prints a table and writes ``benchmarks/results/stall-<date>.json``. Files
live under ``<repo>/.hoist-bench`` (created, then removed), because ``/tmp``
may be another filesystem than the one a real staging root sits on, and
rename, reflink and ``copy_file_range`` all depend on the filesystem.

Page cache is warm: the source was just written, as a checkpoint just saved is.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from hoist.logger.staging import stage_file, staged_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")
KIB, MIB, GIB = 1024, 1024**2, 1024**3

Stager = Callable[[str, str], object]
"""The timed call: given a source file and a destination path, hand the file over.

Swap in ``lambda src, dst: logger.file_artifact(LogLevel.BATCH, name, src)`` to
time the whole logger call (it picks its own destination and ignores ``dst``).
"""


def measure_stage(stage: Stager, source: str, destination: str) -> float:
    """Return how many seconds ``stage(source, destination)`` blocks its caller.

    The garbage collector is paused for the call, as :mod:`timeit` does, so a
    collection triggered by the harness is not billed to the call.

    Parameters:
        stage: the call to time.
        source: the file to hand over.
        destination: where the file should go.

    Returns:
        Wall-clock seconds.

    Example:
        >>> measure_stage(shutil.copy2, "ep1.pt", "/staging/ep1.pt")  # doctest: +SKIP
        0.0351
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        stage(source, destination)
        return time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()


@dataclass(frozen=True)
class Candidate:
    """One way to hand a file over.

    Parameters:
        name: label in the table and the JSON.
        stage: the timed call.
        consumes_source: whether the call takes the source away (a move), so
            each call needs a fresh source.
        destination_dir: where its destinations go.
    """

    name: str
    stage: Stager
    consumes_source: bool
    destination_dir: str


def compare(
    candidates: list[Candidate],
    pristine: str,
    scratch: str,
    *,
    repeats: int,
    warmup: int = 1,
    settle: bool = True,
) -> dict[str, list[float]]:
    """Time each candidate ``warmup + repeats`` times, interleaved; return the timed samples.

    The order of the candidates flips every round (A B, B A, ...) so that
    neither always runs right after the other's writeback.

    Parameters:
        candidates: what to time.
        pristine: the source file; never modified.
        scratch: a directory on the same filesystem for per-call sources.
        repeats: timed calls per candidate.
        warmup: untimed calls per candidate first.
        settle: flush dirty pages (``os.sync``, untimed) before every call, so
            that no call pays for the writeback of the previous one's bytes.
            Without it, 1 GiB copies swing between 0.4 and 3 s here, by
            whichever call the kernel's dirty-page throttling lands on.

    Returns:
        Seconds of each timed call, by candidate name.

    Example:
        >>> compare([hoist, peer], "/bench/src", "/bench/scratch", repeats=7)  # doctest: +SKIP
        {'hoist': [...], 'peer': [...]}
    """
    samples: dict[str, list[float]] = {c.name: [] for c in candidates}
    for round_ in range(warmup + repeats):
        order = candidates if round_ % 2 == 0 else list(reversed(candidates))
        for candidate in order:
            source = pristine
            if candidate.consumes_source:
                # A hard link is a separate name for the same warm bytes: the
                # move takes the name away, the pristine file stays.
                source = os.path.join(scratch, f"src-{round_}")
                os.link(pristine, source)
            destination = staged_path(
                candidate.destination_dir, "bench", 0, round_, os.path.basename(pristine)
            )
            if settle:
                os.sync()
            seconds = measure_stage(candidate.stage, source, destination)
            os.unlink(destination)
            if os.path.lexists(source) and source != pristine:
                os.unlink(source)
            if round_ >= warmup:
                samples[candidate.name].append(seconds)
    return samples


def _write_source(path: str, size: int) -> None:
    block = os.urandom(min(size, 8 * MIB))
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = block[: min(left, len(block))]
            out.write(chunk)
            left -= len(chunk)


def _filesystem_of(path: str) -> str:
    real = os.path.realpath(path)
    best, fstype = "", "unknown"
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            _device, mount_point, kind = line.split()[:3]
            inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best):
                best, fstype = mount_point, kind
    return fstype


def _label(size: int) -> str:
    for unit, factor in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= factor:
            return f"{size // factor} {unit}"
    return f"{size} B"


def _fmt_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


@contextmanager
def _bench_dir() -> Iterator[str]:
    parent = os.path.join(REPO, ".hoist-bench")
    os.makedirs(parent, exist_ok=True)
    path = tempfile.mkdtemp(dir=parent)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        # Leave the parent only if another run is using it.
        with suppress(OSError):
            os.rmdir(parent)


def run(
    sizes: list[int], repeats: int, small_repeats: int, settle: bool = True
) -> dict[str, object]:
    """Run the whole comparison and return what goes into the JSON.

    Parameters:
        sizes: file sizes in bytes.
        repeats: timed calls per candidate for files of 16 MiB and more.
        small_repeats: timed calls per candidate below 16 MiB, where a single
            call takes microseconds and needs more samples for a stable median.
        settle: see :func:`compare`.

    Returns:
        Metadata and one row per size and mode.

    Example:
        >>> run([KIB], repeats=7, small_repeats=51)["rows"][0]["mode"]  # doctest: +SKIP
        'copy'
    """
    rows: list[dict[str, object]] = []
    with _bench_dir() as root:
        fstype = _filesystem_of(root)
        scratch = os.path.join(root, "scratch")
        hoist_staging = os.path.join(root, "hoist-staging")
        peer_staging = os.path.join(root, "peer-staging")
        for directory in (scratch, os.path.join(peer_staging, "bench", "rank0")):
            os.makedirs(directory)
        methods: dict[str, str] = {}

        def hoist_copy(src: str, dst: str) -> None:
            methods["copy"] = stage_file(src, dst).method

        def hoist_move(src: str, dst: str) -> None:
            methods["move"] = stage_file(src, dst, move=True).method

        for size in sizes:
            pristine = os.path.join(root, f"checkpoint-{size}.pt")
            _write_source(pristine, size)
            n = repeats if size >= 16 * MIB else small_repeats
            for mode, hoist_stage in (("copy", hoist_copy), ("move", hoist_move)):
                candidates = [
                    Candidate("hoist", hoist_stage, mode == "move", hoist_staging),
                    Candidate("peer", shutil.copy2, False, peer_staging),
                ]
                samples = compare(candidates, pristine, scratch, repeats=n, settle=settle)
                hoist_median = statistics.median(samples["hoist"])
                peer_median = statistics.median(samples["peer"])
                rows.append(
                    {
                        "size_bytes": size,
                        "mode": mode,
                        "hoist_method": methods[mode],
                        "repeats": n,
                        "hoist_median_s": hoist_median,
                        "peer_median_s": peer_median,
                        "ratio_hoist_over_peer": hoist_median / peer_median,
                        "hoist_samples_s": samples["hoist"],
                        "peer_samples_s": samples["peer"],
                    }
                )
                _print_row(rows[-1])
            os.unlink(pristine)
    return {
        "benchmark": "stall",
        "description": "seconds the caller blocks to hand a file over; peer is shutil.copy2 "
        "into a staging folder (Composer RemoteUploaderDownloader)",
        "date": dt.date.today().isoformat(),
        "python": sys.version.split()[0],
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "filesystem": fstype,
        "warmup": 1,
        "settle": settle,
        "candidates": {
            "hoist": "hoist.logger.staging.stage_file(src, staged_path(...), move=<mode>)",
            "peer": "shutil.copy2(src, <staging folder>/...)",
        },
        "rows": rows,
    }


_HEADER = (
    f"{'size':>8}  {'mode':<4}  {'hoist method':<15}  {'hoist':>10}  {'peer copy2':>10}  "
    f"{'hoist/peer':>10}"
)


def _print_row(row: Mapping[str, object]) -> None:
    size = row["size_bytes"]
    hoist_s, peer_s = row["hoist_median_s"], row["peer_median_s"]
    ratio = row["ratio_hoist_over_peer"]
    assert isinstance(size, int) and isinstance(hoist_s, float) and isinstance(peer_s, float)
    assert isinstance(ratio, float)
    print(
        f"{_label(size):>8}  {row['mode']!s:<4}  {row['hoist_method']!s:<15}  "
        f"{_fmt_seconds(hoist_s):>10}  {_fmt_seconds(peer_s):>10}  {ratio:>10.3f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the table and write the JSON.

    Parameters:
        argv: command-line arguments; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit status.

    Example:
        >>> main(["--repeats", "7"])  # doctest: +SKIP
        0
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="also time a 1 GiB file")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls, files >= 16 MiB")
    parser.add_argument("--small-repeats", type=int, default=51, help="timed calls, files < 16 MiB")
    parser.add_argument(
        "--no-settle",
        action="store_true",
        help="do not os.sync() before each call (measures under writeback pressure)",
    )
    args = parser.parse_args(argv)
    if min(args.repeats, args.small_repeats) < 7:
        parser.error("use at least 7 repeats: a median of fewer is mostly noise")
    sizes = [KIB, MIB, 100 * MIB] + ([GIB] if args.large else [])

    print(_HEADER)
    result = run(sizes, args.repeats, args.small_repeats, settle=not args.no_settle)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"stall-{result['date']}.json")
    with open(path, "w") as out:
        json.dump(result, out, indent=2)
        out.write("\n")
    print(f"filesystem: {result['filesystem']}; medians; wrote {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
