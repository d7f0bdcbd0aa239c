"""The rank-side logger: name, filter, stage, record, enqueue; wait at the end.

A training rank blocks only for the staging copy (or rename) and one short
Redis write, the artifact's record; the message goes to the broker from a
background thread (:mod:`hoist.logger.publisher`) and the upload happens on
the worker fleet.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import redis

from hoist.errors import (
    ConfigurationError,
    EnqueueError,
    InvalidObjectNameError,
    UploadFailedError,
    WaitTimeoutError,
)
from hoist.keys import FLEET_KEY_ENV, FleetKeys, keys_from
from hoist.logger.levels import LogLevel
from hoist.logger.publisher import Outgoing, Publisher
from hoist.logger.ranks import RankInfo
from hoist.logger.staging import StagingMode, stage_file
from hoist.protocol.layout import staged_path, staging_root_from
from hoist.protocol.manifest import checkpoint_name, files_under, relative_inside, step_order
from hoist.protocol.messages import (
    COMMIT_TASK,
    NODE_QUEUE_ENV,
    POINTER_TASK,
    UPLOAD_TASK,
    CommitRequest,
    Message,
    PointerRequest,
    UploadRequest,
    artifact_id,
    commit_id,
    order_key,
)
from hoist.protocol.messages import node_queue as node_queue_name
from hoist.protocol.naming import ObjectNameTemplate, validate_artifact_name, validate_run_name
from hoist.protocol.pointers import POINTER_SUFFIX
from hoist.protocol.sending import sender
from hoist.protocol.urls import mask_url
from hoist.settings import DEFAULT_BROKER_URL
from hoist.state.records import Records, State
from hoist.stores.base import ObjectStore
from hoist.stores.spec import StoreSpec, kind_of

log = logging.getLogger("hoist.rank")

ShouldLog = Callable[[Any, LogLevel, str], bool]
DEFAULT_OBJECT_NAME = "{run_name}/artifacts/{artifact_name}"
DEFAULT_CHECKPOINT_OBJECT_NAME = "{run_name}/{artifact_name}"
"""Sharded checkpoints: one directory per step for all ranks, and the run's pointer."""
SEQ_BLOCK = 16
"""Sequence numbers a rank reserves in one round trip to Redis."""
ENQUEUE_TIMEOUT_ENV = "HOIST_ENQUEUE_TIMEOUT"
WAIT_WINDOW = 64
"""Pending artifacts ``wait()`` asks after in one poll, the oldest first."""


