"""``hoist up``/``hoist down``: the embedded default cluster on this machine.

A private ``redis-server`` (loopback only, password, AOF persistence), N
``hoist worker`` processes and Flower (basic auth), all under one home
directory (``--home``, default ``.hoist``)::

    <home>/env            the variables every hoist command and a shell need (0600)
    <home>/cluster.json   pids of the running processes, for `hoist down`
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
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from hoist.errors import ConfigurationError, HoistError
from hoist.protocol.urls import mask_url
from hoist.stores.allowed import ALLOWED_STORES_ENV
from hoist.workers.envfile import env_path, read_env_file, write_env_file
from hoist.workers.flower import DEFAULT_ADDRESS, DEFAULT_PORT

LOOPBACK = "127.0.0.1"
FLOWER_USER = "hoist"
STATE_FILE = "cluster.json"
WORKER_GRACE_SECONDS = 30.0
REDIS_GRACE_SECONDS = 30.0
READY_TIMEOUT_SECONDS = 60.0
DEFAULT_CONCURRENCY = 2
"""Uploads are I/O-bound: two per worker keep a core busy while one waits on the network."""

REDIS_MISSING = (
    "redis-server is not installed; install it with `apt-get install redis-server` "
    "(Debian/Ubuntu) or point HOIST_BROKER_URL at a Redis you run"
)


class ClusterError(HoistError):
    """A process of the local cluster failed to start or to stop; the message names its log."""


# ----- small helpers -------------------------------------------------------------------------


def store_uri(home: str | os.PathLike[str]) -> str:
    """The embedded default store: Libcloud's ``local`` provider under ``<home>/store``.

    Example:
        >>> store_uri("/srv/hoist")
        'file:///srv/hoist/store/artifacts'
    """
    return f"file://{os.path.abspath(os.path.join(home, 'store', 'artifacts'))}"


def source_line(home: str) -> str:
    """The shell line that exports the cluster's variables.

    Example:
        >>> source_line(".hoist")
        'set -a; . ./.hoist/env; set +a'
    """
    path = env_path(home)
    # `.` looks a name without a slash up on PATH, not in the current directory.
    if not os.path.isabs(path) and not path.startswith(("./", "../")):
        path = f"./{path}"
    return f"set -a; . {path}; set +a"


def find_redis_server() -> str:
    """The ``redis-server`` binary on PATH.

    Raises:
        ConfigurationError: it is not installed.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigurationError(REDIS_MISSING)
    return binary


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server could listen on ``host:port`` now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def probe_host(address: str) -> str:
    """Where to reach a server listening on ``address`` from this machine."""
    if address in ("", "0.0.0.0"):
        return LOOPBACK
    if address == "::":
        return "::1"
    return address


def http_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


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


# ----- processes ------------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3… of ``/proc/<pid>/stat`` (state first), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    except OSError:
        return []  # exists, unreadable: treat as alive, identity unknown


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell pid reuse apart."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


@dataclass
class Managed:
    """One process of the cluster, as recorded in ``cluster.json``.

    Parameters:
        name: ``redis``, ``worker<i>`` or ``flower``.
        pid: its pid; it leads a session and process group of its own.
        started: :func:`start_ticks` at launch, or None where /proc is absent.
        log: its log file.
    """

    name: str
    pid: int
    started: int | None
    log: str
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "started": self.started, "log": self.log}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Managed:
        return cls(data["name"], int(data["pid"]), data.get("started"), data["log"])

    def alive(self) -> bool:
        """Running, and still the process we started (not a zombie, not a reused pid)."""
        if self.popen is not None:
            return self.popen.poll() is None
        if os.path.isdir("/proc"):
            fields = _proc_stat(self.pid)
            if fields is None or (fields and fields[0] in ("Z", "X")):
                return False
            return self.started is None or start_ticks(self.pid) in (None, self.started)
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def exit_code(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def send(self, sig: int, group: bool = False) -> None:
        """Send ``sig`` to the process (or its whole group); gone processes are ignored."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)


def wait_gone(
    processes: list[Managed], timeout: float, hurry: threading.Event | None = None
) -> list[Managed]:
    """Wait until ``processes`` exit, at most ``timeout`` s; return those still running."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in processes if p.alive()]
        if not left or time.monotonic() >= deadline or (hurry is not None and hurry.is_set()):
            return left
        time.sleep(0.1)


def launch(
    name: str,
    argv: list[str],
    log_path: Path,
    env: dict[str, str],
) -> Managed:
    """Start ``argv`` in a new session with output appended to ``log_path``."""
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            # Its own session: a terminal's Ctrl-C reaches `hoist up` only, which
            # stops everything in order, and --detach outlives the terminal.
            start_new_session=True,
        )
    return Managed(name, popen.pid, start_ticks(popen.pid), str(log_path), popen)


