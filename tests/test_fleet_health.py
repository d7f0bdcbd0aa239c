"""Failures reach the training loop while it runs (issue 16): the store check a logger
sends when it starts, and the first call after a recorded failure raising.

The first tests run the worker core in this process (tests/test_worker_core.py's
World: the session's Redis, a Libcloud local store) and a real logger against
the same Redis, with no worker process; the last ones use real ``hoist
worker`` processes and Composer's destination as its Trainer calls it.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hoist.errors import TransientStoreError, UploadFailedError
from hoist.integrations.composer import HoistDestination
from hoist.logger.health import RETRY_LOOK_SECONDS, FleetHealth, OnFailure
from hoist.logger.levels import LogLevel
from hoist.logger.logger import ObjectStoreLogger
from hoist.logger.pending import PendingArtifacts
from hoist.protocol.messages import (
    PROBE_NAME,
    PROBE_TASK,
    UPLOAD_TASK,
    ProbeRequest,
    order_key,
    probe_id,
)
from hoist.settings import RankSettings
from hoist.state.signals import read_probe
from hoist.state.states import State
from hoist.stores.allowed import AllowedStores
from hoist.stores.spec import StoreSpec
from tests.conftest import serve_fleet, single_rank_local_store
from tests.services.keys import KEYS
from tests.services.redis import RedisServer
from tests.services.workers import WorkerFleet
from tests.test_worker_core import World, failing


@pytest.fixture
def world(redis_server: RedisServer, tmp_path: Path) -> World:
    """The worker core, allowed the ``artifacts`` container and a ``missing`` one."""
    base = tmp_path / "store"
    allowed = AllowedStores.parse([f"file://{base}/artifacts", f"file://{base}/missing"])
    return World(redis_server.url, tmp_path, allowed=allowed)


def spec_of(world: World, container: str) -> StoreSpec:
    kwargs = {
        "provider": "local",
        "container": container,
        "provider_kwargs": {"key": str(world.base)},
    }
    return StoreSpec.describe("libcloud", kwargs, KEYS)


def probe(world: World, container: str, object_name: str | None = None) -> ProbeRequest:
    nonce = uuid.uuid4().hex[:12]
    return ProbeRequest(
        id=probe_id(world.run, 0, nonce),
        run_name=world.run,
        rank=0,
        seq=0,
        artifact_name=PROBE_NAME,
        object_name=object_name or f"{world.run}/hoist-store-check-{nonce}",
        order=order_key(0, 0),
        store=spec_of(world, container).to_json(),
    ).signed(KEYS)


# ----- the store check, in the worker core ------------------------------------------------


def test_a_store_check_writes_and_deletes_under_the_prefix(world: World) -> None:
    message = probe(world, "artifacts")
    result = world.deliver(PROBE_TASK, message)
    assert result["outcome"] == "done"
    outcome = read_probe(world.records.client, message.id)
    assert outcome is not None and outcome.ok and not outcome.error
    assert not world.held(message.object_name).exists()  # written, then deleted
    assert world.records.failures(world.run, 0) == 0


def test_a_store_check_of_a_missing_container_fails_and_raises_the_counter(world: World) -> None:
    message = probe(world, "missing")
    result = world.deliver(PROBE_TASK, message)
    assert result["outcome"] == "failed"
    outcome = read_probe(world.records.client, message.id)
    assert outcome is not None and not outcome.ok
    assert "missing" in outcome.error and "does not exist" in outcome.error, outcome.error
    assert world.records.failures(world.run, 0) == 1


def test_a_store_check_of_a_store_not_allowed_is_refused_and_recorded(world: World) -> None:
    message = probe(world, "elsewhere")
    result = world.deliver(PROBE_TASK, message)
    assert result["outcome"] == "refused"
    outcome = read_probe(world.records.client, message.id)
    assert outcome is not None and not outcome.ok
    assert "allow" in outcome.error, outcome.error


def test_a_signed_store_check_naming_an_artifact_is_refused_and_touches_it_not(
    world: World,
) -> None:
    """A check writes and deletes its object: one naming a checkpoint would destroy it."""
    victim = world.base / "artifacts" / world.run / "ep9.pt"
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"the only copy")
    message = probe(world, "artifacts", object_name=f"{world.run}/ep9.pt")
    assert world.deliver(PROBE_TASK, message)["outcome"] == "refused"
    assert victim.read_bytes() == b"the only copy"
    assert read_probe(world.records.client, message.id) is None


def test_an_unsigned_store_check_touches_nothing(world: World) -> None:
    message = probe(world, "missing").to_json()
    message["mac"] = ""
    assert world.deliver(PROBE_TASK, message)["outcome"] == "refused"
    assert read_probe(world.records.client, str(message["id"])) is None
    assert world.records.failures(world.run, 0) == 0


# ----- the rank learns at its next call -----------------------------------------------------


def rank_logger(world: World, container: str, **options: Any) -> ObjectStoreLogger:
    settings = RankSettings(
        broker_url=world.settings.broker_url,
        staging_dir=str(world.staging),
        keys=KEYS,
        run_name=world.run,
    )
    return ObjectStoreLogger(
        "local",
        container,
        {"key": str(world.base)},
        object_name="{run_name}/{artifact_name}",
        settings=settings,
        rank=0,
        world_size=1,
        store_check=False,  # no worker here to answer it; the fleet tests below do
        **options,
    )


def fail_upload(world: World, artifact: str) -> None:
    """Run the worker core on the recorded upload: its store is missing, so it fails."""
    status = world.records.get(artifact)
    assert status is not None
    world.deliver(UPLOAD_TASK, json.loads(status.fields["message"]))
    failed = world.records.get(artifact)
    assert failed is not None and failed.state is State.FAILED


def test_the_first_call_after_a_recorded_failure_raises_naming_it(
    world: World, tmp_path: Path
) -> None:
    source = tmp_path / "ep1.pt"
    source.write_bytes(b"weights")
    logger = rank_logger(world, "missing", wait_on_close=False)
    try:
        artifact = logger.file_artifact(LogLevel.EPOCH, "ep1.pt", source)
        assert artifact is not None
        logger.file_artifact(LogLevel.EPOCH, "ep2.pt", source)  # nothing failed yet
        fail_upload(world, artifact)
        with pytest.raises(UploadFailedError) as raised:
            logger.file_artifact(LogLevel.EPOCH, "ep3.pt", source)
        text = str(raised.value)
        assert "checkpoint ep1.pt" in text and "missing" in text, text
        assert "hoist retry" in text
        assert [name for name, _, _ in raised.value.failures] == ["ep1.pt"]
        # Reported once: the calls after it go on.
        logger.check()
        logger.file_artifact(LogLevel.EPOCH, "ep4.pt", source)
    finally:
        logger.close()


def test_on_failure_warn_logs_each_failure_once_and_close_does_not_raise(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "ep1.pt"
    source.write_bytes(b"weights")
    logger = rank_logger(world, "missing", on_failure="warn")
    artifact = logger.file_artifact(LogLevel.EPOCH, "ep1.pt", source)
    assert artifact is not None
    fail_upload(world, artifact)
    with caplog.at_level(logging.ERROR, logger="hoist.rank"):
        logger.check()
        logger.check()
        second = logger.file_artifact(LogLevel.EPOCH, "ep2.pt", source)
        assert second is not None
        fail_upload(world, second)
        logger.close()  # waits for ep2.pt, which failed: logged, not raised
    reports = [r.getMessage() for r in caplog.records if "failed to upload" in r.getMessage()]
    assert len(reports) == 2, reports
    assert "ep1.pt" in reports[0] and "ep2.pt" not in reports[0]
    assert "ep2.pt" in reports[1]


def test_on_failure_must_be_raise_or_warn(world: World) -> None:
    with pytest.raises(Exception, match="on_failure must be 'raise' or 'warn', not 'ignore'"):
        rank_logger(world, "artifacts", on_failure="ignore")


def test_an_unreachable_state_redis_fails_the_constructor_saying_how_long(tmp_path: Path) -> None:
    settings = RankSettings(
        broker_url="redis://127.0.0.1:9/0",  # the discard port: nothing listens
        staging_dir=str(tmp_path),
        keys=KEYS,
        run_name="no-redis",
        enqueue_timeout=1.5,
    )
    started = time.monotonic()
    with pytest.raises(Exception, match="unreachable") as raised:
        ObjectStoreLogger("local", "artifacts", {"key": str(tmp_path)}, settings=settings)
    waited = time.monotonic() - started
    assert waited < 5
    said = float(str(raised.value).split("after ")[1].split(" s")[0])
    assert abs(said - waited) < 0.5, (said, waited)
    assert "build the logger again" in str(raised.value)


# ----- with real workers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFleet]:
    yield from serve_fleet(tmp_path_factory, redis_server.url, "health", count=1, concurrency=2)


def test_a_logger_aimed_at_a_missing_container_fails_at_its_check(
    fleet: WorkerFleet, tmp_path: Path
) -> None:
    arguments = {**single_rank_local_store(fleet, tmp_path), "container": "no-such-container"}
    logger = ObjectStoreLogger(**arguments, run_name=f"health-{uuid.uuid4().hex[:8]}")
    try:
        with pytest.raises(UploadFailedError) as raised:
            logger.check(store_check_timeout=60)
        text = str(raised.value)
        assert "the fleet cannot use this logger's store" in text, text
        assert "no-such-container" in text, text
        logger.check()  # reported once
    finally:
        logger.close()


def test_a_good_store_passes_its_check_and_keeps_no_object(
    fleet: WorkerFleet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "artifacts").mkdir()
    run = f"health-{uuid.uuid4().hex[:8]}"
    arguments = single_rank_local_store(fleet, tmp_path)
    with (
        caplog.at_level(logging.DEBUG, logger="hoist.rank"),
        ObjectStoreLogger(**arguments, run_name=run) as logger,
    ):
        logger.check(store_check_timeout=60)
    assert any("store check passed" in r.getMessage() for r in caplog.records)
    assert not list((tmp_path / "artifacts").rglob("hoist-store-check-*"))


def test_composer_fails_at_init_when_its_bucket_is_missing(
    fleet: WorkerFleet, tmp_path: Path
) -> None:
    """Composer's own uploader fails in the Trainer's constructor; hoist's at INIT."""
    arguments = {**single_rank_local_store(fleet, tmp_path), "container": "no-such-container"}
    destination = HoistDestination(**arguments, store_check_timeout=60)

    class State:
        run_name = f"composer-{uuid.uuid4().hex[:8]}"

    with pytest.raises(UploadFailedError, match="no-such-container"):
        destination.init(State(), None)
    destination.post_close()


