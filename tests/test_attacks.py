"""Attacks by whoever can write to the broker, against real ``hoist worker`` processes.

The attacker holds the Redis password (or is a buggy client on a shared
Redis), can read the records, and copies a real rank's envelope. Some cases
also play a malicious rank that holds the fleet key: signing then succeeds,
and the fleet's allow-list and record checks are what stop it. Each test
asserts that the attack fails *and* that nothing legitimate broke: the
rank's own upload behind it lands, the worker keeps running, other records
are unchanged. The broker-level attacks (compression, nesting, remote
control) are in tests/test_broker_boundary.py, the staging-root race in
tests/test_staged_race.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hoist import LogLevel, ObjectStoreLogger
from hoist.errors import ConfigurationError, ForgedMessageError, UnsignedMessageError
from hoist.keys import FleetKeys, new_fleet_key
from hoist.protocol.messages import POINTER_TASK, UPLOAD_TASK
from hoist.protocol.sending import sender
from hoist.protocol.signing import sign, verify
from hoist.state.records import Records
from hoist.state.states import State
from hoist.stores.allowed import AllowedStores
from hoist.stores.s3 import S3ObjectStore
from hoist.stores.spec import StoreSpec
from tests.conftest import serve_fleet, single_rank_local_store
from tests.services.keys import FLEET_KEY, KEYS
from tests.services.redis import RedisServer
from tests.services.s3 import S3Server
from tests.services.workers import WorkerFleet, clean_environment, wait_until
from tests.test_pipeline import settled

VICTIM_PREFIX = "victim/"
SINGLE_RANK = {"rank": 0, "local_rank": 0, "world_size": 1, "local_world_size": 1, "node_rank": 0}
FOREIGN = FleetKeys.parse(new_fleet_key())


@pytest.fixture(scope="module")
def local_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one Libcloud ``local`` store the fleet allows (base directory, container)."""
    base = tmp_path_factory.mktemp("allowed-local")
    (base / "artifacts").mkdir()
    return base


@pytest.fixture(scope="module")
def guarded(
    redis_server: RedisServer,
    moto_server: S3Server,
    local_store: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerFleet]:
    """A worker that allows the victim's S3 prefix and one local store, nothing else, and
    holds S3 credentials of its own (what a forged message would like to borrow)."""
    allowed = [
        f"s3://{moto_server.bucket}/{VICTIM_PREFIX}?endpoint_url={moto_server.endpoint_url}",
        f"file://{local_store}/artifacts",
    ]
    env = {
        "HOIST_ALLOW_ANY_STORE": "0",
        "HOIST_ALLOWED_STORES": " ".join(allowed),
        "AWS_ACCESS_KEY_ID": moto_server.access_key,
        "AWS_SECRET_ACCESS_KEY": moto_server.secret_key,
    }
    yield from serve_fleet(tmp_path_factory, redis_server.url, "guarded", count=1, env=env)


def victim_logger(fleet: WorkerFleet, server: S3Server, run_name: str) -> ObjectStoreLogger:
    """A real rank logging to the victim's bucket, its credentials sealed in its messages."""
    return ObjectStoreLogger(
        object_store_cls=S3ObjectStore,
        object_store_kwargs={
            "bucket": server.bucket,
            "prefix": VICTIM_PREFIX,
            "endpoint_url": server.endpoint_url,
            "region_name": "us-east-1",
            "aws_access_key_id": server.access_key,
            "aws_secret_access_key": server.secret_key,
        },
        object_name="{run_name}/{artifact_name}",
        run_name=run_name,
        broker_url=fleet.broker_url,
        upload_staging_folder=str(fleet.staging_root),
        **SINGLE_RANK,
    )


def send_raw(fleet: WorkerFleet, task: str, body: dict[str, Any], task_id: str) -> None:
    """Put ``body`` on the broker as the attacker does: Celery's own envelope, any body."""
    queue = "hoist.symlinks" if task == POINTER_TASK else "hoist.uploads"
    sender(fleet.broker_url).send_task(task, kwargs={"message": body}, task_id=task_id, queue=queue)


