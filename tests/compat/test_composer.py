"""hoist under the real ``composer.Trainer`` (mosaicml 0.32.1), with real ``hoist worker``s.

Not in the default suite: mosaicml pins torch<2.7.1 and the suite has 2.13.
``bash deploy/bootstrap.sh compat composer`` builds ``.venv-compat-composer``
with those pins and runs this module there (tests/conftest.py collects
tests/compat/ only where Composer is installed). Each job is a real Composer
run (tests/compat/composer_job.py) in its own process, under ``python`` or
Composer's own launcher (``composer -n 2``), uploading through
``HoistDestination`` to a Libcloud ``local`` store; README.md's Composer
snippet runs in this process, as written (tests/readme_snippets.py).

The calls the real Trainer made on ``HoistDestination`` are compared with
tests/compat/composer_calls.json, which tests/test_composer.py checks its
stand-in against in the default suite; ``COMPOSER_CALLS_UPDATE=1`` rewrites
the file from this run when a Composer release changes them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from hoist.state.connection import connect
from hoist.state.states import State as ArtifactState
from tests import readme_snippets
from tests.conftest import serve_fleet
from tests.services.process import free_port
from tests.services.redis import RedisServer
from tests.services.workers import WorkerFleet, clean_environment, wait_until

REPO = Path(__file__).resolve().parents[2]
CALLS = Path(__file__).with_name("composer_calls.json")
RUN = "composer-real"


@dataclass
class Job:
    """A finished job: its run, working directory, the store's objects, each rank's summary."""

    run: str
    cwd: Path
    objects: Path
    ranks: list[dict[str, Any]]
    seconds: float

    @property
    def checkpoints(self) -> Path:
        return self.objects / self.run / "checkpoints"


@pytest.fixture(scope="module")
def fleet(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFleet]:
    yield from serve_fleet(tmp_path_factory, redis_server.url, "compat-composer", concurrency=2)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("composer-store")
    (root / "artifacts").mkdir()
    return root / "artifacts"


def run_job(
    fleet: WorkerFleet,
    objects: Path,
    cwd: Path,
    run: str,
    *args: str,
    nproc: int = 1,
    check: bool = True,
) -> Job | subprocess.CompletedProcess[str]:
    """Run tests/compat/composer_job.py in ``cwd`` (a fresh folder: nothing local to resume)."""
    cwd.mkdir(parents=True)
    env = {
        **clean_environment(),
        "HOIST_BROKER_URL": fleet.broker_url,
        "HOIST_STAGING_DIR": str(fleet.staging_root),
        "HOIST_STORE_URI": f"file://{objects}",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }
    job = ["-m", "tests.compat.composer_job", "--out", str(cwd / "summary"), "--run", run, *args]
    if nproc == 1:
        argv = [sys.executable, *job]
    else:  # Composer's launcher; -m: the script is a module; rank 1's output to files
        launcher = str(Path(sys.executable).with_name("composer"))
        argv = [launcher, "-n", str(nproc), "--master_port", str(free_port())]
        argv += ["--stdout", str(cwd / "stdout-{rank}.txt")]
        argv += ["--stderr", str(cwd / "stderr-{rank}.txt"), *job]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    seconds = time.monotonic() - started
    if not check:
        return done
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    ranks = [json.loads((cwd / "summary" / f"rank{r}.json").read_text()) for r in range(nproc)]
    return Job(run, cwd, objects, ranks, seconds)


def finished(result: Job | subprocess.CompletedProcess[str]) -> Job:
    assert isinstance(result, Job)
    return result


@pytest.fixture(scope="module", params=["first", "last"])
def trained(
    request: pytest.FixtureRequest,
    fleet: WorkerFleet,
    store: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Job:
    """2 epochs of run ``composer-real-<place>``, ``HoistDestination`` first or last in loggers."""
    place = request.param
    cwd = tmp_path_factory.mktemp(f"train-{place}") / "job"
    return finished(run_job(fleet, store, cwd, f"{RUN}-{place}", "--epochs", "2", "--place", place))


def saved_names(job: Job) -> list[str]:
    """The checkpoints Composer saved locally, as remote names: one per epoch."""
    return sorted(f"{job.run}/checkpoints/{Path(p).name}" for p in job.ranks[0]["saved"])


def model_weights(checkpoint: Path) -> dict[str, list[Any]]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state"]
    return {k: v.tolist() for k, v in state["model"].items()}


def test_checkpoints_land_byte_identical_and_the_pointer_names_the_newest(trained: Job) -> None:
    run = trained.run
    names = saved_names(trained)
    assert [Path(n).name for n in names] == ["ep1-ba4-rank0.pt", "ep2-ba8-rank0.pt"]
    for name in names:
        local = trained.cwd / name
        assert (trained.objects / name).read_bytes() == local.read_bytes(), name
    pointer = trained.checkpoints / "latest-rank0.pt.symlink"
    assert pointer.read_text() == f"{run}/checkpoints/ep2-ba8-rank0.pt"
    # FileLogger's log, uploaded again from its close(), landed whole whatever the place.
    log = f"{run}/logs-rank0.txt"
    assert (trained.objects / log).read_bytes() == (trained.cwd / log).read_bytes()
    check_recorded(f"train-{run.rsplit('-', 1)[1]}", trained.ranks[0]["calls"])


def check_recorded(key: str, calls: list[dict[str, Any]]) -> None:
    """The calls of this run are the ones tests/compat/composer_calls.json records
    (what tests/test_composer.py's stand-in is checked against)."""
    recorded = json.loads(CALLS.read_text()) if CALLS.exists() else {}
    if os.environ.get("COMPOSER_CALLS_UPDATE") == "1":
        recorded[key] = calls
        CALLS.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        return
    assert key in recorded, f"{CALLS.name} has no {key!r}: run with COMPOSER_CALLS_UPDATE=1"
    assert calls == recorded[key], (
        f"Composer's calls on HoistDestination changed ({key}): compare with {CALLS}, "
        "update tests/test_composer.py's stand-in, then rewrite it with COMPOSER_CALLS_UPDATE=1"
    )


def test_autoresume_in_a_fresh_folder_follows_the_pointer(
    trained: Job, fleet: WorkerFleet, tmp_path: Path
) -> None:
    """Same run name, nothing local: Composer downloads ``latest-rank0.pt`` through
    hoist (missing, so its ``.symlink``, then the target) and goes on at epoch 2."""
    place = trained.run.rsplit("-", 1)[1]
    resumed = finished(
        run_job(
            fleet,
            trained.objects,
            tmp_path / "job",
            trained.run,
            "--epochs",
            "3",
            "--autoresume",
            "--place",
            place,
        )
    )
    rank = resumed.ranks[0]
    newest = trained.checkpoints / "ep2-ba8-rank0.pt"
    assert rank["epoch"] == 2
    assert rank["weights"] == model_weights(newest)
    downloads = [c for c in rank["calls"] if c["method"].startswith("download_file")]
    assert [(c["method"], c.get("name")) for c in downloads] == [
        ("download_file", "{run_name}/checkpoints/latest-rankN.pt"),
        ("download_file:FileNotFoundError", None),
        ("download_file", "{run_name}/checkpoints/latest-rankN.pt.symlink"),
        ("download_file", "{run_name}/checkpoints/epN-baN-rankN.pt"),
    ]
    check_recorded(f"autoresume-{place}", rank["calls"])
    # The resumed epoch's checkpoint landed and the pointer moved on to it.
    third = resumed.checkpoints / "ep3-ba12-rank0.pt"
    assert (
        third.read_bytes() == (resumed.cwd / resumed.run / "checkpoints" / third.name).read_bytes()
    )
    assert (resumed.checkpoints / "latest-rank0.pt.symlink").read_text() == (
        f"{resumed.run}/checkpoints/ep3-ba12-rank0.pt"
    )


def test_load_path_through_the_pointer_in_another_run(
    trained: Job, fleet: WorkerFleet, tmp_path: Path
) -> None:
    """``load_path=<run>/checkpoints/latest-rank0.pt`` with ``load_object_store=`` the
    destination: Composer's ``get_file`` finds the ``.symlink`` and loads its target."""
    target = (trained.checkpoints / "latest-rank0.pt.symlink").read_text()
    epoch = int(Path(target).name.removeprefix("ep").split("-")[0])
    pointer = f"{trained.run}/checkpoints/latest-rank0.pt"
    loaded = finished(
        run_job(
            fleet,
            trained.objects,
            tmp_path / "job",
            f"{trained.run}-loaded",
            "--epochs",
            str(epoch + 1),
            "--load-path",
            pointer,
        )
    )
    assert loaded.ranks[0]["epoch"] == epoch
    assert loaded.ranks[0]["weights"] == model_weights(trained.objects / target)


def test_composer_launcher_two_ranks_each_land_their_files(
    fleet: WorkerFleet, store: Path, tmp_path: Path
) -> None:
    """``composer -n 2``: DDP over gloo on the CPU, a HoistDestination per rank."""
    job = finished(run_job(fleet, store, tmp_path / "job", f"{RUN}-ddp", "--epochs", "1", nproc=2))
    assert [rank["world_size"] for rank in job.ranks] == [2, 2]
    for rank in (0, 1):
        log = f"{job.run}/logs-rank{rank}.txt"
        assert (job.objects / log).read_bytes() == (job.cwd / log).read_bytes(), log
    for name in saved_names(job):
        assert (job.objects / name).read_bytes() == (job.cwd / name).read_bytes(), name
    # Without sharding only rank 0 saves (and points at) a checkpoint.
    assert job.ranks[1]["saved"] == []
    assert sorted(p.name for p in job.checkpoints.iterdir()) == [
        "ep1-ba2-rank0.pt",
        "latest-rank0.pt.symlink",
    ]
    assert (job.checkpoints / "latest-rank0.pt.symlink").read_text() == (
        f"{job.run}/checkpoints/ep1-ba2-rank0.pt"
    )
    for rank in job.ranks:
        check_recorded(f"ddp-rank{rank['rank']}", rank["calls"])


def test_a_missing_container_fails_in_the_trainer_constructor(
    fleet: WorkerFleet, tmp_path: Path
) -> None:
    """As Composer's own uploader fails for a missing bucket: before any training."""
    missing = tmp_path / "nowhere" / "artifacts"
    done = run_job(fleet, missing, tmp_path / "job", f"{RUN}-missing", "--epochs", "1", check=False)
    assert isinstance(done, subprocess.CompletedProcess)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("hoist.errors.ConfigurationError: "), done.stderr[-3000:]
    assert f"{missing.parent} of provider 'local' does not exist" in last, last
    assert not (tmp_path / "job" / f"{RUN}-missing" / "checkpoints").exists()


def test_the_readme_snippet_runs_keeps_two_and_autoresumes_in_an_empty_folder(
    fleet: WorkerFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README.md's Composer snippet as written, in this process: 3 epochs, a checkpoint
    each, ``remote_keep_last=2``; then, given a 4th epoch, again in an empty folder, where
    ``autoresume`` goes on from the newest checkpoint through the store's pointer."""
    code = readme_snippets.required("### Composer")
    objects = tmp_path / "store" / "artifacts"
    first = readme_snippets.run(code, fleet, tmp_path / "first", monkeypatch, objects)
    run = first["trainer"].state.run_name
    folder = objects / run / "checkpoints"

    def held() -> list[str]:
        return sorted(p.name for p in folder.iterdir())

    # The prune follows the pointer's move on a worker: fit may return before it.
    kept = kept_by_retention(fleet, run, 2)
    wait_until(lambda: held() == kept, timeout=30)
    assert {"ep2-ba8-rank0.pt", "ep3-ba12-rank0.pt"} <= set(kept)
    for name in ("ep2-ba8-rank0.pt", "ep3-ba12-rank0.pt"):
        local = tmp_path / "first" / run / "checkpoints" / name
        assert (folder / name).read_bytes() == local.read_bytes(), name
    assert (
        folder / "latest-rank0.pt.symlink"
    ).read_text() == f"{run}/checkpoints/ep3-ba12-rank0.pt"

    # The same job given one epoch more (the unchanged snippet would have nothing to train).
    assert code.count('max_duration="3ep"') == 1
    longer = code.replace('max_duration="3ep"', 'max_duration="4ep"')
    second = readme_snippets.run(longer, fleet, tmp_path / "second", monkeypatch, objects)
    assert int(second["trainer"].state.timestamp.epoch) == 4
    kept = kept_by_retention(fleet, run, 2)
    wait_until(lambda: held() == kept, timeout=30)
    assert {"ep3-ba12-rank0.pt", "ep4-ba16-rank0.pt"} <= set(kept)  # batch 16: on from 12
    # Nothing of the first run's folder was there: epoch 3 came from the store.
    assert not (tmp_path / "second" / run / "checkpoints" / "ep3-ba12-rank0.pt").exists()
    assert (
        folder / "latest-rank0.pt.symlink"
    ).read_text() == f"{run}/checkpoints/ep4-ba16-rank0.pt"


def kept_by_retention(fleet: WorkerFleet, run: str, keep_last: int) -> list[str]:
    """What ``keep_last`` leaves of the run's checkpoints folder, by the pointers' records:
    the targets of the newest ``keep_last`` pointers in the order they were logged
    (written or superseded: retention goes by that order, not by which write finished
    first), and the pointer."""
    pointers = [
        a
        for a in connect(fleet.broker_url).run_artifacts(run)
        if a.message.get("target_object_name")
    ]
    assert all(a.state in (ArtifactState.DONE, ArtifactState.SUPERSEDED) for a in pointers)
    logged = sorted(pointers, key=lambda a: a.message["order"])
    names = {Path(a.message["target_object_name"]).name for a in logged[-keep_last:]}
    return sorted(names | {"latest-rank0.pt.symlink"})
