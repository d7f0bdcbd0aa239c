"""``hoist status / wait / retry / verify / download`` against a real cluster.

Real Redis, real ``hoist worker`` processes and real rank processes (the
fixtures of :mod:`tests.test_pipeline`); the commands run in-process through
``hoist.cli.main`` with the environment a user would have, and objects are
checked, corrupted and deleted on the local store's own directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import hoist
from hoist.cli import main
from hoist.commands import console as console_module
from hoist.protocol.messages import UPLOAD_TASK, UploadRequest, order_key
from hoist.protocol.pointers import PointerError
from hoist.state.records import Records
from hoist.stores.spec import StoreSpec
from tests import test_pipeline
from tests.services.keys import KEYS
from tests.services.redis import RedisServer
from tests.services.workers import WorkerFleet
from tests.test_pipeline import FLEET_KEY, local_backend, run_ranks

MiB = 1024 * 1024

# The pipeline tests' fixtures: real Redis, two `hoist worker` processes, their staging root.
fleet = test_pipeline.fleet
staging_root = test_pipeline.staging_root


@dataclass
class Cli:
    """Runs ``hoist`` in-process with an empty ``--home``; returns (exit code, stdout, stderr)."""

    home: Path
    capsys: pytest.CaptureFixture[str]

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()  # drop whatever came before
        code = main(["--home", str(self.home), *args])
        captured = self.capsys.readouterr()
        # No secret may reach the terminal, whatever the command.
        assert FLEET_KEY not in captured.out + captured.err
        return code, captured.out, captured.err


@dataclass
class LoggedRun:
    name: str
    store: Path  # the local store's base directory; objects are under store/artifacts
    reports: list[dict[str, Any]]

    @property
    def store_uri(self) -> str:
        return f"file://{self.store / 'artifacts'}"

    def object_path(self, object_name: str) -> Path:
        return self.store / "artifacts" / object_name


@pytest.fixture(scope="module")
def good_run(fleet: WorkerFleet, tmp_path_factory: pytest.TempPathFactory) -> LoggedRun:
    """Two ranks log small files, two checkpoints and a pointer to the newest, and wait."""
    run_name = f"ops-{int(time.time() * 1000)}"
    store = tmp_path_factory.mktemp("ops-store")
    backend = local_backend(store)
    actions: list[list[Any]] = [["file", f"logs/part-{i}.txt", 2000 + i, False] for i in range(3)]
    for n in (1, 2):
        actions.append(["file", f"ckpt/ep{n}-rank{{rank}}.pt", 1 * MiB + n, False])
        actions.append(["symlink", f"ckpt/ep{n}-rank{{rank}}.pt", "latest-rank{rank}.pt"])
    logger = {**backend.logger, "object_name": "{run_name}/rank{rank}/{artifact_name}"}
    reports = run_ranks(tmp_path_factory.mktemp("ops-job"), fleet, run_name, logger, actions, 2)
    assert all(report["failures"] == [] for report in reports), reports
    return LoggedRun(run_name, store, reports)


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fleet: WorkerFleet,
    tmp_path: Path,
) -> Cli:
    """The environment of a user pointed at the test cluster, with wide tables."""
    monkeypatch.setenv("HOIST_BROKER_URL", fleet.broker_url)
    monkeypatch.setenv("HOIST_FLEET_KEY", FLEET_KEY)
    monkeypatch.setenv("HOIST_STAGING_DIR", str(fleet.staging_root))
    monkeypatch.delenv("HOIST_STATE_URL", raising=False)
    monkeypatch.delenv("HOIST_STORE_URI", raising=False)
    for shown in (console_module.out, console_module.console):
        monkeypatch.setattr(shown, "width", 300)  # so names and errors are not folded
    home = tmp_path / "home"
    home.mkdir()
    return Cli(home, capsys)


@pytest.fixture
def records(redis_server: RedisServer) -> Iterator[Records]:
    records = Records.from_url(redis_server.url)
    yield records
    records.client.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def logged(run: LoggedRun, rank: int, artifact: str) -> dict[str, str]:
    return run.reports[rank]["logged"][artifact]


# ----- status ----------------------------------------------------------------------------------


def test_status_table_and_json(cli: Cli, good_run: LoggedRun) -> None:
    per_rank_bytes = sum(2000 + i for i in range(3)) + 2 * MiB + 3

    code, out, _ = cli("status")
    assert code == 0
    assert good_run.name in out and "bytes sent / total" in out

    code, out, _ = cli("status", "--json", "--limit", "0")
    assert code == 0
    runs = {run["run"]: run["total"] for run in json.loads(out)["runs"]}
    total = runs[good_run.name]
    # per rank: 5 uploads and 2 pointer writes
    assert total["ranks"] == 2 and total["artifacts"] == 14
    # The pointer to ep1 may be superseded by the one to ep2 when it runs second.
    assert total["done"] + total["superseded"] == 14 and total["superseded"] <= 2
    assert (total["failed"], total["queued"], total["uploading"]) == (0, 0, 0)
    assert total["bytes_done"] == total["bytes_total"] == 2 * per_rank_bytes
    assert total["throughput"] > 0 and total["oldest_waiting"] is None

    code, out, _ = cli("status", "--run", good_run.name, "--json")
    assert code == 0
    data = json.loads(out)
    assert [rank["rank"] for rank in data["ranks"]] == [0, 1]
    for rank in data["ranks"]:
        assert rank["done"] + rank["superseded"] == 7 and rank["bytes_done"] == per_rank_bytes

    code, out, _ = cli("status", "--run", good_run.name)
    assert code == 0
    # stdout is no terminal here: TSV, a header line, then a line per rank and the total.
    lines = [line.split("\t") for line in out.splitlines()]
    assert lines[0][:2] == ["rank", "artifacts"] and [row[0] for row in lines[1:]] == [
        "0",
        "1",
        "all",
    ]

    # Everything has finished, so a watch draws once and returns.
    code, out, _ = cli("status", "--run", good_run.name, "--watch", "--interval", "0.1")
    assert code == 0 and "rank 1" in out

    code, _, err = cli("status", "--run", "no-such-run")
    assert code == 1 and "no artifacts of run 'no-such-run'" in err


def test_no_cluster_gives_one_clear_sentence(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("HOIST_BROKER_URL", raising=False)
    monkeypatch.delenv("HOIST_STATE_URL", raising=False)
    monkeypatch.setattr(console_module.console, "width", 300)  # one line per sentence
    home = str(tmp_path / "empty-home")
    for argv in (
        ["status"],
        ["wait", "--run", "r"],
        ["retry", "--run", "r"],
        ["verify", "--run", "r"],
        ["download", "x.pt", str(tmp_path), "--run", "r"],
    ):
        assert main(["--home", home, *argv]) == 1, argv
        captured = capsys.readouterr()
        # It says where it looked, and how to reach a running cluster before starting one.
        assert captured.err.strip() == (
            f"error: no hoist cluster found: {home}/env does not exist and HOIST_BROKER_URL is "
            "not set\npass the --home a running cluster was started with, or start one with "
            f"`hoist --home {home} up --detach`, or set HOIST_BROKER_URL"
        ), argv
        assert captured.out == ""


def test_unreachable_cluster_does_not_print_its_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HOIST_BROKER_URL", f"redis://:hunter2secret@127.0.0.1:{port}/0")
    assert main(["--home", str(tmp_path), "status"]) == 1
    err = " ".join(capsys.readouterr().err.split())  # rich wraps at 80 columns here
    assert "does not answer" in err and "****" in err
    assert "hunter2secret" not in err


# ----- wait and retry --------------------------------------------------------------------------


def conflicting_run(
    tmp_path: Path,
    fleet: WorkerFleet,
    name: str,
) -> tuple[str, Path, hoist.ObjectStoreLogger]:
    """A run whose model.pt meets an object holding other bytes: a permanent failure."""
    run_name = f"{name}-{int(time.time() * 1000)}"
    store = tmp_path / "store"
    backend = local_backend(store)
    conflict = store / "artifacts" / run_name / "model.pt"
    conflict.parent.mkdir(parents=True)
    conflict.write_bytes(b"someone else's bytes")
    source = tmp_path / "model.pt"
    source.write_bytes(b"our bytes")
    logger = hoist.ObjectStoreLogger(
        **backend.logger,
        run_name=run_name,
        broker_url=fleet.broker_url,
        upload_staging_folder=str(fleet.staging_root),
        object_name="{run_name}/{artifact_name}",
        wait_on_close=False,
    )
    logger.file_artifact(hoist.LogLevel.EPOCH, "model.pt", source)
    logger.symlink_artifact("model.pt", "latest.pt")
    return run_name, conflict, logger


def test_wait_fails_then_retry_after_the_fix_succeeds(
    cli: Cli,
    fleet: WorkerFleet,
    tmp_path: Path,
) -> None:
    run_name, conflict, logger = conflicting_run(tmp_path, fleet, "retry")

    code, out, err = cli("wait", "--run", run_name, "--timeout", "60")
    assert code == 1
    assert "model.pt" in out and "already exists with other bytes" in out
    assert "latest.pt" in out and "failed to upload" in out  # the pointer fails with its target
    assert "hoist retry" in err

    conflict.unlink()  # mend the cause
    code, out, _ = cli("retry", "--run", run_name)
    assert code == 0
    assert out.count("re-sent") == 2, out

    code, _, err = cli("wait", "--run", run_name, "--timeout", "60")
    assert code == 0, err
    assert conflict.read_bytes() == b"our bytes"
    pointer = conflict.parent / "latest.pt.symlink"
    assert pointer.read_text() == f"{run_name}/model.pt"

    code, out, _ = cli("status", "--run", run_name, "--json")
    assert json.loads(out)["total"]["failed"] == 0
    code, out, _ = cli("retry", "--run", run_name)
    assert code == 0  # nothing left to retry
    logger.close()


def test_retry_says_when_the_staged_file_is_gone(
    cli: Cli,
    fleet: WorkerFleet,
    tmp_path: Path,
) -> None:
    run_name, _, logger = conflicting_run(tmp_path, fleet, "gone")
    assert cli("wait", "--run", run_name, "--timeout", "60")[0] == 1
    for staged in (fleet.staging_root / run_name).rglob("*model.pt"):
        staged.unlink()

    code, out, _ = cli("retry", "--run", run_name)
    assert code == 1
    assert "cannot retry: staged file gone; log it again" in out
    assert "cannot retry: its target 'model.pt' is still failed" in out
    assert "re-sent" not in out
    logger.close()


def test_wait_times_out_then_retry_queued_sends_a_lost_message(
    cli: Cli,
    fleet: WorkerFleet,
    records: Records,
    tmp_path: Path,
) -> None:
    """A record whose message never reached the broker, as after a broker outage."""
    run_name = f"lost-{int(time.time() * 1000)}"
    store = tmp_path / "store"
    spec = StoreSpec.describe("libcloud", local_backend(store).logger, None)
    staged = fleet.staging_root / run_name / "rank0" / "00000001-lost.bin"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"lost but staged")
    message = UploadRequest(
        id=f"hoist-{run_name}-r0-1",
        run_name=run_name,
        rank=0,
        seq=1,
        artifact_name="lost.bin",
        object_name=f"{run_name}/lost.bin",
        order=order_key(0, 1),
        store=spec.to_json(),
        staged_path=str(staged),
        size=staged.stat().st_size,
    ).signed(KEYS)
    records.create(message, UPLOAD_TASK, spec.store_id)

    code, _, err = cli("wait", "--run", run_name, "--timeout", "0.5")
    assert code == 2
    assert "timed out" in err and "1 queued" in err
    code, out, _ = cli("status", "--run", run_name, "--json")
    assert json.loads(out)["total"]["oldest_waiting"] >= 0.5

    assert cli("retry", "--run", run_name)[0] == 0  # nothing failed: nothing sent
    code, out, _ = cli("retry", "--run", run_name, "--queued")
    assert code == 0 and "re-sent" in out
    assert cli("wait", "--run", run_name, "--timeout", "60")[0] == 0
    assert (store / "artifacts" / run_name / "lost.bin").read_bytes() == b"lost but staged"


# ----- verify ----------------------------------------------------------------------------------


def test_verify_passes_then_finds_damage(cli: Cli, fleet: WorkerFleet, tmp_path: Path) -> None:
    run_name = f"verify-{int(time.time() * 1000)}"
    store = tmp_path / "store"
    logger = hoist.ObjectStoreLogger(
        **local_backend(store).logger,
        run_name=run_name,
        broker_url=fleet.broker_url,
        upload_staging_folder=str(fleet.staging_root),
        object_name="{run_name}/{artifact_name}",
    )
    for name in ("a.bin", "b.bin", "c.bin"):
        (tmp_path / name).write_bytes(os.urandom(300_000))
        logger.file_artifact(hoist.LogLevel.EPOCH, name, tmp_path / name)
    # Two finished versions of one name: only the newest is what the store should hold.
    for version in (1, 2):
        (tmp_path / "train.log").write_text(f"version {version}\n" * 1000 * version)
        log = tmp_path / "train.log"
        logger.file_artifact(hoist.LogLevel.EPOCH, "train.log", log, overwrite=True)
        logger.wait(timeout=60)
    logger.symlink_artifact("c.bin", "latest.bin")
    logger.close()
    objects = store / "artifacts" / run_name

    code, out, _ = cli("verify", "--run", run_name)
    assert code == 0, out
    assert out.count(" ok ") == 5, out  # a, b, c, train.log, latest.bin.symlink

    data = bytearray((objects / "a.bin").read_bytes())
    data[1000] ^= 0xFF
    (objects / "a.bin").write_bytes(bytes(data))
    code, out, _ = cli("verify", "--run", run_name)
    assert code == 1
    [row] = [line for line in out.splitlines() if "a.bin" in line]
    assert "checksum mismatch" in row

    (objects / "b.bin").unlink()
    (objects / "c.bin").write_bytes(b"short")
    code, out, err = cli("verify", "--run", run_name)
    assert code == 1
    rows = {name: line for line in out.splitlines() for name in ("b.bin", "c.bin") if name in line}
    assert "missing" in rows["b.bin"]
    assert "size mismatch" in rows["c.bin"]
    assert "3 of 5 objects do not verify" in err


# ----- download --------------------------------------------------------------------------------


def test_download_follows_the_pointer_to_the_newest_checkpoint(
    cli: Cli, good_run: LoggedRun, tmp_path: Path
) -> None:
    run, ep2 = good_run.name, logged(good_run, 0, "ckpt/ep2-rank0.pt")

    code, out, err = cli("download", "latest-rank0.pt", str(tmp_path / "got.pt"), "--run", run)
    assert code == 0, err
    assert sha256(tmp_path / "got.pt") == ep2["sha256"]
    assert f"{run}/rank0/latest-rank0.pt.symlink -> {run}/rank0/ckpt/ep2-rank0.pt" in err
    assert out.strip() == str(tmp_path / "got.pt")

    into = tmp_path / "into"
    into.mkdir()
    code, _, err = cli("download", "latest-rank0.pt", str(into), "--run", run)
    assert code == 0, err
    # Named after what was asked, not after today's target.
    assert sha256(into / "latest-rank0.pt") == ep2["sha256"]
    assert [p.name for p in into.iterdir()] == ["latest-rank0.pt"]  # no temporary file left


def test_download_by_object_name_and_by_uri(
    cli: Cli, good_run: LoggedRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = good_run.name
    ep1 = logged(good_run, 1, "ckpt/ep1-rank1.pt")
    ep2 = logged(good_run, 1, "ckpt/ep2-rank1.pt")

    # An object name in --store; `latest-rank1.pt` itself does not exist, its .symlink does.
    code, _, err = cli(
        "download", f"{run}/rank1/latest-rank1.pt", str(tmp_path / "a.pt"),
        "--store", good_run.store_uri,
    )  # fmt: skip
    assert code == 0, err
    assert sha256(tmp_path / "a.pt") == ep2["sha256"]

    # URIs inside the store HOIST_STORE_URI names: file:// and the local:// form records show.
    monkeypatch.setenv("HOIST_STORE_URI", good_run.store_uri)
    pointer_uri = f"{good_run.store_uri}/{run}/rank1/latest-rank1.pt.symlink"
    assert cli("download", pointer_uri, str(tmp_path / "b.pt"))[0] == 0
    assert sha256(tmp_path / "b.pt") == ep2["sha256"]
    assert cli("download", ep1["object"], str(tmp_path / "c.pt"))[0] == 0
    assert ep1["object"].startswith("local://")
    assert sha256(tmp_path / "c.pt") == ep1["sha256"]

    code, _, err = cli("download", f"{run}/rank1/nothing.pt", str(tmp_path / "d.pt"))
    assert code == 1 and "does not exist" in err
    assert not (tmp_path / "d.pt").exists()


def test_download_artifact_python_api(cli: Cli, good_run: LoggedRun, tmp_path: Path) -> None:
    ep2 = logged(good_run, 1, "ckpt/ep2-rank1.pt")
    got = hoist.download_artifact("latest-rank1.pt", tmp_path, run=good_run.name)
    assert got.path == str(tmp_path / "latest-rank1.pt")  # the name asked, not the target's
    assert sha256(Path(got.path)) == ep2["sha256"]
    assert got.size == 1 * MiB + 2 and str(got.checksum).startswith("crc64nvme:")
    assert got.hops == (
        (
            f"{good_run.name}/rank1/latest-rank1.pt.symlink",
            f"{good_run.name}/rank1/ckpt/ep2-rank1.pt",
        ),
    )

    by_name = hoist.download_artifact(
        f"{good_run.name}/rank1/ckpt/ep2-rank1.pt", tmp_path / "x.pt", store=good_run.store_uri
    )
    assert by_name.hops == () and sha256(tmp_path / "x.pt") == ep2["sha256"]


def test_pointer_loops_and_chains(tmp_path: Path) -> None:
    store = tmp_path / "store"
    objects = store / "artifacts"
    objects.mkdir(parents=True)
    (objects / "one.symlink").write_text("two.symlink")
    (objects / "two.symlink").write_text("one")  # `one` is absent, so one.symlink is followed
    with pytest.raises(PointerError, match="loop"):
        hoist.download_artifact("one", tmp_path, store=f"file://{objects}")

    (objects / "data.bin").write_bytes(b"payload")
    (objects / "hop0.symlink").write_text("data.bin")
    for n in range(1, 10):
        (objects / f"hop{n}.symlink").write_text(f"hop{n - 1}")
    got = hoist.download_artifact("hop7", tmp_path / "ok.bin", store=f"file://{objects}")
    assert len(got.hops) == 8 and (tmp_path / "ok.bin").read_bytes() == b"payload"
    with pytest.raises(PointerError, match="more than 8 pointers"):
        hoist.download_artifact("hop9", tmp_path / "far.bin", store=f"file://{objects}")
