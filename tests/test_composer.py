"""The Composer adapter, driven as Composer's Trainer drives a logger destination.

Composer pins older torch releases than this machine has, so it is not
installed: a stand-in makes the calls its ``Trainer``, ``CheckpointSaver``,
``FileLogger`` and ``get_file`` make, as mosaicml 0.32.1's source has them
(unchanged on Composer's main branch of April 2026): ``Engine.run_event`` for
INIT, ``Logger.upload_file`` → ``destination.upload_file(state=…,
remote_file_name=…, file_path=…, overwrite=…)`` for every destination, a
``latest-rank{rank}.pt.symlink`` file holding the checkpoint's remote name
uploaded with ``overwrite=True`` right after it, FIT_END; ``Engine._close``:
every callback's ``close`` in ``state.callbacks`` order (the Trainer puts
``loggers`` first, in the order given), an exception logged as an error and
that callback's ``post_close`` skipped, then every other callback's
``post_close`` in the same order; and for autoresume ``download_file`` of the
latest name, ``FileNotFoundError``, then of its ``.symlink``, whose text is
downloaded next. Real ``hoist worker`` processes upload to the Libcloud local
store.

The stand-in is held to the real thing: ``bash deploy/bootstrap.sh compat
composer`` runs the real mosaicml 0.32.1 Trainer through hoist in its own venv
and records the calls it makes (tests/compat/composer_calls.json);
``test_the_stand_in_calls_what_the_real_composer_called`` drives the stand-in
through the same recorder and compares, call by call.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hoist.errors import ConfigurationError, UploadFailedError
from hoist.integrations.composer import HoistDestination
from hoist.state.records import Records
from hoist.state.states import State as ArtifactState
from tests import readme_snippets
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


composer_log = logging.getLogger("composer.core.engine")


class ComposerLogger:
    """Composer's ``Logger``: ``upload_file`` formats the remote name with the run's
    and hands the file to every destination, keyword arguments only."""

    def __init__(self, state: State, destinations: list[Any]) -> None:
        self.state = state
        self.destinations = destinations

    def upload_file(self, remote_file_name: str, file_path: str | Path, *, overwrite: bool) -> None:
        for destination in self.destinations:
            destination.upload_file(
                state=self.state,
                remote_file_name=remote_file_name.format(run_name=self.state.run_name, rank=0),
                file_path=Path(file_path),
                overwrite=overwrite,
            )


class FileLogger:
    """Composer's ``FileLogger``, as far as uploads go: it opens its file at INIT,
    uploads it (``overwrite=True``) at each EPOCH_START and at FIT_END, and again
    from its own ``close``, after flushing what was written since (the Trainer logs
    after FIT_END too)."""

    remote_file_name = "{run_name}/logs-rank{rank}.txt"  # FileLogger's default

    def __init__(self, path: Path) -> None:
        self.path = path

    def run_event(self, event: Event, state: State, logger: ComposerLogger) -> None:
        if event.value == "init":
            self.path.write_text("[INIT] training starts\n")
        elif event.value == "epoch_start":
            logger.upload_file(self.remote_file_name, self.path, overwrite=True)
        elif event.value == "fit_end":
            self.write("[FIT_END] training ends\n")
            logger.upload_file(self.remote_file_name, self.path, overwrite=True)

    def write(self, line: str) -> None:
        with self.path.open("a") as file:
            file.write(line)

    def close(self, state: State, logger: ComposerLogger) -> None:
        self.write("[CLOSE] last lines, only in the upload from close()\n")
        logger.upload_file(self.remote_file_name, self.path, overwrite=True)

    def post_close(self) -> None:
        pass

    def upload_file(
        self, state: State, remote_file_name: str, file_path: Path, *, overwrite: bool
    ) -> None:
        """``LoggerDestination``'s, which does nothing: ``Logger`` calls it on every destination."""


def close_engine(callbacks: list[Any], state: State, logger: ComposerLogger | None) -> None:
    """Composer's ``Engine._close`` (0.32.1): every ``close`` in order, then every
    ``post_close`` of the callbacks whose ``close`` did not raise; it logs what
    raised and never re-raises."""
    closed = []
    for callback in callbacks:
        try:
            callback.close(state, logger)
        except Exception as exc:
            name = type(callback).__name__
            composer_log.error(
                f"Error running {name}.close(). Skipping {name}.post_close().", exc_info=exc
            )
        else:
            closed.append(callback)
    for callback in closed:
        try:
            callback.post_close()
        except Exception as exc:
            composer_log.error(
                f"Error running {type(callback).__name__}.post_close().", exc_info=exc
            )


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
        destination.download_file(
            path + ".symlink", str(pointer), overwrite=True, progress_bar=False
        )
        destination.download_file(
            pointer.read_text(), str(local), overwrite=True, progress_bar=False
        )


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
    close_engine([destination], state, None)

    # Autoresume in a new process: a fresh destination reads the latest back.
    resumed = destination_for(fleet, store, state)
    local = tmp_path / "resume" / "latest-rank0.pt"
    local.parent.mkdir()
    get_file(resumed, f"{RUN}/checkpoints/latest-rank0.pt", local)
    assert local.read_bytes() == saved[-1]
    with pytest.raises(FileExistsError):
        resumed.download_file(f"{RUN}/checkpoints/ep0-ba10-rank0.pt", str(local))
    close_engine([resumed], state, None)


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
    close_engine([destination], state, None)


