"""Sends deferred artifacts again when they fall due.

Every worker runs one resender thread. Entries are taken atomically (and
pushed a little into the future, so one taken by a resender that dies is
taken again later), so each is sent once per due time across the fleet; a
rare duplicate send finds the record's claim and does nothing.
"""

from __future__ import annotations

import json
import logging
import time

from celery import Celery

from hoist.protocol.messages import MESSAGE_TYPES
from hoist.protocol.sending import send
from hoist.state.records import DEFERRED, ArtifactStatus, State
from hoist.tasks.worker_context import WorkerContext

log = logging.getLogger("hoist.resender")


class Resender:
    """Moves due entries of the deferred set back onto the broker.

    Parameters:
        ctx: the worker context (for the records).
        app: the Celery app to send with.
        interval: seconds between looks.
    """

    def __init__(self, ctx: WorkerContext, app: Celery, interval: float = 0.25) -> None:
        self.ctx = ctx
        self.app = app
        self.interval = interval

    def run_forever(self) -> None:
        while True:
            try:
                if not self.send_due():
                    time.sleep(self.interval)
            except Exception as exc:
                # Whatever goes wrong (Redis away, kombu's OperationalError after
                # its own retries), this thread is the fleet's only way back for
                # deferred artifacts: it must not die.
                log.warning("resender: %s; trying again in 1 s", exc)
                time.sleep(1.0)

    def send_due(self) -> int:
        """Send every due artifact; return how many were looked at."""
        records = self.ctx.records
        due = records.take_due()
        for artifact in due:
            status = records.get(artifact)
            if status is None or status.state.terminal:
                records.client.zrem(DEFERRED, artifact)
                continue
            if status.state is State.QUEUED and not self._overdue(status):
                continue
            task = status.fields["task"]
            send(
                self.app, task, MESSAGE_TYPES[task].from_json(json.loads(status.fields["message"]))
            )
        return len(due)

    def _overdue(self, status: ArtifactStatus) -> bool:
        """Whether a queued (never claimed) artifact has waited too long; if not, look later.

        Its message may be lost (see :mod:`hoist.state.records`); after
        ``queued_timeout`` it is sent again, and looked at again one period later.
        """
        timeout = self.ctx.settings.queued_timeout
        fields = status.fields
        sent = max(float(fields.get("enqueued_at") or 0), float(fields.get("resent_at") or 0))
        now = time.time()
        if now < sent + timeout:
            self.ctx.records.recheck_queued(status.id, sent + timeout)
            return False
        log.warning(
            "%s was sent %.0f s ago and no worker has claimed it; sending it again",
            status.id,
            now - sent,
        )
        self.ctx.records.mark_resent(status.id, now)
        self.ctx.records.recheck_queued(status.id, now + timeout)
        return True
