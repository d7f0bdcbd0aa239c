"""A rank taking back an upload no worker has started (``when_staging_full="supersede"``).

When a rank's staging is full (:mod:`hoist.logger.backlog`), an older
version of the name it is about to log again is worth nothing: once the new
version is recorded, a worker would skip the old one as superseded anyway.
Withdrawing it first frees its staged bytes now. The decision is one script
(``withdraw.lua``), so a worker's claim either came first (the upload goes
on, and the rank waits instead) or comes after and finds a finished record.
"""

from __future__ import annotations

import time

from hoist.state.keys import DEFERRED, owner_key, record_key
from hoist.state.records import Records
from hoist.state.scripts import register


def withdraw(records: Records, artifact: str, reason: str) -> bool:
    """Mark ``artifact`` superseded if no worker has claimed or tried it; True if it was.

    Only then may the rank remove its staged file: no worker will open it.

    Example:
        >>> withdraw(records, "hoist-bert-3-r0-17", "the rank's staging was full")  # doctest: +SKIP
        True
    """
    script = register(records.client, "withdraw")
    keys = [record_key(artifact), owner_key(artifact), DEFERRED]
    args: list[str | float] = [artifact, time.time(), records.retention_seconds, reason]
    return bool(script(keys=keys, args=args))
