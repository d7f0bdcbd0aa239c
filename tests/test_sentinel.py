"""Redis Sentinel: the fleet follows a failover and loses nothing acknowledged (issue 18).

Real processes throughout: a master, its replica and three sentinels
(``redis-server --sentinel``) on loopback (:mod:`tests.services.sentinel`),
``moto_server``, two ``hoist worker`` processes and two rank processes, all
given the sentinel URL (the master's password in it, the sentinels' own in
``HOIST_SENTINEL_PASSWORD``). The master is SIGKILLed while the ranks log 8 MiB
checkpoints and move a pointer to each: no shutdown, no AOF flush, whatever
the replica had not received is gone. Objects are read back with raw boto3.

The workers run with default lease, backoff and queued timeout: recovery must
not lean on short test settings. The default suite runs one failover; ``-m
long`` runs five more.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis

import hoist.tasks.resender as resender_module
from hoist.errors import ConfigurationError
from hoist.protocol.messages import UPLOAD_QUEUE, UPLOAD_TASK, UploadRequest
from hoist.protocol.redis_url import kombu_url
from hoist.protocol.sending import celery_config, send, sender
from hoist.protocol.urls import mask_url
from hoist.settings import SentinelSettings, WorkerSettings
from hoist.state.keys import name_lease_key, record_key, store_lease_key
from hoist.state.leases import Leases, name_lock, store_limit
from hoist.state.records import Records
from hoist.state.replicas import ReplicaWait
from hoist.state.states import State
from hoist.stores.spec import StoreSpec
from hoist.tasks.resender import Resender
from tests.conftest import _running, serve_fleet
from tests.services.cluster import environment, hoist
from tests.services.flower import flower_get, flower_server
from tests.services.keys import FLEET_KEY
from tests.services.ranks import RankJob, collect_ranks, start_ranks
from tests.services.redis import RedisServer
from tests.services.s3 import S3Server
from tests.services.sentinel import PASSWORD, SENTINEL_PASSWORD, IsolatedHost, SentinelGroup
from tests.services.tls import make_tls_files
from tests.services.workers import WorkerFleet, wait_until

MiB = 1024 * 1024
BUCKET = "hoist-sentinel"
CHECKPOINTS = 8
"""Checkpoints each rank logs, a pointer moved to each."""
RECOVERY_SECONDS = 60.0
"""Everything is done within this long after the replica's promotion."""
LOGIN = ("ops", "flower-sentinel-pw")
DEFAULTS = {"HOIST_LEASE_SECONDS": "30", "HOIST_BACKOFF_BASE": "1", "HOIST_BACKOFF_MAX": "300"}
"""hoist's defaults, over the short ones tests/services/workers.py gives a fleet."""


@pytest.fixture
def group(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SentinelGroup]:
    """A fresh master, replica and three sentinels for each test (a test kills the master);
    ``cut`` (indirect parameter) runs the master in a network namespace of its own."""
    host = None
    if getattr(request, "param", "kill") == "cut":
        if reason := IsolatedHost.refused():
            pytest.skip(reason)
        host = IsolatedHost()
    group = SentinelGroup(tmp_path_factory.mktemp("sentinel"), master_host=host)
    shown = [SimpleNamespace(process=server) for server in group.servers]
    group.start()
    _running.extend(shown)  # their logs go with a failing test's report
    try:
        yield group
    finally:
        for server in shown:
            _running.remove(server)
        group.stop()


@pytest.fixture
def fleet(
    request: pytest.FixtureRequest, group: SentinelGroup, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFleet]:
    """Two workers with hoist's defaults; ``{"HOIST_STORE_LIMIT": ...}`` (indirect) adds to them."""
    extra = getattr(request, "param", {})
    env = {"HOIST_FLEET_KEY": FLEET_KEY, **group.env, **DEFAULTS, **extra}
    yield from serve_fleet(tmp_path_factory, group.url, "sentinel", count=2, env=env)


@pytest.fixture(scope="module")
def store(moto_server: S3Server) -> S3Server:
    moto_server.client().create_bucket(Bucket=BUCKET)
    return moto_server


def sentinel_records(group: SentinelGroup) -> Records:
    """The test's own look at the records, through the sentinels as the fleet's."""
    return Records.from_url(group.url, sentinel=SentinelSettings(password=SENTINEL_PASSWORD))


