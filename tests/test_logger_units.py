"""Unit tests of the rank-side pieces: naming, rank facts, staging, retries, settings.

Pure functions and the real filesystem under ``tmp_path``; no servers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from hoist.errors import (
    ConfigurationError,
    EnqueueError,
    HoistError,
    InvalidObjectNameError,
    SourceFileError,
    StagingError,
)
from hoist.keys import new_fleet_key
from hoist.logger.configuration import LoggerConfiguration, StoreArguments
from hoist.logger.levels import LogLevel
from hoist.logger.logger import ObjectStoreLogger
from hoist.logger.object_names import ObjectNames
from hoist.logger.publisher import Outgoing, group_for_sending
from hoist.logger.ranks import RankInfo
from hoist.logger.retry import StateRetry
from hoist.logger.sequence import SEQ_BLOCK, SequenceNumbers
from hoist.logger.staging import StagedFile, StagingMode, stage_file
from hoist.protocol.layout import (
    MAX_STAGED_NAME_BYTES,
    NAME_MAX,
    Fingerprint,
    staged_path,
    staging_root_from,
)
from hoist.protocol.messages import (
    BATCH_FILE_BYTES,
    MAX_BATCH,
    POINTER_TASK,
    UPLOAD_TASK,
    PointerRequest,
    UploadRequest,
    node_queue,
)
from hoist.protocol.naming import OBJECT_NAME_FIELDS, ObjectNameTemplate, validate_artifact_name
from hoist.protocol.staged_file import open_staged_file
from hoist.settings import VARIABLES, RankSettings
from tests.services.keys import KEYS
from tests.services.redis import RedisServer
from tests.services.tmpfs import small_tmpfs

RANKS = {"rank": 9, "local_rank": 1, "world_size": 16, "local_world_size": 8, "node_rank": 1}


def name(template: str, artifact_name: str = "ep1.pt", run_name: str = "llama") -> str:
    return ObjectNameTemplate(template).format(
        artifact_name=artifact_name, run_name=run_name, **RANKS
    )


# --------------------------------------------------------------------------- naming


def test_template_uses_every_field() -> None:
    template = "/".join("{" + field + "}" for field in OBJECT_NAME_FIELDS)
    assert name(template) == "ep1.pt/llama/9/1/16/8/1"


def test_template_format_specs_and_conversions() -> None:
    assert name("{run_name}/rank{rank:03d}/{artifact_name}") == "llama/rank009/ep1.pt"
    assert name("{node_rank:>2}-{local_rank:x}-{artifact_name:.3}") == " 1-1-ep1"


def test_template_nested_format_spec_fields_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="unknown field 'width'"):
        ObjectNameTemplate("{rank:0{width}d}/{artifact_name}")


def test_template_literal_braces() -> None:
    assert name("{{x}}/{artifact_name}") == "{x}/ep1.pt"


def test_unknown_field_quotes_template_and_allowed_fields() -> None:
    with pytest.raises(ConfigurationError) as caught:
        ObjectNameTemplate("{run}/{artifact_name}")
    message = str(caught.value)
    assert "'{run}/{artifact_name}'" in message
    assert "unknown field 'run'" in message
    assert "{artifact_name}, {run_name}, {rank}" in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("{}/{artifact_name}", "positional"),
        ("{0}/{artifact_name}", "positional"),
        ("{rank.real}/{artifact_name}", "attribute and index access"),
        ("{run_name[0]}/{artifact_name}", "attribute and index access"),
        ("{artifact_name", "malformed"),
        ("{artifact_name}}", "malformed"),
        ("{artifact_name:03d}", "cannot be formatted"),
        ("{artifact_name!x}", "cannot be formatted"),
        ("{run_name}/latest.pt", "does not use {artifact_name}"),
    ],
)
def test_bad_templates_fail_when_built(template: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match="object_name template") as caught:
        ObjectNameTemplate(template)
    assert fragment in str(caught.value)
    assert repr(template) in str(caught.value)


def test_leading_slashes_are_stripped() -> None:
    assert name("{artifact_name}", "/checkpoints/ep1.pt") == "checkpoints/ep1.pt"
    assert name("//{run_name}/{artifact_name}") == "llama/ep1.pt"


@pytest.mark.parametrize(
    ("template", "artifact_name", "run_name", "fragment"),
    [
        ("{run_name}/{artifact_name}", "../etc/passwd", "r", "'..' segment"),
        ("{run_name}/{artifact_name}", "a/../../b", "r", "'..' segment"),
        ("{run_name}/{artifact_name}", "", "r", "empty"),
        ("{run_name}/{artifact_name}", "/", "r", "empty"),
        ("{run_name}/{artifact_name}", "a\0b", "r", "NUL"),
        ("{run_name}/{artifact_name}", "ep1.pt", "..", "'..' segment"),
        ("{run_name}/{artifact_name}", "ep1.pt", "x\0", "NUL"),
    ],
)
def test_bad_names_are_rejected(
    template: str, artifact_name: str, run_name: str, fragment: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        name(template, artifact_name, run_name)
    assert fragment in str(caught.value)
    assert repr(artifact_name) in str(caught.value)


def test_error_on_result_quotes_template_artifact_and_result() -> None:
    with pytest.raises(ConfigurationError) as caught:
        name("{run_name}/{artifact_name}", "ep1.pt", "..")
    message = str(caught.value)
    assert "'{run_name}/{artifact_name}'" in message
    assert "'ep1.pt'" in message
    assert "'../ep1.pt'" in message


def test_dots_inside_segments_are_fine() -> None:
    assert name("{artifact_name}", "ep1..pt") == "ep1..pt"
    assert name("{artifact_name}", "...") == "..."


def test_validate_artifact_name() -> None:
    assert validate_artifact_name("a/b.pt") == "a/b.pt"
    for bad in ("", "//", "x/../y", "..", "a\0"):
        with pytest.raises(ConfigurationError):
            validate_artifact_name(bad)
    with pytest.raises(ConfigurationError, match="must be a str"):
        validate_artifact_name(Path("a"))  # type: ignore[arg-type]


def test_template_is_frozen_and_comparable() -> None:
    template = ObjectNameTemplate("{artifact_name}")
    assert template == ObjectNameTemplate("{artifact_name}")
    with pytest.raises(AttributeError):
        template.template = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------- ranks


def test_single_process_defaults() -> None:
    assert RankInfo.from_environment({}) == RankInfo(0, 0, 1, 1, 0)


def test_torchrun_environment() -> None:
    env = {
        "RANK": "9",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "16",
        "LOCAL_WORLD_SIZE": "8",
        "GROUP_RANK": "1",
    }
    assert RankInfo.from_environment(env) == RankInfo(**RANKS)


def test_torchrun_node_rank_fallback_and_derivations() -> None:
    env = {"RANK": "5", "WORLD_SIZE": "8", "NODE_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    info = RankInfo.from_environment(env)
    assert (info.node_rank, info.local_rank) == (1, 1)
    # Without LOCAL_WORLD_SIZE, GROUP_WORLD_SIZE gives the node count.
    info = RankInfo.from_environment({"RANK": "5", "WORLD_SIZE": "8", "GROUP_WORLD_SIZE": "2"})
    assert info == RankInfo(rank=5, local_rank=1, world_size=8, local_world_size=4, node_rank=1)
    # Nothing says how many nodes: one node holds every rank.
    info = RankInfo.from_environment({"RANK": "5", "WORLD_SIZE": "8"})
    assert info == RankInfo(rank=5, local_rank=5, world_size=8, local_world_size=8, node_rank=0)


def test_slurm_environment() -> None:
    env = {
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "8",
        "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_NODEID": "1",
    }
    assert RankInfo.from_environment(env) == RankInfo(5, 1, 8, 4, 1)


@pytest.mark.parametrize(
    ("variable", "value", "node", "expected"),
    [
        ("SLURM_TASKS_PER_NODE", "4(x2)", "1", 4),
        ("SLURM_STEP_TASKS_PER_NODE", "3(x2),2", "2", 2),
        ("SLURM_STEP_TASKS_PER_NODE", "3(x2),2", "0", 3),
        ("SLURM_NTASKS_PER_NODE", "4(x2)", "1", 4),
    ],
)
def test_slurm_tasks_per_node_lists(variable: str, value: str, node: str, expected: int) -> None:
    env = {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "8", "SLURM_NODEID": node}
    env[variable] = value
    assert RankInfo.from_environment(env).local_world_size == expected


def test_slurm_local_world_size_from_node_count() -> None:
    env = {"SLURM_PROCID": "6", "SLURM_NTASKS": "8", "SLURM_NNODES": "2"}
    info = RankInfo.from_environment(env)
    assert info == RankInfo(rank=6, local_rank=2, world_size=8, local_world_size=4, node_rank=1)


def test_torchrun_wins_over_slurm_as_a_whole() -> None:
    # torchrun started by srun with one Slurm task per node: the Slurm
    # variables describe nodes, not ranks, and must not leak into any field.
    env = {
        "RANK": "9",
        "WORLD_SIZE": "16",
        "LOCAL_RANK": "1",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NODEID": "1",
        "GROUP_RANK": "1",
        "LOCAL_WORLD_SIZE": "8",
    }
    assert RankInfo.from_environment(env) == RankInfo(**RANKS)


def test_overrides_win() -> None:
    env = {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8"}
    info = RankInfo.from_environment(env, rank=3, node_rank=None, world_size=None)
    assert (info.rank, info.world_size, info.local_rank, info.node_rank) == (3, 16, 1, 0)
    assert RankInfo.from_environment({}, rank=2, world_size=4) == RankInfo(2, 2, 4, 4, 0)


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in list(os.environ):
        if variable.startswith("SLURM_") or variable in ("RANK", "WORLD_SIZE"):
            monkeypatch.delenv(variable)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert RankInfo.from_environment().rank == 1


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK='one'"),
        ({"RANK": "0", "WORLD_SIZE": ""}, "WORLD_SIZE=''"),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2.0"}, "SLURM_NTASKS='2.0'"),
        ({"SLURM_PROCID": "0", "SLURM_TASKS_PER_NODE": "4(y2)"}, "SLURM_TASKS_PER_NODE='4(y2)'"),
    ],
)
def test_non_integer_variables_are_named(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match="not") as caught:
        RankInfo.from_environment(env)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("env", "overrides", "fragments"),
    [
        (
            {"RANK": "4", "WORLD_SIZE": "4"},
            {},
            ["rank=4 (from RANK)", "world_size=4 (from WORLD_SIZE)"],
        ),
        ({"RANK": "-1", "WORLD_SIZE": "4"}, {}, ["rank=-1 (from RANK)"]),
        ({}, {"rank": 2}, ["rank=2 (from argument)", "world_size=1 (from default)"]),
        (
            {
                "SLURM_PROCID": "1",
                "SLURM_LOCALID": "4",
                "SLURM_NTASKS": "8",
                "SLURM_NTASKS_PER_NODE": "4",
            },
            {},
            [
                "local_rank=4 (from SLURM_LOCALID)",
                "local_world_size=4 (from SLURM_NTASKS_PER_NODE)",
            ],
        ),
        ({"RANK": "0", "WORLD_SIZE": "0"}, {}, ["world_size=0 (from WORLD_SIZE)"]),
        ({}, {"node_rank": -1}, ["node_rank=-1 (from argument)"]),
    ],
)
def test_inconsistent_values_name_their_sources(
    env: dict[str, str], overrides: dict[str, int], fragments: list[str]
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RankInfo.from_environment(env, **overrides)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_bad_override_type() -> None:
    with pytest.raises(ConfigurationError, match="rank must be an int"):
        RankInfo.from_environment({}, rank="1")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        RankInfo.from_environment({}, rank=True)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="rank=3"):
        RankInfo(rank=3, local_rank=0, world_size=2, local_world_size=2, node_rank=0)


# --------------------------------------------------------------------------- staged_path


def test_staged_path_layout() -> None:
    path = staged_path("/staging", "llama", 3, 12, "/checkpoints/ep1/model.pt")
    assert path == "/staging/llama/rank3/00000012-checkpoints__ep1__model.pt"
    assert os.path.dirname(path) == "/staging/llama/rank3"


@pytest.mark.parametrize("run_name", ["", ".", "..", "a/b", "a\0b"])
def test_staged_path_rejects_unsafe_run_names(run_name: str) -> None:
    with pytest.raises(ConfigurationError, match="run name"):
        staged_path("/staging", run_name, 0, 1, "ep1.pt")


def test_staged_path_rejects_bad_artifact_and_numbers() -> None:
    with pytest.raises(ConfigurationError):
        staged_path("/staging", "r", 0, 1, "")
    with pytest.raises(ConfigurationError):
        staged_path("/staging", "r", -1, 1, "a")
    with pytest.raises(ConfigurationError):
        staged_path("/staging", "r", 0, -1, "a")


@pytest.mark.parametrize("char", ["a", "é", "🧪"])
def test_staged_path_truncates_long_names_keeping_end(char: str, tmp_path: Path) -> None:
    artifact = "deep/" * 30 + char * 300 + "-final.safetensors"
    path = staged_path(str(tmp_path), "run", 0, 7, artifact)
    base = os.path.basename(path)
    assert base.startswith("00000007-")
    assert base.endswith(char + "-final.safetensors")
    assert len(os.fsencode(base)) <= MAX_STAGED_NAME_BYTES < NAME_MAX
    # The temporary name must fit too: stage a file under this name for real.
    source = tmp_path / "src"
    source.write_bytes(b"x")
    assert stage_file(str(source), path).size == 1
    assert os.listdir(os.path.dirname(path)) == [base]


# --------------------------------------------------------------------------- stage_file


def _entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("size", [0, 1, 4096, 3 * 1024 * 1024 + 17])
def test_copy_mode_stages_equal_bytes_and_leaves_source_alone(size: int, tmp_path: Path) -> None:
    source = tmp_path / "ep1.pt"
    data = os.urandom(size)
    source.write_bytes(data)
    os.utime(source, (1_000_000, 1_000_000))
    before = os.stat(source)
    destination = staged_path(str(tmp_path / "staging"), "run", 0, 1, "ep1.pt")

    staged = stage_file(str(source), destination)

    assert staged == StagedFile(destination, size, staged.method)
    assert staged.method in {"reflink", "copy_file_range", "copy"}
    assert Path(destination).read_bytes() == data
    after = os.stat(source)
    assert source.read_bytes() == data
    assert (after.st_ino, after.st_size, after.st_mtime_ns, after.st_mode) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
        before.st_mode,
    )
    assert _entries(Path(destination).parent) == [os.path.basename(destination)]


def test_move_mode_renames_on_the_same_filesystem(tmp_path: Path) -> None:
    source = tmp_path / "ep1.pt"
    source.write_bytes(b"weights")
    inode = os.stat(source).st_ino
    destination = staged_path(str(tmp_path / "staging"), "run", 0, 1, "ep1.pt")

    staged = stage_file(str(source), destination, move=True)

    assert staged == StagedFile(destination, 7, "rename")
    assert not source.exists()
    assert os.stat(destination).st_ino == inode
    assert _entries(Path(destination).parent) == [os.path.basename(destination)]


def test_link_mode_stages_a_hard_link_and_keeps_the_source(tmp_path: Path) -> None:
    source = tmp_path / "ep1.pt"
    source.write_bytes(b"weights")
    destination = staged_path(str(tmp_path / "staging"), "run", 0, 1, "ep1.pt")

    staged = stage_file(str(source), destination, mode="link")

    assert staged.method == "link" and staged.size == 7
    assert os.stat(destination).st_ino == os.stat(source).st_ino
    assert staged.fingerprint == Fingerprint.of(destination)
    assert staged.fingerprint is not None and staged.fingerprint.nlink == 2
    assert source.read_bytes() == b"weights"
    assert _entries(Path(destination).parent) == [os.path.basename(destination)]


def test_link_fingerprint_tells_a_rewrite_from_the_caller_letting_go(tmp_path: Path) -> None:
    def staged_link(name: str) -> tuple[Path, Fingerprint]:
        source = tmp_path / name
        source.write_bytes(b"weights")
        destination = staged_path(str(tmp_path / "staging"), "run", 0, 1, name)
        fingerprint = stage_file(str(source), destination, mode="link").fingerprint
        assert fingerprint is not None
        return source, fingerprint

    source, fingerprint = staged_link("deleted.pt")
    source.unlink()  # the caller deletes its name for the file: fine
    staged = Path(staged_path(str(tmp_path / "staging"), "run", 0, 1, "deleted.pt"))
    assert fingerprint.change(Fingerprint.of(str(staged))) is None

    source, fingerprint = staged_link("sneaky.pt")  # same size, mtime put back
    with open(source, "r+b") as f:
        f.write(b"WEIGHTS")
    os.utime(source, ns=(fingerprint.mtime_ns, fingerprint.mtime_ns))
    assert fingerprint.change(Fingerprint.of(str(source))) == (
        "its inode changed (ctime) with no link added or removed"
    )

    source, fingerprint = staged_link("appended.pt")
    with open(source, "ab") as f:
        f.write(b"more")
    assert fingerprint.change(Fingerprint.of(str(source))) == "its size went from 7 to 11 bytes"


def test_link_mode_replaces_an_existing_staged_file(tmp_path: Path) -> None:
    source = tmp_path / "ep1.pt"
    source.write_bytes(b"new")
    destination = Path(staged_path(str(tmp_path / "staging"), "run", 0, 1, "ep1.pt"))
    destination.parent.mkdir(parents=True)
    destination.write_bytes(b"old")
    assert stage_file(str(source), str(destination), mode="link").method == "link"
    assert destination.read_bytes() == b"new"


def test_move_of_a_symlink_copies_the_target_and_removes_the_link(tmp_path: Path) -> None:
    target = tmp_path / "real.pt"
    target.write_bytes(b"weights")
    link = tmp_path / "latest.pt"
    link.symlink_to(target)
    destination = str(tmp_path / "staging" / "x")

    staged = stage_file(str(link), destination, move=True)

    assert staged.method != "rename"
    assert not os.path.islink(destination)
    assert Path(destination).read_bytes() == b"weights"
    assert not os.path.lexists(link)
    assert target.read_bytes() == b"weights"


def test_copy_follows_symlinks_and_replaces_existing(tmp_path: Path) -> None:
    target = tmp_path / "real.pt"
    target.write_bytes(b"new")
    link = tmp_path / "latest.pt"
    link.symlink_to(target)
    destination = tmp_path / "staged"
    destination.write_bytes(b"old bytes")
    stage_file(str(link), str(destination))
    assert destination.read_bytes() == b"new"
    assert link.is_symlink()


def test_fsync_option(tmp_path: Path) -> None:
    source = tmp_path / "a"
    source.write_bytes(b"abc")
    assert stage_file(str(source), str(tmp_path / "s" / "a"), fsync=True).size == 3
    assert stage_file(str(source), str(tmp_path / "s" / "b"), move=True, fsync=True).method == (
        "rename"
    )


@pytest.mark.parametrize("move", [False, True])
def test_missing_or_irregular_source(tmp_path: Path, move: bool) -> None:
    staging = tmp_path / "staging"
    with pytest.raises(SourceFileError, match="No such file") as caught:
        stage_file(str(tmp_path / "nope"), str(staging / "x"), move=move)
    assert isinstance(caught.value, HoistError)
    with pytest.raises(SourceFileError, match="not a regular file"):
        stage_file(str(tmp_path), str(staging / "x"), move=move)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    with pytest.raises(SourceFileError):
        stage_file(str(dangling), str(staging / "x"), move=move)
    assert not staging.exists() or _entries(staging) == []


def test_staging_path_that_is_not_a_directory(tmp_path: Path) -> None:
    source = tmp_path / "a"
    source.write_bytes(b"abc")
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"")
    for move in (False, True):
        with pytest.raises(StagingError, match="cannot stage") as caught:
            stage_file(str(source), str(blocker / "run" / "x"), move=move)
        assert not isinstance(caught.value, SourceFileError)
        assert isinstance(caught.value.__cause__, OSError)
    assert source.read_bytes() == b"abc"


def test_staged_file_appears_only_complete(tmp_path: Path) -> None:
    """A watcher polling the rank directory only ever sees the whole file."""
    data = os.urandom(64 * 1024 * 1024)
    source = tmp_path / "big"
    source.write_bytes(data)
    rank_dir = tmp_path / "staging" / "run" / "rank0"
    rank_dir.mkdir(parents=True)
    destination = rank_dir / "00000001-big"
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.append(os.stat(destination).st_size)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        stage_file(str(source), str(destination))
    finally:
        done.set()
        watcher.join()
    assert set(seen) <= {len(data)}
    assert _entries(rank_dir) == [destination.name]


@pytest.mark.parametrize("move", [False, True])
def test_full_staging_filesystem_cleans_up_and_says_what_to_do(tmp_path: Path, move: bool) -> None:
    source = tmp_path / "big"
    data = os.urandom(3 * 1024 * 1024)
    source.write_bytes(data)
    with small_tmpfs(tmp_path / "full", "1m") as staging:
        destination = staging / "run" / "rank0" / "00000001-big"
        with pytest.raises(StagingError) as caught:
            stage_file(str(source), str(destination), move=move)
        message = str(caught.value)
        assert "No space left on device" in message
        assert "HOIST_STAGING_DIR" in message
        assert str(source) in message
        assert not isinstance(caught.value, SourceFileError)
        assert getattr(caught.value.__cause__, "errno", None) == errno.ENOSPC
        assert _entries(destination.parent) == []
    # Even when the caller gave the file away, a failed stage keeps it.
    assert source.read_bytes() == data


def test_move_across_filesystems_copies_then_removes_source(tmp_path: Path) -> None:
    source = tmp_path / "ep1.pt"
    data = os.urandom(1024 * 1024 + 3)
    source.write_bytes(data)
    with small_tmpfs(tmp_path / "other", "8m") as staging:
        destination = staging / "run" / "rank0" / "00000001-ep1.pt"
        staged = stage_file(str(source), str(destination), move=True)
        assert staged.method in {"copy_file_range", "copy"}
        assert destination.read_bytes() == data
        assert not source.exists()
        assert _entries(destination.parent) == [destination.name]


def test_link_across_filesystems_copies(tmp_path: Path) -> None:
    source = tmp_path / "ep1.pt"
    data = os.urandom(300_000)
    source.write_bytes(data)
    with small_tmpfs(tmp_path / "other", "8m") as staging:
        staged = stage_file(str(source), str(staging / "x"), mode="link")
        assert staged.method in {"copy_file_range", "copy"}
        assert staged.fingerprint is None  # a private copy: nothing to watch
        assert (staging / "x").read_bytes() == data
    assert source.read_bytes() == data


def test_copy_into_other_filesystem_falls_back(tmp_path: Path) -> None:
    source = tmp_path / "ep1.pt"
    data = os.urandom(200_000)
    source.write_bytes(data)
    with small_tmpfs(tmp_path / "other", "8m") as staging:
        staged = stage_file(str(source), str(staging / "x"))
        assert (staging / "x").read_bytes() == data
        assert staged.size == len(data)
    assert source.read_bytes() == data


# --------------------------------------------------------------------------- staging root


def test_staging_root_from_argument_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOIST_STAGING_DIR", raising=False)
    with pytest.raises(ConfigurationError, match="HOIST_STAGING_DIR.*upload_staging_folder"):
        staging_root_from(None)
    monkeypatch.chdir(tmp_path)
    assert staging_root_from("rel/staging") == str(tmp_path / "rel" / "staging")
    assert (tmp_path / "rel" / "staging").is_dir()
    monkeypatch.setenv("HOIST_STAGING_DIR", str(tmp_path / "env"))
    with pytest.raises(ConfigurationError, match="no staging directory"):
        staging_root_from(None)  # the layout reads no environment: the settings do
    assert staging_root_from(str(tmp_path / "arg")) == str(tmp_path / "arg")
    # The logger's route: the variable through RankSettings, the argument first.
    from_env = RankSettings.from_environment()
    assert _resolve(tmp_path, from_env).staging_root == str(tmp_path / "env")
    arg = str(tmp_path / "arg")
    assert _resolve(tmp_path, from_env, upload_staging_folder=arg).staging_root == arg
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ConfigurationError, match="cannot use staging directory"):
        staging_root_from(str(tmp_path / "file"))


# ------------------------------------------------------------- staged paths, as workers open them


def _opens(root: str, path: str) -> int:
    """The inode a worker opens for ``path`` under ``root``."""
    with open_staged_file(root, path) as staged:
        return staged.info.st_ino


def test_workers_open_staged_paths_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "staging"
    (root / "run" / "rank0").mkdir(parents=True)
    inside = root / "run" / "rank0" / "00000001-a"
    inside.write_bytes(b"a")
    inode = inside.stat().st_ino
    assert _opens(str(root), str(inside)) == inode
    assert _opens(str(root), "run/rank0/00000001-a") == inode
    assert _opens(str(root) + "/", str(inside)) == inode
    # The root itself may be reached through a symlink.
    alias = tmp_path / "alias"
    alias.symlink_to(root)
    assert _opens(str(alias), str(alias / "run" / "rank0" / "00000001-a")) == inode


@pytest.mark.parametrize(
    "path",
    [
        "{root}/../secret",
        "{root}/run/../../secret",
        "{root}/run/../run/x",
        "../secret",
        "/etc/passwd",
        "{root}",
        "{root}/.",
        "{root}-sibling/x",
        "{root}/link-out",
        "{root}/run/link-dir/secret",
        "{root}/a\0b",
    ],
)
def test_workers_refuse_staged_paths_that_escape(tmp_path: Path, path: str) -> None:
    root = tmp_path / "staging"
    (root / "run").mkdir(parents=True)
    (root / "run" / "x").write_bytes(b"inside, but named with '..'")
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    (root / "link-out").symlink_to(secret)
    (root / "run" / "link-dir").symlink_to(tmp_path)
    (tmp_path / "staging-sibling").mkdir()
    (tmp_path / "staging-sibling" / "x").write_bytes(b"sibling")
    with pytest.raises(SourceFileError, match="refusing to read"):
        _opens(str(root), path.format(root=root))


# --------------------------------------------------------------------------- batches


def _outgoing(size: int, queue: str = "", task: str = UPLOAD_TASK) -> Outgoing:
    message = UploadRequest("hoist-r-r0-1", "r", 0, 1, "a", "a", "o", {}, size=size, queue=queue)
    return Outgoing(task, message)


def test_small_uploads_in_a_row_share_a_task_and_the_order_is_kept() -> None:
    small, large = _outgoing(64 * 1024), _outgoing(BATCH_FILE_BYTES + 1)
    groups = group_for_sending([small, small, large, small, small, small])
    assert [[item is large for item in group] for group in groups] == [
        [False, False],
        [True],
        [False, False, False],
    ]


def test_a_batch_holds_at_most_max_batch_and_one_queue() -> None:
    assert [len(g) for g in group_for_sending([_outgoing(1)] * (MAX_BATCH + 3))] == [MAX_BATCH, 3]
    mixed = [_outgoing(1, "a"), _outgoing(1, "a"), _outgoing(1, "b")]
    assert [len(g) for g in group_for_sending(mixed)] == [2, 1]


def test_pointers_and_commits_are_never_batched() -> None:
    pointer = Outgoing(
        POINTER_TASK, PointerRequest("hoist-r-r0-2", "r", 0, 2, "l", "l.symlink", "o", {})
    )
    assert [len(g) for g in group_for_sending([_outgoing(1), pointer, _outgoing(1)])] == [1, 1, 1]


# --------------------------------------------------------------------------- Redis retry


def test_state_calls_are_retried_through_an_outage_with_a_growing_delay() -> None:
    answers: list[Exception | str] = [redis.ConnectionError("down"), redis.TimeoutError(), "OK"]
    delays: list[float] = []

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert StateRetry(30, "redis://x", sleep=delays.append)(call) == "OK"
    assert delays == [0.2, 0.4]


def test_state_calls_give_up_after_the_timeout_naming_where_and_what_was_kept() -> None:
    def down() -> None:
        raise redis.ConnectionError("Connection refused")

    retry = StateRetry(0.3, "redis://:****@redis.lan:6379/0")
    started = time.monotonic()
    with pytest.raises(EnqueueError) as caught:
        retry(down, "; the staged file is kept at /staging/x")
    waited = time.monotonic() - started
    message = str(caught.value)
    said = re.search(
        r"redis://:\*\*\*\*@redis\.lan:6379/0 is unreachable after ([0-9.]+) s", message
    )
    assert said is not None, message
    # The figure is the time actually spent (one 0.2 s backoff), not the 0.3 s budget.
    assert float(said.group(1)) == pytest.approx(waited, abs=0.06)
    assert float(said.group(1)) < 0.3
    assert message.endswith("Connection refused; the staged file is kept at /staging/x")
    assert isinstance(caught.value.__cause__, redis.ConnectionError)


def test_other_redis_errors_are_not_retried() -> None:
    calls = []

    def refused() -> None:
        calls.append(1)
        raise redis.ResponseError("NOSCRIPT")

    with pytest.raises(redis.ResponseError):
        StateRetry(30, "redis://x", sleep=lambda _: None)(refused)
    assert calls == [1]


# --------------------------------------------------------------------------- sequence numbers


def test_sequence_numbers_are_reserved_a_block_at_a_time() -> None:
    asked: list[int] = []

    def reserve(count: int) -> range:
        start = 1 + len(asked) * count
        asked.append(count)
        return range(start, start + count)

    numbers = SequenceNumbers(reserve, on_fork=lambda: None)
    assert [numbers.next() for _ in range(SEQ_BLOCK + 1)] == list(range(1, SEQ_BLOCK + 2))
    assert asked == [SEQ_BLOCK, SEQ_BLOCK]


def test_a_forked_child_drops_its_parents_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = iter([range(1, 17), range(17, 33)])
    forks = []
    numbers = SequenceNumbers(lambda count: next(blocks), on_fork=lambda: forks.append(1))
    assert numbers.next() == 1
    child = os.getpid() + 1
    monkeypatch.setattr(os, "getpid", lambda: child)
    assert numbers.next() == 17  # never 2: the parent may still hand that one out
    assert numbers.next() == 18
    assert forks == [1]


# --------------------------------------------------------------------------- object names


def test_object_names_fill_the_templates_and_the_store_has_the_last_word() -> None:
    def short_names(name: str) -> str:
        if len(name) > 20:
            raise InvalidObjectNameError(f"{name!r} is longer than 20 bytes")
        return name

    names = ObjectNames(
        ObjectNameTemplate("{run_name}/n{node_rank}/r{local_rank}/{artifact_name}"),
        ObjectNameTemplate("{run_name}/{artifact_name}"),
        "llama",
        RankInfo(**RANKS),
        short_names,
    )
    assert names.artifact("ep1.pt") == "llama/n1/r1/ep1.pt"
    assert names.checkpoint("ckpt/a") == "llama/ckpt/a"
    with pytest.raises(InvalidObjectNameError, match="artifact name 'epoch-1.pt' cannot be stored"):
        names.artifact("epoch-1.pt")


# --------------------------------------------------------------------------- settings


def _resolve(tmp_path: Path, settings: RankSettings, **arguments: Any) -> LoggerConfiguration:
    store = StoreArguments("local", "artifacts", {"key": str(tmp_path)})
    given: dict[str, Any] = {
        "object_name": "{run_name}/{artifact_name}",
        "checkpoint_object_name": "{run_name}/{artifact_name}",
        "upload_staging_folder": None,
        "run_name": None,
        "broker_url": None,
        "state_url": None,
        "ranks": {},
        "fleet_key": None,
        "enqueue_timeout": None,
        "staging": "copy",
        "node_queue": None,
        **arguments,
    }
    return LoggerConfiguration.resolve(store, settings=settings, environ={}, **given)


def _settings(tmp_path: Path, **fields: Any) -> RankSettings:
    return RankSettings(staging_dir=str(tmp_path / "staging"), keys=KEYS, **fields)


def test_the_logger_takes_its_settings_where_no_argument_is_given(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        broker_url="redis://broker:6379/0",
        state_url="redis://state:6379/0",
        run_name="from-settings",
        node_queue="node-7",
        enqueue_timeout=2.5,
        retention_seconds=3600,
    )
    config = _resolve(tmp_path, settings)
    assert config.broker_url == "redis://broker:6379/0"
    assert config.state_url == "redis://state:6379/0"
    assert config.run_name == "from-settings"
    assert config.staging_root == str(tmp_path / "staging")
    assert config.keys is KEYS
    assert repr(KEYS.secrets[0]) not in repr(config)  # the keys never show
    assert config.upload_queue == node_queue("node-7")
    assert config.enqueue_timeout == 2.5
    assert config.retention_seconds == 3600
    assert config.staging is StagingMode.COPY


def test_explicit_arguments_win_over_the_settings(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, broker_url="redis://broker:6379/0", state_url="redis://state:6379/0",
        run_name="from-settings", node_queue="node-7", enqueue_timeout=2.5,
    )  # fmt: skip
    config = _resolve(
        tmp_path,
        settings,
        broker_url="redis://mine:6379/0",
        state_url="redis://my-state:6379/0",
        run_name="mine",
        upload_staging_folder=str(tmp_path / "mine"),
        fleet_key=new_fleet_key(),
        enqueue_timeout=1,
        node_queue="",
        staging="link",
        ranks={"rank": 1, "world_size": 2},
    )
    assert (config.broker_url, config.state_url) == (
        "redis://mine:6379/0",
        "redis://my-state:6379/0",
    )
    assert config.run_name == "mine"
    assert config.staging_root == str(tmp_path / "mine")
    assert config.keys is not None and config.keys.secrets != KEYS.secrets
    assert config.enqueue_timeout == 1.0
    assert config.upload_queue == ""  # an explicit "" is the shared queue
    assert config.staging is StagingMode.LINK
    assert (config.ranks.rank, config.ranks.world_size) == (1, 2)


def test_the_state_redis_is_the_broker_the_logger_uses_unless_set_apart(tmp_path: Path) -> None:
    unset = _settings(tmp_path, broker_url="redis://env:6379/0", state_url=None)
    config = _resolve(tmp_path, unset, broker_url="redis://mine:6379/0")
    assert config.state_url == "redis://mine:6379/0"
    # HOIST_STATE_URL set, even to the environment's broker, is kept.
    same = _settings(tmp_path, broker_url="redis://env:6379/0", state_url="redis://env:6379/0")
    assert _resolve(tmp_path, same, broker_url="redis://mine:6379/0").state_url == (
        "redis://env:6379/0"
    )
    apart = _settings(tmp_path, broker_url="redis://env:6379/0", state_url="redis://state:6379/0")
    assert _resolve(tmp_path, apart, broker_url="redis://mine:6379/0").state_url == (
        "redis://state:6379/0"
    )


def test_the_run_name_falls_back_to_the_launchers(tmp_path: Path) -> None:
    store = StoreArguments("local", "artifacts", {"key": str(tmp_path)})
    config = LoggerConfiguration.resolve(
        store,
        object_name="{artifact_name}",
        checkpoint_object_name="{artifact_name}",
        upload_staging_folder=None,
        run_name=None,
        broker_url=None,
        state_url=None,
        ranks={},
        fleet_key=None,
        enqueue_timeout=None,
        staging="copy",
        node_queue=None,
        settings=_settings(tmp_path),
        environ={"TORCHELASTIC_RUN_ID": "none", "SLURM_JOB_ID": "77", "WORLD_SIZE": "2"},
    )
    assert config.run_name == "slurm-77"
    with pytest.raises(ConfigurationError, match="every rank must log under the same run name"):
        _resolve(tmp_path, _settings(tmp_path), ranks={"world_size": 2, "rank": 0})


@pytest.mark.parametrize(
    ("settings", "arguments", "fragment"),
    [
        ({"keys": None}, {}, "set HOIST_FLEET_KEY to the fleet's key"),
        ({"staging_dir": None}, {}, "no staging directory"),
        ({}, {"enqueue_timeout": 0}, "enqueue_timeout must be more than 0 seconds"),
        ({}, {"staging": "hardlink"}, "staging='hardlink' is not a staging mode"),
    ],
)
def test_a_missing_or_bad_setting_fails_in_the_constructor(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    settings: dict[str, Any],
    arguments: dict[str, Any],
    fragment: str,
) -> None:
    monkeypatch.delenv("HOIST_STAGING_DIR", raising=False)
    given = RankSettings(**{"staging_dir": str(tmp_path), "keys": KEYS, **settings})
    with pytest.raises(ConfigurationError, match=re.escape(fragment)):
        _resolve(tmp_path, given, **arguments)


def test_a_bad_variable_fails_the_constructor_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOIST_RETENTION_DAYS", "a fortnight")
    with pytest.raises(ConfigurationError, match="HOIST_RETENTION_DAYS='a fortnight'"):
        ObjectStoreLogger(
            "local", "artifacts", {"key": str(tmp_path)}, upload_staging_folder=str(tmp_path)
        )


def test_a_logger_given_its_settings_reads_no_hoist_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    for variable in VARIABLES:
        monkeypatch.setenv(variable.name, "not-a-value")
    settings = _settings(
        tmp_path,
        run_name="given",
        enqueue_timeout=1.0,
        retention_seconds=3600,
        broker_url=redis_server.url,
    )
    logger = ObjectStoreLogger(
        "local", "artifacts", {"key": str(tmp_path)}, settings=settings, store_check=False
    )
    try:
        # The records it writes expire after the settings' retention, not HOIST_RETENTION_DAYS'.
        assert logger._records.retention_seconds == 3600
        assert logger.run_name == "given"
        assert logger.staging_root == str(tmp_path / "staging")
        assert logger.enqueue_timeout == 1.0
        assert logger.upload_queue == ""
        assert logger.get_uri_for_artifact("ep1.pt") == "local://artifacts/given/artifacts/ep1.pt"
    finally:
        logger.close()


def test_a_bad_staging_mode_per_call_fails_before_anything_is_staged(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Checked before the sequence number is taken: nothing is staged or recorded."""
    settings = _settings(tmp_path, run_name="modes", broker_url=redis_server.url)
    logger = ObjectStoreLogger(
        "local", "artifacts", {"key": str(tmp_path)}, settings=settings, store_check=False
    )
    kept = tmp_path / "kept.pt"
    kept.write_bytes(b"weights")
    try:
        with pytest.raises(ConfigurationError, match="staging='hardlink' is not a staging mode"):
            logger.file_artifact(LogLevel.EPOCH, "x", kept, staging="hardlink")
        with pytest.raises(ConfigurationError, match="staging='hardlink' is not a staging mode"):
            logger.log_checkpoint_dir(1, tmp_path, files=[kept], staging="hardlink")
        assert kept.read_bytes() == b"weights"
        assert not (tmp_path / "staging" / "modes").exists()
    finally:
        logger.close()


