"""Redis cost: commands, bytes and Redis CPU per artifact, per pointer and per sharded commit.

Counts, not timings. Two private ``redis-server`` processes, one the broker
(``HOIST_BROKER_URL``) and one the state store (``HOIST_STATE_URL``), so the
two kinds of load are apart. Every client reaches them through
:class:`CountingProxy`, a loopback relay with one port per (role, server): the
rank's loggers (in this process) on two ports, the ``hoist worker`` fleet on
two others. The relay parses each request (RESP) and counts commands by name
(``EVALSHA`` by script) and bytes each way, so the rank's share is told from the
fleet's exactly. Each server's ``INFO commandstats`` (usec per call), ``INFO
stats`` and ``INFO cpu`` are read before and after each scenario; Redis times
its own commands, which the shared machine's load disturbs far less than wall
time would.

Scenarios, each divided by its count: 200 uploads of 64 KiB from one rank with
``overwrite=False`` (the default) and with ``overwrite=True`` (these travel in
batches); 200 pointers (``symlink_artifact``, each its own name) to uploaded
artifacts; 100 uploads of 1.06 MiB, just too large for a batch, so one task
each as a 2 GB shard has; sharded commits (``log_checkpoint_dir``, one such
shard per rank and step) from 4 and from 8 ranks, divided by their ranks. An
idle window measures what the fleet costs with nothing to do (Celery's
polling), per worker and second. The output ends with the artifacts per
second one Redis serves at half a core, and the sizing of a 1,024-GPU job
writing 2 TB every 10 minutes (docs/operations.md "Scale").
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import redis

from benchmarks.config import RunConfig
from benchmarks.files import KIB, write_source
from benchmarks.report import Figure, Report
from benchmarks.services import WORKER_ENVIRONMENT, Lab, private_redis
from benchmarks.small_files import write_small_files
from hoist.logger.levels import LogLevel
from hoist.logger.logger import ObjectStoreLogger
from hoist.protocol.messages import BATCH_FILE_BYTES
from hoist.state import scripts
from tests.services.workers import WorkerFleet

NAME = "redis_cost"
UPLOADS = 200
POINTERS = 200
STEPS = 8
SHARD_RANKS = (4, 8)
WORKERS, CONCURRENCY = 2, 2
IDLE_SECONDS = 5.0
QUIET_SECONDS = 1.5
"""After the last ``wait()``: the fleet acknowledges a message after its task returns."""
SERVERS = ("broker", "state")
ALONE_UPLOADS = 100
ALONE_BYTES = BATCH_FILE_BYTES + 64 * KIB
"""Just above what may travel in a batch: one task per file, as a 2 GB shard has."""

# The sizing's assumptions (docs/operations.md "Scale" states them).
JOB_RANKS = 1024
JOB_NODES = 128
SHARD_BYTES = 2 * 10**9
INTERVAL_SECONDS = 600
DRAIN_SECONDS = 300
"""A checkpoint must be stored within half the interval, so one outage does not stack two."""
UPLOAD_BYTES_PER_SECOND = 149 * 10**6
"""One S3 upload (1 GiB, verified) in 7.21 s: issue 17's measurement of 2026-12-01, loopback."""
HALF_CORE_USEC = 500_000.0

SCRIPT_NAMES = {
    hashlib.sha1(scripts.source(name).encode()).hexdigest(): name for name in scripts.NAMES
}
"""EVALSHA's first argument -> the hoist script's name (redis-py sends the SHA-1 of the text)."""


# ----- counting what crosses the relay --------------------------------------


def split_commands(buffer: bytes | bytearray) -> tuple[list[str], int]:
    """The complete Redis requests at the start of ``buffer``: their names and bytes used.

    A name is the command in lower case; ``EVALSHA`` gets the hoist script's
    name after it (``"evalsha claim"``), so each script is counted apart. An
    incomplete request at the end is left for the next read.

    Example:
        >>> split_commands(b"*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n*1\\r\\n$4\\r\\nPI")
        (['get'], 20)
        >>> split_commands(b"PING\\r\\n")
        (['ping'], 6)
    """
    names: list[str] = []
    used = 0
    end = len(buffer)
    while used < end:
        if buffer[used : used + 1] != b"*":  # an inline command (redis-cli, telnet)
            stop = buffer.find(b"\r\n", used)
            if stop < 0:
                break
            words = bytes(buffer[used:stop]).split()
            if words:
                names.append(words[0].decode(errors="replace").lower())
            used = stop + 2
            continue
        parsed = _one_array(buffer, used)
        if parsed is None:
            break
        arguments, used = parsed
        if arguments:
            names.append(_command_name(arguments))
    return names, used


