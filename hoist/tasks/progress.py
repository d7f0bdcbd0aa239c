"""Bytes-so-far of an upload in flight, reported at a bounded rate.

The stores call a progress callback for every chunk (often every few
hundred KiB); a Redis write or a Celery event per chunk would cost more than
the chunk. :class:`TransferProgress` counts every call and reports at most
once per ``interval`` seconds, and once more when the last byte is counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.filesize import decimal

PROGRESS_EVENT = "task-progress"
"""The Celery event an upload sends; Flower shows the task as ``PROGRESS``."""


class TransferProgress:
    """Counts transferred bytes and reports them now and then.

    Parameters:
        total: the size of the transfer in bytes.
        report: called as ``report(done, total)``; an exception in it is the
            caller's to handle (the upload's progress callback lets it stop
            the transfer).
        interval: the least time between two reports, in seconds.
        clock: a monotonic clock, replaceable in tests.

    Example:
        >>> seen = []
        >>> progress = TransferProgress(10, lambda done, total: seen.append(done), interval=60)
        >>> for _ in range(5):
        ...     progress(2)
        >>> seen  # the first chunk, then the last: the 60 s in between never passed
        [2, 10]
    """

    def __init__(
        self,
        total: int,
        report: Callable[[int, int], None],
        interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.done = 0
        self._report = report
        self._interval = interval
        self._clock = clock
        self._last: float | None = None

    def __call__(self, nbytes: int) -> None:
        self.done += nbytes
        now = self._clock()
        finished = self.done >= self.total
        if finished or self._last is None or now - self._last >= self._interval:
            self._last = now
            self._report(self.done, self.total)


def describe_progress(done: int, total: int) -> str:
    """A person's reading of an upload's progress.

    Example:
        >>> describe_progress(3_000_000, 12_000_000)
        '3.0 MB of 12.0 MB (25%)'
    """
    share = 100 * done // total if total else 100
    return f"{decimal(done)} of {decimal(total)} ({share}%)"
