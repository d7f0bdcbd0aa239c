"""Celery's remote control on hoist workers: read-only inspections, nothing that acts.

Celery workers obey commands that anyone who can publish to the broker
broadcasts (the ``celery.pidbox`` exchange). Measured before this module
against real workers: a broadcast ``shutdown`` stopped a worker, and a
``revoke`` of a predictable artifact id (``hoist-<run>-r0-1``) sent before
the rank logged it made the worker discard the upload ("Discarding revoked
task") every time it was sent, so it stayed ``queued`` and ``wait()`` hung.

A worker answers only these commands (:data:`KEPT`), none of which changes
anything:

- ``stats``, ``active_queues``, ``registered``, ``conf``, and for a worker's
  own page ``active``, ``reserved``, ``scheduled``, ``revoked``: what Flower
  2.2 asks for (``flower/inspector.py``). ``conf`` stays: Celery censors it
  (``broker_url`` and backend URLs masked, any setting named like KEY,
  SECRET, PASS, TOKEN or SIGNATURE replaced by asterisks; hoist keeps its
  fleet key and store credentials in the environment, never in Celery's
  configuration), and ``tests/test_cli_cluster.py`` checks that Flower's
  worker pages show neither the Redis password nor the fleet key.
- ``ping``: the Docker and Kubernetes health checks run
  ``celery -A hoist.tasks.app inspect ping``.

``active``, ``reserved`` and ``scheduled`` answer with each task's summary
(``argsrepr``/``kwargsrepr``: artifact, run, rank, size), as Flower's task
pages show it, never the raw message.

Every other command, Celery's (``shutdown``, ``revoke``,
``revoke_by_stamped_headers``, ``terminate``, ``pool_grow``,
``pool_shrink``, ``pool_restart``, ``autoscale``, ``add_consumer``,
``cancel_consumer``, ``rate_limit``, ``time_limit``, ``enable_events``,
``disable_events``, ``heartbeat``, ``election``, ``hello``, which merges
revoked ids, the debugging ``objgraph``, ``memsample``, ``memdump``,
``report``, ``query_task``, ``clock``) or any other name, does nothing: the
worker logs one WARNING on ``hoist.worker`` and, if asked for a reply,
answers ``{"error": "… is disabled on hoist workers"}``.

Flower still shows every worker (online, its stats, queues, registered
tasks, configuration, its active and reserved tasks) and every task, from
events; its buttons that act (shut down, restart or grow the pool, revoke,
terminate, change rate or time limits, add or cancel a consumer) get that
error. Events stay on without Flower's periodic ``enable_events``: hoist
workers start with them on (``worker_send_task_events``).

A message lost or dropped for any reason is not lost for good: its record
stays ``queued``, and the workers' watchdog sends it again after
``queued_timeout`` (``HOIST_QUEUED_TIMEOUT``, :mod:`hoist.tasks.resender`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery.worker import control as celery_control
from celery.worker import state as worker_state
from celery.worker.request import Request

log = logging.getLogger("hoist.worker")

KEPT = frozenset(
    {
        "stats",
        "active_queues",
        "registered",
        "conf",
        "active",
        "reserved",
        "scheduled",
        "revoked",
        "ping",
    }
)
"""The remote-control commands hoist workers answer: read-only inspections."""

_SHOWN = 100
"""Most characters of a sender's command name that a log line quotes."""

Command = Callable[..., Any]


class ReadOnlyPanel(dict[str, Command]):
    """Celery's command registry with only :data:`KEPT`: any other name is :func:`disabled`."""

    def __missing__(self, name: Any) -> Command:
        return disabled(name)


def disabled(name: Any) -> Command:
    """A command that does nothing but say, in the log and the reply, that it is disabled."""
    shown = repr(name)[:_SHOWN]

    def refuse(state: Any, **_: Any) -> dict[str, str]:
        log.warning(
            "remote control command %s from the broker ignored: it is disabled on hoist "
            "workers, which answer only %s",
            shown,
            ", ".join(sorted(KEPT)),
        )
        return {"error": f"{shown} is disabled on hoist workers"}

    return refuse


def read_only_panel() -> ReadOnlyPanel:
    """Celery's own :data:`KEPT` commands, the task lists answering with summaries only."""
    panel = ReadOnlyPanel({name: celery_control.Panel.data[name] for name in KEPT})
    panel.update(active=_active, reserved=_reserved, scheduled=_scheduled)
    return panel


def restrict_remote_control(sender: Any = None, **_: Any) -> None:
    """Make this process's Celery worker answer only :data:`KEPT`.

    A receiver of Celery's ``worker_init`` signal (:mod:`hoist.tasks.app`
    connects it): it must run before the worker's consumer builds its
    mailbox, which takes Celery's registry
    (``celery.worker.control.Panel.data``) as it is then.
    """
    # Installed for every name, known and unknown: a new Celery's new command
    # is disabled too until it is added to KEPT.
    celery_control.Panel.data = read_only_panel()


# Celery's own active, reserved and scheduled (celery/worker/control.py,
# 5.7), with ``info(safe=True)``: the sender's summary, not the message.


def _active(state: Any, **_: Any) -> list[dict[str, Any]]:
    return [request.info(safe=True) for request in state.tset(worker_state.active_requests)]


def _reserved(state: Any, **_: Any) -> list[dict[str, Any]]:
    waiting = state.tset(worker_state.reserved_requests) - state.tset(worker_state.active_requests)
    return [request.info(safe=True) for request in waiting]


def _scheduled(state: Any, **_: Any) -> list[dict[str, Any]]:
    found = []
    for waiting in state.consumer.timer.schedule.queue:
        args = getattr(waiting.entry, "args", None) or ()
        request = args[0] if args else None
        if isinstance(request, Request):
            found.append(
                {
                    "eta": request.eta.isoformat() if request.eta else None,
                    "priority": waiting.priority,
                    "request": request.info(safe=True),
                }
            )
    return found
