"""The rank's sending thread, and the batches it makes: real logger, Redis, workers.

What must hold: small uploads logged close together travel as one task and
every file lands and is verified as if sent alone; a rank that ends without
waiting has put everything on the broker first; and a forked child (a
data-loader worker) gets a sending thread of its own. A batch delivered
twice is checked without processes (tests/test_worker_core_pointers.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hoist import LogLevel, ObjectStoreLogger
from hoist.protocol.messages import BATCH_FILE_BYTES
from hoist.state.records import Records
from hoist.state.states import State
from tests.conftest import serve_fleet, single_rank_local_store
from tests.services.redis import RedisServer
from tests.services.workers import WorkerFleet, wait_until
from tests.test_pipeline import settled

# Celery's line for each task it ran: "Task hoist.upload_batch[<id>] succeeded in ...".
REPO = Path(__file__).resolve().parent.parent
SUCCEEDED = re.compile(r"Task (hoist\.upload(?:_batch)?)\[([^\]]+)\] succeeded")


@pytest.fixture(scope="module")
def fleet(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFleet]:
    yield from serve_fleet(tmp_path_factory, redis_server.url, "batches", count=1, concurrency=2)


def logger_for(
    fleet: WorkerFleet, store: Path, run_name: str, **kwargs: object
) -> ObjectStoreLogger:
    (store / "artifacts").mkdir(parents=True, exist_ok=True)
    arguments = {**single_rank_local_store(fleet, store), **kwargs}
    return ObjectStoreLogger(
        object_name="{run_name}/{artifact_name}", run_name=run_name, **arguments
    )


def tasks_run(fleet: WorkerFleet, run_name: str) -> list[tuple[str, str]]:
    """(task name, task id) of every task the fleet finished for ``run_name``."""
    prefix = f"hoist-{run_name}-"
    return [m.groups() for m in SUCCEEDED.finditer(fleet.logs()) if m[2].startswith(prefix)]


def test_a_burst_of_small_files_lands_in_few_tasks(
    fleet: WorkerFleet, redis_server: RedisServer, tmp_path: Path
) -> None:
    run_name = f"burst-{os.getpid()}-{id(tmp_path)}"
    payloads = {f"log-{n:03d}.txt": os.urandom(4096) for n in range(70)}
    large = os.urandom(BATCH_FILE_BYTES + 1)
    with logger_for(fleet, tmp_path / "store", run_name) as logger:
        for n, (name, payload) in enumerate(payloads.items()):
            source = tmp_path / name
            source.write_bytes(payload)
            logger.file_artifact(LogLevel.BATCH, name, source)
            if n == 35:  # too large for a batch: goes alone, between two runs of small ones
                (tmp_path / "large.bin").write_bytes(large)
                logger.file_artifact(LogLevel.BATCH, "large.bin", tmp_path / "large.bin")
        logger.wait(timeout=120)
    landed = tmp_path / "store" / "artifacts" / run_name
    for name, payload in payloads.items():
        assert (landed / name).read_bytes() == payload
    assert (landed / "large.bin").read_bytes() == large
    records = Records.from_url(redis_server.url)
    for status in records.run_artifacts(run_name):
        assert status.state is State.DONE, status.error
        assert status.fields["attempts"] == "1"

    tasks = wait_until(lambda: (t := tasks_run(fleet, run_name)) and len(t) > 1 and t, timeout=30)
    batches = [task_id for name, task_id in tasks if name == "hoist.upload_batch"]
    members = sum(int(task_id.rpartition("+")[2]) + 1 for task_id in batches)
    singles = [task_id for name, task_id in tasks if name == "hoist.upload"]
    print(f"\n71 files in {len(tasks)} tasks: {len(batches)} batches, {len(singles)} alone")
    assert members + len(singles) == 71
    assert len(singles) < 10, singles  # the large file, and small ones that found no company
    assert len(tasks) <= 20


# A rank process that logs ten small files and ends at once: after close() without
# waiting, with os._exit (no atexit, no thread left to send anything), or without
# close(), letting the interpreter end as a script does.
RANK = """
import json, os, sys
from pathlib import Path
from hoist import LogLevel, ObjectStoreLogger
arguments, ending = json.loads(sys.argv[1]), sys.argv[2]
logger = ObjectStoreLogger(**arguments)
ids = []
for n in range(10):
    path = Path(arguments["upload_staging_folder"]).parent / f"{arguments['run_name']}-{n}"
    path.write_bytes(os.urandom(1000))
    ids.append(logger.file_artifact(LogLevel.BATCH, f"f{n}", path, move=True))
print(json.dumps(ids), flush=True)
if ending == "close":
    logger.close()
    os._exit(0)
"""


@pytest.mark.parametrize("ending", ["close", "exit"], ids=["close then _exit", "no close"])
def test_a_rank_that_ends_without_waiting_has_sent_everything(
    ending: str, fleet: WorkerFleet, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Sent before the process ends, not by the workers' watchdog minutes later."""
    run_name = f"ends-{ending}-{os.getpid()}-{id(tmp_path)}"
    (tmp_path / "store" / "artifacts").mkdir(parents=True)
    arguments = {
        **single_rank_local_store(fleet, tmp_path / "store"),
        "object_name": "{run_name}/{artifact_name}",
        "run_name": run_name,
        "wait_on_close": False,
    }
    rank = subprocess.run(
        [sys.executable, "-c", RANK, json.dumps(arguments), ending],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rank.returncode == 0, rank.stderr
    ids = json.loads(rank.stdout)
    records = Records.from_url(redis_server.url)
    # The watchdog would resend a lost message only after HOIST_QUEUED_TIMEOUT (300 s).
    for artifact in ids:
        status = wait_until(lambda a=artifact: settled(records, a), timeout=60)
        assert status.state is State.DONE, status.error
        assert status.fields["attempts"] == "1"


def test_a_forked_child_logs_through_its_own_sending_thread(
    fleet: WorkerFleet, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Threads do not survive fork: the child must not hand messages to its parent's
    thread (which it does not have), nor wait for it at exit."""
    run_name = f"fork-{os.getpid()}-{id(tmp_path)}"
    logger = logger_for(fleet, tmp_path / "store", run_name, wait_on_close=False)
    (tmp_path / "parent.txt").write_bytes(b"parent")
    parent = logger.file_artifact(LogLevel.BATCH, "parent.txt", tmp_path / "parent.txt")
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: log one file, report its id, end as a script ends
        code = 1
        try:
            os.close(read)
            (tmp_path / "child.txt").write_bytes(b"child")
            artifact = logger.file_artifact(LogLevel.BATCH, "child.txt", tmp_path / "child.txt")
            logger.close()
            os.write(write, str(artifact).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as answer:
        artifact = answer.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    (tmp_path / "after.txt").write_bytes(b"after")
    after = logger.file_artifact(LogLevel.BATCH, "after.txt", tmp_path / "after.txt")
    assert len({parent, artifact, after}) == 3  # the child did not reuse reserved numbers
    logger.close()
    records = Records.from_url(redis_server.url)
    for name, artifact_id in (
        ("parent.txt", parent),
        ("child.txt", artifact),
        ("after.txt", after),
    ):
        status_ = wait_until(lambda a=artifact_id: settled(records, a), timeout=60)
        assert status_.state is State.DONE, status_.error
        landed = tmp_path / "store" / "artifacts" / run_name / name
        assert landed.read_bytes() == name.removesuffix(".txt").encode()
