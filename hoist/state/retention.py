"""Retention by pointer: a pointer's old targets leave the store, never one a pointer names.

Every time a pointer of a run is written (``symlink_artifact``, a sharded
checkpoint's commit), its new target joins the pointer's **history**, a
sorted set of targets in the order they were logged, each with its ordinal
(1 for the pointer's first target, 2 for the next…). A target a pointer was
to name but whose write was superseded by a newer pointer joins it too, in
its logged place and without an ordinal, so it is pruned by the same rule
instead of leaking. With ``keep_last=K`` the targets beyond the newest K are
deleted from the store; with ``keep_every=N`` a target whose ordinal is a
multiple of N stays as a milestone. A target is a plain object
(``f|<object>``) or a committed step (``s|<manifest>``: its files, then its
manifest).

Never deleted (:func:`victims` decides, :meth:`Retention.mark` applies it,
:meth:`Retention.finish` checks it again right before each deletion):

- an object any pointer of the run names now, or is being written to name
  (``named:<run>`` holds both: a pointer job writes its intent before its
  PUT, so a ``best`` pointer moving to an old checkpoint keeps it);
- an object whose newest upload is still queued or in flight, or whose name
  was logged again after it was marked (a re-upload under a victim's name):
  a mark holds the **version** of each object it will delete (the name's
  latest marker, :func:`hoist.state.keys.encode_marker`), and each deletion
  happens under the name's upload lock only while that is still the newest
  version and its upload is finished.

The prune is two durable steps in Redis: :meth:`Retention.mark` moves the
victims from the history into ``pruning:<run>`` in one transaction that
watches the run's named targets and the history (a pointer naming a victim
meanwhile makes it start again); :meth:`Retention.finish` deletes
each marked object and records it in ``pruned:<run>`` with the bytes
freed (:mod:`hoist.state.retention_deletes`). A mark also enters the run in
``retention-due``; a worker killed between the two steps leaves marks that
any worker's resender finishes one lease time later (:func:`overdue_runs`),
as does the run's next prune.

A pointer whose target is marked or pruned is refused (:meth:`Retention.intend`)
unless the target's name was logged again since: no pointer ever names an
object retention took.

Every retention key of a run gets the run's time to live
(``HOIST_RETENTION_DAYS``) on each write, as the run's index and markers do.
Its keys are in :mod:`hoist.state.keys`' table.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection
from typing import Any, cast

import redis

from hoist.errors import HoistError
from hoist.state.keys import (
    RETENTION_DUE,
    decode_marker,
    latest_key,
    record_key,
    reply_text,
    run_state_key,
)
from hoist.state.records import DEFAULT_RETENTION_SECONDS, Records
from hoist.state.retention_deletes import Outcome, Refusal, finish_marks
from hoist.state.retention_marks import (
    FILE,
    STEP,
    Mark,
    Pruned,
    entry,
    logged_at,
    measure,
    ordinal_of,
    pruned_fields,
    step_files,
    victims,
)
from hoist.state.states import State
from hoist.stores.base import ObjectStore

__all__ = [
    "FILE",
    "STEP",
    "Mark",
    "Outcome",
    "Pruned",
    "Retention",
    "RetentionError",
    "entry",
    "measure",
    "overdue_runs",
    "victims",
]

log = logging.getLogger("hoist.worker")


class RetentionError(HoistError):
    """A pointer cannot name its target: retention already deleted it from the store."""


class Retention:
    """One run's pointer histories, named targets and prunes in the state Redis.

    Parameters:
        client: the state Redis.
        run_name: the run.
        ttl_seconds: every retention key of the run expires this long after its
            last write (the run's ``HOIST_RETENTION_DAYS``, as its records).
        lease_ms: how long a deletion holds an object name's upload lock, and
            how old a mark must be before another worker's resender finishes it.
        clock: seconds since the epoch (when a mark was made).
    """

    def __init__(
        self,
        client: redis.Redis,
        run_name: str,
        *,
        ttl_seconds: int = DEFAULT_RETENTION_SECONDS,
        lease_ms: int = 30_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.run_name = run_name
        self.ttl_seconds = ttl_seconds
        self.lease_ms = lease_ms
        self.clock = clock
        self.named_key = run_state_key("named", run_name)
        self.pruning_key = run_state_key("pruning", run_name)
        self.pruned_key = run_state_key("pruned", run_name)
        self.ordinal_key = run_state_key("ordinal", run_name)
        self.ordinals_key = run_state_key("ordinals", run_name)
        self.stores_key = run_state_key("retention-stores", run_name)

    @classmethod
    def of(cls, records: Records, run_name: str) -> Retention:
        """The retention of ``run_name`` with ``records``' time to live and lease."""
        return cls(
            records.client,
            run_name,
            ttl_seconds=records.retention_seconds,
            lease_ms=records.lease_ms,
        )

    def history_key(self, store_id: str, pointer: str) -> str:
        return run_state_key("history", self.run_name, store_id, pointer)

    def keep(self, pipe: redis.client.Pipeline, *keys: str) -> None:
        """Give written keys the run's time to live (in the caller's transaction)."""
        for key in keys:
            pipe.expire(key, self.ttl_seconds)

    # ----- while a pointer is written --------------------------------------

    def intend(self, store_id: str, pointer: str, target: str, job: str) -> None:
        """Protect ``target`` before the pointer's PUT; refuse one retention took.

        The intent is ``job``'s own (``<store>|<pointer>|next|<job>``): two jobs of one
        pointer (one writing, one waiting for its lock) each hold and drop only theirs.
        A target marked or pruned is refused unless its name was logged again
        since (its latest marker moved): that newer version is not what retention took.

        Raises:
            RetentionError: ``target`` is marked for pruning or already pruned.
        """
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.named_key, _intent(store_id, pointer, job), target)
        self.keep(pipe, self.named_key)
        pipe.hget(self.pruning_key, target)
        pipe.hget(self.pruned_key, target)
        pipe.get(latest_key(store_id, target))
        *_, marked, pruned, latest = pipe.execute()
        current = reply_text(latest) if latest is not None else ""
        taken: list[str | None] = []
        if marked is not None:
            mark = Mark.from_json(target, reply_text(marked))
            taken.append(mark.versions.get(target, "") if mark.versioned else None)
        if pruned is not None:
            taken.append(pruned_fields(reply_text(pruned))[1])
        if current in taken or None in taken:
            self.client.hdel(self.named_key, _intent(store_id, pointer, job))
            raise RetentionError(
                f"{target!r} was deleted from the store by retention (keep_last); "
                "a pointer cannot name it"
            )

    def moved(
        self,
        store_id: str,
        store_json: dict[str, Any],
        pointer: str,
        kind: str,
        target: str,
        job: str,
        order: str,
        *,
        named: bool = True,
    ) -> None:
        """``target`` joins the pointer's history, in the order it was logged (``order``,
        the pointer message's order key), not the order its write finished.

        With ``named`` the pointer now names it (written and verified) and it
        takes the pointer's next ordinal (``keep_every`` counts those); without,
        the write was superseded by a newer pointer, and ``target`` joins the
        history without an ordinal, so that the rule prunes it in its turn instead
        of leaking it. Ordered by when it finished, a write overtaken by two newer
        ones made keep_last=2 keep it and delete the one between (a real Composer
        run). ``job``'s intent (:meth:`intend`) goes in the same transaction.
        """
        field_name = f"{store_id}|{pointer}"
        history = self.history_key(store_id, pointer)
        member = entry(kind, target)
        pipe = self.client.pipeline(transaction=True)
        if named:
            ordinal = int(self.client.hincrby(self.ordinal_key, field_name, 1))
            pipe.hset(self.named_key, field_name, target)
            pipe.hset(self.ordinals_key, f"{field_name}|{member}", ordinal)
        pipe.hdel(self.named_key, _intent(store_id, pointer, job))
        pipe.zadd(history, {member: logged_at(order)})
        pipe.hset(self.stores_key, store_id, json.dumps(store_json, sort_keys=True))
        keys = (self.named_key, self.ordinal_key, self.ordinals_key, history, self.stores_key)
        self.keep(pipe, *keys)
        pipe.execute()

    def abandon(self, store_id: str, pointer: str, job: str) -> None:
        """``job`` did not write the pointer (failed, or waits for its lock): drop its own
        intent, never another job's."""
        self.client.hdel(self.named_key, _intent(store_id, pointer, job))

    # ----- choosing and marking victims ------------------------------------

    def pointers(self) -> list[tuple[str, str]]:
        """``(store id, pointer)`` of every pointer of the run with a history."""
        fields = [reply_text(f) for f in self.client.hkeys(self.ordinal_key)]
        return [(f.split("|", 1)[0], f.split("|", 1)[1]) for f in fields]

    def plan(
        self, store: ObjectStore, store_id: str, pointer: str, keep_last: int, keep_every: int
    ) -> list[str]:
        """The entries a prune of ``pointer`` would take now (no change: a dry run)."""
        chosen = self._select(self.client, store, store_id, pointer, keep_last, keep_every)
        return [entry(mark.kind, mark.object_name) for mark in chosen]

    def mark(
        self, store: ObjectStore, store_id: str, pointer: str, keep_last: int, keep_every: int
    ) -> list[str]:
        """Move ``pointer``'s victims from its history to ``pruning:<run>``, atomically.

        Watches the run's named targets and the history: a pointer that starts
        naming a victim meanwhile makes the transaction start again. Each mark
        holds the versions it may delete (:class:`Mark`); ``store`` is read for a
        step's manifest. Returns the history entries marked.
        """
        history = self.history_key(store_id, pointer)

        def apply(pipe: redis.client.Pipeline) -> list[str]:
            chosen = self._select(pipe, store, store_id, pointer, keep_last, keep_every)
            pipe.multi()
            self._write_marks(pipe, chosen)
            for mark in chosen:
                pipe.zrem(history, entry(mark.kind, mark.object_name))
            return [entry(mark.kind, mark.object_name) for mark in chosen]

        chosen = self.client.transaction(
            apply,  # type: ignore[arg-type]
            self.named_key,
            history,
            value_from_callable=True,
        )
        return list(chosen or [])

    def release(self, store: ObjectStore, store_id: str, names: list[str]) -> set[str]:
        """Delete plain objects a trainer dropped (Lightning's ``save_top_k``) by the same rules.

        Those no pointer of the run names and none still uploading are marked and
        deleted as a prune's are (recorded as pruned); the rest stay. Returns the
        names deleted now.
        """

        def apply(pipe: redis.client.Pipeline) -> list[Mark]:
            protected = self._protected(pipe)
            wanted = [Mark(name, FILE, store_id) for name in names if name not in protected]
            free = self.settled(store_id, wanted)
            pipe.multi()
            self._write_marks(pipe, free)
            return free

        free = self.client.transaction(
            apply,  # type: ignore[arg-type]
            self.named_key,
            value_from_callable=True,
        )
        wanted = {mark.object_name for mark in free or []}
        # Marks are read back from Redis: the rank, which has no allowed stores to check
        # them by, deletes only what it marked now; the fleet finishes any other.
        done = self.finish(store, store_id, only=wanted)
        return {item.object_name for item in done}

    def _write_marks(self, pipe: redis.client.Pipeline, marks: list[Mark]) -> None:
        if not marks:
            return
        for mark in marks:
            pipe.hset(self.pruning_key, mark.object_name, mark.to_json())
        # The resender finishes what a killed worker leaves, one lease after the oldest mark.
        pipe.zadd(RETENTION_DUE, {self.run_name: int(self.clock() * 1000)}, nx=True)
        self.keep(pipe, self.pruning_key)

    def _protected(self, client: Any) -> set[str]:
        return {reply_text(v) for v in client.hvals(self.named_key)}

    def _select(
        self,
        client: Any,
        store: ObjectStore,
        store_id: str,
        pointer: str,
        keep_last: int,
        keep_every: int,
    ) -> list[Mark]:
        """The victims of ``pointer`` now, as marks holding their versions."""
        members = [reply_text(m) for m in client.zrange(self.history_key(store_id, pointer), 0, -1)]
        fields = [f"{store_id}|{pointer}|{m}" for m in members]
        held = client.hmget(self.ordinals_key, fields) if fields else []
        history = [(m, ordinal_of(n)) for m, n in zip(members, held, strict=True)]
        chosen = victims(history, keep_last, keep_every, self._protected(client))
        marks = [Mark(m[2:], m[0], store_id) for m in chosen]
        return self.settled(store_id, marks, store)

    def settled(
        self, store_id: str, marks: list[Mark], store: ObjectStore | None = None
    ) -> list[Mark]:
        """``marks`` with their versions filled in; those with an upload not finished left out.

        The versions are read with one pipelined round trip per step, outside
        any WATCH: what happens after this read is caught right before each
        deletion, when the name's marker is compared with the version held here.
        """
        out = []
        for mark in marks:
            objects = [mark.object_name]
            if mark.kind == STEP and store is not None:
                objects = [*step_files(store, mark.object_name), mark.object_name]
            versions = self.versions(store_id, objects)
            if versions is not None:
                out.append(Mark(mark.object_name, mark.kind, store_id, versions))
        return out

    def versions(self, store_id: str, objects: list[str]) -> dict[str, str] | None:
        """Each object's latest marker ("" if none), or None if any of their newest
        uploads is not finished (queued, in flight, waiting or retrying)."""
        pipe = self.client.pipeline(transaction=False)
        for name in objects:
            pipe.get(latest_key(store_id, name))
        markers = [reply_text(m) if m is not None else "" for m in pipe.execute()]
        artifacts = [decode_marker(m).artifact for m in markers if m]
        pipe = self.client.pipeline(transaction=False)
        for artifact in artifacts:
            pipe.hget(record_key(artifact), "state")
        for state in pipe.execute() if artifacts else []:
            if state is not None and not State(reply_text(state)).terminal:
                return None
        return dict(zip(objects, markers, strict=True))

    # ----- deleting what was marked ----------------------------------------

    def prune(
        self,
        store: ObjectStore,
        store_id: str,
        pointer: str,
        keep_last: int,
        keep_every: int,
        refusal: Refusal | None = None,
    ) -> list[Pruned]:
        """Mark ``pointer``'s victims, then delete every mark of this store (earlier ones
        too; ``refusal`` as :meth:`finish` takes it)."""
        self.mark(store, store_id, pointer, keep_last, keep_every)
        return self.finish(store, store_id, refusal)

    def finish(
        self,
        store: ObjectStore,
        store_id: str,
        refusal: Refusal | None = None,
        only: Collection[str] | None = None,
    ) -> list[Pruned]:
        """Delete every marked target of this store whose versions still hold; record each.

        Each object goes under its name's upload lock (:func:`~hoist.state.leases.name_lock`,
        which every upload of the name holds while it writes), and only while the
        name's latest marker is still the version marked and that upload is finished:

        - a name logged again since the mark (a re-upload, done or only queued)
          keeps its object; a plain target's mark is dropped, a step's other
          files still go;
        - an upload of the name logged once the lock is taken waits for the
          lock, so it writes after the deletion, and its object stays;
        - a name whose lock an upload holds leaves the mark for a later prune.

        Idempotent: a worker killed half-way leaves the mark, and the next call
        deletes what is left (an absent object is recorded, not an error).

        ``refusal`` (the fleet's allowed stores, bound to this store) refuses a
        mark naming any object this fleet may not write: nothing of it is
        deleted, it is logged and stays (:mod:`hoist.state.retention_deletes`).
        ``only`` limits it to those object names.
        """
        return finish_marks(self, store, store_id, refusal, only)

    def forget_if_finished(self) -> None:
        """Drop the run from ``retention-due`` once it has no mark left (none marked meanwhile)."""

        def apply(pipe: redis.client.Pipeline) -> None:
            left = pipe.hlen(self.pruning_key)
            pipe.multi()
            if not left:
                pipe.zrem(RETENTION_DUE, self.run_name)

        self.client.transaction(apply, self.pruning_key)

    # ----- what was marked and pruned --------------------------------------

    def marked(self, store_id: str | None = None) -> list[Mark]:
        """Every target marked and not yet deleted (of ``store_id`` only, when given)."""
        marks = [
            Mark.from_json(reply_text(name), reply_text(value))
            for name, value in self.client.hgetall(self.pruning_key).items()
        ]
        return [m for m in marks if store_id is None or m.store_id == store_id]

    def pruned(self) -> dict[str, int]:
        """Every object of the run retention deleted, with the bytes it freed."""
        return {
            reply_text(k): pruned_fields(reply_text(v))[0]
            for k, v in self.client.hgetall(self.pruned_key).items()
        }

    def store_specs(self) -> dict[str, dict[str, Any]]:
        """The JSON spec of each store the run's pointers were written to."""
        raw = self.client.hgetall(self.stores_key)
        return {reply_text(k): json.loads(v) for k, v in raw.items()}


def _intent(store_id: str, pointer: str, job: str) -> str:
    """The ``named:<run>`` field of one job's intent to make ``pointer`` name an object."""
    return f"{store_id}|{pointer}|next|{job}"


def overdue_runs(client: redis.Redis, now: float, lease_ms: int, limit: int = 20) -> list[str]:
    """Runs with a mark older than a lease (its worker was killed mid-prune, most likely).

    Each run returned gets ``now`` as its mark time, so the next look of any
    resender at it comes a lease later; two resenders taking the same run at
    once is harmless (each deletion holds the name's lock and is idempotent).
    """
    now_ms = int(now * 1000)
    due = cast(list[str], client.zrangebyscore(RETENTION_DUE, "-inf", now_ms - lease_ms, 0, limit))
    runs = [reply_text(r) for r in due]
    if runs:
        client.zadd(RETENTION_DUE, dict.fromkeys(runs, now_ms), xx=True)
    return runs
