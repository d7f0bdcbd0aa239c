"""The JSON messages ranks send to workers, and the names they go by.

A message is a dataclass turned into a plain dict (Celery's JSON serializer,
never pickle). It holds everything a worker needs, so that a worker that has
never seen the rank can do the job, and nothing secret (see
:mod:`hoist.stores.spec`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import time
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from hoist.errors import ConfigurationError, InvalidMessageError
from hoist.keys import FleetKeys
from hoist.protocol.signing import MAC_FIELD, newest_mac

UPLOAD_TASK = "hoist.upload"
POINTER_TASK = "hoist.symlink"
COMMIT_TASK = "hoist.commit"
PROBE_TASK = "hoist.probe"
"""A logger's check, when it starts, that the fleet can use its store."""
UPLOAD_BATCH_TASK = "hoist.upload_batch"
"""Several small uploads of one rank in one task
(see :func:`~hoist.protocol.sending.send_batch`)."""
UPLOAD_QUEUE = "hoist.uploads"
POINTER_QUEUE = "hoist.symlinks"
"""Short pointer writes have their own queue, so that they never wait behind
long uploads for a worker slot."""
NODE_QUEUE_ENV = "HOIST_NODE_QUEUE"
"""Names this node's upload queue, for ranks (the logger) and workers alike."""
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def node_queue(node: str) -> str:
    """The upload queue of one node, for staging on a node-local directory.

    Ranks that stage to a directory only their own node can read send their
    uploads here, and only a worker on that node (``hoist worker --node-queue
    NODE``) consumes it. Pointer tasks need no staged file and stay on
    :data:`POINTER_QUEUE`.

    Example:
        >>> node_queue("gpu-017")
        'hoist.uploads.node.gpu-017'

    Raises:
        ConfigurationError: ``node`` is empty or not a plain name.
    """
    if not _NODE_NAME.fullmatch(node):
        raise ConfigurationError(
            f"node queue name {node!r} is not usable; use letters, digits, '.', '_' and '-' "
            "(for example the host name), up to 128 characters"
        )
    return f"{UPLOAD_QUEUE}.node.{node}"


M = TypeVar("M", bound="Message")

MAX_BATCH = 32
"""Most uploads one batch task carries; a worker refuses a larger batch."""
BATCH_FILE_BYTES = 1024 * 1024
"""Files up to this size may travel in a batch; larger ones are worth a task each."""

MAX_MESSAGE_BYTES = 64 * 1024
"""Largest message a worker accepts, as JSON. A rank's messages are well under
4 KiB (names, a store description, sealed credentials); anything far larger is
not one of ours and is refused before it is stored in a record."""


def artifact_id(run_name: str, rank: int, seq: int) -> str:
    """The deterministic id of one logged artifact; also its Celery task id.

    Example:
        >>> artifact_id("bert-3", 0, 17)
        'hoist-bert-3-r0-17'
    """
    return f"hoist-{run_name}-r{rank}-{seq}"


MAX_CLOCK_SKEW_SECONDS = 120.0
"""How far in the future a message's order key may be. Order keys decide which
version of a name wins; one far in the future would freeze a pointer for ever."""

_ORDER = re.compile(r"(\d{20}):\d{6}:\d{12}|step:\d{20}")


def check_order(order: str, now_ns: int | None = None) -> None:
    """Refuse an order key that is not of :func:`order_key`'s (or a step's) form, or that
    lies more than :data:`MAX_CLOCK_SKEW_SECONDS` in the future.

    Raises:
        InvalidMessageError: what is wrong with it.

    Example:
        >>> check_order(order_key(0, 1))
        >>> check_order("tomorrow")
        Traceback (most recent call last):
        ...
        hoist.errors.InvalidMessageError: the message's order key 'tomorrow' is not one hoist makes
    """
    match = _ORDER.fullmatch(order)
    if match is None:
        raise InvalidMessageError(f"the message's order key {order[:60]!r} is not one hoist makes")
    if match.group(1) is None:  # a checkpoint step: ordered by step, not by time
        return
    ahead = (int(match.group(1)) - (now_ns or time.time_ns())) / 1e9
    if ahead > MAX_CLOCK_SKEW_SECONDS:
        raise InvalidMessageError(
            f"the message's order key lies {ahead:.0f} s in the future, more than the "
            f"{MAX_CLOCK_SKEW_SECONDS:.0f} s of clock skew allowed; check the rank's clock"
        )


