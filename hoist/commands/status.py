"""``hoist status``: where the artifacts of each run, or of each rank of one run, stand.

The numbers come from :func:`summarize`, a pure function over artifact
records, so the table, ``--json`` and ``hoist wait`` agree. Bytes count
uploads only (a pointer is a few bytes); superseded uploads count in neither
bytes done, bytes sent nor bytes total, since they are never sent. Bytes sent
include uploads in flight, so the table and the bars move during an upload;
bytes done only when an upload has finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.progress import Progress, TaskID
from rich.text import Text

from hoist.commands.cluster_access import records_for
from hoist.commands.console import (
    console,
    format_bytes,
    out,
    print_sheet,
    render,
    transfer_progress,
)
from hoist.commands.status_tables import sheets
from hoist.errors import ConfigurationError
from hoist.protocol.messages import UPLOAD_TASK
from hoist.state.records import ArtifactStatus, Records
from hoist.state.retention import Retention
from hoist.state.states import State
from hoist.state.throttle import Throttle

PENDING = (State.QUEUED, State.WAITING)
"""States shown together as "queued": sent, and not being worked on right now.
Retrying ones are counted apart: an error put them back, and they say which."""


@dataclass(frozen=True)
class Summary:
    """Counts, bytes and rates over a set of artifacts (a run, or one rank of a run).

    Parameters:
        ranks: distinct ranks among the artifacts.
        artifacts: how many artifacts.
        queued: queued or waiting (held back for a limit or a pointer's target).
        retrying: a transient error put them back; each waits for its next attempt.
        uploading, done, failed, superseded: artifacts in that state.
        bytes_done: bytes of uploads done.
        bytes_total: bytes of uploads not superseded.
        bytes_sent: bytes that have reached the store so far: uploads done,
            and what uploads in flight have sent (the worker records it every
            ``HOIST_PROGRESS_SECONDS``, so it lags by up to that much).
        upload_seconds: how long at least one upload was in flight: the union
            of each upload's last attempt, from ``upload_started_at`` to
            ``upload_finished_at`` (to now while it is uploading).
        throughput: ``bytes_sent / upload_seconds``: the rate while uploading,
            not over the run's wall time (a run that logs a checkpoint an hour
            is not a slow store); None before any upload time is recorded.
        oldest_waiting: seconds the longest-queued artifact has waited
            (since it was logged, or re-sent by ``hoist retry``), or None.
        first_enqueued, last_finished: Unix times, or None.
    """

    ranks: int
    artifacts: int
    queued: int
    retrying: int
    uploading: int
    done: int
    failed: int
    superseded: int
    bytes_done: int
    bytes_total: int
    bytes_sent: int
    upload_seconds: float
    throughput: float | None
    oldest_waiting: float | None
    first_enqueued: float | None
    last_finished: float | None

    @property
    def finished(self) -> bool:
        """Every artifact is in a terminal state (done, failed or superseded)."""
        return self.queued == 0 and self.retrying == 0 and self.uploading == 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Retrying:
    """An artifact in ``retrying``: what failed last, and when it is tried again.

    Parameters:
        id: the artifact id.
        artifact: its artifact name.
        rank: the rank that logged it.
        attempts: tries at the store so far.
        error: the last attempt's error.
        next_attempt_at: Unix time its next attempt falls due, or None (a record
            written before workers recorded it).
        retrying_since: Unix time of its first failed attempt, or None.
    """

    id: str
    artifact: str
    rank: int
    attempts: int
    error: str
    next_attempt_at: float | None
    retrying_since: float | None

    @classmethod
    def from_record(cls, artifact: ArtifactStatus) -> Retrying:
        fields = artifact.fields
        return cls(
            id=artifact.id,
            artifact=artifact.artifact_name,
            rank=int(_number(fields.get("rank")) or 0),
            attempts=int(_number(fields.get("attempts")) or 0),
            error=artifact.error,
            next_attempt_at=_number(fields.get("next_attempt_at")),
            retrying_since=_number(fields.get("retrying_since")),
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunStatus:
    """One run: its total, one :class:`Summary` per rank, and its retrying artifacts.

    Parameters:
        run: the run name.
        total: the whole run.
        ranks: rank number to that rank's summary, in rank order.
        retrying: the run's artifacts in ``retrying``, the soonest due first.
        pruned, pruned_bytes: objects retention deleted from the store
            (:mod:`hoist.state.retention`), and the bytes they held.
    """

    run: str
    total: Summary
    ranks: dict[int, Summary]
    retrying: list[Retrying] = dataclasses.field(default_factory=list)
    pruned: int = 0
    pruned_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        ranks = [{"rank": rank, **summary.to_json()} for rank, summary in self.ranks.items()]
        return {
            "run": self.run,
            "total": self.total.to_json(),
            "ranks": ranks,
            "retrying": [r.to_json() for r in self.retrying],
            "pruned": {"objects": self.pruned, "bytes": self.pruned_bytes},
        }


def summarize(artifacts: Iterable[ArtifactStatus], now: float) -> Summary:
    """Count and measure ``artifacts`` as they stand at Unix time ``now``.

    Parameters:
        artifacts: records, as :meth:`Records.run_artifacts` returns them.
        now: the time waiting ages and uploads in flight are measured to.

    Example:
        >>> summarize(records.run_artifacts("bert-3"), time.time()).done  # doctest: +SKIP
        42
    """
    counts = dict.fromkeys(State, 0)
    ranks: set[int] = set()
    bytes_done = bytes_total = bytes_sent = 0
    enqueued: list[float] = []
    finished: list[float] = []
    waiting_since: list[float] = []
    in_flight: list[tuple[float, float]] = []
    for artifact in artifacts:
        fields = artifact.fields
        counts[artifact.state] += 1
        ranks.add(int(_number(fields.get("rank")) or 0))
        logged = _number(fields.get("enqueued_at"))
        if logged is not None:
            enqueued.append(logged)
        if artifact.state in PENDING:
            since = _number(fields.get("retried_at")) or logged
            if since is not None:
                waiting_since.append(since)
        if fields.get("task") != UPLOAD_TASK or artifact.state is State.SUPERSEDED:
            continue
        size = int(artifact.message.get("size", 0))
        bytes_total += size
        began = _number(fields.get("upload_started_at"))
        if artifact.state is State.UPLOADING:
            # Only while uploading: an attempt that ended without success left
            # nothing in the store, and the next one starts the count again at 0.
            bytes_sent += min(size, int(_number(fields.get("bytes_sent")) or 0))
            if began is not None:
                in_flight.append((began, now))
        if artifact.state is State.DONE:
            bytes_done += size
            bytes_sent += size
            done_at = _number(fields.get("finished_at"))
            if done_at is not None:
                finished.append(done_at)
            ended = _number(fields.get("upload_finished_at"))
            if began is not None and ended is not None:
                in_flight.append((began, ended))
    upload_seconds = covered_seconds(in_flight)
    return Summary(
        ranks=len(ranks),
        artifacts=sum(counts.values()),
        queued=sum(counts[state] for state in PENDING),
        retrying=counts[State.RETRYING],
        uploading=counts[State.UPLOADING],
        done=counts[State.DONE],
        failed=counts[State.FAILED],
        superseded=counts[State.SUPERSEDED],
        bytes_done=bytes_done,
        bytes_total=bytes_total,
        bytes_sent=bytes_sent,
        upload_seconds=upload_seconds,
        throughput=bytes_sent / upload_seconds if upload_seconds > 0 else None,
        oldest_waiting=max(0.0, now - min(waiting_since)) if waiting_since else None,
        first_enqueued=min(enqueued, default=None),
        last_finished=max(finished, default=None),
    )


def covered_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """The length of the union of ``(start, end)`` intervals: time when any was open.

    Example:
        >>> covered_seconds([(0, 10), (5, 12), (20, 21)])
        13.0
    """
    total = 0.0
    reach = -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def summarize_run(run: str, artifacts: list[ArtifactStatus], now: float) -> RunStatus:
    """:func:`summarize` over the whole run and over each rank's artifacts.

    Example:
        >>> artifacts = records.run_artifacts("bert-3")  # doctest: +SKIP
        >>> run = summarize_run("bert-3", artifacts, time.time())  # doctest: +SKIP
        >>> run.ranks[0].done  # doctest: +SKIP
        11
    """
    by_rank: dict[int, list[ArtifactStatus]] = {}
    for artifact in artifacts:
        by_rank.setdefault(int(_number(artifact.fields.get("rank")) or 0), []).append(artifact)
    retrying = [Retrying.from_record(a) for a in artifacts if a.state is State.RETRYING]
    retrying.sort(key=lambda r: (r.next_attempt_at is None, r.next_attempt_at or 0.0))
    return RunStatus(
        run,
        summarize(artifacts, now),
        {rank: summarize(by_rank[rank], now) for rank in sorted(by_rank)},
        retrying,
    )


def runs_status(records: Records, limit: int = 0, now: float | None = None) -> list[RunStatus]:
    """Every run the records know (at most ``limit``; 0 for all), most recently active first.

    Example:
        >>> [status.run for status in runs_status(records, limit=2)]  # doctest: +SKIP
        ['bert-3', 'bert-2']
    """
    now = time.time() if now is None else now
    statuses = []
    for run in records.runs(limit):
        # A run's name outlives its records if someone deleted those by hand: skip it.
        artifacts = records.run_artifacts(run)
        if artifacts:
            statuses.append(summarize_run(run, artifacts, now))
    return statuses


def run_status(records: Records, run: str, now: float | None = None) -> RunStatus:
    """One run's status; :class:`ConfigurationError` if the records know no artifact of it.

    Example:
        >>> run_status(records, "bert-3").total.failed  # doctest: +SKIP
        0
    """
    artifacts = records.run_artifacts(run)
    if not artifacts:
        raise ConfigurationError(
            f"the cluster has no artifacts of run {run!r}; `hoist status` lists the runs it knows"
        )
    return summarize_run(run, artifacts, time.time() if now is None else now)


# ----- the command ---------------------------------------------------------------------------


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "status",
        help="show where the uploads of each run stand",
        description="A table of runs (most recently active first), or with --run of one run's "
        "ranks and of its retrying artifacts (last error, next attempt): artifacts per state "
        "(queued counts waiting ones; retrying ones are counted apart), bytes sent of the "
        "total, the rate while uploading (bytes over the time at least one upload was in "
        "flight), and how long the oldest queued artifact has waited. Byte figures are "
        "binary (KiB, MiB, GiB). When stdout is not a terminal the tables are TSV.",
        epilog="example: hoist status --run bert-3 --watch",
    )
    parser.add_argument("--run", metavar="NAME", help="show this run's ranks")
    parser.add_argument(
        "--watch",
        action="store_true",
        help="refresh with progress bars until Ctrl-C or until every artifact has finished "
        "(with --run, waits for a run that has not logged anything yet)",
    )
    parser.add_argument("--json", action="store_true", help="print the data as JSON to stdout")
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between refreshes with --watch (default 1)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=20,
        metavar="N",
        help="show the N most recently active runs (default 20; 0 for all)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.watch and args.json:
        raise ConfigurationError("--watch and --json do not mix; poll `hoist status --json`")
    if args.interval <= 0:
        raise ConfigurationError("--interval must be a positive number of seconds")
    records = records_for(args)
    if args.watch:
        return watch(records, args.run, args.limit, args.interval)
    statuses = gather(records, args.run, args.limit)
    ceilings = Throttle(records.client).ceilings()
    if args.json:
        data = statuses[0].to_json() if args.run else {"runs": [s.to_json() for s in statuses]}
        data["throttled_stores"] = [dataclasses.asdict(c) for c in ceilings]
        print(json.dumps(data, indent=2))
        return 0
    now = time.time()
    for sheet in sheets(statuses, args.run is not None, now):
        print_sheet(sheet)
    for status in statuses:
        if status.pruned:
            console.print(
                f"run {status.run}: retention deleted {status.pruned} old object(s) "
                f"({format_bytes(status.pruned_bytes)}); `hoist verify` expects them gone",
                highlight=False,
                markup=False,
            )
    for ceiling in ceilings:  # a store that throttles slows every run that writes to it
        console.print(
            f"store {ceiling.store_id} throttles: the fleet sends it at most "
            f"{max(1, int(ceiling.limit))} upload(s) at once (lowered {ceiling.decreases} "
            f"time(s), last {max(0.0, now - ceiling.changed_at):.0f} s ago)",
            highlight=False,
            markup=False,
        )
    return 0


def gather(records: Records, run: str | None, limit: int) -> list[RunStatus]:
    """The one run asked for, or the most recent runs."""
    statuses = [run_status(records, run)] if run else runs_status(records, limit)
    return [with_pruned(records, status) for status in statuses]


def with_pruned(records: Records, status: RunStatus) -> RunStatus:
    """``status`` with what retention deleted of its run (one HGETALL)."""
    pruned = Retention(records.client, status.run).pruned()
    return dataclasses.replace(status, pruned=len(pruned), pruned_bytes=sum(pruned.values()))


def watch(records: Records, run: str | None, limit: int, interval: float) -> int:
    """Redraw the table and one progress bar per rank (or run) until all is finished or Ctrl-C.

    A run that has logged nothing yet is waited for: a watch started
    alongside the training job shows it from its first artifact.
    """
    bars = transfer_progress()  # rendered inside the Live below, never started on its own
    tasks: dict[str, TaskID] = {}
    said = False
    try:
        with Live(console=out, auto_refresh=False) as live:
            while True:
                statuses = runs_status(records, limit) if run is None else _maybe(records, run)
                if run is not None and not statuses:
                    waiting = f"waiting for run {run} to log its first artifact… (Ctrl-C to stop)"
                    if not out.is_terminal and not said:
                        # Off a terminal the live display shows only its last frame: say it once.
                        console.print(waiting, highlight=False, markup=False)
                        said = True
                    shown: Any = Text(waiting)
                else:
                    _update_bars(bars, tasks, _bar_rows(statuses, run is not None))
                    tables = sheets(statuses, run is not None, time.time())
                    shown = Group(*(render(t, out.width) for t in tables), bars)
                live.update(shown, refresh=True)
                if statuses and all(status.total.finished for status in statuses):
                    return 0
                if run is None and not statuses:
                    return 0  # nothing recorded at all: the table says so
                time.sleep(interval)
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how one leaves a watch


def _maybe(records: Records, run: str) -> list[RunStatus]:
    """The run's status, or nothing while it has logged no artifact."""
    artifacts = records.run_artifacts(run)
    return [summarize_run(run, artifacts, time.time())] if artifacts else []


def _bar_rows(statuses: list[RunStatus], per_rank: bool) -> list[tuple[str, Summary]]:
    if per_rank:
        return [(f"rank {rank}", s) for status in statuses for rank, s in status.ranks.items()]
    return [(status.run, status.total) for status in statuses]


def _update_bars(bars: Progress, tasks: dict[str, TaskID], rows: list[tuple[str, Summary]]) -> None:
    for label, summary in rows:
        if label not in tasks:
            tasks[label] = bars.add_task(label, total=None)
        # A total of 0 would draw an empty bar for a rank that only logged pointers.
        total = summary.bytes_total or None
        bars.update(tasks[label], total=total, completed=summary.bytes_sent)


# ----- the tables: hoist.commands.status_tables -------------------------------------------------


def render_table(statuses: list[RunStatus], per_rank: bool, width: int | None = None) -> Group:
    """What ``hoist status`` shows on a terminal ``width`` columns wide (stdout's by default)."""
    tables = sheets(statuses, per_rank, time.time())
    return Group(*(render(sheet, width or out.width) for sheet in tables))


def _number(text: str | None) -> float | None:
    """A record's numeric field, or None when absent or unreadable (a record mid-write)."""
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None