def logged(fleet: WorkerFleet, *fragments: str, timeout: float = 60) -> None:
    def said() -> bool:
        return any(all(f in line for f in fragments) for line in fleet.logs().splitlines())

    wait_until(said, timeout=timeout)


def objects(server: S3Server, prefix: str = "", bucket: str = "") -> dict[str, bytes]:
    client, bucket = server.client(), bucket or server.bucket
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def land_one(fleet: WorkerFleet, server: S3Server, tmp_path: Path, run_name: str) -> str:
    """The legitimate upload behind an attack: logged, landed, verified; returns its id."""
    logger = victim_logger(fleet, server, run_name)
    source = tmp_path / "good.pt"
    source.write_bytes(b"the rank's own bytes " + run_name.encode())
    artifact = logger.file_artifact(LogLevel.EPOCH, "good.pt", source)
    logger.close()  # waits, raising if it failed
    key = f"{VICTIM_PREFIX}{run_name}/good.pt"
    assert objects(server, key)[key] == source.read_bytes()
    return artifact


def alive(fleet: WorkerFleet) -> bool:
    return all(w.proc is not None and w.proc.poll() is None for w in fleet.workers)


def record_message(redis_server: RedisServer, artifact: str) -> dict[str, Any]:
    status = Records.from_url(redis_server.url).get(artifact)
    assert status is not None
    return status.message


# --------------------------------------------------------------------------- 1. any file


@pytest.mark.parametrize(
    "forger", ["unsigned", "foreign key", "the fleet key, base not allowed", "container .."]
)
def test_a_forged_pointer_cannot_write_a_file_outside_the_allowed_stores(
    forger: str,
    guarded: WorkerFleet,
    moto_server: S3Server,
    redis_server: RedisServer,
    local_store: Path,
    tmp_path: Path,
) -> None:
    run = f"ptr-{time.time_ns()}"
    finished = land_one(guarded, moto_server, tmp_path, run)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    if forger == "container ..":  # the allowed base, a container that climbs out of it
        kwargs = {
            "provider": "local",
            "container": "..",
            "provider_kwargs": {"key": str(local_store)},
        }
    else:
        kwargs = {"provider": "local", "container": ".ssh", "provider_kwargs": {"key": str(home)}}
    body = {
        "id": f"hoist-{run}-r0-999",
        "run_name": run,
        "rank": 0,
        "seq": 999,
        "artifact_name": "authorized_keys",
        "object_name": "authorized_keys",
        "order": record_message(redis_server, finished)["order"],
        "store": {"kind": "libcloud", "kwargs": kwargs, "sealed": None},
        "target_id": finished,
        "target_object_name": "ssh-ed25519 AAAA attacker",
    }
    if forger == "foreign key":
        body = sign(body, FOREIGN)
    elif forger != "unsigned":
        body = sign(body, KEYS)  # a malicious rank: the signature holds
    send_raw(guarded, POINTER_TASK, body, body["id"])
    expected = {
        "unsigned": "the message is unsigned",
        "foreign key": "signature does not match",
        "the fleet key, base not allowed": "store not allowed on this fleet",
        "container ..": "is not a plain directory name",
    }[forger]
    logged(guarded, body["id"], expected)
    assert not list(home.rglob("authorized_keys*"))
    assert not list(local_store.parent.glob("authorized_keys*"))
    assert Records.from_url(redis_server.url).get(body["id"]) is None, "a record was made"
    assert alive(guarded)
    land_one(guarded, moto_server, tmp_path, run + "-after")


# --------------------------------------------------------------------------- 3. poisoned resume


