"""Reaching the records: :class:`Records` on a URL, or one clear sentence on why not.

The CLI's commands and the library API (``hoist.download_artifact(run=...)``)
both connect here, so "no cluster configured" and "cluster unreachable" read
the same everywhere. Nothing here prints a URL with its password.
"""

from __future__ import annotations

import redis

from hoist.errors import ClusterUnreachableError
from hoist.protocol.urls import mask_url
from hoist.settings import SentinelSettings
from hoist.state.records import DEFAULT_RETENTION_SECONDS, Records

NO_CLUSTER = "no hoist cluster found: run `hoist up`, or set HOIST_BROKER_URL"
"""What a command or the library says when no broker URL is configured."""


def connect(
    url: str,
    retention_seconds: int = DEFAULT_RETENTION_SECONDS,
    sentinel: SentinelSettings | None = None,
) -> Records:
    """:class:`Records` on ``url``, checked with a ping so a dead Redis fails here, clearly.

    A ``sentinel://`` URL is followed to its master with ``sentinel``'s name and password.

    Raises:
        ClusterUnreachableError: the Redis at ``url`` does not answer (through
            Sentinel: no sentinel names a master that answers).
        ConfigurationError: ``url`` is no Redis URL hoist can use.

    Example:
        >>> connect("redis://127.0.0.1:6379/0").runs(limit=5)  # doctest: +SKIP
        ['bert-3']
    """
    records = Records.from_url(url, sentinel=sentinel, retention_seconds=retention_seconds)
    try:
        records.client.ping()
    except redis.RedisError as exc:
        raise ClusterUnreachableError(
            f"the hoist cluster's Redis at {mask_url(url)} does not answer ({exc}); start it "
            "with `hoist up`, or point HOIST_BROKER_URL at a running one"
        ) from None
    return records
