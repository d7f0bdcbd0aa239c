"""How a worker opens, reads and deletes a staged file: the walk that follows no symlink.

Every hostile path is refused with a :class:`SourceFileError` that quotes it
and leaves no descriptor open; an accepted one is read and deleted through
its descriptors, so swapping names afterwards changes nothing. The race
against real workers is in ``tests/test_staged_race.py``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoist.errors import SourceFileError
from hoist.protocol import staged_file
from hoist.protocol.layout import Fingerprint
from hoist.protocol.staged_file import (
    StagedFileMissing,
    open_staged_file,
    proc_fd_available,
    staged_components,
)
from tests.services.bad_input import names

STAGED = "run/rank0/00000001-a"


def open_fds() -> set[str]:
    # listdir opens a descriptor of its own while it reads; it is in both counts.
    return set(os.listdir("/proc/self/fd"))


def opened_since(before: set[str]) -> set[str]:
    """Descriptors open now that were not open at ``before``: the leaks. Another thread
    of the test process (an earlier test's client) closing one of its own meanwhile is
    not one (CI once failed on a descriptor that closed during the call)."""
    return open_fds() - before


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A staging root with a staged file, and an outside directory holding files of the same
    names with other bytes (what a swapped-in symlink would lead to)."""
    root = tmp_path / "staging"
    (root / "run" / "rank0").mkdir(parents=True)
    (root / STAGED).write_bytes(b"staged")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "00000001-a").write_bytes(b"OUTSIDE")
    (outside / "secret").write_bytes(b"OUTSIDE")
    return root, outside


def _symlinked_file(root: Path, outside: Path) -> str:
    (root / "run" / "rank0" / "00000002-b").symlink_to(outside / "secret")
    return "run/rank0/00000002-b"


def _symlink_to_inside(root: Path, outside: Path) -> str:
    (root / "run" / "rank0" / "00000002-b").symlink_to(root / STAGED)
    return str(root / "run" / "rank0" / "00000002-b")


def _symlinked_directory(root: Path, outside: Path) -> str:
    (root / "run" / "rank1").symlink_to(outside)
    return str(root / "run" / "rank1" / "00000001-a")


def _dangling_symlink(root: Path, outside: Path) -> str:
    (root / "run" / "rank0" / "00000002-b").symlink_to(outside / "missing")
    return "run/rank0/00000002-b"


def _fifo(root: Path, outside: Path) -> str:
    os.mkfifo(root / "run" / "rank0" / "00000002-fifo")
    return "run/rank0/00000002-fifo"


def _socket(root: Path, outside: Path) -> str:
    import socket

    path = root / "run" / "rank0" / "sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
    return "run/rank0/sock"


def _sibling_with_root_prefix(root: Path, outside: Path) -> str:
    sibling = root.parent / (root.name + "-evil")
    sibling.mkdir()
    (sibling / "secret").write_bytes(b"OUTSIDE")
    return str(sibling / "secret")


