"""What a worker process keeps between tasks: settings, Redis, one client per store."""

from __future__ import annotations

import os
import threading

from hoist.settings import WorkerSettings
from hoist.state.records import Records
from hoist.stores.base import ObjectStore
from hoist.stores.spec import StoreSpec, store_class

_MAX_IDENTITIES = 4096


class WorkerContext:
    """Per-process state of a worker.

    Parameters:
        settings: the worker's settings.
    """

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.records = Records.from_url(settings.state_url, lease_ms=settings.lease_ms)
        self.fleet_key = settings.keys
        self._stores: dict[str, ObjectStore] = {}
        self._identities: dict[tuple[str, str | None], str] = {}
        self._lock = threading.Lock()

    def store(self, spec: StoreSpec) -> ObjectStore:
        """The store for ``spec``, built once per process and credentials, reused by
        every task: building an S3 client costs tens of milliseconds, more than
        uploading a small file."""
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


_context: WorkerContext | None = None
_pid = 0


def context() -> WorkerContext:
    """This process's context; a forked pool child builds its own (sockets do not survive fork)."""
    global _context, _pid
    if _context is None or _pid != os.getpid():
        _context = WorkerContext(WorkerSettings.from_environment())
        _pid = os.getpid()
    return _context
