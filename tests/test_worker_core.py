"""The worker core's decisions, in this process: no worker, no broker, no Celery.

Each test builds messages as a rank does (staged under the staging root,
recorded with ``Records.create``, signed with the suite's fleet key), and
runs them through :func:`hoist.tasks.delivery.deliver` with explicit
collaborators: the session's real ``redis-server``, a real Libcloud
``local`` store in ``tmp_path``, a fixed clock and jitter. What needs
processes (kills, restarts, partitions, the end-to-end path per store kind)
stays in tests/test_pipeline.py and tests/test_faults_*.py.

Pointers, commits, batches and the Celery adapters are in
tests/test_worker_core_pointers.py; the heartbeat, progress events and an
attempt's leftover in tests/test_worker_core_liveness.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from hoist.errors import ArtifactFailed, PermanentStoreError, TransientStoreError
from hoist.keys import FleetKeys, new_fleet_key
from hoist.logger.staging import StagingMode, stage_file
from hoist.protocol.layout import staged_path
from hoist.protocol.messages import UPLOAD_TASK, Message, UploadRequest, artifact_id, order_key
from hoist.settings import WorkerSettings
from hoist.state.keys import DEFERRED
from hoist.state.leases import Leases, name_lock, rank_limit, store_limit
from hoist.state.records import Records
from hoist.state.states import Claim, State
from hoist.stores.allowed import AllowedStores
from hoist.stores.spec import StoreSpec
from hoist.tasks.delivery import deliver, raise_failures
from hoist.tasks.worker_context import StoreClients, StoreFactory, WorkerContext
from tests.services.keys import KEYS
from tests.services.redis import RedisServer

NOW = 1_800_000_000.0
"""The fake clock's time: the timestamps a job records come from it."""


class Highest(random.Random):
    """Jitter that always draws its upper bound, so delays are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


class World:
    """A staging root, a local store, records and a worker context, for one test.

    Parameters:
        redis_url: the session's Redis.
        root: the test's directory.
        settings: overrides of the worker's settings.
    """

    def __init__(self, redis_url: str, root: Path, **settings: Any) -> None:
        self.root = root
        self.staging = root / "staging"
        self.staging.mkdir()
        self.base = root / "store"
        (self.base / "artifacts").mkdir(parents=True)
        self.spec = local_spec(self.base)
        fields: dict[str, Any] = {
            "broker_url": redis_url,
            "state_url": redis_url,
            "staging_root": str(self.staging),
            "keys": KEYS,
            "allowed": AllowedStores.parse([f"file://{self.base}/artifacts"]),
            "lease_seconds": 3.0,
            "wait_seconds": 0.01,
            "progress_seconds": 3600.0,
            **settings,
        }
        self.settings = WorkerSettings(**fields)
        self.records = Records.from_url(redis_url, lease_ms=self.settings.lease_ms)
        self.stores = StoreClients(KEYS)
        self.ctx = WorkerContext(
            self.settings, self.records, self.stores, clock=lambda: NOW, rng=Highest()
        )
        self.run = f"core-{uuid.uuid4().hex[:10]}"
        self._seq = itertools.count(1)

    def with_settings(self, **changes: Any) -> WorkerContext:
        """This world's context with other settings (the same records and stores)."""
        return dataclasses.replace(self.ctx, settings=dataclasses.replace(self.settings, **changes))

    def upload(
        self,
        name: str,
        data: bytes = b"payload",
        *,
        object_name: str | None = None,
        overwrite: bool = False,
        rank: int = 0,
        rank_limit: int = 4,
        mode: StagingMode = StagingMode.COPY,
        spec: StoreSpec | None = None,
        keys: FleetKeys | None = KEYS,
    ) -> UploadRequest:
        """Stage ``data`` as ``name`` and record its upload, as ``file_artifact`` does."""
        seq = next(self._seq)
        source = self.root / f"source-{seq}-{name.replace('/', '_')}"
        source.write_bytes(data)
        staged = stage_file(
            str(source), staged_path(str(self.staging), self.run, rank, seq, name), mode=mode
        )
        store = spec or self.spec
        message = UploadRequest(
            **self.common(rank, seq, name, object_name or f"{self.run}/{name}", store),
            staged_path=staged.path,
            size=staged.size,
            overwrite=overwrite,
            rank_limit=rank_limit,
            fingerprint=staged.fingerprint.to_json() if staged.fingerprint else None,
        )
        if keys is not None:
            message = message.signed(keys)
        self.records.create(message, UPLOAD_TASK, store.store_id)
        return message

    def common(
        self, rank: int, seq: int, name: str, object_name: str, store: StoreSpec | None = None
    ) -> dict[str, Any]:
        """The fields every message of this world's run carries."""
        return {
            "id": artifact_id(self.run, rank, seq),
            "run_name": self.run,
            "rank": rank,
            "seq": seq,
            "artifact_name": name,
            "object_name": object_name,
            "order": order_key(rank, seq),
            "store": (store or self.spec).to_json(),
        }

    def next_seq(self) -> int:
        return next(self._seq)

    def deliver(
        self, task: str, message: Message | dict[str, Any], ctx: WorkerContext | None = None
    ) -> dict[str, Any]:
        """Deliver ``message`` once, as it comes off the broker."""
        raw = message.to_json() if isinstance(message, Message) else message
        return deliver(ctx or self.ctx, task, raw, str(raw.get("id")))

    def state(self, message: Message) -> State:
        status = self.records.get(message.id)
        assert status is not None
        return status.state

    def fields(self, message: Message) -> dict[str, str]:
        status = self.records.get(message.id)
        assert status is not None
        return status.fields

    def held(self, object_name: str) -> Path:
        return self.base / "artifacts" / object_name

    def due_in(self, message: Message) -> float:
        """Seconds from now until ``message`` is sent again (its deferred entry)."""
        score = self.records.client.zscore(DEFERRED, message.id)
        assert score is not None, f"{message.id} is not deferred"
        return float(score) / 1000 - time.time()


