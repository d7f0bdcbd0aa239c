"""Every ``HOIST_*`` variable in one place, and the settings each side resolves from them once.

:data:`VARIABLES` lists each variable with its type, default, unit and one
line of doc; docs/operations.md carries the same table (made by
:func:`settings_table`, checked by the suite). Three frozen models are read
from it, each once, at an edge of the program:

- :class:`RankSettings`: in :class:`~hoist.ObjectStoreLogger`'s constructor;
  explicit arguments win over them.
- :class:`WorkerSettings`: when ``hoist worker`` starts; its options win.
- :class:`CommandSettings`: in the CLI, after ``<home>/env`` is applied.

Below the edges nothing reads the environment: settings are passed down.
A bad value is a :class:`~hoist.errors.ConfigurationError` naming the
variable, raised by ``from_environment``, never on ``import hoist``.

Example:
    >>> WorkerSettings.from_environment({"HOIST_BROKER_URL": "redis://redis.lan:6379/0"}).state_url
    'redis://redis.lan:6379/0'
    >>> WorkerSettings.from_environment({"HOIST_MAX_RETRIES": "three"})
    Traceback (most recent call last):
    ...
    hoist.errors.ConfigurationError: HOIST_MAX_RETRIES='three' is not a whole number
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hoist.errors import ConfigurationError
from hoist.keys import FLEET_KEY_ENV, FleetKeys
from hoist.stores.allowed import ALLOWED_STORES_ENV, AllowedStores

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
"""Where ranks and workers look for Redis when ``HOIST_BROKER_URL`` is unset."""


def _flag(raw: str) -> bool:
    return raw not in ("", "0")


def _words(raw: str) -> tuple[str, ...]:
    return tuple(raw.split())


_UNIT_WORDS = {"s": "seconds"}

_MEANING: dict[Callable[[str], Any], str] = {
    int: "a whole number",
    float: "a number",
}


@dataclass(frozen=True)
class Variable:
    """One ``HOIST_*`` environment variable.

    Parameters:
        name: the variable.
        parse: turns its text into the value (raising ValueError when it cannot).
        default: the value when unset or empty; shown in the table as ``shown``.
        unit: seconds, days, ... or "" when it has none.
        read_by: who reads it: ranks, workers, the CLI, Flower.
        doc: one line on what it does.
        secret: its value is never shown.
    """

    name: str
    parse: Callable[[str], Any]
    default: Any
    unit: str
    read_by: str
    doc: str
    shown: str = ""
    secret: bool = False

    def read(self, environ: Mapping[str, str]) -> Any:
        """The value in ``environ``, or the default when unset or empty.

        Raises:
            ConfigurationError: the text does not parse; names the variable.
        """
        raw = environ.get(self.name, "")
        if raw == "":
            return self.default
        try:
            return self.parse(raw)
        except ValueError as exc:
            shown = "(hidden)" if self.secret else repr(raw)
            meaning = _MEANING.get(self.parse)
            if meaning and self.unit in ("s", "days"):
                meaning += f" of {_UNIT_WORDS.get(self.unit, self.unit)}"
            reason = f"is not {meaning}" if meaning else f"is not valid: {exc}"
            raise ConfigurationError(f"{self.name}={shown} {reason}") from None


RANKS, WORKERS, CLI, ALL = "ranks", "workers", "CLI", "ranks, workers, CLI"

VARIABLES: tuple[Variable, ...] = (
    Variable("HOIST_BROKER_URL", str, None, "", ALL,
             "the Redis broker (redis://, rediss://, sentinel://)", shown=DEFAULT_BROKER_URL),
    Variable("HOIST_STATE_URL", str, None, "", ALL,
             "the Redis holding artifact records", shown="the broker"),
    Variable("HOIST_SENTINEL_MASTER", str, "hoist", "", ALL,
             "the master's name for sentinel:// URLs (a `master_name` parameter wins)"),
    Variable("HOIST_SENTINEL_PASSWORD", str, None, "", ALL,
             "Sentinel's own password, for sentinel:// URLs", shown="none", secret=True),
    Variable("HOIST_STAGING_DIR", str, None, "", f"{RANKS}, {WORKERS}",
             "the staging root ranks write to and workers read from", shown="none"),
    Variable(FLEET_KEY_ENV, FleetKeys.parse, None, "", ALL,
             "fleet keys, newest first, comma-separated (`hoist keygen`)", shown="none",
             secret=True),
    Variable("HOIST_RUN_NAME", str, None, "", RANKS,
             "the run's name when the logger is given none", shown="generated"),
    Variable("HOIST_NODE_QUEUE", str, None, "", f"{RANKS}, {WORKERS}",
             "this node's upload queue, for node-local staging", shown="none"),
    Variable("HOIST_ENQUEUE_TIMEOUT", float, 30.0, "s", RANKS,
             "how long a rank retries an unreachable Redis before raising"),
    Variable("HOIST_MAX_STAGED_BYTES", int, 0, "bytes", RANKS,
             "bytes a rank may keep in staging before a call waits; 0 for no bound"),
    Variable("HOIST_RETENTION_DAYS", float, 14.0, "days", ALL,
             "how long finished records are kept"),
    Variable(ALLOWED_STORES_ENV, _words, (), "", WORKERS,
             "space-separated store URIs the fleet may upload to", shown="none"),
    Variable("HOIST_ALLOW_ANY_STORE", _flag, False, "", WORKERS,
             "1: upload wherever a signed message says", shown="0"),
    Variable("HOIST_INSECURE_UNSIGNED", _flag, False, "", WORKERS,
             "1: accept unsigned messages when there is no fleet key", shown="0"),
    Variable("HOIST_STORE_LIMIT", int, 0, "uploads", WORKERS,
             "uploads to one store at once, fleet-wide; 0 for no limit"),
    Variable("HOIST_SHARED_BACKOFF", _flag, True, "", WORKERS,
             "0: a throttling store lowers no fleet-wide ceiling, each worker backs off alone",
             shown="1"),
    Variable("HOIST_MAX_RETRIES", int, 8, "attempts", WORKERS,
             "attempts after transient errors before an upload fails"),
    Variable("HOIST_MAX_DELIVERIES", int, 8, "deliveries", WORKERS,
             "deliveries without an outcome before an artifact fails"),
    Variable("HOIST_LEASE_SECONDS", float, 30.0, "s", WORKERS,
             "how long a claim or lease lives without a heartbeat"),
    Variable("HOIST_BACKOFF_BASE", float, 1.0, "s", WORKERS,
             "first retry's delay; it doubles each retry"),
    Variable("HOIST_BACKOFF_MAX", float, 300.0, "s", WORKERS,
             "longest delay between retries"),
    Variable("HOIST_WAIT_SECONDS", float, 0.5, "s", WORKERS,
             "how soon an upload held back by a limit is tried again"),
    Variable("HOIST_PROGRESS_SECONDS", float, 0.5, "s", WORKERS,
             "how often an upload in flight reports its bytes"),
    Variable("HOIST_VISIBILITY_TIMEOUT", int, 7200, "s", WORKERS,
             "before the broker hands an unacknowledged message to another worker"),
    Variable("HOIST_QUEUED_TIMEOUT", float, 300.0, "s", WORKERS,
             "how long an artifact may stay queued before it is sent again"),
    Variable("HOIST_STORE_URI", str, None, "", f"{RANKS}, {CLI}",
             "the store of a logger given none, and of `hoist download` and `hoist demo`",
             shown="none"),
    Variable("HOIST_SFTP_PASSWORD", str, None, "", CLI,
             "the password of an sftp:// store URI", shown="none", secret=True),
    Variable("HOIST_HOME", str, None, "", CLI,
             "the embedded cluster's folder (`--home`)", shown="nearest .hoist upward"),
    Variable("HOIST_FLOWER_URL", str, None, "", CLI,
             "Flower's address, for the demo's summary", shown="none"),
    Variable("HOIST_FLOWER_USER", str, None, "", "Flower",
             "Flower's login (with HOIST_FLOWER_PASSWORD)", shown="none"),
    Variable("HOIST_FLOWER_PASSWORD", str, None, "", "Flower",
             "Flower's password", shown="none", secret=True),
)  # fmt: skip
"""Every variable hoist reads, in the order of docs/operations.md's table."""

