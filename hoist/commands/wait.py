"""``hoist wait``: block until a run's uploads have finished; the exit code says how.

For job epilogues of training launched with ``wait_on_close=False``:
0 when every artifact is done (or superseded by a newer version), 1 with a
table of the failures, 2 when ``--timeout`` runs out first (with a table of
the artifacts still retrying, if any). While it waits, the first sight of
each retrying artifact prints one line to stderr: its name, attempts, last
error and when it is tried next.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from hoist.commands.cluster_access import records_for
from hoist.commands.console import (
    Column,
    Kind,
    Sheet,
    cell,
    console,
    print_sheet,
    transfer_progress,
)
from hoist.commands.status import Retrying, RunStatus, Summary, run_status
from hoist.commands.status_tables import format_due, retrying_sheet
from hoist.state.records import Records
from hoist.state.states import State

EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_TIMEOUT = 2


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "wait",
        help="wait for a run's uploads; exit 0 done, 1 failed, 2 timed out",
        description="Wait until every artifact of the run has finished. Exit 0 when none "
        "failed; 1 with a table of the failed ones (artifact, object, error), which `hoist "
        "retry` can send again once the cause is fixed; 2 when --timeout runs out first. "
        "An artifact that starts retrying is reported once on stderr (attempts, last error, "
        "next attempt).",
        epilog="example: hoist wait --run bert-3 --timeout 3600 || hoist status --run bert-3",
    )
    parser.add_argument("--run", metavar="NAME", required=True, help="the run to wait for")
    parser.add_argument(
        "--timeout", type=float, metavar="S", help="give up after S seconds (exit 2)"
    )
    parser.add_argument(
        "--interval", type=float, default=0.5, metavar="S", help="seconds between polls"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    records = records_for(args)
    status = wait_for_run(records, args.run, args.timeout, args.interval)
    total = status.total
    if not total.finished:
        if status.retrying:
            print_sheet(retrying_sheet(status, time.time()))
        console.print(
            f"[yellow]timed out[/] after {args.timeout:g} s: run {args.run} has "
            f"{counts(total)}; `hoist status --run {args.run}` shows its ranks",
            highlight=False,
        )
        return EXIT_TIMEOUT
    if total.failed:
        print_sheet(failure_sheet(records, args.run))
        console.print(
            f"[red]{total.failed} of {total.artifacts} artifacts of run {args.run} failed[/]; "
            f"fix the cause, then `hoist retry --run {args.run}`",
            highlight=False,
        )
        return EXIT_FAILED
    console.print(f"[green]run {args.run}:[/] {counts(total)}", highlight=False)
    return EXIT_DONE


def wait_for_run(
    records: Records, run: str, timeout: float | None, interval: float = 0.5
) -> RunStatus:
    """Poll until the run has finished or ``timeout`` s have passed; return its last status.

    A progress bar of bytes sent (uploads in flight included) goes to stderr,
    and a line for each artifact the first time it is seen retrying.

    Example:
        >>> wait_for_run(records, "bert-3", timeout=600).total.finished  # doctest: +SKIP
        True
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    announced: set[str] = set()
    with transfer_progress() as bar:
        task = bar.add_task(run, total=None)
        while True:
            status = run_status(records, run)
            total = status.total
            now = time.time()
            for retrying in status.retrying:
                if retrying.id not in announced:
                    announced.add(retrying.id)
                    bar.console.print(retrying_line(retrying, now), highlight=False)
            bar.update(
                task,
                total=total.bytes_total or None,
                completed=total.bytes_sent,  # moves during an upload, not only after
                description=f"{run}: {total.done + total.superseded}/{total.artifacts} finished",
            )
            if total.finished or (deadline is not None and time.monotonic() >= deadline):
                return status
            time.sleep(interval)


def retrying_line(retrying: Retrying, now: float) -> str:
    """The line ``hoist wait`` prints when it first sees ``retrying`` (rich markup).

    Example:
        >>> r = Retrying("id", "ep1.pt", 0, 2, "TransientStoreError: 503", 112.0, 90.0)
        >>> retrying_line(r, now=100.0).split(": ", 1)[1]
        'attempt 2 failed: TransientStoreError: 503; next attempt in 12 s'
    """
    due = format_due(retrying.next_attempt_at, now)
    due = "next attempt not scheduled" if due == "-" else f"next attempt {due}"
    return (
        f"[yellow]retrying[/] {cell(retrying.artifact)} (rank {retrying.rank}): attempt "
        f"{retrying.attempts} failed: {cell(retrying.error)}; {due}"
    )


def counts(summary: Summary) -> str:
    """A one-line account of where the artifacts stand.

    Example:
        >>> counts(run_status(records, "bert-3").total)  # doctest: +SKIP
        '40 done, 2 superseded, 0 failed, 0 queued, 0 retrying, 0 uploading'
    """
    return (
        f"{summary.done} done, {summary.superseded} superseded, {summary.failed} failed, "
        f"{summary.queued} queued, {summary.retrying} retrying, {summary.uploading} uploading"
    )


def failure_sheet(records: Records, run: str) -> Sheet:
    """One row per failed artifact: rank, artifact, object and the recorded error."""
    columns = [
        Column("rank"),
        Column("artifact", Kind.NAME),
        Column("object", Kind.NAME, keep=1),
        Column("error", Kind.TEXT),
    ]
    rows = [
        [
            str(artifact.message.get("rank", "")),
            cell(artifact.artifact_name),
            cell(artifact.message.get("object_name", "")),
            cell(artifact.error),
        ]
        for artifact in records.run_artifacts(run)
        if artifact.state is State.FAILED
    ]
    return Sheet(f"failed uploads of run {run}", columns, rows)
