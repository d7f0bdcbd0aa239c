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
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from hoist import LogLevel, ObjectStoreLogger
from hoist.commands.exporter import FleetCollector
from hoist.errors import ObjectExistsError, UploadFailedError
from hoist.protocol.messages import (
    POINTER_QUEUE,
    UPLOAD_QUEUE,
    UPLOAD_TASK,
    UploadRequest,
    artifact_id,
    order_key,
)
from hoist.state.counters import OTHER, FleetCounters, Outcome, error_class
from hoist.state.gauges import FleetReader
from hoist.state.keys import DEFERRED, THROTTLED, record_key, run_key, throttle_key
from hoist.state.records import Records
from hoist.state.states import State
from hoist.state.throttle import Throttle
from hoist.stores.spec import StoreSpec
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
    worker = fleet.workers[0].proc
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


def test_counts_add_up_in_redis_and_histogram_buckets_are_cumulative(
    own_redis: RedisServer,
) -> None:
    """The settle's counting against a real Redis: each outcome adds what it says, once."""
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    records = Records(client)
    store = f"{time.time_ns():016x}"[-16:]
    artifact = f"unit-{store}"
    client.hset(record_key(artifact), "enqueued_at", 1000.0)

    def settle(outcome: Outcome, now: float) -> None:
        count = FleetCounters.arguments(outcome, now)
        records.settle(artifact, "token", State.RETRYING, retry_in=60, count=count)

    try:
        settle(Outcome(store, attempted=True, failed_class="TimeoutError"), 1001)
        settle(Outcome(store, lease_wait=True), 1002)
        settle(Outcome(store, attempted=True, uploaded_bytes=300, verified=True), 1004.0)
        settle(Outcome(store, verified=True), 1100.0)  # already present
        settle(Outcome(store), 1200.0)  # nothing to count: no arguments, no count
        assert FleetCounters.arguments(Outcome(store), 1200.0) == []
        found = FleetCounters(client).read()
    finally:
        client.delete(record_key(artifact))
        client.zrem(DEFERRED, artifact)
    assert found.attempts[store] == 2
    assert found.failures[(store, "TimeoutError")] == 1
    assert found.lease_waits[store] == 1
    assert found.uploaded_bytes[store] == 300
    histogram = found.verified[store]
    assert histogram.count == 2
    assert histogram.total_seconds == pytest.approx(104.0)
    assert histogram.buckets[2.5] == 0 and histogram.buckets[5] == 1  # took 4 s
    assert histogram.buckets[60] == 1 and histogram.buckets[120] == 2  # took 100 s
    assert histogram.buckets[float("inf")] == 2
    assert error_class(TimeoutError()) == "TimeoutError"
    assert error_class(ObjectExistsError("x")) == "ObjectExistsError"
    assert error_class(type("Library", (Exception,), {})()) == OTHER


def _logger(
    store: Path, container: str, run: str, fleet: WorkerFleet, url: str, **more: Any
) -> Any:
    return ObjectStoreLogger(
        provider="local", container=container, provider_kwargs={"key": str(store)},
        object_name="{run_name}/{artifact_name}", upload_staging_folder=str(fleet.staging_root),
        broker_url=url, run_name=run, fleet_key=FLEET_KEY, store_check=False,
        rank=0, local_rank=0, world_size=1, local_world_size=1, node_rank=0, **more,
    )  # fmt: skip


def _store_id(url: str, run: str) -> str:
    """The store key the workers counted a run's artifacts under (from its first record)."""
    first = Records.from_url(url).run_artifacts(run)[0]
    return StoreSpec.from_json(first.message["store"]).store_id


def test_a_real_run_moves_the_counters(
    own_redis: RedisServer, fleet: WorkerFleet, exporter: int, tmp_path: Path
) -> None:
    """Bytes uploaded are the artifacts' sizes, one histogram sample and one attempt per
    artifact; an upload the store refuses counts a failed attempt under its class."""
    store = tmp_path / "store"
    (store / "artifacts").mkdir(parents=True)
    run = f"counted-{time.time_ns()}"
    logger = _logger(store, "artifacts", run, fleet, own_redis.url)
    sizes = [32 * 1024 + 7 * i for i in range(5)]
    for i, size in enumerate(sizes):
        source = tmp_path / f"c{i}.pt"
        source.write_bytes(os.urandom(size))
        logger.file_artifact(LogLevel.EPOCH, f"c{i}.pt", source)
    logger.wait(timeout=60)
    logger.close()
    sid = _store_id(own_redis.url, run)
    samples = scrape(exporter)
    assert value(samples, "hoist_uploaded_bytes_total", store=sid) == sum(sizes)
    assert value(samples, "hoist_verified_seconds_count", store=sid) == len(sizes)
    assert value(samples, "hoist_verified_seconds_bucket", store=sid, le="+Inf") == len(sizes)
    assert 0 < value(samples, "hoist_verified_seconds_sum", store=sid) < 60 * len(sizes)
    assert value(samples, "hoist_attempts_total", store=sid) == len(sizes)
    assert not [
        k for k in samples if k[0] == "hoist_attempt_failures_total" and ("store", sid) in k[1]
    ]

    # No such container: the store refuses, the artifact fails, and its class is counted.
    missing = tmp_path / "missing-store"
    missing.mkdir()
    refused = f"refused-{time.time_ns()}"
    failing = _logger(missing, "nothere", refused, fleet, own_redis.url, on_failure="warn")
    source = tmp_path / "refused.pt"
    source.write_bytes(b"x" * 100)
    failing.file_artifact(LogLevel.EPOCH, "refused.pt", source)
    with pytest.raises(UploadFailedError):
        failing.wait(timeout=60)
    failing.close()
    bad = _store_id(own_redis.url, refused)
    counted = scrape(exporter)
    failed = {k[1]: v for k, v in counted.items() if k[0] == "hoist_attempt_failures_total"}
    mine = {dict(labels)["error"]: n for labels, n in failed.items() if ("store", bad) in labels}
    assert mine == {"ContainerNotFoundError": 1}  # permanent: one try, never retried
    assert value(counted, "hoist_attempts_total", store=bad) == 1
    assert ("hoist_uploaded_bytes_total", (("store", bad),)) not in counted
