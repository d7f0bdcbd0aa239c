"""Services a benchmark starts for itself, all on 127.0.0.1 and free ports.

- :func:`private_redis`: a throwaway ``redis-server`` that keeps nothing on
  disk: the broker and record store, used by no one else, gone at the end.
- :class:`Lab`: that Redis plus, started when first asked for, ``rclone serve
  s3`` (the S3 server; on disk, faster than moto: ../shared/FACTS.md), a
  private ``sshd`` for SFTP, and fleets of real ``hoist worker`` processes.
  Those three are the test suite's own helpers from ``tests/services/`` (the
  suite runs from the repository root, where ``tests`` is importable), so
  benchmarks and tests start servers one way.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import boto3
import redis
from botocore.config import Config

from hoist.keys import new_fleet_key
from hoist.logger.logger import ObjectStoreLogger
from hoist.stores.s3 import S3ObjectStore
from hoist.stores.sftp import SFTPObjectStore
from tests.services.s3 import RcloneServer
from tests.services.sshd import SshServer
from tests.services.workers import WorkerFleet


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as log:
            return "".join(log.readlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@contextmanager
def private_redis(workdir: str, timeout: float = 10.0) -> Iterator[str]:
    """Run a private ``redis-server`` on 127.0.0.1 for the ``with`` block; yield its URL.

    It listens on a free port, keeps nothing on disk (``--save ""
    --appendonly no``), and has its working directory and log under
    ``workdir``. It is stopped when the block exits, also on error: SIGTERM,
    then SIGKILL if it has not exited after 10 s.

    Parameters:
        workdir: directory for its data and ``redis.log`` (created if missing).
        timeout: seconds to wait for it to answer ``PING``.

    Yields:
        ``redis://127.0.0.1:<port>/0``.

    Raises:
        RuntimeError: ``redis-server`` is not installed, exited while starting
            or did not answer in ``timeout`` seconds (with the end of its log).

    Example:
        >>> with private_redis("/bench/redis") as url:  # doctest: +SKIP
        ...     redis.Redis.from_url(url).ping()
        True
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is missing: run `bash deploy/bootstrap.sh test` "
            "(or `apt-get install redis-server`)"
        )
    os.makedirs(workdir, exist_ok=True)
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    log_path = os.path.join(workdir, "redis.log")
    argv = [
        binary,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", workdir,
        "--save", "",
        "--appendonly", "no",
        "--protected-mode", "yes",
        "--daemonize", "no",
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        # A session of its own, so that Ctrl-C reaches only the benchmark, which
        # then stops the server itself below.
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_until_ready(process, url, log_path, timeout)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_ready(
    process: subprocess.Popen[bytes], url: str, log_path: str, timeout: float
) -> None:
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with code {process.returncode} while starting:\n"
                    f"{_log_tail(log_path)}"
                )
            try:
                if client.ping():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.05)
    finally:
        client.close()
    raise RuntimeError(f"redis-server did not answer in {timeout:.0f} s:\n{_log_tail(log_path)}")


BENCH_BUCKET = "hoist-bench"
WORKER_ENVIRONMENT = {
    # The production defaults, not the tests' short leases (tests/services/workers.py).
    "HOIST_LEASE_SECONDS": "30",
    "HOIST_BACKOFF_BASE": "1",
    "HOIST_BACKOFF_MAX": "300",
    # The benchmark's stores live on free ports of this run; the allow-list check
    # costs the same whichever list it reads.
    "HOIST_ALLOW_ANY_STORE": "1",
}


