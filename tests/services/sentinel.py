"""A Redis master, its replica and three sentinels on loopback (Debian's ``redis-server``).

The master and the replica are :class:`~tests.services.redis.RedisServer`\\ s
(with a password, the replica following the master); each sentinel is
``redis-server sentinel.conf --sentinel`` with a password of its own. With
``down-after-milliseconds 1000``, ``failover-timeout 5000`` and a quorum of
two, a killed master's replica is promoted about 2.3 s later.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis as redis_client

from tests.services.process import ServerProcess, free_port
from tests.services.redis import RedisServer
from tests.services.tls import TlsFiles

MASTER_NAME = "hoist"
PASSWORD = "master-secret-0123"
"""The master's (and replica's) ``requirepass``: the password in the sentinel URL."""
SENTINEL_PASSWORD = "sentinel-secret-4567"
"""The sentinels' own ``requirepass``: ``HOIST_SENTINEL_PASSWORD``."""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


class IsolatedHost:
    """A network namespace linked to this one by a veth pair, to cut a server off.

    A server started in it (:attr:`wrapper`) is reached at :attr:`address`;
    :meth:`cut` takes the link down, so the server lives on but nobody reaches
    it and nothing it sent is answered: a partition, not a crash. Needs root.
    """

    def __init__(self) -> None:
        tag = str(os.getpid() % 100_000)
        self.ns = f"hoist-sentinel-{tag}"
        self.outer, self.inner = f"hs{tag}o", f"hs{tag}i"  # at most 15 characters
        subnet = f"10.234.{os.getpid() % 250}"
        self.local, self.address = f"{subnet}.1", f"{subnet}.2"
        self.wrapper = ["ip", "netns", "exec", self.ns]

    @staticmethod
    def refused() -> str | None:
        """Why namespaces cannot be made here, or None."""
        if os.geteuid() != 0 or shutil.which("ip") is None:
            return "network namespaces need root and `ip` (iproute2)"
        return None

    def create(self) -> None:
        self.delete()  # a namespace a killed run left behind
        _ip("netns", "add", self.ns)
        _ip("-n", self.ns, "link", "set", "lo", "up")
        _ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner, "netns", self.ns)
        _ip("addr", "add", f"{self.local}/24", "dev", self.outer)
        _ip("-n", self.ns, "addr", "add", f"{self.address}/24", "dev", self.inner)
        _ip("link", "set", self.outer, "up")
        _ip("-n", self.ns, "link", "set", self.inner, "up")

    def cut(self) -> None:
        _ip("link", "set", self.outer, "down")

    def delete(self) -> None:
        for args in (["netns", "del", self.ns], ["link", "del", self.outer]):
            subprocess.run(["ip", *args], capture_output=True, timeout=30)


