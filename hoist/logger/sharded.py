"""Sharded checkpoints from the rank's side: its files of a step, and the step's commit.

Every rank uploads its own files of a step as ordinary artifacts and
registers their ids under the step in the state Redis. The rank whose
registration completes the step (the last of ``world`` ranks, minutes after
the first perhaps) sends the step's commit: a worker waits until every
registered file is uploaded and verified, writes the step's manifest and
moves the run's pointer to it, never back to an older step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from hoist.errors import ConfigurationError
from hoist.logger.outbox import Outbox
from hoist.logger.retention import KeepFields
from hoist.logger.retry import StateRetry
from hoist.logger.staging import StagingMode, staging_mode
from hoist.protocol.manifest import checkpoint_name, files_under, relative_inside, step_order
from hoist.protocol.messages import COMMIT_TASK, CommitRequest, commit_id
from hoist.protocol.naming import ObjectNameTemplate, validate_artifact_name
from hoist.protocol.pointers import POINTER_SUFFIX
from hoist.state.records import Records
from hoist.stores.spec import StoreSpec

Upload = Callable[[str, str, str, bool, StagingMode], str]
"""Stages and enqueues one file: ``(artifact, object name, path, overwrite, mode) -> id``."""


class ShardedCheckpoints:
    """Registers a rank's files of sharded checkpoints and sends a step's commit.

    Parameters:
        upload: stages and enqueues one file (the logger's upload step).
        object_name: the checkpoint object name of an artifact name.
        template: the checkpoint template, quoted when it splits a step.
        records: the state store where the step's files are registered.
        retry: retries Redis calls through a short outage.
        outbox: sends the commit.
        spec: the store, as workers are told of it.
        run_name, rank, world_size: this rank's run and place in it.
    """

    def __init__(
        self,
        upload: Upload,
        object_name: Callable[[str], str],
        template: ObjectNameTemplate,
        records: Records,
        retry: StateRetry,
        outbox: Outbox,
        spec: StoreSpec,
        run_name: str,
        rank: int,
        world_size: int,
    ) -> None:
        self._upload = upload
        self._object_name = object_name
        self._template = template
        self._records = records
        self._retry = retry
        self._outbox = outbox
        self._spec = spec
        self._run_name = run_name
        self._rank = rank
        self._world_size = world_size

    def log(
        self,
        step: int,
        path: str | os.PathLike[str],
        files: Iterable[str | os.PathLike[str]] | None,
        name: str | None,
        pointer: str,
        staging: StagingMode | str,
        ranks: int | None,
        keep: KeepFields | None = None,
    ) -> list[str]:
        """Upload this rank's files of ``step``; return their artifact ids.

        See :meth:`hoist.logger.logger.ObjectStoreLogger.log_checkpoint_dir`; ``keep``
        holds the commit's retention fields (``keep_last``, ``keep_every``).
        """
        name = name or checkpoint_name(step)
        validate_artifact_name(name)
        root = os.fspath(path)
        chosen = [os.fspath(f) for f in files] if files is not None else files_under(root)
        mode = staging_mode(staging)
        prefix = self._object_name(name)
        ids = []
        for file in chosen:
            artifact = f"{name}/{relative_inside(root, file)}"
            object_name = self._object_name(artifact)
            if not object_name.startswith(prefix + "/"):
                raise ConfigurationError(
                    f"checkpoint_object_name {self._template.template!r} must end with "
                    "{artifact_name}, so that a step's files share one directory"
                )
            ids.append(self._upload(artifact, object_name, file, True, mode))
        world = self._world_size if ranks is None else ranks
        registered = self._retry(
            lambda: self._records.register_shards(self._run_name, name, self._rank, world, ids)
        )
        if registered == world:
            self._send_commit(
                step, name, prefix, pointer, world, keep or KeepFields(keep_last=0, keep_every=0)
            )
        return ids

    def _send_commit(
        self, step: int, name: str, prefix: str, pointer: str, world: int, keep: KeepFields
    ) -> None:
        validate_artifact_name(pointer)
        message = CommitRequest(
            id=commit_id(self._run_name, name),
            run_name=self._run_name,
            rank=self._rank,
            seq=0,
            artifact_name=name,
            object_name=self._object_name(pointer) + POINTER_SUFFIX,
            order=step_order(step),
            store=self._spec.to_json(),
            step=step,
            world_size=world,
            prefix=prefix,
            **keep,
        )
        # Once per step: a rank that registers again must not send a second commit.
        self._outbox.enqueue_once(COMMIT_TASK, message)
