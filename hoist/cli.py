"""The ``hoist`` command: a thin dispatcher over :mod:`hoist.commands`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from hoist import __version__, settings
from hoist.commands import COMMANDS
from hoist.commands.console import console
from hoist.commands.home import DEFAULT_HOME, find_home
from hoist.commands.startup import long_lived, whole_process
from hoist.errors import HoistError


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of ``only`` (the one a command line names)."""
    parser = argparse.ArgumentParser(
        prog="hoist",
        description="Upload the artifacts of multi-node training runs to object stores.",
        epilog="example: hoist up --detach && hoist demo && hoist status",
    )
    parser.add_argument("--version", action="version", version=f"hoist {__version__}")
    add_global_options(parser, default=None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in [only] if only else COMMANDS:
        importlib.import_module(f"hoist.commands.{name}").register(commands)
    # The same options after the subcommand (`hoist status --home X`). SUPPRESS
    # leaves the attribute alone when the option is absent there, so a value
    # given before the subcommand is not overwritten by the subparser's default.
    for subparser in commands.choices.values():
        add_global_options(subparser, default=argparse.SUPPRESS)
    return parser


def add_global_options(parser: argparse.ArgumentParser, default: object) -> None:
    """The options every command takes, before or after its name."""
    parser.add_argument(
        "--home",
        default=default,
        help=f"directory of the embedded default cluster (default: HOIST_HOME, else the "
        f"nearest {DEFAULT_HOME} holding an env file in this directory or above, else "
        f"./{DEFAULT_HOME})",
    )


def named_command(argv: Sequence[str]) -> str | None:
    """The command a command line runs, if it names one (the value of ``--home`` is no name).

    Example:
        >>> named_command(["--home", "gc", "download", "status", "."])
        'download'
        >>> named_command(["--help"]) is None
        True
    """
    tokens = iter(argv)
    for token in tokens:
        if token == "--home":
            next(tokens, None)
        elif token in COMMANDS:
            return token
    return None


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the hoist command line itself (a caller passes its own argv)
        whole_process()
    argv = sys.argv[1:] if argv is None else list(argv)
    # Only the named command's module is imported: the others (Celery for the
    # worker, Flower, up) took 0.2-0.45 s of a `hoist download`'s start-up.
    with long_lived():
        parser = build_parser(named_command(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    # How the home was chosen, so "no cluster found" can say where it looked.
    home = settings.read("HOIST_HOME")
    args.home_given = args.home is not None or home is not None
    if args.home is None:
        args.home = home or find_home(os.getcwd()) or DEFAULT_HOME
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
