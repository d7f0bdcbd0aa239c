"""``hoist selfcheck``: round-trip a file through a store and show what each step cost."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

from rich.table import Table

from hoist.commands.console import console, format_bytes, format_rate, out, transfer_progress
from hoist.errors import HoistError
from hoist.settings import CommandSettings
from hoist.stores.uri import store_from_uri
from hoist.workers.cluster import store_uri

MiB = 1024 * 1024


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "selfcheck",
        help="round-trip a file through a store and verify it",
        description="Upload, verify, download and delete a file of random bytes.",
        epilog="example: hoist selfcheck --store s3://my-bucket/tmp?endpoint_url=http://minio:9000",
    )
    parser.add_argument("--store", help="store URI (s3://, sftp://, file://); default: embedded")
    parser.add_argument("--size-mib", type=float, default=64.0, help="size of the test file (MiB)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    uri = args.store or store_uri(args.home)
    if uri.startswith("file://"):
        os.makedirs(uri[len("file://") :], exist_ok=True)
    store = store_from_uri(uri, CommandSettings.from_environment().sftp_password)
    size = int(args.size_mib * MiB)
    name = f"hoist-selfcheck/{os.getpid()}-{int(time.time())}.bin"
    with tempfile.TemporaryDirectory(prefix="hoist-selfcheck-") as tmp, store:
        source = os.path.join(tmp, "source.bin")
        with open(source, "wb") as f:
            f.write(os.urandom(size))
        store.check()
        with transfer_progress() as bar:
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
    for column in ("step", "object", "size", "seconds", "rate", "checksum", "verified by"):
        table.add_column(column)
    for step, seconds, how in (
        ("upload", result.seconds, result.verified_by.value),
        ("download", download_seconds, "checksum equal"),
    ):
        table.add_row(
            step,
            result.uri,
            format_bytes(size),
            f"{seconds:.2f}",
            format_rate(size / max(seconds, 1e-9)),
            str(result.checksum),
            how,
        )
    out.print(table)
    console.print("[green]store OK[/]")
    return 0
