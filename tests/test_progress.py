"""Progress a person can see: bytes of an upload in flight reach ``hoist status`` and Flower.

A real ``hoist worker`` uploads a file to moto through the throttling proxy,
slow enough to take a few seconds, while the test polls the function behind
``hoist status --json`` (:func:`hoist.commands.status.run_status`). The
worker records the bytes sent at its progress cadence, so the run's
``bytes_sent`` grows strictly between 0 and the size before the upload is done.

For Flower, the same kind of upload (S3 multipart, whose parts are sent and
counted on a thread pool) while an event receiver listens: every
``task-progress`` event names the task, and Flower's own events state shows
the task as ``PROGRESS`` with its reading as the result.
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from rich.console import Console

from hoist import LogLevel, ObjectStoreLogger, S3ObjectStore
from hoist.commands.console import format_bytes
from hoist.commands.status import RunStatus, render_table, run_status
from hoist.state.records import Records
from hoist.state.states import State
from tests.conftest import serve_fleet
from tests.services.flower import flower_get, signal_when_consuming
from tests.services.keys import FLEET_KEY
from tests.services.process import ServerProcess, free_port, port_open
from tests.services.redis import RedisServer
from tests.services.s3 import S3Server
from tests.services.throttle import ThrottlingProxy
from tests.services.workers import WorkerFleet

MiB = 1024 * 1024
BUCKET = "progress"
SIZE = 64 * MiB
RATE = 16 * MiB
"""Bytes per second through the proxy: the upload lasts about four seconds."""


@pytest.fixture(scope="module")
def store(moto_server: S3Server) -> S3Server:
    moto_server.client().create_bucket(Bucket=BUCKET)
    return moto_server


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[WorkerFleet]:
    # Progress every 0.2 s: several readings within the upload.
    env = {"HOIST_FLEET_KEY": FLEET_KEY, "HOIST_PROGRESS_SECONDS": "0.2"}
    yield from serve_fleet(
        tmp_path_factory, redis_server.url, "progress", count=1, concurrency=1, env=env
    )


@pytest.fixture
def proxy(store: S3Server) -> Iterator[ThrottlingProxy]:
    proxy = ThrottlingProxy(store.port)
    proxy.start()
    proxy.set_rate(RATE)
    yield proxy
    proxy.stop()


def s3_logger(
    run: str, store: S3Server, fleet: WorkerFleet, proxy: ThrottlingProxy
) -> ObjectStoreLogger:
    """Rank 0 of 1 logging to moto through the throttling proxy."""
    return ObjectStoreLogger(
        object_store_cls=S3ObjectStore,
        object_store_kwargs={
            "bucket": BUCKET,
            "endpoint_url": proxy.endpoint_url,
            "aws_access_key_id": store.access_key,
            "aws_secret_access_key": store.secret_key,
        },
        run_name=run,
        object_name="{run_name}/{artifact_name}",
        broker_url=fleet.broker_url,
        upload_staging_folder=str(fleet.staging_root),
        fleet_key=FLEET_KEY,
        rank=0,
        world_size=1,
    )


def test_status_counts_bytes_of_an_upload_in_flight(
    store: S3Server, fleet: WorkerFleet, proxy: ThrottlingProxy, tmp_path: Path
) -> None:
    run = f"progress-{time.time_ns() // 1_000_000}"
    logger = s3_logger(run, store, fleet, proxy)
    records = Records.from_url(fleet.broker_url)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(SIZE))
    artifact = logger.file_artifact(LogLevel.EPOCH, "big.bin", source)
    assert artifact is not None
    try:
        readings: list[tuple[int, int]] = []  # (run total, rank 0) while not yet done
        table: tuple[int, str] | None = None  # a reading in flight and the table then
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            current = run_status(records, run)
            status = current.to_json()
            if status["total"]["done"]:
                break
            [rank] = status["ranks"]
            readings.append((status["total"]["bytes_sent"], rank["bytes_sent"]))
            if 0 < current.total.bytes_sent < SIZE and table is None:
                table = current.total.bytes_sent, _table_text(current)
            assert status["total"]["bytes_done"] == 0  # bytes_done keeps its meaning
            time.sleep(0.05)
        final = run_status(records, run).to_json()["total"]
        assert records.states([artifact])[artifact] is State.DONE
        assert final["bytes_sent"] == final["bytes_done"] == SIZE
    finally:
        logger.close()
    between = sorted({total for total, _ in readings if 0 < total < SIZE})
    # Readings strictly between 0 and the size that grow (multipart counts a part
    # once it is stored: 8 MiB steps), and the rank's equal to the run's.
    assert len(between) >= 2, readings
    totals = [total for total, _ in readings]
    assert totals == sorted(totals), readings
    assert all(total == rank for total, rank in readings), readings
    # What `hoist status --run` (and each --watch refresh) printed in flight:
    # the bytes sent so far, not 0 until the upload ends.
    assert table is not None
    sent, text = table
    assert f"{format_bytes(sent)} / {format_bytes(SIZE)}" in text, text
    print(f"\n[progress] bytes_sent in flight of {SIZE}: {between}")


def test_flower_shows_a_multipart_upload_in_flight_as_progress(
    store: S3Server, fleet: WorkerFleet, proxy: ThrottlingProxy, tmp_path: Path
) -> None:
    from flower.events import EventsState

    events: list[dict[str, Any]] = []
    app = Celery(broker=fleet.broker_url, set_as_current=False)
    run = f"flower-{time.time_ns() // 1_000_000}"
    size = 32 * MiB  # four 8 MiB parts, two seconds through the proxy
    source = tmp_path / "parts.bin"
    source.write_bytes(os.urandom(size))
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": events.append})
        listening = threading.Event()
        receiver.consumer_context = signal_when_consuming(receiver.consumer_context, listening)
        capture = threading.Thread(target=receiver.capture, kwargs={"wakeup": False}, daemon=True)
        capture.start()
        try:
            assert listening.wait(10)
            logger = s3_logger(run, store, fleet, proxy)
            try:
                artifact = logger.file_artifact(LogLevel.EPOCH, "parts.bin", source)
                assert artifact is not None
                logger.wait()
            finally:
                logger.close()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not any(
                e["type"] == "task-succeeded" and e.get("uuid") == artifact for e in events
            ):
                time.sleep(0.05)
        finally:
            receiver.should_stop = True
            capture.join(10)
    progress = [e for e in events if e["type"] == "task-progress"]
    assert progress, [e["type"] for e in events]
    # Sent from the parts' threads, each must still name its task, or Flower
    # files it under no task and shows the upload as STARTED throughout.
    assert {e.get("uuid") for e in progress} == {artifact}
    ours = [e for e in events if e.get("uuid") == artifact]
    before_success = ours[: [e["type"] for e in ours].index("task-succeeded")]
    state = EventsState()  # what Flower keeps and its task views read
    for event in before_success:
        state.event(dict(event))
    task = state.tasks[artifact]
    assert task.state == "PROGRESS"
    assert task.result.startswith("uploading: ") and task.result.endswith("(100%)"), task.result
    print(f"\n[flower] {len(progress)} task-progress events: {[e['bytes_done'] for e in progress]}")


def _table_text(status: RunStatus) -> str:
    """The table ``hoist status --run`` prints for ``status``, as plain text."""
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(render_table([status], per_rank=True))
    return console.export_text()


@pytest.fixture(scope="module")
def flower(
    tmp_path_factory: pytest.TempPathFactory, fleet: WorkerFleet
) -> Iterator[tuple[int, tuple[str, str]]]:
    """A real ``hoist flower`` on the fleet's broker, with a login: (port, login)."""
    home = tmp_path_factory.mktemp("flower")
    port = free_port()
    login = ("ops", "progress-pw")
    env = {
        "HOIST_HOME": str(home / ".hoist"),
        "HOIST_FLEET_KEY": FLEET_KEY,
        "HOIST_FLOWER_USER": login[0],
        "HOIST_FLOWER_PASSWORD": login[1],
    }
    argv = [sys.executable, "-m", "hoist.cli", "flower", "--broker-url", fleet.broker_url]
    server = ServerProcess(
        "hoist flower",
        [*argv, "--port", str(port)],
        home / "flower.log",
        lambda: port_open(port),
        env,
    )
    server.start()
    try:
        yield port, login
    finally:
        server.stop()


