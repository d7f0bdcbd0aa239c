"""Fleet scaling: artifacts per second with 1, 2 and 4 worker processes, and what limits it.

One rank process logs small files (64 KiB; where per-upload overhead, not
bandwidth, decides) to ``rclone serve s3`` through fleets of 1, 2 and 4
``hoist worker`` processes (2 pool processes each). For each fleet the CPU
seconds used by the rank, the workers (all their processes), rclone and Redis
are read from /proc, and during the 1-worker run ``py-spy`` samples the
worker's processes where they hold the GIL (Python's own CPU); the output ends
with a short conclusion.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import time

from benchmarks.config import RunConfig
from benchmarks.processes import cpu_seconds, group_pids
from benchmarks.ranks import run_ranks
from benchmarks.report import Figure, Report
from benchmarks.services import Lab
from benchmarks.small_files import write_small_files

NAME = "fleet"
FLEETS = (1, 2, 4)


def _py_spy(pid: int, seconds: int, out: str) -> subprocess.Popen[bytes] | None:
    binary = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(binary):
        return None
    return subprocess.Popen(
        [
            binary,
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--duration",
            str(seconds),
            "--format",
            "raw",
            "--rate",
            "50",
            # Only samples that hold the GIL: Python's own CPU. Without it a thread
            # asleep or waiting on a socket counts as busy (the resender's sleep
            # showed as 30% of a worker's samples).
            "--gil",
            "--output",
            out,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _top_frames(raw: str, count: int = 6) -> list[tuple[str, float]]:
    """Leaf functions of the most samples in py-spy's collapsed-stack output, with shares."""
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    with open(raw) as lines:
        for line in lines:
            stack, _, samples = line.rstrip().rpartition(" ")
            if not samples.isdigit():
                continue
            frames = [f for f in stack.split(";") if not f.startswith("process ")]
            # The innermost frame in hoist, boto/botocore, kombu or redis: where our time goes.
            leaf = frames[-1] if frames else "?"
            leaves[leaf.split(" (")[0]] += int(samples)
            total += int(samples)
    return [(name, n / total) for name, n in leaves.most_common(count)] if total else []


def run(lab: Lab, report: Report, cfg: RunConfig) -> None:
    total = cfg.count(400)
    root = os.path.join(lab.root, "fleet")
    files = write_small_files(root, total, 1)
    rclone = lab.s3().process.proc
    assert rclone is not None
    redis_pid = lab.redis_pid()
    rates: dict[int, float] = {}
    usage: dict[int, dict[str, float]] = {}
    profile: list[tuple[str, float]] = []
    for count in FLEETS:
        lab.clear_bucket()
        with lab.fleet(count, concurrency=2) as fleet:
            groups = [w.proc.pid for w in fleet.workers if w.proc is not None]
            worker_pids = [p for g in groups for p in group_pids(g)]
            spy = None
            raw = os.path.join(lab.root, f"py-spy-{count}.txt")
            if count == 1:
                spy = _py_spy(groups[0], 600, raw)
                time.sleep(1.0)  # let py-spy attach before the burst
            before = {
                "workers": cpu_seconds(worker_pids),
                "rclone": cpu_seconds([rclone.pid]),
                "redis": cpu_seconds([redis_pid]),
            }
            children_before = os.times()
            result = run_ranks(lab, "s3", f"fleet-{count}", files)
            children_after = os.times()
            after = {
                "workers": cpu_seconds(worker_pids),
                "rclone": cpu_seconds([rclone.pid]),
                "redis": cpu_seconds([redis_pid]),
            }
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes what it has
                spy.wait(30)
                if os.path.exists(raw):
                    profile = _top_frames(raw)
        rates[count] = result.per_second
        used = {k: (after[k] - before[k]) / result.seconds for k in before}
        used["rank"] = (
            (children_after.children_user + children_after.children_system)
            - (children_before.children_user + children_before.children_system)
        ) / result.seconds
        usage[count] = used
        report.add(
            Figure(
                NAME,
                f"{count} worker(s), {total} x 64 KiB",
                "files/s",
                result.per_second,
                rates[1] if count > 1 else None,
                "1 worker" if count > 1 else "",
                higher_is_better=True,
                note="CPU cores busy: " + ", ".join(f"{k} {v:.2f}" for k, v in used.items()),
            )
        )
    report.details["fleet"] = {"rates": rates, "cpu_cores_busy": usage, "profile_1_worker": profile}
    busiest = max(usage[max(FLEETS)].items(), key=lambda kv: kv[1])
    total_busy = sum(usage[max(FLEETS)].values())
    scaling = rates[max(FLEETS)] / rates[1]
    lines = [
        f"{max(FLEETS)} workers give {scaling:.2f}x the rate of 1.",
        f"With {max(FLEETS)} workers the processes keep {total_busy:.2f} of "
        f"{os.cpu_count()} cores busy; "
        f"the largest share is {busiest[0]} ({busiest[1]:.2f} cores).",
    ]
    if total_busy >= 0.8 * (os.cpu_count() or 2):
        lines.append("The machine's cores are the limit: more workers only share them.")
    if profile:
        lines.append(
            "py-spy, 1 worker, innermost frames: "
            + "; ".join(f"{name} {share:.0%}" for name, share in profile)
        )
    for line in lines:
        report.note(NAME, line)
    shutil.rmtree(root)
