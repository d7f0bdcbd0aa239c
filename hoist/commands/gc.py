"""``hoist gc --incomplete``: remove what uploads killed mid-way left in a store.

S3 multipart uploads never completed (their parts are billed until aborted)
and SFTP temporary files never renamed, begun more than ``--older-than`` ago
(:mod:`hoist.stores.leftovers`). A table of what was found, with its bytes,
and ``--json``; ``--dry-run`` removes nothing. ``hoist gc --run NAME
--keep-last K`` prunes a run's old pointer targets instead
(:mod:`hoist.commands.gc_run`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from typing import Any

from hoist.commands.console import Column, Kind, Sheet, cell, console, format_bytes, print_sheet
from hoist.commands.gc_run import run_gc
from hoist.commands.home import load_environment
from hoist.errors import ConfigurationError
from hoist.protocol.urls import mask_url
from hoist.settings import CommandSettings
from hoist.stores.uri import store_from_uri

MIN_AGE_SECONDS = 3600.0
"""Below this, an upload may still be running: refused without ``--force``."""
MIN_AGE_TEXT = "1h"

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``"90s"``, ``"30m"``, ``"12h"``, ``"7d"`` (or a sum: ``"1d12h"``).

    Example:
        >>> parse_duration("1d12h")
        129600.0
    """
    compact = text.replace(" ", "")
    pieces = _DURATION.findall(compact)
    if not pieces or "".join(n + u for n, u in pieces) != compact:
        raise ConfigurationError(
            f"--older-than {text!r} is not a duration; write it as 90s, 30m, 12h or 7d"
        )
    return float(sum(float(n) * _UNIT_SECONDS[u] for n, u in pieces))


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "gc",
        help="remove what killed uploads left (--incomplete), or a run's old targets (--run)",
        description="With --incomplete: abort the S3 multipart uploads under the store's prefix "
        "and remove the SFTP temporary upload files below its directory that began more than "
        "--older-than ago. No upload in progress lasts that long; one that resumes starts "
        "anew. Nothing else in the store is touched. With --run NAME --keep-last K: delete "
        "each pointer's targets beyond its last K (and not every --keep-every-th), never one "
        "a pointer names or one still uploading.",
        epilog="example: hoist gc --store s3://ckpts/team --incomplete --older-than 1d --dry-run",
    )
    parser.add_argument(
        "--store", metavar="URI", help="the store (s3://, sftp://; default HOIST_STORE_URI)"
    )
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--incomplete", action="store_true", help="remove incomplete uploads")
    kind.add_argument("--run", metavar="NAME", help="prune this run's old pointer targets")
    parser.add_argument("--keep-last", metavar="K", type=int, help="with --run: targets kept")
    parser.add_argument(
        "--keep-every", metavar="N", type=int, help="with --run: keep every Nth as a milestone"
    )
    parser.add_argument(
        "--older-than",
        metavar="DURATION",
        default="1d",
        type=_duration,
        help="only what began longer ago than this (90s, 30m, 12h, 7d; default 1d)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list, remove nothing")
    parser.add_argument(
        "--force",
        action="store_true",
        help=f"allow --older-than below {MIN_AGE_TEXT} (it may abort uploads still running) "
        "and a store without a prefix (every multipart upload in the bucket, any tool's)",
    )
    parser.add_argument("--json", action="store_true", help="print the data as JSON to stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    load_environment(args)
    if args.run is not None:
        return run_gc(args)
    command = CommandSettings.from_environment()
    uri = args.store if args.store is not None else command.store_uri
    if not uri:
        raise ConfigurationError("no store given: pass --store URI or set HOIST_STORE_URI")
    if args.older_than < MIN_AGE_SECONDS and not args.force:
        raise ConfigurationError(
            f"--older-than {args.older_than:g} s may abort uploads still running; give "
            f"{MIN_AGE_TEXT} or more, or add --force"
        )
    now = time.time()
    with store_from_uri(uri, command.sftp_password) as store:
        if getattr(store, "prefix", None) == "" and not args.force:
            raise ConfigurationError(
                f"{mask_url(uri)} has no prefix, so gc would abort every multipart upload in "
                "the bucket, also other tools'; name the prefix hoist writes under "
                "(s3://bucket/prefix), or add --force"
            )
        found = store.leftovers(args.older_than)
        removed = []
        for leftover in found:
            if not args.dry_run:
                store.discard(leftover)
            removed.append(leftover)
    freed = sum(item.size for item in removed)
    verb = "would free" if args.dry_run else "freed"
    if args.json:
        print(
            json.dumps(
                {
                    "store": mask_url(uri),
                    "dry_run": args.dry_run,
                    "older_than_seconds": args.older_than,
                    "removed": [dataclasses.asdict(item) for item in removed],
                    "objects": len(removed),
                    "bytes": freed,
                },
                indent=2,
            )
        )
        return 0
    sheet = Sheet(
        f"incomplete uploads older than {args.older_than:g} s",
        [
            Column("where", Kind.NAME),
            Column("kind", Kind.TEXT),
            Column("age"),
            Column("size"),
        ],
        [
            [cell(item.uri), item.kind, _age(now - item.started_at), format_bytes(item.size)]
            for item in removed
        ],
    )
    if removed:
        print_sheet(sheet)
    console.print(
        f"{len(removed)} incomplete upload(s); {verb} {format_bytes(freed)}",
        highlight=False,
        markup=False,
    )
    return 0


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ConfigurationError as exc:  # argparse shows this text, not "invalid value"
        raise argparse.ArgumentTypeError(str(exc)) from None


def _age(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"
