"""Where DCP's writer writes a rank's step, and what a killed write leaves there.

Each rank writes a step into a folder of its own in the staging root,
``<staging root>/<run>/rank<r>/dcp-step-<step>`` (:func:`write_folder`):
on the staging filesystem, so registering the step renames each file into its
staged place (``staging="move"``) instead of copying it, and the emptied
folder is removed. A ``dcp-step-*`` folder that is still there when the rank
writes again therefore holds only files no record names: its write was
killed, or failed, before it was registered. Nothing of it can upload, and a
step it belonged to can never be committed by it.

Decision: :func:`fresh_folder` removes every such folder of the rank before
the rank writes again, whatever the step (a job killed at step 1200 and
resumed at 1100 writes other step numbers first). It removes only folders
named ``dcp-step-<8 digits>`` directly in this rank's folder of this run,
never a file there: staged files (``<seq>-<name>``, waiting for or being
uploaded) are files, so they are never touched. It runs only after the
logger's async save in flight has settled (hoist.integrations.dcp calls it
there), so the folder of a write still being registered is never one of
them. The logger's own staging keeps no list of these folders, so no
other cleanup knows them; ``hoist gc`` cleans the store, not staging.
"""

from __future__ import annotations

import logging
import os
import re
import shutil

from hoist.logger.logger import ObjectStoreLogger
from hoist.protocol.manifest import checkpoint_name

log = logging.getLogger("hoist.rank")

_WRITE_FOLDER = re.compile(r"dcp-step-\d{8}")
"""A DCP write folder's name (:func:`write_folder`); nothing else in a rank's folder matches."""


def write_folder(logger: ObjectStoreLogger, step: int) -> str:
    """Where this rank's DCP writer writes ``step``: a folder of the rank's in the staging root.

    Inside the staging root, so the files are renamed into their staged
    places on the same filesystem, never copied.

    Example:
        >>> logger = ObjectStoreLogger(provider="local", container="c",  # doctest: +SKIP
        ...                            run_name="llm-1", upload_staging_folder="/staging")
        >>> write_folder(logger, 100)  # doctest: +SKIP
        '/staging/llm-1/rank0/dcp-step-00000100'
    """
    checkpoint_name(step)  # refuses a step that is no whole number >= 0
    rank = f"rank{logger.ranks.rank}"
    return os.path.join(logger.staging_root, logger.run_name, rank, f"dcp-step-{step:08d}")


def fresh_folder(logger: ObjectStoreLogger, step: int) -> str:
    """An empty :func:`write_folder` for ``step``, after removing what killed writes left.

    Call it only when no write of this rank is being registered (see the module docs).
    """
    folder = write_folder(logger, step)
    for leftover in abandoned(os.path.dirname(folder)):
        # Never registered (registering renames every file out): nothing refers to it.
        log.info("removing %s, left by a DCP write that was killed or failed", leftover)
        shutil.rmtree(leftover, ignore_errors=True)
    os.makedirs(folder)
    return folder


def abandoned(rank_folder: str) -> list[str]:
    """Every DCP write folder in ``rank_folder`` (none if it does not exist)."""
    try:
        entries = list(os.scandir(rank_folder))
    except FileNotFoundError:
        return []
    return sorted(
        entry.path
        for entry in entries
        if _WRITE_FOLDER.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)
    )
