"""The CLI's edges and issue 16's small things.

Where ``--home`` may go, finding ``.hoist`` upward, object URIs alone;
``symlink_artifact`` in Composer's order, ``download_checkpoint("latest",
run=...)``, and what a pointer downloaded into a directory is called.

Real servers where one is involved (the session's Redis and moto S3); the
commands run in-process through ``hoist.cli.main``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hoist import LogLevel, ObjectStoreLogger
from hoist.cli import main
from hoist.commands import console as console_module
from hoist.download import download_artifact, download_checkpoint
from hoist.errors import ConfigurationError
from hoist.protocol.naming import validate_run_name
from tests import test_checkpoints
from tests.services.cluster import environment, local_cluster, pids
from tests.services.redis import RedisServer
from tests.services.s3 import S3Server
from tests.services.workers import WorkerFleet, wait_until

CLUSTER_VARIABLES = ("HOIST_HOME", "HOIST_BROKER_URL", "HOIST_STATE_URL", "HOIST_STORE_URI")


@pytest.fixture(autouse=True)
def no_cluster_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No cluster named by the environment; whatever ``<home>/env`` adds is undone after."""
    for name in CLUSTER_VARIABLES:
        monkeypatch.setenv(name, "")  # remembers the old value, so the test's changes revert
        monkeypatch.delenv(name)
    for shown in (console_module.out, console_module.console):
        monkeypatch.setattr(shown, "width", 300)  # so paths and sentences are not folded


def make_home(path: Path, redis_url: str) -> Path:
    """A ``.hoist``-like folder whose ``env`` names the real Redis, as ``hoist up`` writes it."""
    path.mkdir(parents=True)
    (path / "env").write_text(f"HOIST_BROKER_URL={redis_url}\n")
    return path


def test_home_works_before_and_after_the_subcommand(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_server: RedisServer
) -> None:
    missing = tmp_path / "nowhere"
    for argv in (["--home", str(missing), "status"], ["status", "--home", str(missing)]):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert f"{missing}/env does not exist" in err, (argv, err)

    home = make_home(tmp_path / "cluster", redis_server.url)
    for argv in (
        ["--home", str(home), "status", "--json"],
        ["status", "--json", "--home", str(home)],
    ):
        code = main(argv)
        captured = capsys.readouterr()
        assert code == 0, (argv, captured.err)
        json.loads(captured.out)  # the cluster's status, not an error

    # After the subcommand wins over before it, as a later option does.
    argv = ["--home", str(missing), "status", "--json", "--home", str(home)]
    assert main(argv) == 0, capsys.readouterr().err


