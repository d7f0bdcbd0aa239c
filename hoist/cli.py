"""The ``hoist`` command."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from hoist import __version__
from hoist.errors import HoistError

DEFAULT_HOME = ".hoist"
MiB = 1024 * 1024

console = Console(stderr=True)


def default_store_uri(home: str) -> str:
    """The embedded default store: Libcloud's ``local`` provider under ``<home>/store``."""
    return f"file://{os.path.abspath(os.path.join(home, 'store', 'artifacts'))}"


def cmd_selfcheck(args: argparse.Namespace) -> int:
    """Round-trip a file through a store and show what each step cost."""
    from hoist.stores.uri import store_from_uri

    uri = args.store or default_store_uri(args.home)
    if uri.startswith("file://"):
        os.makedirs(uri[len("file://") :], exist_ok=True)
    store = store_from_uri(uri)
    size = int(args.size_mib * MiB)
    name = f"hoist-selfcheck/{os.getpid()}-{int(time.time())}.bin"
    with tempfile.TemporaryDirectory(prefix="hoist-selfcheck-") as tmp, store:
        source = os.path.join(tmp, "source.bin")
        with open(source, "wb") as out:
            out.write(os.urandom(size))
        store.check()
        columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                   TransferSpeedColumn())  # fmt: skip
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("upload", total=size)
            result = store.upload_file(name, source, progress=lambda n: bar.advance(task, n))
            task = bar.add_task("download", total=size)
            started = time.monotonic()
            back = store.download_file(
                name, os.path.join(tmp, "back.bin"), progress=lambda n: bar.advance(task, n)
            )
            download_seconds = time.monotonic() - started
        store.delete(name)
    if back.checksum != result.checksum:
        raise HoistError(
            f"downloaded bytes differ from uploaded ones: {back.checksum} != {result.checksum}"
        )
    table = Table(title=f"hoist selfcheck: {uri}")
    for column in ("step", "object", "bytes", "seconds", "MB/s", "checksum", "verified by"):
        table.add_column(column)
    table.add_row("upload", result.uri, f"{result.size:,}", f"{result.seconds:.2f}",
                  f"{size / max(result.seconds, 1e-9) / 1e6:.0f}", str(result.checksum),
                  result.verified_by.value)  # fmt: skip
    table.add_row("download", result.uri, f"{back.size:,}", f"{download_seconds:.2f}",
                  f"{size / max(download_seconds, 1e-9) / 1e6:.0f}", str(back.checksum),
                  "checksum equal")  # fmt: skip
    Console().print(table)
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from hoist.stores.spec import new_fleet_key

    print(new_fleet_key())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hoist",
        description="Upload the artifacts of multi-node training runs to object stores.",
    )
    parser.add_argument("--version", action="version", version=f"hoist {__version__}")
    parser.add_argument("--home", default=os.environ.get("HOIST_HOME", DEFAULT_HOME),
                        help="directory of the embedded default (default: .hoist)")  # fmt: skip
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser("selfcheck", help="round-trip a file through a store and verify it")
    check.add_argument(
        "--store", help="store URI (s3://, sftp://, file://); default: the embedded store"
    )
    check.add_argument("--size-mib", type=float, default=64.0, help="size of the test file (MiB)")
    check.set_defaults(func=cmd_selfcheck)

    from hoist.workers import worker

    run = commands.add_parser("worker", help="run a worker of the upload fleet")
    worker.add_arguments(run)
    run.set_defaults(func=worker.run_worker)

    keygen = commands.add_parser("keygen", help="print a new HOIST_FLEET_KEY")
    keygen.set_defaults(func=cmd_keygen)
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
        console.print(f"[bold red]error:[/] {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
