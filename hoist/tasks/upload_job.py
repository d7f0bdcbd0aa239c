"""The upload job: one staged file, opened safely, uploaded, verified, then deleted."""

from __future__ import annotations

import logging
from typing import Any

from hoist.errors import (
    SourceFileError,
)
from hoist.protocol.layout import Fingerprint
from hoist.protocol.messages import (
    UPLOAD_TASK,
    UploadRequest,
)
from hoist.protocol.staged_file import (
    NO_PROC_FD,
    OpenStagedFile,
    StagedFileMissing,
    open_staged_file,
    proc_fd_available,
    staged_components,
)
from hoist.state.keys import decode_marker, latest_key
from hoist.state.leases import Limit, name_lock, rank_limit, store_limit
from hoist.state.states import State
from hoist.tasks.job import Heartbeat, Job
from hoist.tasks.progress import (
    PROGRESS_EVENT,
    TransferProgress,
    callable_from_any_thread,
    describe_progress,
)

log = logging.getLogger("hoist.worker")


class UploadJob(Job):
    """Upload one staged file, verify it, then delete the staged copy.

    The staged file is opened once, without following any symlink, and
    uploaded and deleted through its descriptors (:mod:`hoist.protocol.staged_file`):
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

    def reads(self) -> str:
        return latest_key(self.spec.store_id, self.message.object_name)

    def already_finished(self) -> None:
        # A settle whose answer a Redis restart lost leaves the record done and the
        # staged copy in place (the copy goes only after the done is recorded): the
        # redelivery finds it finished, and the verified upload's copy goes now.
        status = self.ctx.records.get(self.message.id)
        if status is not None and status.state is State.DONE:
            self._remove_staged()

    def limits(self) -> list[Limit]:
        message = self.message
        return [
            name_lock(self.spec.store_id, message.object_name),
            rank_limit(message.run_name, message.rank, message.rank_limit),
            store_limit(self.spec.store_id, self.ctx.settings.store_limit),
        ]

    def work(self) -> dict[str, Any]:
        message = self.message
        # The newest version logged under the name, as the claim read it.
        latest = None if self.claimed_marker is None else decode_marker(self.claimed_marker)
        if latest is not None and latest.order_key > message.order:
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
            return self.lease_wait("a concurrency limit or an upload of the same name")
        # bytes_sent restarts with each attempt: what an earlier one sent is not in the store.
        attempt = self.begin_attempt(upload_started_at=self.ctx.clock(), bytes_sent=0)
        store = self.ctx.store(self.spec)
        if self.send_event is not None:
            # Progress may be counted on the store's part threads (S3 multipart).
            self.send_event = callable_from_any_thread(self.send_event)
        with Heartbeat(self) as heartbeat:
            progress = TransferProgress(
                staged.size,
                self._report_progress,
                interval=self.ctx.settings.progress_seconds,
            )
            # Whether an attempt began writing matters only to one that may not
            # overwrite (replace_own_leftover below): with overwrite=True the mark
            # would be a round trip per file for nothing.
            writing = message.overwrite

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
        self.store_answered(throttled=False)
        # Recorded done first, then the staged copy goes: a settle lost to a
        # Redis restart leaves the file for the redelivery, which finds the
        # object already present, instead of a record that fails on a missing file.
        outcome = self.settle(
            State.DONE,
            uri=result.uri,
            size=result.size,
            checksum=str(result.checksum),
            verified_by=result.verified_by.value,
            seconds=round(result.seconds, 3),
            already_present=int(result.already_present),
            upload_finished_at=self.ctx.clock(),
            error="",
        )
        staged.unlink()
        return outcome

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
        """One progress tick: the byte count into the record (for ``hoist status``
        and ``hoist wait``), and a ``task-progress`` event (for Flower)."""
        try:
            self.ctx.records.record_bytes_sent(self.message.id, done)
        except Exception as exc:  # a lost reading must never fail the upload
            log.debug("bytes sent of %s not recorded: %s", self.message.id, exc)
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
        """Delete the staged copy of a superseded upload, or of one an earlier delivery
        finished (done), through the same safe open as an upload.

        Only a name that holds the file opened is deleted, and a path that cannot
        be opened safely is left alone (logged): the outcome stands either way.
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
