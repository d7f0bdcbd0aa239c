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
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hoist import LogLevel, ObjectStoreLogger
from hoist.cli import main
from hoist.errors import ConfigurationError, InvalidMessageError, UploadFailedError
from hoist.logger.retention import KeepRule
from hoist.protocol.messages import PointerRequest
from hoist.state.records import Records
from hoist.state.retention import FILE, STEP, Retention, entry, victims
from hoist.stores.s3 import S3ObjectStore
from tests.conftest import serve_fleet
from tests.services.redis import RedisServer
from tests.services.s3 import S3Server
from tests.services.workers import WorkerFleet, wait_until

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


def log_epoch(logger: ObjectStoreLogger, tmp_path: Path, epoch: int, **keep: Any) -> None:
    path = tmp_path / f"ep{epoch}.pt"
    path.write_bytes(bytes([epoch]) * (1000 + epoch))
    logger.file_artifact(LogLevel.EPOCH, f"ep{epoch}.pt", path)
    logger.symlink_artifact(f"ep{epoch}.pt", "latest.pt", **keep)
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
        log_epoch(logger, tmp_path, 1)
        logger.symlink_artifact("ep1.pt", "best.pt")  # best names ep1 from now on
        logger.wait(timeout=60)
        for epoch in range(2, 6):
            log_epoch(logger, tmp_path, epoch)
    art = f"{run}/artifacts"
    expected = sorted(
        [f"{art}/ep1.pt", f"{art}/ep4.pt", f"{art}/ep5.pt"]
        + [f"{art}/latest.pt.symlink", f"{art}/best.pt.symlink"]
    )
    assert eventually(expected, lambda: sorted(objects(moto_server, run))) == expected
    assert pointer_text(moto_server, f"{art}/latest.pt.symlink") == f"{art}/ep5.pt"
    assert pointer_text(moto_server, f"{art}/best.pt.symlink") == f"{art}/ep1.pt"
    client = Records.from_url(redis_server.url).client
    assert Retention(client, run).pruned() == {f"{art}/ep2.pt": 1002, f"{art}/ep3.pt": 1003}


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


def test_an_interrupted_prune_is_finished_and_its_objects_are_never_named_again(
    fleet: WorkerFleet, moto_server: S3Server, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A worker killed between marking and deleting leaves the marks: the state here is
    made by the same ``mark`` and one of the two deletions, as a worker killed after its
    first ``DELETE`` leaves it; the next pointer of the run, on a real worker, finishes."""
    run = run_name()
    art = f"{run}/artifacts"
    client = Records.from_url(redis_server.url).client
    with make_logger(fleet, moto_server, run) as logger:
        for epoch in range(1, 4):
            log_epoch(logger, tmp_path, epoch)  # no keep_last yet: nothing goes
        retention = Retention(client, run)
        ((store_id, pointer),) = retention.pointers()
        assert retention.mark(store_id, pointer, 1, 0) == [f"f|{art}/ep1.pt", f"f|{art}/ep2.pt"]
        moto_server.client().delete_object(Bucket=moto_server.bucket, Key=f"{art}/ep1.pt")
        assert f"{art}/ep2.pt" in objects(moto_server, run)  # marked, not yet deleted
        log_epoch(logger, tmp_path, 4)
        gone = {f"{art}/ep1.pt", f"{art}/ep2.pt"}
        assert eventually(gone, lambda: set(retention.pruned())) == gone
        assert not retention.marked(store_id)
        # A pointer may not name what retention took: it fails, and moves nothing.
        logger.symlink_artifact("ep2.pt", "latest.pt")
        with pytest.raises(UploadFailedError, match="deleted from the store by retention"):
            logger.wait(timeout=60)
    held = objects(moto_server, run)
    assert f"{art}/ep2.pt" not in held and f"{art}/ep3.pt" in held
    assert pointer_text(moto_server, f"{art}/latest.pt.symlink") == f"{art}/ep4.pt"


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
            log_epoch(logger, tmp_path, epoch)
        logger.symlink_artifact("ep2.pt", "best.pt")
        logger.wait(timeout=60)
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
    serving = serve_fleet(tmp_path_factory, redis_server.url, "ret-kill", count=1, concurrency=1)
    own = next(serving)
    run = run_name()
    client = Records.from_url(redis_server.url).client
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
