"""Retention by pointer: old targets leave the store, never one a pointer names.

The rules as pure logic first; then a real run: real Redis, real ``hoist
worker`` processes, real S3 (moto). Each pointer call is followed by
``wait()``, so each pointer write lands in order and joins its history
(a pointer superseded before it is written never names anything, so it
adds nothing to prune).
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hoist import LogLevel, ObjectStoreLogger
from hoist.cli import main
from hoist.errors import (
    ConfigurationError,
    InvalidMessageError,
    TransientStoreError,
    UploadFailedError,
)
from hoist.logger.retention import KeepRule
from hoist.protocol.manifest import MANIFEST_NAME
from hoist.protocol.messages import (
    COMMIT_TASK,
    POINTER_TASK,
    UPLOAD_TASK,
    PointerRequest,
    UploadRequest,
    order_key,
)
from hoist.state.keys import RETENTION_DUE
from hoist.state.records import Records
from hoist.state.retention import (
    FILE,
    STEP,
    Mark,
    Retention,
    RetentionError,
    entry,
    victims,
)
from hoist.state.states import State
from hoist.stores.s3 import S3ObjectStore
from hoist.tasks.resender import Resender
from tests.conftest import serve_fleet
from tests.services.keys import KEYS
from tests.services.redis import RedisServer
from tests.services.s3 import S3Server
from tests.services.workers import WorkerFleet, wait_until
from tests.test_worker_core import World, local_spec
from tests.test_worker_core import world as world  # the fixture, shared
from tests.test_worker_core_pointers import commit, shard
from tests.test_worker_core_pointers import pointer as point  # a pointer with keep_last

# ----- the rules -----------------------------------------------------------------


def history(count: int) -> list[tuple[str, int]]:
    return [(entry(FILE, f"ep{i}.pt"), i) for i in range(1, count + 1)]


def test_keep_last_deletes_only_beyond_the_newest_k() -> None:
    assert victims(history(5), 2, 0, set()) == ["f|ep1.pt", "f|ep2.pt", "f|ep3.pt"]
    assert victims(history(2), 2, 0, set()) == []
    assert victims(history(5), 0, 0, set()) == []  # no keep_last: keep everything


def test_milestones_and_named_objects_stay() -> None:
    assert victims(history(7), 1, 3, set()) == ["f|ep1.pt", "f|ep2.pt", "f|ep4.pt", "f|ep5.pt"]
    assert victims(history(4), 1, 0, {"ep2.pt"}) == ["f|ep1.pt", "f|ep3.pt"]
    step = entry(STEP, "run/checkpoints/step-1/manifest.json")
    assert victims([(step, 1), (entry(STEP, "m2"), 2)], 1, 0, set()) == [step]


@pytest.mark.parametrize("value", [0, -1, 1.5, "3", True, 10**7])
def test_hostile_keep_values_are_refused_in_the_caller(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="keep_last must be a positive whole number"):
        KeepRule.of(value)
    with pytest.raises(ConfigurationError, match="keep_every must be a positive whole number"):
        KeepRule(2).fields(None, value)


def test_a_worker_refuses_a_message_with_an_out_of_range_keep() -> None:
    body = PointerRequest("i", "r", 0, 1, "a", "o", "k", {}, keep_last=3).to_json()
    assert PointerRequest.from_json(body).keep_last == 3
    for bad in (-1, "3", 10**7):
        with pytest.raises(InvalidMessageError, match="keep_last"):
            PointerRequest.from_json({**body, "keep_last": bad})


# ----- a worker's decisions, in this process (real Redis, a real local store) -----


def landed(world: World, name: str, data: bytes, overwrite: bool = False) -> UploadRequest:
    message = world.upload(name, data, overwrite=overwrite)
    assert world.deliver(UPLOAD_TASK, message)["outcome"] == State.DONE.value
    return message


def retention_of(world: World) -> Retention:
    return Retention.of(world.records, world.run)


def test_a_name_logged_again_after_its_mark_keeps_its_object(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-uploads under victims' names between mark and delete: one finished before the
    delete, one only queued, one logged while its old version is being deleted. Each new
    version survives; only the old version of the last is deleted, and a pointer may
    name the new one."""
    epochs = [landed(world, f"ep{n}.pt", b"old %d" % n) for n in range(1, 5)]
    for target in epochs:
        assert world.deliver(POINTER_TASK, point(world, target))["outcome"] == "done"
    retention, store_id = retention_of(world), world.spec.store_id
    store = world.spec.build(KEYS)
    pointer = f"{world.run}/latest.pt.symlink"
    assert retention.mark(store, store_id, pointer, 1, 0) == [
        f"f|{t.object_name}" for t in epochs[:3]
    ]
    ep1, ep2, ep3 = (t.object_name for t in epochs[:3])
    landed(world, "ep1.pt", b"new 1", overwrite=True)  # re-uploaded and done
    world.upload("ep2.pt", b"new 2", overwrite=True)  # re-queued, not yet sent
    during: list[dict[str, Any]] = []
    delete = store.delete

    def delete_while_logged_again(name: str) -> None:
        # Logged after the last check: its upload must wait for the name's lock.
        again = world.upload("ep3.pt", b"new 3", overwrite=True)
        during.append({"message": again, "result": world.deliver(UPLOAD_TASK, again)})
        delete(name)

    monkeypatch.setattr(store, "delete", delete_while_logged_again)
    assert [p.object_name for p in retention.finish(store, store_id)] == [ep3]
    assert during[0]["result"]["outcome"] == State.WAITING.value
    assert world.held(ep1).read_bytes() == b"new 1"
    assert world.held(ep2).read_bytes() == b"old 2"  # its new version is still queued
    assert not world.held(ep3).exists()
    assert world.deliver(UPLOAD_TASK, during[0]["message"])["outcome"] == "done"
    assert world.held(ep3).read_bytes() == b"new 3"
    assert retention.marked() == [] and retention.pruned() == {ep3: len(b"old 3")}
    # The new versions are no objects retention took: a pointer may name them.
    newest = world.records.latest(store_id, ep3)
    assert newest is not None
    again = world.records.get(newest.artifact)
    assert again is not None
    message = point(world, UploadRequest.from_json(again.message))
    assert world.deliver(POINTER_TASK, message)["outcome"] == "done"
    # Every retention key of the run expires with the run (HOIST_RETENTION_DAYS).
    client = world.records.client
    keys = [retention.named_key, retention.ordinal_key, retention.stores_key]
    keys += [retention.pruned_key, retention.history_key(store_id, pointer)]
    assert all(0 < client.ttl(key) <= retention.ttl_seconds for key in keys)


