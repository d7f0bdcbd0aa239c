"""What a rank waits for: its artifacts not yet finished, and the failures among them.

An artifact is pending from the moment its record is written until the
record reaches a terminal state (done or failed) on the fleet.
:meth:`PendingArtifacts.wait` asks the state Redis after them, the oldest
first and :data:`WAIT_WINDOW` at a time, and raises once for every failure it
found, naming each artifact with the cause the worker recorded.

The error reads checkpoints first: a run that logs its log file and
TensorBoard events again and again (Composer's ``FileLogger`` every batch)
fails dozens of versions of them when the store is wrong, and the one line a
person needs, the checkpoint's, was lost among them. :func:`failure_report`
folds the versions of one name into one line with their count and puts the
names :func:`is_checkpoint` recognizes first.
"""

from __future__ import annotations

import itertools
import logging
import shlex
import time
from collections.abc import Iterable

import redis

from hoist.errors import UploadFailedError, WaitTimeoutError
from hoist.protocol.messages import Message, UploadRequest
from hoist.state.records import Records
from hoist.state.states import State

log = logging.getLogger("hoist.rank")

WAIT_WINDOW = 64
"""Pending artifacts ``wait()`` asks after in one poll, the oldest first."""

Failure = tuple[str, str, str]
"""A failed artifact as reported: its name, its object name, the recorded error."""

CHECKPOINT_SUFFIXES = frozenset(
    {".pt", ".pth", ".ckpt", ".safetensors", ".distcp", ".bin", ".h5", ".msgpack"}
)
"""Suffixes of checkpoint files: PyTorch and Composer (``.pt``, also inside
``ep1.pt.tar`` or ``latest-rank0.pt`` pointers), Lightning (``.ckpt``),
``torch.distributed.checkpoint`` (``.distcp``), Hugging Face (``.safetensors``,
``pytorch_model.bin``), Keras (``.h5``), Flax (``.msgpack``)."""

CHECKPOINT_DIRECTORIES = frozenset({"checkpoint", "checkpoints", "ckpt", "ckpts"})
"""Directory names that hold checkpoints: Composer's ``{run_name}/checkpoints``
save folder, ``log_checkpoint_dir``'s ``checkpoints/step-…`` (and a directory
named ``checkpoint-<step>`` or ``checkpoint_<step>``, Hugging Face's)."""


def is_checkpoint(artifact_name: str) -> bool:
    """Whether a failed artifact is a checkpoint's, to put it first in :class:`UploadFailedError`.

    Decided from the artifact name alone, as the rank logged it: a directory
    in it that holds checkpoints (:data:`CHECKPOINT_DIRECTORIES`, or a name
    starting with ``checkpoint-`` / ``checkpoint_``), which covers every file
    of ``log_checkpoint_dir`` under its default name and Composer's
    ``save_folder``; or a checkpoint suffix (:data:`CHECKPOINT_SUFFIXES`)
    anywhere in the file's name. Only the order of the message depends on it.
    The object name is not looked at: the run's name is usually in it, and a
    run named ``checkpoint-test`` would make every log file a checkpoint.

    Example:
        >>> is_checkpoint("composer-run/checkpoints/ep0-ba10-rank0.pt")
        True
        >>> is_checkpoint("checkpoints/step-00000100/.metadata")
        True
        >>> is_checkpoint("ep1.pt.tar"), is_checkpoint("latest-rank0.pt")
        (True, True)
        >>> is_checkpoint("logs/train.log"), is_checkpoint("tb/events.out.tfevents.1.host")
        (False, False)
    """
    *directories, file_name = artifact_name.lower().split("/")
    for directory in directories:
        if directory in CHECKPOINT_DIRECTORIES or directory.startswith(
            ("checkpoint-", "checkpoint_")
        ):
            return True
    suffixes = {"." + part for part in file_name.split(".")[1:]}
    return not suffixes.isdisjoint(CHECKPOINT_SUFFIXES)


