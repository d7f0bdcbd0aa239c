"""Node-local staging: uploads go to the queue of their node; only its worker runs them.

Real Redis and real ``hoist worker`` processes: one worker on "node A" (``--node-queue node-a``,
staging root = node A's own folder) and one fleet-wide worker (default queues, a different
staging root, as a CPU machine without node A's disk would have). The fleet-wide worker could
not read node A's files, so every upload landing proves the routing; the workers' logs show
who received what.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from hoist import LogLevel, ObjectStoreLogger
from hoist.commands.retry import retry
from hoist.errors import ConfigurationError
from hoist.protocol.messages import POINTER_QUEUE, UPLOAD_QUEUE, node_queue
from hoist.protocol.sending import sender
from hoist.state.keys import DEFERRED
from hoist.state.records import Records
from hoist.state.states import State
from hoist.workers.worker import worker_queues
from tests.conftest import _serve
from tests.services.redis import RedisServer
from tests.services.workers import WorkerFleet, wait_until

KiB = 1024


@pytest.fixture(scope="module")
def node_a_staging(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("node-a-local")


@pytest.fixture(scope="module")
def shared_worker(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFleet]:
    """A worker of the shared queues, whose staging root is not node A's."""
    yield from _serve(
        WorkerFleet(
            tmp_path_factory.mktemp("shared-worker"),
            redis_server.url,
            tmp_path_factory.mktemp("shared-staging"),
            count=1,
            args=["--hostname", "shared@%h"],
        )
    )


@pytest.fixture(scope="module")
def node_a_worker(
    redis_server: RedisServer,
    node_a_staging: Path,
    shared_worker: WorkerFleet,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerFleet]:
    yield from _serve(
        WorkerFleet(
            tmp_path_factory.mktemp("node-a-worker"),
            redis_server.url,
            node_a_staging,
            count=1,
            args=["--node-queue", "node-a", "--hostname", "node-a@%h"],
        )
    )


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    (tmp_path / "store" / "artifacts").mkdir(parents=True)
    return tmp_path / "store"


def logger_for(
    redis_server: RedisServer, staging: Path, store_dir: Path, run_name: str, **kwargs: object
) -> ObjectStoreLogger:
    return ObjectStoreLogger(
        provider="local",
        container="artifacts",
        provider_kwargs={"key": str(store_dir)},
        object_name="{run_name}/{artifact_name}",
        upload_staging_folder=str(staging),
        broker_url=redis_server.url,
        run_name=run_name,
        **kwargs,  # type: ignore[arg-type]
    )


def received(fleet: WorkerFleet, artifact: str) -> bool:
    """Whether ``fleet`` took ``artifact``'s task, alone or in a batch."""
    logs = fleet.logs()
    return f"[{artifact}] received" in logs or f"'{artifact}'" in logs


def test_worker_queues_default_and_with_a_node() -> None:
    assert worker_queues(None, None) == f"{UPLOAD_QUEUE},{POINTER_QUEUE}"
    # A node-local worker takes its node's uploads and the pointers, not the shared uploads.
    assert worker_queues(None, "gpu-017") == f"{UPLOAD_QUEUE}.node.gpu-017,{POINTER_QUEUE}"
    # Given -Q, the node queue is added to what the operator chose.
    assert worker_queues(UPLOAD_QUEUE, "gpu-017") == f"{UPLOAD_QUEUE},{UPLOAD_QUEUE}.node.gpu-017"
    with pytest.raises(ConfigurationError, match="node queue name 'a b' is not usable"):
        node_queue("a b")


