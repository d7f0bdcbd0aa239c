"""What a worker is told by its environment (``hoist worker`` sets these from its options)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hoist.errors import ConfigurationError
from hoist.keys import FleetKeys
from hoist.stores.allowed import ALLOWED_STORES_ENV, AllowedStores

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


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


@dataclass(frozen=True)
class WorkerSettings:
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
            :mod:`hoist.state.records`).
        queued_timeout: seconds an artifact may stay queued (sent, never
            claimed by any worker) before it is sent again
            (``HOIST_QUEUED_TIMEOUT``). It bounds the delay of a message the
            broker lost; each queued artifact gets at most one extra copy per
            period while the queue is long, and copies are harmless.
        keys: the fleet keys (``HOIST_FLEET_KEY``, newest first): messages
            must be signed with one, seals opened with one.
        insecure_unsigned: accept unsigned messages (``--insecure-unsigned``,
            ``HOIST_INSECURE_UNSIGNED=1``); for a fleet nobody else can reach.
        allowed: the stores this fleet uploads to (``--allow-store``,
            ``HOIST_ALLOWED_STORES``; ``--allow-any-store``,
            ``HOIST_ALLOW_ANY_STORE=1``).
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
    queued_timeout: float = 300.0
    keys: FleetKeys | None = None
    insecure_unsigned: bool = False
    allowed: AllowedStores = field(default_factory=AllowedStores)

    @classmethod
    def from_environment(cls) -> WorkerSettings:
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
            queued_timeout=_float("HOIST_QUEUED_TIMEOUT", 300.0),
            keys=FleetKeys.from_environment(),
            insecure_unsigned=_flag("HOIST_INSECURE_UNSIGNED"),
            allowed=AllowedStores.parse(
                os.environ.get(ALLOWED_STORES_ENV, "").split(), _flag("HOIST_ALLOW_ANY_STORE")
            ),
        )

    def startup_refusal(self) -> str | None:
        """Why a worker with these settings must not start, or None.

        A worker that checks nothing would act on anything written to the
        broker, so both defences are on unless explicitly turned off.
        """
        if self.keys is None and not self.insecure_unsigned:
            return (
                "the worker has no fleet key, so it cannot tell a rank's messages from forged "
                "ones: set HOIST_FLEET_KEY to the ranks' key (`hoist keygen` makes one), or "
                "start it with --insecure-unsigned on a broker nobody else can write to"
            )
        if not self.allowed.configured:
            return (
                "the worker has no list of stores it may upload to: give each with "
                "--allow-store URI (or HOIST_ALLOWED_STORES), or start it with --allow-any-store"
            )
        return None

    @property
    def lease_ms(self) -> int:
        return int(self.lease_seconds * 1000)
