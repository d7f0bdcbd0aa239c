"""End to end: rank processes log through ObjectStoreLogger, real workers upload.

Real Redis, real `hoist worker` processes, real S3 (moto), SFTP (sshd) and
Libcloud-local stores. Objects are read back through each server's own
means (raw boto3, the SFTP server's directory on disk, the local store's
directory), not through hoist's store code.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from hoist import LogLevel, ObjectStoreLogger
from hoist.errors import UploadFailedError
from hoist.protocol.messages import UPLOAD_TASK, UploadRequest, order_key
from hoist.protocol.sending import send, sender
from hoist.state.records import Records
from hoist.state.states import State
from tests.services.keys import FLEET_KEY, KEYS
from tests.services.ranks import RankJob, collect_ranks, start_ranks
from tests.services.redis import RedisServer
from tests.services.s3 import S3Server
from tests.services.secrets import assert_not_in_redis
from tests.services.sshd import SshServer
from tests.services.workers import WorkerFleet, wait_until

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def staging_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("staging")


@pytest.fixture(scope="module")
def fleet(
    redis_server: RedisServer, staging_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFleet]:
    from tests.conftest import _serve

    workers = WorkerFleet(
        tmp_path_factory.mktemp("workers"),
        redis_server.url,
        staging_root,
        count=2,
        concurrency=2,
        env={"HOIST_FLEET_KEY": FLEET_KEY},
    )
    yield from _serve(workers)


class Backend:
    """How a test logs to one store, and how it reads objects back independently."""

    def __init__(self, name: str, logger: dict[str, Any], read: Any) -> None:
        self.name = name
        self.logger = logger
        self.read = read  # uri -> bytes


def s3_backend(server: S3Server) -> Backend:
    def read(uri: str) -> bytes:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        return server.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    kwargs = {
        "bucket": server.bucket,
        "endpoint_url": server.endpoint_url,
        "aws_access_key_id": server.access_key,
        "aws_secret_access_key": server.secret_key,
    }
    return Backend("s3", {"object_store_cls": "S3ObjectStore", "object_store_kwargs": kwargs}, read)


def sftp_backend(server: SshServer) -> Backend:
    def read(uri: str) -> bytes:
        path = "/" + uri.split("/", 3)[3]  # sftp://user@host:port/abs/path
        return Path(path).read_bytes()

    kwargs = {
        "host": server.host,
        "port": server.port,
        "username": server.username,
        "key_filename": server.key_filename,
        "known_hosts": server.known_hosts,
        "cwd": str(server.root),
    }
    return Backend(
        "sftp", {"object_store_cls": "SFTPObjectStore", "object_store_kwargs": kwargs}, read
    )


def local_backend(base: Path) -> Backend:
    (base / "artifacts").mkdir(parents=True, exist_ok=True)

    def read(uri: str) -> bytes:
        return (base / "artifacts" / uri.removeprefix("local://artifacts/")).read_bytes()

    logger = {"provider": "local", "container": "artifacts", "provider_kwargs": {"key": str(base)}}
    return Backend("local", logger, read)


@pytest.fixture(params=["s3", "sftp", "local"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    if request.param == "s3":
        return s3_backend(request.getfixturevalue("moto_server"))
    if request.param == "sftp":
        return sftp_backend(request.getfixturevalue("sshd_server"))
    return local_backend(tmp_path_factory.mktemp("local-store"))


def run_ranks(
    tmp_path: Path,
    fleet: WorkerFleet,
    run_name: str,
    logger: dict[str, Any],
    actions: list[list[Any]],
    world_size: int = 4,
) -> list[dict[str, Any]]:
    """Run ``world_size`` rank processes with torchrun's variables; return their reports."""
    job = RankJob(run_name, logger, actions, fleet.broker_url, fleet.staging_root, FLEET_KEY)
    return collect_ranks(start_ranks(job, tmp_path, world_size), timeout=240)


def settled(records: Records, artifact: str) -> Any:
    status = records.get(artifact)
    return status if status is not None and status.state.terminal else None


def staged_files(root: Path, run_name: str) -> list[Path]:
    return (
        [p for p in (root / run_name).rglob("*") if p.is_file()]
        if (root / run_name).exists()
        else []
    )


def test_four_ranks_land_verified_with_pointers(
    backend: Backend, fleet: WorkerFleet, tmp_path: Path
) -> None:
    four_ranks_land_verified(backend, fleet, tmp_path, "e2e")


def four_ranks_land_verified(
    backend: Backend, fleet: WorkerFleet, tmp_path: Path, prefix: str
) -> None:
    run_name = f"{prefix}-{backend.name}-{int(time.time())}"
    actions: list[list[Any]] = [["file", f"logs/small-{i}.txt", 1000 + i, False] for i in range(20)]
    for n in (1, 2):
        actions.append(["file", f"ckpt/ep{n}-rank{{rank}}.pt", 20 * MiB, False])
        actions.append(["symlink", f"ckpt/ep{n}-rank{{rank}}.pt", "latest-rank{rank}.pt"])
    logger = {**backend.logger, "object_name": "{run_name}/rank{rank}/{artifact_name}"}

    reports = run_ranks(tmp_path, fleet, run_name, logger, actions)

    for report in reports:
        rank = report["rank"]
        assert report["failures"] == [], report.get("error")
        assert len(report["logged"]) == 22
        for name, expected in report["logged"].items():
            held = backend.read(expected["object"])
            assert hashlib.sha256(held).hexdigest() == expected["sha256"], name
        latest_uri = report["logged"][f"ckpt/ep2-rank{rank}.pt"]["object"]
        pointer_uri = latest_uri.replace(f"ckpt/ep2-rank{rank}.pt", f"latest-rank{rank}.pt.symlink")
        assert backend.read(pointer_uri).decode() == f"{run_name}/rank{rank}/ckpt/ep2-rank{rank}.pt"
    assert staged_files(fleet.staging_root, run_name) == []