class ObjectStoreLogger:
    """Hands a rank's artifacts to the hoist worker fleet.

    The constructor takes either form of MosaicML Composer's logger: a Libcloud
    ``provider``, ``container`` and ``provider_kwargs``, or an
    ``object_store_cls`` (``S3ObjectStore``, ``SFTPObjectStore``,
    ``LibcloudObjectStore``) with ``object_store_kwargs``.

    Parameters:
        provider, container, provider_kwargs: the Libcloud form.
        object_store_cls, object_store_kwargs: the store-class form.
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
            (default ``HOIST_ENQUEUE_TIMEOUT``, else 30). The training step is
            blocked meanwhile, so keep it short where a stall costs more than a
            lost checkpoint upload; the error says how to send it later. The
            broker is sent to from a background thread (see
            :mod:`hoist.logger.publisher`), which tries it as long and then
            marks the artifacts failed, for ``wait()`` to report and ``hoist
            retry`` to send; ``close()`` and the interpreter's exit wait up
            to this long for that thread to hand its messages over.
        staging: the default :class:`~hoist.logger.staging.StagingMode`.
        node_queue: for a node-local staging folder (default
            ``HOIST_NODE_QUEUE``): the name of this node's upload queue, which
            only the worker on this node consumes (``hoist worker --node-queue
            NAME``). Empty: uploads go to the shared queue, and any worker of
            the fleet must be able to read the staging folder. Pointers always
            go to the shared pointer queue (they need no staged file).

    Example:
        >>> with ObjectStoreLogger(object_store_cls=S3ObjectStore,
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
    ) -> None:
        if isinstance(provider, type):  # ObjectStoreLogger(S3ObjectStore, {...}) positionally
            object_store_cls, provider = provider, None
            if isinstance(container, dict):
                object_store_kwargs, container = container, None
        if num_concurrent_uploads < 1:
            raise ConfigurationError("num_concurrent_uploads must be at least 1")
        self.ranks = RankInfo.from_environment(
            rank=rank,
            local_rank=local_rank,
            world_size=world_size,
            local_world_size=local_world_size,
            node_rank=node_rank,
        )
        self.template = ObjectNameTemplate(object_name)
        self.checkpoint_template = ObjectNameTemplate(checkpoint_object_name)
        self.run_name = validate_run_name(_run_name(run_name, self.ranks))
        self.staging_root = staging_root_from(upload_staging_folder)
        self._keys = _fleet_keys(fleet_key)
        self.spec = _store_spec(
            provider, container, provider_kwargs, object_store_cls, object_store_kwargs, self._keys
        )
        # Built here so bad arguments fail in the caller; used for URIs only.
        self._store = self.spec.build(self._keys)
        self.should_log_artifact = should_log_artifact
        self.num_concurrent_uploads = num_concurrent_uploads
        self.use_procs = use_procs
        self.wait_on_close = wait_on_close
        self.staging = _staging_mode(staging)
        self.enqueue_timeout = _enqueue_timeout(enqueue_timeout)
        node = os.environ.get(NODE_QUEUE_ENV, "") if node_queue is None else node_queue
        self.upload_queue = node_queue_name(node) if node else ""
        broker = broker_url or os.environ.get("HOIST_BROKER_URL") or DEFAULT_BROKER_URL
        state = state_url or os.environ.get("HOIST_STATE_URL") or broker
        # For error messages: where the rank tried to reach, never with its password.
        self._broker_shown = mask_url(broker)
        self._state_shown = mask_url(state)
        self._app = sender(broker)
        self._records = Records.from_url(state)
        self._publisher = Publisher(self._app, self._unsent, self.enqueue_timeout)
        self._pending: dict[str, Message] = {}
        self._latest_by_object: dict[str, str] = {}
        self._closed = False
        self._seqs: deque[int] = deque()  # reserved sequence numbers not used yet
        self._pid = os.getpid()  # whose reserved numbers those are
        self._failures: list[tuple[str, str, str]] = []  # found by wait(), not yet raised
        self._state_unreachable = False  # warned once per outage

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
        mode = StagingMode.MOVE if move else _staging_mode(staging or self.staging)
        return self._upload(
            artifact_name, self._object_name(artifact_name), file_path, overwrite, mode
        )

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

        Example:
            >>> dcp.save(state, checkpoint_id=f"/ckpt/step-{step}")
            >>> logger.log_checkpoint_dir(step, f"/ckpt/step-{step}",
            ...                           files=glob.glob(f"/ckpt/step-{step}/__{rank}_*"))
        """
        self._check_open()
        name = name or checkpoint_name(step)
        validate_artifact_name(name)
        root = os.fspath(path)
        chosen = [os.fspath(f) for f in files] if files is not None else files_under(root)
        mode = _staging_mode(staging or self.staging)
        prefix = self._checkpoint_object(name)
        ids = []
        for file in chosen:
            artifact = f"{name}/{relative_inside(root, file)}"
            object_name = self._checkpoint_object(artifact)
            if not object_name.startswith(prefix + "/"):
                raise ConfigurationError(
                    f"checkpoint_object_name {self.checkpoint_template.template!r} must end with "
                    "{artifact_name}, so that a step's files share one directory"
                )
            artifact_id = self._upload(artifact, object_name, file, True, mode)
            assert artifact_id is not None
            ids.append(artifact_id)
        world = self.ranks.world_size if ranks is None else ranks
        registered = self._redis(
            lambda: self._records.register_shards(self.run_name, name, self.ranks.rank, world, ids)
        )
        if registered == world:
            self._send_commit(step, name, prefix, pointer, world)
        return ids

    def _upload(
        self,
        artifact_name: str,
        object_name: str,
        file_path: str | os.PathLike[str],
        overwrite: bool,
        mode: StagingMode,
    ) -> str:
        if not overwrite and self._is_pending(object_name):
            raise FileExistsError(
                f"artifact {artifact_name!r} ({object_name}) is still being uploaded; pass "
                "overwrite=True to replace it with this version"
            )
        seq = self._next_seq()
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
        self._enqueue(UPLOAD_TASK, message, staged.path)
        self._latest_by_object[object_name] = message.id
        return message.id

    def _send_commit(self, step: int, name: str, prefix: str, pointer: str, world: int) -> None:
        validate_artifact_name(pointer)
        message = CommitRequest(
            id=commit_id(self.run_name, name),
            run_name=self.run_name,
            rank=self.ranks.rank,
            seq=0,
            artifact_name=name,
            object_name=self._checkpoint_object(pointer) + POINTER_SUFFIX,
            order=step_order(step),
            store=self.spec.to_json(),
            step=step,
            world_size=world,
            prefix=prefix,
        ).signed(self._keys)
        if self._redis(lambda: self._records.create_once(message, COMMIT_TASK)):
            self._publish(COMMIT_TASK, message)

    def _checkpoint_object(self, artifact_name: str) -> str:
        return self._object_name(artifact_name, self.checkpoint_template)

    def _format(self, template: ObjectNameTemplate, artifact_name: str) -> str:
        ranks = self.ranks
        return template.format(
            artifact_name=artifact_name,
            run_name=self.run_name,
            rank=ranks.rank,
            local_rank=ranks.local_rank,
            world_size=ranks.world_size,
            local_world_size=ranks.local_world_size,
            node_rank=ranks.node_rank,
        )

    def symlink_artifact(
        self,
        existing_artifact_name: str,
        symlink_artifact_name: str,
        *,
        log_level: LogLevel = LogLevel.FIT,
        state: Any = None,
    ) -> str | None:
        """Point ``<symlink object>.symlink`` at an artifact this rank logged.

        Written only after the target is uploaded and verified; a later call
        for the same symlink always wins over an earlier one.
        """
        self._check_open()
        validate_artifact_name(symlink_artifact_name)
        if self.should_log_artifact is not None and not self.should_log_artifact(
            state, log_level, symlink_artifact_name
        ):
            return None
        target_object = self._object_name(existing_artifact_name)
        target_id = self._latest_by_object.get(target_object)
        if target_id is None:
            raise ConfigurationError(
                f"cannot symlink to {existing_artifact_name!r}: this rank has not logged it; "
                "call file_artifact first"
            )
        object_name = self._object_name(symlink_artifact_name) + POINTER_SUFFIX
        seq = self._next_seq()
        message = PointerRequest(
            **self._common(seq, symlink_artifact_name, object_name),
            target_id=target_id,
            target_object_name=target_object,
        )
        self._enqueue(POINTER_TASK, message, None)
        return message.id

    def has_logged(self, artifact_name: str) -> bool:
        """Whether this logger logged ``artifact_name`` (so it can be a symlink's target)."""
        return self._object_name(artifact_name) in self._latest_by_object

    @property
    def store(self) -> ObjectStore:
        """The store the artifacts go to, for reading them back (as built on this rank)."""
        return self._store

    def get_uri_for_artifact(self, artifact_name: str) -> str:
        """The URI the artifact has (or will have) in the store.

        Example:
            >>> logger.get_uri_for_artifact("ep1.pt")
            's3://ckpts/run-1/rank0/ep1.pt'
        """
        return self._store.get_uri(self._object_name(artifact_name))

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
        self._publisher.flush(timeout)
        failures = self._failures  # kept across a timeout, reported once
        while self._pending:
            # The oldest first, a window at a time: uploads finish roughly in the
            # order they were logged, and asking after thousands of pending
            # artifacts every poll cost a rank more CPU than logging them.
            window = list(itertools.islice(self._pending, WAIT_WINDOW))
            if self._collect(window, failures) == WAIT_WINDOW:
                continue  # the whole window finished: look at the next one now
            if deadline is not None and time.monotonic() >= deadline:
                self._collect(list(self._pending), failures)  # the count below is exact
                raise WaitTimeoutError(
                    f"{len(self._pending)} upload(s) of run {self.run_name!r} rank "
                    f"{self.ranks.rank} still pending after {timeout} s"
                    + (f" and {len(failures)} failed" if failures else "")
                    + f"; `hoist status --run {self.run_name}` shows them"
                )
            time.sleep(poll_interval)
        if failures:
            self._failures = []
            lines = "\n".join(f"  {name} ({obj}): {error}" for name, obj, error in failures)
            raise UploadFailedError(
                f"{len(failures)} upload(s) of run {self.run_name!r} rank {self.ranks.rank} "
                f"failed:\n{lines}",
                failures,
            )

    def _collect(self, artifacts: list[str], failures: list[tuple[str, str, str]]) -> int:
        """Drop finished ``artifacts`` from the pending ones, noting failures; return how many."""
        try:
            states = self._records.states(artifacts) if artifacts else {}
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The uploads go on without Redis' answers; wait() keeps asking until its deadline.
            if not self._state_unreachable:
                log.warning(
                    "wait: Redis at %s unreachable (%s); still waiting", self._state_shown, exc
                )
            self._state_unreachable = True
            return 0
        self._state_unreachable = False
        finished = 0
        for artifact, state in states.items():
            if state.terminal:
                finished += 1
                message = self._pending.pop(artifact)
                if state is State.FAILED:
                    failures.append(self._failure(message))
        return finished

    def close(self) -> None:
        """Wait for this rank's uploads (unless ``wait_on_close=False``) and let go."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.wait_on_close:
                self.wait()
        finally:
            # Fire-and-forget too hands everything to the broker before it returns.
            self._publisher.close(self.enqueue_timeout)
            self._store.close()

    def __enter__(self) -> ObjectStoreLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Composer's names, for code written against its logger destinations.
    def log_file_artifact(
        self,
        state: Any,
        log_level: LogLevel,
        artifact_name: str,
        file_path: str,
        *,
        overwrite: bool = False,
    ) -> None:
        self.file_artifact(log_level, artifact_name, file_path, overwrite=overwrite, state=state)

    def log_symlink_artifact(
        self,
        state: Any,
        log_level: LogLevel,
        existing_artifact_name: str,
        symlink_artifact_name: str,
        *,
        overwrite: bool = False,
    ) -> None:
        self.symlink_artifact(
            existing_artifact_name, symlink_artifact_name, log_level=log_level, state=state
        )

    def can_upload_files(self) -> bool:
        return True

    # ----- internals --------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigurationError("this ObjectStoreLogger is closed; make a new one")

    def _object_name(self, artifact_name: str, template: ObjectNameTemplate | None = None) -> str:
        name = self._format(template or self.template, artifact_name)
        try:
            # The store's own limits (a file name's 255 bytes on SFTP and local
            # stores), so that such a name fails here, not on a worker.
            return self._store.validate_name(name)
        except InvalidObjectNameError as exc:
            raise InvalidObjectNameError(
                f"artifact name {artifact_name!r} cannot be stored: {exc}; shorten it or "
                "change the object_name template"
            ) from None

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
        state = self._redis(lambda: self._records.states([artifact]).get(artifact))
        return state is not None and not state.terminal

    def _next_seq(self) -> int:
        if self._pid != os.getpid():
            # A forked child (a data-loader worker, say) must not reuse the numbers
            # its parent reserved, nor wait for the parent's uploads.
            self._pid = os.getpid()
            self._seqs.clear()
            self._pending.clear()
        if not self._seqs:
            reserve = self._records.reserve_seqs
            self._seqs.extend(
                self._redis(lambda: reserve(self.run_name, self.ranks.rank, SEQ_BLOCK))
            )
        return self._seqs.popleft()

    def _enqueue(self, task: str, message: Message, staged: str | None) -> None:
        message = message.signed(self._keys)
        kept = f"; the staged file is kept at {staged}" if staged else ""
        self._redis(lambda: self._records.create(message, task, self.spec.store_id), kept)
        self._publish(task, message, kept)

    def _publish(self, task: str, message: Message, kept: str = "") -> None:
        # Recorded: from here on the artifact is pending whatever the broker does.
        self._pending[message.id] = message
        self._publisher.put(Outgoing(task, message, kept))

    def _unsent(self, items: list[Outgoing], exc: Exception) -> None:
        """The publisher gave up on ``items``: mark their records failed, say how to resend."""
        retry = f"hoist retry --run {self.run_name}"
        for item in items:
            reason = (
                f"never sent: the broker at {self._broker_shown} was unreachable for "
                f"{self.enqueue_timeout:g} s ({exc}); start it or fix HOIST_BROKER_URL, then "
                f"run `{retry}`{item.kept}"
            )
            try:
                marked = self._records.fail_queued(item.message.id, reason)
            except redis.RedisError:
                marked = False
            if not marked:
                # The record stays queued: wait() goes on waiting for it, and the
                # workers' watchdog or `hoist retry --queued` sends it later.
                log.error(
                    "%s (%s) was not sent and its record could not be marked; run `%s "
                    "--queued` once the broker is back%s",
                    item.message.artifact_name,
                    item.message.id,
                    retry,
                    item.kept,
                )

    def _redis(self, call: Callable[[], Any], kept: str = "") -> Any:
        deadline = time.monotonic() + self.enqueue_timeout
        delay = 0.2
        while True:
            try:
                return call()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() + delay > deadline:
                    raise EnqueueError(
                        f"the hoist state store (Redis) at {self._state_shown} is unreachable "
                        f"after {self.enqueue_timeout:g} s: start it or fix HOIST_STATE_URL / "
                        f"HOIST_BROKER_URL, then log the artifact again; {exc}{kept}"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _failure(self, message: Message) -> tuple[str, str, str]:
        status = self._records.get(message.id)
        error = status.error if status is not None else "its record is gone"
        return message.artifact_name, message.object_name, error


def _staging_mode(value: StagingMode | str) -> StagingMode:
    try:
        return StagingMode(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in StagingMode)
        raise ConfigurationError(
            f"staging={value!r} is not a staging mode; use {choices}"
        ) from None


def _enqueue_timeout(explicit: float | None) -> float:
    if explicit is not None:
        value = float(explicit)
    else:
        raw = os.environ.get(ENQUEUE_TIMEOUT_ENV) or "30"
        try:
            value = float(raw)
        except ValueError:
            raise ConfigurationError(
                f"{ENQUEUE_TIMEOUT_ENV}={raw!r} is not a number of seconds"
            ) from None
    if not value > 0:
        raise ConfigurationError(f"enqueue_timeout must be more than 0 seconds, not {value}")
    return value


def _run_name(explicit: str | None, ranks: RankInfo) -> str:
    candidates = [
        explicit,
        os.environ.get("HOIST_RUN_NAME"),
        os.environ.get("TORCHELASTIC_RUN_ID")
        if os.environ.get("TORCHELASTIC_RUN_ID") != "none"
        else None,
        f"slurm-{os.environ['SLURM_JOB_ID']}" if os.environ.get("SLURM_JOB_ID") else None,
    ]
    for name in candidates:
        if name:
            return name
    if ranks.world_size > 1:
        raise ConfigurationError(
            "every rank must log under the same run name: pass run_name= or set HOIST_RUN_NAME"
        )
    generated = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    log.warning("no run name given; logging as %r (set HOIST_RUN_NAME to choose)", generated)
    return generated


def _fleet_keys(fleet_key: str | None) -> FleetKeys:
    keys = keys_from(fleet_key) if fleet_key else FleetKeys.from_environment()
    if keys is None:
        raise ConfigurationError(
            f"the logger has no fleet key, and hoist workers act only on messages signed with "
            f"it: set {FLEET_KEY_ENV} to the fleet's key (`hoist up` writes it to "
            "./.hoist/env; `hoist keygen` makes one for a fleet of your own), or pass fleet_key="
        )
    return keys


def _store_spec(
    provider: str | None,
    container: Any,
    provider_kwargs: dict[str, Any] | None,
    object_store_cls: type[ObjectStore] | None,
    object_store_kwargs: dict[str, Any] | None,
    fleet_key: FleetKeys,
) -> StoreSpec:
    if object_store_cls is not None:
        if provider is not None:
            raise ConfigurationError("give either provider/container or object_store_cls, not both")
        return StoreSpec.describe(
            kind_of(object_store_cls), dict(object_store_kwargs or {}), fleet_key
        )
    if provider is None or container is None:
        raise ConfigurationError(
            "say where to upload: ObjectStoreLogger(provider='s3', container='bucket', "
            "provider_kwargs={...}) or ObjectStoreLogger(object_store_cls=S3ObjectStore, "
            "object_store_kwargs={'bucket': ...})"
        )
    kwargs = {
        "provider": provider,
        "container": container,
        "provider_kwargs": provider_kwargs or {},
    }
    return StoreSpec.describe("libcloud", kwargs, fleet_key)
