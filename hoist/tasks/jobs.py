"""What a worker does with one message: the upload job and the pointer job.

Both follow the same steps (:class:`Job`): claim the artifact's record (a
duplicate delivery stops here), do the work under leases kept alive by a
heartbeat, and settle the record with an outcome: done, failed, superseded,
or deferred to be sent again later (held back by a limit, or a transient
error with backoff). Deferring never holds a worker slot and never leaves a
message unacknowledged in a worker's memory.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

from hoist.checkpoints import Manifest, ManifestFile
from hoist.errors import (
    HoistError,
    InvalidMessageError,
    SourceFileError,
    StoreError,
    StoreNotAllowedError,
)
from hoist.logger.staging import Fingerprint
from hoist.stores.spec import StoreSpec
from hoist.tasks.leases import Leases, Limit, name_lock, rank_limit, store_limit
from hoist.tasks.messages import (
    COMMIT_TASK,
    SYMLINK_TASK,
    UPLOAD_TASK,
    CommitRequest,
    Message,
    SymlinkRequest,
    UploadRequest,
    check_message_size,
    check_order,
)
from hoist.tasks.progress import PROGRESS_EVENT, TransferProgress, describe_progress
from hoist.tasks.records import ArtifactStatus, Claim, State, latest_key, pointer_key
from hoist.tasks.signing import verify
from hoist.tasks.staged_file import (
    NO_PROC_FD,
    OpenStagedFile,
    StagedFileMissing,
    open_staged_file,
    proc_fd_available,
    staged_components,
)
from hoist.tasks.worker_context import WorkerContext

log = logging.getLogger("hoist.worker")


class LeaseLost(HoistError):
    """A heartbeat could not renew this task's claim or leases; the work stops."""


