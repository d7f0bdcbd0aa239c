"""Steady state: the step time of a CPU training loop that checkpoints 100 MiB every step.

The loop stands in for a GPU job: each step is numpy matrix products on one
thread (about 0.75 s here; BLAS is held to one thread), then writes a 100 MiB
checkpoint and hands it off. The loop is pinned to CPU 0 and the workers,
rclone and Redis to CPU 1: in production the fleet runs on its own machines.

The S3 server keeps its objects on tmpfs (:meth:`Lab.s3_tmpfs`): in
production the store is another machine, and a store writing 100 MiB per
step to the training node's own disk would add its writeback to the
measurement. Every thread of the services is pinned, not only their main
threads (``sched_setaffinity`` of a pid moves one thread).

The step is long enough that the fleet can drain a checkpoint per step
(100 MiB in about 0.6 s on CPU 1; at 0.5 s steps the backlog grew and
link and move runs slowed by 46%, measured), as in any run that means to keep
its checkpoints: a job writing faster than its uploads can drain builds an
ever-growing backlog whatever the tool. At this step length a synchronous
upload costs well over the 20% the target names, so the figure says what the
hand-off costs where it matters. (The previous version of this benchmark
used 100 ms steps, 1 GB/s of checkpoints against a fleet draining 150 MB/s
on one core: it measured the backlog's page-cache pressure, +100-320%.)

Every variant writes each step's checkpoint to a new file and keeps the last
:data:`KEEP`, as trainers do. That matters on this VM: writing 100 MiB into
page cache took 25 ms when the kernel could reuse pages just freed and up to
350 ms when it had to take fresh ones, so a baseline deleting its file at
once would be favoured over any variant whose bytes live until uploaded.
Variants, alternated run by run:

- ``none``: write the checkpoint, hand it to nobody (the baseline);
- ``hoist``: ``file_artifact`` in the default copy mode;
- ``hoist link``: ``staging="link"`` (a hard link; the staged link keeps the
  bytes of a checkpoint the loop deletes);
- ``hoist move``: the file given away with ``move=True`` (the worker deletes
  it once uploaded);
- ``boto3 sync``: a synchronous ``upload_file`` to the same server.

The figure is the median step time of a run (median over runs); the slowdown
is against ``none``. hoist's uploads are waited for after the timed steps
(untimed), so each run starts with an idle fleet.
"""

from __future__ import annotations

import os
import sys
import time

from benchmarks.config import RunConfig
from benchmarks.files import MIB
from benchmarks.report import Figure, Report, Target, median
from benchmarks.services import Lab
from benchmarks.timing import alternate
from hoist.logger.levels import LogLevel
from tests.services.process import descendants

NAME = "stall"
STEPS = 2
"""Timed steps per run, each logging a checkpoint (the target: every step); two,
after a warm-up step, to fit the suite's 10 minutes."""
STEP_COMPUTE_SECONDS = 0.75
KEEP = 2
"""Checkpoints the loop keeps on disk (older ones are deleted), as trainers do
(Composer's ``save_num_checkpoints_to_keep``, Hugging Face's ``save_total_limit``)."""


def _numpy():  # type: ignore[no-untyped-def]
    """numpy with BLAS on one thread (must be set before numpy is first imported)."""
    if "numpy" not in sys.modules:
        for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(variable, "1")
    import numpy

    return numpy


def pin_apart(services: list[int]) -> set[int]:
    """Put this process on CPU 0 and ``services`` (with their children) on the others.

    Returns this process's previous CPU set. On a single CPU nothing is pinned.
    """
    previous = os.sched_getaffinity(0)
    cpus = sorted(previous)
    if len(cpus) < 2:
        return previous
    for pid in services:
        for each in [pid, *descendants(pid)]:
            _pin_threads(each, set(cpus[1:]))
    os.sched_setaffinity(0, {cpus[0]})
    return previous