def test_the_resender_deletes_no_mark_outside_the_fleets_allowed_stores(world: World) -> None:
    """Marks and store specs are read from the state Redis: ones written there by hand,
    naming an object outside the allowed store's container and a store the fleet does not
    allow, delete nothing (and stay); the run's own mark is finished."""
    ep1 = landed(world, "ep1.pt", b"one")
    retention, store_id = retention_of(world), world.spec.store_id
    outside = world.base / "keep.bin"  # beside the container, not in it
    outside.write_bytes(b"not in the store")
    elsewhere = local_spec(world.root / "elsewhere")
    (world.root / "elsewhere" / "artifacts").mkdir(parents=True)
    (world.root / "elsewhere" / "artifacts" / "x.bin").write_bytes(b"another store")
    specs = {s.store_id: json.dumps(s.to_json()) for s in (world.spec, elsewhere)}
    client = world.records.client
    client.hset(retention.stores_key, mapping=specs)
    versions = retention.versions(store_id, [ep1.object_name])
    assert versions is not None
    for mark in (
        Mark(ep1.object_name, FILE, store_id, versions),
        Mark("../keep.bin", FILE, store_id, {"../keep.bin": ""}),
        Mark("x.bin", FILE, elsewhere.store_id, {"x.bin": ""}),
    ):
        client.hset(retention.pruning_key, mark.object_name, mark.to_json())
    client.zadd(RETENTION_DUE, {world.run: 0})  # marked long ago: overdue
    allowed = world.settings.allowed
    resender = Resender(world.records, print, 300.0, stores=world.stores, allowed=allowed)
    assert resender.finish_prunes() == 1
    assert not world.held(ep1.object_name).exists()
    assert outside.read_bytes() == b"not in the store"
    assert (world.root / "elsewhere" / "artifacts" / "x.bin").exists()
    assert sorted(m.object_name for m in retention.marked()) == ["../keep.bin", "x.bin"]
    client.zrem(RETENTION_DUE, world.run)