class Heartbeat:
    """Renews a job's claim and leases every third of a lease time, in a thread.

    Parameters:
        job: the job whose claim and leases to renew.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="hoist-heartbeat")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def check(self, _bytes: int = 0) -> None:
        """A progress callback: stop the transfer once the claim is lost."""
        if self.lost.is_set():
            raise LeaseLost(f"{self.job.message.id}: lost its claim; another worker may take over")

    def _run(self) -> None:
        settings = self.job.ctx.settings
        interval = settings.lease_seconds / 3
        missed = 0
        while not self._stop.wait(interval):
            try:
                alive = self.job.ctx.records.renew(self.job.message.id, self.job.token)
                alive = self.job.leases.renew_all() and alive
                missed = 0
            except Exception as exc:  # Redis away: the lease survives until it expires
                missed += 1
                log.warning("heartbeat of %s failed: %s", self.job.message.id, exc)
                alive = missed * interval < settings.lease_seconds
            if not alive:
                self.lost.set()
                return


class Job:
    """One delivery of one message.

    Parameters:
        ctx: the worker process's context.
        message: the message as it came from the broker.
        task_id: the Celery task id (the artifact id).
        send_event: sends a Celery event about this task (``Task.send_event``),
            if the job runs inside one; Flower shows what it is told.
    """

    task: ClassVar[str]
    message_type: ClassVar[type[Message]]

    def __init__(
        self,
        ctx: WorkerContext,
        message: dict[str, Any],
        task_id: str,
        send_event: Callable[..., Any] | None = None,
    ) -> None:
        self.ctx = ctx
        self.send_event = send_event
        # Messages come off a shared broker: anything malformed, unsigned, forged
        # or aimed at a store this fleet does not allow raises InvalidMessageError
        # here, before a record is touched; the task refuses it.
        settings = ctx.settings
        check_message_size(message)
        verify(message, settings.keys, insecure=settings.insecure_unsigned)
        self.message = self.message_type.from_json(message)
        check_order(self.message.order)
        self.spec = StoreSpec.from_json(self.message.store)
        refusal = settings.allowed.refusal(self.spec.kind, self.spec.kwargs, *self.objects())
        if refusal is not None:
            raise StoreNotAllowedError(refusal)
        # A fresh token per delivery: a redelivered message is another claimant.
        self.token = f"{task_id}:{uuid.uuid4().hex[:12]}"
        self.leases = Leases(ctx.records.client, self.token, ctx.settings.lease_ms)
        self.attempt: int | None = None
        self.earlier_write = False

    def run(self) -> dict[str, Any]:
        refusal = self.refuse()
        claim = self.ctx.records.claim(
            self.message, self.task, self.token, self.ctx.settings.max_deliveries
        )
        if claim is Claim.MISMATCH:
            log.error(
                "refused a %s message for %s: its record holds another message under that id "
                "(replayed or forged); nothing was changed",
                self.task,
                self.message.id,
            )
        if claim is not Claim.CLAIMED:
            return {"id": self.message.id, "outcome": claim.value}
        if refusal is not None:
            return self.settle(State.FAILED, error=refusal)
        try:
            return self.work()
        except LeaseLost as exc:
            return self.settle(
                State.RETRYING, retry_in=self.ctx.settings.wait_seconds, error=str(exc)
            )
        except Exception as exc:
            return self.settle_error(exc)
        finally:
            self.leases.release_all()

    def refuse(self) -> str | None:
        """A reason to fail the message without doing anything, or None."""
        return None

    def objects(self) -> list[str]:
        """Every object name this job may write or name in its store (checked against
        the fleet's allowed stores)."""
        return [self.message.object_name]

    def work(self) -> dict[str, Any]:
        raise NotImplementedError

    def _same_store(self, recorded: dict[str, Any]) -> bool:
        """Whether a recorded message names this job's store (kind and public arguments;
        each logger seals its credentials apart, so the sealed text may differ)."""
        try:
            return StoreSpec.from_json(recorded.get("store", {})).store_id == self.spec.store_id
        except InvalidMessageError:
            return False

    def begin_attempt(self, **fields: str | float) -> int:
        """Count one try at the store in the record (being held back is not one).

        Every try is counted, not only failed ones, so a record says how often
        the store was tried: 1 for a first-time success or a permanent error.
        Sets :attr:`earlier_write`: whether an earlier attempt began writing.
        """
        self.attempt, self.earlier_write = self.ctx.records.count_attempt(self.message.id, **fields)
        return self.attempt

    def write_pointer(
        self, target: str, before: Callable[[], None] | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Point ``message.object_name`` at ``target``, never back to an older order key.

        Runs under the pointer's name lock and a heartbeat: a PUT the store
        holds past a lease time must keep its lock, or a newer pointer is
        written meanwhile and this older one lands over it (measured: a PUT
        stalled 12 s with 3 s leases moved the pointer back;
        tests/test_faults_fleet.py).

        Parameters:
            target: what the pointer holds (an object name).
            before: written first, under the same lock (a checkpoint's manifest).
            fields: recorded with the outcome.
        """
        message = self.message
        key = pointer_key(self.spec.store_id, message.object_name)
        if not self.leases.acquire_all([name_lock(self.spec.store_id, message.object_name)]):
            return self.hold_back("another write of the same pointer")
        with Heartbeat(self):
            if before is not None:
                before()
            current = self.ctx.records.marker(key)
            if current is not None and current > message.order:
                return self.settle(State.SUPERSEDED, **fields)
            if self.attempt is None:
                self.begin_attempt()
            result = self.ctx.store(self.spec).put_bytes(message.object_name, target.encode())
            self.ctx.records.raise_marker(key, message.order)
        return self.settle(
            State.DONE, uri=result.uri, size=result.size, checksum=str(result.checksum), **fields
        )

    # ----- outcomes ---------------------------------------------------------

    def settle(self, state: State, retry_in: float | None = None, **fields: Any) -> dict[str, Any]:
        # The leases go in the same round trip; the job ends here.
        held = self.leases.forget_all()
        self.ctx.records.settle(
            self.message.id, self.token, state, retry_in=retry_in, release=held, **fields
        )
        if state is State.FAILED:
            log.error("%s (%s) failed: %s", self.message.id, self.message.object_name, fields)
        return {"id": self.message.id, "outcome": state.value, **fields}

    def hold_back(self, reason: str) -> dict[str, Any]:
        """Try again shortly: a limit is full or a dependency is not ready. Not an attempt."""
        jitter = random.uniform(1.0, 1.5)
        return self.settle(
            State.WAITING, retry_in=self.ctx.settings.wait_seconds * jitter, waiting_for=reason
        )

    def settle_error(self, exc: Exception) -> dict[str, Any]:
        """Retry transient errors with backoff up to ``max_retries``; fail the rest at once."""
        error = f"{type(exc).__name__}: {exc}"
        retryable = (
            exc.retryable if isinstance(exc, StoreError) else not isinstance(exc, HoistError)
        )
        # An error before the store was tried (building it, say) still counts as a try.
        attempt = self.attempt if self.attempt is not None else self.begin_attempt()
        if not retryable:
            return self.settle(State.FAILED, error=error)
        settings = self.ctx.settings
        if attempt > settings.max_retries:
            return self.settle(State.FAILED, error=f"gave up after {attempt} attempts: {error}")
        ceiling = min(settings.backoff_max, settings.backoff_base * 2 ** (attempt - 1))
        delay = ceiling * random.uniform(0.5, 1.0)
        # The delay logged is the one used, jitter included, so the log shows the backoff.
        log.warning(
            "%s: attempt %d failed (%s); again in %.2f s", self.message.id, attempt, error, delay
        )
        return self.settle(State.RETRYING, retry_in=delay, error=error)


class UploadJob(Job):
    """Upload one staged file, verify it, then delete the staged copy.

    The staged file is opened once, without following any symlink, and
    uploaded and deleted through its descriptors (:mod:`hoist.tasks.staged_file`):
    whoever can write in the staging root cannot swap what gets read or deleted.
    """

    task = UPLOAD_TASK
    message_type = UploadRequest
    message: UploadRequest
    staging_root: str

    def refuse(self) -> str | None:
        root = self.ctx.settings.staging_root
        if root is None:
            return (
                "the worker has no staging root; start it with --staging-dir or HOIST_STAGING_DIR"
            )
        if not proc_fd_available():
            return NO_PROC_FD
        self.staging_root = root
        try:
            # Only the text here, before the claim; the file is opened in work().
            staged_components(root, self.message.staged_path)
        except SourceFileError as exc:
            return str(exc)
        return None

    def limits(self) -> list[Limit]:
        message = self.message
        return [
            name_lock(self.spec.store_id, message.object_name),
            rank_limit(message.run_name, message.rank, message.rank_limit),
            store_limit(self.spec.store_id, self.ctx.settings.store_limit),
        ]

    def work(self) -> dict[str, Any]:
        message = self.message
        latest = self.ctx.records.marker(latest_key(self.spec.store_id, message.object_name))
        if latest is not None and latest.partition("|")[0] > message.order:
            self._remove_staged()
            return self.settle(State.SUPERSEDED)
        try:
            staged = open_staged_file(self.staging_root, message.staged_path)
        except SourceFileError as exc:  # gone, or a hostile path: a refusal, never retried
            return self.settle(State.FAILED, error=str(exc))
        with staged:  # both descriptors close however the upload ends
            return self._upload(staged)

    def _upload(self, staged: OpenStagedFile) -> dict[str, Any]:
        message = self.message
        if (rewritten := self._rewritten(staged)) is not None:
            return self.settle(State.FAILED, error=rewritten)
        if not self.leases.acquire_all(self.limits(), patience=self.ctx.settings.wait_seconds):
            return self.hold_back("a concurrency limit or an upload of the same name")
        attempt = self.begin_attempt(upload_started_at=_now())
        store = self.ctx.store(self.spec)
        with Heartbeat(self) as heartbeat:
            progress = TransferProgress(
                staged.size,
                self._report_progress,
                interval=self.ctx.settings.progress_seconds,
            )
            writing = False

            def on_bytes(nbytes: int) -> None:
                nonlocal writing
                heartbeat.check()
                if not writing:  # bytes flow only after the name was found free (or ours)
                    writing = True
                    self.ctx.records.mark_write_started(message.id, attempt)
                progress(nbytes)

            result = store.upload_file(
                message.object_name,
                # The opened file itself, whatever its name leads to by now.
                staged.proc_path,
                overwrite=message.overwrite,
                progress=on_bytes,
                # S3 has no write-then-rename: an attempt that wrote and then failed
                # (a bad copy it could not delete, a lost answer) leaves its object
                # under the name. With overwrite=False the next attempt would take
                # that for someone else's object and fail for good, so it may replace it.
                replace_own_leftover=self.earlier_write,
            )
        if (rewritten := self._rewritten(staged)) is not None:
            # The bytes sent may mix two versions: take the object back.
            if not result.already_present:
                store.delete(message.object_name)
            return self.settle(State.FAILED, error=rewritten)
        staged.unlink()
        return self.settle(
            State.DONE,
            uri=result.uri,
            size=result.size,
            checksum=str(result.checksum),
            verified_by=result.verified_by.value,
            seconds=round(result.seconds, 3),
            already_present=int(result.already_present),
            upload_finished_at=_now(),
            error="",
        )

    def _rewritten(self, staged: OpenStagedFile) -> str | None:
        """Why a hard-linked staged file no longer holds what was logged, or None."""
        if self.message.fingerprint is None:
            return None
        change = Fingerprint.from_json(self.message.fingerprint).change(staged.fingerprint())
        if change is None:
            return None
        return (
            f"the file was rewritten after it was logged with staging='link' ({change}); "
            "with 'link' it must not change until uploaded: log it again, or use the "
            "default staging='copy' for files rewritten in place"
        )

    def _report_progress(self, done: int, total: int) -> None:
        if self.send_event is None:
            return
        try:
            # Flower keeps only Celery's own task fields, so the reading goes in
            # `result`, as Celery's PROGRESS idiom (update_state meta) does.
            self.send_event(
                PROGRESS_EVENT,
                bytes_done=done,
                bytes_total=total,
                result=f"uploading: {describe_progress(done, total)}",
            )
        except Exception as exc:  # a lost event must never fail the upload
            log.debug("progress event of %s not sent: %s", self.message.id, exc)

    def _remove_staged(self) -> None:
        """Delete a superseded upload's staged copy, through the same safe open as an upload.

        Only a name that holds the file opened is deleted, and a path that cannot
        be opened safely is left alone (logged): being superseded is the outcome
        either way.
        """
        try:
            staged = open_staged_file(self.staging_root, self.message.staged_path)
        except StagedFileMissing:
            return
        except (SourceFileError, OSError) as exc:
            log.warning("%s: its staged copy is not deleted: %s", self.message.id, exc)
            return
        with staged:
            staged.unlink()


class SymlinkJob(Job):
    """Write a ``.symlink`` pointer once its target is verified, never moving it backwards."""

    task = SYMLINK_TASK
    message_type = SymlinkRequest
    message: SymlinkRequest

    def objects(self) -> list[str]:
        return [self.message.object_name, self.message.target_object_name]

    def work(self) -> dict[str, Any]:
        message = self.message
        target = self.ctx.records.get(message.target_id)
        if target is None:
            return self.settle(State.FAILED, error=f"no record of the target {message.target_id}")
        if target.state is State.SUPERSEDED:
            # A newer version of the target's name was logged; the pointer names
            # the object, so it waits for that version instead.
            target = self._newest_version(message.target_object_name) or target
        if (foreign := self._foreign(target)) is not None:
            return self.settle(State.FAILED, error=foreign)
        if target.state is State.FAILED:
            return self.settle(
                State.FAILED,
                error=f"its target {target.artifact_name!r} failed to upload: {target.error}",
            )
        if target.state is not State.DONE:
            return self.hold_back(f"its target {target.artifact_name!r}")
        return self.write_pointer(message.target_object_name)

    def _foreign(self, target: ArtifactStatus) -> str | None:
        """Why ``target`` is not the object this pointer names, or None.

        A pointer may only name its own target: the target record's object, in
        the same store, of the same run.
        """
        held = target.message
        if (
            held.get("object_name") != self.message.target_object_name
            or held.get("run_name") != self.message.run_name
            or not self._same_store(held)
        ):
            return (
                f"its target {self.message.target_id} is not the object "
                f"{self.message.target_object_name!r} of this run in this store; "
                "a pointer names only its own target"
            )
        return None

    def _newest_version(self, object_name: str) -> ArtifactStatus | None:
        latest = self.ctx.records.marker(latest_key(self.spec.store_id, object_name))
        return None if latest is None else self.ctx.records.get(latest.partition("|")[2])


class CommitJob(Job):
    """Commit a sharded checkpoint: manifest, then pointer, once every file is verified.

    See :mod:`hoist.checkpoints`. Files still uploading hold the commit back
    (deferred, not sleeping in a worker slot); a failed file fails it; a
    pointer already at this step or a later one is left alone.
    """

    task = COMMIT_TASK
    message_type = CommitRequest
    message: CommitRequest

    def objects(self) -> list[str]:
        return [self.message.object_name, self.message.prefix + "/"]

    def work(self) -> dict[str, Any]:
        message = self.message
        records = self.ctx.records
        shards = records.shards(message.run_name, message.artifact_name)
        if len(shards) < message.world_size:
            return self.hold_back(f"{message.world_size - len(shards)} rank(s) to register")
        files = {artifact: records.get(artifact) for ids in shards.values() for artifact in ids}
        broken = [
            f"{status.artifact_name if status else artifact}: "
            + (status.error or status.state.value if status else "its record is gone")
            for artifact, status in files.items()
            if status is None or status.state in (State.FAILED, State.SUPERSEDED)
        ]
        if broken:
            return self.settle(
                State.FAILED,
                error=f"step {message.step} is not committed: {len(broken)} file(s) did not "
                f"land ({'; '.join(broken[:5])}); the pointer stays where it was",
            )
        waiting = [a for a, status in files.items() if status and status.state is not State.DONE]
        if waiting:
            return self.hold_back(f"{len(waiting)} file(s) of step {message.step}")
        outside = [
            status.artifact_name
            for status in files.values()
            if status is not None
            and (
                not str(status.message.get("object_name", "")).startswith(message.prefix + "/")
                or not self._same_store(status.message)
            )
        ]
        if outside:
            return self.settle(
                State.FAILED,
                error=f"step {message.step} is not committed: {len(outside)} registered file(s) "
                f"lie outside {message.prefix!r} in this store ({', '.join(outside[:5])})",
            )
        manifest = self._manifest([s for s in files.values() if s is not None])
        store = self.ctx.store(self.spec)

        def write_manifest() -> None:
            # The step is complete: its manifest is written even when a newer
            # step already holds the pointer, so any complete step can be read.
            self.begin_attempt()
            store.put_bytes(manifest.object_name, manifest.to_bytes())

        return self.write_pointer(
            manifest.object_name,
            before=write_manifest,
            manifest=manifest.object_name,
            files=len(manifest.files),
        )

    def _manifest(self, files: list[ArtifactStatus]) -> Manifest:
        message = self.message
        entries = []
        for status in files:
            object_name = status.message["object_name"]
            entries.append(
                ManifestFile(
                    path=object_name.removeprefix(message.prefix + "/"),
                    object_name=object_name,
                    size=int(status.fields["size"]),
                    checksum=status.fields["checksum"],
                    rank=int(status.fields["rank"]),
                )
            )
        return Manifest(
            run=message.run_name,
            step=message.step,
            name=message.artifact_name,
            prefix=message.prefix,
            world_size=message.world_size,
            files=tuple(sorted(entries, key=lambda entry: entry.path)),
        )


JOBS: dict[str, type[Job]] = {job.task: job for job in (UploadJob, SymlinkJob, CommitJob)}
"""The job class of each task name."""


def _now() -> float:
    return time.time()
