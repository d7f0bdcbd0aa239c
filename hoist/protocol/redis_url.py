"""Every hoist Redis URL turned into a client the one way: ``redis://``, ``rediss://``, ``sentinel://``.

A ``sentinel://`` URL is Celery's form, so the broker and the records share
one URL::

    sentinel://[:PASSWORD@]HOST:PORT[;sentinel://[:PASSWORD@]HOST:PORT...][/DB][?master_name=NAME]

Each part names one sentinel. ``PASSWORD`` is the master's (as in Celery);
the sentinels' own password is ``HOIST_SENTINEL_PASSWORD`` and the master's
name ``HOIST_SENTINEL_MASTER`` unless ``master_name`` gives it
(:class:`~hoist.settings.SentinelSettings`). ``ssl_*`` parameters
(``ssl_cert_reqs=required``, ``ssl_ca_certs=PATH``...) make the connections
to the sentinels and to the master TLS, checked as a ``rediss://`` URL's are
(a Redis with ``tls-replication yes`` has its sentinels speak TLS too).

The records, leases and locks use redis-py's :class:`redis.sentinel.Sentinel`
(:func:`redis_client`); the broker uses kombu's Sentinel transport, which
takes :func:`kombu_url` and :func:`transport_options`. Both ask the sentinels
for the master again when a connection to it fails, so they follow a failover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import redis
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.connection import SSLConnection
from redis.retry import Retry
from redis.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
)

from hoist.errors import ConfigurationError
from hoist.protocol.urls import mask_url
from hoist.settings import SentinelSettings

SCHEMES = ("redis", "rediss", "sentinel")
"""The URL schemes hoist's Redis clients accept."""

SENTINEL_PORT = 26379
"""A sentinel's port when a part of the URL gives none."""

CLIENT_OPTIONS: dict[str, Any] = {
    "decode_responses": True,
    "socket_timeout": 10,
    "socket_connect_timeout": 5,
    "health_check_interval": 30,
    "retry_on_timeout": True,
}
"""What the records' client is built with: timeouts that fit a shared server."""

FAILOVER_RETRIES = 20
"""How often one command through Sentinel is tried again while no master answers: with
:data:`FAILOVER_BACKOFF`, for about 13 s."""

FAILOVER_BACKOFF = EqualJitterBackoff(cap=1.0, base=0.1)
"""0.05-0.1 s after the first failure, doubling to 0.5-1 s from the fifth."""

SENTINEL_TIMEOUTS = {"socket_timeout": 5, "socket_connect_timeout": 5}
"""Timeouts of the connections to the sentinels themselves: one that hangs must not
hold a command longer than asking the next would take."""

# No square brackets: the CLI prints messages through rich, which reads them as markup.
_SHAPE = "sentinel://:PASSWORD@HOST:PORT;sentinel://HOST:PORT;.../DB"


def is_sentinel(url: str) -> bool:
    """Whether ``url`` names Redis through its sentinels.

    Example:
        >>> is_sentinel("sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379/0")
        True
        >>> is_sentinel("redis://10.0.0.1:6379/0")
        False
    """
    return url.partition("://")[0].lower() == "sentinel"


@dataclass(frozen=True)
class SentinelTarget:
    """A ``sentinel://`` URL taken apart.

    Parameters:
        sentinels: each sentinel's host and port, in the URL's order.
        master: the name the sentinels know the master by.
        db: the database number.
        username, password: the master's login (the URL's), or None.
        options: the URL's other parameters (``ssl_*``), as redis-py takes them.
    """

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int
    username: str | None
    password: str | None
    options: dict[str, str]

    @property
    def tls(self) -> bool:
        """Whether the connections to the sentinels and the master use TLS."""
        return any(name.startswith("ssl_") for name in self.options)

    @property
    def tls_options(self) -> dict[str, str]:
        """The URL's ``ssl_*`` parameters, as redis-py takes them."""
        return {k: v for k, v in self.options.items() if k.startswith("ssl_")}


def parse_sentinel_url(url: str, settings: SentinelSettings | None = None) -> SentinelTarget:
    """Take a ``sentinel://`` URL apart; the DB and parameters may follow any part.

    Raises:
        ConfigurationError: the URL is not of the form above; one sentence on
            what to fix, without the password.

    Example:
        >>> t = parse_sentinel_url("sentinel://:pw@h1:26379;sentinel://h2:26380/2?master_name=m")
        >>> t.sentinels, t.master, t.db, t.password
        ((('h1', 26379), ('h2', 26380)), 'm', 2, 'pw')
        >>> parse_sentinel_url("sentinel://h1:26379/x")
        Traceback (most recent call last):
        ...
        hoist.errors.ConfigurationError: the sentinel URL sentinel://h1:26379/x has the database ...
    """
    settings = settings or SentinelSettings()
    shown = mask_url(url)
    sentinels: list[tuple[str, int]] = []
    dbs: set[str] = set()
    options: dict[str, str] = {}
    username = password = None
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        try:
            port = parts.port or SENTINEL_PORT
        except ValueError:
            port = -1
        if parts.scheme.lower() != "sentinel" or not parts.hostname or port < 0:
            raise ConfigurationError(
                f"the sentinel URL {shown} is not of the form {_SHAPE}; give each sentinel "
                "as sentinel://HOST:PORT, separated by ';'"
            )
        sentinels.append((parts.hostname, port))
        if parts.password is not None:
            username = unquote(parts.username) if parts.username else None
            password = unquote(parts.password)
        if parts.path.strip("/"):
            dbs.add(parts.path.strip("/"))
        options.update(parse_qsl(parts.query))
    if len(dbs) > 1 or not all(db.isdigit() for db in dbs):
        raise ConfigurationError(
            f"the sentinel URL {shown} has the database {' and '.join(sorted(dbs))}; give one "
            f"number, after the last sentinel ({_SHAPE})"
        )
    master = options.pop("master_name", "") or settings.master
    if not master:
        raise ConfigurationError(
            f"the sentinel URL {shown} names no master: set HOIST_SENTINEL_MASTER or add "
            "?master_name=NAME"
        )
    db = int(dbs.pop()) if dbs else 0
    return SentinelTarget(tuple(sentinels), master, db, username, password, options)