def test_a_rank_releasing_objects_deletes_only_what_it_marked_now(world: World) -> None:
    """``release`` (Lightning's dropped checkpoints, on the rank) has no allowed stores to
    check marks read back from Redis by: another mark of the same store, written there by
    hand, is left for the fleet, object and mark."""
    ep1, ep2 = (landed(world, f"ep{n}.pt", b"%d" % n) for n in (1, 2))
    retention, store_id = retention_of(world), world.spec.store_id
    versions = retention.versions(store_id, [ep2.object_name])
    assert versions is not None
    other = Mark(ep2.object_name, FILE, store_id, versions)
    world.records.client.hset(retention.pruning_key, other.object_name, other.to_json())
    store = world.stores(world.spec)
    assert retention.release(store, store_id, [ep1.object_name]) == {ep1.object_name}
    assert not world.held(ep1.object_name).exists()
    assert world.held(ep2.object_name).read_bytes() == b"2"
    assert [m.object_name for m in retention.marked()] == [ep2.object_name]


def test_a_waiting_pointer_job_keeps_the_intent_of_the_one_writing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``latest`` moves back to ep1 (job A); while A's PUT is in flight, job B of the same
    pointer finds its lock taken and waits, dropping only its own intent. A prune then
    keeps ep1, which A is about to name; and an intent written after a mark (as one
    erased and written again would be) keeps the object at the delete, mark and all."""
    epochs = [landed(world, f"ep{n}.pt", b"%d" % n) for n in range(1, 4)]
    for target in epochs:
        assert world.deliver(POINTER_TASK, point(world, target))["outcome"] == "done"
    ep1, ep2, ep3 = (t.object_name for t in epochs)
    retention, store_id = retention_of(world), world.spec.store_id
    store = world.stores(world.spec)
    pointer = f"{world.run}/latest.pt.symlink"
    during: list[Any] = []
    put = store.put_bytes

    def put_while_another_waits(name: str, data: bytes) -> Any:
        waiting = point(world, epochs[1])
        during.append(world.deliver(POINTER_TASK, waiting)["outcome"])
        during.append(retention.mark(store, store_id, pointer, 1, 0))
        retention.finish(store, store_id)
        return put(name, data)

    monkeypatch.setattr(store, "put_bytes", put_while_another_waits)
    assert world.deliver(POINTER_TASK, point(world, epochs[0]))["outcome"] == "done"
    assert during == [State.WAITING.value, [f"f|{ep2}"]]
    assert world.held(ep1).read_bytes() == b"1" and not world.held(ep2).exists()
    monkeypatch.undo()
    # The check under the name's lock: an intent the mark did not see keeps the object.
    assert retention.mark(store, store_id, pointer, 1, 0) == [f"f|{ep3}"]
    world.records.client.hset(retention.named_key, f"{store_id}|other|next|job", ep3)
    assert retention.finish(store, store_id) == []
    assert world.held(ep3).exists() and [m.object_name for m in retention.marked()] == [ep3]
    world.records.client.hdel(retention.named_key, f"{store_id}|other|next|job")
    assert [p.object_name for p in retention.finish(store, store_id)] == [ep3]
    assert not world.held(ep3).exists()


def test_a_store_error_on_one_mark_leaves_it_and_finishes_the_others(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    epochs = [landed(world, f"ep{n}.pt", b"%d" % n) for n in range(1, 4)]
    for target in epochs:
        assert world.deliver(POINTER_TASK, point(world, target))["outcome"] == "done"
    ep1, ep2, _ = (t.object_name for t in epochs)
    retention, store_id = retention_of(world), world.spec.store_id
    store = world.spec.build(KEYS)
    assert len(retention.mark(store, store_id, f"{world.run}/latest.pt.symlink", 1, 0)) == 2
    delete = store.delete

    def refuse_ep1(name: str) -> None:
        if name == ep1:
            raise TransientStoreError(f"the store answered 503 for {name}")
        delete(name)

    monkeypatch.setattr(store, "delete", refuse_ep1)
    assert [p.object_name for p in retention.finish(store, store_id)] == [ep2]
    assert world.held(ep1).exists() and not world.held(ep2).exists()
    assert [m.object_name for m in retention.marked()] == [ep1]  # for the next pass
    monkeypatch.undo()
    assert [p.object_name for p in retention.finish(store, store_id)] == [ep1]


def test_each_deletion_is_recorded_as_it_happens(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step's second file fails to delete: its first, already gone, is recorded."""
    for number in (1, 2):
        files = [shard(world, number, rank, b"step %d rank %d" % (number, rank)) for rank in (0, 1)]
        for file in files:
            assert world.deliver(UPLOAD_TASK, file)["outcome"] == State.DONE.value
        message = commit(world, number, 2, {r: [f.id] for r, f in enumerate(files)})
        assert world.deliver(COMMIT_TASK, message)["outcome"] == State.DONE.value
    retention, store_id = retention_of(world), world.spec.store_id
    store = world.spec.build(KEYS)
    assert len(retention.mark(store, store_id, f"{world.run}/latest.symlink", 1, 0)) == 1
    step = f"{world.run}/checkpoints/step-00000001"
    delete = store.delete

    def fail_rank1(name: str) -> None:
        if name == f"{step}/rank1.pt":
            raise TransientStoreError(f"the store answered 503 for {name}")
        delete(name)

    monkeypatch.setattr(store, "delete", fail_rank1)
    assert retention.finish(store, store_id) == []
    assert retention.pruned() == {f"{step}/rank0.pt": len(b"step 1 rank 0")}
    monkeypatch.undo()
    assert [p.objects for p in retention.finish(store, store_id)] == [2]  # rank1, manifest
    assert len(retention.pruned()) == 3 and not retention.marked()