def _pin_threads(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid``: ``sched_setaffinity(pid)`` moves only its main
    thread, and rclone's (Go) and the workers' other threads would stay on CPU 0."""
    try:
        threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return  # exited meanwhile
    for tid in threads:
        try:
            os.sched_setaffinity(tid, cpus)
        except (ProcessLookupError, PermissionError):
            continue


def run(lab: Lab, report: Report, cfg: RunConfig) -> None:
    np = _numpy()
    size = cfg.size(100 * MIB)
    root = os.path.join(lab.root, "training")
    os.makedirs(root)
    rng = np.random.default_rng(0)
    matrix = rng.random((384, 384))
    weights = rng.integers(0, 256, size, dtype=np.uint8).tobytes()  # incompressible

    def compute() -> None:
        product = matrix
        for _ in range(products):
            product = matrix @ product
            product /= product.max()

    products = 20
    start = time.perf_counter()
    compute()
    one = (time.perf_counter() - start) / products
    products = max(1, int(STEP_COMPUTE_SECONDS / max(one, 1e-5)))

    def loop(r: int, handoff, keep: bool = True) -> float:  # type: ignore[no-untyped-def]
        steps = []
        for step in range(STEPS + 1):  # the first step warms up and is not counted
            path = os.path.join(root, f"checkpoint-{step}.pt")
            began = time.perf_counter()
            compute()
            with open(path, "wb") as out:
                out.write(weights)
            handoff(path, r, step)
            oldest = os.path.join(root, f"checkpoint-{step - KEEP}.pt")
            if keep and os.path.exists(oldest):
                os.unlink(oldest)
            if step:
                steps.append(time.perf_counter() - began)
        for name in os.listdir(root):
            os.unlink(os.path.join(root, name))
        # The median step: writing 100 MiB took 25 ms or 350 ms here at random, in
        # every variant alike (the VM reclaiming page cache), and one slow write in
        # a mean of three steps would decide the comparison.
        return median(steps)

    server = lab.s3_tmpfs()
    client = lab.s3_client(server)
    bucket = server.bucket

    def none(r: int) -> float:
        return loop(r, lambda path, r, step: None)

    def with_boto3(r: int) -> float:
        return loop(r, lambda path, r, step: client.upload_file(path, bucket, f"train/{r}/{step}"))

    def with_hoist(r: int, staging: str = "copy") -> float:
        logger = lab.logger("s3-tmpfs", f"train-{r}-{staging}", wait_on_close=False)
        move = staging == "move"
        try:
            seconds = loop(
                r,
                lambda path, r, step: logger.file_artifact(
                    LogLevel.BATCH,
                    f"ep{step}.pt",
                    path,
                    move=move,
                    staging=None if move else staging,
                ),
                keep=not move,
            )
            logger.wait()  # untimed: the next run starts with an idle fleet
        finally:
            logger.close()
        return seconds

    def settle() -> None:
        lab.clear_bucket(server)
        os.sync()

    with lab.fleet(2, concurrency=2) as fleet:
        services = [w.proc.pid for w in fleet.workers if w.proc is not None]
        services += [lab.redis_pid(), server.process.proc.pid]  # type: ignore[union-attr]
        previous = pin_apart(services)
        try:
            samples = alternate(
                {
                    "none": none,
                    "hoist": with_hoist,
                    "hoist link": lambda r: with_hoist(r, "link"),
                    "hoist move": lambda r: with_hoist(r, "move"),
                    "boto3 sync": with_boto3,
                },
                cfg.repeats,
                between=settle,
            )
        finally:
            os.sched_setaffinity(0, previous)
    base = median(samples["none"])
    note = (
        f"{STEPS} steps of ~{base * 1e3:.0f} ms, a {size // MIB} MiB checkpoint every step; "
        f"{cfg.repeats_note(cfg.repeats)}"
    )
    for ours, peer, name in (
        ("hoist", "none", "no upload"),
        ("hoist link", "none", "no upload"),
        ("hoist move", "none", "no upload"),
        ("hoist", "boto3 sync", "boto3 upload_file (sync)"),
    ):
        report.add(
            Figure(
                NAME,
                f"training step, checkpoint every step ({ours})",
                "s",
                median(samples[ours]),
                median(samples[peer]),
                name,
                samples={ours: samples[ours], peer: samples[peer]},
                note=note,
            )
        )
    slowdown = median(samples["hoist"]) / base - 1
    link_slowdown = median(samples["hoist link"]) / base - 1
    move_slowdown = median(samples["hoist move"]) / base - 1
    sync_slowdown = median(samples["boto3 sync"]) / base - 1
    report.details["training_loop"] = {
        "slowdown_hoist": slowdown,
        "slowdown_hoist_link": link_slowdown,
        "slowdown_hoist_move": move_slowdown,
        "slowdown_boto3": sync_slowdown,
    }
    report.target(Target("training loop slowdown with hoist (copy), %", slowdown * 100, 5, False))
    report.target(
        Target("training loop slowdown with hoist (link), %", link_slowdown * 100, 5, False)
    )
    report.target(
        Target("training loop slowdown with hoist (move=True), %", move_slowdown * 100, 5, False)
    )
    report.target(
        Target(
            "training loop slowdown with sync boto3, % (expected > 20)",
            sync_slowdown * 100,
            20,
            True,
        )
    )
