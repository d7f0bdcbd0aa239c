"""HoistCheckpointIO with the real Lightning ``Trainer`` on the CPU, through real workers.

One 2-process DDP run (``strategy="ddp"``, gloo; a subprocess, so this
process never joins a process group) trains tests/lightning_job.py's tiny
module for 4 epochs with ``ModelCheckpoint(save_top_k=2, save_last=True)``:
the store must then hold exactly the 2 best checkpoints, ``last.ckpt`` and
the pointer to it, each byte for byte the local file; the same 2 processes
then resume from the pointer's URI in a fresh folder. Runs in this process
resume from (a copy of) that store by the pointer's artifact name and by an
object URI. Smaller tests drive the plugin as Lightning's strategy does.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hoist.errors import ConfigurationError, ObjectNotFoundError, UploadFailedError
from hoist.logger.levels import LogLevel
from hoist.logger.logger import ObjectStoreLogger
from hoist.state.states import State
from tests import readme_snippets
from tests.conftest import serve_fleet, single_rank_local_store
from tests.services.process import free_port
from tests.services.redis import RedisServer
from tests.services.workers import WorkerFleet, clean_environment, wait_until

torch = pytest.importorskip("torch", reason="the test extra installs torch")
pytest.importorskip("lightning", reason="the test extra installs lightning")

from hoist.integrations.lightning import HoistCheckpointIO, _Removals  # noqa: E402 (lightning)
from tests import lightning_job  # noqa: E402 (imports lightning)

REPO = Path(__file__).resolve().parent.parent
RUN = "lit-ddp"


@pytest.fixture(scope="module")
def fleet(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFleet]:
    yield from serve_fleet(tmp_path_factory, redis_server.url, "lit", count=1, concurrency=2)


@dataclass(frozen=True)
class DdpRun:
    """The 2-process job: its store (the container's folder), local folder, each rank's summary."""

    objects: Path
    dirpath: Path
    ranks: list[dict[str, Any]]


RESUMED = "lit-ddp-resumed"
"""The run the DDP job's second fit resumes in, from :data:`RUN`'s pointer by its URI."""


def job_environment(fleet: WorkerFleet) -> dict[str, str]:
    return {
        **clean_environment(),
        "HOIST_BROKER_URL": fleet.broker_url,
        "HOIST_STAGING_DIR": str(fleet.staging_root),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "MASTER_PORT": str(free_port()),
    }


@pytest.fixture(scope="module")
def ddp_run(fleet: WorkerFleet, tmp_path_factory: pytest.TempPathFactory) -> DdpRun:
    """4 epochs on 2 ranks, then (same processes, a fresh folder) a resume in another run
    from ``local://artifacts/lit-ddp/checkpoints/latest.ckpt``, the pointer's URI."""
    root = tmp_path_factory.mktemp("lit-ddp")
    (root / "store" / "artifacts").mkdir(parents=True)
    argv = [sys.executable, "-m", "tests.lightning_job", "--store", str(root / "store")]
    argv += ["--run", RUN, "--dirpath", str(root / "ckpt"), "--epochs", "4", "--devices", "2"]
    argv += ["--summary", str(root / "summary.json"), "--resume-run", RESUMED]
    argv += ["--resume-from", f"local://artifacts/{RUN}/checkpoints/latest.ckpt"]
    argv += ["--resume-dirpath", str(root / "resumed")]
    result = subprocess.run(
        argv,
        env=job_environment(fleet),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((root / f"summary-rank{r}.json").read_text()) for r in range(2)]
    return DdpRun(root / "store" / "artifacts", root / "ckpt", ranks)


def in_process(fleet: WorkerFleet, store: Path, run_name: str) -> HoistCheckpointIO:
    """A plugin for a run in this process (rank 0 of 1), to the local store at ``store``."""
    return HoistCheckpointIO(**single_rank_local_store(fleet, store), run_name=run_name)


def test_ddp_keeps_the_two_best_and_the_pointers_target(ddp_run: DdpRun) -> None:
    assert [rank["fit"]["world_size"] for rank in ddp_run.ranks] == [2, 2]
    assert ddp_run.ranks[0]["fit"]["best"] == ["epoch=1.ckpt", "epoch=3.ckpt"]
    folder = ddp_run.objects / RUN / "checkpoints"
    kept = ["epoch=1.ckpt", "epoch=3.ckpt", "last.ckpt"]
    # epoch=0 and epoch=2 were uploaded, then removed by ModelCheckpoint: gone.
    assert sorted(p.name for p in folder.iterdir()) == [*kept, "latest.ckpt.symlink"]
    assert (folder / "latest.ckpt.symlink").read_text() == f"{RUN}/checkpoints/last.ckpt"
    assert sorted(p.name for p in ddp_run.dirpath.iterdir()) == kept
    for name in kept:
        assert (folder / name).read_bytes() == (ddp_run.dirpath / name).read_bytes()
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert last["epoch"] == 3 and last["global_step"] == 4 * 2  # 2 steps a rank an epoch


def test_both_ddp_ranks_resume_from_the_pointers_uri(ddp_run: DdpRun) -> None:
    last = torch.load(ddp_run.objects / RUN / "checkpoints" / "last.ckpt", weights_only=True)
    for rank in ddp_run.ranks:  # rank 1 downloads too, with a logger of its own
        resumed = rank["resume"]
        assert (resumed["epoch"], resumed["step"]) == (4, last["global_step"])
        assert resumed["weights"] == {k: v.tolist() for k, v in last["state_dict"].items()}
    folder = ddp_run.objects / RESUMED / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == [
        "epoch=4.ckpt",
        "last.ckpt",
        "latest.ckpt.symlink",
    ]


def test_resume_by_the_pointer_in_a_fresh_folder(
    ddp_run: DdpRun, fleet: WorkerFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A copy of the store: this run writes to it, and the other tests read the original.
    store = tmp_path / "store"
    shutil.copytree(ddp_run.objects.parent, store)
    stored = torch.load(store / "artifacts" / RUN / "checkpoints/last.ckpt", weights_only=True)
    monkeypatch.chdir(tmp_path)  # nothing of the first run's folder here
    plugin = in_process(fleet, store, RUN)
    run, _, started = lightning_job.trainer(plugin, tmp_path / "ckpt", epochs=5)
    run.fit(
        lightning_job.Tiny(),
        lightning_job.loader(),
        lightning_job.loader(),
        ckpt_path="checkpoints/latest.ckpt",
    )
    assert (started.epoch, started.step) == (4, stored["global_step"])
    for key, value in stored["state_dict"].items():
        assert torch.equal(started.weights[key], value)
    # The resumed run's epoch 4 moved the pointer on, and the store has it.
    folder = store / "artifacts" / RUN / "checkpoints"
    assert (folder / "latest.ckpt.symlink").read_text() == f"{RUN}/checkpoints/last.ckpt"
    assert torch.load(folder / "last.ckpt", weights_only=True)["epoch"] == 4
    assert (folder / "epoch=4.ckpt").read_bytes() == (tmp_path / "ckpt/epoch=4.ckpt").read_bytes()


def test_resume_by_an_object_uri_into_another_run(
    ddp_run: DdpRun, fleet: WorkerFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = torch.load(ddp_run.objects / RUN / "checkpoints" / "epoch=1.ckpt", weights_only=True)
    monkeypatch.chdir(tmp_path)
    plugin = in_process(fleet, ddp_run.objects.parent, "lit-from-uri")
    run, _, started = lightning_job.trainer(plugin, tmp_path / "ckpt", epochs=3)
    uri = f"local://artifacts/{RUN}/checkpoints/epoch=1.ckpt"
    run.fit(lightning_job.Tiny(), lightning_job.loader(), lightning_job.loader(), ckpt_path=uri)
    assert (started.epoch, started.step) == (2, stored["global_step"])
    for key, value in stored["state_dict"].items():
        assert torch.equal(started.weights[key], value)
    pointer = ddp_run.objects / "lit-from-uri" / "checkpoints" / "latest.ckpt.symlink"
    assert pointer.read_text() == "lit-from-uri/checkpoints/last.ckpt"


def test_a_removed_pointer_target_stays_until_the_pointer_moves_on(
    fleet: WorkerFleet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "store" / "artifacts").mkdir(parents=True)
    folder = tmp_path / "store" / "artifacts" / "lit-unit" / "checkpoints"
    plugin = in_process(fleet, tmp_path / "store", "lit-unit")
    a, b, c = (tmp_path / "ckpt" / f"{n}.ckpt" for n in "abc")
    plugin.save_checkpoint({"n": 1}, a)
    plugin.remove_checkpoint(a)  # the pointer's target: only the local file goes
    assert not a.exists()
    plugin.save_checkpoint({"n": 2}, b)  # moves the pointer on: now a may go, while training
    wait_until(lambda: not (folder / "a.ckpt").exists(), timeout=20)
    plugin.save_checkpoint({"n": 3}, c)
    plugin.remove_checkpoint(c)  # the pointer's target again, and stays so
    with caplog.at_level(logging.WARNING, logger="hoist.rank"):
        plugin.teardown()
    assert sorted(p.name for p in folder.iterdir()) == ["b.ckpt", "c.ckpt", "latest.ckpt.symlink"]
    assert (folder / "latest.ckpt.symlink").read_text() == "lit-unit/checkpoints/c.ckpt"
    assert torch.load(folder / "c.ckpt", weights_only=True) == {"n": 3}
    assert "kept lit-unit/checkpoints/c.ckpt in the store" in caplog.text
    assert "the run's pointer names it" in caplog.text
    assert plugin.logger is None  # the logger it built is closed


def test_a_save_to_the_same_path_leaves_the_staged_version_alone(
    fleet: WorkerFleet, tmp_path: Path
) -> None:
    (tmp_path / "store" / "artifacts").mkdir(parents=True)
    plugin = in_process(fleet, tmp_path / "store", "lit-same-path")
    path = tmp_path / "ckpt" / "last.ckpt"
    plugin.save_checkpoint({"n": 1}, path)
    first = path.stat().st_ino
    plugin.save_checkpoint({"n": 2}, path)
    # Lightning's write renames a new file into place: the hard link staged
    # for the first version still holds the first version's bytes.
    assert path.stat().st_ino != first
    plugin.teardown()  # raises if a staged file changed under an upload
    stored = tmp_path / "store" / "artifacts" / "lit-same-path" / "checkpoints" / "last.ckpt"
    assert torch.load(stored, weights_only=True) == {"n": 2}


def test_a_logger_passed_in_names_the_objects_and_stays_open(
    fleet: WorkerFleet, tmp_path: Path
) -> None:
    (tmp_path / "store" / "artifacts").mkdir(parents=True)
    kwargs = single_rank_local_store(fleet, tmp_path / "store")
    logger = ObjectStoreLogger(**kwargs, run_name="lit-own", object_name="own/{artifact_name}")
    with pytest.raises(ConfigurationError, match="either an ObjectStoreLogger or its arguments"):
        HoistCheckpointIO(logger, run_name="lit-own")
    plugin = HoistCheckpointIO(logger)
    plugin.save_checkpoint({"n": 1}, tmp_path / "ckpt" / "epoch=0.ckpt")
    plugin.teardown()
    assert plugin.logger is logger  # the caller's to close
    logger.file_artifact(LogLevel.FIT, "notes.txt", tmp_path / "ckpt" / "epoch=0.ckpt")
    logger.close()
    objects = tmp_path / "store" / "artifacts" / "own"
    assert (objects / "checkpoints" / "latest.ckpt.symlink").read_text() == (
        "own/checkpoints/epoch=0.ckpt"
    )
    assert (objects / "notes.txt").exists()


class Records:
    """The records' ``states`` call, answering from a dict (``None``: no record)."""

    def __init__(self) -> None:
        self.held: dict[str, State] = {}

    def states(self, artifacts: list[str]) -> dict[str, State]:
        return {a: self.held[a] for a in artifacts if a in self.held}


def test_a_removed_copy_is_due_only_once_uploaded_and_past_the_written_pointer() -> None:
    records = Records()
    removals = _Removals(records, None, None, "")  # type: ignore[arg-type]  # never deletes here
    removals.saved("r/x", "up-x", "ptr-x")
    removals.remove("r/x")
    records.held = {"up-x": State.DONE, "ptr-x": State.DONE}
    assert removals._due() == []  # the pointer names it
    removals.saved("r/y", "up-y", "ptr-y")
    records.held.update({"up-y": State.UPLOADING, "ptr-y": State.WAITING})
    assert removals._due() == []  # the store's pointer still names x
    records.held.update({"up-x": State.RETRYING, "up-y": State.DONE, "ptr-y": State.DONE})
    assert removals._due() == []  # x is not uploaded yet: it would land after a delete
    records.held["up-x"] = State.DONE
    assert removals._due() == ["r/x"]
    records.held["up-x"] = State.FAILED  # this version failed: an older copy may be there
    assert removals._due() == ["r/x"]
    removals.remove("r/y")
    assert removals._due() == ["r/x"]  # never the pointer's target
    removals.saved("r/x", "up-x2", "ptr-x2")  # saved again: no longer removed
    records.held.update({"up-x2": State.DONE, "ptr-x2": State.DONE})
    assert removals._due() == ["r/y"]


def test_teardown_raises_the_real_cause_of_a_failed_upload(
    fleet: WorkerFleet, tmp_path: Path
) -> None:
    # No "artifacts" folder: the container is missing. Without the store
    # check the first save passes; the upload fails on the worker.
    (tmp_path / "store").mkdir()
    kwargs = {**single_rank_local_store(fleet, tmp_path / "store"), "store_check": False}
    plugin = HoistCheckpointIO(**kwargs, run_name="lit-fails")
    plugin.save_checkpoint({"n": 1}, tmp_path / "ckpt" / "epoch=0.ckpt")
    with pytest.raises(UploadFailedError) as failed:
        plugin.teardown()
    assert "checkpoints/epoch=0.ckpt" in str(failed.value)
    assert "artifacts" in str(failed.value)  # the cause: the missing container


def test_fit_raises_the_real_cause_when_uploads_fail(
    fleet: WorkerFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "store").mkdir()  # no container; no store check to catch it early
    monkeypatch.chdir(tmp_path)
    kwargs = {**single_rank_local_store(fleet, tmp_path / "store"), "store_check": False}
    run, _, _ = lightning_job.trainer(
        HoistCheckpointIO(**kwargs, run_name="lit-fit-fails"), tmp_path / "ckpt", epochs=2
    )
    with pytest.raises(UploadFailedError, match="container 'artifacts' of provider 'local'"):
        run.fit(lightning_job.Tiny(), lightning_job.loader(), lightning_job.loader())


def test_a_missing_container_fails_the_first_save(fleet: WorkerFleet, tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()  # no "artifacts" folder in it
    plugin = in_process(fleet, tmp_path / "store", "lit-no-container")
    try:
        with pytest.raises(
            UploadFailedError, match="container .artifacts. of provider .local. does"
        ):
            plugin.save_checkpoint({"n": 1}, tmp_path / "ckpt" / "epoch=0.ckpt")
    finally:
        plugin.teardown()


@pytest.mark.parametrize(
    ("path", "error", "says"),
    [
        (
            "http://example.com/x.ckpt",
            ConfigurationError,
            "cannot load 'http://example.com/x.ckpt'",
        ),
        ("/no/such/x.ckpt", ObjectNotFoundError, "no checkpoint file '/no/such/x.ckpt' exists"),
        ("../x.ckpt", ObjectNotFoundError, "no checkpoint file '../x.ckpt' exists"),
        ("store", ConfigurationError, "'store' is a directory, not a checkpoint file"),
        ("checkpoints/../../x", ConfigurationError, "is no local file and no artifact name"),
        (
            "checkpoints/nope.ckpt",
            ObjectNotFoundError,
            "no checkpoint 'checkpoints/nope.ckpt' in run",
        ),
        ("nope.ckpt", ObjectNotFoundError, "artifact names of checkpoints start with"),
        ("local://artifacts/lit-bad/x.ckpt", ObjectNotFoundError, "no checkpoint at local://"),
    ],
)
def test_a_wrong_path_is_refused_saying_what_to_give(
    fleet: WorkerFleet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    error: type[Exception],
    says: str,
) -> None:
    (tmp_path / "store" / "artifacts").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    plugin = in_process(fleet, tmp_path / "store", "lit-bad")
    try:
        with pytest.raises(error, match=re.escape(says)) as refused:
            plugin.load_checkpoint(path)
        assert "\n" not in str(refused.value)
        assert str(refused.value).count(". ") == 0  # one sentence
    finally:
        plugin.teardown()


def test_refusals_before_anything_is_written(fleet: WorkerFleet, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="pass logger=ObjectStoreLogger"):
        HoistCheckpointIO(object_name="{artifact_name}")
    plugin = in_process(fleet, tmp_path / "store", "lit-refused")
    with pytest.raises(ConfigurationError, match="give ModelCheckpoint a local dirpath"):
        plugin.save_checkpoint({}, "s3://bucket/epoch=0.ckpt")
    with pytest.raises(ConfigurationError, match="keeps 'checkpoints/latest.ckpt' for its pointer"):
        plugin.save_checkpoint({}, tmp_path / "latest.ckpt")
    assert not (tmp_path / "latest.ckpt").exists()
    assert plugin.logger is None  # nothing was built for a refused call


# ----- the README's snippet ----------------------------------------------------------------------

HEADING = "### PyTorch Lightning"


def test_the_readme_snippet_runs(
    fleet: WorkerFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snippet below README.md's Lightning heading, as written (lit-demo, 3 + 1 epochs)."""
    readme_snippets.run(readme_snippets.required(HEADING), fleet, tmp_path, monkeypatch)
    objects = tmp_path / "store" / "artifacts"
    target = (objects / "lit-demo" / "checkpoints" / "latest.ckpt.symlink").read_text()
    assert target.startswith("lit-demo/checkpoints/epoch=")
    # The snippet's second fit resumed at epoch 3 (the first ran 3) and saved it.
    assert torch.load(objects / target, weights_only=False)["epoch"] == 3


# ----- retention (issue 19): save_top_k's removals follow the store's retention rules -----


def test_a_removed_checkpoint_another_pointer_names_stays_and_deletions_are_recorded(
    fleet: WorkerFleet, tmp_path: Path
) -> None:
    from hoist.state.records import Records as StateRecords
    from hoist.state.retention import Retention

    (tmp_path / "store" / "artifacts").mkdir(parents=True)
    folder = tmp_path / "store" / "artifacts" / "lit-ret" / "checkpoints"
    plugin = in_process(fleet, tmp_path / "store", "lit-ret")
    a, b, c = (tmp_path / "ckpt" / f"{n}.ckpt" for n in "abc")
    plugin.save_checkpoint({"n": 1}, a)
    plugin.save_checkpoint({"n": 2}, b)
    assert plugin.logger is not None
    plugin.logger.symlink_artifact("checkpoints/a.ckpt", "checkpoints/best.ckpt")  # names a
    plugin.save_checkpoint({"n": 3}, c)
    plugin.logger.wait(timeout=60)
    plugin.remove_checkpoint(a)
    plugin.remove_checkpoint(b)
    plugin.teardown()
    held = sorted(p.name for p in folder.iterdir())
    assert held == ["a.ckpt", "best.ckpt.symlink", "c.ckpt", "latest.ckpt.symlink"]
    pruned = Retention(StateRecords.from_url(fleet.broker_url).client, "lit-ret").pruned()
    assert set(pruned) == {"lit-ret/checkpoints/b.ckpt"}
