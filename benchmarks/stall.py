"""How long a training rank blocks to hand a file over: hoist against its peers.

Candidates, timed for each file size, all in the same process, on the same
files and filesystem, alternating call by call (:func:`compare`):

- ``file_artifact[<mode>]``: the whole call a rank makes,
  ``ObjectStoreLogger.file_artifact(...)``, in each staging mode the logger
  has (:data:`STAGING_MODES`: copy, move, and link where the logger supports
  it; detected at run time). It names the artifact, takes a sequence number,
  stages the file, writes the record to Redis and sends a Celery task to the
  Redis broker. No workers run: the call does not wait for them.
- ``stage_file[<mode>]`` (files up to 100 MiB): the staging step alone.
- ``copy2+put``: what an in-process uploader (Composer's
  ``RemoteUploaderDownloader``) does on the training thread:
  ``shutil.copy2`` into a staging folder, then ``queue.Queue().put``.
- ``cp`` (100 MiB and up): ``cp`` of the same file, the floor for a copy.
- ``boto3 sync`` (files under 1 GiB): a synchronous ``boto3`` ``upload_file`` to the same
  ``rclone serve s3`` the other benchmarks use (what people do without a tool).

The private Redis of this benchmark is its own (``private_redis``), so the
tasks it queues never reach a worker of a later benchmark. Page cache is
warm: the source was just written, as a checkpoint just saved is.

Then ``close()`` with nothing pending is timed. The steady state of a
training loop is the ``training_loop`` benchmark, run next.
"""

from __future__ import annotations

import gc
import inspect
import itertools
import os
import queue
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from benchmarks.config import RunConfig
from benchmarks.files import GIB, KIB, MIB, filesystem_of, fmt_seconds, label, write_source
from benchmarks.report import Figure, Report, Target, median
from benchmarks.services import Lab, private_redis
from hoist.logger.levels import LogLevel
from hoist.logger.logger import ObjectStoreLogger
from hoist.logger.staging import stage_file
from hoist.protocol.layout import staged_path
from hoist.state.records import Records