@pytest.mark.parametrize("forger", ["copied and altered", "signed, order in the future"])
def test_a_copied_envelope_cannot_freeze_a_pointer_or_move_it(
    forger: str,
    guarded: WorkerFleet,
    moto_server: S3Server,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    run = f"resume-{time.time_ns()}"
    logger = victim_logger(guarded, moto_server, run)
    first = tmp_path / "ep1.pt"
    first.write_bytes(b"epoch 1")
    target = logger.file_artifact(LogLevel.EPOCH, "ep1.pt", first)
    logger.symlink_artifact("ep1.pt", "latest.pt")
    logger.wait(timeout=60)
    # The attacker copies the victim's own record (sealed credentials included).
    body = {
        **record_message(redis_server, target),
        "id": f"hoist-{run}-r0-777",
        "seq": 777,
        "object_name": f"{run}/latest.pt.symlink",
        "order": f"{99999999999999999999:020d}:000000:000000000777",
        "target_id": target,
        "target_object_name": f"{run}/evil.pt",
    }
    body = sign(body, KEYS) if forger.startswith("signed") else body
    send_raw(guarded, POINTER_TASK, body, body["id"])
    logged(guarded, body["id"], "in the future" if forger.startswith("signed") else "signature")
    second = tmp_path / "ep2.pt"
    second.write_bytes(b"epoch 2")
    logger.file_artifact(LogLevel.EPOCH, "ep2.pt", second)
    logger.symlink_artifact("ep2.pt", "latest.pt")
    logger.close()
    pointer = f"{VICTIM_PREFIX}{run}/latest.pt.symlink"
    assert objects(moto_server, pointer)[pointer] == f"{run}/ep2.pt".encode()
    assert f"{VICTIM_PREFIX}{run}/evil.pt" not in objects(moto_server, VICTIM_PREFIX + run)
    assert alive(guarded)


# --------------------------------------------------------------------------- 4, 5. credentials


@pytest.mark.parametrize(
    "forger",
    [
        "sealed blob pasted, the victim's signature",
        "sealed blob pasted, signed",
        "no credentials, the worker's own",
    ],
)
def test_no_message_sends_credentials_or_staged_bytes_to_another_endpoint(
    forger: str,
    guarded: WorkerFleet,
    moto_server: S3Server,
    rclone_server: S3Server,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """Attacks 4 and 5: the victim's sealed credentials or the worker's own, and another
    run's staged file, aimed at the attacker's endpoint (rclone here)."""
    run = f"exfil-{time.time_ns()}"
    loot = f"attacker-{time.time_ns()}"  # the attacker's own, empty bucket
    rclone_server.client().create_bucket(Bucket=loot)
    artifact = land_one(guarded, moto_server, tmp_path, run)
    victim = record_message(redis_server, artifact)
    # Another run's staged file, still waiting for its upload.
    staged = guarded.staging_root / "other-run" / "rank0" / f"{time.time_ns()}-secret.pt"
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(b"another run's weights")
    sealed = victim["store"]["sealed"] if "sealed blob" in forger else None
    body = {
        **victim,
        "id": f"hoist-{run}-r0-555",
        "seq": 555,
        "object_name": "loot.pt",
        "staged_path": str(staged),
        "size": staged.stat().st_size,
        "store": {
            "kind": "s3",
            "kwargs": {"bucket": loot, "endpoint_url": rclone_server.endpoint_url},
            "sealed": sealed,
        },
    }
    body = body if forger.endswith("signature") else sign(body, KEYS)
    send_raw(guarded, UPLOAD_TASK, body, body["id"])
    # The victim's signature copied along no longer matches the altered body.
    expected = "signature does not" if forger.endswith("signature") else "store not allowed"
    logged(guarded, body["id"], expected)
    assert objects(rclone_server, bucket=loot) == {}
    assert staged.read_bytes() == b"another run's weights", "the staged copy was touched"
    assert alive(guarded)
    land_one(guarded, moto_server, tmp_path, run + "-after")


def test_a_seal_pasted_into_an_allowed_store_of_another_identity_does_not_open(
    guarded: WorkerFleet, moto_server: S3Server, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A malicious rank inside the allow-list still cannot borrow another store's seal."""
    run = f"seal-{time.time_ns()}"
    victim = record_message(redis_server, land_one(guarded, moto_server, tmp_path, run))
    staged = guarded.staging_root / run / "rank0" / "00000099-x.pt"
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(b"x")
    spec = victim["store"]
    body = sign(
        {
            **victim,
            "id": f"hoist-{run}-r0-99",
            "seq": 99,
            "object_name": "x.pt",
            "staged_path": str(staged),
            "size": 1,
            # Same bucket and allowed prefix, but another identity (its own sub-prefix).
            "store": {**spec, "kwargs": {**spec["kwargs"], "prefix": VICTIM_PREFIX + "other/"}},
        },
        KEYS,
    )
    Records.from_url(redis_server.url).client.hset(
        f"hoist:artifact:{body['id']}",
        mapping={"state": "queued", "message": json.dumps(body), "task": UPLOAD_TASK},
    )
    send_raw(guarded, UPLOAD_TASK, body, body["id"])
    records = Records.from_url(redis_server.url)
    status = wait_until(lambda: settled(records, body["id"]), timeout=60)
    assert status.state is State.FAILED
    assert "sealed for another store" in status.error
    assert f"{VICTIM_PREFIX}other/x.pt" not in objects(moto_server, VICTIM_PREFIX + "other/")


def test_seals_open_only_for_their_store_and_every_unknown_argument_is_sealed() -> None:
    kwargs = {
        "bucket": "ckpts",
        "endpoint_url": "http://minio:9000",
        "aws_secret_access_key": "s3cr3t",
    }
    spec = StoreSpec.describe("s3", kwargs, KEYS)
    assert spec.unseal(KEYS) == {"aws_secret_access_key": "s3cr3t"}
    moved = StoreSpec("s3", {**spec.kwargs, "endpoint_url": "http://evil:9000"}, spec.sealed)
    with pytest.raises(ConfigurationError, match="sealed for another store"):
        moved.unseal(KEYS)
    retyped = StoreSpec(
        "libcloud",
        {"provider": "openstack_swift", "container": "ckpts", "provider_kwargs": {}},
        spec.sealed,
    )
    with pytest.raises(ConfigurationError, match="sealed for another store"):
        retyped.unseal(KEYS)
    swift = StoreSpec.describe(
        "libcloud",
        {
            "provider": "openstack_swift",
            "container": "ckpts",
            "provider_kwargs": {"host": "swift.lan", "ex_force_auth_token": "tok-123", "x": 1},
        },
        KEYS,
    )
    assert "tok-123" not in json.dumps(swift.to_json())
    assert swift.kwargs["provider_kwargs"] == {"host": "swift.lan"}
    assert swift.unseal(KEYS) == {"provider_kwargs": {"ex_force_auth_token": "tok-123", "x": 1}}


# --------------------------------------------------------------------------- 7, 8. records


@pytest.mark.parametrize(
    "forger", ["unsigned, another store", "signed by the fleet key, another message", "malformed"]
)
def test_a_forged_message_under_a_queued_id_touches_no_record(
    forger: str,
    guarded: WorkerFleet,
    moto_server: S3Server,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """Attack 7: a queued artifact's id reused by a forged upload is neither marked done
    nor failed; the rank's real message then lands as if nothing happened."""
    run = f"tamper-{time.time_ns()}"
    logger = victim_logger(guarded, moto_server, run)
    source = tmp_path / "model.pt"
    source.write_bytes(b"the real model")
    # Hold the rank's send back: the record is written, the message not yet sent.
    logger._outbox.publisher.put = lambda item: None  # type: ignore[method-assign]
    artifact = logger.file_artifact(LogLevel.EPOCH, "model.pt", source)
    real = record_message(redis_server, artifact)
    if forger == "malformed":
        body: dict[str, Any] = {**real, "size": "huge"}
    else:
        body = {**real, "object_name": f"{run}/elsewhere.pt"}
        if forger.startswith("signed"):
            body = sign(body, KEYS)
    send_raw(guarded, UPLOAD_TASK, body, artifact)
    expected = "another message under that id" if forger.startswith("signed") else "signature"
    logged(guarded, artifact, expected)
    records = Records.from_url(redis_server.url)
    status = records.get(artifact)
    assert status is not None and status.state is State.QUEUED, status
    assert status.message == real
    # The rank's own message, as the watchdog or `hoist retry` would send it.
    send_raw(guarded, UPLOAD_TASK, real, artifact)
    done = wait_until(lambda: settled(records, artifact), timeout=60)
    assert done.state is State.DONE, done.error
    key = f"{VICTIM_PREFIX}{run}/model.pt"
    assert objects(moto_server, key)[key] == b"the real model"
    assert f"{VICTIM_PREFIX}{run}/elsewhere.pt" not in objects(moto_server, VICTIM_PREFIX + run)


def test_a_forged_stale_upload_cannot_delete_another_runs_staged_file(
    guarded: WorkerFleet, moto_server: S3Server, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Attack 8: an upload with order "0" on a name with a newer marker was superseded, and
    the worker deleted the staged path it named without asking any store."""
    run = f"stale-{time.time_ns()}"
    victim = record_message(redis_server, land_one(guarded, moto_server, tmp_path, run))
    staged = guarded.staging_root / "other-run" / "rank0" / f"{time.time_ns()}-weights.pt"
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(b"not yet uploaded")
    for order, signer in (("0", None), ("0", KEYS)):
        body = {**victim, "id": f"hoist-{run}-r0-{time.time_ns()}", "order": order}
        body["staged_path"] = str(staged)
        body = sign(body, signer) if signer else body
        send_raw(guarded, UPLOAD_TASK, body, body["id"])
        logged(guarded, body["id"], "signature does not" if signer is None else "order key '0'")
    assert staged.read_bytes() == b"not yet uploaded"
    assert alive(guarded)


# --------------------------------------------------------------------------- keys and start-up


def test_signatures_cover_every_field_and_rotation_accepts_the_older_key() -> None:
    body = {"id": "hoist-r-r0-1", "order": "1", "store": {"kind": "s3", "kwargs": {"b": 1}}}
    old, new = new_fleet_key(), new_fleet_key()
    signed = sign(body, FleetKeys.parse(old))
    verify(signed, FleetKeys.parse(f"{new},{old}"))  # workers roll first: both accepted
    with pytest.raises(ForgedMessageError):
        verify(signed, FleetKeys.parse(new))  # once the old key is retired
    with pytest.raises(ForgedMessageError):
        verify({**signed, "store": {"kind": "s3", "kwargs": {"b": 2}}}, FleetKeys.parse(old))
    with pytest.raises(UnsignedMessageError):
        verify(body, FleetKeys.parse(old))
    verify(body, None, insecure=True)
    with pytest.raises(UnsignedMessageError, match="no HOIST_FLEET_KEY"):
        verify(signed, None)
    # Ranks sign with the first key of the list.
    assert sign(body, FleetKeys.parse(f"{new},{old}")) == sign(body, FleetKeys.parse(new))


def test_allow_list_matches_kind_endpoint_bucket_and_prefix(tmp_path: Path) -> None:
    allowed = AllowedStores.parse(
        [
            "s3://ckpts/runs/?endpoint_url=http://MinIO:9000/",
            f"file://{tmp_path}/artifacts",
            "sftp://hoist@backup.lan:2222/srv/ckpts",
        ]
    )
    minio = {"bucket": "ckpts", "endpoint_url": "http://minio:9000"}
    assert allowed.refusal("s3", {**minio, "prefix": "runs/"}, "a/b.pt") is None
    assert allowed.refusal("s3", minio, "runs/a.pt") is None
    assert allowed.refusal("s3", minio, "other/a.pt") is not None
    assert (
        allowed.refusal("s3", {**minio, "endpoint_url": "http://evil:9000"}, "runs/a") is not None
    )
    assert allowed.refusal("s3", {"bucket": "ckpts", "prefix": "runs/"}, "a") is not None  # AWS
    local = {
        "provider": "local",
        "container": "artifacts",
        "provider_kwargs": {"key": str(tmp_path)},
    }
    assert allowed.refusal("libcloud", local, "run/x.pt") is None
    assert "outside" in str(allowed.refusal("libcloud", local, "../../etc/passwd"))
    assert allowed.refusal("libcloud", {**local, "container": "other"}, "x") is not None
    sftp = {"host": "backup.lan", "port": 2222, "cwd": "/srv/ckpts"}
    assert allowed.refusal("sftp", sftp, "run/x.pt") is None
    assert allowed.refusal("sftp", {**sftp, "cwd": "/etc"}, "x") is not None
    assert allowed.refusal("sftp", sftp, "../../etc/x") is not None
    anywhere = AllowedStores.parse([], any_store=True)
    assert anywhere.refusal("s3", {"bucket": "anything"}, "x") is None
    for container in (".", ".."):
        assert anywhere.refusal("libcloud", {**local, "container": container}, "x") is not None
    with pytest.raises(ConfigurationError):
        AllowedStores.parse(["gopher://x"])


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"HOIST_FLEET_KEY": "", "HOIST_ALLOW_ANY_STORE": "1"}, "no fleet key"),
        ({"HOIST_ALLOW_ANY_STORE": "", "HOIST_ALLOWED_STORES": ""}, "--allow-store URI"),
    ],
    ids=["no fleet key", "no allow-list"],
)
def test_a_worker_that_would_check_nothing_refuses_to_start(
    env: dict[str, str], said: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hoist.cli", "worker", "--staging-dir", str(tmp_path)],
        env={**clean_environment(), "HOIST_BROKER_URL": redis_server.url, **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert said in result.stderr
    assert FLEET_KEY not in result.stderr + result.stdout


def test_the_logger_refuses_to_start_without_a_fleet_key(
    guarded: WorkerFleet, moto_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOIST_FLEET_KEY")
    with pytest.raises(ConfigurationError, match="no fleet key"):
        victim_logger(guarded, moto_server, "nokey")
    assert os.environ.get("HOIST_FLEET_KEY") is None


def acl_from_docs() -> str:
    """The ACL file of docs/reliability.md, as written there."""
    text = (Path(__file__).parent.parent / "docs" / "reliability.md").read_text()
    block = text.split("```acl\n", 1)[1].split("```", 1)[0]
    return "\n".join(line.strip() for line in block.splitlines() if line.strip()) + "\n"


def test_the_rank_acl_keeps_ranks_off_the_control_channels_and_still_logs(
    tmp_path: Path,
) -> None:
    import redis

    from tests.conftest import _serve

    acl = tmp_path / "users.acl"
    acl.write_text(
        acl_from_docs()
        .replace("WORKER_PASSWORD", "worker-pw-123")
        .replace("RANK_PASSWORD", "rank-pw-456")
    )
    server = RedisServer(tmp_path / "redis", extra_args=["--aclfile", str(acl)])
    server.url = f"redis://worker:worker-pw-123@127.0.0.1:{server.port}/0"
    rank_url = f"redis://rank:rank-pw-456@127.0.0.1:{server.port}/0"
    with contextlib.ExitStack() as stack:
        for service in (server, WorkerFleet(tmp_path / "w", server.url, tmp_path / "staging", 1)):
            running = _serve(service)
            next(running)
            stack.callback(running.close)  # stops it, in the reverse order
        fleet = service
        rank = redis.Redis.from_url(rank_url)
        with pytest.raises(redis.exceptions.NoPermissionError):
            rank.publish("/0.celery.pidbox", "{}")
        with pytest.raises(redis.exceptions.NoPermissionError):
            rank.lpush("celery", "{}")
        with pytest.raises(Exception, match="no permissions"):
            sender(rank_url).control.broadcast("shutdown")
        store = tmp_path / "store"
        (store / "artifacts").mkdir(parents=True)
        source = tmp_path / "f.txt"
        source.write_bytes(b"logged through the rank's ACL")
        logger = ObjectStoreLogger(
            **{**single_rank_local_store(fleet, store), "broker_url": rank_url},
            object_name="{run_name}/{artifact_name}",
            run_name="acl",
        )
        logger.file_artifact(LogLevel.EPOCH, "f.txt", source)
        logger.close()
        assert (store / "artifacts" / "acl" / "f.txt").read_bytes() == source.read_bytes()
        assert alive(fleet)
