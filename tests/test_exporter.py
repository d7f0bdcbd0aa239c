"""``hoist exporter`` against a real Redis and a real worker: what KEDA reads moves as it should.

The exporter runs as a user starts it (``hoist exporter --port P``, a process of its own);
each test scrapes ``/metrics`` over HTTP. The module has a Redis of its own: the backlog is
fleet-wide, so another test's leftovers in the session's Redis would count here too.

- A deferred artifact (a retry due in an hour: in no queue, held by no worker) counts in
  ``hoist_backlog_total`` while the Redis lists KEDA's list triggers read are empty: the
  artifact scale-to-zero used to strand.
- A real run: the worker is paused (SIGSTOP) while the rank logs, so the backlog is exactly
  what was logged; resumed, it uploads everything and the backlog returns to 0.
- A store's throttle ceiling, written by the real script, shows up, and goes once lifted.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from hoist import LogLevel, ObjectStoreLogger
from hoist.commands.exporter import FleetCollector
from hoist.protocol.messages import (
    POINTER_QUEUE,
    UPLOAD_QUEUE,
    UPLOAD_TASK,
    UploadRequest,
    artifact_id,
    order_key,
)
from hoist.state.gauges import FleetReader
from hoist.state.keys import DEFERRED, THROTTLED, record_key, run_key, throttle_key
from hoist.state.records import Records
from hoist.state.throttle import Throttle
from tests.conftest import _serve, serve_fleet
from tests.services.keys import FLEET_KEY
from tests.services.process import ServerProcess, free_port, port_open
from tests.services.redis import RedisServer
from tests.services.workers import WorkerFleet, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from _serve(RedisServer(tmp_path_factory.mktemp("exporter-redis")))


@pytest.fixture(scope="module")
def fleet(
    own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFleet]:
    yield from serve_fleet(tmp_path_factory, own_redis.url, "exporter", count=1, concurrency=2)


@pytest.fixture(scope="module")
def exporter(own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``hoist exporter`` on a free port; its port."""
    home = tmp_path_factory.mktemp("exporter-home")  # no env file: the URL below is all
    port = free_port()
    argv = [sys.executable, "-m", "hoist.cli", "exporter", "--port", str(port)]
    env = {"HOIST_BROKER_URL": own_redis.url, "HOIST_HOME": str(home)}
    process = ServerProcess(
        "hoist exporter", argv, home / "exporter.log", lambda: port_open(port), env
    )
    process.start()
    try:
        yield port
    finally:
        process.stop()