def test_object_name_is_composers_to_choose() -> None:
    with pytest.raises(ConfigurationError, match="save_filename"):
        HoistDestination(object_name="{run_name}/{artifact_name}")
    with pytest.raises(ConfigurationError, match="INIT"):
        HoistDestination(provider="local").upload_file(
            state=State(RUN), remote_file_name="x", file_path="x", overwrite=False
        )


@pytest.mark.parametrize("place", ["first", "last"])
def test_a_file_logger_uploading_in_its_close_lands_whatever_the_order_of_loggers(
    fleet: WorkerFleet, tmp_path: Path, place: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 16: with ``loggers=[HoistDestination(...), FileLogger(...)]``, as the
    README shows, Composer closes HoistDestination before FileLogger uploads its
    last lines; they land, verified, and nothing logs an error."""
    store = tmp_path / "store"
    (store / "artifacts").mkdir(parents=True)
    state = State(f"{RUN}-close-{place}")
    destination = HoistDestination(**single_rank_local_store(fleet, store))
    file_logger = FileLogger(tmp_path / "logs-rank0.txt")
    loggers: list[Any] = (
        [destination, file_logger] if place == "first" else [file_logger, destination]
    )
    logger = ComposerLogger(state, loggers)
    for event in ("init", "fit_end"):  # Engine.run_event: each logger in order
        for callback in loggers:
            callback.run_event(Event(event), state, logger)

    with caplog.at_level(logging.WARNING):
        close_engine(loggers, state, logger)

    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    remote = store / "artifacts" / state.run_name / "logs-rank0.txt"
    assert remote.read_bytes() == file_logger.path.read_bytes()
    assert remote.read_text().endswith("[CLOSE] last lines, only in the upload from close()\n")
    # post_close returned once the fleet had uploaded and verified the newest version.
    versions = [
        artifact
        for artifact in Records.from_url(fleet.broker_url).run_artifacts(state.run_name)
        if artifact.artifact_name == f"{state.run_name}/logs-rank0.txt"
    ]
    assert len(versions) == 2
    assert versions[-1].state is ArtifactState.DONE
    # After post_close the logger is closed; an upload then is refused, saying when.
    with pytest.raises(ConfigurationError, match="post_close"):
        logger.upload_file(FileLogger.remote_file_name, file_logger.path, overwrite=True)


ENDS_WITHOUT_CLOSE = """
import atexit, json, sys
from pathlib import Path
from hoist.integrations.composer import HoistDestination
from tests.test_composer import ComposerLogger, Event, FileLogger, State, close_engine

kwargs, folder, run = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
state = State(run)
loggers = [HoistDestination(**kwargs), FileLogger(folder / "logs-rank0.txt")]
logger = ComposerLogger(state, loggers)
atexit.register(close_engine, loggers, state, logger)  # Engine.__init__, before INIT
for event in ("init", "fit_end"):
    for callback in loggers:
        callback.run_event(Event(event), state, logger)
# No trainer.close(): Composer's atexit hook closes the engine as the interpreter exits.
"""


def test_a_run_that_never_calls_close_lands_its_last_log_at_exit(
    fleet: WorkerFleet, tmp_path: Path
) -> None:
    """Composer registers ``Engine._close`` with ``atexit`` when the Trainer is built,
    before INIT builds hoist's logger, whose sending thread flushes at exit too: at
    exit hoist's flush runs first, then FileLogger's ``close`` uploads and
    HoistDestination's ``post_close`` waits for it."""
    store = tmp_path / "store"
    (store / "artifacts").mkdir(parents=True)
    run = f"{RUN}-atexit"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            ENDS_WITHOUT_CLOSE,
            json.dumps(single_rank_local_store(fleet, store)),
            str(tmp_path),
            run,
        ],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Error running" not in done.stderr, done.stderr
    remote = store / "artifacts" / run / "logs-rank0.txt"
    assert remote.read_bytes() == (tmp_path / "logs-rank0.txt").read_bytes()
    assert remote.read_text().endswith("[CLOSE] last lines, only in the upload from close()\n")


