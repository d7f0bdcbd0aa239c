"""The local cluster's Redis: finding ``redis-server``, its command line, and a safe stop.

Redis is private to the cluster: loopback only, a password, AOF persistence
(``appendfsync everysec``), its config and data under ``<home>/redis``. It is
stopped last, with ``SHUTDOWN SAVE``, so that the AOF is flushed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

import redis

from hoist.errors import ConfigurationError
from hoist.workers.network import LOOPBACK, pings
from hoist.workers.processes import Managed, wait_gone

REDIS_GRACE_SECONDS = 30.0
REDIS_MISSING = (
    "redis-server is not installed; install it with `apt-get install redis-server` "
    "(Debian/Ubuntu) or point HOIST_BROKER_URL at a Redis you run"
)


def find_redis_server() -> str:
    """The ``redis-server`` binary on PATH.

    Raises:
        ConfigurationError: it is not installed.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigurationError(REDIS_MISSING)
    return binary


def redis_argv(binary: str, directory: Path, port: int, password: str) -> list[str]:
    """``redis-server``'s command line; writes ``directory/redis.conf`` with the password.

    Parameters:
        binary: the ``redis-server`` to run (:func:`find_redis_server`).
        directory: its config and data directory (``<home>/redis``).
        port: the loopback port it listens on.
        password: what clients must give (``requirepass``).
    """
    # The password goes in a file only we can read: a command line is public in `ps`.
    conf = directory / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f'# written by `hoist up`\nrequirepass "{password}"\n')
    return [
        binary, str(conf),
        "--bind", LOOPBACK,
        "--port", str(port),
        "--protected-mode", "yes",
        "--dir", str(directory),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--daemonize", "no",
    ]  # fmt: skip


def stop_redis(process: Managed, url: str) -> None:
    """Stop the Redis ``process``: ``SHUTDOWN SAVE`` if ``url`` answers, then signals."""
    # redis-py's shutdown() returns quietly when it cannot connect, so ask only
    # a server that answers; one still starting (or unreachable) gets SIGTERM.
    if pings(url):
        with contextlib.suppress(redis.RedisError):
            redis.Redis.from_url(url, socket_timeout=5).shutdown(save=True)
        wait_gone([process], 10.0)
    process.send(signal.SIGTERM)  # Redis flushes the AOF on SIGTERM too
    for left in wait_gone([process], REDIS_GRACE_SECONDS):
        left.send(signal.SIGKILL)
