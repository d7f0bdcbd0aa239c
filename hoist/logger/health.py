"""What a rank learns between its calls: failures the fleet recorded, and how its store check went.

A run that logs to a missing bucket must not train for three days and learn
at ``close()`` that nothing landed. So at each logger call
(``file_artifact``, ``symlink_artifact``, ``log_checkpoint_dir``, and
``check()``, which Composer's ``batch_end`` and Hugging Face's ``on_step_end``
call) the rank asks one question: has its failure counter
(:mod:`hoist.state.signals`) moved since the last call? Workers raise it in
the same transaction that records a failure, so "known" means recorded: the
first call after the record says failed raises
:class:`~hoist.errors.UploadFailedError`, naming the artifact, the cause and
the fix, or, with ``on_failure="warn"``, logs it once and lets training go
on. A failed store check (:mod:`hoist.tasks.probe_job`) raises the counter
too, and is reported the same way.

A logging call reads the counter in the round trip that writes its record
(:meth:`~hoist.state.records.Records.create`), so the question costs the
training loop nothing; it raises after handing its own file over (that file
is staged and recorded, and will upload: the error is about earlier ones).
``check()`` asks with a GET of its own.

An artifact that keeps retrying is no failure yet, but a person should hear
of it before its retries run out: at most every :data:`RETRY_LOOK_SECONDS`,
a call looks at the rank's retrying artifacts and warns once for each that
has retried for more than :data:`RETRY_WARN_SECONDS`, with its last error.

If Redis does not answer, the look is skipped: the next record write waits
for Redis and says so.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from enum import Enum

import redis

from hoist.errors import ConfigurationError, InvalidObjectNameError, UploadFailedError
from hoist.logger.object_names import ObjectNames
from hoist.logger.outbox import Outbox
from hoist.logger.pending import Failure, PendingArtifacts, failure_report
from hoist.protocol.messages import (
    PROBE_NAME,
    ProbeRequest,
    order_key,
    probe_id,
    probe_object_name,
)
from hoist.state.records import Records
from hoist.state.signals import ProbeOutcome, failures, read_probe
from hoist.stores.spec import StoreSpec

log = logging.getLogger("hoist.rank")

RETRY_WARN_SECONDS = 60.0
"""An artifact retrying longer than this is worth a warning on the rank."""
RETRY_LOOK_SECONDS = 15.0
"""Least time between two looks at the retrying artifacts (a call over all pending ones)."""
PROBE_PATIENCE_SECONDS = 60.0
"""A store check unanswered this long gets a warning: is any worker running?"""


class OnFailure(str, Enum):
    """What a logger call does when it learns that an upload failed."""

    RAISE = "raise"
    """Raise :class:`~hoist.errors.UploadFailedError` (the default)."""
    WARN = "warn"
    """Log each failure once and go on; ``close()`` logs what is left instead of raising."""


def on_failure_mode(value: OnFailure | str) -> OnFailure:
    """Parse ``on_failure``, refusing anything but ``"raise"`` and ``"warn"``.

    Example:
        >>> on_failure_mode("warn")
        <OnFailure.WARN: 'warn'>
    """
    try:
        return OnFailure(value)
    except ValueError:
        raise ConfigurationError(f"on_failure must be 'raise' or 'warn', not {value!r}") from None


def store_check_request(
    names: ObjectNames, spec: StoreSpec, run_name: str, rank: int
) -> ProbeRequest | None:
    """The store check a logger sends when it starts, unsigned.

    Its object is named as the logger's artifacts are (the ``object_name``
    template), so it tests the prefix the uploads will use and the fleet's
    allowed stores judge it as they will judge them; a template without a
    directory (Composer's ``{artifact_name}``) gets the run's name in front.
    None where the store cannot hold such a name (a run name too long for
    its file names, say): each artifact's own call then says what to fix.
    """
    nonce = secrets.token_hex(6)
    try:
        object_name = names.artifact(probe_object_name(nonce))
    except InvalidObjectNameError:
        return None
    if "/" not in object_name:
        object_name = f"{run_name}/{object_name}"
    return ProbeRequest(
        id=probe_id(run_name, rank, nonce),
        run_name=run_name,
        rank=rank,
        seq=0,
        artifact_name=PROBE_NAME,
        object_name=object_name,
        order=order_key(rank, 0),
        store=spec.to_json(),
    )


class FleetHealth:
    """Watches a rank's failure counter and its store check.

    Parameters:
        records: the state store.
        pending: the rank's pending artifacts (failures found are taken from it).
        run_name, rank: whose counter to watch.
        on_failure: what :meth:`check` does with a failure.
        seen: the failure counter when the logger started: failures of an
            earlier incarnation of this rank (a resumed run) are not news.
        clock: ``time.monotonic``; tests pass their own.
    """

    def __init__(
        self,
        records: Records,
        pending: PendingArtifacts,
        run_name: str,
        rank: int,
        on_failure: OnFailure,
        seen: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = records.client
        self._pending = pending
        self._run_name = run_name
        self._rank = rank
        self.on_failure = on_failure
        self._clock = clock
        self._seen = self._noted = seen
        self._probe: str | None = None
        self._probe_sent = 0.0
        self._probe_late_warned = False
        self._next_look = clock() + RETRY_LOOK_SECONDS
        self._warned_retrying: set[str] = set()

    def send_store_check(self, outbox: Outbox, names: ObjectNames, spec: StoreSpec) -> None:
        """Send the logger's store check (:func:`store_check_request`) and watch for its outcome."""
        probe = store_check_request(names, spec, self._run_name, self._rank)
        if probe is None:
            return
        outbox.send_probe(probe)
        self._probe = probe.id
        self._probe_sent = self._clock()

    def note(self, count: int) -> None:
        """The failure counter as a record write read it (:meth:`Records.create`)."""
        self._noted = count

    def after_call(self) -> None:
        """Raise (or warn) for what the call's record writes learned; see :meth:`check`.

        No request of its own unless the counter moved or a periodic look
        (:data:`RETRY_LOOK_SECONDS`) falls due.
        """
        self._act(None)

    def check(self, store_check_timeout: float = 0.0) -> None:
        """Ask the state Redis now, and raise (or warn) for what the fleet recorded.

        Parameters:
            store_check_timeout: wait up to this many seconds for the store
                check's answer first (0: only look); a check unanswered by
                then is not an error (the fleet may be scaling up).

        Raises:
            UploadFailedError: with ``on_failure="raise"``: the store check
                failed, or artifacts of this rank failed, each reported once.
        """
        try:
            store_error = self._wait_for_probe(store_check_timeout)
            self._noted = failures(self._client, self._run_name, self._rank)
        except redis.RedisError:
            return  # the next record write waits for Redis, and says so
        self._act(store_error)

    def _act(self, store_error: str | None) -> None:
        try:
            news_error, failures = self._news()
        except redis.RedisError:
            return
        store_error = store_error or news_error
        if store_error is not None or failures:
            self.report(failures, store_error)

    def _news(self) -> tuple[str | None, list[Failure]]:
        """The store check's error and the failures, found since the last look."""
        store_error = None
        failures: list[Failure] = []
        if self._noted != self._seen:
            store_error = self._read_probe()
            failures = self._pending.take_failures()
            if self._pending.answered:  # else look again at the next call
                self._seen = self._noted
        if self._clock() >= self._next_look:
            self._next_look = self._clock() + RETRY_LOOK_SECONDS
            self._warn_retrying()
            store_error = store_error or self._read_probe()
            if self._probe is not None:
                self._warn_if_probe_late()
        return store_error, failures

    def _wait_for_probe(self, timeout: float) -> str | None:
        deadline = self._clock() + timeout
        while self._probe is not None and self._clock() < deadline:
            store_error = self._read_probe()
            if self._probe is None:
                return store_error
            time.sleep(0.1)
        return None

    def _read_probe(self) -> str | None:
        """Look at the store check if it is unanswered; its error once it failed."""
        if self._probe is None:
            return None
        outcome = read_probe(self._client, self._probe)
        return None if outcome is None else self._probe_answered(outcome)

    def report(self, failures: list[Failure], store_error: str | None = None) -> None:
        """Raise :class:`UploadFailedError` for ``failures`` and a failed store check,
        or log them (``on_failure="warn"``)."""
        lines = []
        if store_error is not None:
            lines.append(
                f"Run {self._run_name!r} rank {self._rank}: the fleet cannot use this "
                f"logger's store, so no upload of this run can land; fix the store's "
                f"arguments or the workers' credentials, then start again. The workers "
                f"said: {store_error}"
            )
        if failures:
            lines.append(failure_report(self._run_name, self._rank, failures))
        text = "\n".join(lines)
        if self.on_failure is OnFailure.WARN:
            log.error("%s", text)
            return
        if store_error is not None:
            failures = [(PROBE_NAME, "", store_error), *failures]
        raise UploadFailedError(text, failures)

    def _probe_answered(self, outcome: ProbeOutcome) -> str | None:
        """Stop watching the store check; its error, or None if it passed."""
        self._probe = None
        if outcome.note:
            log.warning("store check: %s", outcome.note)
        if outcome.ok:
            log.debug("store check passed on worker %s", outcome.worker)
            return None
        return outcome.error

    def _warn_if_probe_late(self) -> None:
        if self._probe_late_warned or self._clock() - self._probe_sent < PROBE_PATIENCE_SECONDS:
            return
        self._probe_late_warned = True
        log.warning(
            "no hoist worker has answered this logger's store check after %.0f s: nothing "
            "is uploaded until one runs; `hoist status` and the workers' logs tell more",
            self._clock() - self._probe_sent,
        )

    def _warn_retrying(self) -> None:
        now = time.time()
        for message, fields in self._pending.retrying():
            since = float(fields.get("retrying_since") or now)
            if message.id in self._warned_retrying or now - since < RETRY_WARN_SECONDS:
                continue
            self._warned_retrying.add(message.id)
            due = float(fields.get("next_attempt_at") or now)
            log.warning(
                "%s (%s) has been retrying for %.0f s (%s attempts); last error: %s; "
                "next attempt in %.0f s",
                message.artifact_name,
                message.object_name,
                now - since,
                fields.get("attempts", "?"),
                fields.get("error", "unknown"),
                max(0.0, due - now),
            )