def test_a_rank_warns_once_of_an_artifact_retrying_for_over_a_minute(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    flaky, young = world.upload("flaky.bin"), world.upload("young.bin")
    for message, ago in ((flaky, 90.0), (young, 10.0)):
        ctx = dataclasses.replace(
            world.ctx,
            store=failing(world, TransientStoreError("503 Slow Down")),
            clock=lambda ago=ago: time.time() - ago,  # type: ignore[misc]
        )
        assert world.deliver(UPLOAD_TASK, message, ctx)["outcome"] == "retrying"
    pending = PendingArtifacts(world.records, world.run, 0, "redis://127.0.0.1")
    pending.add(flaky)
    pending.add(young)
    now = [0.0]
    health = FleetHealth(world.records, pending, world.run, 0, OnFailure.RAISE, 0, lambda: now[0])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hoist.rank"):
        health.after_call()  # the first look is RETRY_LOOK_SECONDS after the start
        assert not caplog.records
        for _ in range(3):
            now[0] += RETRY_LOOK_SECONDS
            health.after_call()
    warnings = [r.getMessage() for r in caplog.records if r.name == "hoist.rank"]
    assert len(warnings) == 1, warnings
    assert "flaky.bin" in warnings[0] and "503 Slow Down" in warnings[0], warnings[0]
    assert "retrying for 9" in warnings[0]  # 90 s, give or take the test's own time


class WebPage(http.server.BaseHTTPRequestHandler):
    """A web server where an S3 endpoint was expected: 200 and a page, to anything."""

    def answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<html><body>Welcome to nginx!</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = answer

    def log_message(self, *args: Any) -> None:
        pass


def test_a_store_check_against_a_server_that_is_not_s3_fails_at_once(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), WebPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    try:
        allowed = AllowedStores.parse([f"s3://ckpts/?endpoint_url={endpoint}"])
        world = World(redis_server.url, tmp_path, allowed=allowed)
        kwargs = {
            "bucket": "ckpts",
            "endpoint_url": endpoint,
            "aws_access_key_id": "key",
            "aws_secret_access_key": "secret",
            "region_name": "us-east-1",
        }
        message = dataclasses.replace(
            probe(world, "artifacts"), store=StoreSpec.describe("s3", kwargs, KEYS).to_json()
        ).signed(KEYS)
        assert world.deliver(PROBE_TASK, message)["outcome"] == "failed"
        # Not tried again: the same request gets the same page.
        assert not [r for r in caplog.records if "trying again" in r.getMessage()]
        outcome = read_probe(world.records.client, message.id)
        assert outcome is not None
        assert "does not answer as an S3 server" in outcome.error, outcome.error
        assert "endpoint_url" in outcome.error and "secret" not in outcome.error
    finally:
        server.shutdown()
