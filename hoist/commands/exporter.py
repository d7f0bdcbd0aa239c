"""``hoist exporter``: the fleet's backlog and limits as Prometheus metrics, from one process.

**One exporter, not every worker.** The figures an operator (and KEDA) needs
already live in Redis, fleet-wide: the queue lists, the deferred schedule,
the unacknowledged messages, the store ceilings, the records. One process
reading them when Prometheus scrapes gives fleet totals directly, with no
sum over pods that come and go, no Prometheus multiprocess mode (a directory
of files per prefork pool process, cleaned when a process dies) and nothing
added to a worker's upload path. It also answers while the fleet has scaled
to zero, which is exactly when KEDA must see a deferred artifact. The cost is
per scrape, not per upload: a handful of ``LLEN``/``HLEN``/``ZCARD`` calls,
the ceilings' set, and one ``ZREVRANGE`` plus one script call per recent run
(:mod:`hoist.state.gauges`).

Metrics (gauges; all computed at scrape time):

- ``hoist_backlog{kind="queued|in_flight|deferred"}``: see :mod:`hoist.state.gauges`;
- ``hoist_backlog_total``: their sum, what KEDA scales on;
- ``hoist_oldest_pending_age_seconds``: since the oldest unfinished artifact of the
  recent runs was logged (0: none is unfinished);
- ``hoist_store_concurrency_ceiling{store}``: a throttling store's fleet-wide limit now;
- ``hoist_artifacts{state}``: artifacts per state over the recent runs;
- ``hoist_exporter_up``: 1 when Redis answered this scrape, else 0;
- ``hoist_exporter_scrape_seconds``: how long this scrape's reads took.

Counters and a histogram (read at scrape time too, one ``HGETALL``; counted by the
workers as it happens, see :mod:`hoist.state.counters`):

- ``hoist_uploaded_bytes_total{store}``, ``hoist_attempts_total{store}``,
  ``hoist_attempt_failures_total{store,error}``, ``hoist_lease_waits_total{store}``;
- ``hoist_verified_seconds{store}``: from ``file_artifact`` to verified.

A sum over the records a scrape can read would be no counter (it falls when a
run leaves the window or its records expire, so ``rate()`` and
``histogram_quantile()`` over it would be wrong): the workers count these into
a hash that only rises.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from hoist import settings
from hoist.commands.cluster_access import broker_url_from_environment, records_for
from hoist.commands.console import console
from hoist.errors import ConfigurationError
from hoist.protocol.redis_url import redis_client
from hoist.state.counters import Counters, FleetCounters
from hoist.state.gauges import PER_RUN, RECENT_RUNS, FleetReader
from hoist.state.states import State

DEFAULT_PORT = 9808
DEFAULT_HOST = "127.0.0.1"
BACKLOG_TOTAL = "hoist_backlog_total"
"""The metric KEDA's Prometheus trigger reads (deploy/kubernetes/keda/scaledobject.yaml)."""

log = logging.getLogger("hoist.exporter")


class FleetCollector(Collector):
    """Turns one :class:`~hoist.state.gauges.FleetGauges` reading per scrape into metrics.

    Parameters:
        reader: what reads the figures from Redis.

    Example:
        >>> registry = CollectorRegistry(auto_describe=False)  # doctest: +SKIP
        >>> registry.register(FleetCollector(FleetReader(records, broker)))  # doctest: +SKIP
    """

    def __init__(self, reader: FleetReader) -> None:
        self.reader = reader
        self.counters = FleetCounters(reader.records.client)
        self._failing = ""

    def collect(self) -> Iterator[Metric]:
        """Read Redis now and yield the metrics; a Redis that does not answer is
        ``hoist_exporter_up 0`` and no backlog figure (never a made-up 0)."""
        began = time.monotonic()
        try:
            gauges = self.reader.read()
            counted = self.counters.read()
        except redis.RedisError as exc:
            if str(exc) != self._failing:  # once per kind of failure, not per scrape
                log.warning("hoist exporter: Redis does not answer (%s)", exc)
            self._failing = str(exc)
            yield GaugeMetricFamily("hoist_exporter_up", "Redis answered this scrape", 0)
            yield _scrape_seconds(time.monotonic() - began)
            return
        self._failing = ""
        backlog = GaugeMetricFamily(
            "hoist_backlog", "Unfinished work by where it waits", labels=["kind"]
        )
        backlog.add_metric(["queued"], gauges.queued)
        backlog.add_metric(["in_flight"], gauges.in_flight)
        backlog.add_metric(["deferred"], gauges.deferred)
        yield backlog
        yield GaugeMetricFamily(
            BACKLOG_TOTAL,
            "Queued, in flight and deferred together: 0 only when nothing is left to upload",
            gauges.backlog_total,
        )
        yield GaugeMetricFamily(
            "hoist_oldest_pending_age_seconds",
            f"Seconds since the oldest unfinished artifact of the {self.reader.runs} most "
            "recently active runs was logged (0 when none is unfinished)",
            gauges.oldest_pending,
        )
        ceilings = GaugeMetricFamily(
            "hoist_store_concurrency_ceiling",
            "Uploads the fleet may have in flight to a store that throttles",
            labels=["store"],
        )
        for ceiling in gauges.ceilings:
            ceilings.add_metric([ceiling.store_id], ceiling.limit)
        yield ceilings
        artifacts = GaugeMetricFamily(
            "hoist_artifacts",
            f"Artifacts per state over the {self.reader.runs} most recently active runs "
            f"(each's {self.reader.per_run} most recently logged)",
            labels=["state"],
        )
        for state in State:
            artifacts.add_metric([state.value], gauges.artifacts.get(state, 0))
        yield artifacts
        yield from _counter_families(counted)
        yield GaugeMetricFamily("hoist_exporter_up", "Redis answered this scrape", 1)
        yield _scrape_seconds(time.monotonic() - began)