def scrape(port: int) -> Samples:
    """Every sample ``/metrics`` serves now, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def backlog(samples: Samples) -> dict[str, float]:
    kinds = {
        k: value(samples, "hoist_backlog", kind=k) for k in ("queued", "in_flight", "deferred")
    }
    return {**kinds, "total": value(samples, "hoist_backlog_total")}


def idle(port: int) -> Samples:
    """A scrape once nothing is left to do (earlier tests' work has settled)."""

    def settled() -> Samples | None:
        samples = scrape(port)
        return samples if backlog(samples)["total"] == 0 else None

    found: Samples = wait_until(settled, timeout=30)
    return found


def test_a_deferred_artifact_counts_in_what_keda_reads(
    own_redis: RedisServer, exporter: int
) -> None:
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    records = Records(client)
    idle(exporter)
    run = f"deferred-{time.time_ns()}"
    message = UploadRequest(
        artifact_id(run, 0, 1), run, 0, 1, "held.pt", f"{run}/held.pt", order_key(0, 1), {},
        size=5,
    )  # fmt: skip
    records.create(message, UPLOAD_TASK, "0123456789abcdef")
    # As a transient store error leaves it: retrying, due again in an hour, acknowledged.
    due = time.time() + 3600
    client.hset(record_key(message.id), mapping={"state": "retrying", "next_attempt_at": due})
    client.zadd(DEFERRED, {message.id: int(due * 1000)})
    client.zadd(run_key(run), {message.id: time.time() - 120})  # logged two minutes ago
    try:
        samples = scrape(exporter)
        assert backlog(samples) == {"queued": 0, "in_flight": 0, "deferred": 1, "total": 1}
        # What the list triggers read is 0: on them alone the fleet would scale to zero.
        assert client.llen(UPLOAD_QUEUE) == client.llen(POINTER_QUEUE) == 0
        assert value(samples, "hoist_artifacts", state="retrying") == 1
        assert 120 <= value(samples, "hoist_oldest_pending_age_seconds") < 180
        assert value(samples, "hoist_exporter_up") == 1
        assert 0 < value(samples, "hoist_exporter_scrape_seconds") < 5
    finally:
        client.zrem(DEFERRED, message.id)
        client.delete(record_key(message.id), run_key(run))
    after = scrape(exporter)
    assert backlog(after)["total"] == 0
    assert value(after, "hoist_artifacts", state="retrying") == 0
    assert value(after, "hoist_oldest_pending_age_seconds") == 0


def test_a_real_run_raises_the_backlog_and_it_returns_to_zero(
    own_redis: RedisServer, fleet: WorkerFleet, exporter: int, tmp_path: Path
) -> None:
    idle(exporter)
    store = tmp_path / "store"
    (store / "artifacts").mkdir(parents=True)
    run = f"fleet-{time.time_ns()}"
    logger = ObjectStoreLogger(
        provider="local", container="artifacts", provider_kwargs={"key": str(store)},
        object_name="{run_name}/{artifact_name}", upload_staging_folder=str(fleet.staging_root),
        broker_url=own_redis.url, run_name=run, fleet_key=FLEET_KEY, store_check=False,
        rank=0, local_rank=0, world_size=1, local_world_size=1, node_rank=0,
    )  # fmt: skip
    count = 6
    worker = fleet.process.proc
    assert worker is not None
    pid = worker.pid  # started in a session of its own: its pool shares its process group
    os.killpg(pid, signal.SIGSTOP)  # the worker and its pool: nothing is taken meanwhile
    try:
        for i in range(count):
            source = tmp_path / f"ckpt{i}.pt"
            source.write_bytes(os.urandom(64 * 1024 + i))
            logger.file_artifact(LogLevel.EPOCH, f"ckpt{i}.pt", source)
        during = scrape(exporter)
    finally:
        os.killpg(pid, signal.SIGCONT)
    assert backlog(during)["total"] == count
    assert backlog(during)["in_flight"] == 0
    assert value(during, "hoist_artifacts", state="queued") == count
    assert value(during, "hoist_oldest_pending_age_seconds") > 0
    logger.wait(timeout=60)  # raises if an upload failed
    logger.close()
    assert sorted(p.name for p in (store / "artifacts" / run).iterdir()) == [
        f"ckpt{i}.pt" for i in range(count)
    ]
    after = idle(exporter)  # the last acknowledgement may follow the record by a moment
    assert backlog(after) == {"queued": 0, "in_flight": 0, "deferred": 0, "total": 0}
    assert value(after, "hoist_artifacts", state="queued") == 0
    assert value(after, "hoist_artifacts", state="done") >= count


def test_a_throttle_ceiling_shows_up_and_goes_when_lifted(
    own_redis: RedisServer, exporter: int
) -> None:
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    store = "fedcba9876543210"
    ceiling = Throttle(client).slowed(store, 8, int(time.time() * 1000))
    assert ceiling == 4.0  # half the configured 8: nothing was in flight
    try:
        samples = scrape(exporter)
        assert value(samples, "hoist_store_concurrency_ceiling", store=store) == 4.0
    finally:
        client.delete(throttle_key(store))
    lifted = scrape(exporter)
    assert ("hoist_store_concurrency_ceiling", (("store", store),)) not in lifted
    assert not client.sismember(THROTTLED, store)


def test_an_unreachable_redis_is_up_0_not_a_failed_scrape() -> None:
    """In-process: the collector says Redis is down and serves no backlog figure."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    records = Records.from_url(url)
    collector = FleetCollector(FleetReader(records, records.client))
    families = {family.name: family for family in collector.collect()}
    assert [s.value for s in families["hoist_exporter_up"].samples] == [0]
    assert "hoist_backlog_total" not in families and "hoist_backlog" not in families
    assert "hoist_exporter_scrape_seconds" in families
