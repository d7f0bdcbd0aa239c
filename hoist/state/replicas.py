"""A record write that a replica holds before the call returns: ``WAIT`` after the write.

Redis replicates asynchronously: a record written to a master that dies a
millisecond later can be missing on the replica Sentinel promotes, and then
nothing would ever upload that artifact (the rank was told it would). So when
the master has replicas, the rank's record write (``create.lua``, the write
``file_artifact``, ``symlink_artifact`` and a commit make) is followed by
``WAIT 1 <timeout>`` on the same connection, in the same round trip: the
call returns once one replica has acknowledged it.

Only when there is a replica to wait for: the count comes from ``INFO
replication`` (``connected_slaves``), read again every
:data:`REFRESH_SECONDS`; a master without replicas (the embedded cluster,
most test set-ups) pays nothing. A ``WAIT`` that times out (the replica is
gone but the master has not noticed yet) stops the waiting until the next
refresh, so a dead replica costs one :data:`WAIT_TIMEOUT_MS` stall per
refresh, not one per call. What it costs a call is measured in
docs/operations.md ("Redis Sentinel").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.commands.core import Script
from redis.typing import EncodableT, KeyT

log = logging.getLogger("hoist.state")

WAIT_TIMEOUT_MS = 500
"""How long a record write waits for a replica's acknowledgement, at most."""

REFRESH_SECONDS = 5.0
"""How long the master's replica count is trusted before ``INFO replication`` is read again."""


class ReplicaWait:
    """Runs a script and ``WAIT 1`` in one round trip when the master has replicas.

    Parameters:
        client: the records' Redis client.
        timeout_ms: :data:`WAIT_TIMEOUT_MS`.
        refresh_seconds: :data:`REFRESH_SECONDS`.
        clock: a monotonic clock, seconds.
    """

    def __init__(
        self,
        client: redis.Redis,
        timeout_ms: int = WAIT_TIMEOUT_MS,
        refresh_seconds: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.timeout_ms = timeout_ms
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self._replicas = 0
        self._next_look = 0.0

    def replicas(self) -> int:
        """The replicas to wait for: the master's count, at most :attr:`refresh_seconds` old.

        An ``INFO`` the server refuses (an ACL without it) counts as none.
        """
        now = self.clock()
        if now >= self._next_look:
            try:
                info = self.client.info("replication")
                self._replicas = int(info.get("connected_slaves", 0))
            except redis.ResponseError:
                self._replicas = 0
            # Only once answered: after a failover the count is the new master's.
            self._next_look = now + self.refresh_seconds
        return self._replicas

    def run(self, script: Script, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> Any:
        """``script(keys, args)``, then ``WAIT`` for one replica when there is one.

        The script and the ``WAIT`` go down one connection (``WAIT`` counts
        that connection's writes) in one pipeline; with no replica, the
        script alone, as before. A connection error makes the next call read
        the replica count again (the master may have changed).
        """
        try:
            return self._run(script, keys, args)
        except (redis.ConnectionError, redis.TimeoutError):
            self._next_look = 0.0
            raise

    def _run(self, script: Script, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> Any:
        if not self.replicas():
            return script(keys=keys, args=args)
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            # EVALSHA by hand: a pipeline given the Script itself asks SCRIPT
            # EXISTS first, a round trip of its own on every call.
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            pipe.wait(1, self.timeout_ms)
            result, acked = pipe.execute(raise_on_error=False)
            if isinstance(result, redis.exceptions.NoScriptError) and attempt == 0:
                # A master that never ran it (a promoted replica, a restart): load
                # it; the failed EVALSHA wrote nothing.
                script.sha = self.client.script_load(script.script)
                continue
            if isinstance(result, Exception):
                raise result
            if isinstance(acked, Exception) or int(acked) < 1:
                self._stop_waiting(acked)
            return result
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _stop_waiting(self, acked: Any) -> None:
        self._replicas = 0
        self._next_look = self.clock() + self.refresh_seconds
        log.warning(
            "no replica acknowledged a record within %d ms (%s): records are written without "
            "waiting for one for the next %.0f s, and one written now could be lost if the "
            "master fails over",
            self.timeout_ms,
            acked,
            self.refresh_seconds,
        )
