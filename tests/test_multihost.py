"""Three "hosts" as network namespaces: Redis on one, two workers on another, two ranks on a third.

The test makes its own namespaces and veth pairs (addresses 10.231.x.y exist only inside
them) and sends traffic only to those addresses: Redis listens on its namespace's two
addresses with a password, workers reach it over one link, ranks over the other. The
namespaces share this machine's filesystem, as nodes share a staging filesystem, so the
staging root and the Libcloud ``local`` store are ordinary directories. Midway, the workers'
link goes down for a few seconds while the ranks keep logging; every artifact must still land.

Needs root (``ip netns``); skips with the reason where the kernel or the user cannot.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.services.process import ServerProcess
from tests.services.workers import WorkerFleet, clean_environment, wait_until

REPO = Path(__file__).resolve().parent.parent
KiB = 1024
PORT = 6379
WORKER_LINK = ("10.231.1.1", "10.231.1.2")  # (redis side, workers side)
RANK_LINK = ("10.231.2.1", "10.231.2.2")  # (redis side, ranks side)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@dataclass
class Hosts:
    """Three namespaces: ``redis`` linked to ``workers`` and to ``ranks`` by veth pairs."""

    tag: str
    made: list[str] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"hoist-{self.tag}-{role}"

    def exec(self, role: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(role)]

    @property
    def worker_link(self) -> str:
        return f"h{self.tag}w"  # the workers' end; at most 15 characters

    def create(self) -> None:
        for role in ("redis", "workers", "ranks"):
            ip("netns", "add", self.ns(role))
            self.made.append(self.ns(role))
            ip("-n", self.ns(role), "link", "set", "lo", "up")
        for role, (redis_addr, peer_addr), end in (
            ("workers", WORKER_LINK, self.worker_link),
            ("ranks", RANK_LINK, f"h{self.tag}r"),
        ):
            hub_end = end + "h"
            ip("link", "add", end, "netns", self.ns(role), "type", "veth",
               "peer", "name", hub_end, "netns", self.ns("redis"))  # fmt: skip
            ip("-n", self.ns("redis"), "addr", "add", f"{redis_addr}/24", "dev", hub_end)
            ip("-n", self.ns(role), "addr", "add", f"{peer_addr}/24", "dev", end)
            ip("-n", self.ns("redis"), "link", "set", hub_end, "up")
            ip("-n", self.ns(role), "link", "set", end, "up")

    def set_workers_link(self, state: str) -> None:
        ip("-n", self.ns("workers"), "link", "set", self.worker_link, state)

    def delete(self) -> None:
        for name in reversed(self.made):  # deleting a namespace deletes its veth ends
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        self.made.clear()


def namespaces_refused() -> str | None:
    """Why this machine cannot run the test, or None."""
    if shutil.which("ip") is None:
        return "the `ip` command is missing (Debian package iproute2)"
    if shutil.which("redis-server") is None:
        return "redis-server is missing (run `bash deploy/bootstrap.sh test`)"
    if os.geteuid() != 0:
        return "network namespaces need root (`ip netns add` as uid 0)"
    probe = f"hoist-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"the kernel refused a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    reason = namespaces_refused()
    if reason:
        print(f"\nmulti-host test skipped: {reason}")
        pytest.skip(reason)
    made = Hosts(tag=str(os.getpid() % 100000))
    try:
        made.create()
        yield made
    finally:
        made.delete()


@pytest.fixture
def cluster(hosts: Hosts, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Redis in ``redis`` (its own addresses only, a password), two workers in ``workers``."""
    password = secrets.token_hex(16)
    data = tmp_path / "redis"
    data.mkdir()
    conf = data / "redis.conf"
    conf.write_text(
        f"bind {WORKER_LINK[0]} {RANK_LINK[0]}\nport {PORT}\nrequirepass {password}\n"
        f'dir {data}\nappendonly yes\nappendfsync everysec\nsave ""\n'
    )
    conf.chmod(0o600)
    log = data / "redis.log"
    redis_proc = ServerProcess(
        "redis-server in its namespace",
        [*hosts.exec("redis"), "redis-server", str(conf)],
        log,
        lambda: log.exists() and "Ready to accept connections" in log.read_text(errors="replace"),
    )
    staging = tmp_path / "staging"
    staging.mkdir()
    workers = WorkerFleet(
        tmp_path / "workers",
        f"redis://:{password}@{WORKER_LINK[0]}:{PORT}/0",
        staging,
        count=2,
        concurrency=2,
        wrapper=hosts.exec("workers"),
    )
    redis_proc.start()
    try:
        workers.start()
        yield {
            "ranks_broker": f"redis://:{password}@{RANK_LINK[0]}:{PORT}/0",
            "staging": staging,
            "workers": workers,
            "redis": redis_proc,
        }
    finally:
        workers.stop()
        redis_proc.stop()


