"""The staging-root race against real workers (issue 14, attack 6).

An attacker who can write in the staging root swaps a rank's staged
directory for a symlink to an outside directory, holding files of the same
names with other bytes, and back, in a tight loop, while real ``hoist
worker`` processes upload what a real logger staged. Before workers opened
staged files by a single walk (``hoist.protocol.staged_file``), this uploaded
outside files in 3-6 of 24 uploads and deleted 4-5 outside files (three runs),
or crashed an upload batch with realpath's EINVAL. Now every upload either
lands with its own bytes or fails as a refusal, and nothing outside is read
or deleted.
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hoist import LogLevel, ObjectStoreLogger
from hoist.state.records import Records
from hoist.state.states import State
from tests.services.redis import RedisServer
from tests.services.workers import WorkerFleet, wait_until

UPLOADS = 24
ATTACK_SECONDS = 20.0
MARKER = b"OUTSIDE THE STAGING ROOT "
RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100


@pytest.fixture(scope="module")
def race_fleet(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFleet]:
    from tests.conftest import serve_fleet

    yield from serve_fleet(tmp_path_factory, redis_server.url, "race", count=2, concurrency=2)


class Swapper:
    """Swaps ``target`` (a directory) with ``other`` (a symlink to outside) and back, in a loop.

    ``renameat2(RENAME_EXCHANGE)`` swaps both names at once, so the staged
    path always exists, as a directory or as the symlink; where the
    filesystem lacks it, two renames do (a worker may then also find the
    path missing for a moment). Staging takes ``quiet`` so that the rank
    itself never stages through the symlink: only the workers are raced.
    """

    def __init__(self, target: Path, other: Path) -> None:
        self.target = target
        self.other = other
        self.quiet = threading.Lock()
        self.swaps = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="swapper")
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._exchange = hasattr(self._libc, "renameat2")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _swap(self, to_symlink: bool) -> None:
        if self._exchange:
            result = self._libc.renameat2(
                AT_FDCWD, os.fsencode(self.target), AT_FDCWD, os.fsencode(self.other),
                RENAME_EXCHANGE,
            )  # fmt: skip
            if result == 0:
                return
            code = ctypes.get_errno()
            if code not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise OSError(code, os.strerror(code), str(self.target))
            self._exchange = False
            self._rename_back_then(to_symlink)
            return
        self._rename_back_then(to_symlink)

    def _rename_back_then(self, to_symlink: bool) -> None:
        aside = self.target.with_name(".aside")
        if to_symlink:
            os.rename(self.target, aside)
            os.symlink(os.readlink(self.other), self.target)
        else:
            os.unlink(self.target)
            os.rename(aside, self.target)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                with self.quiet:
                    self._swap(to_symlink=True)
                    # Dwell on each side for about as long as a worker takes from
                    # checking a path to opening it.
                    time.sleep(random.uniform(0, 0.002))
                    self._swap(to_symlink=False)
                    self.swaps += 2
                time.sleep(random.uniform(0, 0.002))
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc


def test_swapping_a_staged_directory_for_a_symlink_reads_and_deletes_nothing_outside(
    race_fleet: WorkerFleet, redis_server: RedisServer, tmp_path: Path
) -> None:
    run_name = f"race-{time.time_ns()}"
    rank_dir = race_fleet.staging_root / run_name / "rank0"
    rank_dir.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    swap_link = rank_dir.with_name(".swap")
    swap_link.symlink_to(outside)
    base = tmp_path / "store"
    (base / "artifacts").mkdir(parents=True)
    logger = ObjectStoreLogger(
        "local",
        "artifacts",
        {"key": str(base)},
        object_name="race/{run_name}/{artifact_name}",
        run_name=run_name,
        broker_url=race_fleet.broker_url,
        upload_staging_folder=str(race_fleet.staging_root),
        wait_on_close=False,
        rank=0,
        world_size=1,
        # Refusals are what this attack should cause: the rank logs them and goes on.
        on_failure="warn",
    )
    payloads: dict[str, bytes] = {}
    planted: dict[str, bytes] = {}
    swapper = Swapper(rank_dir, swap_link)
    records = Records.from_url(redis_server.url)
    started = time.monotonic()
    swapper.start()
    try:
        for i in range(UPLOADS):
            name = f"race-{i}.bin"
            payloads[name] = f"artifact {i} ".encode() + os.urandom(256 * 1024)
            source = tmp_path / name
            source.write_bytes(payloads[name])
            with swapper.quiet:  # the directory is itself while the rank stages
                logger.file_artifact(LogLevel.BATCH, name, source, overwrite=True)
                # The outside directory holds a file of each staged name, so a worker
                # led there by the symlink would find something to read and delete.
                for entry in os.listdir(rank_dir):
                    if not entry.startswith(".") and entry not in planted:
                        planted[entry] = MARKER + entry.encode()
                        (outside / entry).write_bytes(planted[entry])

        def all_settled() -> bool:
            statuses = records.run_artifacts(run_name)
            return len(statuses) == UPLOADS and all(s.state.terminal for s in statuses)

        while not all_settled() and time.monotonic() - started < ATTACK_SECONDS:
            time.sleep(0.1)
    finally:
        swapper.stop()
        logger.close()
    attacked = time.monotonic() - started
    assert swapper.error is None, f"the swapper failed: {swapper.error!r}"
    # Uploads still running when the attack stopped finish undisturbed.
    wait_until(all_settled, timeout=60)
    statuses = {s.artifact_name: s for s in records.run_artifacts(run_name)}

    # Nothing outside was deleted or changed, and nothing was staged there.
    assert len(planted) == UPLOADS
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == planted
    # No object holds outside bytes; each holds exactly its artifact's bytes.
    objects = {p: p.read_bytes() for p in (base / "artifacts").rglob("*") if p.is_file()}
    assert not [p for p, held in objects.items() if MARKER in held], "outside bytes uploaded"
    landed, refused = [], []
    for name, status in statuses.items():
        object_path = base / "artifacts" / status.message["object_name"]
        staged_copy = Path(status.message["staged_path"])
        if status.state is State.DONE:
            assert object_path.read_bytes() == payloads[name]
            assert not staged_copy.exists(), f"{name}: its staged copy was not deleted"
            landed.append(name)
        else:
            assert status.state is State.FAILED, (name, status.state, status.error)
            assert status.error.startswith("refusing to read ") or " is gone " in status.error, (
                name,
                status.error,
            )
            assert not object_path.exists()
            assert staged_copy.read_bytes() == payloads[name], f"{name}: its staged copy changed"
            refused.append(name)
    assert sorted(objects) == sorted(
        base / "artifacts" / statuses[n].message["object_name"] for n in landed
    )
    assert all(w.proc is not None and w.proc.poll() is None for w in race_fleet.workers)
    assert landed, "no upload landed: the legitimate path was not exercised"
    assert swapper.swaps > 20, f"only {swapper.swaps} swaps: the race hardly ran"
    print(
        f"\nstaging race: {swapper.swaps} swaps in {attacked:.1f} s; "
        f"{len(landed)} of {UPLOADS} uploads landed with their own bytes, {len(refused)} "
        f"refused; {len(planted)} outside files neither read nor deleted"
    )
