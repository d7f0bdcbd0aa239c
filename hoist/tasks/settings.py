"""What a worker is told by its environment (``hoist worker`` sets these from its options)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from hoist.errors import ConfigurationError

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a whole number") from None


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number") from None


@dataclass(frozen=True)
class Settings:
    """Worker settings.

    Parameters:
        broker_url: the Celery broker (``HOIST_BROKER_URL``).
        state_url: the Redis holding artifact records (``HOIST_STATE_URL``,
            default: the broker).
        staging_root: the only directory workers read from (``HOIST_STAGING_DIR``).
        store_limit: uploads to one store at once, fleet-wide; 0 for none
            (``HOIST_STORE_LIMIT``).
        max_retries: attempts after transient errors before failing (``HOIST_MAX_RETRIES``).
        max_deliveries: deliveries without an outcome (a worker lost each
            time) before failing (``HOIST_MAX_DELIVERIES``).
        lease_seconds: how long a claim or lease lives without a heartbeat.
        backoff_base, backoff_max: seconds; retry n waits
            ``min(max, base * 2**(n-1))`` times a random factor in [0.5, 1].
        wait_seconds: how soon an upload held back by a limit is tried again.
        progress_seconds: how often an upload in flight reports its bytes to
            Flower (``HOIST_PROGRESS_SECONDS``); shorter uploads report nothing.
        visibility_timeout: seconds before the broker hands an unacknowledged
            message to another worker (``HOIST_VISIBILITY_TIMEOUT``). Safe to
            be shorter than an upload: a duplicate finds the live claim and
            stops. Recovery from a dead worker does not wait for it (see
            :mod:`hoist.tasks.records`).
    """

    broker_url: str
    state_url: str
    staging_root: str | None
    store_limit: int = 0
    max_retries: int = 8
    max_deliveries: int = 8
    lease_seconds: float = 30.0
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    wait_seconds: float = 0.5
    progress_seconds: float = 0.5
    visibility_timeout: int = 7200

    @classmethod
    def from_environment(cls) -> Settings:
        broker = os.environ.get("HOIST_BROKER_URL") or DEFAULT_BROKER_URL
        return cls(
            broker_url=broker,
            state_url=os.environ.get("HOIST_STATE_URL") or broker,
            staging_root=os.environ.get("HOIST_STAGING_DIR") or None,
            store_limit=_int("HOIST_STORE_LIMIT", 0),
            max_retries=_int("HOIST_MAX_RETRIES", 8),
            max_deliveries=_int("HOIST_MAX_DELIVERIES", 8),
            lease_seconds=_float("HOIST_LEASE_SECONDS", 30.0),
            backoff_base=_float("HOIST_BACKOFF_BASE", 1.0),
            backoff_max=_float("HOIST_BACKOFF_MAX", 300.0),
            wait_seconds=_float("HOIST_WAIT_SECONDS", 0.5),
            progress_seconds=_float("HOIST_PROGRESS_SECONDS", 0.5),
            visibility_timeout=_int("HOIST_VISIBILITY_TIMEOUT", 7200),
        )

    @property
    def lease_ms(self) -> int:
        return int(self.lease_seconds * 1000)
