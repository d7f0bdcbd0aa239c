"""Watching a value change while a test runs (a pointer's target, a step number)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ValueWatch(Generic[T]):
    """Calls ``read`` every ``interval`` seconds in a thread and keeps each new value.

    Parameters:
        read: returns the current value, or None while there is none yet.
        interval: seconds between reads.

    Example:
        >>> with ValueWatch(lambda: pointer_target()) as watch:
        ...     run_the_fault()
        >>> watch.seen  # every distinct value in order, e.g. ['v2', 'v3']
    """

    def __init__(self, read: Callable[[], T | None], interval: float = 0.02) -> None:
        self.read = read
        self.interval = interval
        self.seen: list[T] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="value-watch")

    def __enter__(self) -> ValueWatch[T]:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._take()  # the value as the watch ends

    def _take(self) -> None:
        value = self.read()
        if value is not None and (not self.seen or self.seen[-1] != value):
            self.seen.append(value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()
