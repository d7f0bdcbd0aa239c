"""Deleting what retention marked: each object under its name's upload lock, recorded as it goes.

The second durable step of a prune (:meth:`hoist.state.retention.Retention.finish`
calls :func:`finish_marks`). Each object of a mark is deleted only after
taking its name's upload lock (:func:`~hoist.state.leases.name_lock`, which
every upload of the name holds while it writes), and only while the name's
latest marker is still the version marked, that upload is finished, and no
pointer of the run names or is about to name it.

What a mark names comes from the state Redis, which a fleet does not trust
more than the broker: with a ``refusal`` (the fleet's allowed stores), a
mark naming any object the fleet may not write is left alone, deleted from
nowhere, for an operator to look at (``hoist gc --run`` finishes it, or it
expires with the run).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import uuid
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from redis.commands.core import Script

from hoist.errors import ObjectNotFoundError
from hoist.state.keys import decode_marker, latest_key, record_key, reply_text
from hoist.state.leases import Leases, name_lock
from hoist.state.retention_marks import FILE, Mark, Pruned, pruned_value
from hoist.state.scripts import register
from hoist.state.states import State
from hoist.stores.base import ObjectStore

if TYPE_CHECKING:
    from hoist.state.retention import Retention

log = logging.getLogger("hoist.worker")


class Outcome(enum.Enum):
    """What became of one object a mark names."""

    DELETED = "deleted"
    """Deleted now (recorded in ``pruned:<run>`` with its bytes)."""
    ABSENT = "absent"
    """Already gone (recorded, with no bytes): finishing twice is harmless."""
    CHANGED = "changed"
    """Its name was logged again since the mark: the new version stays."""
    BUSY = "busy"
    """An upload of the name holds its lock or is not finished: the mark waits."""
    NAMED = "named"
    """A pointer of the run names it or is about to: the mark waits (never deleted so)."""


Refusal = Callable[..., str | None]
"""Why the fleet refuses these object names in the mark's store (``AllowedStores.refusal``
bound to the store's kind and arguments), or None."""


def finish_marks(
    retention: Retention,
    store: ObjectStore,
    store_id: str,
    refusal: Refusal | None = None,
    only: Collection[str] | None = None,
) -> list[Pruned]:
    """Delete every marked target of ``store_id`` whose versions still hold; record each.

    A mark naming an object ``refusal`` refuses is logged and left, nothing of it deleted;
    with ``only``, marks of other object names are left for another pass.
    """
    leases = Leases(retention.client, f"retention-{uuid.uuid4().hex}", retention.lease_ms)
    drop_mark = register(retention.client, "drop_mark")
    done = []
    for read in retention.marked(store_id):
        if only is not None and read.object_name not in only:
            continue
        mark = _versioned(retention, store, read)
        if mark is None:
            continue  # an upload of it is not finished: later
        why = refusal(*mark.versions, mark.object_name) if refusal is not None else None
        if why is not None:
            log.error(
                "retention refused the mark of %s in run %s and deleted nothing of it: %s; "
                "the mark stays for an operator (`hoist gc --run`, or it expires with the run)",
                mark.object_name,
                retention.run_name,
                why,
            )
            continue
        try:
            pruned = _finish_mark(retention, store, leases, mark, drop_mark)
        except Exception as exc:
            # One object the store fails on must not hold back every later mark.
            log.warning(
                "retention could not finish %s this time (its mark stays for the next pass): %s",
                mark.object_name,
                exc,
            )
            continue
        if pruned is not None:
            done.append(pruned)
    retention.forget_if_finished()
    return done


def _versioned(retention: Retention, store: ObjectStore, mark: Mark) -> Mark | None:
    """``mark`` with versions: one from before marks held them gets its objects' versions
    now (a step's files from its manifest), or None while an upload of one is not finished."""
    if mark.versioned:
        return mark
    settled = retention.settled(mark.store_id, [mark], store)
    return dataclasses.replace(settled[0], held=mark.held) if settled else None


def _finish_mark(
    retention: Retention, store: ObjectStore, leases: Leases, mark: Mark, drop_mark: Script
) -> Pruned | None:
    # A step's manifest goes last: a prune interrupted half-way reads it again.
    order = [name for name in mark.versions if name != mark.object_name]
    order.append(mark.object_name)
    gone: list[int] = []
    outcome = Outcome.DELETED
    for name in order:
        version = mark.versions.get(name, "")
        outcome, size = _delete(retention, store, leases, mark.store_id, name, version)
        if outcome is Outcome.DELETED:
            gone.append(size)
        elif outcome in (Outcome.BUSY, Outcome.NAMED):
            break
        elif outcome is Outcome.CHANGED and mark.kind == FILE:
            log.info("retention kept %s: its name was logged again after it was marked", name)
    if outcome not in (Outcome.BUSY, Outcome.NAMED):
        drop_mark(keys=[retention.pruning_key], args=[mark.object_name, mark.held])
    if outcome in (Outcome.BUSY, Outcome.NAMED) or (
        mark.kind == FILE and outcome is Outcome.CHANGED
    ):
        return None
    freed = sum(gone)
    log.info("retention deleted %s (%d object(s), %d bytes)", mark.object_name, len(gone), freed)
    return Pruned(mark.object_name, mark.kind, len(gone), freed)


def _delete(
    retention: Retention,
    store: ObjectStore,
    leases: Leases,
    store_id: str,
    name: str,
    version: str,
) -> tuple[Outcome, int]:
    """Delete ``name`` if ``version`` is still its newest, finished upload, and no
    pointer of the run names it (now or in an intent written since the mark)."""
    if not leases.acquire_all([name_lock(store_id, name)]):
        return Outcome.BUSY, 0
    client = retention.client
    try:
        pipe = client.pipeline(transaction=False)
        pipe.get(latest_key(store_id, name))
        pipe.hvals(retention.named_key)
        latest, named = pipe.execute()
        current = reply_text(latest) if latest is not None else ""
        if current != version:
            return Outcome.CHANGED, 0
        if name in {reply_text(value) for value in named}:
            log.warning("retention kept %s: a pointer of the run names it", name)
            return Outcome.NAMED, 0
        artifact = decode_marker(current).artifact
        state = client.hget(record_key(artifact), "state") if artifact else None
        if state is not None and not State(reply_text(state)).terminal:
            return Outcome.BUSY, 0  # the same version sent again (`hoist retry`)
        try:
            size = store.stat(name).size
        except ObjectNotFoundError:
            _record(retention, name, version, None)
            return Outcome.ABSENT, 0
        store.delete(name)
        # Recorded at once: a later object of the mark that fails must not hide this one.
        _record(retention, name, version, size)
        return Outcome.DELETED, size
    finally:
        leases.release_all()


def _record(retention: Retention, name: str, version: str, size: int | None) -> None:
    """``name`` is gone (``size`` bytes freed; None: it was already absent), so
    `hoist verify` knows it is meant to be (a step's files too)."""
    pipe = retention.client.pipeline(transaction=True)
    if size is None:
        pipe.hsetnx(retention.pruned_key, name, pruned_value(0, version))
    else:
        pipe.hset(retention.pruned_key, name, pruned_value(size, version))
    retention.keep(pipe, retention.pruned_key)
    pipe.execute()