class Lab:
    """The services of one benchmark run; servers start on first use and stop at the end.

    Parameters:
        root: the run's directory (on the filesystem a staging root would use).
        stack: stops everything started here when it closes.
        pool: the workers' Celery pool, ``"prefork"`` (hoist's default) or ``"threads"``.

    Example:
        >>> with ExitStack() as stack:  # doctest: +SKIP
        ...     lab = Lab(root, stack)
        ...     with lab.fleet(2) as fleet, lab.logger("s3", "run-1") as logger:
        ...         logger.file_artifact(LogLevel.BATCH, "ep1.pt", "/ckpt/ep1.pt")
    """

    def __init__(self, root: str, stack: ExitStack, pool: str = "prefork") -> None:
        self.root = root
        self.pool = pool
        self.stack = stack
        self.redis_url = stack.enter_context(private_redis(os.path.join(root, "redis")))
        self.staging_root = os.path.join(root, "staging")
        os.makedirs(self.staging_root, exist_ok=True)
        self.fleet_key = new_fleet_key()
        # Every logger of the run (in this process and the rank processes it
        # starts) signs with it, as a training job finds it in its environment.
        os.environ["HOIST_FLEET_KEY"] = self.fleet_key
        self._s3: RcloneServer | None = None
        self._s3_tmpfs: RcloneServer | None = None
        self._sshd: SshServer | None = None
        self._fleets = 0

    # ----- servers ----------------------------------------------------------

    def s3(self) -> RcloneServer:
        """``rclone serve s3`` with the bucket :data:`BENCH_BUCKET`."""
        if self._s3 is None:
            server = RcloneServer(Path(self.root) / "rclone")
            server.bucket = BENCH_BUCKET
            server.start()
            self.stack.callback(server.stop)
            self._s3 = server
        return self._s3

    def s3_tmpfs(self) -> RcloneServer:
        """A second ``rclone serve s3`` keeping its objects on tmpfs (``/dev/shm``).

        For the training loop: in production the store is another machine, so
        its disk writes must not land in the training node's page cache and
        writeback as they would with a store on the local disk.
        """
        if self._s3_tmpfs is None:
            workdir = Path(tempfile.mkdtemp(prefix="hoist-bench-s3-", dir="/dev/shm"))
            self.stack.callback(shutil.rmtree, workdir, True)
            server = RcloneServer(workdir)
            server.bucket = BENCH_BUCKET
            server.start()
            self.stack.callback(server.stop)
            self._s3_tmpfs = server
        return self._s3_tmpfs

    def sshd(self) -> SshServer:
        """A private ``sshd`` serving SFTP; objects go under its ``root``."""
        if self._sshd is None:
            server = SshServer(Path(self.root) / "sshd")
            server.start()
            self.stack.callback(server.stop)
            self._sshd = server
        return self._sshd

    def redis_pid(self) -> int:
        return int(redis.Redis.from_url(self.redis_url).info("server")["process_id"])

    @contextmanager
    def fleet(self, count: int, concurrency: int = 2) -> Iterator[WorkerFleet]:
        """``count`` real ``hoist worker`` processes (``concurrency`` pool processes or
        threads each)."""
        self._fleets += 1
        fleet = WorkerFleet(
            Path(self.root) / f"workers-{self._fleets}",
            self.redis_url,
            Path(self.staging_root),
            count=count,
            concurrency=concurrency,
            env={**WORKER_ENVIRONMENT, "HOIST_FLEET_KEY": self.fleet_key},
            args=["--pool", self.pool],
        )
        fleet.start()
        try:
            yield fleet
        finally:
            fleet.stop()

    # ----- the rank side ----------------------------------------------------

    def store_arguments(self, store: str, verify: str = "auto") -> dict[str, Any]:
        """The ``ObjectStoreLogger`` arguments that upload to ``store`` (``s3`` or ``sftp``)."""
        if store in ("s3", "s3-tmpfs"):
            s3 = self.s3() if store == "s3" else self.s3_tmpfs()
            kwargs: dict[str, Any] = {
                "bucket": s3.bucket,
                "endpoint_url": s3.endpoint_url,
                "aws_access_key_id": s3.access_key,
                "aws_secret_access_key": s3.secret_key,
                "verify": verify,
            }
            return {"object_store_cls": S3ObjectStore, "object_store_kwargs": kwargs}
        if store == "sftp":
            sshd = self.sshd()
            kwargs = {
                "host": sshd.host,
                "port": sshd.port,
                "username": sshd.username,
                "key_filename": sshd.key_filename,
                "known_hosts": sshd.known_hosts,
                "cwd": str(sshd.root),
            }
            return {"object_store_cls": SFTPObjectStore, "object_store_kwargs": kwargs}
        raise ValueError(f"unknown store {store!r}; use 's3', 's3-tmpfs' or 'sftp'")

    def logger(self, store: str, run_name: str, **options: Any) -> ObjectStoreLogger:
        """A rank's logger uploading to ``store`` through this lab's Redis and staging root."""
        verify = options.pop("verify", "auto")
        return ObjectStoreLogger(
            **self.store_arguments(store, verify),
            upload_staging_folder=self.staging_root,
            broker_url=self.redis_url,
            run_name=run_name,
            fleet_key=self.fleet_key,
            object_name="{run_name}/rank{rank}/{artifact_name}",
            **options,
        )

    def s3_environment(self) -> dict[str, str]:
        """The environment an S3 peer tool (s5cmd, the AWS CLI) needs for this server."""
        s3 = self.s3()
        return {
            **os.environ,
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def s3_client(self, server: RcloneServer | None = None) -> Any:
        """A boto3 client as a user would make one (default transfer and checksum settings)."""
        s3 = server or self.s3()
        return boto3.client(
            "s3",
            endpoint_url=s3.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=s3.access_key,
            aws_secret_access_key=s3.secret_key,
            config=Config(s3={"addressing_style": "path"}),
        )

    def clear_bucket(self, server: RcloneServer | None = None) -> None:
        """Delete every object of the bucket (untimed, between samples), so disk use stays flat."""
        server = server or self.s3()
        client = self.s3_client(server)
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=server.bucket):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            for start in range(0, len(keys), 1000):
                client.delete_objects(
                    Bucket=server.bucket, Delete={"Objects": keys[start : start + 1000]}
                )

    def rank_spec(self, store: str, run_name: str, rank: int, world_size: int) -> dict[str, Any]:
        """What :mod:`benchmarks.rank_process` needs to make this rank's logger."""
        arguments = self.store_arguments(store)
        return {
            "store": {"kind": store, "kwargs": arguments["object_store_kwargs"]},
            "upload_staging_folder": self.staging_root,
            "broker_url": self.redis_url,
            "run_name": run_name,
            "fleet_key": self.fleet_key,
            "object_name": "{run_name}/rank{rank}/{artifact_name}",
            "rank": rank,
            "local_rank": rank,
            "world_size": world_size,
            "local_world_size": world_size,
            "node_rank": 0,
            "wait_on_close": False,
        }
