"""Every Redis key hoist writes, and the one format of a name's marker.

Keys (all under ``hoist:``):

==============================  ==================================================
``artifact:<id>``               hash: the message, state, attempts, result or error
``owner:<id>``                  the token of the task working on it (expires)
``run:<run>``                   sorted set of the run's artifact ids, by log time
``runs``                        sorted set of run names, by last activity
``seq:<run>:<rank>``            counter: the rank's last reserved sequence number
``latest:<store>:<object>``     marker: the newest version logged of a name
``pointer:<store>:<object>``    marker: the pointer version last written
``deferred``                    sorted set: artifact id -> when to send it again (ms)
``ckpt:<run>:<checkpoint>``     hash: each rank's artifact ids of a sharded checkpoint
``lease:<kind>:...``            sorted set: a fleet-wide limit's holders, by expiry
``throttle:<store>``            hash: a store's lowered concurrency after "slow down"
``throttled``                   set: the stores with a ``throttle:`` hash
``refused``                     hash: refused messages, counted by reason
``failures:<run>:<rank>``       counter: the rank's artifacts that failed (rises only)
``probe:<id>``                  hash: a store check's outcome (expires)
``counters``                    hash: the fleet's counters (:mod:`hoist.state.counters`)
``history:<run>:<store>:<ptr>`` sorted set: a pointer's targets (:mod:`hoist.state.retention`)
``ordinal:<run>``               hash: each pointer's last ordinal (retention)
``ordinals:<run>``              hash: each history entry's ordinal, none if never named
``named:<run>``                 hash: what each pointer of the run names or will name
``pruning:<run>``               hash: targets marked for deletion by retention
``pruned:<run>``                hash: objects retention deleted, with their bytes
``retention-stores:<run>``      hash: store id -> its spec's JSON (``hoist gc --run``)
``retention-due``               sorted set: runs with marks not yet deleted, by mark time (ms)
==============================  ==================================================

**Order key** is the one name of the ordering of versions: a string that
sorts by the moment of logging (:func:`hoist.protocol.messages.order_key`,
carried as a message's ``order`` field). A **marker** is a Redis string that
holds the highest order key seen for one object name and only ever rises
(:meth:`hoist.state.records.Records.raise_marker`). The latest marker holds
``"<order key>|<artifact id>"`` (:func:`encode_marker`), so it sorts by the
order key and names the artifact holding it; the pointer marker holds the
order key alone. :func:`decode_marker` reads either.
"""

from __future__ import annotations

from typing import NamedTuple

PREFIX = "hoist:"
DEFERRED = f"{PREFIX}deferred"
REFUSED = f"{PREFIX}refused"
RUNS = f"{PREFIX}runs"
RETENTION_DUE = f"{PREFIX}retention-due"
"""Runs with retention marks not yet deleted, by when the oldest was made (ms): the
resender finishes those a killed worker left (:func:`hoist.state.retention.overdue_runs`).
Fleet-wide, like ``deferred``: a run leaves it when its last mark is deleted."""

_SEPARATOR = "|"


def reply_text(value: bytes | str) -> str:
    """A Redis reply as text, from a decoding client (the state's) or a raw one.

    Example:
        >>> reply_text(b"done"), reply_text("done")
        ('done', 'done')
    """
    return value.decode() if isinstance(value, bytes) else str(value)


def run_state_key(kind: str, run_name: str, *parts: str) -> str:
    """A key of one run's retention state (``history``, ``named``, ``pruned``, …).

    Example:
        >>> run_state_key("history", "bert", "s3-1", "bert/latest.symlink")
        'hoist:history:bert:s3-1:bert/latest.symlink'
    """
    return ":".join([f"{PREFIX}{kind}", run_name, *parts])


def record_key(artifact: str) -> str:
    """The hash of one artifact's record.

    Example:
        >>> record_key("hoist-bert-r0-1")
        'hoist:artifact:hoist-bert-r0-1'
    """
    return f"{PREFIX}artifact:{artifact}"


