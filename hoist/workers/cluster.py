"""``hoist up``/``hoist down``: the embedded default cluster on this machine.

A private ``redis-server`` (loopback only, password, AOF persistence), N
``hoist worker`` processes and Flower (basic auth), all under one home
directory (``--home``, default ``.hoist``)::

    <home>/env            the variables every hoist command and a shell need (0600)
    <home>/cluster.json   pids of the running processes, for `hoist down`, and the
                          fingerprints of the credentials the workers started with
    <home>/redis/         Redis's config (holds the password, 0600) and data
    <home>/logs/          redis.log, worker<i>.log, flower.log
    <home>/staging/       the staging root
    <home>/store/         the embedded default store (Libcloud `local`)

Secrets (Redis password, Flower password, fleet key) and the Redis port are
generated once and kept in ``<home>/env``, so URLs stay stable across
restarts. No secret is put on a command line: Redis reads its password from
its config file, workers and Flower from their environment.

Every process runs in a session of its own, so a Ctrl-C in the terminal
reaches ``hoist up`` only, which then stops the others in order: workers
first (SIGTERM, Celery's warm shutdown: running uploads finish), then
Flower, then Redis (``SHUTDOWN SAVE``, which flushes the AOF).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hoist.errors import ConfigurationError, HoistError
from hoist.keys import new_fleet_key
from hoist.settings import environment
from hoist.stores.allowed import ALLOWED_STORES_ENV
from hoist.workers.envfile import (
    changed_variables,
    env_path,
    fingerprints,
    read_env_file,
    write_env_file,
)
from hoist.workers.flower import DEFAULT_ADDRESS, DEFAULT_PORT
from hoist.workers.network import (
    LOOPBACK,
    free_port,
    http_ok,
    http_url,
    pings,
    port_free,
    probe_host,
)
from hoist.workers.processes import Managed, launch, log_size, log_tail, logged, wait_gone
from hoist.workers.redis_server import find_redis_server, redis_argv, stop_redis

FLOWER_USER = "hoist"
STATE_FILE = "cluster.json"
WORKER_GRACE_SECONDS = 30.0
READY_TIMEOUT_SECONDS = 60.0
STOP_ORDER = {"flower": 1, "redis": 2}  # workers (0) first
DEFAULT_CONCURRENCY = 2
"""Uploads are I/O-bound: two per worker keep a core busy while one waits on the network."""


class ClusterError(HoistError):
    """A process of the local cluster failed to start or to stop; the message names its log."""


# ----- the home directory -------------------------------------------------------------------------


def store_uri(home: str | os.PathLike[str]) -> str:
    """The embedded default store: Libcloud's ``local`` provider under ``<home>/store``.

    Example:
        >>> store_uri("/srv/hoist")
        'file:///srv/hoist/store/artifacts'
    """
    return f"file://{os.path.abspath(os.path.join(home, 'store', 'artifacts'))}"


@contextlib.contextmanager
def home_lock(home: Path) -> Iterator[None]:
    """Hold ``<home>/.lock`` so that two ``hoist up``/``down`` never interleave."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ----- the cluster ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterInfo:
    """What the summary shows: read back from ``<home>/env`` and ``cluster.json``."""

    home: str
    broker_url: str
    flower_url: str
    flower_user: str
    staging_dir: str
    store_uri: str
    workers: int
    concurrency: int

    @property
    def env_file(self) -> str:
        return env_path(self.home)


