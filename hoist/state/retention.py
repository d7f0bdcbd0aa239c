"""Retention by pointer: a pointer's old targets leave the store, never one a pointer names.

Every time a pointer of a run is written (``symlink_artifact``, a sharded
checkpoint's commit), its new target joins the pointer's **history**, a
sorted set of targets by ordinal (1 for its first target, 2 for the next…).
With ``keep_last=K`` the targets beyond the newest K are deleted from the
store; with ``keep_every=N`` a target whose ordinal is a multiple of N stays
as a milestone. A target is a plain object (``f|<object>``) or a committed
step (``s|<manifest>``: its files, then its manifest).

Never deleted (:func:`victims` decides, :meth:`Retention.mark` applies it):

- an object any pointer of the run names now, or is being written to name
  (``named:<run>`` holds both: a pointer job writes its intent before its
  PUT, so a ``best`` pointer moving to an old checkpoint keeps it);
- an object whose newest upload is still queued or in flight.

The prune is two durable steps in Redis, so a worker killed in between
leaves work that the next prune of the run (any worker's next pointer of
that run, or ``hoist gc --run``) finishes: :meth:`Retention.mark` moves the
victims from the history into ``pruning:<run>`` in one transaction that
watches the run's named targets (a pointer naming a victim meanwhile makes
it start again); :meth:`Retention.finish` deletes each marked object
(deleting an absent object is no error, so doing it twice is harmless) and
then moves it to ``pruned:<run>`` with the bytes freed. A pointer whose
target is marked or pruned is refused (:meth:`Retention.intend`), so no
pointer ever names an object retention took.

Its keys are in :mod:`hoist.state.keys`' table: ``named:<run>`` maps
``<store>|<pointer>`` and ``…|next`` to an object, ``pruning:<run>`` an
object to ``<kind>|<store>``, ``pruned:<run>`` an object to the bytes freed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from hoist.errors import HoistError, ObjectNotFoundError
from hoist.protocol.manifest import Manifest
from hoist.state.keys import decode_marker, latest_key, record_key, reply_text, run_state_key
from hoist.state.states import State
from hoist.stores.base import ObjectStore

log = logging.getLogger("hoist.worker")

FILE = "f"
"""A history entry of a plain object."""
STEP = "s"
"""A history entry of a committed step, named by its manifest."""


class RetentionError(HoistError):
    """A pointer cannot name its target: retention already deleted it from the store."""


def entry(kind: str, object_name: str) -> str:
    """A history member: ``f|<object>`` or ``s|<manifest>``.

    Example:
        >>> entry(STEP, "bert/checkpoints/step-00000100/manifest.json")
        's|bert/checkpoints/step-00000100/manifest.json'
    """
    return f"{kind}|{object_name}"


def victims(
    history: list[tuple[str, int]],
    keep_last: int,
    keep_every: int,
    protected: set[str],
) -> list[str]:
    """The history entries retention deletes, oldest first.

    Parameters:
        history: ``(entry, ordinal)`` of one pointer's targets, oldest first.
        keep_last: the newest this many stay; 0 keeps everything.
        keep_every: an ordinal that is a multiple of it stays; 0: no milestones.
        protected: object names that stay whatever the rules say (named by a
            pointer, or still uploading).

    Example:
        >>> h = [(entry(FILE, f"ep{i}.pt"), i) for i in range(1, 7)]
        >>> victims(h, keep_last=2, keep_every=3, protected={"ep1.pt"})
        ['f|ep2.pt', 'f|ep4.pt']
    """
    if keep_last <= 0:
        return []
    older = history[: max(0, len(history) - keep_last)]
    return [
        member
        for member, ordinal in older
        if not (keep_every and ordinal % keep_every == 0) and member[2:] not in protected
    ]


@dataclass(frozen=True)
class Pruned:
    """One target retention deleted (or, in a dry run, would delete).

    Parameters:
        object_name: the object (a step's manifest, for a step).
        kind: :data:`FILE` or :data:`STEP`.
        objects: how many objects went (a step: its files and its manifest).
        bytes: how many bytes they held.
    """

    object_name: str
    kind: str
    objects: int
    bytes: int


class Retention:
    """One run's pointer histories, named targets and prunes in the state Redis.

    Parameters:
        client: the state Redis.
        run_name: the run.
    """

    def __init__(self, client: redis.Redis, run_name: str) -> None:
        self.client = client
        self.run_name = run_name
        self.named_key = run_state_key("named", run_name)
        self.pruning_key = run_state_key("pruning", run_name)
        self.pruned_key = run_state_key("pruned", run_name)
        self.ordinal_key = run_state_key("ordinal", run_name)
        self.stores_key = run_state_key("retention-stores", run_name)

    def history_key(self, store_id: str, pointer: str) -> str:
        return run_state_key("history", self.run_name, store_id, pointer)

    # ----- while a pointer is written --------------------------------------

    def intend(self, store_id: str, pointer: str, target: str) -> None:
        """Protect ``target`` before the pointer's PUT; refuse one retention took.

        Raises:
            RetentionError: ``target`` is marked for pruning or already pruned.
        """
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.named_key, f"{store_id}|{pointer}|next", target)
        pipe.hexists(self.pruning_key, target)
        pipe.hexists(self.pruned_key, target)
        _, marked, pruned = pipe.execute()
        if marked or pruned:
            self.client.hdel(self.named_key, f"{store_id}|{pointer}|next")
            raise RetentionError(
                f"{target!r} was deleted from the store by retention (keep_last); "
                "a pointer cannot name it"
            )

    def moved(
        self, store_id: str, store_json: dict[str, Any], pointer: str, kind: str, target: str
    ) -> None:
        """The pointer now names ``target`` (written and verified): add it to its history."""
        field = f"{store_id}|{pointer}"
        ordinal = int(self.client.hincrby(self.ordinal_key, field, 1))
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.named_key, field, target)
        pipe.hdel(self.named_key, f"{field}|next")
        pipe.zadd(self.history_key(store_id, pointer), {entry(kind, target): ordinal})
        pipe.hset(self.stores_key, store_id, json.dumps(store_json, sort_keys=True))
        pipe.execute()

    def abandon(self, store_id: str, pointer: str) -> None:
        """The pointer was not written (superseded, failed): drop its intent."""
        self.client.hdel(self.named_key, f"{store_id}|{pointer}|next")

    # ----- pruning ---------------------------------------------------------

    def pointers(self) -> list[tuple[str, str]]:
        """``(store id, pointer)`` of every pointer of the run with a history."""
        fields = [reply_text(f) for f in self.client.hkeys(self.ordinal_key)]
        return [(f.split("|", 1)[0], f.split("|", 1)[1]) for f in fields]

    def plan(self, store_id: str, pointer: str, keep_last: int, keep_every: int) -> list[str]:
        """The entries a prune of ``pointer`` would take now (no change: a dry run)."""
        return self._victims(self.client, store_id, pointer, keep_last, keep_every)

    def mark(self, store_id: str, pointer: str, keep_last: int, keep_every: int) -> list[str]:
        """Move ``pointer``'s victims from its history to ``pruning:<run>``, atomically.

        Watches the run's named targets and the history: a pointer that starts
        naming a victim meanwhile makes the transaction start again.
        """
        history = self.history_key(store_id, pointer)

        def apply(pipe: redis.client.Pipeline) -> list[str]:
            chosen = self._victims(pipe, store_id, pointer, keep_last, keep_every)
            pipe.multi()
            for member in chosen:
                kind, name = member.split("|", 1)
                pipe.hset(self.pruning_key, name, f"{kind}|{store_id}")
                pipe.zrem(history, member)
            return chosen

        chosen = self.client.transaction(
            apply,  # type: ignore[arg-type]
            self.named_key,
            history,
            value_from_callable=True,
        )
        return list(chosen or [])

    def _victims(
        self, client: Any, store_id: str, pointer: str, keep_last: int, keep_every: int
    ) -> list[str]:
        raw = client.zrange(self.history_key(store_id, pointer), 0, -1, withscores=True)
        history = [(reply_text(m), int(score)) for m, score in raw]
        protected = {reply_text(v) for v in client.hvals(self.named_key)}
        chosen = victims(history, keep_last, keep_every, protected)
        return [m for m in chosen if not self._uploading(client, store_id, m[2:])]

    def _uploading(self, client: Any, store_id: str, object_name: str) -> bool:
        """Whether the newest upload logged under ``object_name`` has not finished."""
        marker = client.get(latest_key(store_id, object_name))
        if marker is None:
            return False
        artifact = decode_marker(reply_text(marker)).artifact
        state = client.hget(record_key(artifact), "state") if artifact else None
        return state is not None and not State(reply_text(state)).terminal

    def marked(self, store_id: str) -> list[tuple[str, str]]:
        """``(kind, object)`` of every target of ``store_id`` marked and not yet deleted."""
        out = []
        for name, value in self.client.hgetall(self.pruning_key).items():
            kind, _, store = reply_text(value).partition("|")
            if store == store_id:
                out.append((kind, reply_text(name)))
        return out

    def finish(self, store: ObjectStore, store_id: str) -> list[Pruned]:
        """Delete every marked target of this store, then record it as pruned.

        Idempotent: a worker killed half-way leaves the mark, and the next
        call deletes again what is left (deleting an absent object is no error).
        """
        done = []
        for kind, name in self.marked(store_id):
            deleted = _measure(store, kind, name, remove=store.delete)
            pipe = self.client.pipeline(transaction=True)
            # Every object deleted, so `hoist verify` knows a step's files are meant to be gone.
            for object_name, size in deleted:
                pipe.hsetnx(self.pruned_key, object_name, size)
            pipe.hsetnx(self.pruned_key, name, 0)  # absent already: still meant to be gone
            pipe.hdel(self.pruning_key, name)
            pipe.execute()
            freed = sum(size for _, size in deleted)
            log.info("retention deleted %s (%d object(s), %d bytes)", name, len(deleted), freed)
            done.append(Pruned(name, kind, len(deleted), freed))
        return done

    def prune(
        self, store: ObjectStore, store_id: str, pointer: str, keep_last: int, keep_every: int
    ) -> list[Pruned]:
        """Finish any earlier prune of this store, mark ``pointer``'s victims, delete them."""
        self.mark(store_id, pointer, keep_last, keep_every)
        return self.finish(store, store_id)

    def release(self, store: ObjectStore, store_id: str, names: list[str]) -> set[str]:
        """Delete plain objects a trainer dropped (Lightning's ``save_top_k``) by the same rules.

        Those no pointer of the run names and none still uploading are marked and
        deleted as a prune's are (recorded as pruned); the rest stay. Returns the
        names deleted now.
        """

        def apply(pipe: redis.client.Pipeline) -> list[str]:
            protected = {reply_text(v) for v in pipe.hvals(self.named_key)}
            free = [
                name
                for name in names
                if name not in protected and not self._uploading(pipe, store_id, name)
            ]
            pipe.multi()
            for name in free:
                pipe.hset(self.pruning_key, name, f"{FILE}|{store_id}")
            return free

        free = self.client.transaction(
            apply,  # type: ignore[arg-type]
            self.named_key,
            value_from_callable=True,
        )
        self.finish(store, store_id)
        return set(free or [])

    def pruned(self) -> dict[str, int]:
        """Every object of the run retention deleted, with the bytes it freed."""
        return {reply_text(k): int(v) for k, v in self.client.hgetall(self.pruned_key).items()}

    def store_specs(self) -> dict[str, dict[str, Any]]:
        """The JSON spec of each store the run's pointers were written to."""
        raw = self.client.hgetall(self.stores_key)
        return {reply_text(k): json.loads(v) for k, v in raw.items()}


def measure(store: ObjectStore, member: str) -> Pruned:
    """What pruning the history entry ``member`` would free now (a dry run's figure)."""
    kind, name = member.split("|", 1)
    held = _measure(store, kind, name, remove=None)
    return Pruned(name, kind, len(held), sum(size for _, size in held))


def _measure(
    store: ObjectStore, kind: str, name: str, remove: Callable[[str], None] | None
) -> list[tuple[str, int]]:
    """Count (and with ``remove``, delete) a target's objects that are still there; a
    step's manifest goes last, so a prune interrupted half-way reads it again for the
    files left."""
    names: list[str] = []
    if kind == STEP:
        try:
            names = [f.object_name for f in Manifest.from_bytes(store.get_bytes(name)).files]
        except ObjectNotFoundError:
            names = []
    held = []
    for object_name in [*names, name]:
        try:
            size = store.stat(object_name).size
        except ObjectNotFoundError:
            continue
        if remove is not None:
            remove(object_name)
        held.append((object_name, size))
    return held
