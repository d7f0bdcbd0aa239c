"""What retention keeps, marks and records: history entries, the rules, marks, pruned values.

The pure half of :mod:`hoist.state.retention`: which of a pointer's targets
go (:func:`victims`), what a mark holds (:class:`Mark`: the versions it may
delete), what ``pruned:<run>`` holds (:func:`pruned_value`), and what a
target spans in the store (:func:`step_files`, :func:`measure`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from hoist.errors import ObjectNotFoundError
from hoist.protocol.manifest import Manifest
from hoist.stores.base import ObjectStore

FILE = "f"
"""A history entry of a plain object."""
STEP = "s"
"""A history entry of a committed step, named by its manifest."""


def entry(kind: str, object_name: str) -> str:
    """A history member: ``f|<object>`` or ``s|<manifest>``.

    Example:
        >>> entry(STEP, "bert/checkpoints/step-00000100/manifest.json")
        's|bert/checkpoints/step-00000100/manifest.json'
    """
    return f"{kind}|{object_name}"


def logged_at(order: str) -> int:
    """A history score from a message's order key: the step of a commit, else when the
    pointer was logged, in µs (:func:`hoist.protocol.messages.order_key`).

    Example:
        >>> logged_at("01796299200123456789:000000:000000000007")
        1796299200123456
        >>> logged_at("step:00000000000000001200")
        1200
    """
    head, _, rest = order.partition(":")
    if head == "step":
        return int(rest)
    return int(head) // 1000


def ordinal_of(held: str | bytes | None) -> int:
    """An entry's recorded ordinal, or 0 for a target no pointer named (never a milestone).

    Example:
        >>> ordinal_of(b"3"), ordinal_of(None)
        (3, 0)
    """
    return 0 if held is None else int(held)


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
        keep_every: an ordinal that is a multiple of it stays; 0: no milestones
            (an ordinal of 0 is a target no pointer named: never one).
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
        if not (keep_every and ordinal and ordinal % keep_every == 0)
        and member[2:] not in protected
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


@dataclass(frozen=True)
class Mark:
    """A target marked for deletion: what a prune deletes, and which versions.

    Parameters:
        object_name: the target (a step's manifest, for a step).
        kind: :data:`FILE` or :data:`STEP`.
        store_id: the store it is in.
        versions: each object to delete (a step: its files and its manifest) and
            the latest marker its name had when marked ("" if none): an object
            whose name was logged again since is not deleted.
    """

    object_name: str
    kind: str
    store_id: str
    versions: dict[str, str] = field(default_factory=dict)
    versioned: bool = True
    """False for a mark written before marks held versions (``<kind>|<store>``): its
    versions are read when it is finished, and a pointer may not name its object."""
    held: str = field(default="", compare=False)
    """The mark as read from ``pruning:<run>`` ("" if not read): a finish drops it only if
    it is still that (a newer mark of the object stays)."""

    def to_json(self) -> str:
        """The mark as ``pruning:<run>`` holds it (keyed by ``object_name``)."""
        return json.dumps(
            {"kind": self.kind, "store": self.store_id, "versions": self.versions},
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, object_name: str, text: str) -> Mark:
        """The mark of ``object_name`` read back from ``pruning:<run>``, in either form.

        Example:
            >>> Mark.from_json("ep1.pt", "f|0ea05431fb3f1993").versioned
            False
        """
        if not text.startswith("{"):  # the form before versions: `<kind>|<store id>`
            kind, _, store_id = text.partition("|")
            return cls(object_name, kind, store_id, {}, versioned=False, held=text)
        held = json.loads(text)
        return cls(object_name, held["kind"], held["store"], dict(held["versions"]), held=text)


def pruned_value(size: int, version: str) -> str:
    """What ``pruned:<run>`` holds for an object: the bytes freed and the version deleted.

    Example:
        >>> pruned_value(1002, "00042:000000:000000000007|hoist-bert-r0-7")
        '1002|00042:000000:000000000007|hoist-bert-r0-7'
    """
    return f"{size}|{version}"


def pruned_fields(value: str) -> tuple[int, str | None]:
    """The bytes freed and the version deleted of a ``pruned:<run>`` value (None: not
    recorded, as before versions were kept: any version of the name counts as taken).

    Example:
        >>> pruned_fields("1002|00042:000000:000000000007|hoist-bert-r0-7")
        (1002, '00042:000000:000000000007|hoist-bert-r0-7')
        >>> pruned_fields("1002")
        (1002, None)
    """
    size, separator, version = value.partition("|")
    return int(size), version if separator else None


def step_files(store: ObjectStore, manifest: str) -> list[str]:
    """The object names of a committed step's files, from its manifest (none if it is gone)."""
    try:
        return [f.object_name for f in Manifest.from_bytes(store.get_bytes(manifest)).files]
    except ObjectNotFoundError:
        return []


def measure(store: ObjectStore, member: str) -> Pruned:
    """What pruning the history entry ``member`` would free now (a dry run's figure)."""
    kind, name = member.split("|", 1)
    objects = [*step_files(store, name), name] if kind == STEP else [name]
    sizes = []
    for object_name in objects:
        try:
            sizes.append(store.stat(object_name).size)
        except ObjectNotFoundError:
            continue
    return Pruned(name, kind, len(sizes), sum(sizes))
