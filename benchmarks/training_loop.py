"""Steady state: the step time of a CPU training loop that checkpoints every step.

The loop stands in for a GPU job: each step is numpy matrix products on one
thread (BLAS is held to one thread), then writes a checkpoint of
:data:`CHECKPOINT_BYTES` and hands it off. The loop is pinned to CPU 0 and the
workers, rclone and Redis to CPU 1 (:func:`pinned_fleet`): in production the
fleet runs on its own machines. The S3 server keeps its objects on tmpfs
(:meth:`Lab.s3_tmpfs`): in production the store is another machine, and a
store writing to the training node's own disk would add its writeback to the
measurement.

**The pace is set by the fleet, measured at the start of the run.** A job
writing checkpoints faster than its fleet drains them builds an ever-growing
backlog whatever the tool, and then measures the backlog (its page-cache
pressure, its disk), not the hand-off: the 2026-12-01 row (+57% copy, +80%
move) came from 100 MiB steps that outran a fleet slowed by a loaded machine.
So :func:`measure_drain` first times the fleet uploading a burst of
checkpoints of the chosen size, and each step's compute takes
:data:`HEADROOM` times that drain time per checkpoint: checkpoints come at no
more than half the rate the fleet can take them, whatever today's weather.
The untimed wait after each run's timed steps says whether a backlog formed
anyway (it should take about one upload's time).

Every variant writes each step's checkpoint to a new file and keeps the last
:data:`KEEP`, as trainers do: writing into page cache costs more when the
kernel must take fresh pages than when it reuses pages just freed, so a
baseline deleting its file at once would be favoured over any variant whose
bytes live until uploaded.

**The fleet is busy in every variant.** The two vCPUs here share one core's
caches and memory bus: with a baseline that uploaded nothing, the loop's own
compute ran 10-14% slower in CPU time whenever the fleet uploaded on the
other vCPU (2026-12-02), and the figure measured sharing the machine, not
hoist. So the baseline hands each checkpoint, by a hard link and a line on a
pipe (tens of microseconds), to a rank process on CPU 1
(:class:`ShadowRank`), which logs it with ``move=True``: the fleet uploads
the same bytes at the same pace, and what differs between the variants is
only what hoist does in the training process. Variants, alternated run by
run (:func:`benchmarks.timing.alternate`, the order flipping every round):

- ``none``: write the checkpoint, give it to the shadow rank (the baseline);
- ``hoist copy``: ``file_artifact`` in the default copy mode;
- ``hoist link``: ``staging="link"`` (a hard link; the staged link keeps the
  bytes of a checkpoint the loop deletes);
- ``hoist move``: the file given away with ``move=True`` (the worker deletes
  it once uploaded).

Each run times :data:`STEPS` steps after a warm-up step. Per run: the p50 and
p95 step time. Per variant: the median over runs of each, the spread of the
per-run p50 (its range over its median), and the slowdown against ``none``
*paired by round* (each run against the baseline run of the same round, so a
slow minute of the shared machine hits both), as the median over rounds with
its range.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from benchmarks.config import RunConfig
from benchmarks.files import MIB, REPO, label, write_source
from benchmarks.report import Figure, Report, Target, median
from benchmarks.services import Lab
from benchmarks.throughput import hoist_upload
from benchmarks.timing import alternate
from hoist.logger.levels import LogLevel
from hoist.logger.logger import ObjectStoreLogger
from tests.services.process import descendants
from tests.services.s3 import RcloneServer
from tests.services.workers import WorkerFleet

NAME = "training_loop"
CHECKPOINT_BYTES = 64 * MIB
"""Each step's checkpoint. The slowdown hardly depends on it: the hand-off's cost and
the step (paced by the upload's time) both grow with the size."""
STEPS = 10
"""Timed steps per run, after one warm-up step."""
HEADROOM = 2.0
"""A step's compute takes this many times the fleet's drain time per checkpoint."""
DRAIN_BURST = 6
"""Checkpoints queued at once to measure the drain rate (more than the fleet's 4 slots)."""
FLEET_WORKERS, FLEET_CONCURRENCY = 2, 2
KEEP = 2
"""Checkpoints the loop keeps on disk (older ones are deleted), as trainers do
(Composer's ``save_num_checkpoints_to_keep``, Hugging Face's ``save_total_limit``)."""
RUNS = 3
"""Runs per variant: a spread needs three, and 4 variants x 3 runs x 11 steps of
about 0.8 s fit the ~3 minutes this benchmark may take (``--repeats`` is ignored)."""

Handoff = Callable[[str, int], object]
"""What a step does with its checkpoint: given its path and the step number."""


def _numpy() -> Any:
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


@contextmanager
def pinned_fleet(lab: Lab, server: RcloneServer) -> Iterator[WorkerFleet]:
    """A fleet with itself, Redis and ``server`` on CPU 1 and this process on CPU 0."""
    with lab.fleet(FLEET_WORKERS, concurrency=FLEET_CONCURRENCY) as fleet:
        services = [w.proc.pid for w in fleet.workers if w.proc is not None]
        assert server.process.proc is not None
        services += [lab.redis_pid(), server.process.proc.pid]
        previous = pin_apart(services)
        try:
            yield fleet
        finally:
            os.sched_setaffinity(0, previous)


class Compute:
    """A step's compute: numpy matrix products on one thread, sized to take ``seconds``.

    Calibrated once, when made, from the fastest of several samples: a sample
    slowed by a busy neighbour would size the step too short for a quiet
    minute, and checkpoints would then come faster than the pace allows. On a
    loaded machine a step takes longer than asked, which the baseline variant,
    measured alongside, shows.
    """

    def __init__(self, seconds: float, samples: int = 5) -> None:
        np = _numpy()
        # 256 x 256 doubles (512 KiB) fit the core's own 1 MiB L2, to make the stand-in
        # for a GPU less sensitive to the uploads' memory traffic on the other core. It
        # did not remove it: at 384 x 384 (1.1 MiB) the loop thread's CPU time a step
        # rose 8-19% with the fleet uploading, at 256 x 256 still 10-14% (2026-12-02),
        # while the hand-off call itself took 1.5 ms (link, move) or 23 ms (copy).
        self._matrix = np.random.default_rng(0).random((256, 256))
        self._products = 10
        fastest = float("inf")
        for _ in range(samples):
            start = time.perf_counter()
            self()
            fastest = min(fastest, (time.perf_counter() - start) / self._products)
        self._products = max(1, round(seconds / max(fastest, 1e-6)))

    def __call__(self) -> None:
        product = self._matrix
        for _ in range(self._products):
            product = self._matrix @ product
            product /= product.max()


class Steps(NamedTuple):
    """Seconds of each timed step: wall clock, CPU time of the loop's thread, the hand-off.

    The CPU time leaves out what a neighbour on the shared cores takes, and
    also the hand-off's waits (I/O, the GIL): a figure to read the wall
    clock's against, not instead of it. The hand-off is the wall time of the
    call alone: a slower step with a quick hand-off is compute slowed by
    something else (a neighbour, the upload's background work on CPU 0).
    """

    wall: list[float]
    cpu: list[float]
    handoff: list[float]


@dataclass
class TrainingLoop:
    """Steps of compute, each writing a checkpoint to a new file and handing it off.

    Parameters:
        root: where the checkpoints are written (emptied after each run).
        compute: one step's compute.
        size: bytes of each checkpoint (random, incompressible).
        keep: checkpoints kept on disk; older ones are deleted.
    """

    root: str
    compute: Compute
    size: int
    keep: int = KEEP
    _weights: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        self._weights = os.urandom(self.size)

    def run(
        self,
        handoff: Handoff,
        steps: int,
        *,
        gives_away: bool = False,
        after_step: Callable[[int], None] | None = None,
    ) -> Steps:
        """Run one warm-up step and ``steps`` timed ones; return the timed steps' seconds.

        Parameters:
            handoff: called with each step's checkpoint.
            steps: timed steps.
            gives_away: the hand-off takes the file (``move=True``): the loop
                deletes none of its own.
            after_step: called untimed after each step with its number (to
                sample staging).
        """
        timed = Steps([], [], [])
        for step in range(steps + 1):  # step 0 warms up and is not counted
            path = os.path.join(self.root, f"checkpoint-{step}.pt")
            began, began_cpu = time.perf_counter(), time.thread_time()
            self.compute()
            with open(path, "wb") as out:
                out.write(self._weights)
            handed = time.perf_counter()
            handoff(path, step)
            handed = time.perf_counter() - handed
            oldest = os.path.join(self.root, f"checkpoint-{step - self.keep}.pt")
            if not gives_away and os.path.exists(oldest):
                os.unlink(oldest)
            if step:
                timed.wall.append(time.perf_counter() - began)
                timed.cpu.append(time.thread_time() - began_cpu)
                timed.handoff.append(handed)
            if after_step is not None:
                after_step(step)
        for name in os.listdir(self.root):
            os.unlink(os.path.join(self.root, name))
        return timed


class ShadowRank:
    """A rank process on the fleet's CPUs that uploads what the baseline loop gives it.

    The loop hard-links each checkpoint into :attr:`inbox` and writes the
    link's path on the process's stdin; the process
    (:mod:`benchmarks.rank_process`, ``"stream"``) logs it with ``move=True``.
    Leaving the block closes stdin and waits, untimed, for the uploads.

    Parameters:
        lab: the lab whose Redis, store and staging root to use.
        run_name: the shadow's run.
        cpus: the CPUs it runs on (the fleet's).
    """

    def __init__(self, lab: Lab, run_name: str, cpus: set[int]) -> None:
        self.inbox = os.path.join(lab.root, f"shadow-{run_name}")
        os.makedirs(self.inbox)
        logger = lab.rank_spec("s3-tmpfs", run_name, 0, 1)
        logger["store"]["kind"] = "s3"
        spec = {"logger": logger, "files": [], "measure": "stream"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.rank_process", json.dumps(spec)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),  # before it starts a thread
        )
        assert self.proc.stdout is not None
        if (line := self.proc.stdout.readline().strip()) != "ready":
            self.proc.kill()
            raise RuntimeError(f"the shadow rank did not start: {line!r}")

    def handoff(self, path: str, step: int) -> None:
        """Give ``path`` away: a hard link the shadow moves into staging, and its name."""
        link = os.path.join(self.inbox, f"ep{step}.pt")
        os.link(path, link)
        assert self.proc.stdin is not None
        self.proc.stdin.write(link + "\n")
        self.proc.stdin.flush()

    def __enter__(self) -> ShadowRank:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if exc_info[0] is not None:  # the run failed: stop the shadow, keep the run's error
            self.proc.kill()
            self.proc.wait()
            shutil.rmtree(self.inbox, ignore_errors=True)
            return
        try:
            out, _ = self.proc.communicate(timeout=600)  # closes stdin: the shadow waits
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            shutil.rmtree(self.inbox, ignore_errors=True)
        if self.proc.returncode != 0:
            raise RuntimeError(f"the shadow rank failed ({self.proc.returncode}): {out[-500:]}")


def measure_drain(lab: Lab, root: str, size: int, count: int, attempts: int = 2) -> list[float]:
    """Seconds the fleet takes per checkpoint of ``size``, from bursts of ``count`` at once.

    One figure per burst, ``attempts`` of them. A benchmark that must not
    build a backlog paces from the slowest (an unlucky fast burst would let
    one form once the machine is busy again); one that must build one, from
    the fastest. Each is printed with the load average, the day's weather.
    """
    burst = os.path.join(root, "drain")
    os.makedirs(burst)
    files = [write_source(os.path.join(burst, f"drain-{i}.pt"), size) for i in range(count)]
    try:
        seconds = [
            hoist_upload(lab, "s3-tmpfs", f"drain-{attempt}", files)[0]
            for attempt in range(attempts)
        ]
    finally:
        shutil.rmtree(burst)
    drains = [s / count for s in seconds]
    print(
        f"the fleet drains a {label(size)} checkpoint in "
        + " / ".join(f"{d * 1e3:.0f}" for d in drains)
        + f" ms ({attempts} bursts of {count}); load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return drains


def hoist_handoff(
    logger: ObjectStoreLogger, mode: str, name: str | None = None
) -> tuple[Handoff, bool]:
    """The hand-off of a staging ``mode`` (copy, link, move) and whether it gives files away.

    Every step logs ``ep<step>.pt``, or ``name`` with ``overwrite=True`` (a
    ``latest.pt`` every step) if given.
    """
    move = mode == "move"

    def handoff(path: str, step: int) -> object:
        return logger.file_artifact(
            LogLevel.BATCH,
            name or f"ep{step}.pt",
            path,
            overwrite=name is not None,
            move=move,
            staging=None if move else mode,
        )

    return handoff, move


def percentile(samples: list[float], q: int) -> float:
    """The ``q``-th percentile (1-99), interpolated between the samples."""
    if len(samples) < 2:
        return median(samples)
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def spread(values: list[float]) -> float:
    """The range of ``values`` over their median: 0.04 means they span 4% of it."""
    middle = median(values)
    return (max(values) - min(values)) / middle if middle else 0.0


def paired_slowdowns(runs: list[float], baseline: list[float]) -> list[float]:
    """Each run's slowdown against the baseline run of the same round.

    Example:
        >>> [round(s, 2) for s in paired_slowdowns([1.1, 2.2], [1.0, 2.0])]
        [0.1, 0.1]
    """
    return [run / base - 1 for run, base in zip(runs, baseline, strict=True)]


@dataclass(frozen=True)
class VariantSummary:
    """One variant's runs, summarised.

    Parameters:
        name: the variant.
        p50s, p95s: each run's p50 and p95 step seconds.
        cpu_p50s: each run's p50 of the loop thread's CPU seconds a step.
        handoff_p50s: each run's p50 of the hand-off call's seconds.
        drained: each run's seconds of the untimed wait after its timed steps.
        slowdowns, cpu_slowdowns: each run's slowdown of ``p50s`` and
            ``cpu_p50s`` against the same round's baseline (empty for the
            baseline itself).
    """

    name: str
    p50s: list[float]
    p95s: list[float]
    cpu_p50s: list[float]
    handoff_p50s: list[float]
    drained: list[float]
    slowdowns: list[float]
    cpu_slowdowns: list[float]

    @classmethod
    def of(
        cls,
        name: str,
        runs: list[Steps],
        drained: list[float],
        baseline: VariantSummary | None = None,
    ) -> VariantSummary:
        """Summarise ``runs``, paired round by round with ``baseline``'s if given."""
        p50s = [median(r.wall) for r in runs]
        cpu_p50s = [median(r.cpu) for r in runs]
        slowdowns = [] if baseline is None else paired_slowdowns(p50s, baseline.p50s)
        cpu_slowdowns = [] if baseline is None else paired_slowdowns(cpu_p50s, baseline.cpu_p50s)
        p95s = [percentile(r.wall, 95) for r in runs]
        handoffs = [median(r.handoff) for r in runs]
        return cls(name, p50s, p95s, cpu_p50s, handoffs, drained, slowdowns, cpu_slowdowns)

    def row(self) -> str:
        """A line of :func:`table` (under 100 columns)."""
        slow = "baseline"
        if self.slowdowns:
            slow = (
                f"{median(self.slowdowns):+6.1%} "
                f"[{min(self.slowdowns):+.1%} .. {max(self.slowdowns):+.1%}]"
            )
        cpu = f"{median(self.cpu_slowdowns):+7.1%}" if self.cpu_slowdowns else ""
        drained = f"{median(self.drained) * 1e3:6.0f}" if self.drained else ""
        return (
            f"{self.name:<11} {median(self.p50s) * 1e3:6.0f} {median(self.p95s) * 1e3:6.0f}"
            f" {spread(self.p50s):6.1%}  {slow:<30} {cpu:>7}"
            f" {median(self.handoff_p50s) * 1e3:6.1f} {drained:>6}"
        ).rstrip()


def table(summaries: list[VariantSummary]) -> str:
    """The variants as a table a 100-column terminal shows."""
    header = (
        f"{'variant, ms':<11} {'p50':>6} {'p95':>6} {'spread':>6}  "
        f"{'p50 slowdown, paired [range]':<30} {'cpu':>7} {'handoff':>6} {'drain':>6}"
    )
    return "\n".join([header, "-" * len(header), *(s.row() for s in summaries)])


def run(lab: Lab, report: Report, cfg: RunConfig) -> None:
    """Pace the loop from the fleet's drain rate, then time each variant in alternation."""
    size = cfg.size(CHECKPOINT_BYTES)
    runs = RUNS
    root = os.path.join(lab.root, "training")
    server = lab.s3_tmpfs()
    steps: dict[str, list[Steps]] = {}
    drained: dict[str, list[float]] = {}

    def timed(name: str, mode: str | None) -> Callable[[int], float]:
        """A candidate for :func:`alternate`: one run of the loop; its p50 step."""
        steps[name], drained[name] = [], []

        def one_run(r: int) -> float:
            if mode is None:
                began = 0.0
                with ShadowRank(lab, f"train-{r}-shadow", fleet_cpus) as shadow:
                    seconds = loop.run(shadow.handoff, STEPS)
                    began = time.perf_counter()
                drained[name].append(time.perf_counter() - began)
            else:
                logger = lab.logger("s3-tmpfs", f"train-{r}-{mode}", wait_on_close=False)
                try:
                    handoff, gives_away = hoist_handoff(logger, mode)
                    seconds = loop.run(handoff, STEPS, gives_away=gives_away)
                    began = time.perf_counter()
                    logger.wait(poll_interval=0.01)  # untimed: the next run starts idle
                    drained[name].append(time.perf_counter() - began)
                finally:
                    logger.close()
            steps[name].append(seconds)
            # One line a run: a slow one (the shared machine) is seen as it happens.
            print(
                f"  round {r} {name:<10}: p50 {median(seconds.wall) * 1e3:.0f} ms, "
                f"p95 {percentile(seconds.wall, 95) * 1e3:.0f} ms, "
                f"cpu p50 {median(seconds.cpu) * 1e3:.0f} ms, "
                f"hand-off p50 {median(seconds.handoff) * 1e3:.1f} ms",
                flush=True,
            )
            return median(seconds.wall)

        return one_run

    def settle() -> None:
        lab.clear_bucket(server)
        os.sync()

    cpus = sorted(os.sched_getaffinity(0))
    fleet_cpus = set(cpus[1:]) or set(cpus)  # where pinned_fleet puts the fleet
    with pinned_fleet(lab, server):
        drain = max(measure_drain(lab, lab.root, size, DRAIN_BURST))
        loop = TrainingLoop(root, Compute(HEADROOM * drain), size)
        variants = {"none": None, "hoist copy": "copy", "hoist link": "link", "hoist move": "move"}
        alternate(
            {name: timed(name, mode) for name, mode in variants.items()}, runs, between=settle
        )
    _report(report, cfg, size, drain, runs, steps, drained)


def _report(
    report: Report,
    cfg: RunConfig,
    size: int,
    drain: float,
    runs: int,
    steps: dict[str, list[Steps]],
    drained: dict[str, list[float]],
) -> None:
    base = VariantSummary.of("none", steps["none"], drained["none"])
    summaries = [base] + [
        VariantSummary.of(name, steps[name], drained[name], base)
        for name in steps
        if name != "none"
    ]
    step = median(base.p50s)
    pace = (
        f"a {label(size)} checkpoint every {step * 1e3:.0f} ms step; the fleet drains one in "
        f"{drain * 1e3:.0f} ms, so checkpoints come at {drain / step:.0%} of its rate"
    )
    print(
        f"{pace}; load average {os.getloadavg()[0]:.1f}\n"
        f"{runs} runs x {STEPS} timed steps per variant, alternated; spread: range of"
        " the runs' p50 over their median; cpu: the loop thread's CPU time a step, paired p50"
        " slowdown; handoff: p50 of the call alone; drain: the untimed wait for the last"
        " uploads"
    )
    if drain / step > 1 / HEADROOM:
        print(
            f"WARNING: checkpoints came faster than 1/{HEADROOM:g} of the drain rate "
            "(a busy minute at calibration?): the figure may include a backlog"
        )
    print(table(summaries), flush=True)
    note = f"{pace}; {runs} runs x {STEPS} steps; {cfg.repeats_note(runs)}"
    for summary in summaries[1:]:
        report.add(
            Figure(
                NAME,
                f"training step p50, checkpoint every step ({summary.name})",
                "s",
                median(summary.p50s),
                step,
                "hoist not in the loop",
                samples={summary.name: summary.p50s, "none": base.p50s},
                note=note,
            )
        )
    report.details[NAME] = {
        "checkpoint_bytes": size,
        "drain_seconds_per_checkpoint": drain,
        "timed_steps_per_run": STEPS,
        "runs": runs,
        "variants": {
            s.name: {
                "p50_by_run": s.p50s,
                "p95_by_run": s.p95s,
                "cpu_p50_by_run": s.cpu_p50s,
                "cpu_slowdown_by_run": s.cpu_slowdowns,
                "handoff_p50_by_run": s.handoff_p50s,
                "slowdown_by_run": s.slowdowns,
                "drain_after_by_run": s.drained,
                "steps_by_run": [r.wall for r in steps[s.name]],
                "cpu_by_run": [r.cpu for r in steps[s.name]],
            }
            for s in summaries
        },
    }
    for summary in summaries[1:]:
        report.target(
            Target(
                f"training loop p50 slowdown with {summary.name}, % (paired median)",
                median(summary.slowdowns) * 100,
                5,
                False,
            )
        )
