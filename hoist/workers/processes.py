"""Supervising the local cluster's processes: start, recognise, signal, wait, read their logs.

Each process is started in a session of its own (see :func:`launch`) and
recorded as a :class:`Managed` in ``<home>/cluster.json``, so that a later
``hoist down`` can tell it from another process that reused its pid.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3… of ``/proc/<pid>/stat`` (state first), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    except OSError:
        return []  # exists, unreadable: treat as alive, identity unknown


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell pid reuse apart."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


@dataclass
class Managed:
    """One process of the cluster, as recorded in ``cluster.json``.

    Parameters:
        name: ``redis``, ``worker<i>`` or ``flower``.
        pid: its pid; it leads a session and process group of its own.
        started: :func:`start_ticks` at launch, or None where /proc is absent.
        log: its log file.
    """

    name: str
    pid: int
    started: int | None
    log: str
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "started": self.started, "log": self.log}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Managed:
        return cls(data["name"], int(data["pid"]), data.get("started"), data["log"])

    def alive(self) -> bool:
        """Running, and still the process we started (not a zombie, not a reused pid)."""
        if self.popen is not None:
            return self.popen.poll() is None
        if os.path.isdir("/proc"):
            fields = _proc_stat(self.pid)
            if fields is None or (fields and fields[0] in ("Z", "X")):
                return False
            return self.started is None or start_ticks(self.pid) in (None, self.started)
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def exit_code(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def send(self, sig: int, group: bool = False) -> None:
        """Send ``sig`` to the process (or its whole group); gone processes are ignored."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)


def wait_gone(
    processes: list[Managed], timeout: float, hurry: threading.Event | None = None
) -> list[Managed]:
    """Wait until ``processes`` exit, at most ``timeout`` s; return those still running."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in processes if p.alive()]
        if not left or time.monotonic() >= deadline or (hurry is not None and hurry.is_set()):
            return left
        time.sleep(0.1)


def launch(
    name: str,
    argv: list[str],
    log_path: Path,
    env: dict[str, str],
) -> Managed:
    """Start ``argv`` in a new session with output appended to ``log_path``."""
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            # Its own session: a terminal's Ctrl-C reaches `hoist up` only, which
            # stops everything in order, and --detach outlives the terminal.
            start_new_session=True,
        )
    return Managed(name, popen.pid, start_ticks(popen.pid), str(log_path), popen)


def logged(path: str, offset: int, needle: str) -> Callable[[], bool]:
    """A readiness check: has ``needle`` been written to ``path`` past ``offset``?"""

    def check() -> bool:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return needle.encode() in f.read()
        except FileNotFoundError:
            return False

    return check


def log_size(path: Path) -> int:
    """The size of a log file so far (0 if there is none), to look past its old lines."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def log_tail(path: str, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