def test_flower_api_shows_progress_mid_upload(
    store: S3Server,
    fleet: WorkerFleet,
    proxy: ThrottlingProxy,
    flower: tuple[int, tuple[str, str]],
    tmp_path: Path,
) -> None:
    """Polled as the issue's reporter did: Flower's task API says PROGRESS mid-upload."""
    port, login = flower
    run = f"flower-api-{time.time_ns() // 1_000_000}"
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(SIZE))
    logger = s3_logger(run, store, fleet, proxy)
    seen: list[tuple[str, str]] = []  # (state, result) as Flower reported them
    try:
        artifact = logger.file_artifact(LogLevel.EPOCH, "big.bin", source)
        assert artifact is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            code, body = flower_get(port, f"/api/task/info/{artifact}", login, timeout=5)
            if code == 200:
                info = json.loads(body)
                seen.append((info.get("state"), str(info.get("result"))))
                if info.get("state") == "SUCCESS":
                    break
            time.sleep(0.1)
    finally:
        logger.close()
    progress = [result for state, result in seen if state == "PROGRESS"]
    assert progress, seen
    assert all(result.startswith("uploading: ") for result in progress), progress
    assert seen[-1][0] == "SUCCESS", seen[-1]
    print(f"\n[flower api] PROGRESS results seen: {sorted(set(progress))}")