# ----- UploadFailedError's message: checkpoints first, versions folded --------


def _composer_run_failures() -> list[tuple[str, str, str]]:
    """What a Composer run against a missing bucket fails: the log file every batch,
    TensorBoard's events every epoch, and one checkpoint among them (issue 16)."""
    missing = "no such bucket 'ckpt' (StoreNotFoundError)"
    log = ("composer-run/logs/train.log", "composer-run/logs/train.log", missing)
    events = ("tensorboard_logs/composer-run/events.out.tfevents.1-0", "tb/e-0", missing)
    checkpoint = (
        "composer-run/checkpoints/ep1-ba20-rank0.pt",
        "composer-run/checkpoints/ep1-ba20-rank0.pt",
        "already exists with other bytes",
    )
    return [log] * 8 + [events] * 3 + [checkpoint] + [log] * 6 + [events] * 2


def test_upload_failed_message_leads_with_one_sentence_then_the_checkpoint() -> None:
    from hoist.logger.pending import failure_report

    lines = failure_report("composer-run", 0, _composer_run_failures()).splitlines()
    assert lines[0] == (
        "Run 'composer-run' rank 0: 1 checkpoint and 2 other files failed to upload "
        "(20 uploads in all); fix the causes below, then `hoist retry --run=composer-run` "
        "sends them again."
    )
    # The checkpoint's line right after the sentence, though it failed eleventh.
    assert lines[1] == (
        "  checkpoint composer-run/checkpoints/ep1-ba20-rank0.pt: already exists with other bytes"
    )
    # Every version of a name in one line, with the count and the first error;
    # the object name only where it is not the artifact name.
    assert lines[2:] == [
        "  composer-run/logs/train.log: 14 versions failed: "
        "no such bucket 'ckpt' (StoreNotFoundError)",
        "  tensorboard_logs/composer-run/events.out.tfevents.1-0 (tb/e-0): 5 versions failed: "
        "no such bucket 'ckpt' (StoreNotFoundError)",
    ]


