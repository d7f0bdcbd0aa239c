"""The embedded cluster (``hoist up --detach``) as tests start, read and stop it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from hoist.workers.envfile import read_env_file
from tests.services.flower import flower_get
from tests.services.process import free_port
from tests.services.workers import clean_environment

REPO = Path(__file__).resolve().parent.parent.parent


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without hoist's or Flower's variables, plus ``extra``."""
    env = {k: v for k, v in clean_environment().items() if not k.startswith(("HOIST_", "FLOWER_"))}
    return {**env, **extra}


def hoist(
    home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """Run ``hoist --home HOME ARGS…`` as a user would, in a clean environment."""
    return subprocess.run(
        [sys.executable, "-m", "hoist.cli", "--home", str(home), *args],
        capture_output=True,
        text=True,
        env=env if env is not None else environment(),
        cwd=REPO,
        timeout=timeout,
    )


def redis_password(url: str) -> str:
    """The password in a ``redis://:PASSWORD@host`` URL (there must be one)."""
    password = urlsplit(url).password
    assert password
    return password


def pids(home: Path) -> dict[str, int]:
    """The cluster's processes by name, from ``cluster.json``."""
    state = json.loads((home / "cluster.json").read_text())
    return {p["name"]: int(p["pid"]) for p in state["processes"]}


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its reaper is not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] not in ("Z", "X")


@dataclass
class Cluster:
    """A running ``hoist up --detach`` cluster.

    Parameters:
        home: its ``--home`` directory.
        flower_port: where its Flower listens.
        up: what ``hoist up`` printed.
        extra_env: what was added to its environment.
    """

    home: Path
    flower_port: int
    up: subprocess.CompletedProcess[str]
    extra_env: dict[str, str] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)

    def remember(self) -> None:
        """Note the running pids, so that :func:`local_cluster` can kill any that leak."""
        self.seen.update(pids(self.home).values())

    @property
    def env(self) -> dict[str, str]:
        return read_env_file(str(self.home))

    @property
    def login(self) -> tuple[str, str]:
        return self.env["HOIST_FLOWER_USER"], self.env["HOIST_FLOWER_PASSWORD"]

    def flower(self, path: str, auth: tuple[str, str] | None = None) -> tuple[int, str]:
        """GET ``path`` from Flower: (status, body)."""
        return flower_get(self.flower_port, path, auth)


def up(
    home: Path,
    flower_port: int,
    workers: int = 2,
    concurrency: int = 1,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``hoist up --detach``; ``env`` is added to the environment the cluster inherits."""
    args = ("up", "--detach", "--workers", str(workers), "--concurrency", str(concurrency))
    return hoist(home, *args, "--flower-port", str(flower_port), env=environment(**(env or {})))


@contextmanager
def local_cluster(
    home: Path, workers: int = 2, concurrency: int = 1, env: dict[str, str] | None = None
) -> Iterator[Cluster]:
    """Start ``hoist up --detach`` in ``home``; always stop it, killing whatever ``down`` left.

    ``env`` (worker settings such as ``HOIST_PROGRESS_SECONDS``) reaches every
    process of the cluster.
    """
    port = free_port()
    started = up(home, port, workers, concurrency, env)
    assert started.returncode == 0, started.stdout + started.stderr
    cluster = Cluster(home, port, started, extra_env=dict(env or {}))
    cluster.remember()
    try:
        yield cluster
    finally:
        hoist(home, "down")
        for pid in cluster.seen:  # whatever `down` missed: its whole group
            if running(pid):
                os.killpg(pid, signal.SIGKILL)