def _counter_families(counted: Counters) -> Iterator[Metric]:
    """The workers' counters (:mod:`hoist.state.counters`) as Prometheus families."""
    per_store = (
        ("hoist_uploaded_bytes", "Bytes uploaded and verified", counted.uploaded_bytes),
        ("hoist_attempts", "Tries at the store (held back is none)", counted.attempts),
        (
            "hoist_lease_waits",
            "Jobs held back because a rank, store or name limit stayed full",
            counted.lease_waits,
        ),
    )
    for name, documentation, values in per_store:
        family = CounterMetricFamily(name, documentation, labels=["store"])
        for store, number in sorted(values.items()):
            family.add_metric([store], number)
        yield family
    failures = CounterMetricFamily(
        "hoist_attempt_failures",
        "Tries at the store that raised, by class",
        labels=["store", "error"],
    )
    for (store, kind), number in sorted(counted.failures.items()):
        failures.add_metric([store, kind], number)
    yield failures
    verified = HistogramMetricFamily(
        "hoist_verified_seconds",
        "Seconds from file_artifact to the upload verified in the store",
        labels=["store"],
    )
    for store, histogram in sorted(counted.verified.items()):
        buckets = [
            ("+Inf" if bound == float("inf") else f"{bound:g}", number)
            for bound, number in sorted(histogram.buckets.items())
        ]
        verified.add_metric([store], buckets, histogram.total_seconds)
    yield verified


def _scrape_seconds(seconds: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "hoist_exporter_scrape_seconds", "Seconds this scrape's reads of Redis took", seconds
    )


def serve(reader: FleetReader, host: str, port: int) -> Any:
    """Serve ``reader``'s metrics at ``http://host:port/metrics`` from a daemon thread.

    Returns the HTTP server (``shutdown()`` stops it).
    """
    registry = CollectorRegistry(auto_describe=False)  # describe would read Redis at start
    registry.register(FleetCollector(reader))
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server


# ----- the command ---------------------------------------------------------------------------


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "exporter",
        help="serve the fleet's backlog as Prometheus metrics (one per cluster)",
        description="Prometheus metrics at /metrics, read from Redis at each scrape: the "
        "backlog (queued, in flight, deferred, and their total, which KEDA scales on), the "
        "oldest pending artifact's age, throttled stores' ceilings and artifacts by state "
        "over the recent runs. One exporter serves the whole fleet; run one, not one per "
        "worker. The metrics hold counts and store ids only, no names or credentials.",
        epilog="example: hoist exporter --host 0.0.0.0 --port 9808",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--node-queue",
        action="append",
        default=[],
        metavar="NODE",
        help="also count this node's upload queue as queued (repeatable); uploads of other "
        "node queues still count in the total, as deferred",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=RECENT_RUNS,
        metavar="N",
        help=f"count artifacts by state over the N most recently active runs (default "
        f"{RECENT_RUNS}; 0: none)",
    )
    parser.add_argument(
        "--per-run",
        type=int,
        default=PER_RUN,
        metavar="M",
        help=f"read at most each run's M most recently logged artifacts (default {PER_RUN})",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.runs < 0 or args.per_run < 1:
        raise ConfigurationError("--runs must be 0 or more and --per-run 1 or more")
    if not 0 < args.port < 65536:
        raise ConfigurationError(f"--port {args.port} is not a TCP port")
    records = records_for(args)  # loads <home>/env; says which cluster it found none of
    sentinel = settings.CommandSettings.from_environment().sentinel
    broker = redis_client(broker_url_from_environment(), sentinel)
    reader = FleetReader(records, broker, args.node_queue, args.runs, args.per_run)
    try:
        server = serve(reader, args.host, args.port)
    except OSError as exc:
        reason = exc.strerror or exc
        raise ConfigurationError(
            f"cannot listen on {args.host}:{args.port} ({reason}); choose another --port"
        ) from None
    console.print(
        f"hoist exporter: metrics at http://{args.host}:{args.port}/metrics", highlight=False
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()
        return 0
