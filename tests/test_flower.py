"""What Flower shows of each task: its state and its Result column, up to a real browser.

Three parts. The outcome texts (:func:`hoist.tasks.delivery.shown`), without
servers. The progress a worker reports on every store kind, through the real
upload job against real servers (moto, sshd, a local directory). And one
headless Chromium session on a real ``hoist flower`` over a real worker,
uploading to moto through the throttling proxy: mid-upload, the tasks table
shows the upload as ``PROGRESS`` with ``uploading: X of Y (Z%)``, a pointer
waiting for it as ``RETRY`` with what it waits for, a failed upload as
``FAILURE`` with its error in the Result column; afterwards the pointer that
a newer one overtook is ``SUPERSEDED``, never a green SUCCESS.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hoist import LogLevel, ObjectStoreLogger, S3ObjectStore
from hoist.errors import UploadFailedError
from hoist.protocol.messages import COMMIT_TASK, POINTER_TASK, UPLOAD_TASK
from hoist.stores.allowed import AllowedStores
from hoist.stores.spec import StoreSpec
from hoist.tasks.delivery import (
    DEFERRED,
    FAILURE,
    RETRY,
    SUCCESS,
    SUPERSEDED,
    shown,
    shown_batch,
)
from hoist.tasks.jobs import JOBS
from tests.conftest import serve_fleet
from tests.services.flower import flower_server
from tests.services.keys import FLEET_KEY, KEYS
from tests.services.redis import RedisServer
from tests.services.s3 import S3Server
from tests.services.sshd import SshServer
from tests.services.throttle import ThrottlingProxy
from tests.services.workers import WorkerFleet, wait_until
from tests.test_cli_cluster import CHROMIUM, CHROMIUM_ARGS
from tests.test_worker_core import World

MiB = 1024 * 1024

# ----- the outcome texts --------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "result", "state", "text"),
    [
        (UPLOAD_TASK, {"outcome": "done"}, SUCCESS, ""),
        (UPLOAD_TASK, {"outcome": "failed", "error": "ObjectExistsError: s3://b/x exists"},
         FAILURE, "failed: ObjectExistsError: s3://b/x exists"),
        (UPLOAD_TASK, {"outcome": "poison"}, FAILURE, "failed: delivered too often"),
        (UPLOAD_TASK, {"outcome": "refused", "error": "a malformed message"},
         FAILURE, "failed: a malformed message"),
        (UPLOAD_TASK, {"outcome": "retrying", "error": "StoreConnectionError: reset",
                       "next_attempt_at": 1012.5},
         RETRY, "retrying after StoreConnectionError: reset; next attempt in 12 s"),
        (POINTER_TASK, {"outcome": "waiting", "waiting_for": "its target 'ep1.pt'"},
         RETRY, "waiting for its target 'ep1.pt'; sent again within 3 s"),
        (POINTER_TASK, {"outcome": "superseded"}, SUPERSEDED, "superseded by a newer pointer"),
        (UPLOAD_TASK, {"outcome": "superseded"}, SUPERSEDED, "superseded: a newer version"),
        (COMMIT_TASK, {"outcome": "superseded"}, SUPERSEDED, "superseded: a later step"),
    ],
)  # fmt: skip
def test_each_outcome_has_its_state_and_a_readable_result(
    task: str, result: dict[str, Any], state: str, text: str
) -> None:
    described = shown(task, {"id": "hoist-r-r0-1", **result}, now=1000.0, wait_seconds=2.0)
    assert described is not None
    assert described.state == state
    assert described.text.startswith(text), described.text
    assert described.event == f"task-{state.lower()}"


@pytest.mark.parametrize("outcome", ["busy", "finished", "mismatch"])
def test_a_duplicate_delivery_shows_nothing(outcome: str) -> None:
    """Its row is the first delivery's; a replayed or forged message must not repaint it."""
    assert shown(UPLOAD_TASK, {"id": "a", "outcome": outcome}, now=0, wait_seconds=1) is None


def test_a_batch_shows_its_most_pressing_member() -> None:
    done = {"id": "a", "outcome": "done"}
    waiting = {"id": "b", "outcome": "waiting", "waiting_for": "a concurrency limit"}
    failed = {"id": "c", "outcome": "failed", "error": "StoreAuthError: denied"}
    superseded = {"id": "d", "outcome": "superseded"}
    assert shown_batch([done, superseded], 0, 1).state == SUCCESS  # the counts say the rest
    deferred = shown_batch([done, waiting, superseded], 0, 1)
    assert deferred.state == DEFERRED
    assert deferred.text == (
        "1 of 3 done; 1 sent again on its own: b waiting for a concurrency limit; "
        "sent again within 1.5 s"
    )
    failure = shown_batch([done, waiting, failed], 0, 1)
    assert (failure.state, failure.text) == (FAILURE, "1 of 3 failed: c: StoreAuthError: denied")


