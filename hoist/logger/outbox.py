"""From a message to the fleet: signed, recorded, then handed to the sending thread.

The record is written first, on the training thread, and is the durable
promise: from then on the artifact is pending whatever the broker does. The
message itself goes to the broker from the :class:`~hoist.logger.publisher.Publisher`'s
thread. A message the broker refused for ``enqueue_timeout`` seconds marks
its record failed with a reason that says how to send it again, which
``wait()`` then reports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis

from hoist.keys import FleetKeys
from hoist.logger.pending import PendingArtifacts
from hoist.logger.publisher import Outgoing, Publisher
from hoist.logger.retry import StateRetry
from hoist.protocol.messages import PROBE_TASK, Message, ProbeRequest
from hoist.state.records import Records

log = logging.getLogger("hoist.rank")


class Outbox:
    """Signs, records and sends a rank's messages.

    Parameters:
        app: the Celery app to send with (:func:`hoist.protocol.sending.sender`).
        records: the state store the records go to.
        retry: retries record writes through a short Redis outage.
        pending: where a recorded artifact is waited for.
        keys: the fleet keys; messages are signed with the newest.
        store_id: the store's id, recorded beside each upload.
        run_name: the run, for the resend command in error messages.
        broker_shown: the broker's URL with its password masked.
        timeout: the logger's ``enqueue_timeout``: how long the sending
            thread retries an unreachable broker.
        noted: given the rank's failure counter as each record write read it
            (:meth:`hoist.logger.health.FleetHealth.note`).
    """

    def __init__(
        self,
        app: object,
        records: Records,
        retry: StateRetry,
        pending: PendingArtifacts,
        keys: FleetKeys,
        store_id: str,
        run_name: str,
        broker_shown: str,
        timeout: float,
        noted: Callable[[int], None],
    ) -> None:
        self._records = records
        self._retry = retry
        self._pending = pending
        self._keys = keys
        self._store_id = store_id
        self._run_name = run_name
        self._broker_shown = broker_shown
        self._timeout = timeout
        self._noted = noted
        self.publisher = Publisher(app, self._unsent, timeout)

    def enqueue(self, task: str, message: Message, staged: str | None) -> Message:
        """Sign ``message``, write its record, hand it to the sending thread; return it signed.

        Parameters:
            task: the task name.
            message: the unsigned message.
            staged: its staged file, named in errors so that it can be sent again.

        Raises:
            EnqueueError: the state Redis was unreachable for ``enqueue_timeout``.
        """
        message = message.signed(self._keys)
        kept = f"; the staged file is kept at {staged}" if staged else ""
        failures = self._retry(lambda: self._records.create(message, task, self._store_id), kept)
        self.publish(task, message, kept)
        self._noted(failures)
        return message

    def enqueue_once(self, task: str, message: Message) -> bool:
        """Sign and send ``message`` only if no record of its id exists yet; True if sent.

        For a commit: the last rank of a step to register its files sends it,
        and a retried registration must not send it twice.
        """
        message = message.signed(self._keys)
        if not self._retry(lambda: self._records.create_once(message, task)):
            return False
        self.publish(task, message)
        return True

    def send_probe(self, message: ProbeRequest) -> None:
        """Sign a store check and hand it to the sending thread: no record, nothing to wait for."""
        self.publisher.put(Outgoing(PROBE_TASK, message.signed(self._keys)))

    def publish(self, task: str, message: Message, kept: str = "") -> None:
        """Hand a recorded ``message`` to the sending thread; returns at once."""
        # Recorded: from here on the artifact is pending whatever the broker does.
        self._pending.add(message)
        self.publisher.put(Outgoing(task, message, kept))

    def _unsent(self, items: list[Outgoing], exc: Exception) -> None:
        """The publisher gave up on ``items``: mark their records failed, say how to resend."""
        retry = f"hoist retry --run {self._run_name}"
        for item in items:
            if item.task == PROBE_TASK:  # no record to mark: the uploads will say it all
                log.warning("the store check was not sent: the broker is unreachable (%s)", exc)
                continue
            reason = (
                f"never sent: the broker at {self._broker_shown} was unreachable for "
                f"{self._timeout:g} s ({exc}); start it or fix HOIST_BROKER_URL, then "
                f"run `{retry}`{item.kept}"
            )
            try:
                marked = self._records.fail_queued(item.message.id, reason)
            except redis.RedisError:
                marked = False
            if not marked:
                # The record stays queued: wait() goes on waiting for it, and the
                # workers' watchdog or `hoist retry --queued` sends it later.
                log.error(
                    "%s (%s) was not sent and its record could not be marked; run `%s "
                    "--queued` once the broker is back%s",
                    item.message.artifact_name,
                    item.message.id,
                    retry,
                    item.kept,
                )
