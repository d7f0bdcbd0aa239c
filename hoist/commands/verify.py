"""``hoist verify``: check that the store still holds what a run uploaded.

One row per object: for an upload, the newest version the run finished
(a name logged again may have several done records; only the newest is what
the store should hold), checked for existence, size and CRC64NVME (read back,
or the store's own checksum where it proves the bytes); for a ``.symlink``
pointer, that it names the target its newest record wrote and that the
target exists. A later version from another run, or a pointer moved on by a
later write, is reported as such and is not a mismatch.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Set
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from hoist.commands.cluster_access import records_for
from hoist.commands.console import console, format_bytes, out
from hoist.errors import ChecksumMismatchError, ConfigurationError, HoistError, ObjectNotFoundError
from hoist.keys import FleetKeys
from hoist.protocol.messages import POINTER_TASK, UPLOAD_TASK
from hoist.protocol.pointers import PointerError, read_pointer
from hoist.settings import CommandSettings
from hoist.state.keys import pointer_key
from hoist.state.records import ArtifactStatus, Records
from hoist.state.retention import Retention
from hoist.state.states import State
from hoist.stores.base import ObjectStore
from hoist.stores.checksum import Checksum
from hoist.stores.spec import StoreSpec

OK = "ok"
MISSING = "missing"
SIZE_MISMATCH = "size mismatch"
CHECKSUM_MISMATCH = "checksum mismatch"
PRUNED = f"{OK} (pruned by retention)"
"""A pointer holds one object name; anything larger is not one."""


@dataclass(frozen=True)
class Check:
    """The verdict on one object.

    Parameters:
        uri: the object's URI (or its name, when the store could not be built).
        size: the size recorded for it.
        checksum: the checksum recorded for it (for a pointer: of its content).
        result: :data:`OK`, ``"ok (…)"``, :data:`MISSING`, :data:`SIZE_MISMATCH`,
            :data:`CHECKSUM_MISMATCH`, or the text of an error.
    """

    uri: str
    size: int
    checksum: str
    result: str

    @property
    def ok(self) -> bool:
        return self.result == OK or self.result.startswith(f"{OK} (")


class Stores:
    """Builds each store a run's messages name once, and closes them all.

    Parameters:
        fleet_key: opens sealed store credentials (``HOIST_FLEET_KEY``).
    """

    def __init__(self, fleet_key: str | FleetKeys | None) -> None:
        self.fleet_key = fleet_key
        self._built: dict[str, ObjectStore | HoistError] = {}

    def get(self, spec: StoreSpec) -> ObjectStore:
        """The store of ``spec``; re-raises the error building it gave the first time."""
        if spec.store_id not in self._built:
            try:
                self._built[spec.store_id] = spec.build(self.fleet_key)
            except HoistError as exc:
                self._built[spec.store_id] = exc
        built = self._built[spec.store_id]
        if isinstance(built, HoistError):
            raise built
        return built

    def close(self) -> None:
        for built in self._built.values():
            if isinstance(built, ObjectStore):
                built.close()


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "verify",
        help="check that the store holds what a run uploaded",
        description="For each object the run uploaded: that it exists with the recorded size "
        "and CRC64NVME checksum (read back, or the store's checksum where the store proves "
        "it). For each .symlink pointer: that it names its recorded target and the target "
        "exists. Exit 1 on any missing or different object.",
        epilog="example: hoist verify --run bert-3",
    )
    parser.add_argument("--run", metavar="NAME", required=True, help="the run to verify")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    records = records_for(args)
    objects = newest_done(records.run_artifacts(args.run))
    if not objects:
        raise ConfigurationError(
            f"run {args.run!r} has no finished uploads to verify; `hoist status --run "
            f"{args.run}` shows where it stands"
        )
    stores = Stores(CommandSettings.from_environment().keys)
    pruned = set(Retention(records.client, args.run).pruned())
    checks: list[Check] = []
    try:
        with _counting(len(objects)) as advance:
            for artifact in objects:
                checks.append(verify_artifact(records, stores, artifact, pruned))
                advance()
    finally:
        stores.close()
    out.print(check_table(args.run, checks))
    bad = [check for check in checks if not check.ok]
    if bad:
        console.print(f"[red]{len(bad)} of {len(checks)} objects do not verify[/]")
        return 1
    console.print(f"[green]all {len(checks)} objects of run {args.run} verify[/]", highlight=False)
    return 0


def newest_done(artifacts: list[ArtifactStatus]) -> list[ArtifactStatus]:
    """For each (store, object name), the run's newest done record, in logging order.

    Example:
        >>> newest = newest_done(records.run_artifacts("bert-3"))  # doctest: +SKIP
        >>> [a.artifact_name for a in newest]  # doctest: +SKIP
        ['train.log', 'ep1.pt', 'latest.pt']
    """
    newest: dict[tuple[str, str], ArtifactStatus] = {}
    for artifact in artifacts:
        if artifact.state is not State.DONE:
            continue
        message = artifact.message
        key = (StoreSpec.from_json(message["store"]).store_id, message["object_name"])
        if key not in newest or newest[key].message["order"] < message["order"]:
            newest[key] = artifact
    return sorted(newest.values(), key=lambda a: a.message["order"])


def verify_artifact(
    records: Records, stores: Stores, artifact: ArtifactStatus, pruned: Set[str] = frozenset()
) -> Check:
    """Check one done record's object in its store; errors become the row's result.

    An object in ``pruned`` (deleted by retention, :mod:`hoist.state.retention`)
    is meant to be gone: missing, it verifies as ``ok (pruned by retention)``.

    Example:
        >>> artifact = records.get("hoist-bert-3-r0-17")  # doctest: +SKIP
        >>> verify_artifact(records, Stores(key), artifact).result  # doctest: +SKIP
        'ok'
    """
    message = artifact.message
    spec = StoreSpec.from_json(message["store"])
    fields = artifact.fields
    size, checksum = int(fields.get("size") or 0), fields.get("checksum", "")
    uri = fields.get("uri") or message["object_name"]
    try:
        store = stores.get(spec)
        if fields.get("task") == POINTER_TASK:
            result = _check_pointer(records, store, spec, message)
        elif fields.get("task") == UPLOAD_TASK:
            expected = _expected_version(records, spec, artifact)
            size, checksum = int(expected.fields.get("size") or 0), expected.fields["checksum"]
            result = _check_upload(store, message["object_name"], size, checksum)
            if result == MISSING and message["object_name"] in pruned:
                result = PRUNED
            if result == OK and expected.id != artifact.id:
                result = f"{OK} (newer version {expected.id})"
        else:
            result = f"unknown task {fields.get('task')!r}"
    except HoistError as exc:
        result = str(exc)
    return Check(uri, size, checksum, result)


def _expected_version(
    records: Records, spec: StoreSpec, artifact: ArtifactStatus
) -> ArtifactStatus:
    """The record whose bytes the object should hold: a newer done version, if one was logged."""
    latest = records.latest(spec.store_id, artifact.message["object_name"])
    newest_id = None if latest is None else latest.artifact
    if newest_id and newest_id != artifact.id:
        newer = records.get(newest_id)
        if newer is not None and newer.state is State.DONE:
            return newer
    return artifact


def _check_upload(store: ObjectStore, name: str, size: int, checksum: str) -> str:
    try:
        held = store.stat(name)
    except ObjectNotFoundError:
        return MISSING
    if held.size != size:
        return f"{SIZE_MISMATCH} ({held.size} bytes held, {size} recorded)"
    try:
        store.verify(name, size, Checksum.parse(checksum))
    except ChecksumMismatchError:
        return CHECKSUM_MISMATCH
    except ObjectNotFoundError:
        return MISSING  # deleted between the two requests
    return OK


def _check_pointer(
    records: Records, store: ObjectStore, spec: StoreSpec, message: dict[str, Any]
) -> str:
    name, target = message["object_name"], message["target_object_name"]
    try:
        names = read_pointer(store, name)
    except ObjectNotFoundError:
        return MISSING
    except PointerError as exc:
        return f"not a pointer: {exc}"
    note = ""
    if names != target:
        marker = records.marker(pointer_key(spec.store_id, name))
        if marker is None or marker <= message["order"]:
            return f"points to {names!r}, not {target!r}"
        note = f" (moved on to {names})"  # a later pointer write, from this run or another
    if not store.exists(names):
        return f"target {names} is missing"
    return OK + note


@contextmanager
def _counting(total: int) -> Iterator[Callable[[], None]]:
    """A progress bar over objects, on stderr."""
    with Progress(
        TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), console=console, transient=True
    ) as bar:
        task = bar.add_task("verify", total=total)
        yield lambda: bar.advance(task)


def check_table(run: str, checks: list[Check]) -> Table:
    """One row per object: object, size, checksum, result."""
    table = Table(title=f"hoist verify: run {run}")
    table.add_column("object", overflow="fold")
    table.add_column("size", justify="right")
    table.add_column("checksum")
    table.add_column("result", overflow="fold")
    for check in checks:
        style = "green" if check.ok else "red"
        table.add_row(
            check.uri, format_bytes(check.size), check.checksum, f"[{style}]{check.result}[/]"
        )
    return table