def test_upload_failed_message_for_one_upload_and_for_versions_failing_differently() -> None:
    from hoist.logger.pending import failure_report

    assert failure_report("r", 2, [("ep1.pt", "r/artifacts/ep1.pt", "denied")]) == (
        "Run 'r' rank 2: 1 checkpoint failed to upload; fix the cause below, then "
        "`hoist retry --run=r` sends it again.\n"
        "  checkpoint ep1.pt (r/artifacts/ep1.pt): denied"
    )
    # Without a checkpoint the files are not "other"; a name whose versions
    # failed differently shows the last error too.
    report = failure_report(
        "r", 0, [("train.log", "train.log", "timed out"), ("train.log", "train.log", "denied")]
    )
    assert report == (
        "Run 'r' rank 0: 1 file failed to upload (2 uploads in all); fix the causes below, "
        "then `hoist retry --run=r` sends them again.\n"
        "  train.log: 2 versions failed: timed out (the last: denied)"
    )


@pytest.mark.parametrize(
    ("artifact_name", "checkpoint"),
    [
        ("composer-run/checkpoints/ep0-ba10-rank0.pt", True),  # Composer's save_folder
        ("checkpoints/step-00000100/__0_0.distcp", True),  # log_checkpoint_dir
        ("checkpoints/step-00000100/.metadata", True),  # its directory, whatever the file
        ("out/checkpoint-500/trainer_state.json", True),  # Hugging Face's checkpoint-<step>
        ("ep1.pt", True),
        ("ep1.pt.tar", True),  # a suffix anywhere in the file's name
        ("latest-rank0.pt", True),  # a pointer to a checkpoint
        ("model.safetensors", True),
        ("last.ckpt", True),
        ("logs/train.log", False),
        ("tensorboard_logs/r/events.out.tfevents.1700000000.host-0", False),
        ("checkpoint-test/logs/train.log", True),  # a directory named so: a checkpoint's
        ("metrics/checkpoints.csv", False),  # the file's own name is not a directory
        ("reports/ptx.txt", False),
    ],
)
def test_which_failed_artifacts_count_as_checkpoints(artifact_name: str, checkpoint: bool) -> None:
    from hoist.logger.pending import is_checkpoint

    assert is_checkpoint(artifact_name) is checkpoint


