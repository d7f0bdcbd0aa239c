"""The JSON messages ranks send to workers, and the names they go by.

A message is a dataclass turned into a plain dict (Celery's JSON serializer,
never pickle). It holds everything a worker needs, so that a worker that has
never seen the rank can do the job, and nothing secret (see
:mod:`hoist.stores.spec`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, TypeVar

UPLOAD_TASK = "hoist.upload"
SYMLINK_TASK = "hoist.symlink"
COMMIT_TASK = "hoist.commit"
UPLOAD_QUEUE = "hoist.uploads"
SYMLINK_QUEUE = "hoist.symlinks"
"""Short pointer writes have their own queue, so that they never wait behind
long uploads for a worker slot."""

M = TypeVar("M", bound="Message")


def artifact_id(run_name: str, rank: int, seq: int) -> str:
    """The deterministic id of one logged artifact; also its Celery task id.

    Example:
        >>> artifact_id("bert-3", 0, 17)
        'hoist-bert-3-r0-17'
    """
    return f"hoist-{run_name}-r{rank}-{seq}"


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
    """

    id: str
    run_name: str
    rank: int
    seq: int
    artifact_name: str
    object_name: str
    order: str
    store: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls: type[M], data: dict[str, Any]) -> M:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})

    def summary(self) -> dict[str, Any]:
        """What Flower shows as the task's arguments: what, whose, how big; never secrets.

        The artifact comes first: Flower's task table cuts long arguments short.
        """
        return {"artifact": self.artifact_name, "run": self.run_name, "rank": self.rank}


@dataclass(frozen=True)
class UploadRequest(Message):
    """Upload one staged file.

    Parameters:
        staged_path: the staged copy, inside the workers' staging root.
        size: its size when staged.
        overwrite: replace an existing object holding other bytes.
        rank_limit: uploads of this rank that may run at once, fleet-wide.
        fingerprint: for a hard-linked staged file, what it looked like when
            staged (:meth:`hoist.logger.staging.Fingerprint.to_json`); the
            worker fails the upload if the file was rewritten since.
    """

    staged_path: str = ""
    size: int = 0
    overwrite: bool = False
    rank_limit: int = 4
    fingerprint: list[int] | None = None

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "size": self.size}


@dataclass(frozen=True)
class SymlinkRequest(Message):
    """Point ``object_name`` (ending in ``.symlink``) at the target's object.

    Parameters:
        target_id: the artifact id of the upload the pointer names.
        target_object_name: the object name written into the pointer.
    """

    target_id: str = ""
    target_object_name: str = ""

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "target": self.target_object_name}


@dataclass(frozen=True)
class CommitRequest(Message):
    """Commit one step of a sharded checkpoint once every rank's files are verified.

    ``object_name`` is the run-wide pointer (``…/latest.symlink``),
    ``artifact_name`` the checkpoint's directory name, ``order`` the step's
    :func:`hoist.checkpoints.step_order`.

    Parameters:
        step: the training step.
        world_size: how many ranks register files for it.
        prefix: the object name of the step's directory (no trailing ``/``).
    """

    step: int = 0
    world_size: int = 1
    prefix: str = ""

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "step": self.step, "ranks": self.world_size}


def commit_id(run_name: str, checkpoint: str) -> str:
    """The id of a checkpoint's commit; the same whichever rank sends it.

    Example:
        >>> commit_id("bert-3", "checkpoints/step-00000100")
        'hoist-bert-3-commit-checkpoints/step-00000100'
    """
    return f"hoist-{run_name}-commit-{checkpoint}"


MESSAGE_TYPES: dict[str, type[Message]] = {
    UPLOAD_TASK: UploadRequest,
    SYMLINK_TASK: SymlinkRequest,
    COMMIT_TASK: CommitRequest,
}
QUEUES = {UPLOAD_TASK: UPLOAD_QUEUE, SYMLINK_TASK: SYMLINK_QUEUE, COMMIT_TASK: SYMLINK_QUEUE}


def send(app: Any, task: str, message: Message, retry_seconds: float = 30.0) -> None:
    """Send ``message`` as ``task``, with its artifact id as the task id.

    Flower shows :meth:`Message.summary` as the arguments. If the broker is
    unreachable, kombu retries for about ``retry_seconds`` before raising.
    """
    app.send_task(
        task,
        kwargs={"message": message.to_json()},
        task_id=message.id,
        queue=QUEUES[task],
        kwargsrepr=repr(message.summary()),
        retry=True,
        retry_policy={
            "max_retries": max(1, int(retry_seconds)),
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        },
    )
