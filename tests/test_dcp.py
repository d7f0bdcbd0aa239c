"""torch.distributed.checkpoint through hoist: async saves by 4 ranks, killed, resumed by 2.

Real ``hoist worker`` processes upload to the Libcloud ``local`` store. The
torchrun job (tests/dcp_job.py, CPU, gloo) async-saves a step every 0.3 s
with 4 ranks; once the store's ``latest`` names step 3 or later it is
SIGKILLed. When the fleet has settled, a 2-rank job loads ``latest``: it must
be the newest committed step, resharded (DCP's DTensors over 2 ranks instead
of 4) and equal, tensor for tensor, to what that step saved. In-process
tests (one rank, no process group) cover a step number, the error surfacing
of async saves, and an uncommitted step.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hoist import ObjectStoreLogger
from hoist.errors import CheckpointError, ConfigurationError, ObjectNotFoundError
from hoist.protocol.manifest import Manifest
from hoist.protocol.messages import COMMIT_TASK
from hoist.state.connection import connect
from hoist.state.states import State
from tests import readme_snippets
from tests.conftest import serve_fleet, single_rank_local_store
from tests.services.process import free_port
from tests.services.redis import RedisServer
from tests.services.workers import WorkerFleet, clean_environment, wait_until

torch = pytest.importorskip("torch", reason="the test extra installs torch")
hoist_dcp = pytest.importorskip("hoist.integrations.dcp")
dcp_folders = pytest.importorskip("hoist.integrations.dcp_folders")
torch_dcp = pytest.importorskip("torch.distributed.checkpoint")
from tests import dcp_job  # noqa: E402 (imports torch)

REPO = Path(__file__).resolve().parent.parent
SAVERS, LOADERS = 4, 2


@pytest.fixture(scope="module")
def fleet(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFleet]:
    yield from serve_fleet(tmp_path_factory, redis_server.url, "dcp", count=2, concurrency=2)


def torchrun(fleet: WorkerFleet, ranks: int, *args: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of tests/dcp_job.py under torchrun with ``ranks``."""
    env = {
        **clean_environment(),
        "HOIST_BROKER_URL": fleet.broker_url,
        "HOIST_STAGING_DIR": str(fleet.staging_root),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1"]
    argv += ["--nproc-per-node", str(ranks), "--master-port", str(free_port())]
    return [*argv, str(REPO / "tests" / "dcp_job.py"), *args], env


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it: torchrun starts each rank in a session of
    its own, so killing torchrun's process group would leave the ranks running."""
    below = {pid}
    for _ in range(3):  # torchrun, its ranks, and anything a rank started
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue  # ended meanwhile
            if int(stat.rsplit(")", 1)[1].split()[1]) in below:  # the parent's pid
                below.add(int(entry))
    for each in below:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGKILL)


def pointed_manifest(objects: Path, run: str) -> Manifest | None:
    """The manifest ``<run>/latest.symlink`` names in the store's folder, or None."""
    try:
        target = (objects / run / "latest.symlink").read_text()
        return Manifest.from_bytes((objects / target).read_bytes())
    except (FileNotFoundError, CheckpointError):
        return None  # none yet, or the pointer is being replaced by a rename


def committed_from(objects: Path, run: str, step: int) -> Manifest | None:
    """The manifest ``latest`` names once it names ``step`` or a later one, else None."""
    manifest = pointed_manifest(objects, run)
    return manifest if manifest is not None and manifest.step >= step else None


def settled(redis_url: str, run: str) -> bool:
    """No record of the run is with a worker: each is finished, or queued and never sent
    (a record the killed rank wrote but did not send waits for the watchdog's 300 s), or
    a commit waiting for such files (it is sent again every 0.75 s until they land)."""
    records = connect(redis_url)
    artifacts = records.run_artifacts(run)
    before = [(a.id, a.state) for a in artifacts]
    waiting_commit = {
        a.id for a in artifacts if a.state is State.WAITING and a.fields.get("task") == COMMIT_TASK
    }
    if not all(
        state.terminal or state is State.QUEUED or id in waiting_commit for id, state in before
    ):
        return False
    time.sleep(1.0)
    return [(a.id, a.state) for a in records.run_artifacts(run)] == before