def staged_files(root: Path, run: str) -> list[Path]:
    return [p for p in (root / run).rglob("*") if p.is_file()] if (root / run).exists() else []


def flower_follows(port: int) -> None:
    """Flower, started before the failover, asks both workers and reads the queues now."""

    def both_workers() -> dict[str, Any] | None:
        status, body = flower_get(port, "/api/workers?refresh=1", LOGIN)
        assert status == 200, body
        workers = json.loads(body)
        complete = len(workers) == 2 and all("conf" in w and "stats" in w for w in workers.values())
        return workers if complete else None

    workers = wait_until(both_workers, timeout=30, interval=0.3)
    status, broker_page = flower_get(port, "/broker", LOGIN)
    assert status == 200 and UPLOAD_QUEUE in broker_page, broker_page[-2000:]
    for page in (json.dumps(workers), broker_page):
        for secret in (PASSWORD, SENTINEL_PASSWORD):
            at = page.find(secret)
            assert at < 0, page[max(0, at - 300) : at + 50]


def failover_run(
    group: SentinelGroup,
    fleet: WorkerFleet,
    store: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    before_kill: Callable[[str], None] | None = None,
) -> str:
    """Two ranks log checkpoints with pointers; the master is killed mid-run; check all."""
    (tmp_path / "flower").mkdir()
    with flower_server(tmp_path / "flower", group.url, LOGIN, group.env) as port:
        run = logged_through_failover(group, fleet, store, tmp_path, monkeypatch, before_kill)
        flower_follows(port)
    logs = fleet.logs() + (tmp_path / "flower" / "flower.log").read_text(errors="replace")
    assert PASSWORD not in logs and SENTINEL_PASSWORD not in logs
    return run


def logged_through_failover(
    group: SentinelGroup,
    fleet: WorkerFleet,
    store: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    before_kill: Callable[[str], None] | None = None,
) -> str:
    """``before_kill(run)`` runs mid-run, just before the master is killed or cut off."""
    monkeypatch.setenv("HOIST_SENTINEL_PASSWORD", SENTINEL_PASSWORD)  # the ranks inherit it
    run = f"failover-{time.time_ns() // 1_000_000}"
    actions: list[list[Any]] = []
    for step in range(CHECKPOINTS):
        actions.append(["file", f"ckpt/step{step}-rank{{rank}}.pt", 8 * MiB + step, False])
        actions.append(["symlink", f"ckpt/step{step}-rank{{rank}}.pt", "latest-rank{rank}.pt"])
        actions.append(["sleep", 0.4])
    store_kwargs = {
        "bucket": BUCKET,
        "endpoint_url": store.endpoint_url,
        "aws_access_key_id": store.access_key,
        "aws_secret_access_key": store.secret_key,
    }
    logger = {
        "object_store_cls": "S3ObjectStore",
        "object_store_kwargs": store_kwargs,
        "object_name": "{run_name}/{artifact_name}",
    }
    job = RankJob(run, logger, actions, group.url, fleet.staging_root, FLEET_KEY, timeout=120)
    ranks = start_ranks(job, tmp_path, world_size=2)
    records = sentinel_records(group)

    def mid_run() -> bool:
        states = [a.state for a in records.run_artifacts(run)]
        return states.count(State.DONE) >= 4 and State.UPLOADING in states

    wait_until(mid_run, timeout=60, interval=0.05)
    if before_kill is not None:
        before_kill(run)
    if group.master_host:  # cut off: alive, unreachable, no connection reset
        group.cut_master()
    else:
        group.kill_master()
    killed = time.monotonic()
    promoted = group.wait_promoted()
    promoted_at = time.time() - (time.monotonic() - promoted)
    reports = collect_ranks(ranks, timeout=150)
    for report in reports:
        assert report["failures"] == [], report.get("error")

    artifacts = records.run_artifacts(run)
    assert len(artifacts) == 2 * 2 * CHECKPOINTS, "a record acknowledged to a rank was lost"
    # A pointer overtaken by a newer one before it ran is superseded, never written behind it.
    assert {a.state for a in artifacts} <= {State.DONE, State.SUPERSEDED}
    finished = max(float(a.fields["finished_at"]) for a in artifacts)
    client = store.client()
    for report in reports:
        rank = report["rank"]
        for name, logged in report["logged"].items():
            held = client.get_object(Bucket=BUCKET, Key=f"{run}/{name}")["Body"].read()
            assert hashlib.sha256(held).hexdigest() == logged["sha256"], name
        pointer = client.get_object(Bucket=BUCKET, Key=f"{run}/latest-rank{rank}.pt.symlink")
        newest = f"{run}/ckpt/step{CHECKPOINTS - 1}-rank{rank}.pt"
        assert pointer["Body"].read().decode() == newest
    assert staged_files(fleet.staging_root, run) == []
    assert finished - promoted_at < RECOVERY_SECONDS, (
        f"the last artifact finished {finished - promoted_at:.1f} s after the promotion"
    )
    for worker in fleet.workers:  # they followed the failover; nobody restarted them
        assert worker.proc is not None and worker.proc.poll() is None
    print(
        f"\n[Sentinel failover] master {'cut off' if group.master_host else 'killed'}, replica "
        f"promoted {promoted - killed:.1f} s "
        f"later; {len(artifacts)} artifacts, the last finished {finished - promoted_at:.1f} s "
        "after the promotion"
    )
    return run


