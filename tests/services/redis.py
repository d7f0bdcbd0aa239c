"""A private ``redis-server`` with persistence, which tests may stop and restart."""

from __future__ import annotations

import shutil
from pathlib import Path

import redis as redis_client

from tests.services.process import ServerProcess, free_port


class RedisServer:
    """Debian's ``redis-server`` on 127.0.0.1 with AOF persistence under ``workdir``.

    Parameters:
        workdir: directory for its data and log.
        port: the port to listen on (default: a free one).
        extra_args: more ``redis-server`` options (TLS, for example).
        url: how clients reach it (default ``redis://127.0.0.1:<port>/0``).
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        extra_args: list[str] | None = None,
        url: str | None = None,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing: run `bash deploy/bootstrap.sh test`")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = url or f"redis://127.0.0.1:{self.port}/0"
        argv = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(workdir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--protected-mode", "yes",
            *(extra_args or []),
        ]  # fmt: skip
        self.process = ServerProcess("redis-server", argv, workdir / "redis.log", self._ping)

    def _ping(self) -> bool:
        try:
            return bool(redis_client.Redis.from_url(self.url, socket_timeout=0.5).ping())
        except redis_client.RedisError:
            return False

    def start(self) -> None:
        self.process.start()

    def stop(self) -> None:
        self.process.stop()

    def restart(self) -> None:
        """Stop and start on the same port with the same data."""
        self.stop()
        self.start()
