"""Backlog: a training loop checkpointing faster than the fleet drains, with and without a bound.

The same loop, fleet and pinning as :mod:`benchmarks.training_loop`, paced the
other way: each step's compute takes a third of the fleet's drain time per
checkpoint (:data:`FASTER`; the fastest of the drain bursts, so that a busy
minute at the start cannot pace the loop slower than the fleet), so
checkpoints come at about three times the rate the fleet can upload them, as
in a job whose checkpoints outgrew its fleet. Variants, alternated run by
run, all in the default copy mode:

- ``no bound``: every step logs ``ep<step>.pt``; staging grows by about
  two thirds of a checkpoint a step for as long as the job runs, until the
  disk is full;
- ``wait``: the same with ``max_staged_bytes`` of :data:`BOUND_CHECKPOINTS`
  checkpoints and ``when_staging_full="wait"``: staging stays under the
  bound and the loop slows to the fleet's pace, every checkpoint kept;
- ``supersede``: every step logs ``latest.pt`` with ``overwrite=True`` and
  ``when_staging_full="supersede"``: the call withdraws the oldest version
  no worker has started; staging stays under the bound, the loop keeps its
  pace, and the fleet uploads the newest version it can.

For each: the step time (p50, p95), the bytes in the rank's staging
directory after each step (read from the directory, not from the logger's
count), the untimed wait after the loop for what was left ("drain"), and how many
versions were uploaded and how many withdrawn.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.config import RunConfig
from benchmarks.files import MIB, label
from benchmarks.report import Figure, Report, median
from benchmarks.services import Lab
from benchmarks.timing import alternate
from benchmarks.training_loop import (
    CHECKPOINT_BYTES,
    DRAIN_BURST,
    FLEET_CONCURRENCY,
    FLEET_WORKERS,
    RUNS,
    Compute,
    TrainingLoop,
    hoist_handoff,
    measure_drain,
    percentile,
    pinned_fleet,
)
from hoist.state.records import Records
from hoist.state.states import State

NAME = "backlog"
FASTER = 3.0
"""Checkpoints come this many times faster than the fleet drains them."""
STEPS = 20
"""Timed steps per run, after one warm-up step."""
BOUND_CHECKPOINTS = FLEET_WORKERS * FLEET_CONCURRENCY + 2
"""``max_staged_bytes``, in checkpoints: the fleet's upload slots and two more. Each
slot holds a version it has claimed, which no call can withdraw; at a bound of
only as many, ``supersede`` would find nothing to withdraw and wait like ``wait``."""
SAMPLES_AT = (0.25, 0.5, 0.75, 1.0)
"""Fractions of the run at which the table shows what staging holds."""


@dataclass(frozen=True)
class Variant:
    """A way to log each step's checkpoint.

    Parameters:
        name: its label.
        options: ``ObjectStoreLogger`` keywords (the bound and the policy).
        latest: log ``latest.pt`` with ``overwrite=True`` every step, not ``ep<step>.pt``.
    """

    name: str
    options: dict[str, object]
    latest: bool = False


@dataclass
class BacklogRun:
    """What one run of a variant measured."""

    steps: list[float]
    staged: list[int]
    """Bytes in the rank's staging directory after each timed step."""
    drain_after: float
    states: dict[str, int]
    """How many of the run's artifacts ended in each state."""


def staged_bytes(directory: str) -> int:
    """Bytes of the files in ``directory`` (a rank's staging directory; 0 if absent)."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    total = 0
    for entry in entries:
        try:
            total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue  # uploaded and removed meanwhile
    return total


def one_run(lab: Lab, loop: TrainingLoop, variant: Variant, run_name: str) -> BacklogRun:
    """Run the loop once with ``variant``'s logger; wait (untimed) for what is left."""
    logger = lab.logger("s3-tmpfs", run_name, wait_on_close=False, **variant.options)
    directory = os.path.join(lab.staging_root, run_name, "rank0")
    staged: list[int] = []
    ids: list[object] = []
    try:
        handoff, _ = hoist_handoff(logger, "copy", "latest.pt" if variant.latest else None)

        def log(path: str, step: int) -> None:
            ids.append(handoff(path, step))

        def sample(step: int) -> None:
            if step:  # the warm-up step is not counted
                staged.append(staged_bytes(directory))

        steps = loop.run(log, STEPS, after_step=sample).wall
        began = time.perf_counter()
        logger.wait(poll_interval=0.01)
        drain_after = time.perf_counter() - began
    finally:
        logger.close()
    states = Records.from_url(lab.redis_url).states([str(i) for i in ids])
    counts = {state.value: list(states.values()).count(state) for state in State}
    return BacklogRun(steps, staged, drain_after, {k: v for k, v in counts.items() if v})


