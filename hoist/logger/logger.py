"""The rank-side logger: name, filter, stage, record, enqueue; wait at the end.

A training rank blocks only for the staging copy (or rename) and one short
Redis write, the artifact's record; the message goes to the broker from a
background thread (:mod:`hoist.logger.publisher`) and the upload happens on
the worker fleet. The logger's collaborators, one concept each:

- :mod:`hoist.logger.configuration`: the constructor's arguments resolved
  once against :class:`~hoist.settings.RankSettings` and the launcher;
- :mod:`hoist.logger.staging`: the copy (or link, or rename) into the staging root;
- :mod:`hoist.logger.connection`: the collaborators below that talk to Redis
  and the broker, built together;
- :mod:`hoist.logger.sequence`: the rank's sequence numbers;
- :mod:`hoist.logger.outbox`: sign, record, hand to the sending thread;
- :mod:`hoist.logger.retry`: Redis calls retried through a short outage;
- :mod:`hoist.logger.pending`: what ``wait()`` waits for, and the failures;
- :mod:`hoist.logger.health`: failures raised at the next call, and the store check;
- :mod:`hoist.logger.sharded`: ``log_checkpoint_dir`` and the step's commit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from hoist.errors import ConfigurationError, UploadFailedError
from hoist.logger.composer_names import ComposerNames, pointer_arguments
from hoist.logger.configuration import (
    DEFAULT_CHECKPOINT_OBJECT_NAME,
    DEFAULT_OBJECT_NAME,
    LoggerConfiguration,
    StoreArguments,
)
from hoist.logger.connection import FleetConnection
from hoist.logger.health import OnFailure, on_failure_mode
from hoist.logger.levels import LogLevel
from hoist.logger.object_names import ObjectNames
from hoist.logger.retention import KeepRule
from hoist.logger.sharded import ShardedCheckpoints
from hoist.logger.staging import StagingMode, stage_file, staging_mode
from hoist.protocol.layout import staged_path
from hoist.protocol.messages import (
    POINTER_TASK,
    UPLOAD_TASK,
    PointerRequest,
    UploadRequest,
    artifact_id,
    order_key,
)
from hoist.protocol.naming import validate_artifact_name
from hoist.protocol.pointers import POINTER_SUFFIX
from hoist.settings import RankSettings
from hoist.stores.base import ObjectStore

ShouldLog = Callable[[Any, LogLevel, str], bool]
"""A filter: ``(state, log_level, artifact_name) -> bool``, False skips the artifact."""


class ObjectStoreLogger(ComposerNames):
    """Hands a rank's artifacts to the hoist worker fleet.

    The constructor takes either form of MosaicML Composer's logger: a Libcloud
    ``provider``, ``container`` and ``provider_kwargs``, or an
    ``object_store_cls`` (``S3ObjectStore``, ``SFTPObjectStore``,
    ``LibcloudObjectStore``) with ``object_store_kwargs``.

    Parameters:
        provider, container, provider_kwargs: the Libcloud form.
        object_store_cls, object_store_kwargs: the store-class form. None of
            them given: the store ``HOIST_STORE_URI`` names (``hoist up``
            writes the embedded one to ``.hoist/env``).
        object_name: template of object names; fields ``{artifact_name}``,
            ``{run_name}``, ``{rank}``, ``{local_rank}``, ``{world_size}``,
            ``{local_world_size}``, ``{node_rank}``.
        should_log_artifact: ``(state, log_level, artifact_name) -> bool``;
            False skips the artifact before anything is staged.
        num_concurrent_uploads: this rank's uploads running at once, fleet-wide.
        upload_staging_folder: the staging root the workers read
            (default ``HOIST_STAGING_DIR``).
        use_procs: accepted for compatibility and ignored: uploads run on the
            worker fleet, never in the training process.
        run_name: default ``HOIST_RUN_NAME``, torchrun's run id or the Slurm
            job id; generated (and logged) only for a single process.
        broker_url: default ``HOIST_BROKER_URL``. For TLS use ``rediss://`` and
            name a private CA in the query string:
            ``rediss://:PASSWORD@redis.lan:6380/0?ssl_ca_certs=/etc/hoist/ca.pem``
            (certificates are checked by default; see docs/design.md).
        state_url: the Redis holding artifact records (default: the broker).
        wait_on_close: ``close()`` waits for this rank's uploads; False for
            fire-and-forget (then ``hoist wait --run NAME`` in the job epilogue).
        rank, local_rank, world_size, local_world_size, node_rank: override
            what the launcher's environment says.
        fleet_key: signs every message and seals credentials in store arguments
            (default ``HOIST_FLEET_KEY``; several keys separated by commas sign
            with the first). Required: workers act only on signed messages.
        enqueue_timeout: seconds to keep trying an unreachable state Redis
            before ``file_artifact`` raises :class:`~hoist.errors.EnqueueError`
            (default ``HOIST_ENQUEUE_TIMEOUT``, else 30; the step is blocked
            meanwhile). The broker is sent to from a thread
            (:mod:`hoist.logger.publisher`) that tries as long, then marks the
            artifacts failed; ``close()`` waits up to this long for it.
        staging: the default :class:`~hoist.logger.staging.StagingMode`.
        node_queue: for a node-local staging folder (default
            ``HOIST_NODE_QUEUE``): the name of this node's upload queue, which
            only the worker on this node consumes (``hoist worker --node-queue
            NAME``). Empty: uploads go to the shared queue, and any worker of
            the fleet must be able to read the staging folder. Pointers always
            go to the shared pointer queue (they need no staged file).
        on_failure: ``"raise"``: the first call after a failure of this rank was
            recorded raises :class:`~hoist.errors.UploadFailedError`; ``"warn"``:
            log each once (:mod:`hoist.logger.health`).
        max_staged_bytes, when_staging_full: a bound on this rank's staged bytes
            (default ``HOIST_MAX_STAGED_BYTES``, else none) and what a call does at
            it: ``"wait"`` for room, or ``"supersede"`` unstarted versions of the
            same name first (:mod:`hoist.logger.backlog`).
        store_check: ask a worker to write and delete a small object under the
            run's prefix (:mod:`hoist.tasks.probe_job`): a wrong bucket fails early.
        keep_last: every pointer's default ``keep_last`` (:meth:`symlink_artifact`).
        settings: the rank's ``HOIST_*`` settings (default
            :meth:`RankSettings.from_environment() <hoist.settings.RankSettings.from_environment>`,
            read once, here); every argument above that is given wins over them.

    Raises:
        ConfigurationError: an argument or a ``HOIST_*`` variable is invalid,
            or a setting the logger needs is missing; the message names it.

    Example (needs a broker and a fleet, as tests/test_node_queue.py has):
        >>> with ObjectStoreLogger(object_store_cls=S3ObjectStore,  # doctest: +SKIP
        ...                        object_store_kwargs={"bucket": "ckpts"},
        ...                        object_name="{run_name}/rank{rank}/{artifact_name}") as logger:
        ...     logger.file_artifact(LogLevel.EPOCH, "ep1.pt", "/tmp/ep1.pt")
        ...     logger.symlink_artifact("ep1.pt", "latest.pt")
    """

    def __init__(
        self,
        provider: str | type[ObjectStore] | None = None,
        container: str | dict[str, Any] | None = None,
        provider_kwargs: dict[str, Any] | None = None,
        *,
        object_store_cls: type[ObjectStore] | None = None,
        object_store_kwargs: dict[str, Any] | None = None,
        object_name: str = DEFAULT_OBJECT_NAME,
        checkpoint_object_name: str = DEFAULT_CHECKPOINT_OBJECT_NAME,
        should_log_artifact: ShouldLog | None = None,
        num_concurrent_uploads: int = 4,
        upload_staging_folder: str | None = None,
        use_procs: bool = True,
        run_name: str | None = None,
        broker_url: str | None = None,
        state_url: str | None = None,
        wait_on_close: bool = True,
        rank: int | None = None,
        local_rank: int | None = None,
        world_size: int | None = None,
        local_world_size: int | None = None,
        node_rank: int | None = None,
        fleet_key: str | None = None,
        enqueue_timeout: float | None = None,
        staging: StagingMode | str = StagingMode.COPY,
        node_queue: str | None = None,
        on_failure: OnFailure | str = OnFailure.RAISE,
        max_staged_bytes: int | None = None,
        when_staging_full: str = "wait",
        store_check: bool = True,
        keep_last: int | None = None,
        settings: RankSettings | None = None,
    ) -> None:
        if num_concurrent_uploads < 1:
            raise ConfigurationError("num_concurrent_uploads must be at least 1")
        on_failure = on_failure_mode(on_failure)
        self._keep = KeepRule.of(keep_last)
        config = LoggerConfiguration.resolve(
            StoreArguments.of(
                provider, container, provider_kwargs, object_store_cls, object_store_kwargs
            ),
            object_name=object_name,
            checkpoint_object_name=checkpoint_object_name,
            upload_staging_folder=upload_staging_folder,
            run_name=run_name,
            broker_url=broker_url,
            state_url=state_url,
            ranks={
                "rank": rank,
                "local_rank": local_rank,
                "world_size": world_size,
                "local_world_size": local_world_size,
                "node_rank": node_rank,
            },
            fleet_key=fleet_key,
            enqueue_timeout=enqueue_timeout,
            staging=staging,
            node_queue=node_queue,
            max_staged_bytes=max_staged_bytes,
            when_staging_full=when_staging_full,
            settings=settings,
        )
        self.ranks = config.ranks
        self.template = config.template
        self.checkpoint_template = config.checkpoint_template
        self.run_name = config.run_name
        self.staging_root = config.staging_root
        self.spec = config.spec
        self.staging = config.staging
        self.enqueue_timeout = config.enqueue_timeout
        self.upload_queue = config.upload_queue
        self.should_log_artifact = should_log_artifact
        self.num_concurrent_uploads = num_concurrent_uploads
        self.use_procs = use_procs
        self.wait_on_close = wait_on_close
        # Built here so bad arguments fail in the caller; used for URIs only.
        self._store = self.spec.build(config.keys)
        fleet = FleetConnection.open(config, on_failure)
        self._records, self._retry, self._pending = fleet.records, fleet.retry, fleet.pending
        self._health, self._outbox, self._seqs = fleet.health, fleet.outbox, fleet.seqs
        self._budget = fleet.budget  # max_staged_bytes (hoist.logger.backlog)
        self._names = ObjectNames(
            config.template,
            config.checkpoint_template,
            self.run_name,
            self.ranks,
            self._store.validate_name,
        )
        self._checkpoints = ShardedCheckpoints(
            self._upload,
            self._names.checkpoint,
            self.checkpoint_template,
            self._records,
            self._retry,
            self._outbox,
            self.spec,
            self.run_name,
            self.ranks.rank,
            self.ranks.world_size,
        )
        self._latest_by_object: dict[str, str] = {}  # object name -> its newest artifact id
        self._closed = False
        if store_check:
            self._health.send_store_check(self._outbox, self._names, self.spec)

    # ----- the API ----------------------------------------------------------

    def file_artifact(
        self,
        log_level: LogLevel,
        artifact_name: str,
        file_path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        move: bool = False,
        staging: StagingMode | str | None = None,
        state: Any = None,
    ) -> str | None:
        """Stage ``file_path`` and enqueue its upload; return the artifact id, or None if filtered.

        Blocks only while the file is staged: a copy by default (a reflink
        where the filesystem can), ``move=True`` gives the file away (a
        rename), ``staging="link"`` keeps it and stages a hard link, on the
        promise not to rewrite it until uploaded (a rewrite fails the
        artifact instead of uploading mixed bytes). ``staging`` defaults to the
        logger's; see :class:`~hoist.logger.staging.StagingMode`. Logging a name again with
        ``overwrite=False`` while its previous upload is pending raises
        ``FileExistsError``; with ``overwrite=True`` the newest version wins.
        """
        self._check_open()
        if self.should_log_artifact is not None and not self.should_log_artifact(
            state, log_level, artifact_name
        ):
            return None
        mode = StagingMode.MOVE if move else staging_mode(staging or self.staging)
        artifact = self._upload(
            artifact_name, self._names.artifact(artifact_name), file_path, overwrite, mode
        )
        self._health.after_call()
        return artifact

    def log_checkpoint_dir(
        self,
        step: int,
        path: str | os.PathLike[str],
        *,
        files: Iterable[str | os.PathLike[str]] | None = None,
        name: str | None = None,
        pointer: str = "latest",
        staging: StagingMode | str | None = None,
        ranks: int | None = None,
        keep_last: int | None = None,
        keep_every: int | None = None,
    ) -> list[str]:
        """Upload this rank's files of a sharded checkpoint; move the run's pointer when all landed.

        Every rank of the run calls it for the same ``step``. Each file
        becomes the object ``checkpoint_object_name`` gives for
        ``<name>/<path inside the directory>`` (by default
        ``<run>/checkpoints/step-00000100/…``: one directory for all ranks).
        Once every rank's files of the step are uploaded and verified, a
        worker writes the step's manifest and points ``<run>/<pointer>.symlink``
        at it, never at an older step than the one it names; a step with a
        file that failed is never pointed to. Ranks may finish minutes apart.
        Returns at once with this rank's artifact ids; ``wait()`` waits for
        them (and, on the rank whose files completed the step, for the commit).

        Parameters:
            step: the training step; pointers only move to higher steps.
            path: the step's checkpoint directory.
            files: this rank's files in it (default: every file below
                ``path``). On a filesystem every rank sees, pass the files
                this rank wrote, e.g. ``__{rank}_*.distcp`` (and ``.metadata``
                on rank 0) for ``torch.distributed.checkpoint``.
            name: the directory's artifact name (default ``checkpoints/step-<step>``).
            pointer: the run-wide pointer's name, without ``.symlink``.
            staging: as for :meth:`file_artifact`.
            ranks: how many ranks log files for this step (default: the world
                size); 1 where only the main process writes the checkpoint,
                as Hugging Face's ``Trainer`` does.
            keep_last, keep_every: as for :meth:`symlink_artifact`, for steps.

        Example (in a training loop with torch; tests/test_checkpoints.py runs it):
            >>> dcp.save(state, checkpoint_id=f"/ckpt/step-{step}")  # doctest: +SKIP
            >>> logger.log_checkpoint_dir(step, f"/ckpt/step-{step}",  # doctest: +SKIP
            ...                           files=glob.glob(f"/ckpt/step-{step}/__{rank}_*"))
        """
        self._check_open()
        keep = self._keep.fields(keep_last, keep_every)
        mode = staging or self.staging
        artifacts = self._checkpoints.log(step, path, files, name, pointer, mode, ranks, keep)
        self._health.after_call()
        return artifacts

    def symlink_artifact(
        self,
        existing_artifact_name: str | LogLevel,
        symlink_artifact_name: str,
        *names: str,
        log_level: LogLevel = LogLevel.FIT,
        state: Any = None,
        keep_last: int | None = None,
        keep_every: int | None = None,
    ) -> str | None:
        """Point ``<object name>.symlink`` (a pointer) at an artifact this rank logged.

        Composer's name for it: ``symlink_artifact("ep1.pt", "latest.pt")``, or
        the level first, as Composer's ``Logger`` (:func:`pointer_arguments`).
        Written only after the target is uploaded and verified; a later call for
        the same pointer always wins. Returns the pointer's id, or None if filtered.
        With ``keep_last=K`` (default: the logger's), the pointer's earlier targets
        beyond its last K leave the store once it is written, except every
        ``keep_every``-th and any a pointer names (:mod:`hoist.state.retention`).
        """
        log_level, existing_artifact_name, symlink_artifact_name = pointer_arguments(
            existing_artifact_name, symlink_artifact_name, names, log_level
        )
        self._check_open()
        validate_artifact_name(symlink_artifact_name)
        if self.should_log_artifact is not None and not self.should_log_artifact(
            state, log_level, symlink_artifact_name
        ):
            return None
        target_object = self._names.artifact(existing_artifact_name)
        target_id = self._latest_by_object.get(target_object)
        if target_id is None:
            raise ConfigurationError(
                f"cannot point to {existing_artifact_name!r}: this rank has not logged it; "
                "call file_artifact first"
            )
        object_name = self._names.artifact(symlink_artifact_name) + POINTER_SUFFIX
        seq = self._seqs.next()
        message = PointerRequest(
            **self._common(seq, symlink_artifact_name, object_name),
            target_id=target_id,
            target_object_name=target_object,
            **self._keep.fields(keep_last, keep_every),
        )
        self._outbox.enqueue(POINTER_TASK, message, None)
        self._health.after_call()
        return message.id

    def has_logged(self, artifact_name: str) -> bool:
        """Whether this logger logged ``artifact_name`` (so it can be a pointer's target)."""
        return self._names.artifact(artifact_name) in self._latest_by_object

    @property
    def store(self) -> ObjectStore:
        """The store the artifacts go to, for reading them back (as built on this rank)."""
        return self._store

    def get_uri_for_artifact(self, artifact_name: str) -> str:
        """The URI the artifact has (or will have) in the store: ``s3://ckpts/run-1/rank0/ep1.pt``."""
        return self._store.get_uri(self._names.artifact(artifact_name))

    def check(self, store_check_timeout: float = 0.0) -> None:
        """Raise now for what the fleet recorded: failed uploads, a failed store check.

        Every logging call checks too; a training loop that logs rarely can
        call it every step (Composer's ``batch_end`` does). Each failure is
        reported once; with ``on_failure="warn"`` it is logged instead.

        Parameters:
            store_check_timeout: wait up to this many seconds for the store
                check's answer (unanswered by then: no error).
        """
        self._health.check(store_check_timeout)

    def wait(self, timeout: float | None = None, poll_interval: float = 0.1) -> None:
        """Block until this rank's uploads are uploaded and verified.

        Raises :class:`~hoist.errors.UploadFailedError` naming every failed
        artifact with its cause (each failure is reported once) once every
        upload has finished, or :class:`~hoist.errors.WaitTimeoutError` after
        ``timeout`` seconds (failures seen so far are reported by a later wait).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        # Messages still in this process first: a record the publisher gives up
        # on turns failed, and is reported below.
        self._outbox.publisher.flush(timeout)
        self._pending.wait(deadline, timeout, poll_interval)

    def close(self) -> None:
        """Wait for this rank's uploads (unless ``wait_on_close=False``) and let go."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.wait_on_close:
                self.wait()
        except UploadFailedError as exc:
            if self._health.on_failure is OnFailure.RAISE:
                raise
            self._health.report(exc.failures)  # on_failure="warn": logged, not raised
        finally:
            # Fire-and-forget too hands everything to the broker before it returns.
            self._outbox.publisher.close(self.enqueue_timeout)
            self._store.close()

    def __enter__(self) -> ObjectStoreLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----- internals --------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigurationError("this ObjectStoreLogger is closed; make a new one")

    def _common(self, seq: int, artifact_name: str, object_name: str) -> dict[str, Any]:
        return {
            "id": artifact_id(self.run_name, self.ranks.rank, seq),
            "run_name": self.run_name,
            "rank": self.ranks.rank,
            "seq": seq,
            "artifact_name": artifact_name,
            "object_name": object_name,
            "order": order_key(self.ranks.rank, seq),
            "store": self.spec.to_json(),
        }

    def _is_pending(self, object_name: str) -> bool:
        artifact = self._latest_by_object.get(object_name)
        if artifact is None or artifact not in self._pending:
            return False
        state = self._retry(lambda: self._records.states([artifact]).get(artifact))
        return state is not None and not state.terminal

    def _upload(
        self,
        artifact_name: str,
        object_name: str,
        file_path: str | os.PathLike[str],
        overwrite: bool,
        mode: StagingMode,
    ) -> str:
        """Stage one file and enqueue its upload; return the artifact id."""
        if not overwrite and self._is_pending(object_name):
            raise FileExistsError(
                f"artifact {artifact_name!r} ({object_name}) is still being uploaded; pass "
                "overwrite=True to replace it with this version"
            )
        with self._budget.room_for(os.fspath(file_path), artifact_name, object_name):
            seq = self._seqs.next()
            staged = stage_file(
                os.fspath(file_path),
                staged_path(self.staging_root, self.run_name, self.ranks.rank, seq, artifact_name),
                mode=mode,
            )
            message = UploadRequest(
                **self._common(seq, artifact_name, object_name),
                staged_path=staged.path,
                size=staged.size,
                overwrite=overwrite,
                rank_limit=self.num_concurrent_uploads,
                fingerprint=staged.fingerprint.to_json() if staged.fingerprint else None,
                queue=self.upload_queue,
            )
            self._outbox.enqueue(UPLOAD_TASK, message, staged.path)
        self._latest_by_object[object_name] = message.id
        return message.id