HOSTILE: dict[str, Callable[[Path, Path], str]] = {
    "symlinked file leading outside": _symlinked_file,
    "symlinked file leading inside": _symlink_to_inside,
    "symlinked intermediate directory": _symlinked_directory,
    "dangling symlink": _dangling_symlink,
    "relative '..'": lambda root, outside: "run/rank0/../../../outside/secret",
    "absolute '..'": lambda root, outside: f"{root}/run/../../outside/secret",
    "'..' that would come back inside": lambda root, outside: "run/../" + STAGED,
    "absolute path outside": lambda root, outside: str(outside / "secret"),
    "/etc/passwd": lambda root, outside: "/etc/passwd",
    "/proc/self/root to the staged file": lambda root, outside: f"/proc/self/root{root}/{STAGED}",
    "/proc/self/root, relative": lambda root, outside: "proc/self/root/etc/passwd",
    "/proc/self/cwd": lambda root, outside: "/proc/self/cwd/secret",
    "'//' after the root": lambda root, outside: f"{root}//{STAGED}",
    "'//' inside": lambda root, outside: "run//rank0/00000001-a",
    "'.' component": lambda root, outside: "run/./rank0/00000001-a",
    "trailing '/'": lambda root, outside: STAGED + "/",
    "a sibling sharing the root's prefix": _sibling_with_root_prefix,
    "the root itself": lambda root, outside: str(root),
    "the root with a slash": lambda root, outside: f"{root}/",
    "FIFO": _fifo,
    "socket": _socket,
    "directory instead of a file": lambda root, outside: "run/rank0",
    "a file as a directory (ENOTDIR)": lambda root, outside: STAGED + "/x",
    "missing file": lambda root, outside: "run/rank0/00000009-gone",
    "missing directory": lambda root, outside: "run/rank7/00000001-a",
    "NUL": lambda root, outside: STAGED + "\0x",
    "lone surrogate": lambda root, outside: "run/rank0/\ud800",
    "empty": lambda root, outside: "",
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_paths_are_refused_with_no_descriptor_left_open(
    case: str, tree: tuple[Path, Path]
) -> None:
    root, outside = tree
    path = HOSTILE[case](root, outside)
    before = open_fds()
    with pytest.raises(SourceFileError) as caught:
        open_staged_file(str(root), path)
    assert not opened_since(before), "a descriptor leaked"
    message = str(caught.value)
    assert repr(path) in message, message
    assert "\n" not in message
    # Nothing was touched: the outside files and the staged one are as they were.
    assert (outside / "secret").read_bytes() == b"OUTSIDE"
    assert (root / STAGED).read_bytes() == b"staged"


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("symlinked file leading outside", "is a symlink"),
        ("symlinked intermediate directory", "'run/rank1' is a symlink"),
        ("dangling symlink", "is a symlink"),
        ("absolute '..'", "outside the staging root"),
        ("absolute path outside", "outside the staging root"),
        ("/proc/self/root to the staged file", "outside the staging root"),
        ("FIFO", "it is a FIFO, not a regular file"),
        ("socket", "it is a socket, not a regular file"),
        ("directory instead of a file", "it is a directory, not a regular file"),
        ("a file as a directory (ENOTDIR)", "'run/rank0/00000001-a' is not a directory"),
        ("'//' inside", "an empty or '.' component"),
        ("lone surrogate", "a lone surrogate"),
        ("NUL", "a NUL character"),
    ],
)
def test_refusals_say_why(case: str, says: str, tree: tuple[Path, Path]) -> None:
    root, outside = tree
    with pytest.raises(SourceFileError, match="^refusing to read ") as caught:
        open_staged_file(str(root), HOSTILE[case](root, outside))
    assert says in str(caught.value)


@pytest.mark.parametrize("case", ["missing file", "missing directory"])
def test_a_missing_file_keeps_the_gone_message(case: str, tree: tuple[Path, Path]) -> None:
    root, outside = tree
    path = HOSTILE[case](root, outside)
    with pytest.raises(StagedFileMissing) as caught:
        open_staged_file(str(root), path)
    assert str(caught.value).startswith(f"the staged file {path!r} is gone")


