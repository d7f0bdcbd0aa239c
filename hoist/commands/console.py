"""Where commands print, and how: tables to stdout, progress and messages to stderr.

Every human-readable byte figure is binary (B, KiB, MiB, GiB…:
:func:`hoist.units.format_bytes`), in tables, messages and progress bars alike, so a
1 GiB checkpoint reads ``1.0 GiB`` everywhere and never ``1.1 GB``.

Tables are described as a :class:`Sheet` and printed by :func:`print_sheet`.
On a terminal the sheet is fitted to its width: headers are never cut, a name
folds only after a ``/`` or ``-`` (never inside a path segment), and when
that is not enough, shorter headers are used and the least important columns
are left out (the caption says which). Off a terminal (a pipe, a file, CI
logs) the sheet is printed as TSV with a header line: no box drawing, no
width limit, every name whole, for ``cut``, ``awk`` or a spreadsheet.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
)
from rich.table import Table
from rich.text import Text

# The one byte format of every command, and of Flower's progress text.
from hoist.units import format_bytes as format_bytes
from hoist.units import format_rate as format_rate

# Off a terminal rich would fold messages at 80 columns; object names are long,
# so give them room there. Tables off a terminal are TSV and ignore the width.
out = Console(width=None if sys.stdout.isatty() else 160)
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class BinarySpeedColumn(ProgressColumn):
    """A progress bar's transfer speed in binary units (rich's own column is decimal only)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        shown = "?" if speed is None else format_rate(speed)
        return Text(shown, style="progress.data.speed")


def transfer_progress(transient: bool = True) -> Progress:
    """A progress display for byte transfers, on stderr, in binary units."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        BinarySpeedColumn(),
        console=console,
        transient=transient,
    )


# ----- tables ----------------------------------------------------------------------------------


class Kind(Enum):
    """How a column's cells may be broken over lines."""

    FIGURE = "figure"
    """Numbers, sizes, durations: never broken."""
    NAME = "name"
    """Run, artifact and object names: broken only after a ``/`` or ``-``."""
    TEXT = "text"
    """Sentences (errors): broken between words."""


ALWAYS = 100
"""The ``keep`` of a column that is never left out."""


@dataclass(frozen=True)
class Column:
    """One column of a :class:`Sheet`.

    Parameters:
        header: its full header.
        kind: how its cells may be broken.
        short: a shorter header, used when the full ones do not fit.
        keep: columns with the lowest ``keep`` are left out first when the
            table is too wide; :data:`ALWAYS` never is.
    """

    header: str
    kind: Kind = Kind.FIGURE
    short: str = ""
    keep: int = ALWAYS


@dataclass
class Sheet:
    """A table as data: what :func:`render` fits to a terminal and :func:`plain` prints.

    Parameters:
        title: shown above the table on a terminal.
        columns: the columns, in order.
        rows: the cells of each row (rich markup allowed).
        footer: a last row set apart (a total), or None.
        caption: shown below the table on a terminal.
    """

    title: str
    columns: list[Column]
    rows: list[list[str]] = field(default_factory=list)
    footer: list[str] | None = None
    caption: str = ""


NAME_PIECE = re.compile(r"[^/-]*[/-]|[^/-]+")
"""A name's unbreakable pieces: each ends after a ``/`` or ``-``, or at the end."""


def wrap_name(name: str, width: int) -> str:
    """``name`` on lines of at most ``width`` characters, broken only after ``/`` or ``-``.

    A piece longer than ``width`` stays whole on a line of its own.

    Example:
        >>> print(wrap_name("qs-moto3/rank0/ep1.pt", 10))
        qs-moto3/
        rank0/
        ep1.pt
    """
    lines: list[str] = []
    for piece in NAME_PIECE.findall(name):
        if lines and len(lines[-1]) + len(piece) <= width:
            lines[-1] += piece
        else:
            lines.append(piece)
    return "\n".join(lines)


def _cell_width(cell: str) -> int:
    return max((Text.from_markup(line).cell_len for line in cell.splitlines()), default=0)


def _min_width(column: Column, header: str, cells: Sequence[str]) -> int:
    """The narrowest the column may be: its header whole, and no cell cut where it must not be."""
    if column.kind is Kind.NAME:
        pieces = [len(piece) for cell in cells for piece in NAME_PIECE.findall(cell)]
        return max([len(header), *pieces])
    if column.kind is Kind.TEXT:
        # Sentences wrap between words; a word longer than this folds, as a terminal would.
        return max(len(header), min(max(map(_cell_width, cells), default=0), 24))
    return max([len(header), *map(_cell_width, cells)])


