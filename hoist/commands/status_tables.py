"""How ``hoist status`` draws a run's status: the sheets of runs, of ranks and of retries.

:mod:`hoist.commands.console` fits them to a terminal or prints them as TSV;
the numbers come from :mod:`hoist.commands.status`. ``hoist wait`` uses the
same sentences for a retrying artifact (:func:`format_due`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hoist.commands.console import Column, Kind, Sheet, cell, format_bytes, format_rate

if TYPE_CHECKING:  # status imports this module to draw its tables
    from hoist.commands.status import RunStatus, Summary

SUMMARY_COLUMNS = [
    Column("artifacts", keep=3),
    Column("queued"),
    Column("retrying", short="retry"),
    Column("uploading"),
    Column("done"),
    Column("failed"),
    Column("superseded", short="supers", keep=1),
    # Bytes that reached the store so far, uploads in flight included.
    Column("bytes sent / total", short="sent / total", keep=7),
    Column("rate while uploading", short="upload rate", keep=5),
    Column("oldest queued", short="oldest", keep=4),
]
"""The columns of every summary row; ``keep`` says which go first when the terminal is narrow."""


def sheets(statuses: list[RunStatus], per_rank: bool, now: float) -> list[Sheet]:
    """The tables ``hoist status`` prints: runs, or (``per_rank``) one run's ranks and retries."""
    if not per_rank:
        title = "hoist status" if statuses else "hoist status: no runs recorded yet"
        columns = [Column("run", Kind.NAME), Column("ranks", keep=2), *SUMMARY_COLUMNS]
        rows = [[cell(s.run), str(s.total.ranks), *_cells(s.total)] for s in statuses]
        retrying = sum(s.total.retrying for s in statuses)
        caption = (
            f"{retrying} retrying: `hoist status --run NAME` shows their errors" if retrying else ""
        )
        return [Sheet(title, columns, rows, caption=caption)]
    [status] = statuses
    # Off a terminal every row names its run, so the lines of several runs can be joined.
    columns = [Column("rank"), *SUMMARY_COLUMNS]
    rows = [[str(rank), *_cells(summary)] for rank, summary in status.ranks.items()]
    footer = ["all", *_cells(status.total)] if len(rows) > 1 else None
    result = [Sheet(f"hoist status: run {status.run}", columns, rows, footer)]
    if status.retrying:
        result.append(retrying_sheet(status, now))
    return result


def retrying_sheet(status: RunStatus, now: float) -> Sheet:
    """One row per retrying artifact: rank, artifact, attempts, next attempt, last error."""
    columns = [
        Column("rank"),
        Column("artifact", Kind.NAME),
        Column("attempts", short="tries"),
        Column("next attempt", short="next"),
        Column("retrying for", short="for", keep=1),
        Column("last error", Kind.TEXT),
    ]
    rows = [
        [
            str(r.rank),
            cell(r.artifact),
            str(r.attempts),
            format_due(r.next_attempt_at, now),
            "-" if r.retrying_since is None else format_age(max(0.0, now - r.retrying_since)),
            cell(r.error),
        ]
        for r in status.retrying
    ]
    return Sheet(f"retrying artifacts of run {status.run}", columns, rows)


def _cells(summary: Summary) -> list[str]:
    failed = f"[red]{summary.failed}[/]" if summary.failed else "0"
    retrying = f"[yellow]{summary.retrying}[/]" if summary.retrying else "0"
    return [
        str(summary.artifacts),
        str(summary.queued),
        retrying,
        str(summary.uploading),
        str(summary.done),
        failed,
        str(summary.superseded),
        f"{format_bytes(summary.bytes_sent)} / {format_bytes(summary.bytes_total)}",
        "-" if summary.throughput is None else format_rate(summary.throughput),
        "-" if summary.oldest_waiting is None else format_age(summary.oldest_waiting),
    ]


def format_due(when: float | None, now: float) -> str:
    """When an attempt falls due, from ``now``.

    Example:
        >>> format_due(112.4, 100), format_due(90, 100), format_due(None, 100)
        ('in 12 s', 'due now', '-')
    """
    if when is None:
        return "-"
    if when <= now:
        return "due now"  # a resender takes it within a second or so
    seconds = when - now
    return f"in {seconds:.0f} s" if seconds < 60 else f"in {format_age(seconds)}"


def format_age(seconds: float) -> str:
    """A short duration.

    Example:
        >>> format_age(3725)
        '1h 2m'
    """
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m"