def local_spec(base: Path) -> StoreSpec:
    kwargs = {"provider": "local", "container": "artifacts", "provider_kwargs": {"key": str(base)}}
    return StoreSpec.describe("libcloud", kwargs, KEYS)


@pytest.fixture
def world(redis_server: RedisServer, tmp_path: Path) -> World:
    return World(redis_server.url, tmp_path)


# ----- an upload --------------------------------------------------------------


def test_an_upload_lands_verified_and_its_staged_copy_goes(world: World) -> None:
    message = world.upload("model.pt", b"weights")
    result = world.deliver(UPLOAD_TASK, message)
    assert result["outcome"] == "done"
    assert world.held(message.object_name).read_bytes() == b"weights"
    assert not os.path.exists(message.staged_path)
    fields = world.fields(message)
    assert fields["attempts"] == "1"
    assert fields["verified_by"] == "read-back"
    assert float(fields["upload_started_at"]) == NOW  # the job's clock
    assert float(fields["upload_finished_at"]) == NOW


def test_a_second_delivery_of_a_finished_upload_does_nothing(world: World) -> None:
    message = world.upload("a.txt", b"first")
    assert world.deliver(UPLOAD_TASK, message)["outcome"] == "done"
    world.held(message.object_name).write_bytes(b"changed by someone")
    assert world.deliver(UPLOAD_TASK, message)["outcome"] == Claim.FINISHED.value
    assert world.held(message.object_name).read_bytes() == b"changed by someone"
    assert world.fields(message)["attempts"] == "1"


def test_a_redelivery_after_a_lost_settle_answer_removes_the_verified_staged_copy(
    world: World,
) -> None:
    """A Redis restart can lose the answer of the settle that recorded an upload done:
    the job stops before deleting the staged copy, and the redelivery, finding the
    record done, deletes it (a failed upload's copy stays for `hoist retry`)."""
    message = world.upload("lost-answer.bin", b"verified")
    kept = Path(message.staged_path).read_bytes()
    assert world.deliver(UPLOAD_TASK, message)["outcome"] == "done"
    Path(message.staged_path).write_bytes(kept)  # as if the unlink never came
    assert world.deliver(UPLOAD_TASK, message)["outcome"] == Claim.FINISHED.value
    assert not Path(message.staged_path).exists()
    failed = world.upload("failed.bin", b"bytes")
    world.records.fail_queued(failed.id, "given up")
    assert world.deliver(UPLOAD_TASK, failed)["outcome"] == Claim.FINISHED.value
    assert Path(failed.staged_path).exists()


