"""The Composer adapter, driven as Composer's Trainer drives a logger destination.

Composer pins older torch releases than this machine has, so it is not
installed: a stand-in makes the calls its ``Trainer``, ``CheckpointSaver`` and
``get_file`` make (read from Composer's source: ``Engine.run_event`` for INIT,
``Logger.upload_file`` → ``destination.upload_file(state=…, remote_file_name=…,
file_path=…, overwrite=…)``, a ``latest-rank{rank}.pt.symlink`` file holding
the checkpoint's remote name uploaded with ``overwrite=True`` right after it,
FIT_END, ``close`` then ``post_close``; and for autoresume ``download_file`` of
the latest name, ``FileNotFoundError``, then of its ``.symlink``, whose text is
downloaded next). Real ``hoist worker`` processes upload to the Libcloud local
store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hoist.errors import UploadFailedError
from hoist.integrations.composer import HoistDestination
from tests.conftest import serve_fleet, single_rank_local_store
from tests.services.redis import RedisServer
from tests.services.workers import WorkerFleet

RUN = "composer-run"


@dataclass
class Event:
    """Composer's ``Event`` enum members carry their hook's name as ``value``."""

    value: str


@dataclass
class State:
    run_name: str


@pytest.fixture(scope="module")
def fleet(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFleet]:
    yield from serve_fleet(tmp_path_factory, redis_server.url, "composer", count=1, concurrency=2)


def destination_for(fleet: WorkerFleet, store: Path, state: State) -> HoistDestination:
    destination = HoistDestination(**single_rank_local_store(fleet, store))
    destination.run_event(Event("init"), state, None)
    return destination


def save_checkpoint(destination: HoistDestination, state: State, tmp: Path, batch: int) -> bytes:
    """What CheckpointSaver does for one checkpoint: the file, then the latest symlink."""
    remote = f"{state.run_name}/checkpoints/ep0-ba{batch}-rank0.pt"
    data = os.urandom(2 * 1024 * 1024)
    local = tmp / f"ep0-ba{batch}-rank0.pt"
    local.write_bytes(data)
    destination.upload_file(state=state, remote_file_name=remote, file_path=local, overwrite=False)
    symlink = tmp / f"latest.{batch}.symlink"
    symlink.write_text(remote)
    destination.upload_file(
        state=state,
        remote_file_name=f"{state.run_name}/checkpoints/latest-rank0.pt.symlink",
        file_path=symlink,
        overwrite=True,
    )
    return data


def get_file(destination: HoistDestination, path: str, local: Path) -> None:
    """Composer's ``get_file`` over a logger destination: ``<path>.symlink`` when absent."""
    try:
        destination.download_file(path, str(local), overwrite=True, progress_bar=False)
    except FileNotFoundError:
        pointer = local.with_suffix(".symlink")
        destination.download_file(path + ".symlink", str(pointer), overwrite=True)
        destination.download_file(pointer.read_text(), str(local), overwrite=True)


def test_trainer_checkpoints_and_autoresume_through_hoist(
    fleet: WorkerFleet, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    (store / "artifacts").mkdir(parents=True)
    state = State(RUN)
    destination = destination_for(fleet, store, state)
    assert destination.can_upload_files()
    saved = [save_checkpoint(destination, state, tmp_path, batch) for batch in (10, 20, 30)]
    destination.run_event(Event("fit_end"), state, None)

    # fit_end returned: every checkpoint is uploaded and verified, and the
    # pointer names the newest, whatever order the tasks ran in.
    objects = store / "artifacts" / RUN / "checkpoints"
    for batch, data in zip((10, 20, 30), saved, strict=True):
        assert (objects / f"ep0-ba{batch}-rank0.pt").read_bytes() == data
    assert (objects / "latest-rank0.pt.symlink").read_text() == (
        f"{RUN}/checkpoints/ep0-ba30-rank0.pt"
    )
    assert destination.get_uri_for_file(f"{RUN}/checkpoints/ep0-ba30-rank0.pt") == (
        f"local://artifacts/{RUN}/checkpoints/ep0-ba30-rank0.pt"
    )
    destination.close(state, None)
    destination.post_close()

    # Autoresume in a new process: a fresh destination reads the latest back.
    resumed = destination_for(fleet, store, state)
    local = tmp_path / "resume" / "latest-rank0.pt"
    local.parent.mkdir()
    get_file(resumed, f"{RUN}/checkpoints/latest-rank0.pt", local)
    assert local.read_bytes() == saved[-1]
    with pytest.raises(FileExistsError):
        resumed.download_file(f"{RUN}/checkpoints/ep0-ba10-rank0.pt", str(local))
    resumed.close(state, None)


def test_a_failed_checkpoint_upload_surfaces_at_fit_end(fleet: WorkerFleet, tmp_path: Path) -> None:
    store = tmp_path / "store"
    taken = store / "artifacts" / RUN / "checkpoints" / "ep0-ba10-rank0.pt"
    taken.parent.mkdir(parents=True)
    taken.write_bytes(b"someone else's checkpoint")
    state = State(RUN)
    destination = destination_for(fleet, store, state)
    save_checkpoint(destination, state, tmp_path, 10)
    with pytest.raises(UploadFailedError, match="ep0-ba10-rank0.pt already exists with other"):
        destination.run_event(Event("fit_end"), state, None)
    # The pointer never names a checkpoint that did not land.
    assert not (taken.parent / "latest-rank0.pt.symlink").exists()
    destination.close(state, None)


def test_object_name_is_composers_to_choose() -> None:
    from hoist.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="save_filename"):
        HoistDestination(object_name="{run_name}/{artifact_name}")
    with pytest.raises(ConfigurationError, match="INIT"):
        HoistDestination(provider="local").upload_file(
            state=State(RUN), remote_file_name="x", file_path="x", overwrite=False
        )
