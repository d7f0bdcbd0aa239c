"""What a job works with: settings, records, the stores, a clock and a source of jitter.

A :class:`WorkerContext` holds a job's collaborators, each given explicitly:
a test builds one around its own Redis, store and clock, and runs jobs in
its own process (tests/test_worker_core.py). A worker builds one per process
from its settings (:meth:`WorkerContext.from_settings`, through
:class:`PerProcess`), since a forked pool child cannot share its parent's
sockets.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hoist.keys import FleetKeys
from hoist.settings import WorkerSettings
from hoist.state.records import Records
from hoist.stores.base import ObjectStore
from hoist.stores.spec import StoreSpec, store_class

_MAX_IDENTITIES = 4096

StoreFactory = Callable[[StoreSpec], ObjectStore]
"""Builds (or reuses) the store a message names."""


@dataclass(frozen=True)
class WorkerContext:
    """The collaborators of every job a worker process runs.

    Parameters:
        settings: the worker's settings.
        records: the artifact records (and, through their client, the leases).
        store: the store a message names (:class:`StoreClients` in a worker).
        clock: seconds since the epoch, for the timestamps a job records.
        rng: the jitter of hold-backs and retries (a seeded one in tests).
    """

    settings: WorkerSettings
    records: Records
    store: StoreFactory
    clock: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> WorkerContext:
        """A worker process's context: its settings' Redis (through Sentinel, the master
        it names), one client per store."""
        records = Records.from_url(
            settings.state_url,
            sentinel=settings.sentinel,
            lease_ms=settings.lease_ms,
            retention_seconds=settings.retention_seconds,
        )
        return cls(settings, records, StoreClients(settings.keys))


class StoreClients:
    """Builds each store once per process and credentials, reused by every task.

    Building an S3 client costs tens of milliseconds, more than uploading a
    small file. A store that is not thread-safe gets one client per thread of
    a threads pool.

    Parameters:
        fleet_key: opens the sealed credentials of a message's store.
    """

    def __init__(self, fleet_key: FleetKeys | None) -> None:
        self.fleet_key = fleet_key
        self._stores: dict[str, ObjectStore] = {}
        self._identities: dict[tuple[str, str | None], str] = {}
        self._lock = threading.Lock()

    def __call__(self, spec: StoreSpec) -> ObjectStore:
        with self._lock:
            identity = self._identities.get((spec.store_id, spec.sealed))
            if identity is None:
                if len(self._identities) >= _MAX_IDENTITIES:  # one per logger ever seen
                    self._identities.clear()
                identity = spec.client_identity(self.fleet_key)
                self._identities[(spec.store_id, spec.sealed)] = identity
            key = identity
            if not store_class(spec.kind).thread_safe:  # one per thread of a threads pool
                key = f"{identity}:{threading.get_ident()}"
            if key not in self._stores:
                self._stores[key] = spec.build(self.fleet_key)
            return self._stores[key]


class PerProcess:
    """The context of the calling process, built on first use in each process.

    The Celery app is built before the prefork pool forks (the children
    inherit it), but Redis connections and store clients do not survive a
    fork: a child that finds its parent's context builds its own.

    Parameters:
        build: makes a context (``lambda: WorkerContext.from_settings(settings)``).
    """

    def __init__(self, build: Callable[[], WorkerContext]) -> None:
        self._build = build
        self._context: WorkerContext | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def __call__(self) -> WorkerContext:
        with self._lock:  # a threads pool's first tasks arrive at once
            if self._context is None or self._pid != os.getpid():
                self._context = self._build()
                self._pid = os.getpid()
            return self._context