def test_an_artifact_claimed_by_a_live_worker_is_left_to_it(world: World) -> None:
    message = world.upload("busy.bin")
    assert world.records.claim(message, UPLOAD_TASK, "elsewhere:1", 8) is Claim.CLAIMED
    assert world.deliver(UPLOAD_TASK, message)["outcome"] == Claim.BUSY.value
    assert world.state(message) is State.UPLOADING
    assert os.path.exists(message.staged_path)  # the owner uploads it
    assert not world.held(message.object_name).exists()


def test_an_older_version_of_a_name_is_superseded_and_its_staged_copy_goes(world: World) -> None:
    older = world.upload("train.log", b"old", object_name=f"{world.run}/train.log", overwrite=True)
    newer = world.upload("train.log", b"new", object_name=f"{world.run}/train.log", overwrite=True)
    assert world.deliver(UPLOAD_TASK, older)["outcome"] == State.SUPERSEDED.value
    assert not os.path.exists(older.staged_path)
    assert world.deliver(UPLOAD_TASK, newer)["outcome"] == State.DONE.value
    assert world.held(newer.object_name).read_bytes() == b"new"
    assert world.fields(older)["attempts"] == "0"  # the store was never tried


def test_an_object_holding_other_bytes_fails_the_upload_and_keeps_the_staged_copy(
    world: World,
) -> None:
    message = world.upload("model.pt", b"our bytes")
    world.held(message.object_name).parent.mkdir(parents=True)
    world.held(message.object_name).write_bytes(b"someone else's bytes")
    result = world.deliver(UPLOAD_TASK, message)
    assert result["outcome"] == State.FAILED.value
    assert "overwrite=True" in world.fields(message)["error"]
    assert world.held(message.object_name).read_bytes() == b"someone else's bytes"
    assert Path(message.staged_path).read_bytes() == b"our bytes"
    with pytest.raises(ArtifactFailed, match=message.id):
        raise_failures([result])


# ----- link staging -------------------------------------------------------------


def test_a_hard_linked_file_uploads_while_it_is_unchanged(world: World) -> None:
    message = world.upload("kept.pt", b"epoch 1", mode=StagingMode.LINK)
    assert message.fingerprint is not None
    assert world.deliver(UPLOAD_TASK, message)["outcome"] == State.DONE.value
    assert world.held(message.object_name).read_bytes() == b"epoch 1"


def test_a_hard_linked_file_rewritten_after_logging_is_refused(world: World) -> None:
    message = world.upload("latest.pt", b"epoch 1", mode=StagingMode.LINK)
    with open(message.staged_path, "r+b") as f:  # the caller's torch.save to the same path
        f.write(b"epoch 2, longer")
    assert world.deliver(UPLOAD_TASK, message)["outcome"] == State.FAILED.value
    error = world.fields(message)["error"]
    assert "rewritten after it was logged with staging='link'" in error
    assert "its size went from 7 to 15 bytes" in error
    assert not world.held(message.object_name).exists()


# ----- refusals -----------------------------------------------------------------


def refusals(world: World) -> dict[str, str]:
    return dict(world.records.client.hgetall("hoist:refused"))


def test_an_unsigned_message_is_refused_and_touches_no_record(world: World) -> None:
    message = world.upload("a.txt", keys=None)
    unsigned = {k: v for k, v in message.to_json().items() if k != "mac"}
    before = int(refusals(world).get("UnsignedMessageError", 0))
    assert world.deliver(UPLOAD_TASK, unsigned)["outcome"] == "refused"
    assert world.state(message) is State.QUEUED
    assert int(refusals(world)["UnsignedMessageError"]) == before + 1
    assert os.path.exists(message.staged_path)


def test_a_forged_message_is_refused_and_touches_no_record(world: World) -> None:
    message = world.upload("a.txt", keys=FleetKeys.parse(new_fleet_key()))
    assert world.deliver(UPLOAD_TASK, message)["outcome"] == "refused"
    assert world.state(message) is State.QUEUED
    assert not world.held(message.object_name).exists()


