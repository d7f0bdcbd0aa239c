"""The vocabulary of a record: an artifact's states, the outcomes of a claim, and a status.

Ranks, workers and the CLI read and write these words; the Lua scripts of
:mod:`hoist.state.scripts` are handed :data:`TERMINAL_STATES` when they are
loaded, so the list of finished states exists only here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any


class State(str, Enum):
    """Where an artifact is; the record's ``state`` field."""

    QUEUED = "queued"
    """Staged and sent to the broker."""
    WAITING = "waiting"
    """Held back for a concurrency lease, a name lock or a pointer's target."""
    UPLOADING = "uploading"
    RETRYING = "retrying"
    """A transient error; sent again after a backoff. The record holds the last
    ``error``, ``next_attempt_at`` and ``retrying_since`` (Unix times)."""
    DONE = "done"
    """Uploaded and verified (or, for a pointer, written)."""
    FAILED = "failed"
    SUPERSEDED = "superseded"
    """A newer version of the same name was logged; this one was skipped."""

    @property
    def terminal(self) -> bool:
        """Whether the artifact is finished: no worker touches it again.

        Example:
            >>> State.SUPERSEDED.terminal, State.RETRYING.terminal
            (True, False)
        """
        return self in TERMINAL_STATES


TERMINAL_STATES: tuple[State, ...] = (State.DONE, State.FAILED, State.SUPERSEDED)
"""The finished states: a claim stops at them, and their records expire."""


class Claim(str, Enum):
    """What :meth:`hoist.state.records.Records.claim` decided for one delivery."""

    CLAIMED = "claimed"
    """This task owns the artifact now and should work on it."""
    BUSY = "busy"
    """Another live task owns it: this delivery is a duplicate."""
    FINISHED = "finished"
    """Already in a terminal state: nothing to do."""
    POISON = "poison"
    """Delivered too often without an outcome; marked failed."""
    MISMATCH = "mismatch"
    """The record holds another message under this id: this one is not acted on."""


@dataclass(frozen=True)
class ArtifactStatus:
    """What the record says about one artifact.

    Parameters:
        id: the artifact id.
        state: its :class:`State`.
        fields: every field of the record, decoded.
    """

    id: str
    state: State
    fields: dict[str, str]

    @property
    def artifact_name(self) -> str:
        return self.message.get("artifact_name", "")

    @property
    def message(self) -> dict[str, Any]:
        return json.loads(self.fields.get("message", "{}"))

    @property
    def error(self) -> str:
        return self.fields.get("error", "")
