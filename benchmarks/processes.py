"""What processes use, read from /proc: CPU seconds and memory, sampled while work runs."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def group_pids(pgid: int) -> list[int]:
    """Every live process whose process group is ``pgid`` (a worker and its pool)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry))[2]) == pgid:  # field 5: pgrp
                found.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds the processes have used so far (live ones only)."""
    total = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def _kib(pid: int, path: str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/{path}") as status:
            for line in status:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    return _kib(pid, "status", "VmRSS:")


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages split among their sharers, so a sum is honest."""
    return _kib(pid, "smaps_rollup", "Pss:")


@dataclass
class MemorySampler:
    """Samples a process group's memory every ``interval`` seconds in a thread.

    Parameters:
        pgid: the process group (a ``hoist worker`` and its pool processes).
        interval: seconds between samples.

    Attributes:
        peak_pss_kib: the largest sum of PSS over the group seen.
        peak_rss_kib: the largest RSS of any one process of the group seen.

    Example:
        >>> with MemorySampler(worker_pgid) as sampler:  # doctest: +SKIP
        ...     upload()
        >>> sampler.peak_pss_kib
    """

    pgid: int
    interval: float = 0.02
    peak_pss_kib: int = 0
    peak_rss_kib: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _sample(self) -> None:
        pids = group_pids(self.pgid)
        self.peak_pss_kib = max(self.peak_pss_kib, sum(pss_kib(p) for p in pids))
        self.peak_rss_kib = max(self.peak_rss_kib, max((rss_kib(p) for p in pids), default=0))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> MemorySampler:
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