BY_NAME: dict[str, Variable] = {variable.name: variable for variable in VARIABLES}


def environment(environ: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """``environ``, else the process's: the one reader of ``os.environ`` in the library
    (``HOIST_*``, ``RANK``, ``SLURM_*``; checked by tests/test_structure.py)."""
    return os.environ if environ is None else environ


def read(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The value of one variable (see :data:`VARIABLES`); ``environ`` defaults to the process's.

    Example:
        >>> read("HOIST_LEASE_SECONDS", {"HOIST_LEASE_SECONDS": "12.5"})
        12.5
        >>> read("HOIST_STORE_LIMIT", {})
        0
    """
    return BY_NAME[name].read(environment(environ))


def broker_url(environ: Mapping[str, str] | None = None) -> str:
    """``HOIST_BROKER_URL``, else :data:`DEFAULT_BROKER_URL`.

    Example:
        >>> broker_url({})
        'redis://127.0.0.1:6379/0'
    """
    return configured_broker_url(environ) or DEFAULT_BROKER_URL


def configured_broker_url(environ: Mapping[str, str] | None = None) -> str | None:
    """``HOIST_BROKER_URL``, or None when unset (the CLI then looks for a cluster)."""
    value: str | None = read("HOIST_BROKER_URL", environ)
    return value


def state_url(environ: Mapping[str, str] | None = None, broker: str | None = None) -> str:
    """``HOIST_STATE_URL``, else the broker (``broker``, else :func:`broker_url`).

    Example:
        >>> state_url({"HOIST_BROKER_URL": "redis://redis.lan:6379/0"})
        'redis://redis.lan:6379/0'
    """
    return read("HOIST_STATE_URL", environ) or broker or broker_url(environ)


def retention_seconds(days: float) -> int:
    """Retention in days as whole seconds, at least one.

    Example:
        >>> retention_seconds(14)
        1209600
    """
    return max(1, int(days * 86400))


@dataclass(frozen=True)
class SentinelSettings:
    """How a ``sentinel://`` URL is followed (:mod:`hoist.protocol.redis_url`).

    Parameters:
        master: ``HOIST_SENTINEL_MASTER``: the name the sentinels monitor the
            master by; a URL's ``master_name`` parameter wins.
        password: ``HOIST_SENTINEL_PASSWORD``: the sentinels' own password
            (the URL's password is the master's), or None.
    """

    master: str = "hoist"
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SentinelSettings:
        env = environment(environ)
        return cls(read("HOIST_SENTINEL_MASTER", env), read("HOIST_SENTINEL_PASSWORD", env))


@dataclass(frozen=True)
class RankSettings:
    """What a rank's logger takes from the environment.

    Parameters:
        broker_url: ``HOIST_BROKER_URL``.
        state_url: ``HOIST_STATE_URL``, or None for the broker the logger uses.
        staging_dir: ``HOIST_STAGING_DIR``, or None.
        keys: ``HOIST_FLEET_KEY``, or None.
        run_name: ``HOIST_RUN_NAME``, or None.
        node_queue: ``HOIST_NODE_QUEUE``, or None.
        enqueue_timeout: ``HOIST_ENQUEUE_TIMEOUT``, seconds.
        retention_seconds: ``HOIST_RETENTION_DAYS``, in seconds.
        store_uri: ``HOIST_STORE_URI``, the store of a logger given no store
            arguments (``hoist up`` writes its embedded store there), or None.
        max_staged_bytes: ``HOIST_MAX_STAGED_BYTES``; 0 for no bound.
        sentinel: ``HOIST_SENTINEL_MASTER`` and ``HOIST_SENTINEL_PASSWORD``.
    """

    broker_url: str = DEFAULT_BROKER_URL
    state_url: str | None = None
    staging_dir: str | None = None
    keys: FleetKeys | None = None
    run_name: str | None = None
    node_queue: str | None = None
    enqueue_timeout: float = 30.0
    retention_seconds: int = retention_seconds(14.0)
    store_uri: str | None = None
    max_staged_bytes: int = 0
    sentinel: SentinelSettings = field(default_factory=SentinelSettings)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> RankSettings:
        env = environment(environ)
        broker = broker_url(env)
        timeout = read("HOIST_ENQUEUE_TIMEOUT", env)
        if timeout <= 0:
            raise ConfigurationError(f"HOIST_ENQUEUE_TIMEOUT={timeout!r} must be positive")
        return cls(
            broker_url=broker,
            state_url=read("HOIST_STATE_URL", env),
            staging_dir=read("HOIST_STAGING_DIR", env),
            keys=read(FLEET_KEY_ENV, env),
            run_name=read("HOIST_RUN_NAME", env),
            node_queue=read("HOIST_NODE_QUEUE", env),
            enqueue_timeout=timeout,
            retention_seconds=retention_seconds(read("HOIST_RETENTION_DAYS", env)),
            store_uri=read("HOIST_STORE_URI", env),
            max_staged_bytes=read("HOIST_MAX_STAGED_BYTES", env),
            sentinel=SentinelSettings.from_environment(env),
        )


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker runs with (``hoist worker`` resolves them from its options and environment).

    Parameters:
        broker_url: the Celery broker (``HOIST_BROKER_URL``).
        state_url: the Redis holding artifact records (``HOIST_STATE_URL``,
            default: the broker).
        staging_root: the only directory workers read from (``HOIST_STAGING_DIR``).
        store_limit: uploads to one store at once, fleet-wide; 0 for none
            (``HOIST_STORE_LIMIT``).
        shared_backoff: a store that throttles gets a fleet-wide ceiling
            (:mod:`hoist.state.throttle`; ``HOIST_SHARED_BACKOFF``).
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
            :mod:`hoist.state.schedule`).
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
        retention_seconds: how long finished records are kept
            (``HOIST_RETENTION_DAYS``, in seconds).
        node_queue: ``HOIST_NODE_QUEUE``, or None.
        state_url_apart: ``HOIST_STATE_URL`` was set, so ``--broker-url``
            does not move the records with the broker.
        sentinel: ``HOIST_SENTINEL_MASTER`` and ``HOIST_SENTINEL_PASSWORD``.
    """

    broker_url: str = DEFAULT_BROKER_URL
    state_url: str = DEFAULT_BROKER_URL
    staging_root: str | None = None
    store_limit: int = 0
    shared_backoff: bool = True
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
    retention_seconds: int = retention_seconds(14.0)
    node_queue: str | None = None
    state_url_apart: bool = False
    sentinel: SentinelSettings = field(default_factory=SentinelSettings)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        env = environment(environ)
        broker = broker_url(env)
        return cls(
            broker_url=broker,
            state_url=state_url(env, broker),
            node_queue=read("HOIST_NODE_QUEUE", env),
            state_url_apart=read("HOIST_STATE_URL", env) is not None,
            staging_root=read("HOIST_STAGING_DIR", env),
            store_limit=read("HOIST_STORE_LIMIT", env),
            shared_backoff=read("HOIST_SHARED_BACKOFF", env),
            max_retries=read("HOIST_MAX_RETRIES", env),
            max_deliveries=read("HOIST_MAX_DELIVERIES", env),
            lease_seconds=read("HOIST_LEASE_SECONDS", env),
            backoff_base=read("HOIST_BACKOFF_BASE", env),
            backoff_max=read("HOIST_BACKOFF_MAX", env),
            wait_seconds=read("HOIST_WAIT_SECONDS", env),
            progress_seconds=read("HOIST_PROGRESS_SECONDS", env),
            visibility_timeout=read("HOIST_VISIBILITY_TIMEOUT", env),
            queued_timeout=read("HOIST_QUEUED_TIMEOUT", env),
            keys=read(FLEET_KEY_ENV, env),
            insecure_unsigned=read("HOIST_INSECURE_UNSIGNED", env),
            allowed=AllowedStores.parse(
                list(read(ALLOWED_STORES_ENV, env)), read("HOIST_ALLOW_ANY_STORE", env)
            ),
            retention_seconds=retention_seconds(read("HOIST_RETENTION_DAYS", env)),
            sentinel=SentinelSettings.from_environment(env),
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


@dataclass(frozen=True)
class CommandSettings:
    """What the CLI's commands take from the environment (after ``<home>/env`` is applied).

    Parameters:
        broker_url: ``HOIST_BROKER_URL``, or None: the commands that inspect a
            cluster then say none was found rather than read an empty local Redis.
        state_url: ``HOIST_STATE_URL``, else the broker, or None.
        staging_dir: ``HOIST_STAGING_DIR``, or None.
        keys: ``HOIST_FLEET_KEY``, or None.
        store_uri: ``HOIST_STORE_URI``, or None.
        sftp_password: ``HOIST_SFTP_PASSWORD``, or None.
        flower_url: ``HOIST_FLOWER_URL``, or None.
        flower_user, flower_password: Flower's login, or None.
        retention_seconds: ``HOIST_RETENTION_DAYS``, in seconds (``hoist retry``
            writes records).
        sentinel: ``HOIST_SENTINEL_MASTER`` and ``HOIST_SENTINEL_PASSWORD``.
    """

    broker_url: str | None = None
    state_url: str | None = None
    staging_dir: str | None = None
    keys: FleetKeys | None = None
    store_uri: str | None = None
    sftp_password: str | None = field(default=None, repr=False)
    flower_url: str | None = None
    flower_user: str | None = None
    flower_password: str | None = field(default=None, repr=False)
    retention_seconds: int = retention_seconds(14.0)
    sentinel: SentinelSettings = field(default_factory=SentinelSettings)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> CommandSettings:
        env = environment(environ)
        broker = configured_broker_url(env)
        return cls(
            broker_url=broker,
            state_url=read("HOIST_STATE_URL", env) or broker,
            staging_dir=read("HOIST_STAGING_DIR", env),
            keys=read(FLEET_KEY_ENV, env),
            store_uri=read("HOIST_STORE_URI", env),
            sftp_password=read("HOIST_SFTP_PASSWORD", env),
            flower_url=read("HOIST_FLOWER_URL", env),
            flower_user=read("HOIST_FLOWER_USER", env),
            flower_password=read("HOIST_FLOWER_PASSWORD", env),
            retention_seconds=retention_seconds(read("HOIST_RETENTION_DAYS", env)),
            sentinel=SentinelSettings.from_environment(env),
        )


def settings_table() -> str:
    """docs/operations.md's table of every variable, as Markdown.

    Example:
        >>> settings_table().splitlines()[0]
        '| variable | default | unit | read by | what it does |'
    """
    lines = ["| variable | default | unit | read by | what it does |", "|---|---|---|---|---|"]
    for variable in VARIABLES:
        default = variable.shown or _shown(variable.default)
        lines.append(
            f"| `{variable.name}` | {default} | {variable.unit} | {variable.read_by} "
            f"| {variable.doc} |"
        )
    return "\n".join(lines)


def _shown(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
