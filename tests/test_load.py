"""Load: 64 ranks log in bursts into the embedded cluster; all lands, memory stays bounded.

Eight node processes of eight rank threads each (``tests/load_node.py``), every
rank with its own logger and rank facts, log small files in bursts into a
``hoist up --detach`` cluster (Redis, two workers, Flower) that uploads them
to its Libcloud ``local`` store. While they run, a sampler reads Redis's
memory and the workers' resident memory, and ``hoist status --json`` is run
as a person would, timed. Every object is then read back from the store's
directory and compared with what its rank logged.

The CI run is 64 ranks x 10 artifacts; ``-m long`` runs the full 64 x 50.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.services.cluster import REPO, Cluster, environment, hoist, local_cluster, pids
from tests.services.workers import clean_environment

NODES = 8
RANKS_PER_NODE = 8
MAX_BYTES = 64 * 1024


@dataclass
class Sampler:
    """Samples Redis memory and the workers' RSS every ``interval`` seconds, in a thread.

    Parameters:
        cluster: the cluster whose Redis and workers to read.
        interval: seconds between samples.
    """

    cluster: Cluster
    interval: float = 0.5
    redis_bytes: list[int] = field(default_factory=list)
    worker_rss: list[int] = field(default_factory=list)  # all workers' processes, summed

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sampler")
        self._client = redis.Redis.from_url(self.cluster.env["HOIST_BROKER_URL"])
        groups = [pid for name, pid in pids(self.cluster.home).items() if name.startswith("worker")]
        self._groups = set(groups)

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        self.redis_bytes.append(int(self._client.info("memory")["used_memory"]))
        self.worker_rss.append(sum(rss_of_group(pgid) for pgid in self._groups))


def rss_of_group(pgid: int) -> int:
    """Resident bytes of every process in process group ``pgid`` (a worker and its pool)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                status = (stat.parent / "status").read_text()
                line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
                total += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue  # the process ended between listing and reading
    return total


@dataclass
class StatusProbe:
    """Runs ``hoist status --json --run RUN`` over and over in a thread, timing each.

    Parameters:
        cluster: the cluster to ask.
        run: the run name.
    """

    cluster: Cluster
    run: str
    seconds: list[float] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="status")

    def __enter__(self) -> StatusProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            started = time.perf_counter()
            result = hoist(self.cluster.home, "status", "--json", "--run", self.run, timeout=60)
            self.seconds.append(time.perf_counter() - started)
            if result.returncode == 0:
                self.last = json.loads(result.stdout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with local_cluster(tmp_path_factory.mktemp("load") / "home", workers=2, concurrency=2) as c:
        yield c


def run_nodes(cluster: Cluster, job_path: Path) -> list[dict[str, Any]]:
    env = {**clean_environment(), **cluster.env, "PYTHONPATH": str(REPO)}
    env = {
        k: v
        for k, v in env.items()
        if k in environment() or k.startswith("HOIST_") or k == "PYTHONPATH"
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.load_node", str(job_path), str(node)],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for node in range(NODES)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    return reports


@pytest.mark.parametrize(
    "artifacts",
    [pytest.param(10, id="64x10"), pytest.param(50, id="64x50", marks=pytest.mark.long)],
)
def test_64_ranks_log_in_bursts_and_everything_lands(
    cluster: Cluster, artifacts: int, tmp_path: Path
) -> None:
    run = f"load-{artifacts}-{int(time.time())}"
    store = cluster.home / "store"
    job = {
        "logger": {
            "provider": "local",
            "container": "artifacts",
            "provider_kwargs": {"key": str(store)},
            "run_name": run,
            "object_name": "{run_name}/node{node_rank}/rank{rank}/{artifact_name}",
            "num_concurrent_uploads": 2,
        },
        "nodes": NODES,
        "local_world_size": RANKS_PER_NODE,
        "artifacts": artifacts,
        "burst": 10,
        "pause": 0.5,
        "max_bytes": MAX_BYTES,
        "timeout": 540,
    }
    job_path = tmp_path / "job.json"
    job_path.write_text(json.dumps(job))

    with Sampler(cluster) as sampler, StatusProbe(cluster, run) as status:
        started = time.perf_counter()
        reports = run_nodes(cluster, job_path)
        elapsed = time.perf_counter() - started

    ranks = {rank: report for node in reports for rank, report in node.items()}
    assert len(ranks) == NODES * RANKS_PER_NODE
    assert [r["error"] for r in ranks.values() if "error" in r] == []
    logged = {uri: sha for r in ranks.values() for uri, sha in r["logged"].items()}
    assert len(logged) == NODES * RANKS_PER_NODE * artifacts
    for uri, sha in logged.items():
        path = store / uri.removeprefix("local://")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha, uri

    final = json.loads(hoist(cluster.home, "status", "--json", "--run", run).stdout)["total"]
    assert final["done"] == len(logged) and final["failed"] == 0 and final["queued"] == 0
    assert list((cluster.home / "staging").rglob("*.bin")) == []

    blocked = sorted(t for r in ranks.values() for t in r["blocked"])
    figures = {
        "artifacts": len(logged),
        "seconds": round(elapsed, 1),
        "artifacts_per_s": round(len(logged) / elapsed, 1),
        "file_artifact_ms_median": round(1000 * statistics.median(blocked), 2),
        "file_artifact_ms_p99": round(1000 * blocked[int(0.99 * (len(blocked) - 1))], 2),
        "redis_used_memory_mib_start_peak_end": [
            round(x / 2**20, 1)
            for x in (sampler.redis_bytes[0], max(sampler.redis_bytes), sampler.redis_bytes[-1])
        ],
        "workers_rss_mib": [
            round(x / 2**20, 1) for x in (sampler.worker_rss[0], max(sampler.worker_rss))
        ],
        "status_calls": len(status.seconds),
        "status_s_median_max": [
            round(statistics.median(status.seconds), 2),
            round(max(status.seconds), 2),
        ],
    }
    print(f"\nload {run}: {json.dumps(figures)}")
    # Bounded memory: what Redis keeps is a record of a few KiB per artifact
    # (expiring after the retention); what the backlog adds (queued messages,
    # client buffers) is gone once it drains. The workers' memory does not
    # grow with the work done.
    first, peak, last = sampler.redis_bytes[0], max(sampler.redis_bytes), sampler.redis_bytes[-1]
    assert (last - first) / len(logged) < 8 * 1024, figures
    assert peak - last < 32 * 2**20, figures
    assert max(sampler.worker_rss) < 1.5 * sampler.worker_rss[0] + 64 * 2**20, figures
    # `hoist status` answered throughout, within a person's patience. On two
    # cores it shares the CPU with ~15 busy processes (ranks, workers, Redis),
    # so its 0.6 s of start-up and reading can stretch several times over.
    assert status.seconds and max(status.seconds) < 15, figures
