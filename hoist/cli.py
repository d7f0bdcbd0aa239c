"""The ``hoist`` command: a thin dispatcher over :mod:`hoist.commands`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from hoist import __version__
from hoist.commands import COMMANDS
from hoist.commands.console import console
from hoist.errors import HoistError

DEFAULT_HOME = ".hoist"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hoist",
        description="Upload the artifacts of multi-node training runs to object stores.",
        epilog="example: hoist up --detach && hoist demo && hoist status",
    )
    parser.add_argument("--version", action="version", version=f"hoist {__version__}")
    parser.add_argument(
        "--home",
        default=os.environ.get("HOIST_HOME", DEFAULT_HOME),
        help="directory of the embedded default cluster (default: .hoist, or HOIST_HOME)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"hoist.commands.{name}").register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args))
    except HoistError as exc:
        first, _, detail = str(exc).partition("\n")
        console.print(f"[bold red]error:[/] {first}", highlight=False)
        if detail:
            console.print(detail, highlight=False)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
