"""The store check a logger asks for when it starts: can the fleet use this store at all?

Composer's own uploader fails in the ``Trainer`` constructor when its bucket
is wrong; hoist's ranks cannot tell, since only the workers hold the
credentials that count (and often the only route to the store). So a logger
sends one :class:`~hoist.protocol.messages.ProbeRequest` when it is built,
and a worker makes the requests an upload would: the bucket or container
exists and takes the credentials (:meth:`~hoist.stores.base.ObjectStore.check`),
and a small object under the logger's prefix can be written, verified and
deleted. The outcome goes to :mod:`hoist.state.signals`, where the rank reads
it at its next call and raises a failure there, hours before ``close()``.

A transient error (a connection reset) is tried again twice, a second apart,
inside the task: a probe is a few small requests, and one answer that
outlives a short blip is worth more than a schedule. One that outlasts the
tries passes with a note (the rank warns): uploads retry for minutes, so a
blip must not fail a run. A store that refuses deletes (a write-only
policy) passes with a note too: uploads never delete. A probe may name
only a ``hoist-store-check-…`` object (:data:`PROBE_OBJECT`), so a probe
message can neither replace nor delete an artifact.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from hoist.errors import InvalidMessageError, StoreAuthError, StoreNotAllowedError
from hoist.protocol.messages import PROBE_OBJECT, PROBE_TASK, ProbeRequest
from hoist.state.signals import ProbeOutcome, record_probe
from hoist.tasks.job import Job, is_retryable
from hoist.tasks.worker_context import WorkerContext

log = logging.getLogger("hoist.worker")

PROBE_TRIES = 3
"""Tries of a probe that meets transient errors, :data:`PROBE_PAUSE_SECONDS` apart."""
PROBE_PAUSE_SECONDS = 1.0
PROBE_BYTES = b"hoist store check: safe to delete\n"


class ProbeJob(Job):
    """Try the store as an upload would, and record what happened for the rank."""

    task = PROBE_TASK
    message_type = ProbeRequest
    message: ProbeRequest

    def __init__(
        self,
        ctx: WorkerContext,
        message: dict[str, Any],
        task_id: str,
        send_event: Any = None,
    ) -> None:
        try:
            super().__init__(ctx, message, task_id, send_event)
        except StoreNotAllowedError as exc:
            # Raised only after the signature was checked: the message is the
            # rank's own, and this refusal is exactly what the probe is for.
            probe = ProbeRequest.from_json(message)
            self._record(ctx, probe, ProbeOutcome(ok=False, error=f"{exc}"))
            raise
        if not PROBE_OBJECT.fullmatch(self.message.object_name):
            # A check writes and deletes its object: never let it name another.
            raise InvalidMessageError(
                f"a store check may only name a hoist-store-check-… object, not "
                f"{self.message.object_name[:200]!r}"
            )

    def run(self) -> dict[str, Any]:
        # No claim and no record: a probe is idempotent (the same name written
        # and deleted), so a duplicate delivery only checks twice.
        outcome = self._try_store()
        self._record(self.ctx, self.message, outcome)
        if outcome.ok:
            return {"id": self.message.id, "outcome": "done", "note": outcome.note}
        log.error("store check of run %s failed: %s", self.message.run_name, outcome.error)
        return {"id": self.message.id, "outcome": "failed", "error": outcome.error}

    def _try_store(self) -> ProbeOutcome:
        for attempt in range(1, PROBE_TRIES + 1):
            try:
                return self._probe_once()
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if not is_retryable(exc):
                    return ProbeOutcome(ok=False, error=error, worker=socket.gethostname())
                if attempt == PROBE_TRIES:
                    # A blip outlasting three tries is no proof the store is wrong,
                    # and uploads retry for minutes: warn, never fail the run.
                    note = f"inconclusive after {PROBE_TRIES} tries: {error}"
                    return ProbeOutcome(ok=True, note=note, worker=socket.gethostname())
                log.warning("store check of %s: %s; trying again", self.message.run_name, error)
                time.sleep(PROBE_PAUSE_SECONDS)
        raise AssertionError("unreachable")  # pragma: no cover

    def _probe_once(self) -> ProbeOutcome:
        store = self.ctx.store(self.spec)
        store.check()
        # A fresh random name (and only ever a check's, see PROBE_OBJECT): no HEAD first.
        store.put_bytes(self.message.object_name, PROBE_BYTES)
        note = ""
        try:
            store.delete(self.message.object_name)
        except StoreAuthError as exc:
            note = (
                f"could not delete the check's object {store.get_uri(self.message.object_name)} "
                f"({exc}); uploads do not need deletes, but remove it by hand"
            )
        return ProbeOutcome(ok=True, note=note, worker=socket.gethostname())

    @staticmethod
    def _record(ctx: WorkerContext, probe: ProbeRequest, outcome: ProbeOutcome) -> None:
        records = ctx.records
        record_probe(
            records.client, probe.id, outcome, probe.run_name, probe.rank, records.retention_seconds
        )
