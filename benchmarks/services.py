"""Services a benchmark starts for itself: a throwaway ``redis-server``.

Self-contained on purpose (the test suite's service helpers live in ``tests/``
and are not imported here): a benchmark run needs a broker that no one else
uses, that keeps nothing on disk, and that is gone when the run ends.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis


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