def test_a_stale_finish_leaves_a_newer_mark_of_the_same_object(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finish read ep1's mark; ep1 is logged again and marked again (its new version)
    before that finish gets to it: the stale finish keeps the new version and its mark."""
    epochs = [landed(world, f"ep{n}.pt", b"%d" % n) for n in range(1, 3)]
    for target in epochs:
        assert world.deliver(POINTER_TASK, point(world, target))["outcome"] == "done"
    ep1 = epochs[0].object_name
    retention, store_id = retention_of(world), world.spec.store_id
    store = world.spec.build(KEYS)
    assert retention.mark(store, store_id, f"{world.run}/latest.pt.symlink", 1, 0) == [f"f|{ep1}"]
    stale = retention.marked(store_id)
    landed(world, "ep1.pt", b"new 1", overwrite=True)
    versions = retention.versions(store_id, [ep1])
    assert versions is not None
    newer = Mark(ep1, FILE, store_id, versions)
    world.records.client.hset(retention.pruning_key, ep1, newer.to_json())
    monkeypatch.setattr(retention, "marked", lambda store_id=None: stale)
    assert retention.finish(store, store_id) == []  # its version changed: kept
    monkeypatch.undo()
    assert retention.marked() == [newer]
    assert [p.object_name for p in retention.finish(store, store_id)] == [ep1]
    assert not world.held(ep1).exists()


def test_marks_of_the_form_before_versions_are_finished(world: World) -> None:
    """``<kind>|<store>`` marks (before marks held versions): a pointer may not name the
    object, and a finish deletes it, a step's files too, as the marks of then meant."""
    ep1 = landed(world, "ep1.pt", b"one").object_name
    for number in (2, 1):  # latest names step 2
        files = [shard(world, number, rank, b"rank %d" % rank) for rank in (0, 1)]
        for file in files:
            assert world.deliver(UPLOAD_TASK, file)["outcome"] == State.DONE.value
        message = commit(world, number, 2, {r: [f.id] for r, f in enumerate(files)})
        assert world.deliver(COMMIT_TASK, message)["outcome"] in ("done", "superseded")
    manifest = f"{world.run}/checkpoints/step-00000001/{MANIFEST_NAME}"
    retention, store_id = retention_of(world), world.spec.store_id
    old = {ep1: f"{FILE}|{store_id}", manifest: f"{STEP}|{store_id}"}
    world.records.client.hset(retention.pruning_key, mapping=old)
    with pytest.raises(RetentionError, match="deleted from the store by retention"):
        retention.intend(store_id, f"{world.run}/best.pt.symlink", ep1, "job-1")
    store = world.spec.build(KEYS)
    done = {p.object_name: p.objects for p in retention.finish(store, store_id)}
    assert done == {ep1: 1, manifest: 3} and not retention.marked()
    assert not world.held(ep1).exists() and not world.held(manifest).exists()
    assert not any(world.held(f.object_name).exists() for f in files)


def test_a_superseded_pointers_target_joins_the_history_and_is_pruned(world: World) -> None:
    ep1, ep2, ep3 = (landed(world, f"ep{n}.pt", b"%d" % n) for n in range(1, 4))
    early = point(world, ep1, order=order_key(0, 100), keep_last=1)
    late = point(world, ep2, order=order_key(0, 101), keep_last=1)
    assert world.deliver(POINTER_TASK, late)["outcome"] == State.DONE.value
    assert world.deliver(POINTER_TASK, early)["outcome"] == State.SUPERSEDED.value
    # In its logged place, older than ep2: pruned by the rule in its turn, not leaked,
    # and not kept over ep2 as it was when the history went by when writes finished.
    assert not world.held(ep1.object_name).exists()
    assert world.held(ep2.object_name).exists()
    newest = point(world, ep3, keep_last=1)
    assert world.deliver(POINTER_TASK, newest)["outcome"] == State.DONE.value
    assert not world.held(ep2.object_name).exists()
    assert world.held(late.object_name).read_text() == ep3.object_name


def test_a_pointer_overtaken_twice_leaves_the_newest_two_in_the_store(world: World) -> None:
    """ep1's pointer is delivered after ep2's and ep3's were written (seen under the real
    Composer): with keep_last=2 ep2 and ep3 stay, and ep1, never named, goes."""
    ep1, ep2, ep3 = (landed(world, f"ep{n}.pt", b"%d" % n) for n in range(1, 4))
    pointers = [point(world, ep, order=order_key(0, 100 + n), keep_last=2) for n, ep in
                enumerate((ep1, ep2, ep3))]  # fmt: skip
    for late in pointers[1:]:
        assert world.deliver(POINTER_TASK, late)["outcome"] == State.DONE.value
    assert world.deliver(POINTER_TASK, pointers[0])["outcome"] == State.SUPERSEDED.value
    assert not world.held(ep1.object_name).exists()
    assert world.held(ep2.object_name).exists() and world.held(ep3.object_name).exists()


def test_a_sharded_run_keeps_its_last_two_steps_and_a_file_logged_again(world: World) -> None:
    """Four committed steps of two ranks with keep_last=2: steps 1 and 2 go, files then
    manifest. Step 3's rank-1 file is logged again between step 3's mark and its deletion:
    that file's new version stays, step 3's other objects go, its manifest last."""

    def step(number: int, keep_last: int) -> None:
        files = [shard(world, number, rank, b"step %d rank %d" % (number, rank)) for rank in (0, 1)]
        for file in files:
            assert world.deliver(UPLOAD_TASK, file)["outcome"] == State.DONE.value
        message = commit(
            world, number, 2, {r: [f.id] for r, f in enumerate(files)}, keep_last=keep_last
        )
        assert world.deliver(COMMIT_TASK, message)["outcome"] == State.DONE.value

    def held() -> set[str]:
        root = world.held(world.run) / "checkpoints"
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}

    for number in range(1, 5):
        step(number, keep_last=2)
    files = [MANIFEST_NAME, "rank0.pt", "rank1.pt"]
    assert held() == {f"step-{n:08d}/{f}" for n in (3, 4) for f in files}
    retention, store_id = retention_of(world), world.spec.store_id
    assert len(retention.pruned()) == 6  # each file and manifest of steps 1 and 2
    pointer = f"{world.run}/latest.symlink"
    store = world.spec.build(KEYS)
    assert retention.mark(store, store_id, pointer, 1, 0) == [
        f"s|{world.run}/checkpoints/step-00000003/{MANIFEST_NAME}"
    ]
    again = shard(world, 3, 1, b"step 3 rank 1, again")
    assert world.deliver(UPLOAD_TASK, again)["outcome"] == State.DONE.value
    retention.finish(store, store_id)
    assert held() == {"step-00000003/rank1.pt"} | {f"step-00000004/{f}" for f in files}
    assert world.held(again.object_name).read_bytes() == b"step 3 rank 1, again"