def run(lab: Lab, report: Report, cfg: RunConfig) -> None:
    """Pace the loop at :data:`FASTER` times the drain rate; run each variant in alternation."""
    size = cfg.size(CHECKPOINT_BYTES)
    bound = BOUND_CHECKPOINTS * size
    variants = [
        Variant("no bound", {}),
        Variant("wait", {"max_staged_bytes": bound, "when_staging_full": "wait"}),
        Variant("supersede", {"max_staged_bytes": bound, "when_staging_full": "supersede"}, True),
    ]
    server = lab.s3_tmpfs()
    runs: dict[str, list[BacklogRun]] = {v.name: [] for v in variants}

    def candidate(variant: Variant) -> Callable[[int], float]:
        def timed(r: int) -> float:
            result = one_run(lab, loop, variant, f"backlog-{r}-{variant.name.replace(' ', '-')}")
            runs[variant.name].append(result)
            print(
                f"  round {r} {variant.name:<9}: p50 {median(result.steps) * 1e3:.0f} ms, "
                f"peak staged {max(result.staged) / MIB:.0f} MiB, drain {result.drain_after:.1f} s",
                flush=True,
            )
            return median(result.steps)

        return timed

    def settle() -> None:
        lab.clear_bucket(server)
        os.sync()

    # A waiting call warns at its start and end, by design; twenty of them a run
    # would bury the table, and the benchmark's own figures say the same.
    rank_log = logging.getLogger("hoist.rank")
    level = rank_log.level
    rank_log.setLevel(logging.ERROR)
    try:
        with pinned_fleet(lab, server):
            drain = min(measure_drain(lab, lab.root, size, DRAIN_BURST))
            loop = TrainingLoop(os.path.join(lab.root, "backlog"), Compute(drain / FASTER), size)
            alternate({v.name: candidate(v) for v in variants}, RUNS, between=settle)
    finally:
        rank_log.setLevel(level)
    _report(report, size, bound, drain, runs)


def _at(staged: list[int], fraction: float) -> int:
    """What staging held after the step at ``fraction`` of the run."""
    return staged[max(0, round(fraction * len(staged)) - 1)]


def table(runs: dict[str, list[BacklogRun]]) -> str:
    """The variants as a table a 100-column terminal shows.

    Step times in ms: the p50 hides a loop that waits now and then, the mean
    shows the pace it keeps, the p95 its stalls. Medians over runs, but the
    outcome (artifacts by final state) is the last run's.
    """
    steps_at = [round(f * STEPS) for f in SAMPLES_AT]
    header = (
        f"{'variant':<9} {'p50 ms':>6} {'mean':>6} {'p95':>6}  MiB at step"
        + "".join(f"{s:>5}" for s in steps_at)
        + f" {'peak':>5} {'drain':>7}  outcome"
    )
    lines = [header, "-" * len(header)]
    for name, results in runs.items():
        times = " ".join(
            f"{median([of(r.steps) for r in results]) * 1e3:6.0f}"
            for of in (median, statistics.fmean, lambda s: percentile(s, 95))
        )
        staged = "".join(
            f"{median([_at(r.staged, f) for r in results]) / MIB:5.0f}" for f in SAMPLES_AT
        )
        peak = median([max(r.staged) for r in results]) / MIB
        drain_after = median([r.drain_after for r in results])
        outcome = ", ".join(f"{v} {k}" for k, v in results[-1].states.items())
        lines.append(
            f"{name:<9} {times}  {'':11}{staged} {peak:5.0f} {drain_after:5.1f} s  {outcome}"
        )
    return "\n".join(lines)


def _report(
    report: Report, size: int, bound: int, drain: float, runs: dict[str, list[BacklogRun]]
) -> None:
    unbounded = median([median(r.steps) for r in runs["no bound"]])
    print(
        f"a {label(size)} checkpoint every {unbounded * 1e3:.0f} ms step without a bound; the "
        f"fleet drains one in {drain * 1e3:.0f} ms: checkpoints at {drain / unbounded:.1f}x its "
        f"rate; max_staged_bytes {label(bound)}; {len(runs['no bound'])} runs x {STEPS} steps; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(table(runs), flush=True)
    note = f"{STEPS} steps, checkpoints at {drain / unbounded:.1f}x the drain rate"
    for name, results in runs.items():
        p50s = [median(r.steps) for r in results]
        peaks = [float(max(r.staged)) / MIB for r in results]
        means = [statistics.fmean(r.steps) for r in results]
        report.add(
            Figure(NAME, f"step p50, backlog ({name})", "s", median(p50s), samples={name: p50s})
        )
        report.add(
            Figure(NAME, f"step mean, backlog ({name})", "s", median(means), samples={name: means})
        )
        report.add(
            Figure(
                NAME,
                f"peak staged after {STEPS} steps ({name})",
                "MiB",
                median(peaks),
                samples={name: peaks},
                note=note,
            )
        )
    report.details[NAME] = {
        "checkpoint_bytes": size,
        "max_staged_bytes": bound,
        "drain_seconds_per_checkpoint": drain,
        "variants": {
            name: [
                {
                    "steps": r.steps,
                    "staged_bytes": r.staged,
                    "drain_after": r.drain_after,
                    "states": r.states,
                }
                for r in results
            ]
            for name, results in runs.items()
        },
    }
