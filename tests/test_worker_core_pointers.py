"""The worker core's pointers, checkpoint commits and batches, and the Celery adapters.

In this process, as tests/test_worker_core.py (whose :class:`World` builds
the messages and collaborators): a real ``redis-server``, a real Libcloud
``local`` store, no worker process.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import pytest

from hoist.errors import ArtifactFailed
from hoist.protocol.manifest import MANIFEST_NAME, Manifest, step_order
from hoist.protocol.messages import (
    COMMIT_TASK,
    POINTER_TASK,
    UPLOAD_BATCH_TASK,
    UPLOAD_TASK,
    CommitRequest,
    PointerRequest,
    UploadRequest,
    commit_id,
    order_key,
)
from hoist.protocol.pointers import POINTER_SUFFIX
from hoist.settings import WorkerSettings
from hoist.state.states import State
from hoist.stores.allowed import AllowedStores
from hoist.tasks.app import worker_app
from hoist.tasks.delivery import deliver_batch
from hoist.workers.worker import worker_settings
from tests.services.keys import KEYS
from tests.services.redis import RedisServer
from tests.test_worker_core import World
from tests.test_worker_core import world as world  # the fixture, shared

# ----- pointers -----------------------------------------------------------------


def pointer(
    world: World, target: UploadRequest, name: str = "latest.pt", order: str = "", **keep: int
) -> Any:
    """Record a pointer at ``target``, as ``symlink_artifact`` does (``keep``: keep_last...)."""
    seq = world.next_seq()
    fields = world.common(0, seq, name, f"{world.run}/{name}{POINTER_SUFFIX}")
    message = PointerRequest(
        **{**fields, "order": order or fields["order"]},
        target_id=target.id,
        target_object_name=target.object_name,
        **keep,
    ).signed(KEYS)
    world.records.create(message, POINTER_TASK, world.spec.store_id)
    return message


def landed(world: World, name: str, data: bytes = b"x") -> UploadRequest:
    message = world.upload(name, data)
    assert world.deliver(UPLOAD_TASK, message)["outcome"] == State.DONE.value
    return message


def test_a_pointer_waits_for_its_target_then_names_it(world: World) -> None:
    target = world.upload("ep1.pt")
    message = pointer(world, target)
    result = world.deliver(POINTER_TASK, message)
    assert result["outcome"] == State.WAITING.value
    assert result["waiting_for"] == "its target 'ep1.pt'"
    assert world.deliver(UPLOAD_TASK, target)["outcome"] == State.DONE.value
    assert world.deliver(POINTER_TASK, message)["outcome"] == State.DONE.value
    assert world.held(message.object_name).read_text() == target.object_name


def test_a_pointer_never_moves_backwards(world: World) -> None:
    """A late pointer for checkpoint 1 does not undo the pointer to checkpoint 2,
    in whichever order the deliveries come."""
    ep1, ep2 = landed(world, "ep1.pt"), landed(world, "ep2.pt")
    early = pointer(world, ep1, order=order_key(0, 100))
    late = pointer(world, ep2, order=order_key(0, 101))
    assert world.deliver(POINTER_TASK, late)["outcome"] == State.DONE.value
    assert world.deliver(POINTER_TASK, early)["outcome"] == State.SUPERSEDED.value
    assert world.held(late.object_name).read_text() == ep2.object_name


def test_shuffled_pointer_deliveries_leave_the_newest(world: World) -> None:
    targets = [landed(world, f"ep{n}.pt") for n in range(6)]
    pointers = [pointer(world, target) for target in targets]
    shuffled = pointers * 2
    random.Random(7).shuffle(shuffled)
    for message in shuffled:
        world.deliver(POINTER_TASK, message)
    assert world.held(pointers[0].object_name).read_text() == targets[-1].object_name
    assert {world.state(m) for m in pointers} <= {State.DONE, State.SUPERSEDED}
    assert world.state(pointers[-1]) is State.DONE


def test_concurrent_shuffled_pointer_deliveries_never_move_the_pointer_back(
    world: World,
) -> None:
    """Pointers for versions 1..8, each delivered twice in shuffled order on four
    threads while their targets are still uploading: the pointer, read all along,
    only moves forward."""
    targets = [world.upload(f"ep{n}.pt", os.urandom(1000 + n)) for n in range(1, 9)]
    pointers = [pointer(world, target) for target in targets]
    work: list[tuple[str, Any]] = [(UPLOAD_TASK, t) for t in targets]
    work += [(POINTER_TASK, p) for p in pointers * 2]
    random.Random(11).shuffle(work)
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        path = world.held(pointers[0].object_name)
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                value = path.read_text()
                if value and (not seen or seen[-1] != value):
                    seen.append(value)
            time.sleep(0.002)

    queue: SimpleQueue[tuple[str, Any] | None] = SimpleQueue()
    for item in work:
        queue.put(item)
    left = [len(work)]
    lock = threading.Lock()

    def worker() -> None:
        # Four worker slots; a held-back delivery goes to the back of the queue,
        # as the resender sends it again.
        while (item := queue.get()) is not None:
            if world.deliver(*item)["outcome"] in ("waiting", "busy"):
                queue.put(item)
                time.sleep(0.002)
                continue
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    for _ in range(4):
                        queue.put(None)

    watcher = threading.Thread(target=watch)
    watcher.start()
    slots = [threading.Thread(target=worker) for _ in range(4)]
    for slot in slots:
        slot.start()
    for slot in slots:
        slot.join(60)
    stop.set()
    watcher.join()
    versions = [int(value.rsplit("/ep", 1)[1].removesuffix(".pt")) for value in seen]
    assert versions == sorted(versions), f"the pointer moved backwards: {versions}"
    assert world.held(pointers[0].object_name).read_text() == targets[-1].object_name
    assert world.state(pointers[-1]) is State.DONE


def test_a_pointer_write_stalled_past_its_lease_does_not_land_over_a_newer_one(
    world: World,
) -> None:
    """The store holds the first pointer's PUT for four lease times; the second,
    newer pointer is held back by the name lock the first keeps alive, and lands last."""
    ep1, ep2 = landed(world, "ep1.pt"), landed(world, "ep2.pt")
    first, second = pointer(world, ep1), pointer(world, ep2)
    lease = 0.3
    stalled, release = threading.Event(), threading.Event()
    store = world.spec.build(KEYS)
    put_bytes = store.put_bytes

    def slow_put(object_name: str, data: bytes, **kwargs: Any) -> Any:
        if data == ep1.object_name.encode():
            stalled.set()
            release.wait(10)
        return put_bytes(object_name, data, **kwargs)

    store.put_bytes = slow_put  # type: ignore[method-assign]
    ctx = dataclasses.replace(world.with_settings(lease_seconds=lease), store=lambda spec: store)
    with ThreadPoolExecutor(1) as pool:
        writing = pool.submit(world.deliver, POINTER_TASK, first, ctx)
        assert stalled.wait(10)
        deadline = time.monotonic() + 4 * lease
        while time.monotonic() < deadline:  # the stall: the newer one keeps being held back
            result = world.deliver(POINTER_TASK, second, ctx)
            assert result == {
                "id": second.id,
                "outcome": "waiting",
                "waiting_for": "another write of the same pointer",
            }
            time.sleep(lease / 3)
        release.set()
        assert writing.result()["outcome"] == State.DONE.value
    assert world.deliver(POINTER_TASK, second, ctx)["outcome"] == State.DONE.value
    assert world.held(second.object_name).read_text() == ep2.object_name


def test_a_pointer_to_a_failed_target_fails(world: World) -> None:
    target = world.upload("ep1.pt", b"ours")
    world.held(target.object_name).parent.mkdir(parents=True)
    world.held(target.object_name).write_bytes(b"someone else's")
    assert world.deliver(UPLOAD_TASK, target)["outcome"] == State.FAILED.value
    message = pointer(world, target)
    assert world.deliver(POINTER_TASK, message)["outcome"] == State.FAILED.value
    assert "its target 'ep1.pt' failed to upload" in world.fields(message)["error"]
    assert not world.held(message.object_name).exists()


def test_a_pointer_naming_another_object_than_its_target_fails(world: World) -> None:
    target = landed(world, "ep1.pt")
    other = landed(world, "secret.pt")
    seq = world.next_seq()
    message = PointerRequest(
        **world.common(0, seq, "latest.pt", f"{world.run}/latest.pt{POINTER_SUFFIX}"),
        target_id=other.id,
        target_object_name=target.object_name,
    ).signed(KEYS)
    world.records.create(message, POINTER_TASK, world.spec.store_id)
    assert world.deliver(POINTER_TASK, message)["outcome"] == State.FAILED.value
    assert "a pointer names only its own target" in world.fields(message)["error"]


# ----- checkpoint commits -------------------------------------------------------


def commit(
    world: World, step: int, world_size: int, shards: dict[int, list[str]], **keep: int
) -> Any:
    name = f"checkpoints/step-{step:08d}"
    for rank, ids in shards.items():
        world.records.register_shards(world.run, name, rank, world_size, ids)
    message = CommitRequest(
        id=commit_id(world.run, name),
        run_name=world.run,
        rank=0,
        seq=0,
        artifact_name=name,
        object_name=f"{world.run}/latest{POINTER_SUFFIX}",
        order=step_order(step),
        store=world.spec.to_json(),
        step=step,
        world_size=world_size,
        prefix=f"{world.run}/{name}",
        **keep,  # keep_last / keep_every (tests/test_retention.py)
    ).signed(KEYS)
    world.records.create_once(message, COMMIT_TASK)
    return message


def shard(world: World, step: int, rank: int, data: bytes = b"shard") -> UploadRequest:
    name = f"checkpoints/step-{step:08d}/rank{rank}.pt"
    return world.upload(name, data, rank=rank, overwrite=True)


def test_a_checkpoint_commits_once_every_shard_is_verified(world: World) -> None:
    files = [shard(world, 10, rank, f"rank {rank}".encode()) for rank in (0, 1)]
    message = commit(world, 10, 2, {0: [files[0].id]})
    result = world.deliver(COMMIT_TASK, message)
    assert result["outcome"] == State.WAITING.value
    assert result["waiting_for"] == "1 rank(s) to register"
    message = commit(world, 10, 2, {1: [files[1].id]})
    assert world.deliver(COMMIT_TASK, message)["waiting_for"] == "2 file(s) of step 10"
    for file in files:
        assert world.deliver(UPLOAD_TASK, file)["outcome"] == State.DONE.value
    result = world.deliver(COMMIT_TASK, message)
    assert result["outcome"] == State.DONE.value
    assert result["files"] == 2
    prefix = f"{world.run}/checkpoints/step-00000010"
    manifest = Manifest.from_bytes(world.held(f"{prefix}/{MANIFEST_NAME}").read_bytes())
    assert [(f.path, f.rank, f.size) for f in manifest.files] == [
        ("rank0.pt", 0, 6),
        ("rank1.pt", 1, 6),
    ]
    assert world.held(message.object_name).read_text() == manifest.object_name


def test_a_checkpoint_with_a_failed_shard_is_not_committed(world: World) -> None:
    good, bad = shard(world, 20, 0), shard(world, 20, 1)
    ctx = world.with_settings(staging_root=None)  # the second shard's upload fails for good
    assert world.deliver(UPLOAD_TASK, good)["outcome"] == State.DONE.value
    assert world.deliver(UPLOAD_TASK, bad, ctx)["outcome"] == State.FAILED.value
    message = commit(world, 20, 2, {0: [good.id], 1: [bad.id]})
    assert world.deliver(COMMIT_TASK, message)["outcome"] == State.FAILED.value
    error = world.fields(message)["error"]
    assert "step 20 is not committed: 1 file(s) did not land" in error
    assert "the pointer stays where it was" in error
    assert not world.held(message.object_name).exists()


def test_an_older_step_writes_its_manifest_but_leaves_the_pointer(world: World) -> None:
    newer = shard(world, 40, 0, b"new")
    older = shard(world, 30, 0, b"old")
    for file in (newer, older):
        assert world.deliver(UPLOAD_TASK, file)["outcome"] == State.DONE.value
    assert world.deliver(COMMIT_TASK, commit(world, 40, 1, {0: [newer.id]}))["outcome"] == "done"
    late = commit(world, 30, 1, {0: [older.id]})
    assert world.deliver(COMMIT_TASK, late)["outcome"] == State.SUPERSEDED.value
    prefix = f"{world.run}/checkpoints/step-00000030"
    assert world.held(f"{prefix}/{MANIFEST_NAME}").exists()
    pointed = world.held(late.object_name).read_text()
    assert pointed == f"{world.run}/checkpoints/step-00000040/{MANIFEST_NAME}"


# ----- batches ------------------------------------------------------------------


def test_a_batch_delivered_twice_uploads_nothing_twice(world: World) -> None:
    messages = [world.upload(f"small-{i}.txt", f"{i}".encode()) for i in range(3)]
    raw = [m.to_json() for m in messages]
    first = deliver_batch(world.ctx, UPLOAD_BATCH_TASK, raw, "batch-1")
    assert first == {"id": "batch-1", "outcome": "batch", "files": 3, "done": 3}
    before = {m.id: world.fields(m) for m in messages}
    for m in messages:
        world.held(m.object_name).write_bytes(b"replaced meanwhile")
    again = deliver_batch(world.ctx, UPLOAD_BATCH_TASK, raw, "batch-1")
    assert again == {"id": "batch-1", "outcome": "batch", "files": 3, "finished": 3}
    assert all(world.held(m.object_name).read_bytes() == b"replaced meanwhile" for m in messages)
    assert {m.id: world.fields(m) for m in messages} == before  # not claimed, not attempted


def test_a_batch_with_a_failed_member_settles_the_others_then_fails(world: World) -> None:
    good = world.upload("good.txt")
    forged = {**world.upload("forged.txt").to_json(), "object_name": "elsewhere"}
    with pytest.raises(ArtifactFailed, match="1 of 2 failed"):
        deliver_batch(world.ctx, UPLOAD_BATCH_TASK, [forged, good.to_json()], "batch-2")
    assert world.state(good) is State.DONE


@pytest.mark.parametrize("batch", [[], "not a list", [{}] * 1001])
def test_a_malformed_batch_is_refused(world: World, batch: Any) -> None:
    with pytest.raises(ArtifactFailed, match="a batch must be a list of 1 to"):
        deliver_batch(world.ctx, UPLOAD_BATCH_TASK, batch, "batch-3")


# ----- the Celery adapters and the worker's start -------------------------------


def test_the_app_runs_each_task_through_the_core(world: World) -> None:
    app = worker_app(world.settings, lambda: world.ctx)
    assert {UPLOAD_TASK, UPLOAD_BATCH_TASK, POINTER_TASK, COMMIT_TASK} <= set(app.tasks)
    message = world.upload("eager.txt", b"eager")
    result = app.tasks[UPLOAD_TASK].apply(args=[message.to_json()], task_id=message.id)
    assert result.get()["outcome"] == State.DONE.value
    assert world.held(message.object_name).read_bytes() == b"eager"
    bad = world.upload("bad.txt", keys=None).to_json()
    failed = app.tasks[UPLOAD_TASK].apply(args=[bad], task_id=bad["id"])
    assert isinstance(failed.result, ArtifactFailed)  # Flower's FAILURE, no traceback


def test_importing_the_app_module_reads_no_environment(redis_server: RedisServer) -> None:
    """Only Celery's command line builds ``hoist.tasks.app.app``, when it asks for it."""
    code = (
        "import hoist.tasks.app as m\n"
        "assert '_from_environment' in vars(m) and m._from_environment is None\n"
        "from hoist.tasks.app import app\n"
        "print(app.conf.broker_url)\n"
    )
    env = {"HOIST_BROKER_URL": redis_server.url, "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == redis_server.url
    env["HOIST_VISIBILITY_TIMEOUT"] = "soon"
    run = subprocess.run(
        [sys.executable, "-c", "import hoist.tasks.app"], env=env, capture_output=True, timeout=60
    )
    assert run.returncode == 0, run.stderr


def options(**given: Any) -> argparse.Namespace:
    defaults: dict[str, Any] = {
        "broker_url": None,
        "state_url": None,
        "staging_dir": None,
        "store_limit": None,
        "max_retries": None,
        "visibility_timeout": None,
        "allow_store": None,
        "allow_any_store": False,
        "insecure_unsigned": False,
    }
    return argparse.Namespace(**{**defaults, **given})


def test_the_command_line_overrides_the_environment_settings(tmp_path: Path) -> None:
    base = WorkerSettings(
        state_url="redis://state:6379/0",
        allowed=AllowedStores.parse([f"file://{tmp_path}/a"]),
        max_retries=3,
    )
    chosen = worker_settings(
        base,
        options(
            broker_url="redis://broker:6379/1",
            staging_dir="/shared/staging",
            store_limit=32,
            visibility_timeout=60,
            allow_store=[f"file://{tmp_path}/b"],
            insecure_unsigned=True,
        ),
    )
    assert chosen.broker_url == "redis://broker:6379/1"
    assert chosen.staging_root == "/shared/staging"
    assert (chosen.store_limit, chosen.visibility_timeout, chosen.max_retries) == (32, 60, 3)
    assert chosen.allowed.uris == (f"file://{tmp_path}/a", f"file://{tmp_path}/b")
    assert not chosen.allowed.any_store
    assert chosen.insecure_unsigned
    assert worker_settings(base, options()) == base
    assert worker_settings(base, options(allow_any_store=True)).allowed.any_store


def test_a_broker_given_alone_holds_the_records_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # The base comes from the environment, as `hoist worker` resolves it.
    monkeypatch.delenv("HOIST_STATE_URL", raising=False)
    base = WorkerSettings.from_environment()
    chosen = worker_settings(base, options(broker_url="redis://b:6379/2"))
    assert chosen.state_url == "redis://b:6379/2"
    monkeypatch.setenv("HOIST_STATE_URL", "redis://records:6379/0")
    base = WorkerSettings.from_environment()
    chosen = worker_settings(base, options(broker_url="redis://b:6379/2"))
    assert chosen.state_url == "redis://records:6379/0"
    chosen = worker_settings(WorkerSettings(), options(broker_url="b", state_url="redis://s/3"))
    assert chosen.state_url == "redis://s/3"
