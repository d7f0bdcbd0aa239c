"""A logger's link to its fleet: the records, the sending thread, and what it waits for.

Built once by the logger's constructor from its
:class:`~hoist.logger.configuration.LoggerConfiguration`. The first round
trip to the state Redis happens here, so an unreachable Redis is an error of
the constructor, after ``enqueue_timeout`` (the message gives the time
actually waited), not of the first checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from hoist.logger.backlog import StagingBudget
from hoist.logger.configuration import LoggerConfiguration
from hoist.logger.health import FleetHealth, OnFailure
from hoist.logger.outbox import Outbox
from hoist.logger.pending import PendingArtifacts
from hoist.logger.retry import StateRetry
from hoist.logger.sequence import SequenceNumbers
from hoist.protocol.sending import sender
from hoist.protocol.urls import mask_url
from hoist.state.records import Records


@dataclass(frozen=True)
class FleetConnection:
    """The logger's collaborators that talk to Redis and the broker; one concept each.

    Parameters:
        records: the state store.
        retry: record writes retried through a short Redis outage.
        pending: what ``wait()`` waits for.
        health: failures raised at the next call, and the store check.
        outbox: sign, record, hand to the sending thread.
        seqs: the rank's sequence numbers.
        budget: the bound on the rank's staged bytes.
    """

    records: Records
    retry: StateRetry
    pending: PendingArtifacts
    health: FleetHealth
    outbox: Outbox
    seqs: SequenceNumbers
    budget: StagingBudget

    @classmethod
    def open(cls, config: LoggerConfiguration, on_failure: OnFailure) -> FleetConnection:
        """Connect as ``config`` says; raises :class:`~hoist.errors.EnqueueError` when the
        state Redis does not answer within ``config.enqueue_timeout``."""
        run, rank = config.run_name, config.ranks.rank
        # For error messages: where the rank tried to reach, never with its password.
        state_shown = mask_url(config.state_url)
        records = Records.from_url(
            config.state_url, sentinel=config.sentinel, retention_seconds=config.retention_seconds
        )
        retry = StateRetry(config.enqueue_timeout, state_shown)
        pending = PendingArtifacts(records, run, rank, state_shown)
        # The first round trip doubles as the check that the state Redis answers.
        seen = retry(lambda: records.failures(run, rank), then="build the logger again")
        health = FleetHealth(records, pending, run, rank, on_failure, seen)
        outbox = Outbox(
            sender(config.broker_url, config.sentinel),
            records,
            retry,
            pending,
            config.keys,
            config.spec.store_id,
            run,
            mask_url(config.broker_url),
            config.enqueue_timeout,
            health.note,
        )
        seqs = SequenceNumbers(
            lambda count: retry(lambda: records.reserve_seqs(run, rank, count)),
            # A forked child (a data-loader worker, say) must not wait for the
            # parent's uploads either.
            on_fork=pending.clear,
        )
        budget = StagingBudget(config.max_staged_bytes, config.when_staging_full, pending, records)
        return cls(records, retry, pending, health, outbox, seqs, budget)
