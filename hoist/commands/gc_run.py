"""``hoist gc --run NAME``: prune a run's old pointer targets by retention's rules.

The same code path as the workers' prune after a pointer write
(:class:`hoist.state.retention.Retention`): each pointer of the run that has
a history keeps its last ``--keep-last`` targets and every
``--keep-every``-th; nothing any pointer names, and nothing still uploading,
is deleted. A prune a killed worker left half-way is finished first.
``--dry-run`` lists what would go and changes nothing (neither the store nor
the records).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from hoist.commands.cluster_access import records_for
from hoist.commands.console import Column, Kind, Sheet, cell, console, format_bytes, print_sheet
from hoist.commands.verify import Stores
from hoist.errors import ConfigurationError
from hoist.protocol.messages import check_keep
from hoist.settings import CommandSettings
from hoist.state.retention import Pruned, Retention, measure
from hoist.stores.spec import StoreSpec


def prune_run(
    retention: Retention, stores: Stores, keep_last: int, keep_every: int, dry_run: bool
) -> list[Pruned]:
    """Prune (or, with ``dry_run``, plan) every pointer of ``retention``'s run.

    Raises:
        ConfigurationError: the run has no pointer history (no pointer written
            since retention was built, or the run name is wrong).
    """
    pointers = retention.pointers()
    if not pointers:
        raise ConfigurationError(
            f"run {retention.run_name!r} has no pointer history in this state Redis; "
            f"`hoist status --run {retention.run_name}` shows what it holds"
        )
    specs = retention.store_specs()
    found: list[Pruned] = []
    for store_id, pointer in pointers:
        store = stores.get(StoreSpec.from_json(specs[store_id]))
        if dry_run:
            planned = retention.plan(store, store_id, pointer, keep_last, keep_every)
            found.extend(measure(store, member) for member in planned)
        else:
            found.extend(retention.prune(store, store_id, pointer, keep_last, keep_every))
    return found


def run_gc(args: argparse.Namespace) -> int:
    """The ``--run`` form of ``hoist gc``: a table, or ``--json``."""
    keep_last = _keep("--keep-last", args.keep_last)
    keep_every = _keep("--keep-every", args.keep_every) if args.keep_every is not None else 0
    records = records_for(args)
    retention = Retention.of(records, args.run)
    stores = Stores(CommandSettings.from_environment().keys)
    try:
        found = prune_run(retention, stores, keep_last, keep_every, args.dry_run)
    finally:
        stores.close()
    objects = sum(item.objects for item in found)
    freed = sum(item.bytes for item in found)
    if args.json:
        print(
            json.dumps(
                {
                    "run": args.run,
                    "dry_run": args.dry_run,
                    "keep_last": keep_last,
                    "keep_every": keep_every,
                    "pruned": [dataclasses.asdict(item) for item in found],
                    "objects": objects,
                    "bytes": freed,
                },
                indent=2,
            )
        )
        return 0
    if found:
        print_sheet(
            Sheet(
                f"old pointer targets of run {args.run}",
                [
                    Column("target", Kind.NAME),
                    Column("kind", Kind.TEXT),
                    Column("objects"),
                    Column("size"),
                ],
                [
                    [
                        cell(item.object_name),
                        "step" if item.kind == "s" else "file",
                        str(item.objects),
                        format_bytes(item.bytes),
                    ]
                    for item in found
                ],
            )
        )
    verb = "would free" if args.dry_run else "freed"
    console.print(
        f"{len(found)} old target(s), {objects} object(s); {verb} {format_bytes(freed)}",
        highlight=False,
        markup=False,
    )
    return 0


def _keep(flag: str, value: int | None) -> int:
    if value is None:
        raise ConfigurationError(f"gc --run needs {flag} K: how many targets each pointer keeps")
    try:
        return check_keep(flag.strip("-").replace("-", "_"), value)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{flag}: {exc}") from None