def _layout(sheet: Sheet, width: int) -> tuple[list[int], list[str], list[int]]:
    """Which columns to show, under which headers, how wide: (indexes, headers, widths).

    Tried in order until one fits: every column at its natural width under its
    full header; the same with short headers; names folded to their minimum;
    then, one by one, the columns of lowest ``keep`` left out.
    """
    cells = [[row[i] for row in sheet.rows + ([sheet.footer] if sheet.footer else [])]
             for i in range(len(sheet.columns))]  # fmt: skip
    shown = list(range(len(sheet.columns)))

    def overhead(count: int) -> int:
        return 3 * count + 1  # a border and a space either side of every column

    while True:
        for short in (False, True):
            headers = [(sheet.columns[i].short if short else "") or sheet.columns[i].header
                       for i in shown]  # fmt: skip
            natural = [max(len(h), *map(_cell_width, cells[i]), 1)
                       for h, i in zip(headers, shown, strict=True)]  # fmt: skip
            if sum(natural) + overhead(len(shown)) <= width:
                return shown, headers, natural
        minimum = [_min_width(sheet.columns[i], h, cells[i])
                   for h, i in zip(headers, shown, strict=True)]  # fmt: skip
        spare = width - sum(minimum) - overhead(len(shown))
        droppable = [i for i in shown if sheet.columns[i].keep < ALWAYS]
        if spare >= 0 or not droppable:
            # Give what is left to the folded columns, in order, up to their natural width.
            widths = list(minimum)
            for n, want in enumerate(natural):
                extra = min(max(spare, 0), want - widths[n])
                widths[n] += extra
                spare -= extra
            return shown, headers, widths
        shown.remove(min(droppable, key=lambda i: (sheet.columns[i].keep, -i)))


def render(sheet: Sheet, width: int) -> Table:
    """``sheet`` as a rich table that fits ``width`` columns without cutting a header or a name.

    Only when even the columns that are never left out do not fit is the
    table wider than ``width`` (the terminal then wraps its lines; nothing is cut).
    """
    shown, headers, widths = _layout(sheet, width)
    hidden = [c.header for i, c in enumerate(sheet.columns) if i not in shown]
    caption = sheet.caption
    if hidden:
        note = f"left out at this width: {', '.join(hidden)} (see --json)"
        caption = f"{caption}\n{note}" if caption else note
    table = Table(title=sheet.title, caption=caption or None, caption_justify="left")
    for i, header, column_width in zip(shown, headers, widths, strict=True):
        kind = sheet.columns[i].kind
        table.add_column(
            header,
            justify="right" if kind is Kind.FIGURE else "left",
            width=column_width,
            no_wrap=kind is not Kind.TEXT,
            overflow="fold",
        )

    def cells(row: list[str]) -> list[str]:
        chosen = [(sheet.columns[i], row[i], w) for i, w in zip(shown, widths, strict=True)]
        return [wrap_name(cell, w) if c.kind is Kind.NAME else cell for c, cell, w in chosen]

    for row in sheet.rows:
        table.add_row(*cells(row))
    if sheet.footer is not None:
        table.add_section()
        table.add_row(*cells(sheet.footer), style="bold")
    return table


def plain(sheet: Sheet) -> str:
    """``sheet`` as TSV: a header line, then one line per row (the footer last), markup removed.

    Example:
        >>> plain(Sheet("t", [Column("run", Kind.NAME), Column("done")], [["a/b", "3"]]))
        'run\\tdone\\na/b\\t3'
    """

    def line(cells: Sequence[str]) -> str:
        # A tab or line break inside a cell (an error's text) would shift the columns.
        return "\t".join(" ".join(Text.from_markup(cell).plain.split()) for cell in cells)

    rows = [*sheet.rows, *([sheet.footer] if sheet.footer is not None else [])]
    return "\n".join(line(cells) for cells in [[c.header for c in sheet.columns], *rows])


def print_sheet(sheet: Sheet, target: Console | None = None) -> None:
    """Print ``sheet`` to ``target`` (stdout): fitted to the terminal, or as TSV off one."""
    shown = target or out
    if shown.is_terminal:
        shown.print(render(sheet, shown.width), highlight=False, crop=False)
    else:
        shown.file.write(plain(sheet) + "\n")
        shown.file.flush()


def cell(text: object) -> str:
    """Text from a record (a name, an error) made safe to put in a sheet's cell."""
    return escape(str(text))
