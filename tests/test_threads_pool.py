"""A worker with Celery's threads pool (``hoist worker --pool threads``).

Its uploads run as threads of one process and share that process's stores;
an SFTP store, which threads may not share, is built once per thread. This
module has its own fleet: a module's fleets consume the same queues, so a
second fleet beside test_pipeline's would take that module's messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import serve_fleet
from tests.services.redis import RedisServer
from tests.services.workers import WorkerFleet
from tests.test_pipeline import FLEET_KEY, Backend, four_ranks_land_verified
from tests.test_pipeline import backend as backend  # noqa: PLC0414 (the fixture, reused)


@pytest.fixture(scope="module")
def threads_fleet(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFleet]:
    yield from serve_fleet(
        tmp_path_factory,
        redis_server.url,
        "threads",
        count=1,
        concurrency=4,
        env={"HOIST_FLEET_KEY": FLEET_KEY},
        args=["--pool", "threads"],
    )


def test_a_threads_pool_worker_uploads_to_every_store(
    backend: Backend, threads_fleet: WorkerFleet, tmp_path: Path
) -> None:
    """Four ranks' uploads at once in one worker process, to S3, SFTP and Libcloud."""
    four_ranks_land_verified(backend, threads_fleet, tmp_path, "threads")