def test_a_path_of_the_wrong_type_is_refused(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    with pytest.raises(SourceFileError, match="a staged path is a string"):
        open_staged_file(str(root), ["/etc/shadow"])  # type: ignore[arg-type]


def test_a_missing_staging_root_is_a_refusal_naming_it(tmp_path: Path) -> None:
    before = open_fds()
    with pytest.raises(SourceFileError, match="the staging root .* cannot be opened"):
        open_staged_file(str(tmp_path / "nowhere"), STAGED)
    assert not opened_since(before)


@pytest.mark.parametrize("absolute", [False, True], ids=["relative", "absolute"])
def test_a_staged_file_opens_and_reads_through_its_descriptor(
    absolute: bool, tree: tuple[Path, Path]
) -> None:
    root, _ = tree
    path = str(root / STAGED) if absolute else STAGED
    before = open_fds()
    with open_staged_file(str(root), path) as staged:
        assert staged.path == path
        assert staged.size == 6
        assert Path(staged.proc_path).read_bytes() == b"staged"
        assert staged.fingerprint() == Fingerprint.of(str(root / STAGED))
        assert os.stat(staged.proc_path).st_ino == os.stat(root / STAGED).st_ino
    assert not opened_since(before)


def test_the_root_may_be_named_by_a_symlink_or_its_real_path(tree: tuple[Path, Path]) -> None:
    """The operator's root may itself be a symlink (a mount point alias); ranks may send
    paths under either name."""
    root, _ = tree
    alias = root.parent / "alias"
    alias.symlink_to(root)
    for path in (str(alias / STAGED), str(root / STAGED), STAGED):
        with open_staged_file(str(alias), path) as staged:
            assert Path(staged.proc_path).read_bytes() == b"staged"
    assert staged_components(str(root) + "/", str(root / STAGED)) == STAGED.split("/")


def test_a_swap_after_the_open_changes_neither_what_is_read_nor_what_is_deleted(
    tree: tuple[Path, Path],
) -> None:
    """The race the walk wins: the directory becomes a symlink to an outside directory
    holding a file of the same name, after the open."""
    root, outside = tree
    rank = root / "run" / "rank0"
    with open_staged_file(str(root), str(rank / "00000001-a")) as staged:
        rank.rename(root / "run" / ".moved")
        rank.symlink_to(outside)
        assert (rank / "00000001-a").read_bytes() == b"OUTSIDE"  # the name now leads outside
        assert Path(staged.proc_path).read_bytes() == b"staged"
        assert staged.unlink() is True
    assert (outside / "00000001-a").read_bytes() == b"OUTSIDE", "an outside file was deleted"
    assert not (root / "run" / ".moved" / "00000001-a").exists()


def test_deletion_is_refused_when_the_name_holds_another_file(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    with open_staged_file(str(root), STAGED) as staged:
        swapped = root / "run" / "rank0" / "swap"
        swapped.write_bytes(b"swapped in")
        os.replace(swapped, root / STAGED)
        assert staged.unlink() is False
    assert (root / STAGED).read_bytes() == b"swapped in"


def test_deletion_is_refused_when_the_name_became_a_symlink(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    with open_staged_file(str(root), STAGED) as staged:
        os.unlink(root / STAGED)
        (root / STAGED).symlink_to(outside / "secret")
        assert staged.unlink() is False
    assert (root / STAGED).is_symlink()
    assert (outside / "secret").read_bytes() == b"OUTSIDE"


def test_deletion_of_a_name_already_gone_is_quiet(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    with open_staged_file(str(root), STAGED) as staged:
        os.unlink(root / STAGED)
        assert staged.unlink() is False
        assert Path(staged.proc_path).read_bytes() == b"staged"  # still readable, unlinked


def test_closing_twice_is_harmless(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    staged = open_staged_file(str(root), STAGED)
    staged.close()
    staged.close()
    assert staged.fd == staged.dir_fd == -1


def test_a_machine_failure_is_raised_for_a_retry_not_a_refusal(
    tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = tree
    real_open = os.open
    before = open_fds()

    def exhausted(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if dir_fd is not None:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, flags, mode)

    monkeypatch.setattr(staged_file.os, "open", exhausted)
    with pytest.raises(OSError) as caught:
        open_staged_file(str(root), STAGED)
    assert not isinstance(caught.value, SourceFileError)
    assert caught.value.errno == errno.EMFILE
    monkeypatch.undo()
    assert not opened_since(before)


def test_proc_fd_is_available_here() -> None:
    # The workers' hosts and these tests' both have it; without it every upload is refused.
    assert proc_fd_available()


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=names, absolute=st.booleans())
def test_the_walk_never_opens_anything_but_a_regular_file_inside_the_root(
    path: str, absolute: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = _hypothesis_tree(tmp_path_factory)
    candidate = str(root) + "/" + path if absolute else path
    before = open_fds()
    try:
        with open_staged_file(str(root), candidate) as staged:
            inode = os.fstat(staged.fd).st_ino
    except SourceFileError as exc:
        assert repr(candidate) in str(exc), str(exc)
        assert not opened_since(before)
        return
    inside = {p.stat().st_ino for p in root.rglob("*") if p.is_file() and not p.is_symlink()}
    assert inode in inside
    assert not opened_since(before)


_TREES: dict[str, Path] = {}


def _hypothesis_tree(factory: pytest.TempPathFactory) -> Path:
    """One tree for all examples: files, symlinks out and in, a FIFO and a secret beside it."""
    if "root" not in _TREES:
        base = factory.mktemp("walk")
        root = base / "staging"
        (root / "run" / "rank0").mkdir(parents=True)
        (root / "run" / "rank0" / "00000001-a").write_bytes(b"staged")
        (root / "a").write_bytes(b"top")
        (base / "secret").write_bytes(b"secret")
        (root / "link-out").symlink_to(base / "secret")
        (root / "run" / "dir-out").symlink_to(base)
        (root / "run" / "link-in").symlink_to(root / "run" / "rank0" / "00000001-a")
        os.mkfifo(root / "run" / "fifo")
        _TREES["root"] = root
    return _TREES["root"]
