"""Several rank processes logging at once, started together: end-to-end and enqueue rates."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

from benchmarks.files import REPO
from benchmarks.services import Lab


@dataclass(frozen=True)
class RanksResult:
    """What a group of ranks measured.

    Parameters:
        seconds: from the first rank's first ``file_artifact`` to the last
            rank's ``wait()`` returning (all uploaded and verified).
        count: artifacts logged in all.
        enqueue_rates: ``file_artifact`` calls per second, per rank.
    """

    seconds: float
    count: int
    enqueue_rates: list[float]

    @property
    def per_second(self) -> float:
        return self.count / self.seconds


def run_ranks(
    lab: Lab, store: str, run_name: str, files_by_rank: list[list[str]], overwrite: bool = False
) -> RanksResult:
    """Start one process per rank, release them together, and collect their stamps.

    ``overwrite`` is passed to every ``file_artifact``: True skips the check
    that the name is free (one HEAD per file on S3), as ``s5cmd cp`` does.
    """
    world = len(files_by_rank)
    procs = []
    for rank, files in enumerate(files_by_rank):
        spec = {
            "logger": lab.rank_spec(store, run_name, rank, world),
            "files": files,
            "measure": "throughput",
            "overwrite": overwrite,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.rank_process", json.dumps(spec)],
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"a rank process did not start: {line!r}")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"a rank process failed ({proc.returncode})")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    start = min(r["start"] for r in results)
    done = max(r["done"] for r in results)
    rates = [r["count"] / max(r["enqueued"] - r["start"], 1e-9) for r in results]
    return RanksResult(done - start, sum(r["count"] for r in results), rates)