# ----- a real run ----------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFleet]:
    yield from serve_fleet(tmp_path_factory, redis_server.url, "retention", count=1, concurrency=2)


def make_logger(fleet: WorkerFleet, s3: S3Server, run: str, **extra: Any) -> ObjectStoreLogger:
    return ObjectStoreLogger(
        object_store_cls=S3ObjectStore,
        object_store_kwargs={
            "bucket": s3.bucket,
            "endpoint_url": s3.endpoint_url,
            "aws_access_key_id": s3.access_key,
            "aws_secret_access_key": s3.secret_key,
        },
        broker_url=fleet.broker_url,
        upload_staging_folder=str(fleet.staging_root),
        run_name=run,
        rank=0,
        local_rank=0,
        world_size=1,
        local_world_size=1,
        node_rank=0,
        store_check=False,
        **extra,
    )


def objects(s3: S3Server, run: str) -> dict[str, int]:
    listing = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=f"{run}/")
    return {o["Key"]: o["Size"] for o in listing.get("Contents", [])}


def pointer_text(s3: S3Server, name: str) -> str:
    return s3.client().get_object(Bucket=s3.bucket, Key=name)["Body"].read().decode()


def log_epoch(
    logger: ObjectStoreLogger, tmp_path: Path, epoch: int, best: str = "", **keep: Any
) -> None:
    """Log ``ep<epoch>.pt``, point ``latest.pt`` at it (and ``best.pt`` at ``best``), wait."""
    path = tmp_path / f"ep{epoch}.pt"
    path.write_bytes(bytes([epoch]) * (1000 + epoch))
    logger.file_artifact(LogLevel.EPOCH, f"ep{epoch}.pt", path)
    logger.symlink_artifact(f"ep{epoch}.pt", "latest.pt", **keep)
    if best:  # another pointer, written independently of latest's: one wait for both
        logger.symlink_artifact(best, "best.pt")
    logger.wait(timeout=60)