def test_the_cluster_is_found_from_a_directory_below_it(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    redis_server: RedisServer,
) -> None:
    project = tmp_path / "project"
    make_home(project / ".hoist", redis_server.url)
    deep = project / "src" / "train"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    code = main(["status", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    json.loads(captured.out)


def test_no_cluster_says_where_it_looked_and_not_to_start_a_second_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".hoist").mkdir()  # a .hoist without env is no cluster
    monkeypatch.chdir(elsewhere)
    assert main(["status"]) == 1
    captured = capsys.readouterr()
    first, _, advice = captured.err.partition("\n")
    assert first == (
        f"error: no hoist cluster found: no .hoist/env in {elsewhere} or any directory above "
        "it, and neither --home, HOIST_HOME nor HOIST_BROKER_URL is set"
    )
    # The advice leads to the running cluster first; `hoist up` only for a project that has none.
    assert "--home DIR/.hoist" in advice and "HOIST_HOME" in advice
    assert advice.index("--home") < advice.index("hoist up")
    assert captured.out == ""


def test_download_an_s3_uri_without_a_store(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    moto_server: S3Server,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    body = b"checkpoint bytes " * 1000
    moto_server.client().put_object(Bucket=moto_server.bucket, Key="small/run/ep1.pt", Body=body)
    uri = f"s3://{moto_server.bucket}/small/run/ep1.pt?endpoint_url={moto_server.endpoint_url}"

    code = main(["--home", str(tmp_path / "no-home"), "download", uri, str(tmp_path / "got.pt")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (tmp_path / "got.pt").read_bytes() == body
    assert captured.out.strip() == str(tmp_path / "got.pt")

    into = tmp_path / "into"
    into.mkdir()
    assert main(["download", uri, str(into)]) == 0, capsys.readouterr().err
    assert (into / "ep1.pt").read_bytes() == body


# ----- the small things: Composer's argument order, run= finds "latest", downloads' names --------

fleet = test_checkpoints.fleet  # real Redis, two `hoist worker` processes, a local store


@pytest.fixture
def logged_run(
    fleet: WorkerFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[test_checkpoints.Run]:
    """Four ranks' loggers of a new run on the real fleet; the environment names its Redis."""
    monkeypatch.setenv("HOIST_BROKER_URL", fleet.broker_url)
    run = test_checkpoints.Run(fleet, tmp_path, f"small-{time.time_ns()}")
    yield run
    for logger in run.loggers:
        logger.close()


def test_symlink_artifact_takes_composers_argument_order_too(
    logged_run: test_checkpoints.Run, tmp_path: Path
) -> None:
    logger = logged_run.loggers[0]
    (tmp_path / "ep1.pt").write_bytes(b"one")
    logger.file_artifact(LogLevel.EPOCH, "ep1.pt", tmp_path / "ep1.pt")
    seen: list[LogLevel] = []
    logger.should_log_artifact = lambda state, level, name: seen.append(level) or True

    assert logger.symlink_artifact(LogLevel.EPOCH, "ep1.pt", "latest.pt") is not None
    assert logger.symlink_artifact("ep1.pt", "newest.pt") is not None
    assert seen == [LogLevel.EPOCH, LogLevel.FIT]  # the positional level is the one used

    for wrong in ((LogLevel.EPOCH, "ep1.pt"), ("ep1.pt", "a.pt", "b.pt")):
        with pytest.raises(ConfigurationError) as caught:
            logger.symlink_artifact(*wrong)  # type: ignore[arg-type]
        assert str(caught.value).startswith(
            "call symlink_artifact(existing, symlink) or symlink_artifact(log_level, existing, "
            "symlink); got "
        ), caught.value

    logger.wait(timeout=60)
    got = download_artifact("latest.pt", tmp_path / "back.pt", run=logged_run.name)
    assert Path(got.path).read_bytes() == b"one"


def test_download_checkpoint_finds_the_runs_latest_by_run(
    logged_run: test_checkpoints.Run, tmp_path: Path
) -> None:
    for step in (1, 2):
        logged_run.write_step(step, 1000)
        for rank in range(test_checkpoints.WORLD):
            logged_run.log(rank, step)
    assert logged_run.wait_all() == []
    wait_until(lambda: logged_run.pointed_step() == 2, timeout=60)

    # Its docstring's example, as written: the run-wide pointer by its name.
    restored = download_checkpoint("latest", tmp_path / "resume", run=logged_run.name)
    assert restored.manifest.step == 2
    for name, data in logged_run.written[2].items():
        assert (tmp_path / "resume" / name).read_bytes() == data


def test_a_pointer_downloads_under_its_own_name_with_a_normal_mode(
    logged_run: test_checkpoints.Run, tmp_path: Path
) -> None:
    logger = logged_run.loggers[0]
    (tmp_path / "step000040-rank0.pt").write_bytes(b"forty")
    logger.file_artifact(LogLevel.EPOCH, "step000040-rank0.pt", tmp_path / "step000040-rank0.pt")
    logger.symlink_artifact("step000040-rank0.pt", "latest-rank0.pt")
    logger.wait(timeout=60)

    into = tmp_path / "into"
    into.mkdir()
    previous = os.umask(0o022)
    try:
        got = download_artifact("latest-rank0.pt", into, run=logged_run.name)
    finally:
        os.umask(previous)
    assert got.path == str(into / "latest-rank0.pt")
    assert [p.name for p in into.iterdir()] == ["latest-rank0.pt"]
    assert (into / "latest-rank0.pt").read_bytes() == b"forty"
    assert stat.S_IMODE(os.stat(got.path).st_mode) == 0o644


@pytest.mark.parametrize("run_name", ["my run 1", "tab\there", "line\nbreak", "bell\x07"])
def test_a_run_name_a_shell_or_uri_would_split_is_refused_when_the_logger_is_built(
    fleet: WorkerFleet, tmp_path: Path, run_name: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ObjectStoreLogger(
            provider="local",
            container="artifacts",
            provider_kwargs={"key": str(tmp_path)},
            broker_url=fleet.broker_url,
            upload_staging_folder=str(fleet.staging_root),
            run_name=run_name,
        )
    assert str(caught.value).startswith(
        f"run name {run_name!r} has whitespace or a control character: give a non-empty name"
    ), caught.value
    assert "(e.g. 'my-run-1')" in str(caught.value)
    assert validate_run_name("my-run-1") == "my-run-1"


def test_up_and_status_below_a_running_cluster_use_it_not_a_second_one(tmp_path: Path) -> None:
    project = tmp_path / "project"
    below = project / "src" / "train"
    below.mkdir(parents=True)
    with local_cluster(project / ".hoist", workers=1) as cluster:
        before = pids(cluster.home)

        def hoist_here(*args: str) -> subprocess.CompletedProcess[str]:
            """``hoist ARGS`` with no --home and no HOIST_*, run from below the project."""
            argv = [sys.executable, "-m", "hoist.cli", *args]
            return subprocess.run(
                argv, capture_output=True, text=True, env=environment(), cwd=below, timeout=90
            )

        status = hoist_here("status", "--json")
        assert status.returncode == 0, status.stderr
        json.loads(status.stdout)

        again = hoist_here("up", "--detach")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "already running, reused" in again.stdout
        assert pids(cluster.home) == before
        assert not (below / ".hoist").exists()
