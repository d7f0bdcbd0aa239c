"""The Redis broker transport hoist's Celery app uses: kombu's, with two repairs and a boundary.

**Redis restarts.** Measured with celery 5.7.0 and kombu 5.7.0
(``tests/test_faults_fleet.py``, the Redis restart test): when Redis goes
away while a worker holds an unacknowledged message (any upload in flight,
with ``acks_late``), the consumer first *collects* the broken connection,
which detaches the transport from its connection (``transport.client =
None``), then *closes* it. Closing the channel tries to hand the
unacknowledged messages back (``restore_unacked``), which builds a Redis
client from ``transport.client``, which is now None: ``AttributeError``.
Celery only ignores connection errors there, so it treats the
``AttributeError`` as unrecoverable and the worker process exits
("Unrecoverable error: AttributeError(\"'NoneType' object has no attribute
'hostname'\")"). A Redis restart then takes the whole fleet down.

:class:`RedisTransport` turns that case into what it is, a connection error
(Redis cannot be reached through a connection that is gone), so Celery
carries on reconnecting. Nothing is lost by not restoring at that moment:
the messages stay in kombu's unacknowledged set in Redis, and hoist's own
records resend every claimed artifact within about two lease times (see
:mod:`hoist.state.schedule`).

**The boundary.** Every message a worker takes off Redis passes
:func:`hoist.protocol.boundary.admit` on the raw bytes Redis returned, before
kombu adds it to the unacknowledged set and before kombu or Celery decode
it. A refused message is dropped: ``BRPOP`` (or ``RPOP``) already took it
off its list and it never enters the unacknowledged set, so nothing
requeues it; one ERROR line on ``hoist.worker`` says what and why. A rank's
own message is never that large or deep; were one refused, its record
stays ``queued`` and the workers' watchdog sends it again after
``queued_timeout``.

**Sentinel.** A ``sentinel://`` broker URL gets :class:`SentinelTransport`:
kombu's Sentinel channel, which asks the sentinels for the master whenever it
builds its connection pool, with the same repairs and the same boundary
(:class:`AdmittingChannel`, one class for both). What kombu needs from the
URL and the settings is :mod:`hoist.protocol.redis_url`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str

from hoist.errors import InvalidMessageError
from hoist.protocol.boundary import admit, refusal_line

TRANSPORT = "hoist.protocol.broker:RedisTransport"
"""What workers and ranks give Celery as ``broker_transport`` for Redis URLs."""

SENTINEL_TRANSPORT = "hoist.protocol.broker:SentinelTransport"
"""The same for ``sentinel://`` URLs: kombu's Sentinel transport with the same channel code."""

log = logging.getLogger("hoist.worker")


class AdmittingChannel(kombu_redis.Channel):
    """What hoist adds to a kombu Redis channel: it reports a detached transport as a
    connection error, publishes through one client, and lets through only what
    :func:`admit` admits.

    A mixin: :class:`RedisChannel` puts it over kombu's plain Redis channel and
    :class:`SentinelChannel` over kombu's Sentinel channel, which differs only
    in how it finds the server (it asks the sentinels for the master when it
    builds its connection pool), so both admit exactly the same messages.

    kombu builds a new ``redis.Redis`` for every message it publishes; with
    redis-py 8 that construction cost 0.35 ms, a third of a rank's
    ``file_artifact`` for a small file (profiled). The client is only a
    handle on the channel's connection pool, so one is kept per pool.

    Messages arrive three ways, each checked where the raw bytes are in
    hand: ``BRPOP`` (a worker's task queues, :meth:`_brpop_read`), ``RPOP``
    (``basic_get``, :meth:`_get`) and pub/sub (the broadcast remote-control
    mailbox, :meth:`_handle_message`).
    """

    _publish_client: Any = None
    _decoded: tuple[str, bytes] | None = None
    """The last admitted body and its base64 undone, for :meth:`decode_body`."""

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

    def _admitted(self, raw: bytes, source: str) -> dict[str, Any] | None:
        """The envelope of ``raw`` if admitted; else None, with the refusal logged."""
        try:
            envelope, body = admit(raw)
            if body is not None:
                self._decoded = (envelope["body"], body)
            return envelope
        except InvalidMessageError as exc:
            reason = str(exc)
        except Exception as exc:
            # An exception here would end the worker's main process (Celery
            # treats it as unrecoverable), and the message is already gone.
            reason = f"it could not be checked ({type(exc).__name__}: {exc})"[:300]
        log.error("%s", refusal_line(raw, source, reason))
        return None

    def decode_body(self, body: Any, encoding: Any = None) -> Any:
        # kombu decodes the body of the message just delivered: the base64
        # was undone once already, to check the body's depth (0.2 ms for a batch).
        cached, self._decoded = self._decoded, None
        if cached is not None and cached[0] is body:
            return cached[1]
        return super().decode_body(body, encoding)

    def _brpop_read(self, **options: Any) -> bool:
        # kombu 5.7.0's, with the check between reading and delivering:
        # delivering adds the message to the unacknowledged set and decodes it.
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                # if there's a ConnectionError, disconnect so the next
                # iteration will reconnect automatically.
                self.client.connection.disconnect()
                raise
            if dest__item:
                dest, item = dest__item
                dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
                self._queue_cycle.rotate(dest)
                envelope = self._admitted(item, dest)
                if envelope is not None:
                    self.connection._deliver(envelope, dest)
                return True
            else:
                raise Empty()
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu does
            # kombu 5.7 re-authenticates streaming credentials here; 5.6
            # (what pip picks beside Composer's pins) has no such step.
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _get(self, queue: str, timeout: Any = None) -> dict[str, Any]:
        # kombu 5.7.0's, with the check; a refused message counts as none.
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))
                if item:
                    self._maybe_update_queues_expire(client, queue)
                    envelope = self._admitted(item, queue)
                    if envelope is None:
                        raise Empty()
                    return envelope
            self._maybe_update_queues_expire(client, queue)
            raise Empty()

    def _handle_message(self, client: Any, r: Any) -> dict[str, Any]:
        payload: dict[str, Any] = super()._handle_message(client, r)
        # kombu skips a pub/sub message whose data is empty; a refused one is made so.
        if bytes_to_str(payload["type"]).endswith("message") and payload["data"]:
            channel = bytes_to_str(payload["channel"])
            if self._admitted(payload["data"], channel) is None:
                payload["data"] = None
        return payload


class RedisChannel(AdmittingChannel):
    """kombu's Redis channel with :class:`AdmittingChannel`'s repairs and boundary."""


class SentinelChannel(AdmittingChannel, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel with :class:`AdmittingChannel`'s repairs and boundary.

    kombu's Sentinel channel subclasses its Redis channel, so the mixin comes
    first: its methods are found before kombu's, and kombu's Sentinel pool
    (``_get_pool``) before the plain one.
    """


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`RedisChannel`."""

    Channel = RedisChannel


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with :class:`SentinelChannel`."""

    Channel = SentinelChannel


def transport_for(broker_url: str) -> str | None:
    """The transport for ``broker_url``: ours for Redis and Sentinel URLs, else None
    (kombu chooses).

    Example:
        >>> transport_for("sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379/0")
        'hoist.protocol.broker:SentinelTransport'
    """
    scheme = broker_url.partition("://")[0].lower()
    if scheme == "sentinel":
        return SENTINEL_TRANSPORT
    return TRANSPORT if scheme in ("redis", "rediss") else None
