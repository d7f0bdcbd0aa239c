"""What ``hoist status`` and ``hoist wait`` show: retries, fitted tables, TSV, units, rates.

Retrying records are made by the worker core itself (a real job against the
session's Redis and a store that raises a transient error, as in
tests/test_worker_core.py), then read by the commands in-process through
``hoist.cli.main``, or as a subprocess whose stdout is a pipe. Layout is
checked by rendering with rich at fixed widths; the arithmetic of the rate
and the byte units on records built by hand.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from hoist.cli import main
from hoist.commands import console as console_module
from hoist.commands.console import (
    Column,
    Kind,
    Sheet,
    format_bytes,
    render,
    transfer_progress,
    wrap_name,
)
from hoist.commands.status import summarize, summarize_run
from hoist.commands.status_tables import sheets
from hoist.errors import TransientStoreError
from hoist.protocol.messages import POINTER_TASK, UPLOAD_TASK
from hoist.state.records import ArtifactStatus
from hoist.state.states import State
from tests.services.cluster import REPO, environment
from tests.services.redis import RedisServer
from tests.test_worker_core import World, failing

CLUSTER_VARIABLES = ("HOIST_HOME", "HOIST_BROKER_URL", "HOIST_STATE_URL", "HOIST_STORE_URI")
BOX = set("│┃━─┏┓┗┛┡┩└┘┳┻╇┼┬┴╋")
LONG_RUN = "qs-moto3-ddp-example-20261202-041500"


@pytest.fixture(autouse=True)
def no_cluster_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No cluster named by the environment; whatever ``<home>/env`` adds is undone after."""
    for name in CLUSTER_VARIABLES:
        monkeypatch.setenv(name, "")  # remembers the old value, so the test's changes revert
        monkeypatch.delenv(name)
    for shown in (console_module.out, console_module.console):
        monkeypatch.setattr(shown, "width", 300)  # messages whole, for the asserts


@pytest.fixture
def home(tmp_path: Path, redis_server: RedisServer) -> Path:
    """A ``.hoist``-like folder whose ``env`` names the session's Redis."""
    path = tmp_path / "home"
    path.mkdir()
    (path / "env").write_text(f"HOIST_BROKER_URL={redis_server.url}\n")
    return path


@pytest.fixture
def world(redis_server: RedisServer, tmp_path: Path) -> World:
    return World(redis_server.url, tmp_path)