def owner_key(artifact: str) -> str:
    """The string holding the token of the task that has claimed ``artifact``."""
    return f"{PREFIX}owner:{artifact}"


def failures_key(run_name: str, rank: int) -> str:
    """The counter of a rank's failed artifacts: raised with every failure written,
    so a rank learns of one with a single GET (:mod:`hoist.logger.health`).

    Example:
        >>> failures_key("bert-3", 0)
        'hoist:failures:bert-3:0'
    """
    return f"{PREFIX}failures:{run_name}:{rank}"


def probe_key(probe: str) -> str:
    """The hash of a store check's outcome (:class:`~hoist.protocol.messages.ProbeRequest`)."""
    return f"{PREFIX}probe:{probe}"


def run_key(run_name: str) -> str:
    """The sorted set of a run's artifact ids, scored by log time."""
    return f"{PREFIX}run:{run_name}"


def seq_key(run_name: str, rank: int) -> str:
    """The counter of a rank's sequence numbers in a run."""
    return f"{PREFIX}seq:{run_name}:{rank}"


def checkpoint_key(run_name: str, checkpoint: str) -> str:
    """The hash of each rank's artifact ids of a sharded checkpoint."""
    return f"{PREFIX}ckpt:{run_name}:{checkpoint}"


def latest_key(store_id: str, object_name: str) -> str:
    """The marker of the newest version logged of ``object_name`` in a store.

    Example:
        >>> latest_key("s3-1", "run/model.pt")
        'hoist:latest:s3-1:run/model.pt'
    """
    return f"{PREFIX}latest:{store_id}:{object_name}"


def pointer_key(store_id: str, object_name: str) -> str:
    """The marker of the pointer version last written at ``object_name`` in a store."""
    return f"{PREFIX}pointer:{store_id}:{object_name}"


def rank_lease_key(run_name: str, rank: int) -> str:
    """The limit of one rank's uploads in flight."""
    return f"{PREFIX}lease:rank:{run_name}:{rank}"


def store_lease_key(store_id: str) -> str:
    """The limit of uploads in flight to one store."""
    return f"{PREFIX}lease:store:{store_id}"


THROTTLED = f"{PREFIX}throttled"
"""The set of store ids under a throttle ceiling (``hoist status`` reads it)."""


def throttle_key(store_id: str) -> str:
    """A store's ceiling while it throttles (:mod:`hoist.state.throttle`)."""
    return f"{PREFIX}throttle:{store_id}"


def name_lease_key(store_id: str, object_name: str) -> str:
    """The lock of one object name: one upload of it in flight at a time."""
    return f"{PREFIX}lease:name:{store_id}:{object_name}"


class Marker(NamedTuple):
    """A decoded marker: the order key it holds and, for a latest marker, the artifact."""

    order_key: str
    artifact: str
    """The artifact that logged this version; empty for a pointer marker."""


def encode_marker(order_key: str, artifact: str) -> str:
    """The latest marker of ``artifact``'s version: sorts by ``order_key``, then names it.

    Example:
        >>> encode_marker("00000000000000000042:000000:000000000007", "hoist-bert-r0-7")
        '00000000000000000042:000000:000000000007|hoist-bert-r0-7'
    """
    return f"{order_key}{_SEPARATOR}{artifact}"


def decode_marker(value: str) -> Marker:
    """Split a marker into its order key and artifact (empty if it names none).

    Example:
        >>> decode_marker("00000000000000000042:000000:000000000007|hoist-bert-r0-7")
        Marker(order_key='00000000000000000042:000000:000000000007', artifact='hoist-bert-r0-7')
        >>> decode_marker("step:00000000000000000010")
        Marker(order_key='step:00000000000000000010', artifact='')
    """
    order_key, _, artifact = value.partition(_SEPARATOR)
    return Marker(order_key, artifact)