def order_key(rank: int, seq: int) -> str:
    """A key that sorts by the moment of logging: later calls sort higher.

    Used to keep pointers and repeated names from moving backwards when tasks
    run out of order. Across nodes it relies on clocks being in step to within
    the interval between two versions of one name (seconds, for checkpoints).
    """
    return f"{time.time_ns():020d}:{rank:06d}:{seq:012d}"


@dataclass(frozen=True)
class Message:
    """Fields every message carries.

    Parameters:
        id: :func:`artifact_id` of this artifact; the Celery task id too.
        run_name, rank, seq: who logged it, and the rank's sequence number.
        artifact_name: the name the rank logged it under.
        object_name: the object it becomes in the store.
        order: :func:`order_key` at logging time.
        store: :meth:`hoist.stores.spec.StoreSpec.to_json` of the target store.
        mac: the rank's signature over every other field
            (:mod:`hoist.protocol.signing`); empty until :meth:`signed`.
    """

    id: str
    run_name: str
    rank: int
    seq: int
    artifact_name: str
    object_name: str
    order: str
    store: dict[str, Any]
    mac: str = ""

    def signed(self: M, keys: FleetKeys) -> M:
        """This message with its :mod:`~hoist.protocol.signing` MAC made with the newest key."""
        # A copy with one field set, not dataclasses.replace: this runs on the
        # training thread for every file_artifact, and replace re-runs __init__.
        signed = copy.copy(self)
        object.__setattr__(signed, MAC_FIELD, newest_mac(self.to_json(), keys))
        return signed

    def to_json(self) -> dict[str, Any]:
        # Shallow: dataclasses.asdict deep-copies every value, 0.17 ms per call,
        # and a rank converts each message twice (record and task).
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls: type[M], data: dict[str, Any]) -> M:
        """Rebuild a message from its JSON form, checking every field's type.

        Messages come off a shared broker, so nothing is assumed: a field of the
        wrong type, a missing field or a negative number is refused with
        :class:`~hoist.errors.InvalidMessageError` naming the field. Unknown
        fields are ignored, so a newer rank's messages still work.
        """
        if not isinstance(data, dict):
            raise InvalidMessageError(
                f"a {cls.__name__} must be a JSON object, not {type(data).__name__}"
            )
        values: dict[str, Any] = {}
        missing = []
        for spec in dataclasses.fields(cls):
            if spec.name not in data:
                if spec.default is dataclasses.MISSING:
                    missing.append(spec.name)
                continue
            values[spec.name] = _checked(cls, spec.name, data[spec.name])
        if missing:
            raise InvalidMessageError(f"a {cls.__name__} lacks the field(s) {', '.join(missing)}")
        return cls(**values)

    def summary(self) -> dict[str, Any]:
        """What Flower shows as the task's arguments: what, whose, how big; never secrets.

        Shortest first: Flower's tasks table shows the arguments on one line and
        cuts what does not fit, so the artifact and short details (its size)
        come before the run's name, and long ones (a pointer's target) last;
        at 1400 px the size still shows beside a long run name.

        Example:
            >>> UploadRequest("i", "bert-3", 0, 7, "ep1.pt", "o", "k", {}, size=5).summary()
            {'artifact': 'ep1.pt', 'size': 5, 'run': 'bert-3', 'rank': 0}
        """
        return self._summary()

    def _summary(
        self, first: dict[str, Any] | None = None, last: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The summary with a kind's own short details ``first`` and long ones ``last``."""
        whose = {"run": self.run_name, "rank": self.rank}
        return {"artifact": self.artifact_name, **(first or {}), **whose, **(last or {})}


@dataclass(frozen=True)
class UploadRequest(Message):
    """Upload one staged file.

    Parameters:
        staged_path: the staged copy, inside the workers' staging root.
        size: its size when staged.
        overwrite: replace an existing object holding other bytes.
        rank_limit: uploads of this rank that may run at once, fleet-wide.
        fingerprint: for a hard-linked staged file, what it looked like when
            staged (:meth:`hoist.protocol.layout.Fingerprint.to_json`); the
            worker fails the upload if the file was rewritten since.
        queue: the node queue (:func:`node_queue`) when the file was staged
            node-locally, else empty (the shared :data:`UPLOAD_QUEUE`). Part
            of the message, so every re-send (resender, ``hoist retry``) goes
            back to the same node.
    """

    staged_path: str = ""
    size: int = 0
    overwrite: bool = False
    rank_limit: int = 4
    fingerprint: list[int] | None = None
    queue: str = ""

    def summary(self) -> dict[str, Any]:
        return self._summary(first={"size": self.size})


@dataclass(frozen=True)
class PointerRequest(Message):
    """Point ``object_name`` (ending in ``.symlink``) at the target's object.

    Parameters:
        target_id: the artifact id of the upload the pointer names.
        target_object_name: the object name written into the pointer.
        keep_last: once written, delete this pointer's earlier targets beyond
            its last ``keep_last`` (:mod:`hoist.state.retention`); 0 keeps all.
        keep_every: keep every ``keep_every``-th target as a milestone; 0: none.
    """

    target_id: str = ""
    target_object_name: str = ""
    keep_last: int = 0
    keep_every: int = 0

    def summary(self) -> dict[str, Any]:
        return self._summary(last={"target": self.target_object_name})


@dataclass(frozen=True)
class CommitRequest(Message):
    """Commit one step of a sharded checkpoint once every rank's files are verified.

    ``object_name`` is the run-wide pointer (``…/latest.symlink``),
    ``artifact_name`` the checkpoint's directory name, ``order`` the step's
    :func:`hoist.protocol.manifest.step_order`.

    Parameters:
        step: the training step.
        world_size: how many ranks register files for it.
        prefix: the object name of the step's directory (no trailing ``/``).
        keep_last, keep_every: as for :class:`PointerRequest`, for committed
            steps (a step's files and its manifest).
    """

    step: int = 0
    world_size: int = 1
    prefix: str = ""
    keep_last: int = 0
    keep_every: int = 0

    def summary(self) -> dict[str, Any]:
        return self._summary(first={"step": self.step, "ranks": self.world_size})


@dataclass(frozen=True)
class ProbeRequest(Message):
    """Check that the fleet can use the store: it exists, takes the credentials, and
    accepts a write and a delete of ``object_name`` (see :mod:`hoist.tasks.probe_job`).

    Not an artifact: it has no record and counts in no run's status; the
    worker writes its outcome under :func:`hoist.state.keys.probe_key`.
    ``seq`` is 0 and ``artifact_name`` :data:`PROBE_NAME`.
    """


PROBE_NAME = "(store check)"
"""The artifact name of a :class:`ProbeRequest`, as errors and Flower show it."""
PROBE_OBJECT = re.compile(r"(?:.*/)?hoist-store-check-[0-9a-f]{12}")
"""The only object names a store check may write and delete: a worker refuses
any other, so a probe message cannot be used to overwrite or delete an artifact."""


def probe_object_name(nonce: str) -> str:
    """The last segment of a store check's object (``nonce``: 12 hex digits).

    Example:
        >>> probe_object_name("0123456789ab")
        'hoist-store-check-0123456789ab'
    """
    return f"hoist-store-check-{nonce}"


def probe_id(run_name: str, rank: int, nonce: str) -> str:
    """The id of one store check; unique per logger (``nonce``).

    Example:
        >>> probe_id("bert-3", 0, "9f2c")
        'hoist-bert-3-r0-probe-9f2c'
    """
    return f"hoist-{run_name}-r{rank}-probe-{nonce}"


def commit_id(run_name: str, checkpoint: str) -> str:
    """The id of a checkpoint's commit; the same whichever rank sends it.

    Example:
        >>> commit_id("bert-3", "checkpoints/step-00000100")
        'hoist-bert-3-commit-checkpoints/step-00000100'
    """
    return f"hoist-{run_name}-commit-{checkpoint}"


MESSAGE_TYPES: dict[str, type[Message]] = {
    UPLOAD_TASK: UploadRequest,
    POINTER_TASK: PointerRequest,
    COMMIT_TASK: CommitRequest,
    PROBE_TASK: ProbeRequest,
}
# A probe is a few requests: it goes with the pointers, never behind long uploads.
QUEUES = {
    UPLOAD_TASK: UPLOAD_QUEUE,
    POINTER_TASK: POINTER_QUEUE,
    COMMIT_TASK: POINTER_QUEUE,
    PROBE_TASK: POINTER_QUEUE,
}


_JSON_TYPES: dict[Any, type] = {str: str, int: int, bool: bool, dict: dict, list: list}


_HINTS: dict[type, dict[str, Any]] = {}


def _type_hints(cls: type[Message]) -> dict[str, Any]:
    # Resolved once per class: resolving the string annotations on every field
    # of every message cost 12% of a worker's time on small uploads.
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _checked(cls: type[Message], name: str, value: Any) -> Any:
    """``value`` if it has the type field ``name`` of ``cls`` declares, else raise."""
    hint = _type_hints(cls)[name]
    if typing.get_origin(hint) in (types.UnionType, typing.Union):  # `X | None`
        if value is None:
            return None
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    expected = _JSON_TYPES[typing.get_origin(hint) or hint]
    _check_type(cls, name, value, expected)
    if expected is list:  # list[int]: the only list a message holds
        for item in value:
            _check_type(cls, name, item, int)
    if isinstance(value, int) and expected is int and value < (1 if name == "rank_limit" else 0):
        raise InvalidMessageError(f"field {name!r} of a {cls.__name__} is out of range: {value}")
    if name.startswith("keep_") and value > MAX_KEEP:
        raise InvalidMessageError(f"field {name!r} of a {cls.__name__} is out of range: {value}")
    return value


def _check_type(cls: type[Message], name: str, value: Any, expected: type) -> None:
    # bool is an int to Python, but `true` is no rank or size.
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise InvalidMessageError(
            f"field {name!r} of a {cls.__name__} must be {_article(expected.__name__)} "
            f"{expected.__name__}, "
            f"not {type(value).__name__} ({_shorten(value)})"
        )


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _shorten(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


MAX_KEEP = 1_000_000
"""Largest ``keep_last`` / ``keep_every`` a message may carry."""


def check_keep(name: str, value: object) -> int:
    """``value`` as a retention count (``keep_last``, ``keep_every``); None means off (0).

    Raises:
        ConfigurationError: it is not a whole number from 1 to :data:`MAX_KEEP`.

    Example:
        >>> check_keep("keep_last", 3), check_keep("keep_every", None)
        (3, 0)
        >>> check_keep("keep_last", -1)
        Traceback (most recent call last):
        ...
        hoist.errors.ConfigurationError: keep_last must be a positive whole number ...
    """
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_KEEP:
        raise ConfigurationError(
            f"{name} must be a positive whole number up to {MAX_KEEP} (or None to keep "
            f"everything), not {_shorten(value)}"
        )
    return value


def check_message_size(data: Any) -> None:
    """Refuse a message larger than :data:`MAX_MESSAGE_BYTES` before anything else reads it.

    Raises:
        InvalidMessageError: it is too large, or not plain JSON.

    Example:
        >>> check_message_size({"artifact_name": "x" * 100_000})
        Traceback (most recent call last):
        ...
        hoist.errors.InvalidMessageError: the message is 100021 bytes, more than ...
    """
    try:
        size = len(json.dumps(data).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError) as exc:
        raise InvalidMessageError(f"the message is not plain JSON: {exc}") from None
    if size > MAX_MESSAGE_BYTES:
        raise InvalidMessageError(
            f"the message is {size} bytes, more than the {MAX_MESSAGE_BYTES} a hoist message can be"
        )