def eventually(expected: Any, read: Any, timeout: float = 30.0) -> Any:
    """What ``read()`` returns once it equals ``expected`` (or at the timeout): a prune
    runs after its pointer's settle, so ``wait()`` may return before it ends."""
    wait_until(lambda: read() == expected, timeout=timeout)
    return read()


def run_name() -> str:
    return f"ret-{uuid.uuid4().hex[:8]}"


def test_two_pointers_sharing_targets_keep_what_either_names(
    fleet: WorkerFleet, moto_server: S3Server, redis_server: RedisServer, tmp_path: Path
) -> None:
    run = run_name()
    with make_logger(fleet, moto_server, run, keep_last=2) as logger:
        log_epoch(logger, tmp_path, 1, best="ep1.pt")  # best names ep1 from now on
        for epoch in range(2, 5):  # latest: 1 (also best's), 2 (pruned), 3, 4
            log_epoch(logger, tmp_path, epoch)
    art = f"{run}/artifacts"
    expected = sorted(
        [f"{art}/ep1.pt", f"{art}/ep3.pt", f"{art}/ep4.pt"]
        + [f"{art}/latest.pt.symlink", f"{art}/best.pt.symlink"]
    )
    assert eventually(expected, lambda: sorted(objects(moto_server, run))) == expected
    assert pointer_text(moto_server, f"{art}/latest.pt.symlink") == f"{art}/ep4.pt"
    assert pointer_text(moto_server, f"{art}/best.pt.symlink") == f"{art}/ep1.pt"
    client = Records.from_url(redis_server.url).client
    assert Retention(client, run).pruned() == {f"{art}/ep2.pt": 1002}


