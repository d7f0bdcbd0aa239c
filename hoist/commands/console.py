"""Where commands print: tables to stdout, progress and messages to stderr."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

out = Console()
console = Console(stderr=True)


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
