"""Bytes-so-far of an upload in flight, reported at a bounded rate.

The stores call a progress callback for every chunk (often every few
hundred KiB); a Redis write or a Celery event per chunk would cost more than
the chunk. :class:`TransferProgress` counts every call and reports once per
``interval`` seconds, the first time ``interval`` after it started, and once
more when the last byte is counted if it reported before. An upload shorter
than ``interval`` (most small files) reports nothing: its task's own events
already say it started and finished.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from hoist.units import format_bytes

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
        >>> seen, now = [], [0.0]
        >>> progress = TransferProgress(10, lambda done, total: seen.append(done),
        ...                             interval=1, clock=lambda: now[0])
        >>> for _ in range(5):
        ...     now[0] += 0.6
        ...     progress(2)
        >>> seen  # at 1.2 s, at 2.4 s, and the end
        [4, 8, 10]
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
        self._last = clock()
        self._reported = False

    def __call__(self, nbytes: int) -> None:
        self.done += nbytes
        now = self._clock()
        if now - self._last >= self._interval or (self._reported and self.done >= self.total):
            self._last = now
            self._reported = True
            self._report(self.done, self.total)


def callable_from_any_thread(send_event: Callable[..., Any]) -> Callable[..., Any]:
    """``send_event`` (a Celery ``Task.send_event``) made to name its task from any thread.

    ``Task.send_event`` takes the event's ``uuid`` and ``hostname`` from
    ``task.request``, which Celery keeps per thread. S3 multipart sends and
    counts its parts on a thread pool, so a progress event sent from there went
    out with ``uuid`` None: Flower filed it under no task, and the upload
    showed ``STARTED`` until it ended (measured: tests/test_progress.py). Call
    this on the task's own thread; the sender it returns pushes that request
    onto the calling thread's request stack for the one call when it is
    another thread. Anything that is not a bound Celery task method (a test's
    recorder) is returned as it is.
    """
    task = getattr(send_event, "__self__", None)
    stack = getattr(task, "request_stack", None)
    request = getattr(stack, "top", None)
    if stack is None or request is None:
        return send_event
    home = threading.get_ident()

    def send(type_: str, **fields: Any) -> Any:
        if threading.get_ident() == home:
            return send_event(type_, **fields)
        stack.push(request)  # this thread's own stack: no other thread sees it
        try:
            return send_event(type_, **fields)
        finally:
            stack.pop()

    return send


def describe_progress(done: int, total: int) -> str:
    """A person's reading of an upload's progress.

    Example:
        >>> describe_progress(3 * 2**20, 12 * 2**20)
        '3.0 MiB of 12.0 MiB (25%)'
    """
    share = 100 * done // total if total else 100
    return f"{format_bytes(done)} of {format_bytes(total)} ({share}%)"
