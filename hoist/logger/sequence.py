"""A rank's sequence numbers: reserved from Redis a block at a time, never reused.

Every artifact of a rank gets the next number of the rank's sequence; it
names the staged file and orders the artifacts of one name (the newest
wins). Asking Redis for each number would cost a round trip per artifact, so
a block of :data:`SEQ_BLOCK` is reserved at once and handed out locally.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable

SEQ_BLOCK = 16
"""Sequence numbers a rank reserves in one round trip to Redis."""


class SequenceNumbers:
    """Hands out a rank's reserved sequence numbers, reserving more when they run out.

    A forked child (a data-loader worker, say) must not reuse the numbers its
    parent reserved: the first call in a new process drops them, and tells
    ``on_fork`` so that the caller can drop the parent's other state too.

    Parameters:
        reserve: reserves the next ``count`` numbers (one Redis round trip,
            retried by the caller's :class:`~hoist.logger.retry.StateRetry`).
        on_fork: called once in a forked child, before its first number.

    Example:
        >>> blocks = iter([range(1, 3), range(3, 5)])
        >>> numbers = SequenceNumbers(lambda count: next(blocks), on_fork=lambda: None)
        >>> [numbers.next() for _ in range(3)]
        [1, 2, 3]
    """

    def __init__(self, reserve: Callable[[int], range], on_fork: Callable[[], None]) -> None:
        self._reserve = reserve
        self._on_fork = on_fork
        self._seqs: deque[int] = deque()  # reserved numbers not used yet
        self._pid = os.getpid()  # whose reserved numbers those are

    def next(self) -> int:
        """The next sequence number of this rank."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._seqs.clear()
            self._on_fork()
        if not self._seqs:
            self._seqs.extend(self._reserve(SEQ_BLOCK))
        return self._seqs.popleft()
