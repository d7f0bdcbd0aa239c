"""Where commands print: tables to stdout, progress and messages to stderr."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

# Off a terminal (CI logs, pipes) rich would fold tables to 80 columns; object
# names are long, so give them room there.
out = Console(width=None if sys.stdout.isatty() else 160)
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def transfer_progress(transient: bool = True) -> Progress:
    """A progress display for byte transfers."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=transient,
    )
