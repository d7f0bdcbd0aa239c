"""Sends deferred artifacts again when they fall due.

Every worker runs one resender thread. Entries are taken atomically (and
pushed a little into the future, so one taken by a resender that dies is
taken again later), so each is sent once per due time across the fleet; a
rare duplicate send finds the record's claim and does nothing. When each
entry falls due, and why, is :mod:`hoist.state.schedule`.

Through Sentinel the resender also notices a failover: its Redis client
notes the master's address on every (re)connection, and when that changes
(:meth:`Resender.follow_failover`) every entry falls due at once and queued
artifacts sent before it are sent again (see :mod:`hoist.state.schedule`).

A broker on a Sentinel group of its own (``HOIST_BROKER_URL`` a sentinel URL
other than ``HOIST_STATE_URL``) can fail over alone and lose messages the
state Redis never hears of. The resender then also watches the broker's
master: one ``PING`` through a Sentinel client of the broker every
:data:`BROKER_LOOK_SECONDS` (the client asks the sentinels again when the
master goes), and a new address is handled as a failover of the state Redis
is. Without it those messages would wait ``HOIST_QUEUED_TIMEOUT``.

The resender also finishes prunes a killed worker left (:mod:`hoist.state.retention`):
every :data:`PRUNE_LOOK_SECONDS` it asks for runs whose retention marks are
older than a lease time (:func:`~hoist.state.retention.overdue_runs`) and
deletes them, on a thread of its own so that a long deletion (a step of many
files) never holds back a deferred artifact. The store spec and the object
names come from the state Redis, not from a signed message: each is checked
against the fleet's allowed stores as every job's are, and one refused is
logged and deleted from nowhere (its mark stays for an operator).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery

from hoist.protocol.messages import MESSAGE_TYPES, Message
from hoist.protocol.redis_url import is_sentinel, master_address, redis_client
from hoist.protocol.sending import send
from hoist.state.keys import DEFERRED
from hoist.state.records import ArtifactStatus, Records
from hoist.state.retention import Retention, overdue_runs
from hoist.state.schedule import check_queued, to_ms
from hoist.state.states import State
from hoist.stores.allowed import AllowedStores
from hoist.stores.base import ObjectStore
from hoist.stores.spec import StoreSpec
from hoist.tasks.worker_context import WorkerContext

log = logging.getLogger("hoist.resender")

Send = Callable[[str, Message], None]
"""Sends a message as a task (the task's name first) to the broker."""

BROKER_LOOK_SECONDS = 1.0
"""How often a resender pings a broker of its own Sentinel group to see where its master is."""

PRUNE_LOOK_SECONDS = 1.0
"""How often a resender looks for prunes a killed worker left (one ZRANGEBYSCORE)."""


class Resender:
    """Moves due entries of the deferred set back onto the broker; finishes the prunes a
    killed worker left half-way (on a thread of its own, :meth:`finish_prunes`).

    Parameters:
        records: the artifact records (and the deferred schedule).
        send: sends a message as a task.
        queued_timeout: seconds a queued (sent, never claimed) artifact may
            wait before its message is presumed lost and sent again.
        interval: seconds between looks when nothing was due.
        clock: the time, seconds since the epoch.
        broker: a Sentinel client of the broker, when the broker is a Sentinel group
            other than the state Redis's; its failovers are followed too.
        stores: the store a spec names (a worker's store clients), for finishing
            prunes a killed worker left; None: this resender finishes none.
        allowed: the fleet's allowed stores (``--allow-store``): a prune's store and
            objects are checked against them before anything is deleted (none
            configured: every prune is refused).
    """

    def __init__(
        self,
        records: Records,
        send: Send,
        queued_timeout: float,
        *,
        interval: float = 0.25,
        clock: Callable[[], float] = time.time,
        broker: redis.Redis | None = None,
        stores: Callable[[StoreSpec], ObjectStore] | None = None,
        allowed: AllowedStores | None = None,
    ) -> None:
        self.records = records
        self.send = send
        self.queued_timeout = queued_timeout
        self.interval = interval
        self.clock = clock
        self.master: tuple[str, int] | None = None
        """The state Redis's master as last seen (Sentinel only)."""
        self.failover_at = 0.0
        """When this resender last saw a failover (seconds since the epoch; 0: never)."""
        self.broker = broker
        self.broker_master: tuple[str, int] | None = None
        """The broker's master as last seen (a broker Sentinel group of its own only)."""
        self._broker_looked = float("-inf")
        self._broker_previous: tuple[str, int] | None = None
        self.stores = stores
        self.allowed = allowed or AllowedStores()
        self._pruner: threading.Thread | None = None

    @classmethod
    def for_worker(cls, ctx: WorkerContext, app: Celery, interval: float = 0.25) -> Resender:
        """The resender of a worker process: its records and settings, sending with ``app``."""

        def send_with_app(task: str, message: Message) -> None:
            send(app, task, message)

        settings = ctx.settings
        broker = None
        if is_sentinel(settings.broker_url) and settings.broker_url != settings.state_url:
            broker = redis_client(settings.broker_url, settings.sentinel)
        return cls(
            ctx.records,
            send_with_app,
            settings.queued_timeout,
            interval=interval,
            broker=broker,
            stores=ctx.store,
            allowed=settings.allowed,
        )

    def run_forever(self) -> None:
        """Send due artifacts until the process ends; never raises."""
        while True:
            try:
                self._start_prunes()
                if not self.send_due():
                    time.sleep(self.interval)
            except Exception as exc:
                # Whatever goes wrong (Redis away, kombu's OperationalError after
                # its own retries), this thread is the fleet's only way back for
                # deferred artifacts: it must not die.
                log.warning("resender: %s; trying again in 1 s", exc)
                time.sleep(1.0)

    def _start_prunes(self) -> None:
        """Start the one thread that finishes overdue prunes every :data:`PRUNE_LOOK_SECONDS`.

        One thread for the process's life: store clients that are not thread-safe
        are kept per thread (an SFTP connection), so a thread per look would open
        a connection each time and never close it.
        """
        if self.stores is None or self._pruner is not None:
            return

        def prune_forever() -> None:
            while True:
                self.finish_prunes()  # never raises
                time.sleep(PRUNE_LOOK_SECONDS)

        self._pruner = threading.Thread(target=prune_forever, name="hoist-prunes", daemon=True)
        self._pruner.start()

    def finish_prunes(self) -> int:
        """Delete what retention marked over a lease time ago and nobody deleted (its
        worker was killed mid-prune); return how many targets went. Never raises: a
        store that fails keeps its marks for the next look, a lease time later."""
        if self.stores is None:
            return 0
        records = self.records
        finished = 0
        try:
            runs = overdue_runs(records.client, self.clock(), records.lease_ms)
        except Exception as exc:
            log.warning("resender: could not look for unfinished prunes: %s", exc)
            return 0
        for run in runs:
            retention = Retention.of(records, run)
            try:
                specs = retention.store_specs()
                for store_id in sorted({mark.store_id for mark in retention.marked()}):
                    if store_id not in specs:
                        continue  # a mark without its store's spec: gc --run cannot reach it either
                    spec = self._allowed_spec(run, store_id, specs[store_id])
                    if spec is None:
                        continue
                    refusal = self.allowed.refusal_of(spec.kind, spec.kwargs)
                    finished += len(retention.finish(self.stores(spec), store_id, refusal))
                retention.forget_if_finished()  # marks expired with the run leave no entry
            except Exception as exc:
                log.warning("resender: the unfinished prune of run %s failed: %s", run, exc)
        if finished:
            log.info("resender: finished %d target(s) a stopped worker had marked", finished)
        return finished

    def _allowed_spec(self, run: str, store_id: str, held: dict[str, Any]) -> StoreSpec | None:
        """The spec ``retention-stores:<run>`` holds for ``store_id``, or None (logged) if
        it is not that store or this fleet has no allowed stores."""
        # Each mark's objects are checked against the allowed stores in `finish`, before
        # any deletion: an allow-list entry is a store and a prefix, so names are needed.
        spec = StoreSpec.from_json(held)
        why = None
        if spec.store_id != store_id:
            why = f"the spec held for store {store_id} describes store {spec.store_id}"
        elif not self.allowed.configured:
            why = "this fleet has no allowed stores"
        if why is not None:
            log.error(
                "resender: refused the unfinished prune of run %s in store %s and deleted "
                "nothing: %s; its marks stay for an operator",
                run,
                store_id,
                why,
            )
            return None
        return spec

    def send_due(self) -> int:
        """Send every due artifact; return how many were looked at.

        A finished artifact (or one without a record) leaves the schedule; a
        queued one is sent only once it is overdue (:meth:`_overdue`); any
        other (waiting, retrying, or claimed by a worker that stopped
        renewing) is sent again at once.
        """
        records = self.records
        self.follow_failover()
        due = records.take_due(now=self.clock())
        for artifact in due:
            status = records.get(artifact)
            if status is None or status.state.terminal:
                records.unschedule(artifact)
                continue
            if status.state is State.QUEUED and not self._overdue(status):
                continue
            task = status.fields["task"]
            self.send(task, MESSAGE_TYPES[task].from_json(json.loads(status.fields["message"])))
        return len(due)

    def follow_failover(self) -> bool:
        """Whether the state Redis failed over since the last look; if so, make every
        deferred entry due now.

        No round trip unless it did: the address is the one redis-py noted
        when the client last connected (:func:`master_address`), so the
        first look after a failover is the resender's first command that
        reached the new master.
        """
        address = master_address(self.records.client)
        previous, self.master = self.master, address or self.master
        moved = previous is not None and address is not None and address != previous
        which = "state Redis"
        if not moved and self._broker_moved():
            which, previous, address = "broker", self._broker_previous, self.broker_master
        elif not moved:
            return False
        assert previous is not None and address is not None
        self.failover_at = self.clock()
        client = self.records.client
        entries = [str(artifact) for artifact in client.zrange(DEFERRED, 0, -1)]
        now_ms = to_ms(self.failover_at)
        for start in range(0, len(entries), 1000):  # bounded commands on a long backlog
            chunk = entries[start : start + 1000]
            client.zadd(DEFERRED, dict.fromkeys(chunk, now_ms), xx=True)
        log.warning(
            "the %s failed over from %s:%d to %s:%d; looking at the %d unfinished "
            "artifacts now, and sending queued ones again",
            which,
            *previous,
            *address,
            len(entries),
        )
        return True

    def _broker_moved(self) -> bool:
        """Whether the broker's own Sentinel group has a new master since the last look;
        pings it at most every :data:`BROKER_LOOK_SECONDS` (a failed ping is no news)."""
        if self.broker is None:
            return False
        now = time.monotonic()
        if now - self._broker_looked < BROKER_LOOK_SECONDS:
            return False
        self._broker_looked = now
        try:
            self.broker.ping()  # (re)connects to the master the sentinels name now
        except redis.RedisError:
            return False
        address = master_address(self.broker)
        self._broker_previous, self.broker_master = self.broker_master, address
        return self._broker_previous is not None and address not in (None, self._broker_previous)

    def _overdue(self, status: ArtifactStatus) -> bool:
        """Whether a queued (never claimed) artifact has waited too long; if not, look later.

        Its message may be lost (see :mod:`hoist.state.schedule`); after
        ``queued_timeout`` it is sent again, and looked at again one period later.
        """
        fields = status.fields
        now = self.clock()
        check = check_queued(
            float(fields.get("enqueued_at") or 0),
            float(fields.get("resent_at") or 0),
            self.queued_timeout,
            now,
            self.failover_at,
        )
        if check.resend:
            log.warning(
                "%s was sent %.0f s ago and no worker has claimed it%s; sending it again",
                status.id,
                check.waited,
                " since the failover" if check.waited < self.queued_timeout else "",
            )
            self.records.mark_resent(status.id, now)
        self.records.recheck_queued(status.id, check.look_again_at)
        return check.resend
