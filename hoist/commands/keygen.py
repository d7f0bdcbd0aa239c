"""``hoist keygen``: print a new fleet key for sealing store credentials."""

from __future__ import annotations

import argparse
from typing import Any

from hoist.keys import new_fleet_key


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "keygen",
        help="print a new HOIST_FLEET_KEY",
        description="Print a key that seals store credentials in task messages. Give the same "
        "key to ranks and workers as HOIST_FLEET_KEY.",
        epilog="example: export HOIST_FLEET_KEY=$(hoist keygen)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(new_fleet_key())
    return 0
