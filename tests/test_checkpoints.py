"""Sharded checkpoints: a run-wide pointer that moves only to complete, newer steps.

Four ranks (four loggers with their own rank facts, in this process, so the
test controls when each finishes) write a step directory as
``torch.distributed.checkpoint`` does: ``__<rank>_<i>.distcp`` files from
every rank and ``.metadata`` from rank 0, on a filesystem all ranks see, each
rank logging only its own files. Real ``hoist worker`` processes upload them
to the Libcloud local store; one is killed mid-way. The pointer is read from
the store's directory throughout.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hoist import ObjectStoreLogger
from hoist.download import download_checkpoint
from hoist.errors import CheckpointError, UploadFailedError
from hoist.protocol.manifest import Manifest
from hoist.state.records import Records
from hoist.state.states import State
from tests.conftest import serve_fleet
from tests.services.redis import RedisServer
from tests.services.watch import ValueWatch
from tests.services.workers import WorkerFleet, wait_until

WORLD = 4
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def fleet(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFleet]:
    yield from serve_fleet(tmp_path_factory, redis_server.url, "ckpt", count=2, concurrency=1)


class Run:
    """Four ranks' loggers and the step directories they write."""

    def __init__(self, fleet: WorkerFleet, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.store = root / "store"
        (self.store / "artifacts").mkdir(parents=True)
        self.loggers = [
            ObjectStoreLogger(
                provider="local",
                container="artifacts",
                provider_kwargs={"key": str(self.store)},
                broker_url=fleet.broker_url,
                upload_staging_folder=str(fleet.staging_root),
                run_name=name,
                rank=rank,
                local_rank=rank,
                world_size=WORLD,
                local_world_size=WORLD,
                node_rank=0,
            )
            for rank in range(WORLD)
        ]
        self.written: dict[int, dict[str, bytes]] = {}

    def write_step(self, step: int, shard_bytes: int) -> None:
        """What every rank writes for ``step``: two shards each, plus rank 0's metadata."""
        files: dict[str, bytes] = {".metadata": json.dumps({"step": step}).encode()}
        for rank in range(WORLD):
            for i in range(2):
                files[f"__{rank}_{i}.distcp"] = os.urandom(shard_bytes)
        directory = self.step_dir(step)
        directory.mkdir(parents=True)
        for name, data in files.items():
            (directory / name).write_bytes(data)
        self.written[step] = files

    def step_dir(self, step: int) -> Path:
        return self.root / "ckpt" / f"step-{step}"

    def log(self, rank: int, step: int) -> list[str]:
        directory = self.step_dir(step)
        mine = sorted(directory.glob(f"__{rank}_*.distcp"))
        if rank == 0:
            mine.append(directory / ".metadata")
        return self.loggers[rank].log_checkpoint_dir(step, directory, files=mine)

    @property
    def pointer(self) -> Path:
        return self.store / "artifacts" / self.name / "latest.symlink"

    def pointed_step(self) -> int | None:
        try:
            target = self.pointer.read_text()
        except FileNotFoundError:
            return None
        manifest = Manifest.from_bytes((self.store / "artifacts" / target).read_bytes())
        return manifest.step

    def readable_step(self) -> int | None:
        """:meth:`pointed_step`, or None while the pointer is being replaced."""
        try:
            return self.pointed_step()
        except (FileNotFoundError, CheckpointError):
            return None  # the pointer is replaced by a rename: read it again

    def wait_all(self) -> list[UploadFailedError]:
        failures = []
        for logger in self.loggers:
            try:
                logger.wait(timeout=120)
            except UploadFailedError as exc:
                failures.append(exc)
        return failures


def check_landed(run: Run, step: int) -> Manifest:
    """The step's manifest lists exactly what the ranks wrote, and the objects hold it."""
    prefix = f"{run.name}/checkpoints/step-{step:08d}"
    objects = run.store / "artifacts"
    manifest = Manifest.from_bytes((objects / prefix / ".hoist-manifest.json").read_bytes())
    assert manifest.step == step and manifest.world_size == WORLD
    assert sorted(f.path for f in manifest.files) == sorted(run.written[step])
    for item in manifest.files:
        data = run.written[step][item.path]
        assert item.object_name == f"{prefix}/{item.path}"
        assert item.size == len(data)
        assert (objects / item.object_name).read_bytes() == data
        owner = 0 if item.path == ".metadata" else int(item.path[2])
        assert item.rank == owner
    return manifest


def test_the_pointer_moves_only_forward_to_complete_steps_with_a_worker_killed(
    fleet: WorkerFleet, redis_server: RedisServer, tmp_path: Path
) -> None:
    run = Run(fleet, tmp_path, f"ckpt-{int(time.time() * 1000)}")
    for step in (1, 2):
        run.write_step(step, 64 * 1024)
    run.write_step(3, 24 * MiB)

    with ValueWatch(run.readable_step, interval=0.005) as watch:
        # Step 1 waits for rank 3 while step 2 completes: ranks minutes apart,
        # steps out of order.
        for rank in range(3):
            run.log(rank, 1)
        for rank in range(WORLD):
            run.log(rank, 2)
        wait_until(lambda: run.pointed_step() == 2, timeout=60)
        run.log(3, 1)  # step 1 completes last: it must not take the pointer back

        for rank in range(WORLD):
            run.log(rank, 3)
        uploading = wait_until(lambda: busy_worker(fleet), timeout=60)
        os.killpg(uploading.proc.pid, signal.SIGKILL)
        uploading.proc.wait()
        fleet.add()
        assert run.wait_all() == []
        wait_until(lambda: run.pointed_step() == 3, timeout=60)

    assert watch.seen == [2, 3]  # never 1, never backwards, never an incomplete step
    for step in (2, 3):
        check_landed(run, step)
    records = Records.from_url(redis_server.url)
    commits = {s.artifact_name: s for s in records.run_artifacts(run.name) if "commit" in s.id}
    assert commits["checkpoints/step-00000001"].state is State.SUPERSEDED
    assert commits["checkpoints/step-00000003"].state is State.DONE

    # Resume: the pointer leads to the newest step, every file checked.
    restored = download_checkpoint(
        f"{run.name}/latest", tmp_path / "resume", store=f"file://{run.store / 'artifacts'}"
    )
    assert restored.manifest.step == 3
    for name, data in run.written[3].items():
        assert hashlib.sha256((tmp_path / "resume" / name).read_bytes()).digest() == (
            hashlib.sha256(data).digest()
        )


def busy_worker(fleet: WorkerFleet) -> Any:
    """A live worker with an upload received and not finished, per its log; or None."""
    for worker in fleet.workers:
        if worker.proc.poll() is not None:
            continue
        log = worker.log_path.read_text(errors="replace")
        received = set(re.findall(r"Task hoist\.upload\[([^\]]+)\] received", log))
        finished = set(
            # Celery's words for every way a task ends: done, failed, deferred, a duplicate.
            re.findall(
                r"Task hoist\.upload\[([^\]]+)\] (?:succeeded|raised expected|retry:|ignored)", log
            )
        )
        if received - finished:
            return worker
    return None


def test_a_step_with_a_missing_shard_is_never_pointed_to(
    fleet: WorkerFleet, tmp_path: Path
) -> None:
    run = Run(fleet, tmp_path, f"ckpt-missing-{int(time.time() * 1000)}")
    run.write_step(1, 4096)
    for rank in range(WORLD):
        run.log(rank, 1)
    assert run.wait_all() == []
    wait_until(lambda: run.pointed_step() == 1, timeout=60)

    run.write_step(2, 4096)
    fleet.stop()  # nothing uploads while a shard goes missing
    try:
        for rank in range(WORLD):
            run.log(rank, 2)
        [gone] = [p for p in fleet.staging_root.rglob("*__2_1.distcp") if run.name in str(p)]
        gone.unlink()
    finally:
        fleet.start()
    failures = run.wait_all()

    assert run.pointed_step() == 1
    assert not (
        run.store / "artifacts" / run.name / "checkpoints/step-00000002/.hoist-manifest.json"
    ).exists()
    errors = "\n".join(str(f) for f in failures)
    assert "__2_1.distcp" in errors and "staged file" in errors
    assert "step 2 is not committed" in errors