def _one_array(buffer: bytes | bytearray, start: int) -> tuple[list[bytes], int] | None:
    """One RESP array of bulk strings from ``start``: its first two items and where it ends."""
    stop = buffer.find(b"\r\n", start)
    if stop < 0:
        return None
    count = int(buffer[start + 1 : stop])
    position = stop + 2
    items: list[bytes] = []
    for _ in range(count):
        stop = buffer.find(b"\r\n", position)
        if stop < 0:
            return None
        length = int(buffer[position + 1 : stop])
        if stop + 2 + length + 2 > len(buffer):
            return None
        if len(items) < 2:  # the command and, for EVALSHA, the script's SHA-1
            items.append(bytes(buffer[stop + 2 : stop + 2 + length]))
        position = stop + 2 + length + 2
    return items, position


def _command_name(arguments: list[bytes]) -> str:
    name = arguments[0].decode(errors="replace").lower()
    if name == "evalsha" and len(arguments) > 1:
        script = SCRIPT_NAMES.get(arguments[1].decode(errors="replace"), "(not hoist's)")
        return f"evalsha {script}"
    return name


@dataclass
class Traffic:
    """What one role sent one server through the relay: commands by name, bytes each way."""

    commands: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    received: int = 0

    def add(self, other: Traffic) -> None:
        self.commands.update(other.commands)
        self.sent += other.sent
        self.received += other.received

    @property
    def calls(self) -> int:
        return sum(self.commands.values())


