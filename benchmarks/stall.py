"""How long a training rank blocks to hand a file over: hoist against its peer.

Three candidates, timed for each file size in copy mode and in ``move=True``
mode:

- ``stage_file``: :func:`hoist.logger.staging.stage_file` alone, the staging
  step (a copy, or a rename in move mode).
- ``file_artifact``: the whole call a rank makes,
  ``ObjectStoreLogger.file_artifact(...)``: it names the artifact, INCRs a
  sequence number in Redis, stages the file, writes the artifact record to
  Redis and sends a Celery task to the Redis broker. Each call logs a new
  artifact name, so no call waits on an earlier one.
- ``peer``: what the in-process uploader users have today (Composer's
  ``RemoteUploaderDownloader``) does on the training thread: ``shutil.copy2``
  into a staging folder, then ``queue.Queue().put`` for its upload worker. The
  peer has no move mode: it copies in both.

All run in the same process, on the same files and the same filesystem,
alternating call by call so that drift (page cache, writeback, a noisy
neighbour) hits all alike. In move mode each call gets a fresh hard link to
the source to take away.

``file_artifact`` needs Redis: the run starts a private ``redis-server`` on
127.0.0.1 (a free port, no persistence, data under the bench directory; see
``benchmarks/services.py``) and stops it at the end. No workers run: the call
does not wait for them, and the tasks it queues go away with the server.

Run from the repository root::

    .venv/bin/python benchmarks/stall.py            # 1 KiB, 1 MiB, 100 MiB
    .venv/bin/python benchmarks/stall.py --large    # and 1 GiB

It prints a table (medians, and the ratios ``file_artifact/peer`` and
``stage_file/peer``) and writes ``benchmarks/results/stall-<date>.json``. Files
live under ``<repo>/.hoist-bench`` (created, then removed), because ``/tmp``
may be another filesystem than the one a real staging root sits on, and
rename, reflink and ``copy_file_range`` all depend on the filesystem.

Page cache is warm: the source was just written, as a checkpoint just saved is.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import itertools
import json
import os
import platform
import queue
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from services import private_redis

from hoist.logger.levels import LogLevel
from hoist.logger.logger import ObjectStoreLogger
from hoist.logger.staging import stage_file, staged_path
from hoist.tasks.records import Records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")
KIB, MIB, GIB = 1024, 1024**2, 1024**3

Stager = Callable[[str, str], object]
"""The timed call: given a source file and a destination path, hand the file over.

