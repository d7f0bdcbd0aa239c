"""A bound on what a rank keeps in staging, and what a call does when it is reached.

When checkpoints come faster than the fleet drains them, staged copies pile
up, and a full disk fails the training job, not an upload. A logger given
``max_staged_bytes`` (or ``HOIST_MAX_STAGED_BYTES``) counts the bytes of its
uploads not yet finished (:attr:`PendingArtifacts.staged_bytes`); a call
that would stage beyond the bound first makes room, as ``when_staging_full``
says (:class:`StagingFull`):

- ``"wait"`` (the default): block until enough of this rank's uploads have
  finished. The loop stalls, visibly: a warning says how much is staged,
  against what bound, and that the fleet is slower than the checkpoints.
- ``"supersede"``: withdraw the oldest versions of the same name that no
  worker has started (:func:`hoist.state.withdrawal.withdraw`; their records
  say ``superseded`` and their staged files are removed: a worker would have
  skipped them for the newer version anyway), waiting first if even that
  would not make room. They are withdrawn only once the new version is
  recorded, so a call that fails (Redis away, the source gone) loses neither.
  For a ``latest.pt`` logged every step, the fleet then uploads the newest
  one it can, and staging holds at most a few versions.

Failed uploads keep their staged files for ``hoist retry`` but count no
more: they are reported, and retrying is a person's decision. A single file
larger than the bound is refused, since no amount of waiting makes room for
it. Without a bound (0, the default) nothing is counted against.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from enum import Enum

from hoist.errors import ConfigurationError
from hoist.logger.pending import PendingArtifacts
from hoist.protocol.messages import UploadRequest
from hoist.state.records import Records
from hoist.state.states import State
from hoist.state.withdrawal import withdraw

log = logging.getLogger("hoist.rank")

WITHDRAWN = "a newer version was logged while the rank's staging was full"
"""A withdrawn upload's ``superseded_by``, as its record shows it."""
POLL_SECONDS = 0.2
"""How often a waiting call looks whether the fleet has made room."""


class StagingFull(str, Enum):
    """What a call does when staging its file would pass ``max_staged_bytes``."""

    WAIT = "wait"
    SUPERSEDE = "supersede"


def staging_full_mode(value: StagingFull | str) -> StagingFull:
    """Parse ``when_staging_full``.

    Example:
        >>> staging_full_mode("supersede")
        <StagingFull.SUPERSEDE: 'supersede'>
    """
    try:
        return StagingFull(value)
    except ValueError:
        raise ConfigurationError(
            f"when_staging_full must be 'wait' or 'supersede', not {value!r}"
        ) from None


class StagingBudget:
    """Keeps a rank's staged bytes under ``max_bytes``.

    Parameters:
        max_bytes: the bound; 0 for none.
        when_full: what :meth:`make_room` does at the bound.
        pending: the rank's pending artifacts, which count the staged bytes.
        records: the state store, to withdraw unstarted versions.
        sleep: waits between two looks; tests pass their own.
    """

    def __init__(
        self,
        max_bytes: int,
        when_full: StagingFull,
        pending: PendingArtifacts,
        records: Records,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_bytes < 0:
            raise ConfigurationError(
                f"max_staged_bytes must be 0 (no bound) or more, not {max_bytes}"
            )
        self.max_bytes = max_bytes
        self.when_full = when_full
        self._pending = pending
        self._records = records
        self._sleep = sleep

    def room_for(
        self, path: str, artifact_name: str, object_name: str
    ) -> contextlib.AbstractContextManager[None]:
        """Around staging and recording the file at ``path``: make room first (wait, or
        pick older versions to withdraw) and withdraw those only once the new version
        is recorded, so a failed call (Redis away, the source gone) loses neither.

        Staging may pass the bound by that one file for as long as the call takes.
        Without a bound, a no-op: ``file_artifact`` runs it on every call.

        Raises:
            ConfigurationError: the file alone is larger than the bound.
        """
        if not self.max_bytes:
            return contextlib.nullcontext()
        return self._bounded(path, artifact_name, object_name)

    @contextlib.contextmanager
    def _bounded(self, path: str, artifact_name: str, object_name: str) -> Iterator[None]:
        older = self._make_room(path, artifact_name, object_name)
        yield
        self._withdraw(older)

    def _make_room(self, path: str, artifact_name: str, object_name: str) -> list[UploadRequest]:
        """Wait until the file fits once the returned older versions are withdrawn."""
        size = os.stat(path).st_size
        if size > self.max_bytes:
            raise ConfigurationError(
                f"{artifact_name!r} is {size} bytes, more than max_staged_bytes="
                f"{self.max_bytes}; raise the bound (or HOIST_MAX_STAGED_BYTES)"
            )
        pending = self._pending
        if pending.staged_bytes + size <= self.max_bytes:
            return []
        started = time.monotonic()
        warned = False
        # The count holds what was pending at the last look: uploads may have
        # landed since, so look before choosing or waiting.
        pending.refresh()
        while True:
            older = self._older_versions(object_name, size)
            freed = sum(message.size for message in older)
            if pending.staged_bytes - freed + size <= self.max_bytes:
                break
            if not warned:
                warned = True
                log.warning(
                    "staging %r waits for room: this rank has %d bytes staged of "
                    "max_staged_bytes=%d; the fleet uploads slower than the run checkpoints "
                    "(more workers, fewer checkpoints, or when_staging_full='supersede')",
                    artifact_name,
                    pending.staged_bytes,
                    self.max_bytes,
                )
            self._sleep(POLL_SECONDS)
            pending.refresh()
        if warned:
            log.warning(
                "staging %r went on after %.1f s", artifact_name, time.monotonic() - started
            )
        return older

    def _older_versions(self, object_name: str, size: int) -> list[UploadRequest]:
        """With ``"supersede"``, the oldest pending versions of the name that would make
        room for ``size`` bytes (all of them if that is not enough); else none."""
        if self.when_full is not StagingFull.SUPERSEDE:
            return []
        versions = self._pending.uploads_of(object_name)
        if not versions:
            return []
        # Only versions no worker has taken yet: a claimed one cannot be withdrawn,
        # and counting on it would stage past the bound. (withdraw.lua decides in
        # the end; a claim in between leaves staging one file over for a while.)
        states = self._records.states([message.id for message in versions])
        chosen: list[UploadRequest] = []
        excess = self._pending.staged_bytes + size - self.max_bytes
        for message in versions:
            if excess <= 0:
                break
            if states.get(message.id) in (State.QUEUED, State.WAITING):
                chosen.append(message)
                excess -= message.size
        return chosen

    def _withdraw(self, older: list[UploadRequest]) -> None:
        """Withdraw ``older`` where no worker has started them; remove their staged files."""
        for message in older:
            if not withdraw(self._records, message.id, WITHDRAWN):
                continue  # a worker has it: its bytes free up when it lands
            self._pending.forget(message.id)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(message.staged_path)
            log.info("withdrew %s (%s) to make room in staging", message.artifact_name, message.id)