def check_url(url: str, settings: SentinelSettings | None = None) -> None:
    """Raise :class:`ConfigurationError` unless ``url`` is a Redis URL hoist can use.

    Example:
        >>> check_url("http://redis.lan:6379/0")
        Traceback (most recent call last):
        ...
        hoist.errors.ConfigurationError: the Redis URL http://redis.lan:6379/0 is not ...
    """
    scheme = url.partition("://")[0].lower()
    if scheme == "sentinel":
        parse_sentinel_url(url, settings)
    elif scheme not in SCHEMES:
        raise ConfigurationError(
            f"the Redis URL {mask_url(url)} is not redis://, rediss:// or sentinel://; "
            "give one of those"
        )


def redis_client(url: str, settings: SentinelSettings | None = None, **options: Any) -> redis.Redis:
    """A Redis client for any hoist URL; through Sentinel, one that follows the master.

    Parameters:
        url: ``redis://``, ``rediss://`` or ``sentinel://`` (see above).
        settings: the master's name and the sentinels' password (default: ``hoist``, none).
        options: redis-py client options (default :data:`CLIENT_OPTIONS`).

    Through Sentinel a command is retried (:data:`FAILOVER_RETRIES` times,
    about 13 s) while no master answers: a promotion takes
    the sentinels' ``down-after-milliseconds`` plus about a second, and a
    command that outlasts it raises ``redis.ConnectionError`` as for a Redis
    that is down.

    Raises:
        ConfigurationError: the URL is not one of these (:func:`check_url`).

    Example:
        >>> redis_client("sentinel://127.0.0.1:26379/0").connection_pool.service_name
        'hoist'
    """
    check_url(url, settings)
    kwargs = {**CLIENT_OPTIONS, **options}
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **kwargs)
    target = parse_sentinel_url(url, settings)
    settings = settings or SentinelSettings()
    # One try per sentinel and question: the master's client retries the whole.
    on_sentinels = {
        **SENTINEL_TIMEOUTS,
        "password": settings.password,
        "retry": Retry(NoBackoff(), 0),
    }
    kwargs.setdefault("retry", Retry(FAILOVER_BACKOFF, retries=FAILOVER_RETRIES))
    kwargs.pop("retry_on_timeout", None)  # redis-py 8 deprecates it; the Retry above covers it
    kwargs.setdefault("connection_class", _MasterSSLConnection if target.tls else _MasterConnection)
    if target.tls:  # Redis's tls-replication makes the sentinels speak TLS as the master does
        kwargs.update(target.tls_options)
        on_sentinels.update(ssl=True, **target.tls_options)
    sentinel = _Sentinel(mask_url(url), list(target.sentinels), sentinel_kwargs=on_sentinels)
    return sentinel.master_for(
        target.master,
        db=target.db,
        username=target.username,
        password=target.password,
        **kwargs,
    )


class _MasterConnection(SentinelManagedConnection):
    """redis-py's connection to a Sentinel-managed master, which asks for the master's
    address again whenever it reconnects.

    redis-py 8 reconnects a connection that lost its socket in the middle of a
    command (``send_packed_command``) with the address it last had, retrying
    that address for the whole retry budget; after a failover that is the dead
    master (measured once in tests/test_sentinel.py: a worker's command stuck
    13 s). Here every reconnection asks the sentinels first, and each try of
    the client's retry policy asks them again.
    """

    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if not self._sock and self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
            retry_socket_connect = False
        super().connect_check_health(
            check_health=check_health, retry_socket_connect=retry_socket_connect
        )


class _MasterSSLConnection(_MasterConnection, SSLConnection):
    """:class:`_MasterConnection` over TLS."""


