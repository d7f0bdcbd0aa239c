"""Many small files: 2,000 files of 64 KiB from 4 rank processes, against ``s5cmd cp`` of them.

hoist: four rank processes (:mod:`benchmarks.ranks`) log 500 files each in
the default staging mode, released together, and wait until all are uploaded
and verified by a 2-worker fleet (2 pool processes each). The peer uploads the
same 2,000 files with one ``s5cmd cp 'dir/*'``. Figures: artifacts per second
end to end, and ``file_artifact`` calls per second per rank (median rank).

``s5cmd cp`` replaces what is there, so the target compares it with
``overwrite=True``, which does the same; hoist's default ``overwrite=False``
first checks that the name is free (a HEAD per file: rclone ignores
``If-None-Match``), measured once, in a note.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from benchmarks import peers
from benchmarks.config import RunConfig
from benchmarks.files import KIB, write_source
from benchmarks.ranks import run_ranks
from benchmarks.report import Figure, Report, Target, median
from benchmarks.services import Lab
from benchmarks.timing import alternate

NAME = "small_files"
RANKS = 4


def write_small_files(root: str, total: int, ranks: int) -> list[list[str]]:
    """``total`` files of 64 KiB under ``root/rank<r>/``, split evenly across ranks."""
    by_rank = []
    for rank in range(ranks):
        directory = os.path.join(root, f"rank{rank}")
        os.makedirs(directory)
        by_rank.append(
            [
                write_source(os.path.join(directory, f"f{i:05d}.bin"), 64 * KIB)
                for i in range(total // ranks)
            ]
        )
    return by_rank


def run(lab: Lab, report: Report, cfg: RunConfig) -> None:
    total = cfg.count(2000)
    root = os.path.join(lab.root, "small")
    files = write_small_files(root, total, RANKS)
    enqueue_rates: list[float] = []

    def with_hoist(overwrite: bool) -> Callable[[int], float]:
        def upload(r: int) -> float:
            run_name = f"small-{'o' if overwrite else 'n'}-{r}"
            result = run_ranks(lab, "s3", run_name, files, overwrite=overwrite)
            enqueue_rates.extend(result.enqueue_rates)
            return result.seconds

        return upload

    def with_s5cmd(r: int) -> None:
        peers.s5cmd_cp(lab, os.path.join(root, "*"), f"s5cmd-small-{r}/")

    def settle() -> None:
        lab.clear_bucket()
        os.sync()

    with lab.fleet(2, concurrency=2):
        # 2,000 files through hoist take 10-15 s per run here: large_repeats, to fit the budget.
        samples = alternate(
            {"hoist": with_hoist(True), "s5cmd": with_s5cmd}, cfg.large_repeats, between=settle
        )
        settle()
        checked = with_hoist(False)(0)  # the default, once: it checks each name first
    rates = {name: [total / s for s in values] for name, values in samples.items()}
    figure = report.add(
        Figure(
            NAME,
            f"{total} x 64 KiB from {RANKS} ranks, end to end",
            "files/s",
            median(rates["hoist"]),
            median(rates["s5cmd"]),
            "s5cmd cp",
            higher_is_better=True,
            samples=rates,
            note=f"overwrite=True, as s5cmd cp; workers: 2 x {lab.pool} 2; verified by the "
            f"server's MD5 (ETags); " + cfg.repeats_note(cfg.large_repeats),
        )
    )
    report.note(
        NAME,
        f"overwrite=False (the default; one run): {total / checked:.1f} files/s, "
        f"{total / checked / median(rates['s5cmd']):.3f}x s5cmd cp; each name is checked free "
        "first, one HEAD per file (rclone ignores If-None-Match), which s5cmd cp does not do",
    )
    report.add(
        Figure(
            NAME,
            "file_artifact calls per second per rank (64 KiB, during the burst)",
            "calls/s",
            median(enqueue_rates),
            higher_is_better=True,
            samples={"hoist": enqueue_rates},
            note=f"median over {len(enqueue_rates)} rank-runs",
        )
    )
    if figure.ratio is not None:
        report.target(
            Target(f"{total} small files vs s5cmd (artifacts/s ratio)", figure.ratio, 0.5, True)
        )
    shutil.rmtree(root)