A call that picks its own destination (``file_artifact``) ignores ``dst``; its
:class:`Candidate` then says where the file went (``staged``).
"""


def measure_stage(stage: Stager, source: str, destination: str) -> tuple[float, object]:
    """Return how many seconds ``stage(source, destination)`` blocks its caller, and its result.

    The garbage collector is paused for the call, as :mod:`timeit` does, so a
    collection triggered by the harness is not billed to the call.

    Parameters:
        stage: the call to time.
        source: the file to hand over.
        destination: where the file should go.

    Returns:
        Wall-clock seconds, and what the call returned.

    Example:
        >>> measure_stage(shutil.copy2, "ep1.pt", "/staging/ep1.pt")  # doctest: +SKIP
        (0.0351, '/staging/ep1.pt')
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        result = stage(source, destination)
        return time.perf_counter() - start, result
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
        staged: where the call put the file, given what it returned; asked
            after the clock stops, so it may be slow. ``None``: at the
            destination it was given.
    """

    name: str
    stage: Stager
    consumes_source: bool
    destination_dir: str
    staged: Callable[[object], str] | None = None


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

    The order of the candidates flips every round (A B C, C B A, ...) so that
    none always runs right after the same other's writeback.

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
        >>> compare([stage, peer], "/bench/src", "/bench/scratch", repeats=7)  # doctest: +SKIP
        {'stage_file': [...], 'peer': [...]}
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
            seconds, result = measure_stage(candidate.stage, source, destination)
            os.unlink(destination if candidate.staged is None else candidate.staged(result))
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


CANDIDATES = {
    "stage_file": "hoist.logger.staging.stage_file(src, staged_path(...), move=<mode>)",
    "file_artifact": "ObjectStoreLogger(provider='local', ...).file_artifact(LogLevel.BATCH, "
    "<new name>, src, move=<mode>): Redis INCR, stage_file, record, Celery send to the "
    "Redis broker; no workers",
    "peer": "shutil.copy2(src, <staging folder>/...); queue.Queue().put(path) "
    "(Composer RemoteUploaderDownloader; copies in both modes)",
}
"""What each candidate times, by the name it has in the rows."""


@contextmanager
def _bench_logger(root: str, broker_url: str) -> Iterator[ObjectStoreLogger]:
    """The logger a rank would make: a local store and the staging root under ``root``."""
    store = os.path.join(root, "store")
    os.makedirs(os.path.join(store, "artifacts"))
    with ObjectStoreLogger(
        provider="local",
        container="artifacts",
        provider_kwargs={"key": store},
        upload_staging_folder=os.path.join(root, "hoist-staging"),
        broker_url=broker_url,
        run_name="bench",
        wait_on_close=False,
        object_name="{run_name}/{artifact_name}",
    ) as logger:
        yield logger


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
    with (
        _bench_dir() as root,
        private_redis(os.path.join(root, "redis")) as redis_url,
        _bench_logger(root, redis_url) as logger,
    ):
        fstype = _filesystem_of(root)
        records = Records.from_url(redis_url)
        redis_version = records.client.info("server")["redis_version"]
        scratch = os.path.join(root, "scratch")
        hoist_staging = logger.staging_root
        peer_staging = os.path.join(root, "peer-staging")
        for directory in (scratch, os.path.join(peer_staging, "bench", "rank0")):
            os.makedirs(directory)
        methods: dict[str, str] = {}
        artifact_names = (f"ckpt-{i}.pt" for i in itertools.count())
        uploads: queue.Queue[str] = queue.Queue()  # never drained: no upload worker runs

        def stage_only(mode: str) -> Stager:
            def call(src: str, dst: str) -> None:
                methods[mode] = stage_file(src, dst, move=mode == "move").method

            return call

        def full_call(mode: str) -> Stager:
            def call(src: str, dst: str) -> str | None:
                del dst  # the logger picks the staged path itself
                return logger.file_artifact(
                    LogLevel.BATCH, next(artifact_names), src, move=mode == "move"
                )

            return call

        def staged_by_logger(artifact: object) -> str:
            status = records.get(str(artifact))
            assert status is not None, f"no record of {artifact!r}"
            return str(status.message["staged_path"])

        def peer(src: str, dst: str) -> str:
            shutil.copy2(src, dst)
            uploads.put(dst)
            return dst

        for size in sizes:
            pristine = os.path.join(root, f"checkpoint-{size}.pt")
            _write_source(pristine, size)
            n = repeats if size >= 16 * MIB else small_repeats
            for mode in ("copy", "move"):
                move = mode == "move"
                candidates = [
                    Candidate("stage_file", stage_only(mode), move, hoist_staging),
                    Candidate(
                        "file_artifact", full_call(mode), move, hoist_staging, staged_by_logger
                    ),
                    Candidate("peer", peer, False, peer_staging),
                ]
                samples = compare(candidates, pristine, scratch, repeats=n, settle=settle)
                medians = {name: statistics.median(s) for name, s in samples.items()}
                rows.append(
                    {
                        "size_bytes": size,
                        "mode": mode,
                        "staging_method": methods[mode],
                        "repeats": n,
                        **{f"{name}_median_s": median for name, median in medians.items()},
                        "ratio_file_artifact_over_peer": medians["file_artifact"] / medians["peer"],
                        "ratio_stage_file_over_peer": medians["stage_file"] / medians["peer"],
                        **{f"{name}_samples_s": s for name, s in samples.items()},
                    }
                )
                _print_row(rows[-1])
            os.unlink(pristine)
    return {
        "benchmark": "stall",
        "description": "seconds the caller blocks to hand a file over: hoist's staging step "
        "alone and its whole ObjectStoreLogger.file_artifact call, against the peer, "
        "shutil.copy2 into a staging folder plus a queue put (Composer "
        "RemoteUploaderDownloader)",
        "date": dt.date.today().isoformat(),
        "python": sys.version.split()[0],
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "filesystem": fstype,
        "redis_version": redis_version,
        "warmup": 1,
        "settle": settle,
        "candidates": CANDIDATES,
        "rows": rows,
    }


_HEADER = (
    f"{'size':>8}  {'mode':<4}  {'staging method':<15}  {'stage_file':>10}  "
    f"{'file_artifact':>13}  {'peer':>10}  {'file_artifact/peer':>18}  {'stage_file/peer':>15}"
)


def _print_row(row: Mapping[str, object]) -> None:
    def number(key: str) -> float:
        value = row[key]
        assert isinstance(value, float), key
        return value

    size = row["size_bytes"]
    assert isinstance(size, int)
    stage_s, full_s, peer_s = (
        _fmt_seconds(number(f"{name}_median_s")) for name in ("stage_file", "file_artifact", "peer")
    )
    print(
        f"{_label(size):>8}  {row['mode']!s:<4}  {row['staging_method']!s:<15}  "
        f"{stage_s:>10}  {full_s:>13}  {peer_s:>10}  "
        f"{number('ratio_file_artifact_over_peer'):>18.3f}  "
        f"{number('ratio_stage_file_over_peer'):>15.3f}",
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