def test_failover_while_ranks_log_checkpoints_loses_nothing(
    group: SentinelGroup,
    fleet: WorkerFleet,
    store: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The master is SIGKILLed mid-run; every checkpoint lands with its bytes, each
    pointer names the newest, staging is empty; Flower, started before, and ``hoist
    status`` and ``hoist wait`` afterwards reach the new master through the sentinels."""
    run = failover_run(group, fleet, store, tmp_path, monkeypatch)
    env = environment(HOIST_BROKER_URL=group.url, **group.env)
    shown = hoist(tmp_path / "home", "status", "--run", run, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    total = json.loads(shown.stdout)["total"]
    assert total["done"] + total["superseded"] == 2 * 2 * CHECKPOINTS
    waited = hoist(tmp_path / "home", "wait", "--run", run, "--timeout", "30", env=env)
    assert waited.returncode == 0, waited.stdout + waited.stderr


@pytest.mark.long  # about 60 s: clients wait out socket timeouts and TCP keepalive
@pytest.mark.parametrize("group", ["cut"], indirect=True)
def test_failover_when_the_master_is_cut_off_by_the_network(
    group: SentinelGroup,
    fleet: WorkerFleet,
    store: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The master runs on in a network namespace whose link goes down: no process dies and
    no connection is reset, so every client must notice by itself (timeouts, keepalive)."""
    failover_run(group, fleet, store, tmp_path, monkeypatch)


@pytest.mark.long
@pytest.mark.parametrize("repetition", range(5))
def test_failover_again_and_again(
    group: SentinelGroup,
    fleet: WorkerFleet,
    store: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    repetition: int,
) -> None:
    failover_run(group, fleet, store, tmp_path, monkeypatch)


STUCK_LEASE_SECONDS = 30.0
"""The lease time of the holder that dies with the old master (hoist's default)."""


@pytest.mark.long  # about 50 s: the stuck holder's leases run out 30 s after they were taken
@pytest.mark.parametrize("fleet", [{"HOIST_STORE_LIMIT": "1"}], indirect=True)
def test_failover_while_leases_and_a_pointer_lock_are_held(
    group: SentinelGroup,
    fleet: WorkerFleet,
    store: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store admits one upload at a time. At the kill, a worker is uploading (so holds
    that store lease and the object's name lock), and a holder that never comes back (its
    worker died with the master) holds, replicated to the new master, a second token on
    the store's limit and the lock of rank 0's ``latest`` pointer. The fleet's uploads and
    that pointer wait out the stuck leases (one lease time, 30 s), never longer: everything
    lands, the pointer at the newest, within 60 s of the promotion."""
    master = redis.Redis.from_url(group.master.url, decode_responses=True)
    taken: dict[str, float] = {}

    def stuck_holder(run: str) -> None:
        def uploading_now() -> str | None:
            """The store id, once a worker is seen holding the store's slot and a name lock."""
            for artifact in sentinel_records(group).run_artifacts(run):
                if artifact.state is not State.UPLOADING:
                    continue
                store_id = StoreSpec.from_json(artifact.message["store"]).store_id
                lock = name_lease_key(store_id, str(artifact.message["object_name"]))
                pipe = master.pipeline()
                pipe.zcard(store_lease_key(store_id)).zcard(lock)
                if pipe.execute() == [1, 1]:  # read together: an upload holds both now
                    return store_id
            return None

        store_id = wait_until(uploading_now, timeout=20, interval=0.02)
        leases = Leases(master, f"stuck-{run}", lease_ms=int(STUCK_LEASE_SECONDS * 1000))
        # Size 2: past the worker's token, so both are on the limit of size 1 the fleet uses.
        pointer = f"{run}/latest-rank0.pt.symlink"
        assert leases.acquire_all([store_limit(store_id, 2), name_lock(store_id, pointer)])
        taken["at"] = time.time()
        assert master.wait(1, 5000) == 1  # the replica holds them: they survive the failover

    run = failover_run(group, fleet, store, tmp_path, monkeypatch, stuck_holder)
    # failover_run checked the stuck leases wedged nothing past 60 s; here, that they held
    # at all on the new master: rank 0's newest pointer was written only once its lock
    # ran out (a lost lock would let it through at once, and test nothing).
    newest = f"{run}/ckpt/step{CHECKPOINTS - 1}-rank0.pt"
    written = [
        float(a.fields["finished_at"])
        for a in sentinel_records(group).run_artifacts(run)
        if a.state is State.DONE and a.message.get("target_object_name") == newest
    ]
    assert len(written) == 1
    assert written[0] >= taken["at"] + STUCK_LEASE_SECONDS - 1.0, written[0] - taken["at"]


def test_status_through_a_sentinel_url(group: SentinelGroup, tmp_path: Path) -> None:
    """``hoist status`` finds the master through the sentinels, with both passwords;
    shows neither; and a wrong URL is one sentence on what to fix."""
    run = f"status-{time.time_ns() // 1_000_000}"
    message = UploadRequest(f"hoist-{run}-r0-1", run, 0, 1, "a.txt", f"{run}/a.txt", "s", {})
    sentinel_records(group).create(message, UPLOAD_TASK, "s")
    env = environment(HOIST_BROKER_URL=group.url, **group.env)
    shown = hoist(tmp_path / "home", "status", "--run", run, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["total"]["queued"] == 1

    wrong = environment(HOIST_BROKER_URL=group.url)  # no HOIST_SENTINEL_PASSWORD
    refused = hoist(tmp_path / "home", "status", env=wrong)
    assert refused.returncode != 0
    unnamed = environment(HOIST_BROKER_URL=group.url, HOIST_SENTINEL_MASTER="nope", **group.env)
    unknown = hoist(tmp_path / "home", "status", env=unnamed)
    assert unknown.returncode != 0
    assert "monitor no master named 'nope'" in " ".join(unknown.stderr.split())
    bad = environment(HOIST_BROKER_URL=f"sentinel://:{PASSWORD}@127.0.0.1:26379/zero")
    unusable = hoist(tmp_path / "home", "status", env=bad)
    assert unusable.returncode != 0
    # One sentence (rich folds it at the terminal's width), no traceback.
    assert "give one number" in " ".join(unusable.stderr.split())
    assert unusable.stderr.count("error:") == 1 and "Traceback" not in unusable.stderr
    assert "HOIST_SENTINEL_PASSWORD" in " ".join(refused.stderr.split())
    for result in (shown, refused, unknown, unusable):
        assert PASSWORD not in result.stdout + result.stderr
        assert SENTINEL_PASSWORD not in result.stdout + result.stderr


def test_a_record_write_waits_for_the_replica(group: SentinelGroup) -> None:
    """With a replica, create.lua and WAIT 1 go down one connection; the replica holds it."""
    master = redis.Redis.from_url(group.master.url, decode_responses=True)
    replica = redis.Redis.from_url(group.replica.url, decode_responses=True)
    records = sentinel_records(group)
    # The first write also loads create.lua (EVALSHA found no script: tried again).
    records.create(
        UploadRequest("hoist-wait-r0-0", "wait", 0, 0, "a", "wait/a", "s", {}), UPLOAD_TASK, "s"
    )
    before = int(master.info("commandstats")["cmdstat_wait"]["calls"])
    for n in range(1, 4):
        message = UploadRequest(f"hoist-wait-r0-{n}", "wait", 0, n, "a", "wait/a", "s", {})
        records.create(message, UPLOAD_TASK, "s")
        # WAIT returned: the replica has the record before the next command is sent.
        assert replica.hget(record_key(message.id), "state") == "queued"
    after = int(master.info("commandstats")["cmdstat_wait"]["calls"])
    assert after - before == 3


def test_sentinel_urls_as_kombu_celery_and_logs_see_them() -> None:
    """One URL form, three readers: kombu's (DB on every part, password on the first
    only, no master_name), the transport options, and what is shown."""
    url = "sentinel://:pw@h1:26379;sentinel://h2:26380;sentinel://h3/2?master_name=m"
    assert kombu_url(url) == "sentinel://:pw@h1:26379/2;sentinel://h2:26380/2;sentinel://h3:26379/2"
    config = celery_config(url, sentinel=SentinelSettings("ignored", "spw"))
    assert config["broker_url"] == kombu_url(url) == config["result_backend"]
    options = config["broker_transport_options"]
    assert options["master_name"] == "m" and dict(options["sentinel_kwargs"])["password"] == "spw"
    assert "spw" not in json.dumps(options) and "spw" not in repr(options)
    assert mask_url(url).count("****") == 1 and "pw" not in mask_url(url).replace("****", "")
    environ = {"HOIST_SENTINEL_MASTER": "mymaster", "HOIST_SENTINEL_PASSWORD": "x"}
    assert WorkerSettings.from_environment(environ).sentinel == SentinelSettings("mymaster", "x")
    assert "x" not in repr(SentinelSettings("mymaster", "x"))
    for bad in ("sentinel://h1:26379/1;sentinel://h2:26379/2", "sentinel://:26379"):
        with pytest.raises(ConfigurationError) as refused:
            celery_config(bad)
        assert "\n" not in str(refused.value)
    with pytest.raises(ConfigurationError, match="is not redis://, rediss:// or sentinel://"):
        Records.from_url("mongo://h/0")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own: the resender looks at every queued record, and the
    session's Redis holds other tests' (a whole-suite run resent four of them here)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_failover_makes_queued_records_due_at_once(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resender, seeing its master's address change, resends a queued record now
    instead of after queued_timeout; before the change it only looks again later."""
    records = Records.from_url(own_redis.url)
    run = f"resend-{time.time_ns()}"
    message = UploadRequest(f"hoist-{run}-r0-1", run, 0, 1, "a", f"{run}/a", "s", {})
    records.create(message, UPLOAD_TASK, "s")
    sent: list[str] = []
    clock = [time.time() + 10]  # past the first look, far from queued_timeout
    resender = Resender(records, lambda task, m: sent.append(m.id), 300.0, clock=lambda: clock[0])
    addresses = iter([("10.0.0.1", 6379), ("10.0.0.1", 6379), ("10.0.0.2", 6379)])
    # Where redis-py last found the master, as a Sentinel client would report it.
    monkeypatch.setattr(resender_module, "master_address", lambda client: next(addresses))
    resender.send_due()
    assert sent == []  # looked at, not resent: its timeout is far away
    clock[0] += 1
    resender.send_due()  # the same master
    assert sent == []
    clock[0] += 1
    resender.send_due()  # a new master: due at once, and resent
    assert sent == [message.id] and resender.failover_at == clock[0]


def test_a_failover_of_a_broker_of_its_own_resends_at_once(
    group: SentinelGroup, own_redis: RedisServer
) -> None:
    """Records on a plain Redis, the broker on a Sentinel group: the worker's resender
    pings the broker's group, and its failover alone makes a queued record (whose message
    the old master may have taken with it) be sent again at once, not after queued_timeout."""
    environ = {
        "HOIST_BROKER_URL": group.url,
        "HOIST_STATE_URL": own_redis.url,
        "HOIST_FLEET_KEY": FLEET_KEY,
        **group.env,
    }
    settings = WorkerSettings.from_environment(environ)
    records = Records.from_url(own_redis.url)
    ctx = SimpleNamespace(settings=settings, records=records, store=None)  # finishes no prunes
    resender = Resender.for_worker(ctx, sender(group.url, settings.sentinel))  # type: ignore[arg-type]
    assert resender.broker is not None  # the worker's own resender watches the broker
    sent: list[str] = []
    resender.send = lambda task, m: sent.append(m.id)
    clock = [time.time() + 10]  # past the first look, far from queued_timeout (300 s)
    resender.clock = lambda: clock[0]
    run = f"broker-{time.time_ns()}"
    message = UploadRequest(f"hoist-{run}-r0-1", run, 0, 1, "a", f"{run}/a", "s", {})
    records.create(message, UPLOAD_TASK, "s")
    resender.send_due()
    assert sent == [] and resender.broker_master is not None
    group.kill_master()
    group.wait_promoted()

    def resent() -> bool:
        clock[0] += 0.2
        resender.send_due()
        return bool(sent)

    wait_until(resent, timeout=20, interval=0.2)
    assert sent == [message.id]
    assert resender.broker_master == ("127.0.0.1", group.replica.port)
    assert resender.master is None  # the state Redis is no Sentinel group: it never moved


def test_tls_everywhere_through_the_sentinels(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Master, replica and sentinels serving TLS only (tls-replication yes): records and
    the broker reach the master through ssl_* parameters, before and after a failover."""
    workdir = tmp_path_factory.mktemp("sentinel-tls")
    group = SentinelGroup(workdir / "group", tls=make_tls_files(workdir / "tls"))
    group.start()
    try:
        assert "ssl_ca_certs=" in group.url
        settings = SentinelSettings(password=SENTINEL_PASSWORD)
        records = Records.from_url(group.url, sentinel=settings)
        app = sender(group.url, settings)
        run = f"tls-{time.time_ns()}"
        replica = redis.Redis.from_url(group.replica.url)
        messages = [
            UploadRequest(f"hoist-{run}-r0-{n}", run, 0, n, "a", f"{run}/a", "s", {})
            for n in (1, 2)
        ]
        records.create(messages[0], UPLOAD_TASK, "s")
        send(app, UPLOAD_TASK, messages[0])
        # Replication is asynchronous: the kill must not race the message.
        wait_until(lambda: replica.llen(UPLOAD_QUEUE) == 1, timeout=10)
        group.kill_master()
        group.wait_promoted()
        records.create(messages[1], UPLOAD_TASK, "s")
        send(app, UPLOAD_TASK, messages[1])
        assert records.client.llen(UPLOAD_QUEUE) == 2
        assert {a.id for a in records.run_artifacts(run)} == {f"hoist-{run}-r0-{n}" for n in (1, 2)}
    finally:
        group.stop()


class _FakeMaster:
    """INFO, and pipelines of EVALSHA and WAIT, as a master with ``replicas`` answers them."""

    def __init__(self, replicas: int, acked: int) -> None:
        self.replicas, self.acked, self.infos, self.waits = replicas, acked, 0, 0

    def info(self, section: str) -> dict[str, int]:
        self.infos += 1
        return {"connected_slaves": self.replicas}

    def pipeline(self, transaction: bool) -> Any:
        master = self

        class Pipeline:
            def evalsha(self, *args: Any) -> None:
                pass

            def wait(self, replicas: int, timeout_ms: int) -> None:
                master.waits += 1

            def execute(self, raise_on_error: bool) -> list[Any]:
                return [[1, 0], master.acked]

        return Pipeline()


def test_a_replica_that_does_not_acknowledge_stops_the_waiting_for_a_while() -> None:
    clock = [100.0]
    script = SimpleNamespace(sha="x")
    master = _FakeMaster(replicas=1, acked=0)
    wait = ReplicaWait(master, refresh_seconds=5, clock=lambda: clock[0])  # type: ignore[arg-type]
    assert wait.run(script, ["k"], []) == [1, 0] and master.waits == 1  # type: ignore[arg-type]
    assert wait.replicas() == 0  # timed out: no waiting until the next look
    clock[0] += 5
    master.acked = 1
    wait.run(script, ["k"], [])  # type: ignore[arg-type]
    assert master.waits == 2 and master.infos == 2
    assert wait.replicas() == 1
