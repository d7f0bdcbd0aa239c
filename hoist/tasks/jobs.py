"""What a worker does with each task: the upload, pointer, commit and probe jobs, by task name.

The steps they share are in :mod:`hoist.tasks.job`; the upload job is in
:mod:`hoist.tasks.upload_job`, the store check in :mod:`hoist.tasks.probe_job`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from hoist.protocol.manifest import Manifest, ManifestFile
from hoist.protocol.messages import (
    COMMIT_TASK,
    POINTER_TASK,
    CommitRequest,
    PointerRequest,
)
from hoist.state.records import ArtifactStatus
from hoist.state.retention import FILE, STEP, Retention, RetentionError
from hoist.state.states import State
from hoist.tasks.job import Job
from hoist.tasks.probe_job import ProbeJob
from hoist.tasks.upload_job import UploadJob

log = logging.getLogger("hoist.worker")


class PointerJob(Job):
    """Write a ``.symlink`` pointer once its target is verified, never moving it backwards."""

    task = POINTER_TASK
    message_type = PointerRequest
    message: PointerRequest

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
        return retained(
            self,
            FILE,
            message.target_object_name,
            lambda: self.write_pointer(message.target_object_name),
        )

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
        latest = self.ctx.records.latest(self.spec.store_id, object_name)
        return None if latest is None else self.ctx.records.get(latest.artifact)


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

        return retained(
            self,
            STEP,
            manifest.object_name,
            lambda: self.write_pointer(
                manifest.object_name,
                before=write_manifest,
                manifest=manifest.object_name,
                files=len(manifest.files),
            ),
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


def retained(
    job: PointerJob | CommitJob, kind: str, target: str, write: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Write a pointer under retention's rules (:mod:`hoist.state.retention`).

    The target is protected before the PUT (and refused if retention took it);
    once the write is done and verified it joins the pointer's history, and
    with ``keep_last`` the pointer's old targets are pruned. A write superseded
    by a newer pointer never named its (verified) target, which joins the
    history all the same, so the rule prunes it rather than leaking it. Any
    prune another worker left half-way in this store is finished too. A failure
    of the prune is logged, never the pointer's outcome: the marks stay for the
    next prune or the resender's pass (:func:`hoist.state.retention.overdue_runs`).
    """
    message = job.message
    store_id, pointer = job.spec.store_id, message.object_name
    records = job.ctx.records
    retention = Retention.of(records, message.run_name)
    try:
        retention.intend(store_id, pointer, target, message.id)
    except RetentionError as exc:
        newest = records.latest(store_id, pointer)
        if newest is not None and newest.artifact != message.id:
            # A newer pointer of this name is logged (Lightning's save_top_k drops the
            # old best while its pointer waits): that one names a target, not this one.
            return job.settle(State.SUPERSEDED)
        return job.settle(State.FAILED, error=str(exc))
    outcome = write()
    written = outcome.get("outcome")
    if written not in (State.DONE.value, State.SUPERSEDED.value):
        retention.abandon(store_id, pointer, message.id)
        return outcome
    try:
        named = written == State.DONE.value
        retention.moved(
            store_id, message.store, pointer, kind, target, message.id, message.order, named=named
        )
        store = job.ctx.store(job.spec)
        # Marks come from the state Redis: each is checked as this job's own objects were.
        refusal = job.ctx.settings.allowed.refusal_of(job.spec.kind, job.spec.kwargs)
        if message.keep_last:
            keep = message.keep_last, message.keep_every
            retention.prune(store, store_id, pointer, *keep, refusal)
        else:
            retention.finish(store, store_id, refusal)
    except Exception as exc:
        log.warning("%s: retention did not prune this time: %s", message.id, exc)
    return outcome


JOBS: dict[str, type[Job]] = {job.task: job for job in (UploadJob, PointerJob, CommitJob, ProbeJob)}
"""The job class of each task name."""