def test_wait_raises_the_folded_message_and_keeps_every_version_in_failures() -> None:
    """PendingArtifacts.wait over a stand-in for the records: the message is
    failure_report's, and ``failures`` still lists every failed version."""
    from hoist.errors import UploadFailedError
    from hoist.logger.pending import PendingArtifacts
    from hoist.state.states import State

    failures = _composer_run_failures()
    messages = [
        UploadRequest(f"hoist-r-r0-{seq}", "composer-run", 0, seq, name, obj, f"{seq:08d}", {})
        for seq, (name, obj, _) in enumerate(failures, start=1)
    ]
    errors = {message.id: error for message, (_, _, error) in zip(messages, failures, strict=True)}

    class Records:
        def states(self, artifacts: list[str]) -> dict[str, State]:
            return dict.fromkeys(artifacts, State.FAILED)

        def get(self, artifact: str) -> Any:
            return type("Status", (), {"error": errors[artifact]})()

    pending = PendingArtifacts(Records(), "composer-run", 0, "redis://state")  # type: ignore[arg-type]
    for message in messages:
        pending.add(message)
    with pytest.raises(UploadFailedError) as raised:
        pending.wait(None, None, 0.01)
    assert str(raised.value).splitlines()[1].startswith("  checkpoint composer-run/checkpoints/")
    assert "14 versions failed" in str(raised.value)
    assert raised.value.failures == failures
    assert len(pending) == 0


def test_upload_failed_message_quotes_a_run_name_for_the_shell() -> None:
    """Run names may hold characters a shell reads ('$', ';'); the command copies as is."""
    from hoist.logger.pending import failure_report

    report = failure_report("run$HOME", 0, [("ep1.pt", "ep1.pt", "denied")])
    assert "then `hoist retry --run='run$HOME'` sends it again." in report
