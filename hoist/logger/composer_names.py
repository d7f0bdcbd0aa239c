"""Composer's older method names, for code written against its logger destinations.

MosaicML Composer's ``LoggerDestination`` once took artifacts through
``log_file_artifact(state, log_level, name, path)`` and
``log_symlink_artifact(state, log_level, existing, symlink)``, the state and
level first. :class:`ComposerNames` maps them onto the logger's own
``file_artifact`` and ``symlink_artifact`` (a pointer), which a subclass
provides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hoist.errors import ConfigurationError
from hoist.logger.levels import LogLevel


class ComposerNames:
    """Composer's names on top of ``file_artifact`` and ``symlink_artifact``."""

    if TYPE_CHECKING:  # provided by the subclass, ObjectStoreLogger, with their signatures
        file_artifact: Callable[..., str | None]
        symlink_artifact: Callable[..., str | None]

    def log_file_artifact(
        self,
        state: Any,
        log_level: LogLevel,
        artifact_name: str,
        file_path: str,
        *,
        overwrite: bool = False,
    ) -> None:
        """``file_artifact(log_level, artifact_name, ...)`` in Composer's argument order."""
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
        """``symlink_artifact(existing, symlink, ...)`` (a pointer) in Composer's argument order.

        ``overwrite`` is accepted and ignored: a later pointer always wins.
        """
        self.symlink_artifact(
            existing_artifact_name, symlink_artifact_name, log_level=log_level, state=state
        )

    def can_upload_files(self) -> bool:
        """Composer asks before handing files over: always True."""
        return True


def pointer_arguments(
    first: str | LogLevel, second: str, rest: tuple[str, ...], log_level: LogLevel
) -> tuple[LogLevel, str, str]:
    """``symlink_artifact``'s arguments as ``(log_level, existing, symlink)``, in either order.

    ``symlink_artifact("ep1.pt", "latest.pt")``, or with the level first as
    ``file_artifact`` and Composer's ``Logger`` take it. A LogLevel is never a
    name, so the order is unambiguous.

    Example:
        >>> pointer_arguments(LogLevel.EPOCH, "ep1.pt", ("latest.pt",), LogLevel.FIT)[1:]
        ('ep1.pt', 'latest.pt')
    """
    if isinstance(first, LogLevel) and len(rest) == 1:
        return first, second, rest[0]
    if rest or not isinstance(first, str):
        raise ConfigurationError(
            "call symlink_artifact(existing, symlink) or symlink_artifact(log_level, "
            f"existing, symlink); got {(first, second, *rest)}"
        )
    return log_level, first, second
