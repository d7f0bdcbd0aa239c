"""examples/train_ddp.py under torchrun: 2 CPU ranks, real workers, resume from the store.

Three runs of the same job through real ``hoist worker`` processes into the
Libcloud local store: 10 steps straight; 6 steps with ``--resume`` and
nothing to resume yet (it must start fresh at step 1), then (with every
local file gone) ``--resume`` to step 10, which must end with the very same
weights. Every run must leave its temporary directory (``TMPDIR``) empty.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import serve_fleet
from tests.services.process import free_port
from tests.services.redis import RedisServer
from tests.services.workers import WorkerFleet, clean_environment

torch = pytest.importorskip("torch", reason="the test extra installs torch")

REPO = Path(__file__).resolve().parent.parent
RANKS = 2  # one per core: 4 ranks each importing torch took twice as long, testing nothing more
TORCH_OWN = ("torchelastic_", "torchinductor_")


@pytest.fixture(scope="module")
def fleet(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFleet]:
    yield from serve_fleet(tmp_path_factory, redis_server.url, "ddp", count=2, concurrency=2)


@dataclass(frozen=True)
class Run:
    """One torchrun of the example.

    Parameters:
        summary: rank 0's JSON summary.
        stderr: what the ranks and torchrun wrote to stderr.
    """

    summary: dict[str, Any]
    stderr: str


def torchrun(fleet: WorkerFleet, store: Path, *args: str) -> Run:
    """Run the example with :data:`RANKS` ranks, checking it left nothing in its own ``TMPDIR``."""
    tmpdir = store.parent / "tmp"
    tmpdir.mkdir(exist_ok=True)
    env = {
        **clean_environment(),
        "HOIST_BROKER_URL": fleet.broker_url,
        "HOIST_STAGING_DIR": str(fleet.staging_root),
        "HOIST_STORE_URI": f"file://{store / 'artifacts'}",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "TMPDIR": str(tmpdir),
    }
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1"]
    argv += ["--nproc-per-node", str(RANKS), "--master-port", str(free_port())]
    result = subprocess.run(
        [*argv, str(REPO / "examples" / "train_ddp.py"), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # torchrun's own folders (torchelastic_*, torchinductor_<user>) are torch's
    # to keep; anything else was the example's and must be gone.
    left = [p.name for p in tmpdir.iterdir() if not p.name.startswith(TORCH_OWN)]
    assert left == [], f"the example left {left} in its TMPDIR"
    return Run(dict(json.loads(result.stdout.strip().splitlines()[-1])), result.stderr)


def test_ddp_checkpoints_land_and_a_resumed_run_ends_with_the_same_weights(
    fleet: WorkerFleet, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    (store / "artifacts").mkdir(parents=True)
    straight = tmp_path / "straight.pt"
    torchrun(
        fleet, store, "--run-name", "straight", "--steps", "10", "--weights-out", str(straight)
    )
    for rank in range(RANKS):
        ranks = store / "artifacts" / "straight" / f"rank{rank}"
        pointer = ranks / f"latest-rank{rank}.pt.symlink"
        assert pointer.read_text() == f"straight/rank{rank}/checkpoints/step000010-rank{rank}.pt"
        saved = torch.load(store / "artifacts" / pointer.read_text(), weights_only=True)
        assert saved["step"] == 10
        assert (ranks / "hparams.yaml").exists() and (ranks / "train.log").exists()

    # --resume with nothing to resume yet starts fresh, as Composer's autoresume does.
    fresh = torchrun(fleet, store, "--run-name", "resumed", "--steps", "6", "--resume")
    assert fresh.summary["first_step"] == 1
    assert "run 'resumed' has no checkpoint in file://" in fresh.stderr
    assert "starting fresh at step 1" in fresh.stderr
    # It stopped at step 6 (checkpoint at 5); lose every local file, resume from the store.
    resumed = tmp_path / "resumed.pt"
    again = torchrun(
        fleet,
        store,
        "--run-name",
        "resumed",
        "--steps",
        "10",
        "--resume",
        "--weights-out",
        str(resumed),
    )
    assert again.summary["first_step"] == 6  # the checkpoint of step 5, then steps 6..10
    assert "starting fresh" not in again.stderr

    # What the resume loaded is bit for bit what the uninterrupted run had at step 5.
    for rank in range(RANKS):
        name = f"rank{rank}/checkpoints/step000005-rank{rank}.pt"
        interrupted = torch.load(store / "artifacts" / "resumed" / name, weights_only=True)
        reference = torch.load(store / "artifacts" / "straight" / name, weights_only=True)
        for part in ("model", "optimizer"):
            assert_same(interrupted[part], reference[part], exact=True)
    # From there on the two runs compute the same steps. DDP regroups its
    # gradient buckets after a process's first step (step 1 in one run, step 6
    # in the other), so allreduce may sum in another order: the last bit of a
    # float32 may differ (measured: at most 1.5e-8), nothing more.
    assert_same(torch.load(resumed, weights_only=True), torch.load(straight, weights_only=True))


def assert_same(got: object, expected: object, exact: bool = False) -> None:
    """Nested state dicts hold equal tensors (to float32's last bits unless ``exact``)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys()
        for key in expected:
            assert_same(got[key], expected[key], exact)
    elif isinstance(expected, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            assert_same(a, b, exact)
    elif isinstance(expected, torch.Tensor):
        if exact:
            assert torch.equal(got, expected)
        else:
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    else:
        assert got == expected
