"""Session fixtures: the real servers every test talks to.

Each server starts once per session on 127.0.0.1 and a free port. When a test
fails, the tail of every running server's log is attached to its report.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.services.keys import FLEET_KEY as FLEET_KEY  # sets HOIST_FLEET_KEY for the suite
from tests.services.redis import RedisServer
from tests.services.s3 import MotoServer, RcloneServer, S3Server
from tests.services.sshd import SshServer
from tests.services.workers import WorkerFleet

_running: list[Any] = []

# tests/compat/ runs hoist under pinned third-party releases, in their own venv
# (`bash deploy/bootstrap.sh compat composer`): collected only where installed.
collect_ignore = [] if importlib.util.find_spec("composer") else ["compat"]

# Property tests are derandomized: the same examples every run, so CI never
# turns red on a new random draw (a failure found once is kept as an explicit
# case). No per-example deadline: a shared 2-core machine has slow moments.
# HYPOTHESIS_PROFILE=explore draws fresh random examples, ten times as many.
settings.register_profile(
    "ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("explore", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for server in _running:
            # A fleet attaches every worker's log: the one that took a redelivery
            # after a kill is rarely the first.
            for process in server.workers if hasattr(server, "workers") else [server.process]:
                report.sections.append(
                    (f"log of {process.name} ({process.log_path})", process.log_tail())
                )


def _serve(server: Any) -> Iterator[Any]:
    server.start()
    _running.append(server)
    try:
        yield server
    finally:
        _running.remove(server)
        server.stop()


def serve_fleet(
    tmp_path_factory: pytest.TempPathFactory, broker_url: str, name: str, **options: Any
) -> Iterator[WorkerFleet]:
    """Run a module's ``WorkerFleet`` (``options``: count, concurrency, env, …) with its own
    log directory and staging root, logs attached to failing tests; for ``yield from``."""
    staging = tmp_path_factory.mktemp(f"{name}-staging")
    workdir = tmp_path_factory.mktemp(f"{name}-workers")
    yield from _serve(WorkerFleet(workdir, broker_url, staging, **options))


def single_rank_local_store(fleet: WorkerFleet, store: Path) -> dict[str, Any]:
    """Logger arguments for rank 0 of 1 uploading through ``fleet`` to a Libcloud
    ``local`` store at ``store`` (for the integrations' loggers)."""
    return {
        "provider": "local",
        "container": "artifacts",
        "provider_kwargs": {"key": str(store)},
        "broker_url": fleet.broker_url,
        "upload_staging_folder": str(fleet.staging_root),
        "rank": 0,
        "local_rank": 0,
        "world_size": 1,
        "local_world_size": 1,
        "node_rank": 0,
    }


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def redis_server(services_dir: Path) -> Iterator[RedisServer]:
    yield from _serve(RedisServer(services_dir / "redis"))


@pytest.fixture(scope="session")
def moto_server(services_dir: Path) -> Iterator[S3Server]:
    yield from _serve(MotoServer(services_dir / "moto"))


@pytest.fixture(scope="session")
def rclone_server(services_dir: Path) -> Iterator[S3Server]:
    yield from _serve(RcloneServer(services_dir / "rclone"))


@pytest.fixture(scope="session", params=["moto", "rclone"])
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    """Each S3 test runs against both servers."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture
def make_file(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a file of ``size`` random bytes and return its path."""

    def make(size: int, name: str = "payload.bin") -> Path:
        path = tmp_path / name
        with open(path, "wb") as out:
            remaining = size
            while remaining:
                chunk = os.urandom(min(remaining, 4 * 1024 * 1024))
                out.write(chunk)
                remaining -= len(chunk)
        return path

    return make


@pytest.fixture(scope="session")
def sshd_server(services_dir: Path) -> Iterator[SshServer]:
    yield from _serve(SshServer(services_dir / "sshd"))
