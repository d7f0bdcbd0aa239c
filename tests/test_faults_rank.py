"""Faults on the rank side: the broker away while a rank logs, the staging disk full.

Real Redis (stopped and started on the same port), real ``hoist worker``
processes, the Libcloud local store, a real tmpfs as a full staging disk. Each
test prints what it measured (run with ``-s``): how long the caller was
blocked before the error, and how long recovery took once the fault was gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from hoist import LogLevel, ObjectStoreLogger
from hoist.errors import EnqueueError, StagingError, UploadFailedError
from hoist.protocol.messages import UPLOAD_TASK, UploadRequest
from hoist.protocol.sending import send, sender
from hoist.state.records import Records
from hoist.state.states import State
from tests.services.keys import KEYS
from tests.services.process import free_port
from tests.services.redis import RedisServer
from tests.services.tls import make_tls_files
from tests.services.workers import WorkerFleet, clean_environment, wait_until
from tests.test_pipeline import local_backend, settled, staged_files

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "hunter2-not-for-logs"


@pytest.fixture(scope="module")
def staging_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rank-faults-staging")


@pytest.fixture(scope="module")
def fleet(
    redis_server: RedisServer, staging_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFleet]:
    from tests.conftest import _serve

    workers = WorkerFleet(
        tmp_path_factory.mktemp("rank-faults-workers"), redis_server.url, staging_root, count=1
    )
    yield from _serve(workers)


def logger_for(
    tmp_path: Path, staging_root: Path, run_name: str, broker_url: str, **kwargs: Any
) -> ObjectStoreLogger:
    backend = local_backend(tmp_path / "store")
    return ObjectStoreLogger(
        **backend.logger,
        object_name="{run_name}/{artifact_name}",
        run_name=run_name,
        broker_url=broker_url,
        upload_staging_folder=str(staging_root),
        rank=0,
        world_size=1,
        **kwargs,
    )


def landed(tmp_path: Path, run_name: str, name: str) -> Path:
    return tmp_path / "store" / "artifacts" / run_name / name


# --------------------------------------------------------------------------- broker away


def test_unreachable_broker_fails_in_the_caller_without_the_password(
    tmp_path: Path, staging_root: Path
) -> None:
    """Nothing listens on the port: the logger's constructor retries for enqueue_timeout,
    then says so (issue 16: not the first checkpoint, minutes or days later)."""
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    run_name = f"nobroker-{time.time_ns()}"
    source = tmp_path / "ep1.pt"
    source.write_bytes(b"weights")
    started = time.monotonic()
    with pytest.raises(EnqueueError) as caught:
        logger_for(tmp_path, staging_root, run_name, url, enqueue_timeout=1.5)
    blocked = time.monotonic() - started
    message = str(caught.value)
    print(f"\nblocked {blocked:.2f} s with enqueue_timeout=1.5; error: {message}")
    assert "unreachable" in message
    assert url.replace(PASSWORD, "****") in message
    assert PASSWORD not in message and PASSWORD not in repr(caught.value.__cause__)
    # The state Redis is that same URL, so nothing was numbered, recorded or staged.
    assert staged_files(staging_root, run_name) == []
    assert source.read_bytes() == b"weights"
    assert "build the logger again" in message


def test_enqueue_timeout_from_the_environment(
    tmp_path: Path, staging_root: Path, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    url = redis_server.url
    monkeypatch.setenv("HOIST_ENQUEUE_TIMEOUT", "0.5")
    logger = logger_for(tmp_path, staging_root, "env-timeout", url, store_check=False)
    assert logger.enqueue_timeout == 0.5
    logger.close()
    monkeypatch.setenv("HOIST_ENQUEUE_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="HOIST_ENQUEUE_TIMEOUT='soon'"):
        logger_for(tmp_path, staging_root, "env-timeout", url)


@pytest.mark.parametrize(
    "outages", [1, pytest.param(10, marks=pytest.mark.long)], ids=lambda n: f"{n}x"
)
def test_redis_down_while_logging_then_logging_again_lands(
    outages: int,
    tmp_path: Path,
    staging_root: Path,
    fleet: WorkerFleet,
    redis_server: RedisServer,
) -> None:
    """Broker and records on one Redis, stopped: the call fails, and after a restart lands."""
    run_name = f"redis-down-{time.time_ns()}"
    logger = logger_for(tmp_path, staging_root, run_name, redis_server.url, enqueue_timeout=1)
    records = Records.from_url(redis_server.url)
    recoveries = []
    for n in range(outages):
        source = tmp_path / f"ep{n}.pt"
        source.write_bytes(os.urandom(64 * 1024))
        redis_server.stop()
        try:
            with pytest.raises(EnqueueError, match="unreachable") as caught:
                logger.file_artifact(LogLevel.EPOCH, f"ep{n}.pt", source)
            assert "log the artifact again" in str(caught.value)
        finally:
            redis_server.start()
        restarted = time.monotonic()
        artifact = logger.file_artifact(LogLevel.EPOCH, f"ep{n}.pt", source)
        status = wait_until(lambda a=artifact: settled(records, a), timeout=120)
        recoveries.append(time.monotonic() - restarted)
        assert status.state is State.DONE, status.error
        assert landed(tmp_path, run_name, f"ep{n}.pt").read_bytes() == source.read_bytes()
    logger.close()
    assert staged_files(staging_root, run_name) == []
    print(
        f"\n{outages} Redis outage(s) while logging: 0 lost; recovery (restart to verified "
        f"upload) max {max(recoveries):.2f} s, mean {sum(recoveries) / len(recoveries):.2f} s"
    )


def test_broker_down_record_kept_failed_then_hoist_retry_lands_it(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    staging_root: Path,
    redis_server: RedisServer,
) -> None:
    """Broker on its own Redis, down; records up: the call returns at once (staged and
    recorded), the sending thread gives up after enqueue_timeout, wait() says how to
    send it, and `hoist retry` lands it."""
    broker = RedisServer(tmp_path_factory.mktemp("lone-broker"))
    run_name = f"broker-down-{time.time_ns()}"
    source = tmp_path / "ep1.pt"
    source.write_bytes(os.urandom(256 * 1024))
    logger = logger_for(
        tmp_path,
        staging_root,
        run_name,
        broker.url,
        state_url=redis_server.url,
        enqueue_timeout=1.5,
        wait_on_close=False,
    )
    started = time.monotonic()
    artifact = logger.file_artifact(LogLevel.EPOCH, "ep1.pt", source)
    blocked = time.monotonic() - started
    assert blocked < 1.0, f"file_artifact waited {blocked:.2f} s for the broker"
    with pytest.raises(UploadFailedError) as caught:
        logger.wait(timeout=30)
    message = str(caught.value)
    print(f"\nfile_artifact blocked {blocked * 1000:.1f} ms; wait(): {message}")
    assert "ep1.pt" in message and "never sent" in message
    assert f"hoist retry --run {run_name}`" in message  # no --queued: the record says failed
    [staged] = staged_files(staging_root, run_name)
    assert staged.read_bytes() == source.read_bytes()
    assert str(staged) in message
    [record] = Records.from_url(redis_server.url).run_artifacts(run_name)
    assert record.id == artifact and record.state is State.FAILED
    assert "never sent" in record.error and broker.url in record.error

    env = {
        **clean_environment(),
        "HOIST_BROKER_URL": broker.url,
        "HOIST_STATE_URL": redis_server.url,
        "HOIST_STAGING_DIR": str(staging_root),
        "PYTHONPATH": str(REPO),
    }
    broker.start()
    try:
        recovering = time.monotonic()
        retry = subprocess.run(
            [sys.executable, "-m", "hoist.cli", "retry", "--run", run_name],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert retry.returncode == 0, retry.stdout + retry.stderr
        workers = WorkerFleet(
            tmp_path_factory.mktemp("lone-broker-workers"),
            broker.url,
            staging_root,
            count=1,
            env={"HOIST_STATE_URL": redis_server.url},
        )
        workers.start()
        try:
            records = Records.from_url(redis_server.url)
            status = wait_until(lambda: settled(records, record.id), timeout=120)
            recovery = time.monotonic() - recovering
        finally:
            workers.stop()
    finally:
        broker.stop()
    assert status.state is State.DONE, status.error
    assert status.fields["already_present"] == "0"  # uploaded once, by the retry
    assert landed(tmp_path, run_name, "ep1.pt").read_bytes() == source.read_bytes()
    assert staged_files(staging_root, run_name) == []
    logger.close()
    print(
        f"broker back to verified upload via `hoist retry` (incl. worker start): {recovery:.2f} s"
    )


# --------------------------------------------------------------------------- staging full


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs as a full staging disk here ({result.stderr.strip()}); "
            "tests/test_logger_units.py::test_full_staging_filesystem_cleans_up_and_says_what_"
            "to_do covers the staging step alone"
        )


def test_full_staging_disk_fails_in_the_caller_then_the_run_goes_on(
    tmp_path: Path, staging_root: Path, fleet: WorkerFleet, redis_server: RedisServer
) -> None:
    """The run's staging directory is a 2 MiB tmpfs that a filler file has nearly filled."""
    run_name = f"staging-full-{time.time_ns()}"
    run_dir = staging_root / run_name
    _mount_tmpfs(run_dir, "2m")
    try:
        filler = run_dir / "filler"
        filler.write_bytes(b"\0" * (1536 * 1024))
        source = tmp_path / "ep1.pt"
        data = os.urandom(1024 * 1024)
        source.write_bytes(data)
        logger = logger_for(tmp_path, staging_root, run_name, redis_server.url)

        with pytest.raises(StagingError) as caught:
            logger.file_artifact(LogLevel.EPOCH, "ep1.pt", source)
        message = str(caught.value)
        print(f"\nerror: {message}")
        assert "No space left on device" in message and "free space" in message
        assert [p.name for p in (run_dir / "rank0").iterdir()] == []  # no partial file
        assert source.read_bytes() == data

        filler.unlink()  # space freed: the same run goes on
        freed = time.monotonic()
        artifact = logger.file_artifact(LogLevel.EPOCH, "ep1.pt", source)
        records = Records.from_url(redis_server.url)
        status = wait_until(lambda: settled(records, artifact), timeout=120)
        recovery = time.monotonic() - freed
        assert status.state is State.DONE, status.error
        assert landed(tmp_path, run_name, "ep1.pt").read_bytes() == data
        logger.close()
        assert [p.name for p in (run_dir / "rank0").iterdir()] == []
        # The failed call left no record behind: nothing pending that will never come.
        assert [r.state for r in records.run_artifacts(run_name)] == [State.DONE]
        print(f"space freed to verified upload: {recovery:.2f} s")
    finally:
        subprocess.run(["umount", "--lazy", str(run_dir)], check=True)