@pytest.mark.long  # the rule itself is tested above without servers; budget of the default run
def test_keep_every_keeps_milestones(
    fleet: WorkerFleet, moto_server: S3Server, tmp_path: Path
) -> None:
    run = run_name()
    with make_logger(fleet, moto_server, run) as logger:
        for epoch in range(1, 6):
            log_epoch(logger, tmp_path, epoch, keep_last=1, keep_every=2)
    art = f"{run}/artifacts"
    expected = {f"{art}/ep2.pt", f"{art}/ep4.pt", f"{art}/ep5.pt"}
    kept = eventually(
        expected, lambda: {k for k in objects(moto_server, run) if not k.endswith(".symlink")}
    )
    assert kept == expected


def s3_store(s3: S3Server) -> S3ObjectStore:
    return S3ObjectStore(
        bucket=s3.bucket,
        endpoint_url=s3.endpoint_url,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
    )


def test_a_prune_left_half_way_is_finished_by_the_resender_and_never_named_again(
    fleet: WorkerFleet, moto_server: S3Server, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A worker killed between marking and deleting leaves the marks: the state here is
    made by the same ``mark`` (a lease time ago) and one of the two deletions, as a worker
    killed after its first ``DELETE`` leaves it. No pointer follows: the fleet's resender
    finishes it on its own."""
    run = run_name()
    art = f"{run}/artifacts"
    client = Records.from_url(redis_server.url).client
    with make_logger(fleet, moto_server, run) as logger:
        for epoch in range(1, 4):
            log_epoch(logger, tmp_path, epoch)  # no keep_last: nothing goes
        killed = Retention(client, run, clock=lambda: time.time() - 60)  # marked a minute ago
        ((store_id, pointer),) = killed.pointers()
        with s3_store(moto_server) as store:
            marked = killed.mark(store, store_id, pointer, 1, 0)
        assert marked == [f"f|{art}/ep1.pt", f"f|{art}/ep2.pt"]
        moto_server.client().delete_object(Bucket=moto_server.bucket, Key=f"{art}/ep1.pt")
        retention = Retention(client, run)
        gone = {f"{art}/ep1.pt", f"{art}/ep2.pt"}
        assert eventually(gone, lambda: set(retention.pruned()), timeout=15) == gone
        assert not retention.marked(store_id)
        assert client.zscore(RETENTION_DUE, run) is None  # the run left the resender's index
        # A pointer may not name what retention took: it fails, and moves nothing.
        logger.symlink_artifact("ep2.pt", "latest.pt")
        with pytest.raises(UploadFailedError, match="deleted from the store by retention"):
            logger.wait(timeout=60)
    held = objects(moto_server, run)
    assert f"{art}/ep2.pt" not in held and f"{art}/ep3.pt" in held
    assert pointer_text(moto_server, f"{art}/latest.pt.symlink") == f"{art}/ep3.pt"


@pytest.mark.long  # in this process above; here through real workers and S3
def test_a_sharded_run_keeps_its_last_two_steps(
    fleet: WorkerFleet, moto_server: S3Server, tmp_path: Path
) -> None:
    run = run_name()
    with make_logger(fleet, moto_server, run) as logger:
        for step in range(1, 5):
            directory = tmp_path / f"step-{step}"
            directory.mkdir()
            (directory / "__0_0.distcp").write_bytes(b"s" * 2048)
            (directory / ".metadata").write_bytes(json.dumps({"step": step}).encode())
            logger.log_checkpoint_dir(step, directory, keep_last=2)
            logger.wait(timeout=60)
    expected = {"step-00000003", "step-00000004"}

    def steps() -> set[str]:
        return {k.split("/")[2] for k in objects(moto_server, run) if "/checkpoints/" in k}

    assert eventually(expected, steps) == expected, sorted(objects(moto_server, run))
    held = objects(moto_server, run)
    assert sum(1 for k in held if k.endswith("manifest.json")) == 2, sorted(held)


def cli(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["--home", str(home), *args])
    return code, capsys.readouterr().out


def test_gc_run_prunes_by_the_same_rules_and_dry_run_changes_nothing(
    fleet: WorkerFleet,
    moto_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = run_name()
    art = f"{run}/artifacts"
    with make_logger(fleet, moto_server, run) as logger:
        for epoch in range(1, 5):
            log_epoch(logger, tmp_path, epoch, best="ep2.pt" if epoch == 4 else "")
    monkeypatch.setenv("HOIST_BROKER_URL", fleet.broker_url)
    before = objects(moto_server, run)
    gone = [f"{art}/ep1.pt", f"{art}/ep3.pt"]  # ep2: best names it; ep4: latest's last

    code, text = cli(
        capsys, tmp_path, "gc", "--run", run, "--keep-last", "1", "--dry-run", "--json"
    )
    planned = json.loads(text)
    assert code == 0 and [p["object_name"] for p in planned["pruned"]] == gone
    assert (planned["objects"], planned["bytes"]) == (2, 1001 + 1003)
    assert objects(moto_server, run) == before  # a dry run deletes nothing

    code, text = cli(capsys, tmp_path, "gc", "--run", run, "--keep-last", "1", "--json")
    assert code == 0 and json.loads(text)["bytes"] == 1001 + 1003
    assert set(before) - set(objects(moto_server, run)) == set(gone)

    code, text = cli(capsys, tmp_path, "verify", "--run", run)
    assert code == 0 and text.count("pruned by retention") == 2, text
    code, text = cli(capsys, tmp_path, "status", "--run", run, "--json")
    assert json.loads(text)["pruned"] == {"objects": 2, "bytes": 1001 + 1003}
    with pytest.raises(SystemExit):  # argparse: --keep-last must be a number
        cli(capsys, tmp_path, "gc", "--run", run, "--keep-last", "two")
    assert cli(capsys, tmp_path, "gc", "--run", run, "--keep-last", "0")[0] != 0


@pytest.mark.long
def test_a_prune_killed_by_sigkill_resumes_and_no_pointer_names_a_missing_object(
    redis_server: RedisServer,
    moto_server: S3Server,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A worker SIGKILLed while it deletes a 300-file step: the next worker finishes."""
    # A Redis database of its own: the module's fleet, still running, would otherwise take
    # some of these messages and refuse them (another staging root).
    url = redis_server.url.rsplit("/", 1)[0] + "/2"
    serving = serve_fleet(tmp_path_factory, url, "ret-kill", count=1, concurrency=1)
    own = next(serving)
    run = run_name()
    client = Records.from_url(url).client
    retention = Retention(client, run)
    try:
        with make_logger(own, moto_server, run) as logger:

            def step(number: int, files: int) -> None:
                directory = tmp_path / f"step-{number}"
                directory.mkdir()
                for i in range(files):
                    (directory / f"__0_{i}.distcp").write_bytes(b"x" * 100)
                logger.log_checkpoint_dir(number, directory, keep_last=1)
                logger.wait(timeout=120)

            step(1, 300)
            directory = tmp_path / "step-2"
            directory.mkdir()
            (directory / "__0_0.distcp").write_bytes(b"y")
            logger.log_checkpoint_dir(2, directory, keep_last=1)  # prunes step 1
            wait_until(lambda: client.hlen(retention.pruning_key) > 0, timeout=60, interval=0.01)
            own.workers[0].stop(signal.SIGKILL)
            assert client.hlen(retention.pruning_key) == 1  # killed mid-prune: the mark stays
            own.add()
            logger.wait(timeout=120)
            step(3, 1)  # the next commit's worker finishes the prune, after its settle
            wait_until(lambda: client.hlen(retention.pruning_key) == 0, timeout=60)
        held = objects(moto_server, run)
        assert not [k for k in held if "step-00000001" in k], sorted(held)[:5]
        latest = pointer_text(moto_server, f"{run}/latest.symlink")
        assert latest in held and "step-00000003" in latest
        assert len([k for k in retention.pruned() if "step-00000001" in k]) == 301
    finally:
        serving.close()
