"""What the fleet tells a rank between its calls: its failure counter, and its store checks.

Each rank has a counter (:func:`~hoist.state.keys.failures_key`) that every
failure of its artifacts raises, in the transaction that records the failure
(:class:`~hoist.state.records.Records` calls :func:`count_failure`). A rank
reads it in the round trip that writes each record, so it learns of a
failure without a request of its own (:mod:`hoist.logger.health`).

A logger sends a :class:`~hoist.protocol.messages.ProbeRequest` when it
starts (:mod:`hoist.logger.health`); a worker tries the store
(:mod:`hoist.tasks.probe_job`) and writes the outcome here, where the rank
reads it at its next call. A probe is not an artifact: no record, no run
index, no retry schedule. One lost (a broker restart) only means the rank
learns of a bad store from its first upload instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import cast

import redis

from hoist.state.keys import failures_key, probe_key, record_key

PROBE_RETENTION_SECONDS = 24 * 3600
"""How long a probe's outcome is kept: long enough for a rank to read it."""


def failures(client: redis.Redis, run_name: str, rank: int) -> int:
    """How many of the rank's artifacts have failed so far (a counter that only rises)."""
    return int(cast(str | None, client.get(failures_key(run_name, rank))) or 0)


def count_failure(
    client: redis.Redis,
    artifact: str,
    retention_seconds: int,
    pipe: redis.client.Pipeline | None = None,
) -> None:
    """Raise the failure counter of the rank that logged ``artifact`` (from its record).

    With ``pipe`` (a transaction), the raise commits with the failure.
    """
    run, rank = cast(list[str | None], client.hmget(record_key(artifact), "run", "rank"))
    if run is None or rank is None:
        return
    key = failures_key(run, int(rank))
    target = pipe if pipe is not None else client.pipeline(transaction=False)
    target.incr(key)
    target.expire(key, retention_seconds)
    if pipe is None:
        target.execute()


@dataclass(frozen=True)
class ProbeOutcome:
    """What a worker found.

    Parameters:
        ok: the store took a write and a delete under the logger's prefix.
        error: why not, as the store's error says it (one sentence, no secrets).
        note: something worth a warning that is not a failure (the probe
            object could not be deleted, say).
        worker: the worker's host name.
    """

    ok: bool
    error: str = ""
    note: str = ""
    worker: str = ""


def record_probe(
    client: redis.Redis,
    probe: str,
    outcome: ProbeOutcome,
    run_name: str,
    rank: int,
    retention_seconds: int,
) -> None:
    """Write ``outcome``; a failed one also raises the rank's failure counter, in one transaction.

    ``retention_seconds`` is the records' (the counter lives as long as they do).

    Example:
        >>> record_probe(client, probe, ProbeOutcome(ok=True), "r", 0, 86400)  # doctest: +SKIP
    """
    key = probe_key(probe)
    pipe = client.pipeline(transaction=True)
    pipe.hset(
        key,
        mapping={
            "ok": int(outcome.ok),
            "error": outcome.error,
            "note": outcome.note,
            "worker": outcome.worker,
            "finished_at": time.time(),
        },
    )
    pipe.expire(key, PROBE_RETENTION_SECONDS)
    if not outcome.ok:
        failures = failures_key(run_name, rank)
        pipe.incr(failures)
        pipe.expire(failures, retention_seconds)
    pipe.execute()


def read_probe(client: redis.Redis, probe: str) -> ProbeOutcome | None:
    """The outcome of ``probe``, or None while no worker has answered it."""
    fields = cast(dict[str, str], client.hgetall(probe_key(probe)))
    if not fields:
        return None
    return ProbeOutcome(
        ok=fields.get("ok") == "1",
        error=fields.get("error", ""),
        note=fields.get("note", ""),
        worker=fields.get("worker", ""),
    )
