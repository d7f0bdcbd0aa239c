"""Training ranks as real processes (``tests/rank_job.py``), started without waiting.

A fault test starts the ranks, injects its fault while they log, then
collects their reports; :func:`start_ranks` and :func:`collect_ranks` are those
two halves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.services.workers import clean_environment

REPO = Path(__file__).resolve().parent.parent.parent


@dataclass
class RankJob:
    """What every rank of a job is told.

    Parameters:
        run_name: the run (``HOIST_RUN_NAME``).
        logger: ``ObjectStoreLogger`` keyword arguments (see ``tests/rank_job.py``).
        actions: the steps each rank takes: ``["file", name, size, overwrite]``,
            ``["symlink", target, name]``, ``["sleep", seconds]``.
        broker_url: Redis.
        staging_root: the workers' staging root.
        fleet_key: seals credentials in the logger's store arguments.
        timeout: seconds each rank's ``wait()`` allows.
    """

    run_name: str
    logger: dict[str, Any]
    actions: list[list[Any]]
    broker_url: str
    staging_root: Path
    fleet_key: str
    timeout: float = 180.0


def start_ranks(job: RankJob, workdir: Path, world_size: int) -> list[subprocess.Popen[bytes]]:
    """Start ``world_size`` rank processes with torchrun's variables."""
    job_file = workdir / f"{job.run_name}.json"
    job_file.write_text(
        json.dumps({"logger": job.logger, "actions": job.actions, "timeout": job.timeout})
    )
    procs = []
    for rank in range(world_size):
        env = {
            **clean_environment(),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "GROUP_RANK": "0",
            "HOIST_RUN_NAME": job.run_name,
            "HOIST_BROKER_URL": job.broker_url,
            "HOIST_STAGING_DIR": str(job.staging_root),
            "HOIST_FLEET_KEY": job.fleet_key,
            "PYTHONPATH": str(REPO),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.rank_job", str(job_file)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=REPO,
            )
        )
    return procs


def collect_ranks(
    procs: list[subprocess.Popen[bytes]], timeout: float = 300.0
) -> list[dict[str, Any]]:
    """Each rank's JSON report; a rank that exits with an error fails with its stderr."""
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err.decode(errors="replace")
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    return reports
