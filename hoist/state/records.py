"""The durable record of every artifact, kept in Redis.

The broker is not a database: Celery does not deduplicate task ids, a message
can be delivered twice (a killed worker, a visibility timeout), and ETA tasks
sit unacknowledged in worker memory. So every task first consults the
artifact's record, and every outcome is written there. The record is what
``wait()``, ``hoist status`` and ``hoist retry`` read.

The keys are listed in :mod:`hoist.state.keys`, the states in
:mod:`hoist.state.states`, the deferred schedule (retries, holding back and
the watchdog of every unfinished artifact) in :mod:`hoist.state.schedule`,
and the Lua scripts that make each decision atomic in
:mod:`hoist.state.scripts`.

Nothing is kept for ever: a record that reaches a terminal state, the run's
index and the name markers expire ``retention_seconds`` (a parameter of
:class:`Records`; 14 days by default) after their last write, so Redis holds
the last two weeks of artifacts, not every artifact since the fleet started.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

import redis
from redis.typing import EncodableT

from hoist.errors import ConfigurationError
from hoist.protocol.messages import Message
from hoist.protocol.redis_url import redis_client
from hoist.settings import RankSettings, SentinelSettings
from hoist.state.counters import COUNTERS
from hoist.state.keys import (
    DEFERRED,
    REFUSED,
    RUNS,
    Marker,
    checkpoint_key,
    decode_marker,
    encode_marker,
    failures_key,
    latest_key,
    owner_key,
    record_key,
    run_key,
    seq_key,
)
from hoist.state.replicas import ReplicaWait
from hoist.state.schedule import TAKE_GUARD_SECONDS, first_look_due_ms, to_ms, watchdog_due_ms
from hoist.state.scripts import register
from hoist.state.signals import count_failure, failures
from hoist.state.states import ArtifactStatus, Claim, State

DEFAULT_RETENTION_SECONDS = RankSettings.retention_seconds
"""14 days, ``HOIST_RETENTION_DAYS``' default (see :mod:`hoist.settings`)."""


def initial_fields(message: Message, task: str, now: float) -> dict[str, EncodableT]:
    """The fields of a new record of ``message``, sent as ``task`` at ``now``.

    The one definition: the rank's :meth:`Records.create` writes them, and so
    does a claim that finds no record.
    """
    return {
        "state": State.QUEUED.value,
        "message": json.dumps(message.to_json()),
        "task": task,
        "run": message.run_name,
        "rank": message.rank,
        "enqueued_at": now,
        "attempts": 0,
        "deliveries": 0,
    }


def _pairs(fields: Mapping[str, EncodableT]) -> list[EncodableT]:
    """``fields`` flattened to field, value, field, value… as HSET and the scripts take them."""
    return [part for pair in fields.items() for part in pair]


