"""How hoist writes sizes and rates for people: binary units, one family everywhere.

The commands' tables and bars (:mod:`hoist.commands.console`) and the
workers' progress text in Flower (:mod:`hoist.tasks.progress`) use the same
functions, so a 1 GiB checkpoint reads ``1.0 GiB`` in every place and never
``1.1 GB`` in one and ``1024 MiB`` in another.
"""

from __future__ import annotations

BINARY_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_bytes(size: float) -> str:
    """A byte count in binary units, the one unit family of every command.

    Example:
        >>> format_bytes(512), format_bytes(1536), format_bytes(2**30)
        ('512 B', '1.5 KiB', '1.0 GiB')
    """
    if size < 1024:
        return f"{int(size)} B"
    value = float(size)
    for unit in BINARY_UNITS:
        value /= 1024
        # Rounded, 1023.96 KiB would print as "1024.0 KiB": move up a unit first.
        if round(value, 1) < 1024 or unit == BINARY_UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # the loop returns at its last unit


def format_rate(bytes_per_second: float) -> str:
    """A transfer rate in binary units.

    Example:
        >>> format_rate(3 * 2**20)
        '3.0 MiB/s'
    """
    return f"{format_bytes(bytes_per_second)}/s"