class SentinelGroup:
    """A master, a replica and ``sentinels`` sentinels watching them under ``hoist``.

    Parameters:
        workdir: where each server keeps its data, configuration and log.
        sentinels: how many sentinels (the quorum is two).
        down_after_ms: ``down-after-milliseconds``.
        failover_timeout_ms: ``failover-timeout``.
        tls: serve TLS only, everywhere (``tls-replication yes``), with these files.
        master_host: run the master in this namespace, to cut it off rather than kill it.
    """

    def __init__(
        self,
        workdir: Path,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        tls: TlsFiles | None = None,
        master_host: IsolatedHost | None = None,
    ) -> None:
        self.tls = tls
        self.master_host = master_host
        host = master_host.address if master_host else "127.0.0.1"
        if master_host:
            master_host.create()
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing: run `bash deploy/bootstrap.sh test`")
        # No 5 s wait for more replicas before the first sync (Redis 7's default).
        auth = [
            "--requirepass",
            PASSWORD,
            "--masterauth",
            PASSWORD,
            "--repl-diskless-sync-delay",
            "0",
            *self._tls_args(),
        ]
        self.master = self._redis(workdir / "master", auth, host)
        replica_args = ["--replicaof", host, str(self.master.port), "--replica-announce-ip"]
        self.replica = self._redis(workdir / "replica", [*auth, *replica_args, "127.0.0.1"])
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        # Each sentinel is told its peers and the replica up front: found through
        # the master's hello channel instead, they take about 7 s to know each other.
        ids = [f"{index + 1:040x}" for index in range(sentinels)]
        self.sentinels = []
        for index, port in enumerate(self.sentinel_ports):
            folder = workdir / f"sentinel{index}"
            folder.mkdir(parents=True, exist_ok=True)
            config = folder / "sentinel.conf"
            config.write_text(
                "\n".join(
                    [
                        *(f"{option[2:]} {value}" for option, value in self._listen(port)),
                        "bind 127.0.0.1",
                        f"dir {folder}",
                        f"requirepass {SENTINEL_PASSWORD}",
                        f"sentinel sentinel-pass {SENTINEL_PASSWORD}",
                        f"sentinel monitor {MASTER_NAME} {host} {self.master.port} 2",
                        f"sentinel auth-pass {MASTER_NAME} {PASSWORD}",
                        f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}",
                        f"sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}",
                        f"sentinel parallel-syncs {MASTER_NAME} 1",
                        f"sentinel myid {ids[index]}",
                        f"sentinel known-replica {MASTER_NAME} 127.0.0.1 {self.replica.port}",
                        *(
                            f"sentinel known-sentinel {MASTER_NAME} 127.0.0.1 {peer} {ids[other]}"
                            for other, peer in enumerate(self.sentinel_ports)
                            if other != index
                        ),
                        "",
                    ]
                )
            )
            self.sentinels.append(
                ServerProcess(
                    f"redis-sentinel {index}",
                    [binary, str(config), "--sentinel"],
                    folder / "sentinel.log",
                    lambda port=port: self._answers(port),
                )
            )

    def _listen(self, port: int) -> list[tuple[str, str]]:
        """Where a server listens, and with TLS how: option and value pairs."""
        if self.tls is None:
            return [("--port", str(port))]
        return [("--port", "0"), ("--tls-port", str(port)), *self._tls_pairs()]

    def _tls_pairs(self) -> list[tuple[str, str]]:
        assert self.tls is not None
        return [
            ("--tls-cert-file", str(self.tls.cert)),
            ("--tls-key-file", str(self.tls.key)),
            ("--tls-ca-cert-file", str(self.tls.ca)),
            ("--tls-auth-clients", "no"),
            ("--tls-replication", "yes"),
        ]

    def _tls_args(self) -> list[str]:
        return [part for pair in self._tls_pairs() for part in pair] if self.tls else []

    @property
    def _query(self) -> str:
        return f"?ssl_ca_certs={self.tls.ca}" if self.tls else ""

    def _redis(self, workdir: Path, args: list[str], host: str = "127.0.0.1") -> RedisServer:
        port = free_port()
        if self.tls:  # after RedisServer's own --port, so these win
            args = [*args, "--port", "0", "--tls-port", str(port)]
        if host != "127.0.0.1":
            args = [*args, "--bind", host]  # after RedisServer's own --bind
        scheme = "rediss" if self.tls else "redis"
        url = f"{scheme}://:{PASSWORD}@{host}:{port}/0{self._query}"
        server = RedisServer(workdir, port, args, url=url)
        if host != "127.0.0.1" and self.master_host:
            server.process.argv = [*self.master_host.wrapper, *server.process.argv]
        return server

    @property
    def url(self) -> str:
        """The sentinel URL of the group (the master's password in it, the DB at the end)."""
        parts = [f"sentinel://:{PASSWORD}@127.0.0.1:{port}" for port in self.sentinel_ports]
        return ";".join(parts) + "/0" + self._query

    @property
    def env(self) -> dict[str, str]:
        """What every hoist process needs beside the URL."""
        return {"HOIST_SENTINEL_PASSWORD": SENTINEL_PASSWORD}

    @property
    def servers(self) -> list[ServerProcess]:
        """Every process of the group, for logs attached to a failing test."""
        return [self.master.process, self.replica.process, *self.sentinels]

    def sentinel(self, index: int = 0) -> redis_client.Redis:
        tls: dict[str, Any] = {"ssl": True, "ssl_ca_certs": str(self.tls.ca)} if self.tls else {}
        return redis_client.Redis(
            "127.0.0.1",
            self.sentinel_ports[index],
            password=SENTINEL_PASSWORD,
            decode_responses=True,
            socket_timeout=1,
            **tls,
        )

    def _answers(self, port: int) -> bool:
        try:
            return bool(self.sentinel(self.sentinel_ports.index(port)).ping())
        except redis_client.RedisError:
            return False

    def _sees_all(self, index: int) -> bool:
        """Sentinel ``index`` sees the replica and every other sentinel."""
        try:
            state = self.sentinel(index).sentinel_master(MASTER_NAME)
        except redis_client.RedisError:
            return False
        others = len(self.sentinel_ports) - 1
        return int(state["num-slaves"]) >= 1 and int(state["num-other-sentinels"]) >= others

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers names it."""
        for index in range(len(self.sentinel_ports)):
            try:
                address = self.sentinel(index).sentinel_get_master_addr_by_name(MASTER_NAME)
            except redis_client.RedisError:
                continue
            if address:
                return int(address[1])
        return None

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        deadline = time.monotonic() + 30
        replica = redis_client.Redis.from_url(self.replica.url, decode_responses=True)
        while replica.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync with the master in 30 s")
            time.sleep(0.05)
        for sentinel in self.sentinels:
            sentinel.start()
        # Each sentinel learns of the others through the master's hello channel
        # (every 2 s); a failover needs the quorum to know each other.
        for index, sentinel in enumerate(self.sentinels):
            deadline = time.monotonic() + 30
            while not self._sees_all(index):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{sentinel.name} did not see its peers in 30 s")
                time.sleep(0.05)

    def kill_master(self) -> None:
        """SIGKILL the master: no shutdown, no AOF flush, connections cut."""
        self.master.process.stop(signal.SIGKILL)

    def cut_master(self) -> None:
        """Take the master's link down: it runs on, unreachable, and sends no reset."""
        assert self.master_host is not None, "the master runs in no namespace of its own"
        self.master_host.cut()

    def wait_promoted(self, timeout: float = 30.0) -> float:
        """Wait until the sentinels name the replica the master; return when (monotonic)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.master_port() == self.replica.port:
                role = redis_client.Redis.from_url(self.replica.url).role()[0]
                if role in (b"master", "master"):
                    return time.monotonic()
            time.sleep(0.02)
        raise TimeoutError(f"the replica was not promoted in {timeout} s")

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        self.replica.stop()
        self.master.stop()
        if self.master_host:
            self.master_host.delete()