# --------------------------------------------------------------------------- TLS broker


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, Path]]:
    """redis-server speaking only TLS, with a certificate from a CA of the test's own."""
    from tests.conftest import _serve

    workdir = tmp_path_factory.mktemp("tls-redis")
    files = make_tls_files(workdir / "tls")
    port = free_port()
    url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={files.ca}"
    server = RedisServer(
        workdir,
        port=port,
        url=url,
        extra_args=[
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(files.cert),
            "--tls-key-file", str(files.key),
            "--tls-ca-cert-file", str(files.ca),
            "--tls-auth-clients", "no",
        ],
    )  # fmt: skip
    for running in _serve(server):
        yield running, files.ca


def test_rediss_broker_upload_end_to_end(
    tls_redis: tuple[RedisServer, Path],
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    staging_root: Path,
) -> None:
    """Rank and worker talk to the broker and the records over TLS, checking the certificate."""
    server, _ca = tls_redis
    workers = WorkerFleet(tmp_path_factory.mktemp("tls-workers"), server.url, staging_root, count=1)
    workers.start()
    try:
        run_name = f"tls-{time.time_ns()}"
        source = tmp_path / "ep1.pt"
        source.write_bytes(os.urandom(300 * 1024))
        logger = logger_for(tmp_path, staging_root, run_name, server.url)
        logger.file_artifact(LogLevel.EPOCH, "ep1.pt", source)
        logger.wait(timeout=120)
        logger.close()
    finally:
        workers.stop()
    assert landed(tmp_path, run_name, "ep1.pt").read_bytes() == source.read_bytes()
    # The worker never fell back to an unchecked connection.
    assert "defaulting to insecure SSL" not in workers.logs()


