"""hoist for ``torch.distributed.checkpoint`` (DCP): save, async_save and load through a fleet.

:func:`save` and :func:`async_save` write a DCP checkpoint with DCP's own
``FileSystemWriter`` straight into the logger's staging root, then hand each
rank's files to :meth:`~hoist.ObjectStoreLogger.log_checkpoint_dir` by
renaming them into place (``staging="move"``): the bytes are written once,
by DCP, and never copied. Once every rank's files of the step are uploaded
and verified, a worker writes the step's manifest and moves the run's
``latest`` pointer to it. :func:`load` follows ``latest`` (or takes a step),
downloads the step in parallel (:func:`hoist.download.download_checkpoint`)
and loads it with DCP's ``FileSystemReader``, so DCP reshards as it always
does: a job of 2 ranks loads a checkpoint 4 ranks saved.

What each rank writes (torch 2.13, checked in its ``filesystem.py``):
``__<r>_<i>.distcp`` (``r`` the rank in DCP's process group, ``i`` one per
writer thread), and the coordinator (rank 0) also ``.metadata``, written
after every rank's data files. Each rank writes into a folder of its own,
``<staging root>/<run>/rank<r>/dcp-step-<step>``: DCP's writer needs no
filesystem shared by the ranks, and the rank logs every file in it, so the
committed step holds all of them. What a killed write left there is removed
by the rank's next write, of any step (:mod:`hoist.integrations.dcp_folders`).

Decisions:

- **async_save registers the step from DCP's own thread**, when DCP's
  future completes: the training loop does not wait for the write, and a job
  killed right after still has every finished step committed. A failure
  (DCP's, or hoist's while registering) is kept and raised, with the real
  cause chained, by the next :func:`save`, :func:`async_save`, :func:`wait`
  or :func:`close` with that logger. One async save is in flight at a time
  per logger (the next call waits for the previous one first), as DCP
  advises: each holds a CPU copy of the state. ``ObjectStoreLogger`` is not
  made for calls from two threads at once, so a logger given to
  :func:`async_save` should log only DCP checkpoints; log other artifacts
  through a second logger of the same run and rank (sequence numbers come
  from Redis, so the two never collide).
- **async_save uses a gloo process group of its own** (made on the first
  call, on every rank) unless given one: DCP's collectives then run in its
  thread without interleaving with the training loop's on the default group,
  and a job whose default backend is NCCL still has the CPU backend
  async_save requires.
- **load downloads once per host**: rank 0 finds the step and tells every
  rank which manifest it is (all ranks load the same step even if the
  pointer moves meanwhile); the lowest rank on each host downloads into
  ``download_folder`` (the system's temporary folder by default, which the
  ranks of a host share), every rank loads, and the folder is removed.

Example (under torchrun; tests/test_dcp.py saves with 4 ranks, kills the job
and resumes with 2):
    >>> from hoist.integrations import dcp as hoist_dcp
    >>> logger = ObjectStoreLogger(  # doctest: +SKIP
    ...     provider="s3", container="ckpts", run_name="llm-1")
    >>> for step in range(start, steps):  # doctest: +SKIP
    ...     train_one_step()
    ...     if step % 100 == 0:
    ...         hoist_dcp.async_save({"model": model.state_dict()}, step, logger)
    >>> hoist_dcp.close(logger)  # raises the cause if a save failed  # doctest: +SKIP
    >>> state = {"model": model.state_dict()}  # doctest: +SKIP
    >>> hoist_dcp.load(state, "llm-1").step  # the newest committed step  # doctest: +SKIP
    1200
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import socket
import tempfile
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as torch_dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict_saver import AsyncSaveResponse

from hoist.download import Resolved, download_checkpoint, resolve
from hoist.errors import CheckpointError, HoistError, ObjectNotFoundError
from hoist.integrations.dcp_folders import fresh_folder
from hoist.integrations.dcp_folders import write_folder as write_folder  # public here before
from hoist.keys import FleetKeys
from hoist.logger.logger import ObjectStoreLogger
from hoist.protocol.manifest import Manifest, checkpoint_name, is_manifest, manifest_object
from hoist.state.records import Records

log = logging.getLogger("hoist.rank")

DCP_ERRORS = (Exception, CheckpointException)
"""What DCP raises: its ``CheckpointException`` (every rank's errors) is a ``BaseException``."""

METADATA = ".metadata"
"""The file DCP's coordinator writes last; a step's files are found through its record."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    """The step :func:`load` loaded.

    Parameters:
        step: its training step.
        manifest: the manifest's object name in the run's store.
        files: how many files the step holds (every rank's, and ``.metadata``).
    """

    step: int
    manifest: str
    files: int


class _Saves:
    """A logger's in-flight async save and the process group async saves use."""

    def __init__(self) -> None:
        self.in_flight: Future[list[str]] | None = None
        self.group: Any = None


_SAVES: weakref.WeakKeyDictionary[ObjectStoreLogger, _Saves] = weakref.WeakKeyDictionary()


def _saves_of(logger: ObjectStoreLogger) -> _Saves:
    saves = _SAVES.get(logger)
    if saves is None:
        saves = _SAVES[logger] = _Saves()
    return saves


def save(
    state_dict: dict[str, Any],
    step: int,
    logger: ObjectStoreLogger,
    *,
    pointer: str = "latest",
    process_group: Any = None,
    planner: Any = None,
    thread_count: int = 1,
    sync_files: bool = True,
) -> list[str]:
    """Save ``state_dict`` as DCP's ``save`` does, then hand this rank's files to the fleet.

    Every rank of DCP's process group calls it for the same ``step``. Blocks
    for DCP's write (and for a previous :func:`async_save` still in flight);
    the upload happens on the fleet. Returns this rank's artifact ids.

    Parameters:
        state_dict: what to save, as for ``torch.distributed.checkpoint.save``.
        step: the training step; the run's pointer only moves to higher steps.
        logger: this rank's logger.
        pointer: the run-wide pointer's name (``<run>/<pointer>.symlink``).
        process_group: DCP's process group (default: the default group).
        planner: DCP's ``SavePlanner`` (default: DCP's).
        thread_count, sync_files: DCP's ``FileSystemWriter`` options (``sync_files``
            fsyncs each file: the staged file is the only copy until uploaded).

    Raises:
        CheckpointError: DCP's save failed (the cause chained).
        HoistError: an earlier async save failed, or staging or the fleet did.
    """
    _settle(_saves_of(logger))
    writing = (thread_count, sync_files)
    folder, _ = _write(
        torch_dcp.save, "save", step, logger, writing, state_dict, planner, process_group
    )
    return _register(logger, step, folder, _world(process_group), pointer)


def async_save(
    state_dict: dict[str, Any],
    step: int,
    logger: ObjectStoreLogger,
    *,
    pointer: str = "latest",
    process_group: Any = None,
    planner: Any = None,
    thread_count: int = 1,
    sync_files: bool = True,
) -> Future[list[str]]:
    """Save ``state_dict`` as DCP's ``async_save`` does; the step is registered when it is written.

    Returns once DCP has copied the state to CPU memory; DCP writes it in a
    thread of its own, and that thread then hands this rank's files to the
    fleet. The future returned holds this rank's artifact ids, or the error.
    A failure is also raised by the next call with this logger (see the
    module docs); waits first for a previous async save still in flight.
    Parameters as for :func:`save`; ``process_group`` defaults to a gloo
    group of hoist's, made on the first call (every rank calls it).

    Raises:
        CheckpointError: the previous async save failed (the cause chained).
        HoistError: registering the previous save's files failed.
    """
    saves = _saves_of(logger)
    _settle(saves)
    group = process_group
    if group is None and dist.is_available() and dist.is_initialized():
        if saves.group is None:
            saves.group = dist.new_group(backend="gloo")
        group = saves.group
    world = _world(group)
    writing = (thread_count, sync_files)
    folder, answer = _write(
        torch_dcp.async_save, "async save", step, logger, writing, state_dict, planner, group
    )
    # A stager that stages in the background answers both futures; the write is the second.
    written = answer.upload_completion if isinstance(answer, AsyncSaveResponse) else answer
    registered: Future[list[str]] = Future()
    registered.set_running_or_notify_cancel()

    def finish(done: Future[Any]) -> None:
        # Runs in DCP's thread once the write ended: register, or keep the error.
        try:
            done.result()
        except DCP_ERRORS as exc:
            registered.set_exception(_failed("async save", step, exc))
            return
        try:
            registered.set_result(_register(logger, step, folder, world, pointer))
        except Exception as exc:
            registered.set_exception(exc if isinstance(exc, HoistError) else _failed("", step, exc))

    saves.in_flight = registered
    written.add_done_callback(finish)
    return registered


def wait(logger: ObjectStoreLogger, timeout: float | None = None) -> None:
    """Wait for an async save in flight, then for every upload of the logger, verified.

    Raises:
        CheckpointError: the async save failed (the cause chained).
        UploadFailedError: an upload failed; names each with its cause.
    """
    _settle(_saves_of(logger))
    logger.wait(timeout)


def close(logger: ObjectStoreLogger) -> None:
    """Wait for an async save in flight, then close the logger (which waits for its uploads).

    The logger is closed even when the async save failed; that error is raised after.
    """
    try:
        _settle(_saves_of(logger))
    except BaseException:
        logger.close()
        raise
    logger.close()


def load(
    state_dict: dict[str, Any],
    run: str,
    step: int | str = "latest",
    *,
    process_group: Any = None,
    planner: Any = None,
    download_folder: str | None = None,
    records: Records | None = None,
    state_url: str | None = None,
    fleet_key: str | FleetKeys | None = None,
) -> LoadedCheckpoint:
    """Load a committed step of ``run`` into ``state_dict`` in place, as DCP's ``load`` does.

    Every rank of the process group calls it. Resharding is DCP's: the
    ranks may be fewer or more than saved the step.

    Parameters:
        state_dict: what to load into, as for ``torch.distributed.checkpoint.load``.
        run: the run that saved it.
        step: a step number, or a pointer's name (``"latest"``: the newest
            committed step).
        process_group, planner: DCP's (defaults: the default group, DCP's planner).
        download_folder: where each host's download goes (removed after
            loading); default: the system's temporary folder.
        records, state_url, fleet_key: where the run's records are and the key
            opening its store's credentials (see :func:`hoist.download.download_artifact`).

    Raises:
        CheckpointError: the step was never committed, or a file does not
            match its manifest, or DCP's load failed.
        ConfigurationError, ObjectNotFoundError: the run or pointer is unknown.
    """
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank(process_group) if distributed else 0
    found: Resolved | None = None
    error: Exception | None = None
    plan: dict[str, Any] = {}
    if rank == 0:
        try:
            found, manifest = _find(run, step, records, state_url, fleet_key)
            plan = {"manifest": manifest.object_name, "step": manifest.step}
            plan |= {"files": len(manifest.files), "token": uuid.uuid4().hex[:12]}
        except Exception as exc:  # told to every rank, which would wait for rank 0 forever
            error, plan = exc, {"error": str(exc)}
    plan = _from_rank0(plan, process_group, distributed)
    if "error" in plan:
        if error is not None:
            raise error
        raise CheckpointError(
            f"rank 0 could not find step {step!r} of run {run!r}: {plan['error']}"
        )
    hosts = _everyone(socket.gethostname(), process_group, distributed)
    downloader = hosts.index(hosts[rank])  # the lowest rank on this host
    dest = os.path.join(
        download_folder or tempfile.gettempdir(), f"hoist-dcp-{plan['token']}-r{downloader}"
    )
    failure: str | None = None
    try:
        if rank == downloader:
            if found is None:
                found, _ = _find(run, step, records, state_url, fleet_key)
            with found:
                download_checkpoint(plan["manifest"], dest, store=found.store)
    except Exception as exc:  # told to every rank, as above
        error, failure = exc, f"rank {rank}: {exc}"
    failures = [f for f in _everyone(failure, process_group, distributed) if f]
    if failures:
        if error is not None:
            raise error
        raise CheckpointError(f"downloading step {plan['step']} failed: {'; '.join(failures)}")
    reader = torch_dcp.FileSystemReader(dest)
    try:
        torch_dcp.load(
            state_dict, storage_reader=reader, planner=planner, process_group=process_group
        )
    except DCP_ERRORS as exc:
        log.warning("loading step %s failed; its files stay in %s", plan["step"], dest)
        raise _failed("load", plan["step"], exc) from exc
    if distributed:
        dist.barrier(process_group)  # every rank of this host has read the files
    if rank == downloader:
        shutil.rmtree(dest, ignore_errors=True)
    log.info("loaded step %s of run %r (%s)", plan["step"], run, plan["manifest"])
    return LoadedCheckpoint(plan["step"], plan["manifest"], plan["files"])


# ----- internals ---------------------------------------------------------------------------------


def _settle(saves: _Saves) -> None:
    """Wait for the async save in flight and raise its error, once."""
    in_flight, saves.in_flight = saves.in_flight, None
    if in_flight is not None:
        in_flight.result()


def _write(
    dcp_call: Callable[..., Any],
    what: str,
    step: int,
    logger: ObjectStoreLogger,
    writing: tuple[int, bool],
    state_dict: dict[str, Any],
    planner: Any,
    group: Any,
) -> tuple[str, Any]:
    """DCP's ``save`` or ``async_save`` into a fresh staging folder: the folder, DCP's answer.

    ``writing``: the ``FileSystemWriter``'s ``thread_count`` and ``sync_files``.
    """
    folder = fresh_folder(logger, step)
    thread_count, sync_files = writing
    writer = torch_dcp.FileSystemWriter(folder, thread_count=thread_count, sync_files=sync_files)
    try:
        answer = dcp_call(state_dict, storage_writer=writer, planner=planner, process_group=group)
    except HoistError:
        raise
    except DCP_ERRORS as exc:
        raise _failed(what, step, exc) from exc
    return folder, answer


def _world(group: Any) -> int:
    """How many ranks write the checkpoint: DCP's process group's size (1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size(group))
    return 1


def _register(
    logger: ObjectStoreLogger, step: int, folder: str, world: int, pointer: str
) -> list[str]:
    """Move this rank's written files into staging and register them under ``step``."""
    files = sorted(
        os.path.join(folder, name)
        for name in os.listdir(folder)
        if os.path.isfile(os.path.join(folder, name))
    )
    ids = logger.log_checkpoint_dir(
        step, folder, files=files, pointer=pointer, staging="move", ranks=world
    )
    try:
        os.rmdir(folder)  # empty: every file was renamed into its staged place
    except OSError as exc:
        log.warning("could not remove DCP's folder %s after staging it: %s", folder, exc)
    return ids


def _failed(what: str, step: int, exc: BaseException) -> CheckpointError:
    """DCP's (or another library's) error as a hoist one, the cause chained."""
    doing = f"torch.distributed.checkpoint's {what}" if what else "registering the files"
    cause = repr(exc)
    if isinstance(exc, CheckpointException):  # its str is every rank's whole traceback
        cause = "; ".join(f"rank {rank}: {got!r}" for rank, (got, _) in exc.failures.items())
    error = CheckpointError(
        f"{doing} of step {step} failed: {cause}; the run's pointer stays at an earlier step"
    )
    error.__cause__ = exc
    return error


def _find(
    run: str,
    step: int | str,
    records: Records | None,
    state_url: str | None,
    fleet_key: str | FleetKeys | None,
) -> tuple[Resolved, Manifest]:
    """The run's store (open) and the manifest of ``step``: a number, or a pointer's name."""
    if isinstance(step, str):
        found = resolve(step, run=run, records=records, state_url=state_url, fleet_key=fleet_key)
        name = found.object_name
        if not is_manifest(name):
            found.__exit__(None, None, None)  # closes a store built here
            raise CheckpointError(
                f"{step!r} of run {run!r} names {found.uri}, not a step committed by "
                "log_checkpoint_dir; give the pointer given to save (default 'latest') or a step"
            )
    else:
        metadata = f"{checkpoint_name(step)}/{METADATA}"
        found = resolve(
            metadata, run=run, records=records, state_url=state_url, fleet_key=fleet_key
        )
        name = manifest_object(posixpath.dirname(found.object_name))
    try:
        return found, Manifest.from_bytes(found.store.get_bytes(name))
    except ObjectNotFoundError as exc:
        found.__exit__(None, None, None)
        raise CheckpointError(
            f"step {step} of run {run!r} was never committed: not every rank's files were "
            f"uploaded and verified (`hoist status --run {run}` shows which); load another step "
            "or 'latest'"
        ) from exc


def _from_rank0(value: dict[str, Any], group: Any, distributed: bool) -> dict[str, Any]:
    if not distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=_global_rank0(group), group=group)
    return dict(box[0])


def _everyone(value: Any, group: Any, distributed: bool) -> list[Any]:
    if not distributed:
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, value, group=group)
    return gathered


def _global_rank0(group: Any) -> int:
    """The global rank of the group's rank 0 (``broadcast_object_list`` takes a global one)."""
    return 0 if group is None else int(dist.get_global_rank(group, 0))
