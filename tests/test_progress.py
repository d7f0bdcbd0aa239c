"""Progress a person can see: bytes of an upload in flight reach ``hoist status``.

A real ``hoist worker`` uploads a file to moto through the throttling proxy,
slow enough to take a few seconds, while the test polls the function behind
``hoist status --json`` (:func:`hoist.commands.status.run_status`). The
worker records the bytes sent at its progress cadence, so the run's
``bytes_sent`` grows strictly between 0 and the size before the upload is done.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hoist import LogLevel, ObjectStoreLogger, S3ObjectStore
from hoist.commands.status import run_status
from hoist.state.records import Records
from hoist.state.states import State
from tests.conftest import serve_fleet
from tests.services.keys import FLEET_KEY
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


def test_status_counts_bytes_of_an_upload_in_flight(
    store: S3Server, fleet: WorkerFleet, proxy: ThrottlingProxy, tmp_path: Path
) -> None:
    run = f"progress-{time.time_ns() // 1_000_000}"
    logger = ObjectStoreLogger(
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
    records = Records.from_url(fleet.broker_url)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(SIZE))
    artifact = logger.file_artifact(LogLevel.EPOCH, "big.bin", source)
    assert artifact is not None
    try:
        readings: list[tuple[int, int]] = []  # (run total, rank 0) while not yet done
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = run_status(records, run).to_json()
            if status["total"]["done"]:
                break
            [rank] = status["ranks"]
            readings.append((status["total"]["bytes_sent"], rank["bytes_sent"]))
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
    print(f"\n[progress] bytes_sent in flight of {SIZE}: {between}")