def test_four_ranks_killed_mid_run_resume_on_two_with_the_newest_committed_step(
    fleet: WorkerFleet, redis_server: RedisServer, tmp_path: Path
) -> None:
    run = "dcp-killed"
    store = tmp_path / "store"
    objects = store / "artifacts"
    objects.mkdir(parents=True)
    argv, env = torchrun(fleet, SAVERS, "save", "--store", str(store), "--run-name", run)
    job = subprocess.Popen(
        argv,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        seen = wait_until(lambda: committed_from(objects, run, 3), timeout=120)
        assert job.poll() is None, "the job ended before it was killed"
    except (TimeoutError, AssertionError):
        seen = None
    finally:
        kill_tree(job.pid)
        output = job.communicate(timeout=30)[0]
    assert seen is not None, output[-5000:]
    assert "Traceback" not in output, output[-3000:]
    wait_until(lambda: settled(redis_server.url, run), timeout=60)
    committed = pointed_manifest(objects, run)
    assert committed is not None and committed.step >= seen.step
    # Every rank's data file and the coordinator's metadata, and nothing else.
    names = sorted(posixpath.basename(f.path) for f in committed.files)
    assert names == [".metadata", *(f"__{r}_0.distcp" for r in range(SAVERS))]
    assert committed.world_size == SAVERS
    # Written straight into staging and renamed away: no folder of a committed step is left.
    for rank in range(SAVERS):
        assert not (
            fleet.staging_root / run / f"rank{rank}" / f"dcp-step-{committed.step:08d}"
        ).exists()

    summary = tmp_path / "summary.json"
    argv, env = torchrun(fleet, LOADERS, "load", "--run-name", run, "--summary", str(summary))
    result = subprocess.run(
        argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    expected = dcp_job.full_state(committed.step)
    for rank in range(LOADERS):
        got = json.loads((tmp_path / f"summary-rank{rank}.json").read_text())
        assert got["step"] == got["state_step"] == committed.step
        assert got["files"] == SAVERS + 1
        for name, tensor in expected.items():
            assert torch.equal(torch.tensor(got["values"][name], dtype=tensor.dtype), tensor), name
        assert got["local_shapes"] == {"w": [5, 6], "v": [4, 4 if rank == 0 else 3]}


# ----- in this process: one rank, no process group --------------------------------------------


@pytest.fixture
def logger(fleet: WorkerFleet, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    (tmp_path / "artifacts").mkdir()
    run = request.node.name.replace("_", "-")[:40]
    made = ObjectStoreLogger(**single_rank_local_store(fleet, tmp_path), run_name=run)
    yield made
    made.close()


def one_rank_state(step: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(step)
    return {"model": {"w": torch.randn(5, 3, generator=generator)}, "step": step}


def test_one_rank_loads_latest_and_a_step_number_and_clears_what_killed_writes_left(
    logger: Any, redis_server: RedisServer
) -> None:
    # What killed writes of this rank left (DCP's data file, no .metadata: never
    # registered), of another step and of the next one, beside a staged file's name.
    rank_folder = Path(hoist_dcp.write_folder(logger, 0)).parent
    killed = [rank_folder / f"dcp-step-{step:08d}" for step in (7, 1)]
    for folder in killed:
        folder.mkdir(parents=True)
        (folder / "__0_0.distcp").write_bytes(b"half a shard")
    staged = rank_folder / "00000099-checkpoints__other.pt"
    staged.write_bytes(b"a staged file waits for its upload")
    hoist_dcp.async_save(one_rank_state(1), 1, logger)
    assert not killed[0].exists()  # gone before step 1 was written: any step's leftovers go
    hoist_dcp.save(one_rank_state(2), 2, logger)  # waits for step 1's async save first
    hoist_dcp.wait(logger, timeout=60)  # the commits too: latest names step 2 on return
    assert dcp_folders.abandoned(str(rank_folder)) == []
    assert staged.read_bytes() == b"a staged file waits for its upload"  # never a file
    for asked, step in (("latest", 2), (1, 1)):
        into = one_rank_state(0)
        loaded = hoist_dcp.load(into, logger.run_name, asked, state_url=redis_server.url)
        assert (loaded.step, into["step"]) == (step, step)
        assert torch.equal(into["model"]["w"], one_rank_state(step)["model"]["w"])


def test_an_async_save_failure_is_raised_by_the_next_call_and_at_close(logger: Any) -> None:
    # A lambda cannot be pickled: DCP fails in its own thread, after async_save returned.
    broken = {"model": {"w": torch.ones(2)}, "hook": lambda: None}
    future = hoist_dcp.async_save(broken, 1, logger)
    with pytest.raises(CheckpointError, match="async save of step 1 failed") as raised:
        hoist_dcp.async_save(one_rank_state(2), 2, logger)
    assert raised.value.__cause__ is future.exception().__cause__ is not None  # DCP's own error
    assert "rank 0: AttributeError(\"Can't pickle local object" in str(raised.value)
    hoist_dcp.async_save(broken, 3, logger)
    with pytest.raises(CheckpointError, match="async save of step 3 failed"):
        hoist_dcp.close(logger)
    with pytest.raises(ConfigurationError, match="closed"):
        logger.log_checkpoint_dir(3, "anywhere")


def test_a_step_never_committed_is_refused(
    logger: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    folder = tmp_path / "step-5"
    torch_dcp.save(one_rank_state(5), checkpoint_id=folder)
    logger.log_checkpoint_dir(5, folder, ranks=2)  # the second rank never comes
    logger.wait(timeout=60)
    with pytest.raises(CheckpointError, match="step 5 of run .* was never committed"):
        hoist_dcp.load(one_rank_state(0), logger.run_name, 5, state_url=redis_server.url)
    with pytest.raises(ObjectNotFoundError, match="logged nothing named"):
        hoist_dcp.load(one_rank_state(0), logger.run_name, 7, state_url=redis_server.url)


# ----- the README's snippet: saved, then resumed with --resume, in this process -----------------


def test_the_readme_snippet_saves_then_resumes_from_the_newest_step(
    fleet: WorkerFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README.md's DCP snippet as written, twice: steps 0 and 10 saved; then, with
    ``--resume``, step 10 loaded into the model (equal to what the store holds) and
    training goes on at 11, saving 20 and 30."""
    code = readme_snippets.required("### torch.distributed.checkpoint (DCP)")
    monkeypatch.setattr(sys, "argv", ["readme"])
    first = readme_snippets.run(code, fleet, tmp_path, monkeypatch)
    objects = tmp_path / "store" / "artifacts"
    run = first["logger"].run_name
    saved = pointed_manifest(objects, run)
    assert first["start"] == 0 and saved is not None and saved.step == 10

    loaded: list[dict[str, Any]] = []
    real_load = hoist_dcp.load

    def load(state_dict: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        done = real_load(state_dict, *args, **kwargs)  # the real load; what it loaded noted
        loaded.append({k: v.clone() for k, v in state_dict["model"].items()})
        return done

    monkeypatch.setattr(sys, "argv", ["readme", "--resume"])
    monkeypatch.setattr(hoist_dcp, "load", load)
    second = readme_snippets.run(code, fleet, tmp_path, monkeypatch)
    assert second["start"] == 11
    stored = {k: torch.zeros_like(v) for k, v in loaded[0].items()}
    torch_dcp.load({"model": stored}, checkpoint_id=objects / run / "checkpoints/step-00000010")
    for name, value in stored.items():
        assert torch.equal(loaded[0][name], value), name
    newest = pointed_manifest(objects, run)
    assert newest is not None and newest.step == 30
