"""The Redis broker transport hoist's Celery app uses: kombu's, with one repair.

Measured with celery 5.7.0 and kombu 5.7.0 (``tests/test_faults_fleet.py``,
the Redis restart test): when Redis goes away while a worker holds an
unacknowledged message (any upload in flight, with ``acks_late``), the
consumer first *collects* the broken connection, which detaches the
transport from its connection (``transport.client = None``), then *closes*
it. Closing the channel tries to hand the unacknowledged messages back
(``restore_unacked``), which builds a Redis client from
``transport.client``, which is now None: ``AttributeError``. Celery only
ignores connection errors there, so it treats the ``AttributeError`` as
unrecoverable and the worker process exits ("Unrecoverable error:
AttributeError(\"'NoneType' object has no attribute 'hostname'\")"). A
Redis restart then takes the whole fleet down.

:class:`RedisTransport` turns that case into what it is, a connection error
(Redis cannot be reached through a connection that is gone), so Celery
carries on reconnecting. Nothing is lost by not restoring at that moment:
the messages stay in kombu's unacknowledged set in Redis, and hoist's own
records resend every claimed artifact within about two lease times (see
:mod:`hoist.tasks.records`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

TRANSPORT = "hoist.tasks.broker:RedisTransport"
"""What workers and ranks give Celery as ``broker_transport`` for Redis URLs."""


class RedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, which reports a detached transport as a connection error
    and publishes through one client.

    kombu builds a new ``redis.Redis`` for every message it publishes; with
    redis-py 8 that construction cost 0.35 ms, a third of a rank's
    ``file_artifact`` for a small file (profiled). The client is only a
    handle on the channel's connection pool, so one is kept per pool.
    """

    _publish_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        cached = self._publish_client
        if cached is None or cached.connection_pool is not self.pool:
            cached = self._publish_client = self._create_client()
        yield cached

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.ConnectionError(
                "the broker connection was already closed after a connection loss"
            )
        return super()._connparams(asynchronous=asynchronous)


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`RedisChannel`."""

    Channel = RedisChannel


def transport_for(broker_url: str) -> str | None:
    """The transport for ``broker_url``: ours for Redis URLs, else None (kombu chooses)."""
    scheme = broker_url.partition("://")[0].lower()
    return TRANSPORT if scheme in ("redis", "rediss") else None
