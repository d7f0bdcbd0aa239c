"""``hoist download``: fetch an artifact, following ``.symlink`` pointers.

See :mod:`hoist.download` for the forms of URI_OR_ARTIFACT.
"""

from __future__ import annotations

import argparse
import posixpath
from typing import Any

from hoist.commands.console import console, format_bytes, out, transfer_progress
from hoist.commands.home import load_environment
from hoist.commands.startup import long_lived
from hoist.download import fetch, resolve
from hoist.settings import CommandSettings


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "download",
        help="download an artifact, following .symlink pointers",
        description="URI_OR_ARTIFACT is one of: an object name in the store --store (default "
        "HOIST_STORE_URI); an object URI (s3://bucket/key, sftp://user@host:port/path, "
        "file:///dir/key, local://container/key), taken inside --store when it lies there; "
        "or, with --run, a name the run logged, in the store its records name. When the "
        "object does not exist but NAME.symlink does (or NAME ends in .symlink), the pointer "
        "is followed, up to 8 deep, inside the same store. S3 objects are fetched as parallel "
        "ranged GETs and checked against the size and CRC64NVME the store or the run's record "
        "says; the download is written to a temporary file and renamed into place only when it "
        "matches; its path is printed to stdout.",
        epilog="example: hoist download latest-rank0.pt ./ckpt/ --run bert-3",
    )
    parser.add_argument("source", metavar="URI_OR_ARTIFACT", help="what to download")
    parser.add_argument(
        "dest", metavar="DEST", help="file to write, or a directory to download into"
    )
    parser.add_argument(
        "--run", metavar="NAME", help="look URI_OR_ARTIFACT up in this run's records"
    )
    parser.add_argument(
        "--store",
        metavar="URI",
        help="the store it is in (s3://, sftp://, file://; default HOIST_STORE_URI)",
    )
    parser.add_argument(
        "--durable",
        action="store_true",
        help="fsync the file and its directory before returning, so it survives a power loss "
        "(off by default: a download can be fetched again, and the fsync can take longer than it)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # The CLI is the edge: it reads the environment (after <home>/env) and hands
    # the library the store, the records and the fleet key explicitly.
    load_environment(args)
    command = CommandSettings.from_environment()
    store = args.store if args.store is not None else command.store_uri
    if args.run:
        # Imported here: the records (and redis) cost a resume by URI 0.1 s of start-up.
        from hoist.commands.cluster_access import records_for

        records, fleet_key = records_for(args), command.keys
    else:
        records, fleet_key = None, None
    with long_lived():  # the store's client and its model stay until the command ends
        resolved = resolve(
            args.source, run=args.run, store=store, records=records, fleet_key=fleet_key
        )
    for pointer, target in resolved.hops:
        console.print(f"{pointer} -> {target}", highlight=False)
    with transfer_progress() as bar:
        task = bar.add_task(posixpath.basename(resolved.object_name), total=resolved.size)
        downloaded = fetch(
            resolved, args.dest, progress=lambda n: bar.advance(task, n), durable=args.durable
        )
    console.print(
        f"[green]downloaded[/] {downloaded.uri} ({format_bytes(downloaded.size)}, "
        f"{downloaded.checksum}) to {downloaded.path}",
        highlight=False,
    )
    out.print(downloaded.path, soft_wrap=True, highlight=False, markup=False)
    return 0