def _logged(path: str, offset: int, needle: str) -> Callable[[], bool]:
    """A readiness check: has ``needle`` been written to ``path`` past ``offset``?"""

    def check() -> bool:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return needle.encode() in f.read()
        except FileNotFoundError:
            return False

    return check


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


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

    Example:
        >>> cluster = LocalCluster(".hoist", workers=2)
        >>> info, reused = cluster.start()    # returns once everything is ready
        >>> print(info.flower_url)
        http://127.0.0.1:5555
        >>> cluster.stop()
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

    def _record(self, stopping: bool = False) -> None:
        data = {
            "home": str(self.home),
            "workers": self.workers,
            "concurrency": self.concurrency,
            "processes": [p.to_json() for p in self.processes],
            "stopping": stopping,
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
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

    def start(self) -> tuple[ClusterInfo, bool]:
        """Start the cluster, or find it already running; returns (summary, reused).

        Raises:
            ConfigurationError: redis-server is missing, or a port is taken.
            ClusterError: a process did not become ready (the message names its log).
        """
        redis_server = find_redis_server()  # before anything is created or started
        with home_lock(self.home):
            data, recorded = self.recorded()
            if recorded and all(p.alive() for p in recorded):
                if (data.get("workers"), data.get("concurrency")) != (
                    self.workers,
                    self.concurrency,
                ):
                    self.notes.append(
                        "the running cluster keeps its size; `hoist down` first to change it"
                    )
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
        password = urlsplit(env["HOIST_BROKER_URL"]).password or ""
        port = urlsplit(env["HOIST_BROKER_URL"]).port or 0

        redis_log = self.logs / "redis.log"
        self.processes.append(
            launch("redis", self._redis_argv(redis_server, port, password), redis_log, self._env())
        )
        self._record()
        url = env["HOIST_BROKER_URL"]
        self._wait_ready({"redis": lambda: _pings(url)})

        checks: dict[str, Callable[[], bool]] = {}
        for index in range(self.workers):
            log_path = self.logs / f"worker{index}.log"
            offset = _log_size(log_path)  # logs are kept across runs: look past the old lines
            worker = launch(f"worker{index}", self._worker_argv(index), log_path, self._env(env))
            self.processes.append(worker)
            checks[worker.name] = _logged(worker.log, offset, " ready.")
        flower = launch("flower", self._flower_argv(), self.logs / "flower.log", self._env(env))
        self.processes.append(flower)
        health = f"{http_url(probe_host(self.flower_address), self.flower_port)}/healthcheck"
        checks["flower"] = lambda: _http_ok(health)
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
            "HOIST_FLEET_KEY": previous.get("HOIST_FLEET_KEY") or _new_fleet_key(),
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

    def _redis_argv(self, binary: str, port: int, password: str) -> list[str]:
        # The password goes in a file only we can read: a command line is public in `ps`.
        conf = self.home / "redis" / "redis.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f'# written by `hoist up`\nrequirepass "{password}"\n')
        return [
            binary, str(conf),
            "--bind", LOOPBACK,
            "--port", str(port),
            "--protected-mode", "yes",
            "--dir", str(self.home / "redis"),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--daemonize", "no",
        ]  # fmt: skip

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
        env = dict(os.environ)
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
        if locked:
            stop_processes(self.processes, str(self.home), hurry)
        else:
            with home_lock(self.home):
                stop_processes(self.processes, str(self.home), hurry)
        self.state_path.unlink(missing_ok=True)


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
            _stop_redis(process, read_env_file(home).get("HOIST_BROKER_URL", ""))
    for process in processes:
        if process.popen is not None:
            process.popen.wait()  # reap our own children


def _stop_order(process: Managed) -> int:
    return {"flower": 1, "redis": 2}.get(process.name, 0)


def _stop_redis(process: Managed, url: str) -> None:
    # redis-py's shutdown() returns quietly when it cannot connect, so ask only
    # a server that answers; one still starting (or unreachable) gets SIGTERM.
    if _pings(url):
        with contextlib.suppress(redis.RedisError):
            redis.Redis.from_url(url, socket_timeout=5).shutdown(save=True)
        wait_gone([process], 10.0)
    process.send(signal.SIGTERM)  # Redis flushes the AOF on SIGTERM too
    for left in wait_gone([process], REDIS_GRACE_SECONDS):
        left.send(signal.SIGKILL)


def stop_cluster(home: str | os.PathLike[str]) -> list[str]:
    """Stop the cluster recorded under ``home`` (``hoist down``); returns what was stopped.

    Example:
        >>> stop_cluster(".hoist")
        ['worker0', 'worker1', 'flower', 'redis']
    """
    cluster = LocalCluster(home, workers=1)
    with home_lock(cluster.home):
        data, processes = cluster.recorded()
        if processes:
            # Tell a foreground `hoist up` that this is no crash to report.
            cluster.workers, cluster.concurrency = data["workers"], data["concurrency"]
            cluster.processes = processes
            cluster._record(stopping=True)
        alive = [p.name for p in sorted(processes, key=_stop_order) if p.alive()]
        stop_processes(processes, str(cluster.home))
        cluster.state_path.unlink(missing_ok=True)
    return alive


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return int(response.status) == 200
    except (OSError, urllib.error.URLError):
        return False


def _new_fleet_key() -> str:
    from hoist.keys import new_fleet_key

    return new_fleet_key()


def summary_rows(info: ClusterInfo, detached: bool) -> list[tuple[str, str]]:
    """The rows of the summary ``hoist up`` prints (no secret in them)."""
    home = info.home
    rows = [
        ("broker", f"{mask_url(info.broker_url)}  (full URL in {info.env_file})"),
        ("Flower", info.flower_url),
        (
            "Flower login",
            f"user {info.flower_user}, password in {info.env_file} (HOIST_FLOWER_PASSWORD)",
        ),
        ("staging", info.staging_dir),
        ("store", info.store_uri),
        ("workers", f"{info.workers} × concurrency {info.concurrency}"),
        ("logs", os.path.join(home, "logs")),
        ("use from a shell", source_line(home)),
    ]
    home_option = "" if home == ".hoist" else f" --home {home}"
    stop = f"hoist{home_option} down" if detached else "Ctrl-C here, or `hoist down`"
    rows.append(("stop", stop))
    return rows


def log_tail(path: str, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
