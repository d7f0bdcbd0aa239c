"""Sends a rank's messages to the broker from a background thread.

``file_artifact`` returns once the file is staged and its record written:
the record is the durable promise. Publishing the Celery message (kombu
builds it, about 0.4 ms of Python, and one round trip) happens here, off
the training thread, and small uploads logged close together travel as one
batch task (:func:`hoist.protocol.sending.send_batch`).

Nothing is lost on the way: a message this thread never sent (the process
died first) leaves its record queued, and the workers' queued-record
watchdog sends it after ``queued_timeout`` (see :mod:`hoist.state.schedule`);
a message the broker refused for ``enqueue_timeout`` marks its record
failed, which ``wait()`` reports and ``hoist retry`` sends again.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from hoist.protocol.messages import BATCH_FILE_BYTES, MAX_BATCH, Message, UploadRequest
from hoist.protocol.sending import queue_for, send, send_batch

log = logging.getLogger("hoist.rank")

BATCH_LINGER = 0.05
"""Seconds a small upload waits for others to share its task. Uploads take
longer than this anyway; a burst of small files gets batches instead of a
task each."""


@dataclass(frozen=True)
class Outgoing:
    """One message waiting to be sent.

    Parameters:
        task: the task name.
        message: the message.
        kept: what to tell the user about its staged file if it is never sent.
        queued_at: ``time.monotonic()`` when it was handed over.
    """

    task: str
    message: Message
    kept: str = ""
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def batchable(self) -> bool:
        message = self.message
        return isinstance(message, UploadRequest) and message.size <= BATCH_FILE_BYTES


Unsent = Callable[[list[Outgoing], Exception], None]
"""Called with messages the broker refused for ``timeout`` seconds, and why."""


class Publisher:
    """A rank's sending thread: a queue in, Celery tasks out.

    Parameters:
        app: the Celery app to send with (:func:`hoist.protocol.sending.sender`).
        on_unsent: told of messages that could not be sent (see :data:`Unsent`).
        timeout: seconds kombu retries an unreachable broker before giving up.
        linger: seconds a small upload waits for company (:data:`BATCH_LINGER`).

    Example (needs a broker; the logger's tests drive it):
        >>> publisher = Publisher(sender(url), on_unsent=mark_failed, timeout=30)  # doctest: +SKIP
        >>> publisher.put(Outgoing(UPLOAD_TASK, message))  # doctest: +SKIP
        >>> publisher.flush()  # everything put so far is sent (or reported)  # doctest: +SKIP
    """

    def __init__(
        self, app: object, on_unsent: Unsent, timeout: float, linger: float = BATCH_LINGER
    ) -> None:
        self.app = app
        self.on_unsent = on_unsent
        self.timeout = timeout
        self.linger = linger
        self._reset()
        # A rank that ends without close() still sends what it logged.
        atexit.register(_flush_at_exit, weakref.ref(self))

    def _reset(self) -> None:
        self._changed = threading.Condition()
        self._queue: deque[Outgoing] = deque()
        self._unsent = 0  # handed over and neither sent nor given up
        self._flushing = 0
        self._closing = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def put(self, item: Outgoing) -> None:
        """Hand ``item`` over; returns at once."""
        if self._pid != os.getpid():  # a forked child: the parent's thread did not come along
            self._reset()
        with self._changed:
            self._queue.append(item)
            self._unsent += 1
            self._closing = False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="hoist-send")
                self._thread.start()
            self._changed.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything handed over is sent or reported; False on timeout."""
        with self._changed:
            self._flushing += 1
            self._changed.notify_all()
            try:
                return self._changed.wait_for(lambda: self._unsent == 0, timeout)
            finally:
                self._flushing -= 1

    def close(self, timeout: float | None = None) -> bool:
        """Flush, then let the thread end; False if something was still unsent at ``timeout``."""
        flushed = self.flush(timeout)
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        return flushed

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._queue) or self._closing)
                if not self._queue:
                    self._thread = None
                    return
                self._linger()
                items = list(self._queue)
                self._queue.clear()
            try:
                self._send_all(items)
            except Exception:  # this thread is the rank's only sender: it must not die
                log.exception("hoist: sending %d message(s) failed", len(items))
            finally:
                with self._changed:
                    self._unsent -= len(items)
                    self._changed.notify_all()

    def _linger(self) -> None:
        """Give a small upload at the head of the queue time to gather a batch."""
        head = self._queue[0]
        while (
            head.batchable
            and not self._flushing
            and len(self._queue) < MAX_BATCH
            and (left := head.queued_at + self.linger - time.monotonic()) > 0
        ):
            self._changed.wait(left)

    def _send_all(self, items: list[Outgoing]) -> None:
        groups = group_for_sending(items)
        for n, group in enumerate(groups):
            try:
                self._send_group(group)
            except Exception as exc:
                # The broker was unreachable for `timeout` seconds: the rest of
                # what is queued would wait as long again in the same outage.
                given_up = [item for later in groups[n:] for item in later]
                log.error("hoist: %d message(s) not sent: %s", len(given_up), exc)
                self.on_unsent(given_up, exc)
                return

    def _send_group(self, group: list[Outgoing]) -> None:
        if len(group) == 1:
            send(self.app, group[0].task, group[0].message, retry_seconds=self.timeout)
            return
        # Only small uploads share a task (group_for_sending).
        uploads = [cast(UploadRequest, item.message) for item in group]
        send_batch(self.app, uploads, retry_seconds=self.timeout)


def group_for_sending(items: list[Outgoing]) -> list[list[Outgoing]]:
    """Split ``items`` into tasks: runs of small uploads to one queue share one, up to
    :data:`MAX_BATCH`; everything else goes alone. The order is kept.

    Example:
        >>> from hoist.protocol.messages import UPLOAD_TASK
        >>> def upload(size: int) -> Outgoing:
        ...     message = UploadRequest("hoist-r-r0-1", "r", 0, 1, "a", "a", "o", {}, size=size)
        ...     return Outgoing(UPLOAD_TASK, message)
        >>> small, large = upload(1024), upload(BATCH_FILE_BYTES + 1)
        >>> [len(g) for g in group_for_sending([small, small, large, small])]
        [2, 1, 1]
    """
    groups: list[list[Outgoing]] = []
    for item in items:
        last = groups[-1] if groups else None
        if (
            last is not None
            and item.batchable
            and last[0].batchable
            and len(last) < MAX_BATCH
            and queue_for(item.task, item.message) == queue_for(last[0].task, last[0].message)
        ):
            last.append(item)
        else:
            groups.append([item])
    return groups


def _flush_at_exit(ref: weakref.ref[Publisher]) -> None:
    publisher = ref()
    if publisher is not None and publisher._pid == os.getpid():
        publisher.flush(publisher.timeout)
