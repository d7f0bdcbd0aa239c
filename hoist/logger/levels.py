"""Log levels, as in MosaicML Composer, for ``should_log_artifact`` filters."""

from __future__ import annotations

from enum import IntEnum


class LogLevel(IntEnum):
    """How often an artifact is logged.

    Example:
        >>> def only_epochs(state, log_level, artifact_name):
        ...     return log_level <= LogLevel.EPOCH
    """

    FIT = 1
    EPOCH = 2
    BATCH = 3
