"""`hoist demo` end to end: it starts the local cluster, runs ranks, and reports what landed."""

from __future__ import annotations

import os
from pathlib import Path

from tests.services.cluster import hoist


def test_demo_runs_ranks_through_a_fresh_local_cluster(tmp_path: Path) -> None:
    home = tmp_path / "hoist-home"
    try:
        result = hoist(home, "demo", "--ranks", "2", "--steps", "4", "--checkpoint-every", "2",
                       "--checkpoint-mib", "2", "--run", "demo-test", timeout=240)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "landed verified" in result.stderr
        store = home / "store" / "artifacts" / "demo-test"
        for rank in (0, 1):
            pointer = store / f"rank{rank}" / f"latest-rank{rank}.pt.symlink"
            target = pointer.read_text()
            assert target == f"demo-test/rank{rank}/checkpoints/step0004-rank{rank}.pt"
            assert os.path.getsize(home / "store" / "artifacts" / target) == 2 * 1024 * 1024
            assert (store / f"rank{rank}" / "hparams.yaml").exists()
            assert f"latest-rank{rank}.pt.symlink" in result.stdout
        assert list((home / "staging").rglob("*.pt")) == []
    finally:
        hoist(home, "down", timeout=90)
