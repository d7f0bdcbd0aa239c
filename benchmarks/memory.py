"""Memory: a worker's peak while uploading 1 GiB against 256 MiB, and what a rank's logger adds.

Worker: one ``hoist worker`` with one pool process uploads a 256 MiB and a
1 GiB file to ``rclone serve s3`` (alternated); a thread samples the worker's
process group every 20 ms. Reported: the peak sum of PSS over the group
(shared pages split among the processes, so the sum is honest) and the peak
RSS of its largest process. Rank: a fresh process reports its RSS after
``import hoist``, after constructing a logger and after logging 100 files of
1 MiB and waiting for them (:mod:`benchmarks.rank_process`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from benchmarks.config import RunConfig
from benchmarks.files import MIB, REPO, label, write_source
from benchmarks.processes import MemorySampler
from benchmarks.report import Figure, Report, Target, median
from benchmarks.services import Lab
from benchmarks.throughput import hoist_upload

NAME = "memory"


def run(lab: Lab, report: Report, cfg: RunConfig) -> None:
    root = os.path.join(lab.root, "memory")
    os.makedirs(root)
    small = write_source(os.path.join(root, "quarter.pt"), cfg.size(256 * MIB))
    large = write_source(os.path.join(root, "whole.pt"), cfg.gib)
    peaks: dict[str, list[tuple[int, int]]] = {small: [], large: []}
    with lab.fleet(1, concurrency=1) as fleet:
        proc = fleet.workers[0].proc
        assert proc is not None
        for r in range(cfg.large_repeats):
            for path in (small, large) if r % 2 == 0 else (large, small):
                lab.clear_bucket()
                with MemorySampler(proc.pid) as sampler:
                    hoist_upload(lab, "s3", f"mem-{r}-{os.path.basename(path)}", [path])
                peaks[path].append((sampler.peak_pss_kib, sampler.peak_rss_kib))
        rank = _rank_memory(lab, root)
    pss = {p: median([s[0] / 1024 for s in v]) for p, v in peaks.items()}
    rss = {p: median([s[1] / 1024 for s in v]) for p, v in peaks.items()}
    note = f"1 worker, 1 pool process; {cfg.repeats_note(cfg.large_repeats)}"
    report.add(
        Figure(
            NAME,
            f"worker peak PSS (group), {label(cfg.gib)} upload",
            "MiB",
            pss[large],
            pss[small],
            f"same, {label(cfg.size(256 * MIB))} upload",
            note=note,
        )
    )
    report.add(
        Figure(
            NAME,
            f"worker peak RSS (largest process), {label(cfg.gib)} upload",
            "MiB",
            rss[large],
            rss[small],
            f"same, {label(cfg.size(256 * MIB))} upload",
            note=note,
        )
    )
    report.target(
        Target(f"worker memory (group PSS) uploading {label(cfg.gib)}, MiB", pss[large], 200, False)
    )
    report.target(
        Target(
            "worker memory flat in file size: peak(1 GiB) / peak(256 MiB)",
            pss[large] / pss[small],
            1.1,
            False,
        )
    )
    added = (rank["used"] - rank["imported"]) / 1024
    report.add(
        Figure(
            NAME,
            "rank: RSS a logger adds (construct + 100 x 1 MiB + wait)",
            "MiB",
            added,
            note="import hoist itself: "
            f"{(rank['imported'] - rank['before_import']) / 1024:.1f} MiB; "
            f"after construct +{(rank['constructed'] - rank['imported']) / 1024:.1f} MiB",
        )
    )
    report.details["memory"] = {
        "worker_peaks_kib": {label(os.path.getsize(p)): v for p, v in peaks.items()},
        "rank_rss_kib": rank,
    }
    shutil.rmtree(root)


def _rank_memory(lab: Lab, root: str) -> dict[str, int]:
    directory = os.path.join(root, "rank")
    os.makedirs(directory)
    files = [write_source(os.path.join(directory, f"f{i}.bin"), MIB) for i in range(100)]
    spec = {"logger": lab.rank_spec("s3", "mem-rank", 0, 1), "files": files, "measure": "memory"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.rank_process", json.dumps(spec)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])