def test_a_signed_message_to_a_store_not_allowed_fails_its_own_record(
    world: World, tmp_path: Path
) -> None:
    (tmp_path / "elsewhere" / "artifacts").mkdir(parents=True)
    message = world.upload("a.txt", spec=local_spec(tmp_path / "elsewhere"))
    assert world.deliver(UPLOAD_TASK, message)["outcome"] == "refused"
    assert world.state(message) is State.FAILED
    assert "store not allowed on this fleet" in world.fields(message)["error"]
    assert not (tmp_path / "elsewhere" / "artifacts" / message.object_name).exists()


def test_another_signed_message_under_a_recorded_id_is_not_acted_on(world: World) -> None:
    message = world.upload("a.txt")
    other = dataclasses.replace(message, object_name=f"{world.run}/other.txt", mac="")
    result = world.deliver(UPLOAD_TASK, other.signed(KEYS))
    assert result["outcome"] == Claim.MISMATCH.value
    assert world.state(message) is State.QUEUED
    assert world.fields(message)["deliveries"] == "0"


@pytest.mark.parametrize(
    "escape", ["/etc/shadow", "absolute outside", "absolute ..", "relative ..", "symlink"]
)
def test_a_staged_path_outside_the_staging_root_is_refused(
    world: World, tmp_path: Path, escape: str
) -> None:
    # A FIFO: a worker that opened it to read would block, and the record would never settle.
    fifo = tmp_path / "secret.fifo"
    os.mkfifo(fifo)
    link = world.staging / world.run / "rank0" / "00000001-secret"
    link.parent.mkdir(parents=True)
    link.symlink_to(fifo)
    path = {
        "/etc/shadow": "/etc/shadow",
        "absolute outside": str(fifo),
        "absolute ..": str(world.staging / ".." / fifo.name),
        "relative ..": os.path.relpath(fifo, world.staging),
        "symlink": str(link),
    }[escape]
    seq = world.next_seq()
    message = UploadRequest(
        **world.common(0, seq, "secret", f"{world.run}/secret"), staged_path=path, size=1
    ).signed(KEYS)
    world.records.create(message, UPLOAD_TASK, world.spec.store_id)
    result = world.deliver(UPLOAD_TASK, message)
    assert result["outcome"] == State.FAILED.value
    error = world.fields(message)["error"]
    assert "outside the staging root" in error, error
    assert repr(path) in error, error
    assert not world.held(message.object_name).exists()


def test_a_worker_without_a_staging_root_fails_uploads_with_the_fix(world: World) -> None:
    message = world.upload("a.txt")
    result = world.deliver(UPLOAD_TASK, message, world.with_settings(staging_root=None))
    assert result["outcome"] == State.FAILED.value
    assert "--staging-dir" in world.fields(message)["error"]


# ----- lost workers: poison -----------------------------------------------------


def test_an_artifact_whose_workers_keep_dying_is_failed_as_poison(
    world: World, redis_server: RedisServer
) -> None:
    message = world.upload("oom.bin")
    dying = Records.from_url(redis_server.url, lease_ms=20)  # workers killed mid-upload
    for attempt in range(2):
        assert dying.claim(message, UPLOAD_TASK, f"dead:{attempt}", 2) is Claim.CLAIMED
        time.sleep(0.03)  # its claim expires unrenewed
    result = world.deliver(UPLOAD_TASK, message, world.with_settings(max_deliveries=2))
    assert result["outcome"] == Claim.POISON.value
    assert world.state(message) is State.FAILED
    assert "the worker was lost 2 times" in world.fields(message)["error"]
    assert world.records.client.zscore(DEFERRED, message.id) is None
    with pytest.raises(ArtifactFailed, match="delivered too often"):
        raise_failures([result])


# ----- errors and backoff -------------------------------------------------------


def failing(world: World, error: Exception) -> StoreFactory:
    """A store factory whose store raises ``error`` on every upload."""
    store = world.spec.build(KEYS)

    def upload_file(*args: Any, **kwargs: Any) -> Any:
        raise error

    store.upload_file = upload_file  # type: ignore[method-assign]
    return lambda spec: store