def failure_report(run_name: str, rank: int, failures: Iterable[Failure]) -> str:
    """:class:`UploadFailedError`'s message: one sentence, then one line per name.

    The sentence counts the checkpoints and other files that failed and says
    what to do. Below it, checkpoints first (:func:`is_checkpoint`), then the
    other names, each in the order it first failed; the versions of one name
    (a log file uploaded again every batch) fold into one line with their
    count and the first version's error, and the last one's where it differs.
    The object name is shown where it is not the artifact name.

    Example:
        >>> print(failure_report("bert-3", 0, [
        ...     ("logs/train.log", "bert-3/logs/train.log", "no such bucket 'ckpt'"),
        ...     ("ep1.pt", "bert-3/ep1.pt", "no such bucket 'ckpt'"),
        ...     ("logs/train.log", "bert-3/logs/train.log", "no such bucket 'ckpt'"),
        ... ]))
        Run 'bert-3' rank 0: 1 checkpoint and 1 other file failed to upload (3 uploads
        in all); fix the cause below, then `hoist retry --run=bert-3` sends them again.
          checkpoint ep1.pt (bert-3/ep1.pt): no such bucket 'ckpt'
          logs/train.log (bert-3/logs/train.log): 2 versions failed: no such bucket 'ckpt'
    """
    # (artifact, object) -> every version's error, in the order they failed
    by_name: dict[tuple[str, str], list[str]] = {}
    uploads = 0
    for name, obj, error in failures:
        by_name.setdefault((name, obj), []).append(error)
        uploads += 1
    checkpoints = [key for key in by_name if is_checkpoint(key[0])]
    others = [key for key in by_name if not is_checkpoint(key[0])]
    counts = []
    if checkpoints:
        counts.append(_plural(len(checkpoints), "checkpoint"))
    if others:
        counts.append(_plural(len(others), "other file" if checkpoints else "file"))
    in_all = f" ({uploads} uploads in all)" if uploads != len(by_name) else ""
    distinct_errors = {error for errors in by_name.values() for error in errors}
    causes = "the cause" if len(distinct_errors) == 1 else "the causes"
    them = "them" if uploads > 1 else "it"
    # A command to copy as it is: the run's name quoted where a shell would read it ('$', ';').
    retry = f"hoist retry --run={shlex.quote(run_name)}"
    lines = [
        f"Run {run_name!r} rank {rank}: {' and '.join(counts)} failed to upload{in_all}; "
        f"fix {causes} below, then `{retry}` sends {them} again."
    ]
    for key in checkpoints + others:
        name, obj = key
        errors = by_name[key]
        shown = name if obj == name else f"{name} ({obj})"
        what = errors[0]
        if len(errors) > 1:
            what = f"{len(errors)} versions failed: {errors[0]}"
            if errors[-1] != errors[0]:
                what += f" (the last: {errors[-1]})"
        lines.append(f"  {'checkpoint ' if key in checkpoints else ''}{shown}: {what}")
    return "\n".join(lines)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class PendingArtifacts:
    """A rank's artifacts whose records are not terminal yet, in the order they were logged.

    Parameters:
        records: the state store holding the artifacts' records.
        run_name: the run, for the messages of errors.
        rank: this rank, for the messages of errors.
        state_shown: the state Redis' URL with its password masked, for warnings.
    """

    def __init__(self, records: Records, run_name: str, rank: int, state_shown: str) -> None:
        self._records = records
        self._run_name = run_name
        self._rank = rank
        self._state_shown = state_shown
        self._pending: dict[str, Message] = {}
        self.staged_bytes = 0  # sizes of the pending uploads: what staging holds for them
        self._failures: list[Failure] = []  # found by wait(), not yet raised
        self._state_unreachable = False  # warned once per outage

    def add(self, message: Message) -> None:
        """Wait for ``message``'s artifact from now on (its record is written)."""
        self._pending[message.id] = message
        self.staged_bytes += _staged_size(message)

    def clear(self) -> None:
        """Forget every pending artifact (a forked child does not wait for its parent's)."""
        self._pending.clear()
        self.staged_bytes = 0

    def uploads_of(self, object_name: str) -> list[UploadRequest]:
        """The pending uploads of ``object_name``, oldest first."""
        return [
            message
            for message in self._pending.values()
            if isinstance(message, UploadRequest) and message.object_name == object_name
        ]

    def forget(self, artifact: str) -> None:
        """Stop waiting for ``artifact`` (the rank withdrew it)."""
        message = self._pending.pop(artifact, None)
        if message is not None:
            self.staged_bytes -= _staged_size(message)

    def refresh(self) -> None:
        """Drop every finished artifact now; failures are kept for the next report."""
        self._collect(list(self._pending), self._failures)

    def __contains__(self, artifact: object) -> bool:
        return artifact in self._pending

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def answered(self) -> bool:
        """Whether the last look at the records got Redis' answer."""
        return not self._state_unreachable

    def wait(self, deadline: float | None, timeout: float | None, poll_interval: float) -> None:
        """Block until no artifact is pending; see :meth:`ObjectStoreLogger.wait`.

        Parameters:
            deadline: ``time.monotonic()`` to give up at, or None for never.
            timeout: the caller's timeout, as the error quotes it.
            poll_interval: seconds between two polls of Redis.

        Raises:
            UploadFailedError: every failure not reported before, once all finished.
            WaitTimeoutError: artifacts still pending at ``deadline``; failures
                seen so far are kept for a later call.
        """
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
                    f"{len(self._pending)} upload(s) of run {self._run_name!r} rank "
                    f"{self._rank} still pending after {timeout} s"
                    + (f" and {len(failures)} failed" if failures else "")
                    + f"; `hoist status --run {self._run_name}` shows them"
                )
            time.sleep(poll_interval)
        if failures:
            self._failures = []
            raise UploadFailedError(failure_report(self._run_name, self._rank, failures), failures)

    def take_failures(self) -> list[Failure]:
        """Drop every finished artifact now; return the failures among them, and any
        an earlier :meth:`wait` found, so each failure is reported once."""
        failures, self._failures = self._failures, []
        try:
            self._collect(list(self._pending), failures)
        except redis.RedisError:
            self._failures = failures + self._failures  # reported by a later look
            raise
        return failures

    def retrying(self) -> list[tuple[Message, dict[str, str]]]:
        """The pending artifacts whose records say ``retrying``, with their records' fields."""
        pending = list(self._pending)
        states = self._records.states(pending) if pending else {}
        found = []
        for artifact, state in states.items():
            status = self._records.get(artifact) if state is State.RETRYING else None
            if status is not None:
                found.append((self._pending[artifact], status.fields))
        return found

    def _collect(self, artifacts: list[str], failures: list[Failure]) -> int:
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
                message = self._pending[artifact]
                # Read the cause before letting go: if Redis fails here, the
                # artifact stays pending and its failure is found again.
                failure = self._failure(message) if state is State.FAILED else None
                finished += 1
                del self._pending[artifact]
                self.staged_bytes -= _staged_size(message)
                if failure is not None:
                    failures.append(failure)
        return finished

    def _failure(self, message: Message) -> Failure:
        status = self._records.get(message.id)
        error = status.error if status is not None else "its record is gone"
        return message.artifact_name, message.object_name, error


def _staged_size(message: Message) -> int:
    return message.size if isinstance(message, UploadRequest) else 0