@pytest.mark.parametrize(
    "query",
    ["", "?ssl_ca_certs={stranger}", "?ssl_cert_reqs=required&ssl_ca_certs={stranger}"],
    ids=["no TLS parameters", "another CA", "another CA, required"],
)
def test_rediss_broker_certificate_is_checked(
    query: str, tls_redis: tuple[RedisServer, Path], tmp_path: Path
) -> None:
    """A server certificate the client cannot verify is refused, by the broker connection too.

    Without TLS parameters kombu alone would connect unchecked (CERT_NONE, a
    warning in the log); hoist defaults to ``ssl_cert_reqs=required`` as redis-py does.
    """
    server, _ca = tls_redis
    stranger = make_tls_files(tmp_path / "other-ca", label="stranger")
    # localhost, not 127.0.0.1 (both are in the certificate): kombu's global producer
    # pools are keyed by host and port but not TLS options, so a connection the test
    # above opened to 127.0.0.1 with the right CA would be reused. (For the same
    # reason, once one case here connects unchecked, the later ones reuse it.)
    url = f"rediss://localhost:{server.port}/0" + query.format(stranger=stranger.ca)
    message = UploadRequest(
        id=f"hoist-tls-r0-{time.time_ns()}",
        run_name="tls",
        rank=0,
        seq=1,
        artifact_name="x",
        object_name="tls/x",
        order="0",
        store={"kind": "libcloud", "kwargs": {}, "sealed": None},
    ).signed(KEYS)
    with pytest.raises(Exception, match="certificate verify failed"):
        send(sender(url), UPLOAD_TASK, message, retry_seconds=1)
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        Records.from_url(url).client.ping()