class CountingProxy:
    """A loopback TCP relay in front of Redis servers that counts what crosses it.

    :meth:`url` opens a listening port for a (role, server) pair; each
    connection to it is relayed to the server, and what it carries is added
    to ``(role, server, label)`` where ``label`` is the scenario the benchmark
    set at that moment. It runs an asyncio loop in a daemon thread.
    """

    def __init__(self) -> None:
        self.label = "setup"
        self._counts: dict[tuple[str, str, str], Traffic] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.base_events.Server] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def url(self, role: str, server: str, upstream: str) -> str:
        """A ``redis://`` URL whose connections reach ``upstream`` counted as ``role``."""
        parts = urlsplit(upstream)
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(host, port)
            # Cancelled by close(); let through, asyncio's server callback reports it as an error.
            with suppress(asyncio.CancelledError):
                await asyncio.gather(
                    self._pipe(reader, up_writer, role, server, requests=True),
                    self._pipe(up_reader, writer, role, server, requests=False),
                )

        async def listen() -> asyncio.base_events.Server:
            return await asyncio.start_server(relay, "127.0.0.1", 0)

        listener = asyncio.run_coroutine_threadsafe(listen(), self._loop).result(10)
        self._servers.append(listener)
        local_port = listener.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{local_port}{parts.path or '/0'}"

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        role: str,
        server: str,
        requests: bool,
    ) -> None:
        pending = bytearray()
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                with self._lock:
                    traffic = self._counts.setdefault((role, server, self.label), Traffic())
                    if requests:
                        traffic.sent += len(chunk)
                        pending += chunk
                        names, used = split_commands(pending)
                        del pending[:used]
                        traffic.commands.update(names)
                    else:
                        traffic.received += len(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass  # one side went away: close the other below
        finally:
            writer.close()

    def traffic(self, role: str, server: str, labels: tuple[str, ...]) -> Traffic:
        """Everything ``role`` sent ``server`` under any of ``labels``."""
        total = Traffic()
        with self._lock:
            for (r, s, label), counted in self._counts.items():
                if r == role and s == server and label in labels:
                    total.add(counted)
        return total

    async def _shutdown(self) -> None:
        for listener in self._servers:
            listener.close()
        # Relays still open (the workers' idle connections) end here, while
        # the loop runs, rather than as abandoned coroutines at exit.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        """Stop listening, end every relayed connection and the loop's thread."""
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# ----- what each server says of itself --------------------------------------


@dataclass
class ServerReading:
    """A server's counters at one moment: per command class calls and usec, bytes, CPU."""

    calls: Counter[str]
    usec: Counter[str]
    net_in: int
    net_out: int
    cpu_usec: float

    @classmethod
    def of(cls, client: redis.Redis) -> ServerReading:
        """One ``INFO all`` (its own call is left out of the command classes)."""
        info = client.info("all")
        calls: Counter[str] = Counter()
        usec: Counter[str] = Counter()
        for key, value in info.items():
            if key.startswith("cmdstat_") and key != "cmdstat_info":
                name = key[len("cmdstat_") :].replace("|", " ")
                calls[name] = int(value["calls"])
                usec[name] = int(value["usec"])
        return cls(
            calls,
            usec,
            int(info["total_net_input_bytes"]),
            int(info["total_net_output_bytes"]),
            (float(info["used_cpu_user"]) + float(info["used_cpu_sys"])) * 1e6,
        )

    def since(self, before: ServerReading) -> ServerReading:
        return ServerReading(
            self.calls - before.calls,
            self.usec - before.usec,
            self.net_in - before.net_in,
            self.net_out - before.net_out,
            self.cpu_usec - before.cpu_usec,
        )

    def usec_per_call(self, command: str) -> float:
        """Redis' mean usec for ``command``'s class (``evalsha claim`` -> ``evalsha``)."""
        name = command.split(" ")[0]
        return self.usec[name] / self.calls[name] if self.calls[name] else 0.0


# ----- one scenario's cost ---------------------------------------------------


ROLES = ("rank", "wait", "fleet")
"""The rank's own calls; the rank's ``wait()`` polls (they depend on how long the
fleet takes, so they are apart); the workers' calls, broker plumbing included."""
COUNTED = ("rank", "fleet")
"""The roles a unit's commands, bytes and command usec count: not ``wait()``'s polls."""


@dataclass
class Cost:
    """What a scenario cost, per unit (an upload, a pointer, a commit), by server and role."""

    scenario: str
    units: int
    seconds: float
    traffic: dict[tuple[str, str], Traffic]
    servers: dict[str, ServerReading]
    background: dict[str, float] = field(default_factory=dict)
    """Each server's CPU usec per second with no client at all (its timers), left out."""

    def calls(self, server: str, role: str) -> float:
        return self.traffic[(server, role)].calls / self.units

    def bytes(self, server: str) -> tuple[float, float]:
        """Bytes to and from ``server`` per unit, rank and fleet (what the relay carried)."""
        parts = [self.traffic[(server, role)] for role in COUNTED]
        return (
            sum(t.sent for t in parts) / self.units,
            sum(t.received for t in parts) / self.units,
        )

    def command_usec(self, server: str, roles: tuple[str, ...] = COUNTED) -> float:
        """Redis usec per unit for the commands ``roles`` sent: their calls x usec per call."""
        reading = self.servers[server]
        total = 0.0
        for role in roles:
            for command, n in self.traffic[(server, role)].commands.items():
                total += n * reading.usec_per_call(command)
        return total / self.units

    def cpu_usec(self, server: str) -> float:
        """The server process' CPU per unit (``used_cpu_user + used_cpu_sys``), I/O included."""
        own = self.servers[server].cpu_usec - self.background.get(server, 0.0) * self.seconds
        return own / self.units

    def inside_scripts(self, server: str) -> Counter[str]:
        """Commands Redis ran that no client sent: those Lua scripts and EXEC ran."""
        sent: Counter[str] = Counter()
        for role in ROLES:
            for command, n in self.traffic[(server, role)].commands.items():
                sent[command.split(" ")[0]] += n
        return self.servers[server].calls - sent


@dataclass
class Rig:
    """The two servers, the relay, direct clients for readings, and the URLs each side uses."""

    proxy: CountingProxy
    direct: dict[str, redis.Redis]
    rank_urls: dict[str, str]
    fleet_urls: dict[str, str]
    background: dict[str, float] = field(default_factory=dict)

    def measure(
        self, scenario: str, units: int, act: Callable[[], None], loggers: list[ObjectStoreLogger]
    ) -> Cost:
        """Run ``act`` (the rank's calls), then every ``wait()``; return the cost per unit."""
        before = {name: ServerReading.of(client) for name, client in self.direct.items()}
        started = time.monotonic()
        self.proxy.label = f"{scenario}/rank"
        act()
        self.proxy.label = f"{scenario}/wait"
        for logger in loggers:
            logger.wait(poll_interval=0.05)
        time.sleep(QUIET_SECONDS)
        self.proxy.label = "between"
        seconds = time.monotonic() - started
        after = {name: ServerReading.of(client) for name, client in self.direct.items()}
        rank, wait = (f"{scenario}/rank",), (f"{scenario}/wait",)
        traffic: dict[tuple[str, str], Traffic] = {}
        for server in SERVERS:
            # The rank's sends to the broker leave from a background thread,
            # maybe after act() returned: all of them are the rank's.
            traffic[(server, "rank")] = self.proxy.traffic(
                "rank", server, rank + (wait if server == "broker" else ())
            )
            traffic[(server, "wait")] = (
                self.proxy.traffic("rank", server, wait) if server == "state" else Traffic()
            )
            traffic[(server, "fleet")] = self.proxy.traffic("fleet", server, rank + wait)
        servers = {name: after[name].since(before[name]) for name in SERVERS}
        return Cost(scenario, units, seconds, traffic, servers, self.background)

    def idle(self, seconds: float, workers: int = WORKERS) -> Cost:
        """``workers`` idle for ``seconds``: the cost per worker and second."""
        before = {name: ServerReading.of(client) for name, client in self.direct.items()}
        self.proxy.label = "idle"
        time.sleep(seconds)
        self.proxy.label = "between"
        after = {name: ServerReading.of(client) for name, client in self.direct.items()}
        traffic = {
            (server, role): self.proxy.traffic(role, server, ("idle",))
            for server in SERVERS
            for role in ROLES
        }
        servers = {name: after[name].since(before[name]) for name in SERVERS}
        # Units of one worker-second, so the per-unit figures read "per worker and second".
        units = max(1, round(seconds * workers))
        return Cost(
            "idle fleet, per worker and second", units, seconds, traffic, servers, self.background
        )


@contextmanager
def _rig(lab: Lab, stack: ExitStack) -> Iterator[tuple[Rig, WorkerFleet]]:
    """Two private Redis servers behind the relay, and a fleet that reaches them through it."""
    upstream = {
        name: stack.enter_context(private_redis(os.path.join(lab.root, f"redis-cost-{name}")))
        for name in SERVERS
    }
    proxy = CountingProxy()
    stack.callback(proxy.close)
    rig = Rig(
        proxy,
        {name: redis.Redis.from_url(url) for name, url in upstream.items()},
        {name: proxy.url("rank", name, url) for name, url in upstream.items()},
        {name: proxy.url("fleet", name, url) for name, url in upstream.items()},
    )
    fleet = WorkerFleet(
        Path(lab.root) / "workers-redis-cost",
        rig.fleet_urls["broker"],
        Path(lab.staging_root),
        count=WORKERS,
        concurrency=CONCURRENCY,
        env={
            **WORKER_ENVIRONMENT,
            "HOIST_FLEET_KEY": lab.fleet_key,
            "HOIST_STATE_URL": rig.fleet_urls["state"],
        },
        args=["--pool", lab.pool],
    )
    # Before any client: what each server costs doing nothing (serverCron,
    # 10 times a second), so that the figures below are what clients cost.
    quiet = rig.idle(IDLE_SECONDS, workers=0)
    rig.background = {name: quiet.servers[name].cpu_usec / quiet.seconds for name in SERVERS}
    fleet.start()
    stack.callback(fleet.stop)
    yield rig, fleet


def _logger(lab: Lab, rig: Rig, run_name: str, **ranks: int) -> ObjectStoreLogger:
    return ObjectStoreLogger(
        **lab.store_arguments("s3"),
        upload_staging_folder=lab.staging_root,
        broker_url=rig.rank_urls["broker"],
        state_url=rig.rank_urls["state"],
        run_name=run_name,
        fleet_key=lab.fleet_key,
        object_name="{run_name}/rank{rank}/{artifact_name}",
        **ranks,
    )


def _sharded(lab: Lab, rig: Rig, root: str, ranks: int, steps: int) -> Cost:
    """``steps`` commits of ``ranks`` ranks, one 64 KiB shard each; the cost per commit."""
    loggers = [
        _logger(lab, rig, f"cost-shards-{ranks}", rank=r, world_size=ranks) for r in range(ranks)
    ]
    rig.proxy.label = "setup"
    for logger in loggers:
        logger.check(store_check_timeout=30)
    shard_dirs = []
    for step in range(1, steps + 1):
        directory = os.path.join(root, f"shards-{ranks}", f"step-{step}")
        os.makedirs(directory)
        for r in range(ranks):
            write_source(os.path.join(directory, f"__{r}_0.distcp"), ALONE_BYTES)
        shard_dirs.append((step, directory))

    def commit() -> None:
        for step, directory in shard_dirs:
            for r, logger in enumerate(loggers):
                logger.log_checkpoint_dir(
                    step, directory, files=[os.path.join(directory, f"__{r}_0.distcp")]
                )

    cost = rig.measure(f"sharded commit, {ranks} ranks", steps, commit, loggers)
    for logger in loggers:
        logger.close()
    return cost


# ----- arithmetic on costs and the printed tables ----------------------------


@dataclass(frozen=True)
class Line:
    """One scenario's per-unit figures on one server, for the summary and the sizing."""

    calls_rank: float
    calls_fleet: float
    sent: float
    received: float
    usec: float
    cpu: float

    @classmethod
    def of(cls, cost: Cost, server: str) -> Line:
        sent, received = cost.bytes(server)
        return cls(
            cost.calls(server, "rank"),
            cost.calls(server, "fleet"),
            sent,
            received,
            cost.command_usec(server),
            cost.cpu_usec(server),
        )

    def combine(self, other: Line, a: float, b: float) -> Line:
        """``a * self + b * other``, field by field (for the per-rank and fixed parts)."""
        values = [a * x + b * y for x, y in zip(self.as_tuple(), other.as_tuple(), strict=True)]
        return Line(*values)

    def scaled(self, a: float) -> Line:
        return self.combine(self, a, 0.0)

    def as_tuple(self) -> tuple[float, ...]:
        return (self.calls_rank, self.calls_fleet, self.sent, self.received, self.usec, self.cpu)


SUMMARY_HEADER = (
    f"{'per unit':<30}{'Redis':<7}{'rank cmd':>9}{'fleet cmd':>10}{'B in':>8}{'B out':>8}"
    f"{'cmd usec':>9}{'CPU usec':>9}"
)


def _summary_row(label: str, server: str, line: Line) -> str:
    return (
        f"{label:<30}{server:<7}{line.calls_rank:>9.2f}{line.calls_fleet:>10.2f}"
        f"{line.sent:>8,.0f}{line.received:>8,.0f}{line.usec:>9.1f}{line.cpu:>9.0f}"
    )


def _detail(cost: Cost) -> list[str]:
    """Per command: rank, wait and fleet calls per unit, inside-script calls, usec per call."""
    lines = [
        f"{cost.scenario}: {cost.units} units in {cost.seconds:.1f} s",
        f"  {'Redis':<7}{'command':<32}{'rank':>8}{'wait':>8}{'fleet':>8}{'in Lua':>8}"
        f"{'usec/call':>11}",
    ]
    for server in SERVERS:
        commands: Counter[str] = Counter()
        for role in ROLES:
            commands.update(cost.traffic[(server, role)].commands)
        inside = cost.inside_scripts(server)
        reading = cost.servers[server]
        for command in sorted(set(commands) | {c for c, n in inside.items() if n > 0}):
            per = [cost.traffic[(server, role)].commands[command] / cost.units for role in ROLES]
            lua = inside[command] / cost.units if " " not in command else 0.0
            if max(per + [lua]) < 0.005:
                continue
            lines.append(
                f"  {server:<7}{command[:31]:<32}{per[0]:>8.2f}{per[1]:>8.2f}{per[2]:>8.2f}"
                f"{lua:>8.2f}{reading.usec_per_call(command):>11.2f}"
            )
    return lines


def _upload_run(
    lab: Lab, rig: Rig, key: str, files: list[str], overwrite: bool
) -> tuple[Cost, ObjectStoreLogger]:
    """One rank logs ``files``; the cost per upload, and the logger (still open)."""
    logger = _logger(lab, rig, "cost-" + key.replace(" ", "-").replace(",", ""))
    logger.check(store_check_timeout=30)  # the constructor's store check, untallied

    def upload() -> None:
        for path in files:
            logger.file_artifact(LogLevel.BATCH, os.path.basename(path), path, overwrite=overwrite)

    return rig.measure(key, len(files), upload, [logger]), logger


def run(lab: Lab, report: Report, cfg: RunConfig) -> None:
    uploads = cfg.count(UPLOADS)
    pointers = min(cfg.count(POINTERS), uploads)
    steps = STEPS if cfg.scale == 1 else 2
    root = os.path.join(lab.root, "redis-cost")
    (files,) = write_small_files(root, uploads, 1)
    os.makedirs(os.path.join(root, "alone"))
    alone = [
        write_source(os.path.join(root, "alone", f"a{i:04d}.bin"), ALONE_BYTES)
        for i in range(cfg.count(ALONE_UPLOADS))
    ]
    costs: dict[str, Cost] = {}
    with ExitStack() as stack, _rig(lab, stack) as (rig, fleet):
        costs["idle"] = rig.idle(IDLE_SECONDS)
        costs["upload, overwrite=False"], logger = _upload_run(
            lab, rig, "upload, overwrite=False", files, False
        )
        logger.close()
        costs["upload, overwrite=True"], logger = _upload_run(
            lab, rig, "upload, overwrite=True", files, True
        )

        def point() -> None:
            for i, path in enumerate(files[:pointers]):
                logger.symlink_artifact(os.path.basename(path), f"latest-{i}")

        costs["pointer"] = rig.measure("pointer", pointers, point, [logger])
        logger.close()
        costs["upload alone"], logger = _upload_run(lab, rig, "upload alone", alone, False)
        logger.close()
        for ranks in SHARD_RANKS:
            costs[f"commit{ranks}"] = _sharded(lab, rig, root, ranks, steps)
        log_tail = fleet.logs()[-2000:]
    shutil.rmtree(root)
    _report(report, costs, log_tail)


def _report(report: Report, costs: dict[str, Cost], log_tail: str) -> None:
    lines: dict[str, dict[str, Line]] = {
        key: {server: Line.of(cost, server) for server in SERVERS} for key, cost in costs.items()
    }
    small, large = SHARD_RANKS
    # A commit per rank: its shard's upload, its registration, and its share
    # of the commit task (waiting for the shards, the manifest, the pointer).
    # Spread over the ranks of the larger commit, so that the sizing for
    # 1,024 ranks counts the fixed part 1,024 / large times: an upper bound.
    lines["commit per rank"] = {
        server: lines[f"commit{large}"][server].scaled(1 / large) for server in SERVERS
    }
    lines["commit beyond uploads"] = {
        server: lines["commit per rank"][server].combine(lines["upload alone"][server], 1, -1)
        for server in SERVERS
    }
    labels = {
        "upload, overwrite=False": "upload (overwrite=False)",
        "upload, overwrite=True": "upload (overwrite=True)",
        "upload alone": "upload, 1.06 MiB, a task each",
        "pointer": "pointer",
        f"commit{small}": f"commit, {small} ranks x 1 shard",
        f"commit{large}": f"commit, {large} ranks x 1 shard",
        "commit per rank": f"  per rank, of {large}",
        "commit beyond uploads": "  per rank, beyond its upload",
        "idle": "idle, per worker and second",
    }
    out = [SUMMARY_HEADER, "-" * len(SUMMARY_HEADER)]
    for key, label in labels.items():
        for i, server in enumerate(SERVERS):
            out.append(_summary_row(label if i == 0 else "", server, lines[key][server]))
    print("\n".join(out))
    for key in labels:
        if key in costs:
            print("\n" + "\n".join(_detail(costs[key])))
    derived = [
        "with no client, each server's own timers use "
        + ", ".join(f"{s} {costs['idle'].background.get(s, 0.0):,.0f}" for s in SERVERS)
        + " CPU usec/s, left out of the CPU usec above",
        *_derive(lines),
    ]
    print("\n" + "\n".join(derived))
    for key, label in labels.items():
        both = lines[key]
        report.add(
            Figure(
                NAME,
                f"{label.strip()}: Redis commands (broker + state, rank + fleet)",
                "commands",
                sum(both[s].calls_rank + both[s].calls_fleet for s in SERVERS),
                note=", ".join(
                    f"{s}: {both[s].sent:,.0f} B in, {both[s].received:,.0f} B out, "
                    f"{both[s].usec:.1f} cmd usec, {both[s].cpu:.0f} CPU usec"
                    for s in SERVERS
                ),
            )
        )
    for line in derived:
        report.note(NAME, line)
    report.details[NAME] = {
        "lines": {k: {s: v.__dict__ for s, v in by.items()} for k, by in lines.items()},
        "commands": {
            key: {
                f"{server}/{role}": dict(cost.traffic[(server, role)].commands)
                for server in SERVERS
                for role in ROLES
            }
            for key, cost in costs.items()
        },
        "usec_per_call": {
            key: {
                server: {
                    c: cost.servers[server].usec_per_call(c) for c in cost.servers[server].calls
                }
                for server in SERVERS
            }
            for key, cost in costs.items()
        },
        "fleet_log_tail": log_tail,
    }


def _derive(lines: dict[str, dict[str, Line]]) -> list[str]:
    """Artifacts per second at half a core, and the 1,024-GPU job's fleet, from the counts."""
    out = []
    for key, kind in (("upload, overwrite=False", "batched"), ("upload alone", "a task each")):
        upload = lines[key]
        for what, pick in (("cmd usec", "usec"), ("process CPU", "cpu")):
            one = sum(getattr(upload[s], pick) for s in SERVERS)
            apart = min(HALF_CORE_USEC / max(getattr(upload[s], pick), 1e-9) for s in SERVERS)
            out.append(
                f"uploads/s at half a core ({kind}), by {what}: one Redis for both "
                f"{HALF_CORE_USEC / one:,.0f}; broker and state apart {apart:,.0f}"
            )
    per_rank = lines["commit per rank"]
    idle = lines["idle"]
    slots = math.ceil(JOB_RANKS * SHARD_BYTES / (UPLOAD_BYTES_PER_SECOND * DRAIN_SECONDS))
    node_seconds = JOB_RANKS // JOB_NODES * SHARD_BYTES / UPLOAD_BYTES_PER_SECOND
    out.append(
        f"job: {JOB_RANKS} ranks x {SHARD_BYTES / 1e9:g} GB every {INTERVAL_SECONDS} s = "
        f"{JOB_RANKS * SHARD_BYTES / INTERVAL_SECONDS / 1e9:.2f} GB/s to the store on average; "
        f"stored in {DRAIN_SECONDS} s needs {slots} uploads at "
        f"{UPLOAD_BYTES_PER_SECOND / 1e6:.0f} MB/s; one worker per node takes {node_seconds:.0f} s"
    )
    workers = max(slots, JOB_NODES)
    for server in SERVERS:
        step = per_rank[server].scaled(JOB_RANKS)
        calls = step.calls_rank + step.calls_fleet
        idle_calls = idle[server].calls_fleet * workers
        idle_cpu = idle[server].cpu * workers
        out.append(
            f"job, {server} Redis per checkpoint: {calls:,.0f} commands, "
            f"{(step.sent + step.received) / 1e6:.2f} MB, {step.cpu / 1e6:.2f} CPU s "
            f"({step.cpu / INTERVAL_SECONDS / 1e4:.3f}% of a core over {INTERVAL_SECONDS} s); "
            f"{workers} idle workers add {idle_calls:,.0f} commands/s, "
            f"{idle_cpu / 1e4:.1f}% of a core"
        )
    return out