# ----- the stand-in against the real Composer's recorded calls ------------------

REAL_CALLS = Path(__file__).parent / "compat" / "composer_calls.json"
"""What mosaicml 0.32.1's Trainer called on ``HoistDestination`` (tests/compat/)."""


def train_like_the_trainer(
    destination: HoistDestination, place: str, run: str, tmp: Path, epochs: range, resume: bool
) -> None:
    """The stand-in's version of tests/compat/composer_job.py: 4 batches an epoch,
    a checkpoint at each epoch's end, FileLogger beside hoist, ``place`` in loggers."""
    state = State(run)
    file_logger = FileLogger(tmp / "logs-rank0.txt")
    loggers: list[Any] = (
        [destination, file_logger] if place == "first" else [file_logger, destination]
    )
    logger = ComposerLogger(state, loggers)

    def event(name: str) -> None:
        for callback in loggers:
            callback.run_event(Event(name), state, logger)

    event("init")
    if resume:
        get_file(destination, f"{run}/checkpoints/latest-rank0.pt", tmp / "latest-rank0.pt")
    for epoch in epochs:
        event("epoch_start")
        for _ in range(4):
            event("batch_end")
        save_checkpoint(destination, state, tmp, batch=4 * (epoch + 1))
    event("fit_end")
    close_engine(loggers, state, logger)


@pytest.mark.parametrize("place", ["first", "last"])
def test_the_stand_in_calls_what_the_real_composer_called(
    fleet: WorkerFleet, tmp_path: Path, place: str
) -> None:
    """The calls this file's stand-in makes are the ones the real Trainer made, in
    order, as ``bash deploy/bootstrap.sh compat composer`` recorded them: a
    change in Composer shows here once the recording is renewed."""
    from tests.compat.recording import Recorded

    real = json.loads(REAL_CALLS.read_text())
    store = tmp_path / "store"
    (store / "artifacts").mkdir(parents=True)
    run = f"{RUN}-calls-{place}"
    for key, epochs, resume in (("train", range(2), False), ("autoresume", range(2, 3), True)):
        folder = tmp_path / key
        folder.mkdir()
        destination = Recorded(**single_rank_local_store(fleet, store))
        train_like_the_trainer(destination, place, run, folder, epochs, resume)
        assert destination.calls == real[f"{key}-{place}"], key
    assert (store / "artifacts" / run / "checkpoints" / "latest-rank0.pt.symlink").read_text() == (
        f"{run}/checkpoints/ep0-ba12-rank0.pt"
    )


# ----- retention (issue 19): HoistDestination(remote_keep_last=K) -----------------------


def test_remote_keep_last_keeps_the_newest_checkpoints_in_the_store(
    fleet: WorkerFleet, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match="keep_last must be a positive whole number"):
        HoistDestination(remote_keep_last=0)
    state = State("composer-ret")
    store = tmp_path / "store"
    (store / "artifacts").mkdir(parents=True)
    destination = HoistDestination(**single_rank_local_store(fleet, store), remote_keep_last=2)
    destination.run_event(Event("init"), state, None)
    for batch in (1, 2, 3, 4):
        save_checkpoint(destination, state, tmp_path, batch)
        assert destination.logger is not None
        destination.logger.wait(timeout=60)
    close_engine([destination], state, None)
    folder = store / "artifacts" / "composer-ret" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == [
        "ep0-ba3-rank0.pt",
        "ep0-ba4-rank0.pt",
        "latest-rank0.pt.symlink",
    ]


# ----- the README's snippet: checked here, run by the compat suite -----------------------------

COMPOSER_HEADING = "### Composer"


def test_the_readme_snippet_compiles_and_calls_hoist_as_it_takes_it() -> None:
    """Composer is not installed here: tests/compat/test_composer.py runs the snippet under
    the real Trainer. Here: it compiles, imports HoistDestination from where it lives, and
    the call it makes binds (a keyword only ``**logger_kwargs`` takes must be an
    ``ObjectStoreLogger`` argument) and, its values being literals, builds."""
    from hoist.logger.logger import ObjectStoreLogger

    code = readme_snippets.required(COMPOSER_HEADING)
    compile(code, str(readme_snippets.README), "exec")
    ours = [c for c in readme_snippets.calls_of(code) if c.module.startswith("hoist")]
    assert [(c.module, c.name) for c in ours] == [
        ("hoist.integrations.composer", "HoistDestination")
    ]
    for call in ours:
        readme_snippets.check_binds(call, HoistDestination, forwarded=ObjectStoreLogger)
        assert call.literals is not None
        assert HoistDestination(**call.literals).remote_keep_last == call.literals.get(
            "remote_keep_last"
        )
    assert {c.name for c in readme_snippets.calls_of(code)} >= {"Trainer", "ComposerClassifier"}