# ----- progress on every store kind ---------------------------------------------------


def s3_spec(server: S3Server, endpoint: str, bucket: str, **transfer: int) -> StoreSpec:
    kwargs = {
        "bucket": bucket,
        "endpoint_url": endpoint,
        "aws_access_key_id": server.access_key,
        "aws_secret_access_key": server.secret_key,
        "transfer_config": transfer,
    }
    return StoreSpec.describe("s3", kwargs, KEYS)


def sftp_spec(server: SshServer) -> StoreSpec:
    kwargs = {
        "host": server.host,
        "port": server.port,
        "username": server.username,
        "key_filename": server.key_filename,
        "known_hosts": server.known_hosts,
        "cwd": str(server.root),
    }
    return StoreSpec.describe("sftp", kwargs, KEYS)


# Small parts, one at a time: a file of a few MiB is several parts.
PARTS = {"multipart_threshold": 5 * MiB, "part_size": 5 * MiB, "max_concurrency": 1}


@pytest.mark.parametrize(
    "kind",
    [
        "s3-put",
        "s3-multipart",
        "sftp",
        "local",
    ],
)
def test_an_upload_reports_its_bytes_as_they_go_on_every_store(
    kind: str, redis_server: RedisServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The upload job's ``task-progress`` events (Flower's PROGRESS): readings that grow,
    some strictly between 0 and the size, the last one the size."""
    world = World(redis_server.url, tmp_path, allowed=AllowedStores.parse([], any_store=True))
    spec = world.spec
    if kind.startswith("s3"):
        moto: S3Server = request.getfixturevalue("moto_server")
        spec = s3_spec(moto, moto.endpoint_url, moto.bucket, **PARTS)
    elif kind == "sftp":
        spec = sftp_spec(request.getfixturevalue("sshd_server"))
    # Several parts (S3, 5 MiB) or chunks (Libcloud reads 8 MiB, SFTP writes 1 MiB at a time).
    size = {"s3-multipart": 12 * MiB + 1, "local": 17 * MiB}.get(kind, 3 * MiB)
    message = world.upload(f"{kind}.bin", os.urandom(size), spec=spec)
    events: list[dict[str, Any]] = []
    job = JOBS[UPLOAD_TASK](
        world.with_settings(progress_seconds=0.0),
        message.to_json(),
        message.id,
        lambda kind, **fields: events.append({"type": kind, **fields}),
    )
    assert job.run()["outcome"] == "done"
    assert {e["type"] for e in events} == {"task-progress"}
    readings = [e["bytes_done"] for e in events]
    assert readings == sorted(set(readings)) and readings[-1] == size, readings
    assert any(0 < done < size for done in readings), readings
    assert events[-1]["result"].startswith("uploading: ") and "(100%)" in events[-1]["result"]


# ----- in a browser -------------------------------------------------------------------

BUCKET = "flower-browser"
SIZE = 40 * MiB
RATE = 8 * MiB
"""Bytes per second through the proxy: the upload lasts five seconds, in 5 MiB parts."""
LOGIN = ("ops", "flower-browser-pw")
PROGRESS = re.compile(r"uploading: [\d.]+ (?:[KMG]i)?B of [\d.]+ (?:[KMG]i)?B \((\d+)%\)")


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[WorkerFleet]:
    # Two slots: pointers and the failing upload run beside the slow one. A
    # pointer held back is sent again within 1.5 s: a few rounds per upload.
    env = {"HOIST_FLEET_KEY": FLEET_KEY, "HOIST_PROGRESS_SECONDS": "0.2", "HOIST_WAIT_SECONDS": "1"}
    yield from serve_fleet(
        tmp_path_factory, redis_server.url, "flower", count=1, concurrency=2, env=env
    )


@pytest.fixture(scope="module")
def flower(tmp_path_factory: pytest.TempPathFactory, fleet: WorkerFleet) -> Iterator[int]:
    workdir = tmp_path_factory.mktemp("flower")
    with flower_server(workdir, fleet.broker_url, LOGIN, {"HOIST_FLEET_KEY": FLEET_KEY}) as port:
        yield port


@pytest.fixture
def proxy(moto_server: S3Server) -> Iterator[ThrottlingProxy]:
    with contextlib.suppress(Exception):  # made by an earlier test of the session
        moto_server.client().create_bucket(Bucket=BUCKET)
    proxy = ThrottlingProxy(moto_server.port, rate=RATE)
    proxy.start()
    yield proxy
    proxy.stop()


def rows(page: Any, url: str) -> list[str]:
    """The text of each row of Flower's tasks table, freshly loaded."""
    from playwright.sync_api import Error as PlaywrightError

    response = page.goto(url)
    assert response is not None and response.status == 200
    table = page.locator("#tasks-table tbody")
    with contextlib.suppress(PlaywrightError):  # an empty table has no such row
        table.get_by_text("hoist.").first.wait_for(timeout=5_000)
    return [" ".join(row.split()) for row in table.locator("tr").all_inner_texts()]