class Records:
    """Reads and writes artifact records.

    Parameters:
        client: a Redis client (``decode_responses=True``).
        lease_ms: how long a claim lives without a heartbeat.
        retention_seconds: how long finished records, the run's index, sequence
            counters, checkpoints and markers are kept after their last write
            (:func:`hoist.settings.retention_seconds` turns ``HOIST_RETENTION_DAYS`` into it).
            Ranks and workers each pass their own; it only needs to be
            roughly the same on both sides.
    """

    def __init__(
        self,
        client: redis.Redis,
        lease_ms: int = 30_000,
        retention_seconds: int = DEFAULT_RETENTION_SECONDS,
    ) -> None:
        self.client = client
        self.lease_ms = lease_ms
        self.retention_seconds = retention_seconds
        self._claim = register(client, "claim")
        self._renew = register(client, "renew_claim")
        self._settle = register(client, "settle")
        self._raise = register(client, "raise_marker")
        self._take_due = register(client, "take_due")
        self._reset = register(client, "reset_failed")
        self._register = register(client, "register_shards")
        self._fail_queued = register(client, "fail_queued")
        self._recheck = register(client, "recheck_queued")
        self._create = register(client, "create")
        self._states = register(client, "states")
        self._replicas = ReplicaWait(client)  # a record write waits for a replica

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        sentinel: SentinelSettings | None = None,
        lease_ms: int = 30_000,
        retention_seconds: int = DEFAULT_RETENTION_SECONDS,
    ) -> Records:
        """Records at ``url``; through ``sentinel://`` they follow a failover (``redis_client``)."""
        return cls(
            redis_client(url, sentinel), lease_ms=lease_ms, retention_seconds=retention_seconds
        )

    # ----- rank side --------------------------------------------------------

    def create(self, message: Message, task: str, store_id: str) -> int:
        """Record a newly staged artifact and mark it the newest version of its name.

        Returns the rank's failure counter (:meth:`failures`), read in the same
        round trip: how a rank learns of failures at no cost to its stall.
        """
        marker = encode_marker(message.order, message.id)
        return self._create_record(
            message, task, latest_key(store_id, message.object_name), marker
        )[1]

    def register_shards(
        self, run_name: str, checkpoint: str, rank: int, world_size: int, artifacts: list[str]
    ) -> int:
        """Record ``rank``'s artifacts of a checkpoint; return how many ranks have registered.

        Raises:
            ConfigurationError: another rank registered with a different world size.
        """
        key = checkpoint_key(run_name, checkpoint)
        args: list[EncodableT] = [rank, json.dumps(artifacts), world_size, self.retention_seconds]
        count = int(self._register(keys=[key], args=args))
        if count < 0:
            raise ConfigurationError(
                f"checkpoint {checkpoint!r} of run {run_name!r} was registered with another "
                f"world size than {world_size}; every rank must agree on world_size"
            )
        return count

    def shards(self, run_name: str, checkpoint: str) -> dict[int, list[str]]:
        """Each registered rank's artifact ids of a checkpoint."""
        fields = cast(dict[str, str], self.client.hgetall(checkpoint_key(run_name, checkpoint)))
        return {
            int(name.removeprefix("rank:")): json.loads(value)
            for name, value in fields.items()
            if name.startswith("rank:")
        }

    def create_once(self, message: Message, task: str) -> bool:
        """Record ``message`` unless its record is pending or done; True if this call created it.

        Several ranks may ask for the same commit; only one sends it.
        """
        return bool(self._create_record(message, task, once=True)[0])

    def _create_record(
        self,
        message: Message,
        task: str,
        latest: str | None = None,
        marker: str = "",
        *,
        once: bool = False,
    ) -> tuple[int, int]:
        """One call of ``create.lua``: whether it created the record, and the failure counter."""
        now = time.time()
        keys = [
            record_key(message.id),
            run_key(message.run_name),
            RUNS,
            DEFERRED,
            failures_key(message.run_name, message.rank),
        ]
        args: list[EncodableT] = [
            message.id, message.run_name, now, first_look_due_ms(now), self.retention_seconds,
            "1" if once else "", marker, *_pairs(initial_fields(message, task, now)),
        ]  # fmt: skip
        # Returning means a replica holds the record, when there is one (hoist.state.replicas).
        keys += [latest] if latest else []
        created, failures = self._replicas.run(self._create, keys, args)
        return int(created), int(failures)

    def reserve_seqs(self, run_name: str, rank: int, count: int = 1) -> range:
        """Reserve the rank's next ``count`` sequence numbers; unique across restarts of a run.

        A rank reserves a block at a time so that most ``file_artifact``
        calls skip this round trip; numbers of a block it never uses are
        simply skipped.

        Example:
            >>> records.reserve_seqs("bert-3", 0, 16)  # doctest: +SKIP
            range(1, 17)
        """
        key = seq_key(run_name, rank)
        pipe = self.client.pipeline()
        pipe.incrby(key, count)
        pipe.expire(key, self.retention_seconds)
        end = int(pipe.execute()[0])
        return range(end - count + 1, end + 1)

    def count_refusal(self, reason: str) -> None:
        """Count one refused message by reason (``hoist:refused``, a hash; never raises:
        a refusal must not fail for want of a counter)."""
        with contextlib.suppress(redis.RedisError):
            self.client.hincrby(REFUSED, reason, 1)

    def fail_queued(self, artifact: str, error: str) -> bool:
        """Mark a queued record failed: its message never reached the broker, or was refused.

        ``wait`` and ``hoist status`` show ``error``, and ``hoist retry`` sends
        it again. False (and nothing changed) if a worker has it already.
        """
        marked = bool(self._fail_queued(keys=[record_key(artifact)], args=[time.time(), error]))
        if marked:
            self._count_failure(artifact)
        return marked

    def failures(self, run_name: str, rank: int) -> int:
        """How many of the rank's artifacts have failed so far (:mod:`hoist.state.signals`)."""
        return failures(self.client, run_name, rank)

    def _count_failure(self, artifact: str, pipe: redis.client.Pipeline | None = None) -> None:
        count_failure(self.client, artifact, self.retention_seconds, pipe)

    # ----- worker side ------------------------------------------------------

    def claim(self, message: Message, task: str, token: str, max_deliveries: int) -> Claim:
        """Decide whether the task holding ``token`` may work on ``message``, atomically.

        A record that does not exist yet is created (:func:`initial_fields`).
        Then, in this order:

        - :attr:`Claim.MISMATCH` if the record holds another message or task
          under this id (a forgery, or a stale copy): nothing changes;
        - :attr:`Claim.FINISHED` if the record is in a terminal state;
        - :attr:`Claim.BUSY` if another task owns it and its lease is alive
          (this delivery is a duplicate);
        - :attr:`Claim.POISON` if this is delivery number ``max_deliveries + 1``
          without an outcome (a worker was lost each time): the record is
          failed and leaves the deferred schedule;
        - otherwise :attr:`Claim.CLAIMED`: ``token`` owns the artifact for
          ``lease_ms``, the record is ``uploading``, and the watchdog falls
          due two lease times from now unless :meth:`renew` pushes it on.

        Only a claimed task may call :meth:`renew` and :meth:`settle`.
        """
        return self.claim_reading(message, task, token, max_deliveries, "")[0]

    def claim_reading(
        self, message: Message, task: str, token: str, max_deliveries: int, marker: str
    ) -> tuple[Claim, str | None]:
        """:meth:`claim`, and the marker at key ``marker`` (``""``: none) as the claim
        found it, in the same round trip: the claimed work's first read, saved a
        round trip of its own. The marker is None when unset or not claimed."""
        now_ms = to_ms(time.time())
        now = now_ms / 1000
        keys = [record_key(message.id), owner_key(message.id), DEFERRED]
        result = self._claim(
            keys=keys + [marker] if marker else keys,
            args=[
                token,
                self.lease_ms,
                max_deliveries,
                now,
                watchdog_due_ms(now_ms, self.lease_ms),
                message.id,
                *_pairs(initial_fields(message, task, now)),
            ],
        )
        held = None
        if isinstance(result, list):  # claimed, with the marker read
            result, held = result
        claim = Claim(result)
        if claim is Claim.POISON:
            self._count_failure(message.id)
        return claim, None if held is None else str(held)

    def renew(self, artifact: str, token: str) -> bool:
        """The heartbeat of a claim: extend it by ``lease_ms`` and push the watchdog on.

        Returns:
            False if ``token`` no longer owns the artifact (its lease ran out
            and another task may have claimed it): the caller must stop
            writing its outcome as though it owned it. True otherwise.
        """
        due = watchdog_due_ms(to_ms(time.time()), self.lease_ms)
        keys = [owner_key(artifact), DEFERRED]
        return bool(self._renew(keys=keys, args=[token, self.lease_ms, due, artifact]))

    def settle(
        self,
        artifact: str,
        token: str,
        state: State,
        *,
        retry_in: float | None = None,
        release: Sequence[str] = (),
        count: Sequence[str | int] = (),
        **fields: Any,
    ) -> None:
        """Record an outcome, count it and let go, in one round trip.

        Writes ``state`` and ``fields`` (non-scalars as JSON), resets the delivery
        count, releases the claim if ``token`` still holds it and the leases under
        the keys in ``release``, and adds ``count`` to the fleet's counters
        (:meth:`~hoist.state.counters.FleetCounters.arguments`). With ``retry_in``
        it falls due that many seconds from now; without, it leaves the deferred
        schedule. A terminal state gets ``finished_at`` and makes the record
        expire after ``retention_seconds``."""
        now = time.time()
        due = "" if retry_in is None else str(to_ms(now + retry_in))
        keep = str(self.retention_seconds) if state.terminal else ""
        values: list[Any] = ["state", state.value]
        if state.terminal:
            values += ["finished_at", now]
        for name, value in fields.items():
            values += [name, value if isinstance(value, (str, int, float)) else json.dumps(value)]
        keys = [record_key(artifact), owner_key(artifact), DEFERRED, COUNTERS, *release]
        args = [token, artifact, due, keep, len(count), *count, *values]
        if state is not State.FAILED:
            self._settle(keys=keys, args=args)
            return
        # The failure and the rank's failure counter in one transaction: a rank
        # that sees the counter rise finds the record failed.
        pipe = self.client.pipeline(transaction=True)
        self._settle(keys=keys, args=args, client=pipe)
        self._count_failure(artifact, pipe)
        pipe.execute()

    def count_attempt(self, artifact: str, **fields: str | float) -> tuple[int, bool]:
        """Count one try at the store and record ``fields`` with it, in one round trip.

        Returns the attempt's number, and whether an earlier attempt began
        writing (see :meth:`mark_write_started`): an object it left may be unverified.
        """
        record = record_key(artifact)
        pipe = self.client.pipeline(transaction=False)
        pipe.hincrby(record, "attempts", 1)
        pipe.hexists(record, "write_started")
        if fields:
            pipe.hset(record, items=[part for pair in fields.items() for part in pair])
        attempts, started, *_ = pipe.execute()
        return int(attempts), bool(started)

    def record_bytes_sent(self, artifact: str, nbytes: int) -> None:
        """Note how many bytes the upload in flight has sent so far: one HSET.

        The upload job calls it at the throttled progress cadence, never per
        chunk; ``hoist status`` reads it while the artifact is uploading (an
        attempt resets it to 0 when it begins, see :meth:`count_attempt`).
        """
        self.client.hset(record_key(artifact), "bytes_sent", nbytes)

    def mark_write_started(self, artifact: str, attempt: int) -> None:
        """Note that an attempt began sending the artifact's bytes to the store."""
        self.client.hsetnx(record_key(artifact), "write_started", attempt)

    def raise_marker(self, key: str, value: str) -> bool:
        """Set the marker ``key`` to ``value`` unless it already holds that or a later one.

        Returns True if raised. See :mod:`hoist.state.keys` for what a marker holds.
        """
        return bool(self._raise(keys=[key], args=[value, self.retention_seconds]))

    def latest(self, store_id: str, object_name: str) -> Marker | None:
        """The newest version logged under ``object_name`` in the store: its order key and id."""
        value = self.marker(latest_key(store_id, object_name))
        return None if value is None else decode_marker(value)

    def marker(self, key: str) -> str | None:
        """The marker at ``key`` (:func:`hoist.state.keys.decode_marker` reads it), or None."""
        value = self.client.get(key)
        return None if value is None else str(value)

    def take_due(
        self, limit: int = 100, guard_s: float = TAKE_GUARD_SECONDS, now: float | None = None
    ) -> list[str]:
        """Take the artifacts of the deferred schedule that are due, atomically.

        Every resender of the fleet calls this; an entry goes to one of them
        per due time. Each taken entry is pushed ``guard_s`` into the future,
        so one whose taker dies before sending falls due again; sending it,
        the resender's claim or settle gives it its next due time.

        Parameters:
            limit: the most entries to take at once.
            guard_s: how far taken entries are pushed, in seconds.
            now: the current time (seconds since the epoch); the clock by default.

        Returns:
            The ids due at ``now`` or earlier, the earliest first.
        """
        now_ms = to_ms(time.time() if now is None else now)
        args = [now_ms, limit, now_ms + to_ms(guard_s)]
        return list(self._take_due(keys=[DEFERRED], args=args))

    def unschedule(self, artifact: str) -> None:
        """Take ``artifact`` out of the deferred schedule (it is finished, or has no record)."""
        self.client.zrem(DEFERRED, artifact)

    # ----- reading ----------------------------------------------------------

    def get(self, artifact: str) -> ArtifactStatus | None:
        """The record of ``artifact``, or None if it has none."""
        # The client decodes responses (decode_responses=True): these are str.
        fields = cast(dict[str, str], self.client.hgetall(record_key(artifact)))
        if not fields:
            return None
        return ArtifactStatus(artifact, State(fields["state"]), fields)

    def states(self, artifacts: list[str]) -> dict[str, State]:
        """The state of each artifact that has a record."""
        # One script call: a pipeline of HGETs costs ~10 µs of Python per artifact.
        answers = self._states(keys=[record_key(artifact) for artifact in artifacts])
        return {a: State(s) for a, s in zip(artifacts, answers, strict=True) if s}

    def run_artifacts(self, run_name: str) -> list[ArtifactStatus]:
        """Every artifact of a run that still has a record, by log time."""
        ids = cast(list[str], self.client.zrange(run_key(run_name), 0, -1))
        pipe = self.client.pipeline()
        for artifact in ids:
            pipe.hgetall(record_key(artifact))
        return [
            ArtifactStatus(artifact, State(fields["state"]), fields)
            for artifact, fields in zip(ids, pipe.execute(), strict=False)
            if fields
        ]

    def runs(self, limit: int = 0) -> list[str]:
        """Run names, the most recently active first; at most ``limit`` of them (0: all)."""
        return cast(list[str], self.client.zrevrange(RUNS, 0, limit - 1 if limit > 0 else -1))

    def reset_for_retry(self, artifact: str) -> bool:
        """Make a failed artifact queued again, with no attempts; False if it is not failed.

        Only a failed record is reset, atomically: two ``hoist retry`` runs at
        once, or a retry racing a worker, cannot send one artifact twice over.
        The caller sends the message again.

        Example:
            >>> if records.reset_for_retry("hoist-bert-3-r0-17"):  # doctest: +SKIP
            ...     send(app, status.fields["task"], message)
        """
        if not self._reset(keys=[record_key(artifact)], args=[time.time()]):
            return False
        # Queued again: watched again, in case this message is lost too.
        self.client.zadd(DEFERRED, {artifact: to_ms(time.time())}, nx=True)
        return True

    def recheck_queued(self, artifact: str, due: float) -> None:
        """Look at a queued artifact again at ``due`` (seconds since the epoch)."""
        self._recheck(keys=[record_key(artifact), DEFERRED], args=[to_ms(due), artifact])

    def mark_resent(self, artifact: str, now: float) -> None:
        """Note that a resender sent the artifact's message again at ``now``."""
        self.client.hset(record_key(artifact), "resent_at", now)
