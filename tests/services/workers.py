"""Real ``hoist worker`` processes, as a user starts them."""

from __future__ import annotations

import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.services.process import ServerProcess


class WorkerFleet:
    """``count`` worker processes sharing one broker and staging root.

    Parameters:
        workdir: where the workers' logs go.
        broker_url: the Redis URL.
        staging_root: the only directory the workers may read.
        count: how many worker processes.
        concurrency: pool processes per worker.
        env: extra environment (store limits, fleet key, credentials).
        args: extra ``hoist worker`` arguments (``--node-queue NAME``).
        wrapper: a command that runs each worker (``ip netns exec NAME``).
    """

    def __init__(
        self,
        workdir: Path,
        broker_url: str,
        staging_root: Path,
        count: int = 2,
        concurrency: int = 2,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        wrapper: list[str] | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.broker_url = broker_url
        self.staging_root = staging_root
        self.concurrency = concurrency
        self.args = list(args or [])
        self.wrapper = list(wrapper or [])
        self.env = {
            "HOIST_BROKER_URL": broker_url,
            "HOIST_STAGING_DIR": str(staging_root),
            "HOIST_LEASE_SECONDS": "6",
            "HOIST_BACKOFF_BASE": "0.2",
            "HOIST_BACKOFF_MAX": "2",
            "PYTHONUNBUFFERED": "1",
            # Tests not about the fleet's boundary upload to stores in temporary
            # folders and on free ports; tests/test_attacks.py sets its allow-list.
            "HOIST_ALLOW_ANY_STORE": "1",
            **(env or {}),
        }
        self.workers = [self._worker(i) for i in range(count)]
        self._next = count

    def _worker(self, index: int) -> ServerProcess:
        log_path = self.workdir / f"worker{index}.log"
        argv = [
            *self.wrapper,
            sys.executable, "-m", "hoist.cli", "worker",
            "--concurrency", str(self.concurrency),
            "--hostname", f"w{index}@%h",
            "--loglevel", "INFO",
            *self.args,
        ]  # fmt: skip
        proc = ServerProcess(
            f"hoist worker {index}", argv, log_path, lambda: _ready(log_path), self.env
        )
        return proc

    def start(self) -> None:
        # Side by side: one after the other, a fleet of two took 5-7 s to start.
        for worker in self.workers:
            worker.launch()
        try:
            for worker in self.workers:
                worker.wait_ready(timeout=60)
        except BaseException:
            self.stop()  # the others are running: leave no worker behind
            raise

    def stop(self) -> None:
        # All at once: each worker's warm shutdown takes about a second, and
        # the suite stops a fleet after nearly every process-level test.
        with ThreadPoolExecutor(max(1, len(self.workers))) as pool:
            list(pool.map(lambda worker: worker.stop(signal.SIGTERM, timeout=30), self.workers))

    def add(self) -> ServerProcess:
        worker = self._worker(self._next)
        self._next += 1
        worker.start(timeout=60)
        self.workers.append(worker)
        return worker

    def logs(self) -> str:
        return "\n".join(w.log_path.read_text(errors="replace") for w in self.workers)


def _ready(log_path: Path) -> bool:
    try:
        return " ready." in log_path.read_text(errors="replace")
    except FileNotFoundError:
        return False


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"condition not met in {timeout} s")


def clean_environment() -> dict[str, str]:
    """This process's environment without launcher variables a test might inherit."""
    drop = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
