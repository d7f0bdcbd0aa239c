"""A bound on a rank's staged bytes (issue 17): ``max_staged_bytes`` and ``when_staging_full``.

A real logger against the session's Redis, with no worker process: the
worker core (tests/test_worker_core.py's World) uploads a recorded artifact
when the test says, so a call that waits for room is released by an upload
landing, as it would be by the fleet.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from hoist.errors import ConfigurationError
from hoist.logger.backlog import WITHDRAWN
from hoist.logger.levels import LogLevel
from hoist.logger.logger import ObjectStoreLogger
from hoist.protocol.messages import UPLOAD_TASK, UploadRequest
from hoist.state.states import State
from tests.services.redis import RedisServer
from tests.test_fleet_health import rank_logger
from tests.test_worker_core import World

SIZE = 64 * 1024


@pytest.fixture
def world(redis_server: RedisServer, tmp_path: Path) -> World:
    return World(redis_server.url, tmp_path)


def bounded_logger(world: World, files: float, **options: Any) -> ObjectStoreLogger:
    """A rank whose staging may hold ``files`` files of SIZE bytes."""
    return rank_logger(
        world, "artifacts", wait_on_close=False, max_staged_bytes=int(files * SIZE), **options
    )


def source(tmp_path: Path, name: str = "ckpt.pt") -> Path:
    path = tmp_path / name
    path.write_bytes(b"w" * SIZE)
    return path


def upload(world: World, artifact: str) -> None:
    """The worker core uploads the recorded artifact, as a worker would."""
    status = world.records.get(artifact)
    assert status is not None
    assert world.deliver(UPLOAD_TASK, json.loads(status.fields["message"]))["outcome"] == "done"


def test_a_call_beyond_the_bound_waits_until_an_upload_lands(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logger = bounded_logger(world, 2.5)
    path = source(tmp_path)
    try:
        first = logger.file_artifact(LogLevel.EPOCH, "ep1.pt", path)
        logger.file_artifact(LogLevel.EPOCH, "ep2.pt", path)
        assert first is not None
        done = threading.Event()

        def third() -> None:
            logger.file_artifact(LogLevel.EPOCH, "ep3.pt", path)
            done.set()

        with caplog.at_level(logging.WARNING, logger="hoist.rank"):
            thread = threading.Thread(target=third)
            thread.start()
            assert not done.wait(1.0), "the third file was staged beyond the bound"
            staged = sorted(p.name for p in world.staging.rglob("*") if p.is_file())
            assert len(staged) == 2, staged
            upload(world, first)  # the fleet makes room
            assert done.wait(10.0), "the third file never went on after an upload landed"
            thread.join()
        warnings = [r.getMessage() for r in caplog.records if r.name == "hoist.rank"]
        assert any("waits for room" in w and "max_staged_bytes=163840" in w for w in warnings)
        assert any("went on after" in w for w in warnings), warnings
    finally:
        logger.close()


def test_supersede_withdraws_the_oldest_unstarted_version_of_the_name(
    world: World, tmp_path: Path
) -> None:
    logger = bounded_logger(world, 2, when_staging_full="supersede")
    path = source(tmp_path)
    try:
        versions = [
            logger.file_artifact(LogLevel.BATCH, "latest.pt", path, overwrite=True)
            for _ in range(4)
        ]  # no worker runs: without withdrawing, the third call would wait for ever
        assert all(versions)
        states = {v: world.records.get(v) for v in versions if v}
        assert [s.state if s else None for s in states.values()] == [
            State.SUPERSEDED,
            State.SUPERSEDED,
            State.QUEUED,
            State.QUEUED,
        ]
        first = states[versions[0]]
        assert first is not None and first.fields["superseded_by"] == WITHDRAWN
        staged = [p for p in world.staging.rglob("*") if p.is_file()]
        assert len(staged) == 2, staged
        # The newest version is the one that lands.
        upload(world, str(versions[-1]))
        assert (
            world.base / "artifacts" / world.run / "latest.pt"
        ).read_bytes() == path.read_bytes()
    finally:
        logger.close()


def test_supersede_never_takes_back_an_upload_a_worker_has_claimed(
    world: World, tmp_path: Path
) -> None:
    logger = bounded_logger(world, 1, when_staging_full="supersede")
    path = source(tmp_path)
    try:
        first = logger.file_artifact(LogLevel.BATCH, "latest.pt", path, overwrite=True)
        assert first is not None
        status = world.records.get(first)
        assert status is not None
        message = json.loads(status.fields["message"])
        # A worker claims it (its upload is in flight): the rank must wait, not withdraw.
        world.records.claim(UploadRequest.from_json(message), UPLOAD_TASK, "worker-token", 8)
        done = threading.Event()
        thread = threading.Thread(
            target=lambda: (
                logger.file_artifact(LogLevel.BATCH, "latest.pt", path, overwrite=True),
                done.set(),
            )
        )
        thread.start()
        assert not done.wait(1.0), "a claimed upload was withdrawn"
        claimed = world.records.get(first)
        assert claimed is not None and claimed.state is State.UPLOADING
        world.records.settle(first, "worker-token", State.DONE)  # it landed
        assert done.wait(10.0)
        thread.join()
    finally:
        logger.close()


def test_a_file_larger_than_the_bound_is_refused_before_anything_is_staged(
    world: World, tmp_path: Path
) -> None:
    logger = bounded_logger(world, 0.5)
    try:
        with pytest.raises(ConfigurationError, match="more than max_staged_bytes=32768"):
            logger.file_artifact(LogLevel.EPOCH, "big.pt", source(tmp_path))
        assert not [p for p in world.staging.rglob("*") if p.is_file()]
    finally:
        logger.close()


def test_when_staging_full_must_be_wait_or_supersede(world: World) -> None:
    with pytest.raises(ConfigurationError, match="'wait' or 'supersede', not 'drop'"):
        bounded_logger(world, 1, when_staging_full="drop")


def test_a_call_that_fails_after_making_room_withdraws_nothing(
    world: World, tmp_path: Path
) -> None:
    """Older versions are withdrawn only once the new one is recorded: a call that
    fails on the way (here its 'file' is a directory) leaves them to upload."""
    logger = bounded_logger(world, 2, when_staging_full="supersede")
    path = source(tmp_path)
    try:
        older = [
            logger.file_artifact(LogLevel.BATCH, "latest.pt", path, overwrite=True)
            for _ in range(2)
        ]
        not_a_file = tmp_path / "a-directory"
        not_a_file.mkdir()
        with pytest.raises(Exception):  # noqa: B017 (whatever staging a directory raises)
            logger.file_artifact(LogLevel.BATCH, "latest.pt", not_a_file, overwrite=True)
        for artifact in older:
            status = world.records.get(str(artifact))
            assert status is not None and status.state is State.QUEUED, status
            assert Path(status.message["staged_path"]).exists()
    finally:
        logger.close()