def row_of(table: list[str], *needles: str) -> str | None:
    return next((row for row in table if all(n in row for n in needles)), None)


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"needs Debian's chromium at {CHROMIUM}")
def test_flower_shows_progress_failures_and_pointers_in_chromium(
    fleet: WorkerFleet,
    flower: int,
    proxy: ThrottlingProxy,
    moto_server: S3Server,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import sync_playwright

    run = f"browser-{time.time_ns() // 1_000_000}"
    moto_server.client().put_object(Bucket=BUCKET, Key=f"{run}/ep0.pt", Body=b"other bytes")
    logger = ObjectStoreLogger(
        object_store_cls=S3ObjectStore,
        object_store_kwargs={
            "bucket": BUCKET,
            "endpoint_url": proxy.endpoint_url,
            "aws_access_key_id": moto_server.access_key,
            "aws_secret_access_key": moto_server.secret_key,
            "transfer_config": PARTS,
        },
        run_name=run,
        object_name="{run_name}/{artifact_name}",
        broker_url=fleet.broker_url,
        upload_staging_folder=str(fleet.staging_root),
        fleet_key=FLEET_KEY,
        rank=0,
        world_size=1,
    )
    files = {"small.pt": os.urandom(1000), "big.bin": os.urandom(SIZE), "ep0.pt": b"ours"}
    for name, payload in files.items():
        (tmp_path / name).write_bytes(payload)
    url = f"http://127.0.0.1:{flower}/tasks"
    shots = []
    try:
        logger.file_artifact(LogLevel.EPOCH, "small.pt", tmp_path / "small.pt")
        logger.wait(timeout=30)
        logger.file_artifact(LogLevel.EPOCH, "big.bin", tmp_path / "big.bin")
        logger.symlink_artifact("big.bin", "latest.pt")  # waits for big.bin...
        logger.file_artifact(LogLevel.EPOCH, "ep0.pt", tmp_path / "ep0.pt")  # fails: taken
        logger.symlink_artifact("small.pt", "latest.pt")  # ...and is overtaken by this one
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(
                    http_credentials={"username": LOGIN[0], "password": LOGIN[1]},
                    viewport={"width": 1400, "height": 900},
                )
                page = context.new_page()

                def in_flight() -> dict[str, str] | None:
                    table = rows(page, url)
                    found = {
                        "upload": row_of(table, "'artifact': 'big.bin'", "PROGRESS"),
                        "pointer": row_of(table, f"'target': '{run}/big.bin'", "RETRY"),
                        "failed": row_of(table, "ep0.pt", "FAILURE"),
                    }
                    return found if all(found.values()) else None  # type: ignore[return-value]

                seen = wait_until(in_flight, timeout=30, interval=0.5)
                shots.append(tmp_path / "flower-in-flight.png")
                page.screenshot(path=str(shots[-1]), full_page=True)
                percent = PROGRESS.search(seen["upload"])
                assert percent is not None and int(percent[1]) < 100, seen["upload"]
                # The kwargs are shortest first: the size is in the row's text.
                assert f"'artifact': 'big.bin', 'size': {SIZE}, 'run': '{run}'" in seen["upload"]
                assert "waiting for its target 'big.bin'; sent again within" in seen["pointer"]
                assert "failed: " in seen["failed"] and "ObjectExistsError" in seen["failed"]
                assert "already exists with other bytes" in seen["failed"]

                with pytest.raises(UploadFailedError, match="ep0.pt"):
                    logger.wait(timeout=60)

                def settled() -> dict[str, str] | None:
                    table = rows(page, url)
                    found = {
                        "upload": row_of(table, "'artifact': 'big.bin'", "SUCCESS"),
                        "pointer": row_of(table, f"'target': '{run}/big.bin'", "SUPERSEDED"),
                        "winner": row_of(table, f"'target': '{run}/small.pt'", "SUCCESS"),
                    }
                    return found if all(found.values()) else None  # type: ignore[return-value]

                after = wait_until(settled, timeout=30, interval=0.5)
                shots.append(tmp_path / "flower-settled.png")
                page.screenshot(path=str(shots[-1]), full_page=True)
                assert "superseded by a newer pointer" in after["pointer"]
                context.close()
            finally:
                browser.close()
    finally:
        logger.close()
    for shot in shots:
        print(f"\nFlower tasks page: {shot}")
