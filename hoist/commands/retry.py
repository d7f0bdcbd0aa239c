"""``hoist retry``: send a run's failed artifacts to the workers again.

A failed record keeps its message and task name, so the artifact can be sent
again unchanged once its cause is fixed (a conflicting object removed,
credentials mended, a store back). An upload needs its staged file, which a
failed upload leaves in place; a pointer needs nothing, it waits for its
target as it did the first time (a pointer whose target stays failed is
left alone: it would only fail again).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from hoist.commands.cluster_access import broker_url_from_environment, records_for
from hoist.commands.console import console, out
from hoist.errors import ConfigurationError, EnqueueError
from hoist.protocol.messages import MESSAGE_TYPES, PointerRequest, UploadRequest
from hoist.protocol.sending import send, sender
from hoist.settings import CommandSettings
from hoist.state.records import ArtifactStatus, Records
from hoist.state.states import State

RESENT = "re-sent"
STAGED_GONE = "cannot retry: staged file gone; log it again"


@dataclass(frozen=True)
class Outcome:
    """What ``hoist retry`` did with one artifact.

    Parameters:
        artifact: the record.
        result: :data:`RESENT`, :data:`STAGED_GONE`, or why it was left alone.
    """

    artifact: ArtifactStatus
    result: str

    @property
    def resent(self) -> bool:
        return self.result == RESENT


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "retry",
        help="send a run's failed artifacts to the workers again",
        description="For each failed artifact of the run: reset its record (no attempts, "
        "error cleared) and send its message again. Uploads need their staged file, which "
        "failed uploads keep; failed pointers are sent too and wait for their target. Fix "
        "what made them fail first (`hoist wait` or `hoist status` shows the errors).",
        epilog="example: hoist retry --run bert-3 && hoist wait --run bert-3",
    )
    parser.add_argument("--run", metavar="NAME", required=True, help="the run to retry")
    parser.add_argument(
        "--queued",
        action="store_true",
        help="also send artifacts still queued again, e.g. those logged while the broker was "
        "down; a duplicate is harmless, the record lets one delivery through",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    records = records_for(args)
    artifacts = records.run_artifacts(args.run)
    if not artifacts:
        raise ConfigurationError(
            f"the cluster has no artifacts of run {args.run!r}; `hoist status` lists the runs "
            "it knows"
        )
    states = (State.FAILED, State.QUEUED) if args.queued else (State.FAILED,)
    chosen = [a for a in artifacts if a.state in states]
    if not chosen:
        console.print(f"run {args.run}: nothing to retry", highlight=False)
        return 0
    broker = broker_url_from_environment()
    outcomes = retry(records, sender(broker, CommandSettings.from_environment().sentinel), chosen)
    out.print(outcome_table(args.run, outcomes))
    resent = sum(outcome.resent for outcome in outcomes)
    console.print(
        f"re-sent {resent} of {len(outcomes)}; `hoist wait --run {args.run}` waits for them",
        highlight=False,
    )
    return 0 if resent == len(outcomes) else 1


def retry(records: Records, app: Any, artifacts: list[ArtifactStatus]) -> list[Outcome]:
    """Reset and re-send each of ``artifacts`` (failed or queued records), in logging order.

    Parameters:
        records: the cluster's records.
        app: a Celery app for sending (:func:`hoist.protocol.sending.sender`).
        artifacts: the records to send again.

    Example:
        >>> artifacts = records.run_artifacts("bert-3")  # doctest: +SKIP
        >>> failed = [a for a in artifacts if a.state is State.FAILED]  # doctest: +SKIP
        >>> [o.result for o in retry(records, sender(broker), failed)]  # doctest: +SKIP
        ['re-sent']
    """
    return [_retry_one(records, app, artifact) for artifact in artifacts]


def _retry_one(records: Records, app: Any, artifact: ArtifactStatus) -> Outcome:
    task = artifact.fields.get("task", "")
    message_type = MESSAGE_TYPES.get(task)
    if message_type is None:
        return Outcome(artifact, f"cannot retry: unknown task {task!r}")
    message = message_type.from_json(artifact.message)
    if isinstance(message, UploadRequest) and not staged_file_exists(message.staged_path):
        return Outcome(artifact, STAGED_GONE)
    if isinstance(message, PointerRequest):
        # Targets come first in logging order, so a target still failed here could not be
        # retried; sent anyway, the pointer would only fail again.
        target = records.get(message.target_id)
        if target is not None and target.state is State.FAILED:
            return Outcome(
                artifact, f"cannot retry: its target {target.artifact_name!r} is still failed"
            )
    # Only a record still failed is reset: another `hoist retry` may have taken it.
    if artifact.state is State.FAILED and not records.reset_for_retry(artifact.id):
        return Outcome(artifact, "left alone: no longer failed")
    try:
        send(app, task, message)
    except Exception as exc:
        raise EnqueueError(
            f"could not send {artifact.artifact_name!r} to the broker ({exc}); it is queued "
            f"now: `hoist retry --run {message.run_name} --queued` sends it once the broker "
            "is back"
        ) from exc
    return Outcome(artifact, RESENT)


def staged_file_exists(staged_path: str) -> bool:
    """Whether the staged copy a message names is still there, as the workers would find it.

    A relative path is taken relative to ``HOIST_STAGING_DIR``, as workers do.

    Example:
        >>> staged_file_exists("/shared/staging/bert-3/rank0/00000017-ep1.pt")  # doctest: +SKIP
        True
    """
    if not staged_path:
        return False
    root = CommandSettings.from_environment().staging_dir
    if not os.path.isabs(staged_path):
        if not root:
            return False
        staged_path = os.path.join(root, staged_path)
    return os.path.isfile(staged_path)


def outcome_table(run: str, outcomes: list[Outcome]) -> Table:
    """One row per artifact: rank, artifact, kind, object and what was done."""
    table = Table(title=f"hoist retry: run {run}")
    table.add_column("rank", justify="right")
    table.add_column("artifact", overflow="fold")
    table.add_column("kind")
    table.add_column("object", overflow="fold")
    table.add_column("result", overflow="fold")
    for outcome in outcomes:
        message = outcome.artifact.message
        kind = "upload" if "staged_path" in message else "pointer"
        style = "green" if outcome.resent else "red"
        table.add_row(
            str(message.get("rank", "")),
            outcome.artifact.artifact_name,
            kind,
            str(message.get("object_name", "")),
            f"[{style}]{outcome.result}[/]",
        )
    return table