def test_a_transient_error_is_retried_later_with_a_doubling_backoff(world: World) -> None:
    message = world.upload("flaky.bin")
    ctx = dataclasses.replace(
        world.with_settings(backoff_base=10.0, backoff_max=25.0, max_retries=3),
        store=failing(world, TransientStoreError("503 Slow Down")),
    )
    for attempt, delay in ((1, 10.0), (2, 20.0), (3, 25.0)):  # base * 2**(n-1), at most max
        result = world.deliver(UPLOAD_TASK, message, ctx)
        assert result["outcome"] == State.RETRYING.value
        assert world.fields(message)["attempts"] == str(attempt)
        assert delay - 1 < world.due_in(message) <= delay
        assert "503 Slow Down" in world.fields(message)["error"]
    result = world.deliver(UPLOAD_TASK, message, ctx)
    assert result["outcome"] == State.FAILED.value
    assert world.fields(message)["error"].startswith("gave up after 4 attempts")
    assert os.path.exists(message.staged_path)


def test_a_permanent_error_fails_at_once(world: World) -> None:
    message = world.upload("denied.bin")
    ctx = dataclasses.replace(world.ctx, store=failing(world, PermanentStoreError("403")))
    assert world.deliver(UPLOAD_TASK, message, ctx)["outcome"] == State.FAILED.value
    assert world.fields(message)["attempts"] == "1"
    assert world.records.client.zscore(DEFERRED, message.id) is None


@pytest.mark.parametrize(
    "error",
    [ValueError('"params" dictionary contains an attribute "uploadId"'), KeyError("ETag")],
    ids=["ValueError", "KeyError"],
)
def test_an_error_the_client_raises_about_its_own_request_fails_at_once(
    world: World, error: Exception
) -> None:
    """Sending the same request again gets the same answer: no minutes of retries."""
    message = world.upload("client-side.bin")
    ctx = dataclasses.replace(world.ctx, store=failing(world, error))
    assert world.deliver(UPLOAD_TASK, message, ctx)["outcome"] == State.FAILED.value
    assert world.fields(message)["attempts"] == "1"
    assert type(error).__name__ in world.fields(message)["error"]
    assert world.records.client.zscore(DEFERRED, message.id) is None
    assert os.path.exists(message.staged_path)


def test_an_unknown_library_error_is_still_retried(world: World) -> None:
    message = world.upload("reset.bin")
    ctx = dataclasses.replace(world.ctx, store=failing(world, ConnectionResetError("reset")))
    assert world.deliver(UPLOAD_TASK, message, ctx)["outcome"] == State.RETRYING.value


# ----- leases -------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["rank", "store", "name"])
def test_an_upload_held_back_by_a_full_limit_waits_without_an_attempt(
    world: World, limit: str
) -> None:
    message = world.upload("f.bin", rank_limit=1)
    ctx = world.with_settings(store_limit=1, wait_seconds=0.05)
    held = {
        "rank": rank_limit(world.run, 0, 1),
        "store": store_limit(world.spec.store_id, 1),
        "name": name_lock(world.spec.store_id, message.object_name),
    }[limit]
    other = Leases(world.records.client, f"other-upload:{limit}", world.settings.lease_ms)
    assert other.acquire_all([held])
    result = world.deliver(UPLOAD_TASK, message, ctx)
    assert result["outcome"] == State.WAITING.value
    assert result["waiting_for"] == "a concurrency limit or an upload of the same name"
    assert world.fields(message)["attempts"] == "0"
    assert 0 < world.due_in(message) <= 0.05 * 1.5  # wait_seconds times the jitter
    other.release_all()
    assert world.deliver(UPLOAD_TASK, message, ctx)["outcome"] == State.DONE.value
    assert world.fields(message)["attempts"] == "1"


def test_an_upload_frees_its_leases_when_it_settles(world: World) -> None:
    message = world.upload("f.bin", rank_limit=1)
    assert world.deliver(UPLOAD_TASK, message)["outcome"] == State.DONE.value
    probe = Leases(world.records.client, "probe", world.settings.lease_ms)
    assert probe.acquire_all([rank_limit(world.run, 0, 1)])
    probe.release_all()
