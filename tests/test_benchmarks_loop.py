"""The arithmetic of the training-loop and backlog benchmarks (not their timings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.backlog import STEPS, BacklogRun, _at, staged_bytes, table
from benchmarks.training_loop import (
    Steps,
    VariantSummary,
    paired_slowdowns,
    percentile,
    spread,
)
from benchmarks.training_loop import table as loop_table


def test_slowdown_pairs_each_run_with_the_baseline_of_its_round() -> None:
    # The second round ran on a machine twice as slow: paired, both show +10%.
    assert paired_slowdowns([1.1, 2.2], [1.0, 2.0]) == pytest.approx([0.1, 0.1])
    with pytest.raises(ValueError):
        paired_slowdowns([1.0], [1.0, 2.0])


def test_percentile_and_spread() -> None:
    steps = [float(i) for i in range(1, 11)]
    assert percentile(steps, 50) == pytest.approx(5.5)
    assert percentile(steps, 95) == pytest.approx(9.55)
    assert percentile([3.0], 95) == 3.0
    assert spread([0.9, 1.0, 1.1]) == pytest.approx(0.2)


def test_summary_table_fits_100_columns() -> None:
    runs = [Steps([t] * 10, [t / 2] * 10, [0.001] * 10) for t in (0.8, 0.9, 1.0)]
    base = VariantSummary.of("none", runs, [])
    slower = [Steps([s * 1.05 for s in r.wall], [s * 1.01 for s in r.cpu], r.handoff) for r in runs]
    copy = VariantSummary.of("hoist copy", slower, [0.4] * 3, base)
    assert copy.slowdowns == pytest.approx([0.05] * 3)
    assert copy.cpu_slowdowns == pytest.approx([0.01] * 3)
    assert copy.p95s == pytest.approx([0.84, 0.945, 1.05])
    lines = loop_table([base, copy]).splitlines()
    assert max(map(len, lines)) <= 100
    assert "+5.0%" in lines[-1]


def test_staged_bytes_counts_the_files_of_a_directory(tmp_path: Path) -> None:
    assert staged_bytes(str(tmp_path / "missing")) == 0
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "b").write_bytes(b"x" * 5)
    assert staged_bytes(str(tmp_path)) == 15


def test_backlog_table_samples_staging_at_quarters_and_fits_100_columns() -> None:
    staged = [step * 2**20 for step in range(1, STEPS + 1)]
    assert _at(staged, 0.25) == (STEPS // 4) * 2**20
    assert _at(staged, 1.0) == STEPS * 2**20
    result = BacklogRun([0.1] * STEPS, staged, 3.0, {"done": 6, "superseded": 15})
    lines = table({"no bound": [result], "supersede": [result]}).splitlines()
    assert max(map(len, lines)) <= 100
    assert lines[-1].endswith("6 done, 15 superseded")