class _Sentinel(Sentinel):
    """redis-py's Sentinel, which stops on a refused password or an unknown master name.

    redis-py reports both as "no master found", a connection error that the
    client retries like a failover in progress; neither heals, so each is a
    :class:`ConfigurationError` (not retried) saying what to set.
    """

    def __init__(self, shown: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shown = shown

    def discover_master(self, service_name: str) -> Any:
        try:
            return super().discover_master(service_name)
        except MasterNotFoundError as exc:
            refused = str(exc).count("AuthenticationError")
            if refused and refused >= len(self.sentinels):
                raise ConfigurationError(
                    f"the sentinels of {self.shown} refused the password: set "
                    "HOIST_SENTINEL_PASSWORD to the sentinels' own (their requirepass; the URL's "
                    "password is the master's)"
                ) from None
            if self._nobody_knows(service_name):
                raise ConfigurationError(
                    f"the sentinels of {self.shown} monitor no master named {service_name!r}: "
                    "set HOIST_SENTINEL_MASTER (or ?master_name=) to the name of their "
                    "`sentinel monitor` line"
                ) from None
            raise

    def _nobody_knows(self, service_name: str) -> bool:
        """Every sentinel answered, and none monitors ``service_name`` (during a
        failover they all still list it)."""
        try:
            return all(service_name not in s.sentinel_masters() for s in self.sentinels)
        except redis.RedisError:
            return False


def master_address(client: redis.Redis) -> tuple[str, int] | None:
    """Where a Sentinel client last found its master; None for any other client.

    No round trip: redis-py notes the address whenever it (re)connects, so a
    change means the client followed a failover.
    """
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        address = pool.master_address
        return None if address is None else (str(address[0]), int(address[1]))
    return None


def kombu_url(url: str, settings: SentinelSettings | None = None) -> str:
    """``url`` as kombu reads it: for Sentinel, the DB on every part and no ``master_name``.

    kombu takes the database and the master's password from the first part
    only and passes every parameter as a connection argument (``master_name``
    makes it fail), so hoist hands it the master's name in
    :func:`transport_options` instead. The password is on the first part
    only: kombu and Celery mask the first part's when they show the URL
    (Flower, ``celery inspect conf``), not the others'.

    Example:
        >>> kombu_url("sentinel://h1:26379;sentinel://:pw@h2:26379/2?master_name=m")
        'sentinel://:pw@h1:26379/2;sentinel://h2:26379/2'
        >>> kombu_url("redis://h1:6379/0")
        'redis://h1:6379/0'
    """
    if not is_sentinel(url):
        return url
    target = parse_sentinel_url(url, settings)
    query = urlencode(target.options)
    login = ""
    if target.password is not None:
        login = f"{quote(target.username or '', safe='')}:{quote(target.password, safe='')}@"
    parts = []
    for index, (host, port) in enumerate(target.sentinels):
        shown_host = f"[{host}]" if ":" in host else host
        parts.append(
            f"sentinel://{login if index == 0 else ''}{shown_host}:{port}/{target.db}"
            + (f"?{query}" if query else "")
        )
    return ";".join(parts)


def transport_options(url: str, settings: SentinelSettings | None = None) -> dict[str, Any]:
    """What kombu's (and Celery's result backend's) Sentinel transport needs; {} otherwise.

    Example:
        >>> transport_options("sentinel://h1:26379/0?master_name=m")
        {'master_name': 'm'}
        >>> transport_options("sentinel://h1:26379/0", SentinelSettings("m", "pw"))["master_name"]
        'm'
        >>> transport_options("redis://h1:6379/0")
        {}
    """
    if not is_sentinel(url):
        return {}
    settings = settings or SentinelSettings()
    target = parse_sentinel_url(url, settings)
    options: dict[str, Any] = {"master_name": target.master}
    if settings.password or target.tls:
        # Without sentinel_kwargs kombu gives the sentinels the master's timeouts
        # (and no TLS); with them, only what they say.
        on_sentinels = ShownMasked(SENTINEL_TIMEOUTS)
        if settings.password:
            on_sentinels["password"] = settings.password
        if target.tls:
            on_sentinels.update(ssl=True, **target.tls_options)
        options["sentinel_kwargs"] = on_sentinels
    return options


class ShownMasked(dict[str, Any]):
    """Connection options whose password is real where they are used and masked where shown.

    kombu and Celery's result backend take the sentinels' password from the
    broker's transport options, and a worker's ``stats`` reply (Flower's
    worker page, ``celery inspect stats``) shows those options as they are.
    redis-py, kombu and Flower read them by unpacking (``**options``,
    ``dict(options)``), which takes the stored values; JSON, ``repr`` and
    ``items()`` show ``****`` for the password instead.

    Example:
        >>> import json
        >>> shown = ShownMasked(password="s3cret", socket_timeout=5)
        >>> shown, dict(shown)["password"]
        ({'password': '****', 'socket_timeout': 5}, 's3cret')
        >>> json.dumps(shown)
        '{"password": "****", "socket_timeout": 5}'
    """

    def items(self) -> Any:
        return {k: ("****" if k == "password" else v) for k, v in dict(self).items()}.items()

    def __repr__(self) -> str:
        return repr(dict(self.items()))

    def __reduce__(self) -> Any:
        # Copies and pickles (a forked or spawned worker) keep the real values.
        return (type(self), (dict(self),))

    def __deepcopy__(self, memo: Any) -> ShownMasked:
        return type(self)(dict(self))
