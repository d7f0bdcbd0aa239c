"""Fault injection on the worker fleet and its broker (issue 5).

Real processes throughout: a private ``redis-server`` (restarted by one
test), ``moto_server`` (it keeps every version of an object in a versioned
bucket, so "the same artifact reached the store twice" is counted by the
server itself), real ``hoist worker`` processes killed with real signals,
real rank processes. Objects are read back with raw boto3, never through
hoist's store code.

Each test prints what it measured (run with ``-s``): recovery times, how many
deliveries and sessions it saw. CI runs the short form of each fault; the
full repetition count is marked ``long``. Decisions that need no process
(pointers under shuffled or stalled writes, duplicate claims) are checked in
tests/test_worker_core*.py.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import awscrt.checksums
import pytest

from hoist import LogLevel, ObjectStoreLogger, S3ObjectStore
from hoist.state.records import ArtifactStatus, Records
from hoist.state.states import State
from tests.conftest import _running
from tests.services.keys import FLEET_KEY
from tests.services.process import ServerProcess, descendants
from tests.services.ranks import RankJob, collect_ranks, start_ranks
from tests.services.redis import RedisServer
from tests.services.s3 import S3Server
from tests.services.throttle import ThrottlingProxy
from tests.services.workers import WorkerFleet, wait_until

MiB = 1024 * 1024
BUCKET = "hoist-faults"
LEASE_SECONDS = 3
"""Short leases, so that recovery from a dead worker (about two lease times) is quick."""
QUEUED_TIMEOUT = 8
"""How long an artifact may stay queued, never claimed, before it is sent again."""
UNCLAIMED_TIMEOUT = 5
"""The same, where only the one unclaimed artifact is queued: its recovery takes this long."""


# ----- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(services_dir: Path) -> Iterator[RedisServer]:
    """A Redis of this module's own: one test restarts it, and killed workers leave
    unacknowledged messages behind that no other module should see."""
    from tests.conftest import _serve

    yield from _serve(RedisServer(services_dir / f"redis-faults-{os.getpid()}"))


@pytest.fixture(scope="module")
def store(moto_server: S3Server) -> S3Server:
    """moto with a versioned bucket: every write of an object is kept as a version."""
    client = moto_server.client()
    client.create_bucket(Bucket=BUCKET)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return moto_server


@pytest.fixture(scope="module")
def staging_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("staging")


FleetFactory = Callable[..., WorkerFleet]


@pytest.fixture
def fleets(broker: RedisServer, staging_root: Path, tmp_path: Path) -> Iterator[FleetFactory]:
    """Start worker fleets for one test; every worker still alive is stopped after it."""
    made: list[WorkerFleet] = []

    def make(count: int = 1, concurrency: int = 1, **env: str) -> WorkerFleet:
        fleet = WorkerFleet(
            tmp_path / f"workers{len(made)}",
            broker.url,
            staging_root,
            count=count,
            concurrency=concurrency,
            env={"HOIST_FLEET_KEY": FLEET_KEY, "HOIST_LEASE_SECONDS": str(LEASE_SECONDS), **env},
        )
        made.append(fleet)
        _running.append(fleet)
        fleet.start()
        return fleet

    yield make
    for fleet in made:
        _running.remove(fleet)
        fleet.stop()


@pytest.fixture
def proxy(store: S3Server) -> Iterator[ThrottlingProxy]:
    """A throttling proxy in front of moto, at full speed until a test slows it."""
    proxy = ThrottlingProxy(store.port)
    proxy.start()
    yield proxy
    proxy.stop()


# ----- helpers ----------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{time.time_ns() // 1_000_000}"


def s3_logger_kwargs(server: S3Server, endpoint_url: str | None = None) -> dict[str, Any]:
    return {
        "object_store_cls": S3ObjectStore,
        "object_store_kwargs": {
            "bucket": BUCKET,
            "endpoint_url": endpoint_url or server.endpoint_url,
            "aws_access_key_id": server.access_key,
            "aws_secret_access_key": server.secret_key,
        },
    }


def make_logger(
    run: str,
    server: S3Server,
    broker: RedisServer,
    staging: Path,
    endpoint: str | None = None,
    **options: Any,
) -> ObjectStoreLogger:
    return ObjectStoreLogger(
        **s3_logger_kwargs(server, endpoint),
        run_name=run,
        object_name="{run_name}/{artifact_name}",
        broker_url=broker.url,
        upload_staging_folder=str(staging),
        fleet_key=FLEET_KEY,
        rank=0,
        world_size=1,
        **options,
    )


def settled(records: Records, artifact: str) -> ArtifactStatus | None:
    status = records.get(artifact)
    return status if status is not None and status.state.terminal else None


def crc64nvme_b64(data: bytes) -> str:
    """The checksum S3 reports in ``ChecksumCRC64NVME``, computed here (not by hoist)."""
    return base64.b64encode(awscrt.checksums.crc64nvme(data).to_bytes(8, "big")).decode()


def versions(server: S3Server, key: str) -> int:
    """How many times ``key`` was written to the store (the bucket keeps every version)."""
    return versions_under(server, key)[key]


def versions_under(server: S3Server, prefix: str) -> Counter[str]:
    """Writes per key under ``prefix``, in one listing (moto copies every version it lists)."""
    counts: Counter[str] = Counter()
    paginator = server.client().get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix):
        counts.update(v["Key"] for v in page.get("Versions", []))
    return counts


def check_landed_once(server: S3Server, key: str, expected: bytes) -> int:
    """Assert ``key`` holds ``expected`` (bytes and the server's own CRC64NVME);
    return how many times it was written."""
    client = server.client()
    held = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert hashlib.sha256(held).digest() == hashlib.sha256(expected).digest(), key
    head = client.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    if "ChecksumCRC64NVME" in head and head.get("ChecksumType") == "FULL_OBJECT":
        assert head["ChecksumCRC64NVME"] == crc64nvme_b64(expected), key
    return versions(server, key)


def object_exists(server: S3Server, key: str) -> bool:
    return bool(server.client().list_objects_v2(Bucket=BUCKET, Prefix=key).get("KeyCount", 0))


def multipart_open(server: S3Server, key: str) -> bool:
    uploads = server.client().list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", [])
    return any(u["Key"] == key for u in uploads)


def staged_files(root: Path, run: str) -> list[Path]:
    return [p for p in (root / run).rglob("*") if p.is_file()] if (root / run).exists() else []


def deliveries_in_logs(fleet: WorkerFleet, artifact: str) -> int:
    """How many times the broker delivered ``artifact``'s task to any worker of ``fleet``."""
    return fleet.logs().count(f"[{artifact}] received")


def random_bytes(size: int, seed: str) -> bytes:
    return random.Random(seed).randbytes(size)


def log_random(
    logger: ObjectStoreLogger, tmp_path: Path, run: str, name: str, size: int
) -> tuple[str, bytes]:
    """Write ``size`` seeded random bytes to ``tmp_path/name`` and log them as ``name``.

    Returns the artifact id and the bytes.
    """
    data = random_bytes(size, f"{run}-{name}")
    source = tmp_path / name
    source.write_bytes(data)
    artifact = logger.file_artifact(LogLevel.EPOCH, name, source)
    assert artifact is not None
    return artifact, data


# ----- 1. a worker killed mid-upload ----------------------------------------


@pytest.mark.parametrize(
    ("kills", "size_mib"),
    [
        pytest.param(1, 64, id="1-kill-64MiB"),  # the default suite: one; -m long: five
        pytest.param(5, 200, id="5-kills-200MiB", marks=pytest.mark.long),
    ],
)
def test_worker_killed_mid_upload(
    kills: int,
    size_mib: int,
    store: S3Server,
    broker: RedisServer,
    fleets: FleetFactory,
    staging_root: Path,
    tmp_path: Path,
) -> None:
    """SIGKILL the worker's whole process group while it uploads; a fresh worker
    takes over within about two lease times, not the broker's 2 h visibility timeout."""
    fleet = fleets(count=1, concurrency=1)
    run = unique("killed")
    logger = make_logger(run, store, broker, staging_root)
    records = Records.from_url(broker.url)
    recoveries = []
    for n in range(kills):
        artifact, data = log_random(logger, tmp_path, run, f"ckpt{n}.pt", size_mib * MiB)
        key = f"{run}/ckpt{n}.pt"
        victim = fleet.workers[-1]

        def uploading(artifact: str = artifact, key: str = key) -> bool:
            status = records.get(artifact)
            return (
                status is not None
                and status.state is State.UPLOADING
                and "upload_started_at" in status.fields
                and multipart_open(store, key)
            )

        wait_until(uploading, timeout=120, interval=0.02)
        killed = time.monotonic()
        _kill_group(victim)
        assert not object_exists(store, key), "the kill came after the upload had completed"
        fleet.add()
        status = wait_until(lambda a=artifact: settled(records, a), timeout=180, interval=0.05)
        assert status.state is State.DONE, status.fields
        writes = check_landed_once(store, key, data)
        recoveries.append(time.monotonic() - killed)
        assert writes == 1, f"{key} reached the store {writes} times"
        (tmp_path / f"ckpt{n}.pt").unlink()  # frees its disk space before the next kill
    logger.wait(timeout=60)
    logger.close()
    assert staged_files(staging_root, run) == []
    print(
        f"\n[killed mid-upload] {kills} x {size_mib} MiB, lease {LEASE_SECONDS} s: "
        f"lost 0, duplicates 0, recovery kill->verified "
        + ", ".join(f"{r:.1f}" for r in recoveries)
        + f" s (max {max(recoveries):.1f} s)"
    )


def _kill_group(worker: ServerProcess) -> None:
    """SIGKILL the Celery main process and its pool children at once."""
    assert worker.proc is not None
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(30)


def test_worker_killed_between_taking_a_message_and_claiming_it(
    store: S3Server,
    broker: RedisServer,
    fleets: FleetFactory,
    staging_root: Path,
    tmp_path: Path,
) -> None:
    """The worker's pool is frozen (SIGSTOP) so that its main process takes the
    message from the broker but no task ever claims the record; then the whole
    group is SIGKILLed. kombu keeps the message in its unacknowledged set for
    the visibility timeout (2 h); hoist sends it again after ``queued_timeout``."""
    fleet = fleets(count=1, concurrency=1, HOIST_QUEUED_TIMEOUT=str(UNCLAIMED_TIMEOUT))
    victim = fleet.workers[0]
    assert victim.proc is not None
    pool = descendants(victim.proc.pid)
    assert pool, "the worker has no pool processes"
    for pid in pool:
        os.kill(pid, signal.SIGSTOP)
    run = unique("unclaimed")
    # No store check: the frozen worker would take that message instead of the upload's.
    logger = make_logger(run, store, broker, staging_root, store_check=False)
    data = random_bytes(3 * MiB, run)
    source = tmp_path / "model.pt"
    source.write_bytes(data)
    artifact = logger.file_artifact(LogLevel.EPOCH, "model.pt", source)
    records = Records.from_url(broker.url)
    client = broker_client(broker)

    def taken_not_claimed() -> bool:
        held = any(artifact in value for value in client.hvals("unacked"))
        status = records.get(artifact)
        return held and status is not None and status.state is State.QUEUED

    wait_until(taken_not_claimed, timeout=60, interval=0.02)
    killed = time.monotonic()
    _kill_group(victim)
    fleet.add()
    status = wait_until(lambda: settled(records, artifact), timeout=120, interval=0.05)
    assert status.state is State.DONE, status.fields
    recovered = time.monotonic() - killed
    writes = check_landed_once(store, f"{run}/model.pt", data)
    assert writes == 1
    assert staged_files(staging_root, run) == []
    logger.close()
    print(
        f"\n[killed before claiming] queued_timeout {UNCLAIMED_TIMEOUT} s: lost 0, duplicates "
        f"{writes - 1}, verified {recovered:.1f} s after the kill"
    )


# ----- 2. a worker stopped gracefully ---------------------------------------


SIGTERM_FILE_BYTES = 16 * MiB
"""At S3's multipart threshold: each upload is a multipart session, as a checkpoint's is."""
SIGTERM_RATE = 16 * MiB
"""Two uploads in flight share it, 2 s each: longer than the 1 s grace, short for a suite."""


@pytest.mark.parametrize("grace", [None, 1.0], ids=["waits-for-uploads", "grace-expires"])
def test_worker_sigterm_with_uploads_in_flight(
    grace: float | None,
    store: S3Server,
    broker: RedisServer,
    proxy: ThrottlingProxy,
    fleets: FleetFactory,
    staging_root: Path,
    tmp_path: Path,
) -> None:
    """SIGTERM to the worker's main process, as Kubernetes sends it to a pod.

    Without a deadline the worker finishes its uploads before it exits. With
    one (Kubernetes' grace period ends in SIGKILL), what it had in hand is
    handed back, and a fresh worker finishes it. Nothing is lost either way.
    """
    proxy.set_rate(SIGTERM_RATE)  # two uploads share it: each lasts about 2 s, past the grace
    fleet = fleets(count=1, concurrency=2)
    run = unique(f"sigterm-{'grace' if grace else 'wait'}")
    logger = make_logger(run, store, broker, staging_root, proxy.endpoint_url)
    records = Records.from_url(broker.url)
    expected = {}
    ids = []
    for n in range(4):
        artifact, expected[f"{run}/f{n}.bin"] = log_random(
            logger, tmp_path, run, f"f{n}.bin", SIGTERM_FILE_BYTES
        )
        ids.append(artifact)
    worker = fleet.workers[0]
    assert worker.proc is not None

    def in_flight() -> list[str]:
        statuses = [records.get(i) for i in ids]
        return [
            s.id
            for s in statuses
            if s is not None and s.state is State.UPLOADING and "upload_started_at" in s.fields
        ]

    def two_in_flight() -> list[str]:
        found = in_flight()
        return found if len(found) == 2 else []

    in_flight_now = wait_until(two_in_flight, timeout=120, interval=0.05)
    stopped = time.monotonic()
    os.kill(worker.proc.pid, signal.SIGTERM)  # the main process only, as a pod's PID 1
    if grace is None:
        worker.proc.wait(180)
        finished_before_exit = [i for i in in_flight_now if records.states([i])[i] is State.DONE]
        assert finished_before_exit == in_flight_now, "a warm shutdown must finish its uploads"
    else:
        try:
            worker.proc.wait(grace)
        except subprocess.TimeoutExpired:
            _kill_group(worker)
    # The fault is over once the worker is gone: the fresh one uploads at full speed.
    proxy.set_rate(None)
    fleet.add()
    for artifact in ids:
        status = wait_until(lambda a=artifact: settled(records, a), timeout=180, interval=0.05)
        assert status.state is State.DONE, status.fields
    recovered = time.monotonic() - stopped
    duplicates = sum(check_landed_once(store, key, data) - 1 for key, data in expected.items())
    assert duplicates == 0
    assert staged_files(staging_root, run) == []
    logger.close()
    print(
        f"\n[SIGTERM, {'no deadline' if grace is None else f'SIGKILL after {grace} s'}] "
        f"{len(in_flight_now)} in flight of 4 x {SIGTERM_FILE_BYTES // MiB} MiB: lost 0, "
        f"duplicates {duplicates}, "
        f"all verified {recovered:.1f} s after SIGTERM"
    )


# ----- 3. Redis restarted mid-run --------------------------------------------

REDIS_DOWN_SECONDS = 4.0
"""How long the broker stays away: a restart, not an outage ranks give up on."""


def test_redis_restart_while_ranks_log_and_workers_upload(
    store: S3Server,
    broker: RedisServer,
    fleets: FleetFactory,
    staging_root: Path,
    tmp_path: Path,
) -> None:
    """Stop Redis (it writes its AOF on the way down) while two rank processes keep
    logging and two workers upload, keep it down a few seconds, start it on the
    same port with the same data. Ranks and workers reconnect on their own."""
    fleet = fleets(count=2, concurrency=2, HOIST_QUEUED_TIMEOUT=str(QUEUED_TIMEOUT))
    run = unique("redis-restart")
    actions: list[list[Any]] = []
    for step in range(40):
        actions.append(["file", f"logs/step{step}-rank{{rank}}.txt", 64 * 1024 + step, False])
        if step % 10 == 5:
            actions.append(["file", f"ckpt/step{step}-rank{{rank}}.pt", 20 * MiB, False])
        actions.append(["sleep", 0.1])  # still logging when Redis stops, 1-2 s in
    job = RankJob(
        run,
        {
            "object_store_cls": "S3ObjectStore",
            "object_store_kwargs": s3_logger_kwargs(store)["object_store_kwargs"],
            "object_name": "{run_name}/{artifact_name}",
        },
        actions,
        broker.url,
        staging_root,
        FLEET_KEY,
        timeout=240,
    )
    ranks = start_ranks(job, tmp_path, world_size=2)
    records = Records.from_url(broker.url)

    def busy() -> bool:
        states = [a.state for a in records.run_artifacts(run)]
        return states.count(State.DONE) >= 10 and State.UPLOADING in states

    wait_until(busy, timeout=120, interval=0.05)
    client = broker_client(broker)
    assert client.config_get("appendonly")["appendonly"] == "yes"
    before = {a.id: a.state for a in records.run_artifacts(run)}
    client.set(f"sentinel:{run}", "written just before the stop")
    broker.stop()
    time.sleep(REDIS_DOWN_SECONDS)  # the fault: Redis is away this long
    broker.start()
    back = time.monotonic()
    assert client.get(f"sentinel:{run}") == "written just before the stop"
    after = {a.id: a.state for a in records.run_artifacts(run)}
    assert set(before) <= set(after), "records written before the stop were lost"
    assert all(after[a] is before[a] or before[a] is not State.DONE for a in before)

    first_new = wait_until(
        lambda: any(
            a.state is State.DONE and float(a.fields.get("finished_at", 0)) > time.time() - 1
            for a in records.run_artifacts(run)
        ),
        timeout=120,
        interval=0.05,
    )
    first_done = time.monotonic() - back
    reports = collect_ranks(ranks, timeout=300)
    all_done = time.monotonic() - back
    for report in reports:
        assert report["failures"] == [], report.get("error")
    artifacts = records.run_artifacts(run)
    assert len(artifacts) == 2 * 44
    assert {a.state for a in artifacts} == {State.DONE}
    writes = versions_under(store, f"{run}/")
    duplicates = 0
    for report in reports:
        for name, logged in report["logged"].items():
            key = f"{run}/{name}"
            held = store.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
            assert hashlib.sha256(held).hexdigest() == logged["sha256"], key
            duplicates += writes[key] - 1
    assert staged_files(staging_root, run) == []
    for worker in fleet.workers:  # nobody restarted them
        assert worker.proc is not None and worker.proc.poll() is None
    print(
        f"\n[Redis restart, down {REDIS_DOWN_SECONDS:.0f} s] {len(artifacts)} artifacts from 2 "
        f"ranks: lost 0, duplicates {duplicates}; first upload done {first_done:.1f} s after "
        f"Redis was back, all done {all_done:.1f} s after (first_new={bool(first_new)})"
    )


def broker_client(broker: RedisServer) -> Any:
    import redis

    return redis.Redis.from_url(broker.url, decode_responses=True)


# ----- 4. long uploads, redelivery, pointers --------------------------------

VISIBILITY_TIMEOUT = 2
"""Seconds: far shorter than the throttled uploads, so the broker redelivers them."""


def multipart_sessions(proxy: ThrottlingProxy, key_path: str) -> dict[str, tuple[float, float]]:
    """Each multipart upload of ``key_path`` seen at the proxy: upload id -> (first, last) time."""
    spans: dict[str, tuple[float, float]] = {}
    for request in proxy.seen(lambda r: r.path == key_path and "uploadId" in r.query):
        upload_id = request.query["uploadId"][0]
        end = request.finished or time.monotonic()
        first, last = spans.get(upload_id, (request.started, end))
        spans[upload_id] = (min(first, request.started), max(last, end))
    return spans


def test_upload_outliving_visibility_timeout_is_not_uploaded_twice(
    store: S3Server,
    broker: RedisServer,
    proxy: ThrottlingProxy,
    fleets: FleetFactory,
    staging_root: Path,
    tmp_path: Path,
) -> None:
    """With a 2 s visibility timeout the broker hands each long upload's message
    to other workers again and again; each copy finds the live claim and stops.
    The proxy sees one multipart session per object, never two at once."""
    # Two 20 MiB uploads share it: about 5 s each, past a redelivery (the 2 s timeout,
    # then the unacked scan, every 1 s here); 8 s uploads showed the same 2 deliveries.
    proxy.set_rate(8 * MiB)
    fleet = fleets(count=2, concurrency=2, HOIST_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT))
    run = unique("visibility")
    logger = make_logger(run, store, broker, staging_root, proxy.endpoint_url)
    expected = {}
    ids = []
    for n in range(2):
        artifact, expected[f"{run}/ckpt{n}.pt"] = log_random(
            logger, tmp_path, run, f"ckpt{n}.pt", 20 * MiB
        )
        ids.append(artifact)
    logger.wait(timeout=180)
    logger.close()
    deliveries = {artifact: deliveries_in_logs(fleet, artifact) for artifact in ids}
    assert max(deliveries.values()) >= 2, f"the broker never redelivered: {deliveries}"
    duplicates = 0
    for key, data in expected.items():
        sessions = sorted(multipart_sessions(proxy, f"/{BUCKET}/{key}").values())
        assert len(sessions) == 1, f"{key}: {len(sessions)} multipart sessions {sessions}"
        writes = check_landed_once(store, key, data)
        duplicates += writes - 1
    assert duplicates == 0
    print(
        f"\n[visibility timeout {VISIBILITY_TIMEOUT} s < upload] deliveries per artifact "
        f"{sorted(deliveries.values())}, multipart sessions 1 each, concurrent 0, "
        f"duplicates {duplicates}, lost 0"
    )