@pytest.fixture
def local_logger_kwargs(tmp_path: Path, fleet: WorkerFleet) -> dict[str, Any]:
    backend = local_backend(tmp_path / "store")
    return {
        **backend.logger,
        "broker_url": fleet.broker_url,
        "upload_staging_folder": str(fleet.staging_root),
        "object_name": "{run_name}/{artifact_name}",
    }


def test_failure_surfaces_from_wait_and_keeps_staged_file(
    local_logger_kwargs: dict[str, Any], tmp_path: Path, fleet: WorkerFleet
) -> None:
    run_name = f"exists-{int(time.time() * 1000)}"
    store_dir = tmp_path / "store" / "artifacts" / run_name
    store_dir.mkdir(parents=True)
    (store_dir / "model.pt").write_bytes(b"someone else's bytes")
    source = tmp_path / "model.pt"
    source.write_bytes(b"our bytes")

    logger = ObjectStoreLogger(run_name=run_name, **local_logger_kwargs)
    logger.file_artifact(LogLevel.EPOCH, "model.pt", source)
    with pytest.raises(UploadFailedError, match="model.pt") as failure:
        logger.wait(timeout=60)
    assert "overwrite=True" in str(failure.value)
    assert (store_dir / "model.pt").read_bytes() == b"someone else's bytes"
    [staged] = staged_files(fleet.staging_root, run_name)
    assert staged.read_bytes() == b"our bytes"
    logger.close()


def test_message_naming_a_path_outside_staging_is_refused(
    fleet: WorkerFleet, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A real worker fails the record, logs it and Celery counts it failed; each way
    out of the staging root (.., symlinks, /etc/shadow) is refused in
    tests/test_worker_core.py."""
    # A FIFO: a worker that opened it to read would block, and the record would never settle.
    outside = tmp_path / "secret.fifo"
    os.mkfifo(outside)
    path = str(outside)
    store = local_backend(tmp_path / "store")
    from hoist.stores.spec import StoreSpec

    spec = StoreSpec.describe("libcloud", {**store.logger}, None)
    records = Records.from_url(redis_server.url)
    message = UploadRequest(
        id=f"hoist-evil-r0-{int(time.time() * 1000)}",
        run_name="evil",
        rank=0,
        seq=1,
        artifact_name="secret",
        object_name="evil/secret",
        order=order_key(0, 1),
        store=spec.to_json(),
        staged_path=path,
        size=1,
    ).signed(KEYS)
    send(sender(fleet.broker_url), UPLOAD_TASK, message)
    status = wait_until(lambda: settled(records, message.id), timeout=30)
    assert status.state is State.FAILED
    assert "outside the staging root" in status.error
    assert repr(path) in status.error
    # The worker says so in its log, naming the artifact.
    wait_until(lambda: f"{message.id} (evil/secret) failed" in fleet.logs(), timeout=10)
    # Celery counts it failed too (Flower's FAILURE), without a traceback in the log.
    failed = f"Task hoist.upload[{message.id}] raised expected: ArtifactFailed("
    wait_until(lambda: failed in fleet.logs(), timeout=10)
    assert not (tmp_path / "store" / "artifacts" / "evil").exists()


def test_no_secret_reaches_redis_or_worker_logs(
    s3_server: S3Server, fleet: WorkerFleet, redis_server: RedisServer, tmp_path: Path
) -> None:
    run_name = f"secrets-{s3_server.name}-{int(time.time() * 1000)}"
    backend = s3_backend(s3_server)
    actions: list[list[Any]] = [
        ["file", "a-{rank}.txt", 100, False],
        ["file", "b-{rank}.bin", 6 * MiB, False],
    ]
    reports = run_ranks(tmp_path, fleet, run_name, backend.logger, actions, world_size=2)
    assert all(r["failures"] == [] for r in reports), [r.get("error") for r in reports]

    assert_not_in_redis(redis.Redis.from_url(redis_server.url), s3_server.secret_key)
    assert s3_server.secret_key not in fleet.logs()


def test_repeated_names_newest_wins_and_superseded_copies_go(
    local_logger_kwargs: dict[str, Any], tmp_path: Path, fleet: WorkerFleet
) -> None:
    run_name = f"repeat-{int(time.time() * 1000)}"
    logger = ObjectStoreLogger(run_name=run_name, **local_logger_kwargs)
    source = tmp_path / "train.log"
    for flush in range(10):
        source.write_text(f"line {flush}\n" * (flush + 1) * 10000)
        logger.file_artifact(LogLevel.BATCH, "train.log", source, overwrite=True)
    logger.wait(timeout=60)
    held = tmp_path / "store" / "artifacts" / run_name / "train.log"
    assert held.read_text() == source.read_text()
    assert staged_files(fleet.staging_root, run_name) == []

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(64 * MiB))
    logger.file_artifact(LogLevel.BATCH, "big.bin", big)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        logger.file_artifact(LogLevel.BATCH, "big.bin", big)
    logger.close()