def hoist(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--home", str(home), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def retrying_upload(world: World, name: str, backoff: float = 40.0) -> str:
    """Log ``name`` and run its first attempt against a store answering 503: it is retrying."""
    message = world.upload(name)
    ctx = dataclasses.replace(
        world.with_settings(backoff_base=backoff, backoff_max=backoff),
        store=failing(world, TransientStoreError("503 Slow Down")),
        clock=time.time,  # next_attempt_at on the real clock, as a worker records it
    )
    assert world.deliver(UPLOAD_TASK, message, ctx)["outcome"] == State.RETRYING.value
    return message.id


# ----- retrying ------------------------------------------------------------------------------


def test_status_counts_and_lists_retrying_artifacts_apart_from_queued(
    capsys: pytest.CaptureFixture[str], home: Path, world: World
) -> None:
    before = time.time()
    artifact = retrying_upload(world, "ckpt/ep1.pt")
    world.upload("queued.bin")  # logged, never delivered: queued

    code, out, _ = hoist(capsys, home, "status", "--run", world.run, "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["total"]["queued"], data["total"]["retrying"]) == (1, 1)
    assert data["ranks"][0]["retrying"] == 1
    [entry] = data["retrying"]
    assert entry["id"] == artifact and entry["artifact"] == "ckpt/ep1.pt"
    assert (entry["rank"], entry["attempts"]) == (0, 1)
    assert entry["error"] == "TransientStoreError: 503 Slow Down"
    assert before + 39 < entry["next_attempt_at"] <= time.time() + 40
    assert before <= entry["retrying_since"] <= time.time()

    code, out, _ = hoist(capsys, home, "status", "--json", "--limit", "0")
    runs = {run["run"]: run for run in json.loads(out)["runs"]}
    assert runs[world.run]["total"]["retrying"] == 1
    assert [r["id"] for r in runs[world.run]["retrying"]] == [artifact]

    # stdout is a pipe here: the ranks as TSV, then the retrying artifacts.
    code, out, _ = hoist(capsys, home, "status", "--run", world.run)
    assert code == 0
    header, rank0, retry_header, retry_row = (line.split("\t") for line in out.splitlines())
    assert dict(zip(header, rank0, strict=True))["retrying"] == "1"
    assert dict(zip(header, rank0, strict=True))["queued"] == "1"
    row = dict(zip(retry_header, retry_row, strict=True))
    assert row["artifact"] == "ckpt/ep1.pt" and row["attempts"] == "1"
    assert row["last error"] == "TransientStoreError: 503 Slow Down"
    assert row["next attempt"] in ("in 39 s", "in 40 s")


def test_the_run_view_shows_each_retry_on_a_terminal(world: World) -> None:
    retrying_upload(world, "model/weights-final.safetensors", backoff=75.0)
    run = summarize_run(world.run, world.records.run_artifacts(world.run), time.time())
    text = rendered(sheets([run], True, time.time())[1], 100)
    assert "retrying artifacts of run" in text
    assert header_cells(text)[-1] == "last error"  # an error wraps between words if need be
    assert " ".join(column_lines(text, -1)) == "TransientStoreError: 503 Slow Down"
    assert re.search(r"│ +in 1m 1[45]s │", text)  # 75 s from now, less the test's own time
    assert column_lines(text, 1) == ["model/weights-final.safetensors"]


def test_wait_reports_a_retrying_artifact_once_then_lists_it_at_the_timeout(
    capsys: pytest.CaptureFixture[str], home: Path, world: World
) -> None:
    retrying_upload(world, "flaky.bin")
    code, out, err = hoist(
        capsys, home, "wait", "--run", world.run, "--timeout", "1.5", "--interval", "0.1"
    )
    assert code == 2
    # Fifteen polls, one line.
    lines = [line for line in err.splitlines() if line.startswith("retrying ")]
    assert len(lines) == 1, err
    assert re.fullmatch(
        r"retrying flaky\.bin \(rank 0\): attempt 1 failed: TransientStoreError: 503 Slow Down; "
        r"next attempt in (39|40) s",
        lines[0],
    ), lines[0]
    assert "0 queued, 1 retrying, 0 uploading" in err
    header, row = (line.split("\t") for line in out.splitlines())
    assert dict(zip(header, row, strict=True))["artifact"] == "flaky.bin"


# ----- layout ----------------------------------------------------------------------------------


def record(state: State, name: str, size: int = 0, rank: int = 0, **fields: Any) -> ArtifactStatus:
    """A record as ``Records.run_artifacts`` returns it (for the pure functions)."""
    message = {"artifact_name": name, "object_name": f"{LONG_RUN}/{name}", "size": size}
    values = {"state": state.value, "task": UPLOAD_TASK, "rank": str(rank), "enqueued_at": "0",
              "message": json.dumps(message), **{k: str(v) for k, v in fields.items()}}  # fmt: skip
    return ArtifactStatus(f"{name}-{rank}", state, values)


def rendered(sheet: Sheet, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(render(sheet, width))
    return console.export_text()


def header_cells(text: str) -> list[str]:
    [line] = [line for line in text.splitlines() if line.startswith("┃")]
    return [cell.strip() for cell in line.strip("┃").split("┃")]


def column_lines(text: str, index: int) -> list[str]:
    """The non-empty lines of column ``index`` in the body of a rendered table."""
    body = [line for line in text.splitlines() if line.startswith("│")]
    return [cell for line in body if (cell := line.strip("│").split("│")[index].strip())]


def busy_run() -> list[ArtifactStatus]:
    return [
        record(State.DONE, "checkpoints/ep1/model.safetensors", 2**30,
               upload_started_at=10, upload_finished_at=20),
        record(State.UPLOADING, "checkpoints/ep2/model.safetensors", 2**30, rank=1,
               upload_started_at=30, bytes_sent=2**29),
        record(State.RETRYING, "checkpoints/ep2/optimizer-state.pt", 5, rank=1, attempts=3,
               error="TransientStoreError: 503 Slow Down", next_attempt_at=112),
        record(State.FAILED, "logs/train-rank1.log", 100, rank=1, error="PermanentStoreError"),
        record(State.QUEUED, "hparams.yaml", 100),
    ]  # fmt: skip


@pytest.mark.parametrize("width", [100, 80])
def test_tables_fit_the_width_with_whole_headers_and_names(width: int) -> None:
    run = summarize_run(LONG_RUN, busy_run(), now=100)
    runs_sheet = sheets([run], False, 100)[0]
    ranks_sheet, retry_sheet = sheets([run], True, 100)
    for sheet in (runs_sheet, ranks_sheet, retry_sheet):
        text = rendered(sheet, width)
        assert max(map(len, text.splitlines())) <= width, text
        assert "…" not in text
        allowed = {c.header for c in sheet.columns} | {c.short for c in sheet.columns}
        headers = header_cells(text)
        assert set(headers) <= allowed, headers
        left_out = [c.header for c in sheet.columns if c.header not in headers
                    and c.short not in headers]  # fmt: skip
        if left_out:  # the caption says what is not shown
            assert ", ".join(left_out) in " ".join(text.split())
    # A name folds only after a / or -, never inside a segment, and reads whole again.
    pieces = column_lines(rendered(runs_sheet, width), 0)
    assert "".join(pieces) == LONG_RUN
    assert all(piece.endswith(("-", "/")) for piece in pieces[:-1])
    names = column_lines(rendered(retry_sheet, width), 1)
    assert "".join(names) == "checkpoints/ep2/optimizer-state.pt"
    # The essentials stay, however narrow: what is retrying, what failed, what is done.
    narrow = set(header_cells(rendered(ranks_sheet, width)))
    assert {"failed", "done"} <= narrow and {"retry", "retrying"} & narrow


def test_a_wide_terminal_shows_every_column_under_its_full_header() -> None:
    run = summarize_run(LONG_RUN, busy_run(), now=100)
    sheet = sheets([run], True, 100)[0]
    assert header_cells(rendered(sheet, 200)) == [c.header for c in sheet.columns]


def test_wrap_name_breaks_only_after_a_slash_or_dash() -> None:
    assert wrap_name("qs-moto3", 5) == "qs-\nmoto3"  # never "qs-mot" / "o3"
    assert wrap_name("abcdefgh/ij", 4) == "abcdefgh/\nij"  # a long segment stays whole
    sheet = Sheet("t", [Column("name", Kind.NAME)], [["aaaa-bbbbbbbb/cc"]])
    assert column_lines(rendered(sheet, 15), 0) == ["aaaa-", "bbbbbbbb/cc"]  # 11 wide


def test_status_to_a_pipe_is_tsv_with_whole_names(home: Path, world: World) -> None:
    world.run = f"{LONG_RUN}-{world.run}"
    for name in ("checkpoints/ep1/model-with-a-long-name.safetensors", "logs/train.log"):
        world.deliver(UPLOAD_TASK, world.upload(name))
    env = environment(COLUMNS="40")  # rich would fold to this on a terminal; a pipe ignores it
    argv = [sys.executable, "-m", "hoist.cli", "--home", str(home), "status", "--limit", "0"]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert rows[0][:3] == ["run", "ranks", "artifacts"]
    assert "rate while uploading" in rows[0] and "bytes sent / total" in rows[0]
    assert {len(row) for row in rows} == {len(rows[0])}
    assert not BOX & set(result.stdout)
    ours = dict(zip(rows[0], next(row for row in rows if row[0] == world.run), strict=True))
    assert (ours["done"], ours["retrying"], ours["failed"]) == ("2", "0", "0")

    result = subprocess.run([*argv[:-2], "--run", world.run], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("rank\tartifacts\tqueued\tretrying\t")


# ----- a watch started before the run ---------------------------------------------------------


def test_watch_waits_for_a_run_that_has_not_started(home: Path, world: World) -> None:
    argv = [sys.executable, "-m", "hoist.cli", "--home", str(home), "status", "--run", world.run,
            "--watch", "--interval", "0.2"]  # fmt: skip
    watch = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(), cwd=REPO
    )
    try:
        time.sleep(3)  # started, found no artifact, kept waiting
        assert watch.poll() is None, watch.communicate()
        world.deliver(UPLOAD_TASK, world.upload("first.pt"))
        out, err = watch.communicate(timeout=30)  # everything finished: the watch ends
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0, err
    assert f"waiting for run {world.run} to log its first artifact" in err
    assert "first.pt" not in err and "rank 0" in out


# ----- units and rates -------------------------------------------------------------------------


def test_byte_figures_are_binary_in_the_table_and_the_bars() -> None:
    assert (format_bytes(2**30), format_bytes(1023), format_bytes(2**20 - 1)) == (
        "1.0 GiB", "1023 B", "1.0 MiB"
    )  # fmt: skip
    run = summarize_run(LONG_RUN, [record(State.DONE, "a.pt", 2**30)], now=100)
    assert "1.0 GiB / 1.0 GiB" in rendered(sheets([run], True, 100)[0], 200)
    bars = transfer_progress()
    bars.add_task("upload", total=2**30, completed=2**29)
    shown = Console(width=120, record=True, file=io.StringIO())
    shown.print(bars.make_tasks_table(bars.tasks))
    assert "0.5/1.0 GiB" in shown.export_text()


def test_the_rate_is_bytes_over_the_time_uploads_were_in_flight() -> None:
    mib = 2**20
    artifacts = [
        # Logged at 0, uploaded at 1000..1010 and 1005..1020 (overlapping), one at 2000..2005.
        record(State.DONE, "a", 10 * mib, upload_started_at=1000, upload_finished_at=1010),
        record(State.DONE, "b", 10 * mib, upload_started_at=1005, upload_finished_at=1020),
        record(State.DONE, "c", 5 * mib, upload_started_at=2000, upload_finished_at=2005),
        # Still in flight since 2990: counts to now (3000), with what it has sent.
        record(State.UPLOADING, "d", 8 * mib, upload_started_at=2990, bytes_sent=5 * mib),
        # A pointer is no upload: no bytes, no time.
        dataclasses.replace(
            record(State.DONE, "p", upload_started_at=0, upload_finished_at=3000),
            fields={**record(State.DONE, "p").fields, "task": POINTER_TASK},
        ),
    ]
    summary = summarize(artifacts, now=3000)
    assert summary.upload_seconds == 20 + 5 + 10
    assert summary.throughput == pytest.approx(30 * mib / 35)
    # Not the run's wall time: 30 MiB over 3000 s would read as a slow store.
    assert summary.throughput > 30 * mib / 3000 * 50
    assert summarize([record(State.QUEUED, "q", 10)], now=5).throughput is None
