"""Keeping a job's claim and leases alive while it works: one heartbeat thread per process.

A job renews its claim and leases every third of a lease time while it
writes to the store (:class:`Heartbeat`). The renewals of every job of a
worker process run on one daemon thread (:class:`Renewals`), started when
the first job needs it: a thread of its own per job cost a small file's
upload about 0.17 ms of CPU to start and join, for a heartbeat that almost
never beats before the file is in the store.

A renewal still in flight when its job ends does no harm: both renewal
scripts extend only what the job's token still holds, and the settle has
let go of all of it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from hoist.errors import HoistError

if TYPE_CHECKING:
    from hoist.tasks.job import Job

log = logging.getLogger("hoist.worker")


class LeaseLost(HoistError):
    """A heartbeat could not renew this task's claim or leases; the work stops."""


class Heartbeat:
    """Renews a job's claim and leases every third of a lease time, while in its ``with``.

    Parameters:
        job: the job whose claim and leases to renew.
        renewals: the thread that renews them (the process's own by default).
    """

    def __init__(self, job: Job, renewals: Renewals | None = None) -> None:
        self.job = job
        self.lost = threading.Event()
        self.interval = job.ctx.settings.lease_seconds / 3
        self._missed = 0
        self._renewals = renewals or Renewals.of_process()

    def __enter__(self) -> Heartbeat:
        self._renewals.add(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._renewals.remove(self)

    def check(self, _bytes: int = 0) -> None:
        """A progress callback: stop the transfer once the claim is lost."""
        if self.lost.is_set():
            raise LeaseLost(f"{self.job.message.id}: lost its claim; another worker may take over")

    def beat(self) -> bool:
        """Renew the claim and the leases once; False once they are lost (the beats stop)."""
        job = self.job
        try:
            alive = job.ctx.records.renew(job.message.id, job.token)
            alive = job.leases.renew_all() and alive
            self._missed = 0
        except Exception as exc:  # Redis away: the lease survives until it expires
            self._missed += 1
            log.warning("heartbeat of %s failed: %s", job.message.id, exc)
            alive = self._missed * self.interval < job.ctx.settings.lease_seconds
        if not alive:
            self.lost.set()
        return alive


class Renewals:
    """One thread that beats every registered :class:`Heartbeat` when it falls due.

    Beats run one after another outside the lock; a beat that waits for an
    unreachable Redis delays the others, which wait for the same Redis.
    """

    _process: Renewals | None = None

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._due: dict[Heartbeat, float] = {}
        self._thread: threading.Thread | None = None

    @classmethod
    def of_process(cls) -> Renewals:
        """This process's renewals (a forked pool process gets its own, with its own thread)."""
        if cls._process is None:
            cls._process = cls()
        return cls._process

    def add(self, heartbeat: Heartbeat) -> None:
        with self._changed:
            self._due[heartbeat] = time.monotonic() + heartbeat.interval
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, daemon=True, name="hoist-heartbeat"
                )
                self._thread.start()
            self._changed.notify()

    def remove(self, heartbeat: Heartbeat) -> None:
        with self._changed:
            self._due.pop(heartbeat, None)

    def _run(self) -> None:
        while True:
            with self._changed:
                if not self._due:
                    self._changed.wait()
                    continue
                heartbeat, due = min(self._due.items(), key=lambda item: item[1])
                wait = due - time.monotonic()
                if wait > 0:
                    self._changed.wait(wait)  # or sooner, when a heartbeat comes or goes
                    continue
                self._due[heartbeat] = time.monotonic() + heartbeat.interval
            if not heartbeat.beat():
                self.remove(heartbeat)


# A pool process forked from a parent that had started the thread has the
# parent's registry but not its thread: it starts afresh.
os.register_at_fork(after_in_child=lambda: setattr(Renewals, "_process", None))