NAME = "stall"

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
            after the clock stops, so it may be slow; it returns None if
            nothing local is left to remove. ``None``: at the destination
            it was given.
    """

    name: str
    stage: Stager
    consumes_source: bool
    destination_dir: str
    staged: Callable[[object], str | None] | None = None


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
            left = destination if candidate.staged is None else candidate.staged(result)
            if left is not None:  # a candidate that uploads leaves no local file
                os.unlink(left)
            if os.path.lexists(source) and source != pristine:
                os.unlink(source)
            if round_ >= warmup:
                samples[candidate.name].append(seconds)
    return samples


LARGE_FILE_REPEATS = 15
"""Timed calls per candidate for 100 MiB and 1 GiB. A round of 1 GiB is about a
second (three copies and two renames), and on this VM about one copy in four, of
any method, lands on memory the host took back and takes 2-10x as long: a median
of 5 let that decide the copy-against-``cp`` target (2026-12-04: 0.57x, where the
copies alone measured alike)."""

STAGING_MODES: dict[str, dict[str, object]] = {
    "copy": {"staging": "copy"},
    "move": {"move": True},
    "link": {"staging": "link"},
}
"""Staging modes to time, with the ``file_artifact`` keywords that choose each.
Add a mode here and it is timed; :func:`supported_modes` drops those this
version of the logger lacks."""


def supported_modes() -> tuple[dict[str, dict[str, object]], list[str]]:
    """The modes of :data:`STAGING_MODES` this logger supports, and notes on the others.

    A logger without a ``staging`` keyword (before the link mode) has copy
    (its default) and ``move=True`` only.
    """
    parameters = inspect.signature(ObjectStoreLogger.file_artifact).parameters
    modes: dict[str, dict[str, object]] = {}
    skipped = []
    for mode, keywords in STAGING_MODES.items():
        missing = [k for k in keywords if k not in parameters]
        if not missing:
            modes[mode] = keywords
        elif mode == "copy":
            modes[mode] = {}  # the default of an older logger
        else:
            skipped.append(f"mode {mode!r} skipped: file_artifact has no {missing} keyword")
    return modes, skipped


def _stage_keywords(mode: str) -> dict[str, object]:
    parameters = inspect.signature(stage_file).parameters
    if "mode" in parameters and mode != "move":
        return {"mode": mode}
    return {"move": mode == "move"}


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


def run(lab: Lab, report: Report, cfg: RunConfig) -> None:
    """Time the hand-off for each size, then ``close()``."""
    modes, skipped = supported_modes()
    for text in skipped:
        report.note(NAME, text)
    root = os.path.join(lab.root, "stall")
    os.makedirs(root)
    sizes = [KIB, MIB, cfg.size(100 * MIB), cfg.gib]
    with (
        private_redis(os.path.join(root, "redis")) as redis_url,
        _bench_logger(root, redis_url) as logger,
    ):
        report.details["stall"] = {"filesystem": filesystem_of(root), "modes": list(modes)}
        for size in sizes:
            _one_size(lab, report, cfg, logger, Records.from_url(redis_url), root, size, modes)
        _close_idle(report, redis_url, root, cfg)
    shutil.rmtree(root, ignore_errors=True)


def _one_size(
    lab: Lab,
    report: Report,
    cfg: RunConfig,
    logger: ObjectStoreLogger,
    records: Records,
    root: str,
    size: int,
    modes: dict[str, dict[str, object]],
) -> None:
    scratch = os.path.join(root, "scratch")
    peer_staging = os.path.join(root, "peer-staging")
    for directory in (scratch, os.path.join(peer_staging, "bench", "rank0")):
        os.makedirs(directory, exist_ok=True)
    names = (f"ckpt-{size}-{i}.pt" for i in itertools.count())
    uploads: queue.Queue[str] = queue.Queue()  # never drained: no upload worker runs
    s3 = lab.s3_client()
    bucket = lab.s3().bucket
    keys = (f"stall/{size}/{i}" for i in itertools.count())
    methods: dict[str, str] = {}

    def full_call(keywords: dict[str, object]) -> Stager:
        def call(src: str, dst: str) -> str | None:
            del dst  # the logger picks the staged path itself
            return logger.file_artifact(LogLevel.BATCH, next(names), src, **keywords)  # type: ignore[arg-type]

        return call

    def stage_only(mode: str) -> Stager:
        def call(src: str, dst: str) -> None:
            methods[mode] = str(stage_file(src, dst, **_stage_keywords(mode)).method)  # type: ignore[arg-type]

        return call

    def staged_by_logger(artifact: object) -> str:
        status = records.get(str(artifact))
        assert status is not None, f"no record of {artifact!r}"
        return str(status.message["staged_path"])

    def copy2_put(src: str, dst: str) -> str:
        shutil.copy2(src, dst)
        uploads.put(dst)
        return dst

    def cp(src: str, dst: str) -> None:
        subprocess.run(["cp", src, dst], check=True)

    def boto3_sync(src: str, dst: str) -> str:
        del dst
        key = next(keys)
        s3.upload_file(src, bucket, key)
        return key

    def delete_object(key: object) -> None:
        s3.delete_object(Bucket=bucket, Key=str(key))
        return None

    hoist_staging = logger.staging_root
    candidates = [
        Candidate(
            f"file_artifact[{mode}]", full_call(kw), mode == "move", hoist_staging, staged_by_logger
        )
        for mode, kw in modes.items()
    ]
    if size <= 100 * MIB:
        candidates += [
            Candidate(f"stage_file[{mode}]", stage_only(mode), mode == "move", hoist_staging)
            for mode in modes
        ]
    candidates.append(Candidate("copy2+put", copy2_put, False, peer_staging))
    if size >= cfg.size(100 * MIB):
        candidates.append(Candidate("cp", cp, False, peer_staging))
    if size < cfg.gib:  # 1 GiB through boto3 is the throughput benchmark's (5 x 5 s here)
        candidates.append(Candidate("boto3 sync", boto3_sync, False, peer_staging, delete_object))

    pristine = write_source(os.path.join(root, f"checkpoint-{size}.pt"), size)
    n = max(cfg.repeats, LARGE_FILE_REPEATS) if size >= 16 * MIB else 51
    samples = compare(candidates, pristine, scratch, repeats=n, warmup=0 if size >= GIB else 1)
    os.unlink(pristine)
    medians = {name: median(s) for name, s in samples.items()}
    report.details.setdefault("stall_medians_s", {})[label(size)] = medians
    note = cfg.repeats_note(n)
    print(
        f"    {label(size)} medians: "
        + ", ".join(f"{name} {fmt_seconds(m)}" for name, m in medians.items()),
        flush=True,
    )
    for mode in modes:
        hoist = f"file_artifact[{mode}]"
        report.add(
            Figure(
                NAME,
                f"stall {label(size)} {mode}",
                "s",
                medians[hoist],
                medians["copy2+put"],
                "shutil.copy2+queue.put",
                samples={hoist: samples[hoist], "copy2+put": samples["copy2+put"]},
                note=note + (f"; staging {methods[mode]}" if mode in methods else ""),
            )
        )
    default = "file_artifact[copy]"
    for peer, peer_name in (("boto3 sync", "boto3 upload_file (sync)"), ("cp", "cp")):
        if peer in medians:
            report.add(
                Figure(
                    NAME,
                    f"stall {label(size)} copy",
                    "s",
                    medians[default],
                    medians[peer],
                    peer_name,
                    samples={default: samples[default], peer: samples[peer]},
                    note=note,
                )
            )
    if size == KIB:
        report.target(
            Target(
                "stall for a 1 KiB artifact, median ms (copy mode, incl. enqueue)",
                medians[default] * 1e3,
                1.0,
                False,
            )
        )
        if "file_artifact[link]" in medians:
            report.target(
                Target(
                    "stall for a 1 KiB artifact, median ms (link mode)",
                    medians["file_artifact[link]"] * 1e3,
                    1.0,
                    False,
                )
            )
    if size == cfg.gib:
        report.target(
            Target(
                f"move=True for {label(size)}: times less than shutil.copy2",
                medians["copy2+put"] / medians["file_artifact[move]"],
                100,
                True,
            )
        )
        report.target(
            Target(
                f"copy mode for {label(size)}: no slower than cp (cp time / hoist time)",
                medians["cp"] / medians[default],
                1.0,
                True,
            )
        )
        if "file_artifact[link]" in medians:
            report.target(
                Target(
                    f"link mode for {label(size)}: times less than shutil.copy2",
                    medians["copy2+put"] / medians["file_artifact[link]"],
                    100,
                    True,
                )
            )
    shutil.rmtree(scratch)


def _close_idle(report: Report, redis_url: str, root: str, cfg: RunConfig) -> None:
    """``close()`` of a logger with nothing pending (waits by default), timed alone."""
    samples = []
    for i in range(max(cfg.repeats, 21)):
        store = os.path.join(root, f"close-{i}")
        os.makedirs(os.path.join(store, "artifacts"))
        logger = ObjectStoreLogger(
            provider="local",
            container="artifacts",
            provider_kwargs={"key": store},
            upload_staging_folder=os.path.join(root, "hoist-staging"),
            broker_url=redis_url,
            run_name=f"close-{i}",
        )
        start = time.perf_counter()
        logger.close()
        samples.append(time.perf_counter() - start)
    report.add(
        Figure(
            NAME,
            "close() with nothing pending",
            "s",
            median(samples),
            samples={"close": samples},
            note=f"median of {len(samples)}",
        )
    )
    report.target(
        Target("close() with nothing pending, median ms", median(samples) * 1e3, 50, False)
    )