class LocalCluster:
    """Redis, ``workers`` hoist workers and Flower on this machine, under ``home``.

    Parameters:
        home: the cluster's directory (created if missing).
        workers: worker processes (default: number of cores).
        concurrency: uploads each worker runs at once.
        redis_port: Redis's port (default: the one recorded in ``<home>/env``
            if it is free, else any free port).
        flower_port, flower_address: where Flower listens (basic auth, always).
        ready_timeout: seconds each process has to become ready.

    Example (tested in tests/test_cli_cluster.py; it starts servers):
        >>> cluster = LocalCluster(".hoist", workers=2)
        >>> info, reused = cluster.start()  # returns once everything is ready  # doctest: +SKIP
        >>> print(info.flower_url)  # doctest: +SKIP
        http://127.0.0.1:5555
        >>> cluster.stop()  # doctest: +SKIP
    """

    def __init__(
        self,
        home: str | os.PathLike[str],
        workers: int | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        redis_port: int | None = None,
        flower_port: int = DEFAULT_PORT,
        flower_address: str = DEFAULT_ADDRESS,
        ready_timeout: float = READY_TIMEOUT_SECONDS,
        allow_stores: tuple[str, ...] = (),
    ) -> None:
        self.home_arg = os.fspath(home)
        self.allow_stores = allow_stores
        self.home = Path(home).absolute()
        self.workers = workers if workers is not None else (os.cpu_count() or 2)
        self.concurrency = concurrency
        self.redis_port = redis_port
        self.flower_port = flower_port
        self.flower_address = flower_address
        self.ready_timeout = ready_timeout
        if self.workers < 1 or self.concurrency < 1:
            raise ConfigurationError("--workers and --concurrency must be at least 1")
        self.processes: list[Managed] = []
        self.notes: list[str] = []
        """Things worth telling the user (a port that moved, a partial cluster restarted)."""
        self.started_env: dict[str, Any] = {}
        """The salt and fingerprints of the credentials the workers were started with."""

    # ----- paths and recorded state ----------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.home / STATE_FILE

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    def recorded(self) -> tuple[dict[str, Any], list[Managed]]:
        """``cluster.json``'s contents and its processes (empty if there is none)."""
        try:
            data = json.loads(self.state_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}, []
        return data, [Managed.from_json(p) for p in data.get("processes", [])]

    def _record(self) -> None:
        processes = [p.to_json() for p in self.processes]
        size = {"workers": self.workers, "concurrency": self.concurrency}
        self._write_state(
            {"home": str(self.home), **size, "processes": processes, "stopping": False,
             "environment": self.started_env}
        )  # fmt: skip

    def _write_state(self, data: dict[str, Any]) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        # Owner only: it holds fingerprints of credentials (never a value).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.state_path)

    def info(self) -> ClusterInfo:
        """The summary of the cluster recorded under ``home``."""
        env = read_env_file(str(self.home))
        data, _ = self.recorded()
        return ClusterInfo(
            home=self.home_arg,
            broker_url=env.get("HOIST_BROKER_URL", ""),
            flower_url=env.get("HOIST_FLOWER_URL", ""),
            flower_user=env.get("HOIST_FLOWER_USER", FLOWER_USER),
            staging_dir=env.get("HOIST_STAGING_DIR", ""),
            store_uri=env.get("HOIST_STORE_URI", ""),
            workers=int(data.get("workers", self.workers)),
            concurrency=int(data.get("concurrency", self.concurrency)),
        )

    # ----- start -------------------------------------------------------------------------------

    def start(self, restart: bool = False) -> tuple[ClusterInfo, bool]:
        """Start the cluster, or find it already running; returns (summary, reused).

        A running cluster is reused, with a note when this caller's credentials
        differ from its workers'; with ``restart`` it is stopped and started
        again, with this caller's environment and size.

        Raises:
            ConfigurationError: redis-server is missing, or a port is taken.
            ClusterError: a process did not become ready (the message names its log).
        """
        redis_server = find_redis_server()  # before anything is created or started
        with home_lock(self.home):
            data, recorded = self.recorded()
            if restart and any(p.alive() for p in recorded):
                self._stop_recorded(data, recorded)
                self.notes.append("stopped the running cluster to start it with this environment")
                data, recorded = {}, []
            if recorded and all(p.alive() for p in recorded):
                if [data.get("workers"), data.get("concurrency")] != [
                    self.workers,
                    self.concurrency,
                ]:
                    self.notes.append(
                        "the running cluster keeps its size; `hoist up --restart` changes it"
                    )
                self._note_credentials(data.get("environment") or {})
                self.processes = recorded
                return self.info(), True
            if any(p.alive() for p in recorded):
                self.notes.append("part of the previous cluster had stopped; restarted it")
                stop_processes(recorded, str(self.home))
            self.state_path.unlink(missing_ok=True)
            try:
                self._start(redis_server)
            except BaseException:
                # Ctrl-C or a failed start: leave nothing running behind.
                self.stop(locked=True)
                raise
        return self.info(), False

    def _note_credentials(self, started: dict[str, Any]) -> None:
        """Say which credential variables the running workers have other values of than ours."""
        if not started:
            return  # started by a hoist that kept no fingerprints: nothing to compare
        ours = self._env(read_env_file(str(self.home)))  # what workers started now would get
        changed = changed_variables(started.get("fingerprints", {}), ours, started["salt"])
        if changed:
            self.notes.append(
                f"this shell's {', '.join(changed)} differ from what the running workers were "
                "started with; they keep theirs until `hoist up --restart` restarts them with yours"
            )

    def _start(self, redis_server: str) -> None:
        if not port_free(self.flower_port, self.flower_address or "0.0.0.0"):
            raise ConfigurationError(
                f"port {self.flower_port} on {self.flower_address} is in use (another Flower?); "
                "pass --flower-port with a free port"
            )
        for directory in ("logs", "redis", "staging", "store/artifacts"):
            (self.home / directory).mkdir(parents=True, exist_ok=True)
        os.chmod(self.home / "redis", 0o700)  # its AOF holds every artifact record
        env = self._write_env()
        salt = secrets.token_hex(16)  # a fresh one per start: fingerprints never compare across
        self.started_env = {"salt": salt, "fingerprints": fingerprints(self._env(env), salt)}
        password = urlsplit(env["HOIST_BROKER_URL"]).password or ""
        port = urlsplit(env["HOIST_BROKER_URL"]).port or 0

        redis_log = self.logs / "redis.log"
        self.processes.append(
            launch(
                "redis",
                redis_argv(redis_server, self.home / "redis", port, password),
                redis_log,
                self._env(),
            )
        )
        self._record()
        url = env["HOIST_BROKER_URL"]
        self._wait_ready({"redis": lambda: pings(url)})

        checks: dict[str, Callable[[], bool]] = {}
        for index in range(self.workers):
            log_path = self.logs / f"worker{index}.log"
            offset = log_size(log_path)  # logs are kept across runs: look past the old lines
            worker = launch(f"worker{index}", self._worker_argv(index), log_path, self._env(env))
            self.processes.append(worker)
            checks[worker.name] = logged(worker.log, offset, " ready.")
        flower = launch("flower", self._flower_argv(), self.logs / "flower.log", self._env(env))
        self.processes.append(flower)
        health = f"{http_url(probe_host(self.flower_address), self.flower_port)}/healthcheck"
        checks["flower"] = lambda: http_ok(health)
        self._record()
        self._wait_ready(checks)

    def _write_env(self) -> dict[str, str]:
        """Choose port and secrets (the recorded ones where there are any) and write ``env``."""
        previous = read_env_file(str(self.home))
        broker = urlsplit(previous.get("HOIST_BROKER_URL", ""))
        own = broker.hostname == LOOPBACK
        password = (own and broker.password) or secrets.token_urlsafe(32)
        port = self._redis_port(broker.port if own else None)
        flower_host = self.flower_address
        if flower_host in ("", "0.0.0.0", "::"):
            flower_host = socket.getfqdn()  # what another machine would type
        values = {
            **previous,  # keep what others added
            "HOIST_BROKER_URL": f"redis://:{password}@{LOOPBACK}:{port}/0",
            "HOIST_STAGING_DIR": str(self.home / "staging"),
            "HOIST_FLEET_KEY": previous.get("HOIST_FLEET_KEY") or new_fleet_key(),
            "HOIST_STORE_URI": store_uri(self.home),
            # The workers upload to the embedded store, and to what `--allow-store`
            # added now or before, nowhere else.
            ALLOWED_STORES_ENV: " ".join(
                dict.fromkeys(
                    [
                        store_uri(self.home),
                        *previous.get(ALLOWED_STORES_ENV, "").split(),
                        *self.allow_stores,
                    ]
                )
            ),
            "HOIST_FLOWER_URL": http_url(flower_host, self.flower_port),
            "HOIST_FLOWER_USER": previous.get("HOIST_FLOWER_USER") or FLOWER_USER,
            # token_urlsafe has no comma, which Flower would read as a second user.
            "HOIST_FLOWER_PASSWORD": previous.get("HOIST_FLOWER_PASSWORD")
            or secrets.token_urlsafe(24),
        }
        write_env_file(str(self.home), values)
        return values

    def _redis_port(self, recorded: int | None) -> int:
        if self.redis_port is not None:
            if not port_free(self.redis_port):
                raise ConfigurationError(
                    f"port {self.redis_port} on {LOOPBACK} is in use; choose another Redis port"
                )
            return self.redis_port
        if recorded and port_free(recorded):
            return recorded
        if recorded:
            self.notes.append(
                f"Redis's previous port {recorded} is taken now; moved it (re-read the env file)"
            )
        return free_port()

    def _worker_argv(self, index: int) -> list[str]:
        return [
            sys.executable, "-m", "hoist.cli", "worker",
            "--concurrency", str(self.concurrency),
            "--hostname", f"w{index}@%h",
        ]  # fmt: skip

    def _flower_argv(self) -> list[str]:
        # No credentials here: `hoist flower` passes them to Flower in its environment.
        return [
            sys.executable, "-m", "hoist.cli", "--home", str(self.home), "flower",
            "--address", self.flower_address,
            "--port", str(self.flower_port),
        ]  # fmt: skip

    def _env(self, values: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(environment())
        env.pop("HOIST_STATE_URL", None)  # records live in this cluster's Redis
        env.update(values or {})
        env["PYTHONUNBUFFERED"] = "1"  # logs as they happen, for readiness and for people
        return env

    def _wait_ready(self, checks: dict[str, Callable[[], bool]]) -> None:
        by_name = {p.name: p for p in self.processes}
        pending = dict(checks)
        deadline = time.monotonic() + self.ready_timeout
        while pending:
            for name, ready in list(pending.items()):
                process = by_name[name]
                if not process.alive():
                    raise ClusterError(
                        f"{name} exited with code {process.exit_code()} while starting; "
                        f"read {process.log}\n{log_tail(process.log)}"
                    )
                if ready():
                    del pending[name]
            if not pending:
                return
            if time.monotonic() >= deadline:
                name = next(iter(pending))
                log = by_name[name].log
                raise ClusterError(
                    f"{name} did not become ready within {self.ready_timeout:.0f} s; "
                    f"read {log}\n{log_tail(log)}"
                )
            time.sleep(0.1)

    # ----- run and stop ------------------------------------------------------------------------

    def serve(self, stop: threading.Event, report: Callable[[str], None]) -> bool:
        """Watch the processes (foreground mode) and report any that exits.

        Returns True when ``stop`` is set, False when the cluster stopped by
        other means (``hoist down`` from another shell, or Redis exiting).
        """
        warned: set[str] = set()
        while not stop.wait(1.0):
            if self.recorded()[0].get("stopping"):
                return False  # `hoist down` from another shell is stopping it
            redis_process = next(p for p in self.processes if p.name == "redis")
            if not redis_process.alive():
                report(f"Redis exited; read {redis_process.log}")
                return False
            for process in self.processes:
                if process.name not in warned and not process.alive():
                    warned.add(process.name)
                    code = process.exit_code()
                    report(f"{process.name} exited with code {code}; read {process.log}")
        return True

    def stop(self, hurry: threading.Event | None = None, locked: bool = False) -> None:
        """Stop this cluster's processes: workers, then Flower, then Redis."""
        with contextlib.nullcontext() if locked else home_lock(self.home):
            stop_processes(self.processes, str(self.home), hurry)
            # A `hoist up --restart` may have started the next cluster meanwhile: keep its record.
            ours = {p.pid for p in self.processes}
            if ours >= {p.pid for p in self.recorded()[1]}:
                self.state_path.unlink(missing_ok=True)

    def _stop_recorded(self, data: dict[str, Any], processes: list[Managed]) -> list[str]:
        """Stop the processes ``cluster.json`` lists (home lock held); the names that were alive."""
        if processes:
            # Tell a foreground `hoist up` that this is no crash to report.
            self._write_state({**data, "stopping": True})
        alive = [
            p.name for p in sorted(processes, key=lambda p: STOP_ORDER.get(p.name, 0)) if p.alive()
        ]
        stop_processes(processes, str(self.home))
        self.state_path.unlink(missing_ok=True)
        return alive


def stop_processes(
    processes: list[Managed], home: str, hurry: threading.Event | None = None
) -> None:
    """Stop ``processes`` in the safe order; ``hurry`` cuts the workers' grace short.

    Workers get SIGTERM (warm shutdown: running uploads finish) and up to
    :data:`WORKER_GRACE_SECONDS`, then SIGKILL to their whole process group
    (the pool children). Redis goes last, with ``SHUTDOWN SAVE`` so that the
    AOF is flushed, and SIGTERM if it cannot be reached.
    """
    workers = [p for p in processes if p.name.startswith("worker")]
    flower = [p for p in processes if p.name == "flower"]
    redis_servers = [p for p in processes if p.name == "redis"]
    for group, grace in ((workers, WORKER_GRACE_SECONDS), (flower, 10.0)):
        for process in group:
            process.send(signal.SIGTERM)
        for process in wait_gone(group, grace, hurry):
            process.send(signal.SIGKILL, group=True)
        wait_gone(group, 5.0)
    for process in redis_servers:
        if process.alive():
            stop_redis(process, read_env_file(home).get("HOIST_BROKER_URL", ""))
    for process in processes:
        if process.popen is not None:
            process.popen.wait()  # reap our own children


def stop_cluster(home: str | os.PathLike[str]) -> list[str]:
    """Stop the cluster recorded under ``home`` (``hoist down``); returns what was stopped.

    Example (tested in tests/test_cli_cluster.py):
        >>> stop_cluster(".hoist")  # doctest: +SKIP
        ['worker0', 'worker1', 'flower', 'redis']
    """
    cluster = LocalCluster(home, workers=1)
    with home_lock(cluster.home):
        return cluster._stop_recorded(*cluster.recorded())