def start_ranks(
    hosts: Hosts, cluster: dict[str, Any], job: Path, run_name: str, world_size: int
) -> list[subprocess.Popen[bytes]]:
    procs = []
    for rank in range(world_size):
        env = {
            **clean_environment(),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "GROUP_RANK": "0",
            "HOIST_RUN_NAME": run_name,
            "HOIST_BROKER_URL": cluster["ranks_broker"],
            "HOIST_STAGING_DIR": str(cluster["staging"]),
            "PYTHONPATH": str(REPO),
        }
        procs.append(
            subprocess.Popen(
                [*hosts.exec("ranks"), sys.executable, "-m", "tests.rank_job", str(job)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=REPO,
            )
        )
    return procs


def test_uploads_cross_hosts_and_survive_the_workers_link_going_down(
    hosts: Hosts, cluster: dict[str, Any], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    (store / "artifacts").mkdir(parents=True)
    run_name = f"multihost-{int(time.time())}"
    files_per_rank = 12
    actions: list[list[Any]] = []
    for i in range(files_per_rank):
        actions.append(["file", f"step{i}-rank{{rank}}.bin", 256 * KiB + i, False])
        actions.append(["sleep", 0.4])
    actions.append(["symlink", f"step{files_per_rank - 1}-rank{{rank}}.bin", "latest-rank{rank}"])
    logger = {
        "provider": "local",
        "container": "artifacts",
        "provider_kwargs": {"key": str(store)},
        "object_name": "{run_name}/{artifact_name}",
    }
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"logger": logger, "actions": actions, "timeout": 180}))
    landed_dir = store / "artifacts" / run_name
    expected = 2 * files_per_rank

    def landed() -> int:
        return len(list(landed_dir.glob("step*.bin"))) if landed_dir.exists() else 0

    procs = start_ranks(hosts, cluster, job, run_name, world_size=2)
    try:
        # Uploads cross from the ranks' host through Redis's host to the workers' host.
        wait_until(lambda: landed() >= 4, timeout=60)
        hosts.set_workers_link("down")
        cut_at = time.monotonic()
        landed_at_cut = landed()
        time.sleep(4)  # the outage itself; the ranks go on logging meanwhile
        hosts.set_workers_link("up")
        up_at = time.monotonic()
        wait_until(lambda: landed() == expected, timeout=150)
        recovered = time.monotonic() - up_at
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err.decode()
            reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print(
        f"\nmulti-host: {expected} uploads, {landed_at_cut} landed before the workers' link "
        f"went down for {up_at - cut_at:.1f} s; all landed {recovered:.1f} s after it came back"
    )
    for report in reports:
        assert report["failures"] == [], report.get("error")
        for name, logged in report["logged"].items():
            held = (landed_dir / name).read_bytes()
            assert hashlib.sha256(held).hexdigest() == logged["sha256"], name
    for rank in range(2):
        pointer = landed_dir / f"latest-rank{rank}.symlink"
        assert pointer.read_text() == f"{run_name}/step{files_per_rank - 1}-rank{rank}.bin"
    assert landed_at_cut < expected, "the cut came after everything had landed"
    assert not [p for p in (cluster["staging"] / run_name).rglob("*") if p.is_file()]