def test_logger_takes_the_node_queue_from_the_environment(
    redis_server: RedisServer, tmp_path: Path, store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOIST_NODE_QUEUE", "gpu-3")
    logger = logger_for(redis_server, tmp_path / "staging", store_dir, "env-node")
    assert logger.upload_queue == "hoist.uploads.node.gpu-3"
    explicit = logger_for(redis_server, tmp_path / "staging", store_dir, "env-node", node_queue="")
    assert explicit.upload_queue == ""  # an explicit empty name means the shared queue
    with pytest.raises(ConfigurationError, match="not usable"):
        logger_for(redis_server, tmp_path / "staging", store_dir, "x", node_queue="../etc")
    for each in (logger, explicit):
        each.wait_on_close = False
        each.close()


def test_node_worker_uploads_what_its_node_staged(
    redis_server: RedisServer,
    node_a_worker: WorkerFleet,
    shared_worker: WorkerFleet,
    node_a_staging: Path,
    store_dir: Path,
    tmp_path: Path,
) -> None:
    run_name = f"node-a-{int(time.time() * 1000)}"
    logger = logger_for(redis_server, node_a_staging, store_dir, run_name, node_queue="node-a")
    expected: dict[str, str] = {}
    uploads = []
    for i in range(6):
        data = os.urandom(64 * KiB + i)
        source = tmp_path / f"ckpt{i}.pt"
        source.write_bytes(data)
        uploads.append(logger.file_artifact(LogLevel.EPOCH, f"ckpt{i}.pt", source))
        expected[f"ckpt{i}.pt"] = hashlib.sha256(data).hexdigest()
    pointer = logger.symlink_artifact("ckpt5.pt", "latest.pt")
    logger.close()  # waits: raises if any upload failed

    for name, digest in expected.items():
        held = (store_dir / "artifacts" / run_name / name).read_bytes()
        assert hashlib.sha256(held).hexdigest() == digest, name
    assert (store_dir / "artifacts" / run_name / "latest.pt.symlink").read_text() == (
        f"{run_name}/ckpt5.pt"
    )
    for artifact in uploads:
        assert received(node_a_worker, str(artifact)), artifact
        assert not received(shared_worker, str(artifact)), f"{artifact} reached the shared worker"
    # The pointer needs no file: it may run on either worker, and it ran on one.
    assert received(node_a_worker, str(pointer)) or received(shared_worker, str(pointer))
    assert not [p for p in (node_a_staging / run_name).rglob("*") if p.is_file()]


def test_resender_and_retry_send_back_to_the_same_node(
    redis_server: RedisServer,
    shared_worker: WorkerFleet,
    store_dir: Path,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Node B has no worker yet: its upload waits in its queue, and stays there when re-sent.

    The shared worker runs all along (its resender is the one that re-sends the deferred
    entry) and never takes node B's upload; once node B's worker starts, it uploads it.
    """
    node_b_staging = tmp_path_factory.mktemp("node-b-local")
    queue = node_queue("node-b")
    client = redis.Redis.from_url(redis_server.url)
    client.delete(queue)
    run_name = f"node-b-{int(time.time() * 1000)}"
    logger = logger_for(redis_server, node_b_staging, store_dir, run_name, node_queue="node-b")
    source = tmp_path / "model.pt"
    source.write_bytes(b"node b's checkpoint")
    artifact = str(logger.file_artifact(LogLevel.EPOCH, "model.pt", source))
    assert wait_until(lambda: client.llen(queue) == 1, timeout=10)

    # The watchdog path: an artifact queued longer than HOIST_QUEUED_TIMEOUT (here:
    # made to look an hour old) falls due, and a worker's resender sends it again.
    client.hset(f"hoist:artifact:{artifact}", "enqueued_at", time.time() - 3600)
    client.zadd(DEFERRED, {artifact: int(time.time() * 1000) - 1000})  # scores are ms
    wait_until(lambda: client.llen(queue) == 2, timeout=30)
    # Taken entries stay, 30 s ahead, until a worker claims the artifact; none can yet.
    client.zrem(DEFERRED, artifact)

    # `hoist retry --queued`'s path.
    records = Records.from_url(redis_server.url)
    [status] = [a for a in records.run_artifacts(run_name) if a.id == artifact]
    [outcome] = retry(records, sender(redis_server.url), [status])
    assert outcome.resent
    assert client.llen(queue) == 3
    assert not received(shared_worker, artifact)
    assert records.states([artifact])[artifact] is State.QUEUED

    node_b = WorkerFleet(
        tmp_path / "node-b-worker",
        redis_server.url,
        node_b_staging,
        count=1,
        args=["--node-queue", "node-b", "--hostname", "node-b@%h"],
    )
    node_b.start()
    try:
        logger.wait(timeout=60)  # the three deliveries find one record: one upload
        assert (store_dir / "artifacts" / run_name / "model.pt").read_bytes() == (
            b"node b's checkpoint"
        )
        wait_until(lambda: client.llen(queue) == 0, timeout=30)
        assert received(node_b, artifact)
        assert not received(shared_worker, artifact)
    finally:
        node_b.stop()
        logger.close()
        records.client.close()
        client.close()
