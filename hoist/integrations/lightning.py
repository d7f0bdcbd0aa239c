"""hoist for PyTorch Lightning: ``Trainer(plugins=[HoistCheckpointIO(...)])``.

Lightning writes, reads and deletes every checkpoint through its strategy's
``CheckpointIO`` plugin; :class:`HoistCheckpointIO` is Lightning's own
``TorchCheckpointIO`` with the store behind it:

- ``save_checkpoint`` writes the file exactly as ``TorchCheckpointIO`` does
  (``torch.save`` into memory, then a write to a temporary file renamed into
  place), hands it to hoist as ``checkpoints/<file name>`` (the object
  ``{run_name}/checkpoints/<file name>``) and moves the pointer
  ``{run_name}/checkpoints/latest.ckpt`` to it, then returns: the training
  loop waits for the local write and the hand-off, never for the upload. The
  file is staged as a hard link (``staging="link"``, a copy across
  filesystems): Lightning's write replaces the path with a new file, so a
  later save to the same path (``last.ckpt``) never changes staged bytes.
  Lightning saves on global rank 0 only; the logger is built there at the
  first save, and waits up to ``store_check_timeout`` seconds for the fleet's
  check of the store, so a missing bucket fails at the first checkpoint.
- ``remove_checkpoint`` (``ModelCheckpoint(save_top_k=...)`` dropping a
  checkpoint that fell out of the top k) deletes the local file as
  ``TorchCheckpointIO`` does, and the remote copy once both of these hold:
  its upload is verified (or finished otherwise: a failed version leaves
  nothing new to delete), and the run's newest pointer is written and names
  another object. Pointers move only forward, so the store's pointer never
  names a deleted object, not even for the moments between a save and the
  worker writing the pointer to it. A background thread checks the records
  (one Redis call for all of them) every half second and deletes through the
  logger's store; the training loop does not wait. Asked to remove the
  pointer's current target, the remote copy stays until a later save moves
  the pointer on. ``teardown`` first waits for every upload, then deletes
  what is due and logs what it keeps. A process killed before ``teardown``
  may leave removed checkpoints in the store, never a pointer to a deleted one.

  Withdrawing an upload no worker has started
  (:func:`hoist.state.withdrawal.withdraw`) was the other way, and was not
  taken: Lightning removes a checkpoint one save after writing it, by which
  time its upload has usually started or finished; and the pointer request
  that named it would wait for a target that will never be uploaded.
- ``load_checkpoint`` (``trainer.fit(model, ckpt_path=...)`` on every rank)
  takes an existing local file (as ``TorchCheckpointIO``), an object URI
  (``s3://bucket/run/checkpoints/epoch=3-step=40.ckpt``; ``file://`` and
  ``local://`` inside the logger's store), or an artifact name of the run:
  ``checkpoints/latest.ckpt`` follows the pointer
  (:func:`hoist.download.download_artifact`). The file is downloaded,
  verified, loaded and deleted. Ranks other than 0 build a logger for it
  without a store check; give the same ``run_name`` on every rank.
- ``teardown`` (the end of ``fit``, ``validate``, ``test``, and of a failed
  run) waits until every upload of this rank is uploaded and verified and
  raises :class:`~hoist.errors.UploadFailedError` naming each failure with
  its cause, as ``ObjectStoreLogger.wait`` does; then closes the logger it
  built (one passed in is the caller's to close).

Example (needs a fleet; tests/test_lightning.py trains with 2 DDP processes):
    >>> hoist = HoistCheckpointIO(provider="s3", container="ckpts", run_name="lit-1")
    >>> trainer = Trainer(plugins=[hoist],  # doctest: +SKIP
    ...                   callbacks=[ModelCheckpoint(monitor="val_loss", save_top_k=2)])
    >>> trainer.fit(model, ckpt_path="checkpoints/latest.ckpt")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import posixpath
import tempfile
import threading
from typing import Any
from urllib.parse import urlsplit

import torch.distributed as dist
from lightning.pytorch.plugins.io import TorchCheckpointIO

from hoist.download import download_artifact
from hoist.errors import ConfigurationError, ObjectNotFoundError, UploadFailedError
from hoist.logger.levels import LogLevel
from hoist.logger.logger import ObjectStoreLogger
from hoist.state.records import Records
from hoist.state.retention import Retention
from hoist.state.states import State
from hoist.stores.base import ObjectStore

log = logging.getLogger("hoist.rank")

CHECKPOINTS = "checkpoints"
"""The folder of the run the checkpoints go to: ``{run_name}/checkpoints/<file name>``."""
POINTER = f"{CHECKPOINTS}/latest.ckpt"
"""The artifact name of the pointer to the newest checkpoint (``latest.ckpt.symlink``)."""
URI_SCHEMES = ("s3", "sftp", "file", "local")
"""The object URIs ``load_checkpoint`` downloads (:mod:`hoist.download`)."""
POLL_SECONDS = 0.5
"""How often the removal thread asks the records whether a removal is due."""


def _as_stored(storage: Any, location: Any) -> Any:
    """``torch.load``'s map_location that keeps tensors on the CPU, as ``TorchCheckpointIO``."""
    return storage


class HoistCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` that uploads each checkpoint through a hoist fleet.

    Parameters:
        logger: an :class:`~hoist.ObjectStoreLogger` to log through, with its
            own object names (``checkpoints/<file name>`` filled into its
            ``object_name``); the caller closes it. Without it one is built
            from ``logger_kwargs`` on first use and closed at ``teardown``.
        store_check_timeout: seconds the first save waits for the fleet's
            check of the store.
        staging: how the file is handed over (see
            :class:`~hoist.logger.staging.StagingMode`); ``"link"`` is safe
            with Lightning's writes, which replace the file.
        download_folder: where ``load_checkpoint`` downloads to (the file is
            deleted once loaded); default: the system's temporary folder.
        **logger_kwargs: :class:`hoist.ObjectStoreLogger` arguments (the store,
            ``run_name``, ``broker_url``, ``upload_staging_folder``, …); what
            they leave out comes from the ``HOIST_*`` environment. The rank and
            world size default to ``torch.distributed``'s. ``object_name`` is
            ``"{run_name}/{artifact_name}"``; for another, pass a logger.

    Raises:
        ConfigurationError: both a logger and logger arguments, or ``object_name``.
    """

    def __init__(
        self,
        logger: ObjectStoreLogger | None = None,
        *,
        store_check_timeout: float = 10.0,
        staging: str = "link",
        download_folder: str | None = None,
        **logger_kwargs: Any,
    ) -> None:
        if logger is not None and logger_kwargs:
            raise ConfigurationError(
                "give HoistCheckpointIO either an ObjectStoreLogger or its arguments, not both"
            )
        if "object_name" in logger_kwargs:
            raise ConfigurationError(
                "HoistCheckpointIO names objects {run_name}/checkpoints/<file name>; for other "
                "names pass logger=ObjectStoreLogger(object_name=...) instead of object_name"
            )
        super().__init__()
        self.logger = logger
        self.logger_kwargs = logger_kwargs
        self.store_check_timeout = store_check_timeout
        self.staging = staging
        self.download_folder = download_folder
        self._owns_logger = logger is None
        self._removals: _Removals | None = None
        self._store_lock = threading.Lock()  # loads here and deletions in _Removals' thread

    # ----- Lightning's CheckpointIO ---------------------------------------------

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        path: str | os.PathLike[str],
        storage_options: Any | None = None,
    ) -> None:
        """Write ``path`` as ``TorchCheckpointIO`` does, hand it to hoist, move the pointer."""
        local = _local_path(path, "save")
        name = _artifact_name(local)
        super().save_checkpoint(checkpoint, local, storage_options)
        hoist = self._hoist()
        try:
            artifact = hoist.file_artifact(
                LogLevel.FIT, name, local, overwrite=True, staging=self.staging
            )
        except UploadFailedError:
            # A failure recorded earlier is raised after this file was handed
            # over (hoist.logger.health): the pointer still moves to it.
            hoist.symlink_artifact(name, POINTER)
            raise
        assert artifact is not None  # a should_log_artifact that skips it: see _hoist
        pointer = hoist.symlink_artifact(name, POINTER)
        assert pointer is not None
        self._removals_of(hoist).saved(self._object(hoist, name), artifact, pointer)

    def remove_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Delete the local file as ``TorchCheckpointIO`` does; the remote copy once it is safe."""
        local = _local_path(path, "remove")
        super().remove_checkpoint(local)
        hoist = self._hoist()
        self._removals_of(hoist).remove(self._object(hoist, _artifact_name(local)))

    def load_checkpoint(
        self,
        path: str | os.PathLike[str],
        map_location: Any | None = _as_stored,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load a local file, an object URI, or an artifact name (``checkpoints/latest.ckpt``).

        Raises:
            ObjectNotFoundError: no such file, object or artifact (a ``FileNotFoundError``).
            ConfigurationError: ``path`` is none of these forms.
        """
        text = os.fspath(path)
        if "://" not in text and os.path.isfile(text):
            return super().load_checkpoint(text, map_location, weights_only)
        hoist = self._hoist()
        source = self._source(hoist, text)
        with tempfile.TemporaryDirectory(prefix="hoist-ckpt-", dir=self.download_folder) as tmp:
            try:
                with self._store_lock:
                    got = download_artifact(source, tmp + os.sep, store=hoist.store)
            except ObjectNotFoundError as exc:
                raise ObjectNotFoundError(_not_found(text, hoist, exc)) from exc
            log.info("loading %s (downloaded from %s)", text, got.uri)
            return super().load_checkpoint(got.path, map_location, weights_only)

    def teardown(self) -> None:
        """Wait for every upload to be verified; delete what is due; close the logger built here.

        Raises:
            UploadFailedError: an upload failed; names each failure and its cause.
        """
        hoist = self.logger
        if hoist is None:
            return
        removals, self._removals = self._removals, None
        try:
            hoist.wait()
            if removals is not None:
                removals.finish()
        finally:
            if removals is not None:
                removals.stop()
            if self._owns_logger:
                self.logger = None
                hoist.close()

    # ----- internals ---------------------------------------------------------------

    def _hoist(self) -> ObjectStoreLogger:
        """The logger, built on first use (on rank 0 with the store check)."""
        if self.logger is None:
            kwargs = {"object_name": "{run_name}/{artifact_name}", **self.logger_kwargs}
            if dist.is_available() and dist.is_initialized():
                # Lightning's launcher sets WORLD_SIZE and LOCAL_RANK but not RANK.
                kwargs.setdefault("rank", dist.get_rank())
                kwargs.setdefault("world_size", dist.get_world_size())
            saves = kwargs.get("rank", 0) == 0  # Lightning saves on global rank 0 only
            kwargs["store_check"] = kwargs.get("store_check", True) and saves
            self.logger = ObjectStoreLogger(**kwargs)
            if saves:
                self.logger.check(self.store_check_timeout)
        if self.logger.should_log_artifact is not None:
            raise ConfigurationError(
                "HoistCheckpointIO uploads every checkpoint Lightning writes; choose them with "
                "ModelCheckpoint, not the logger's should_log_artifact"
            )
        return self.logger

    def _removals_of(self, hoist: ObjectStoreLogger) -> _Removals:
        if self._removals is None:
            # ObjectStoreLogger has no public per-artifact query yet: its records
            # are what wait() polls, read here the same way.
            retention = Retention(hoist._records.client, hoist.run_name)
            self._removals = _Removals(
                hoist._records, hoist.store, retention, hoist.spec.store_id, self._store_lock
            )
            self._removals.start()
        return self._removals

    @staticmethod
    def _object(hoist: ObjectStoreLogger, artifact_name: str) -> str:
        uri = hoist.get_uri_for_artifact(artifact_name)
        prefix = hoist.store.get_uri("x")[:-1]
        return uri[len(prefix) :]

    @staticmethod
    def _source(hoist: ObjectStoreLogger, text: str) -> str:
        """The URI to download ``text`` from, or a refusal saying what to give instead."""
        accepted = (
            "give an existing local file, an object URI (s3://, sftp://, file://, local://) "
            f"or an artifact name such as {POINTER!r}"
        )
        if "://" in text:
            if urlsplit(text).scheme not in URI_SCHEMES:
                raise ConfigurationError(f"HoistCheckpointIO cannot load {text!r}: {accepted}")
            return text
        if os.path.isdir(text):
            raise ConfigurationError(f"{text!r} is a directory, not a checkpoint file: {accepted}")
        if os.path.isabs(text) or text.startswith(("./", "../")):
            raise ObjectNotFoundError(f"no checkpoint file {text!r} exists: {accepted}")
        try:
            return hoist.get_uri_for_artifact(text)
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"{text!r} is no local file and no artifact name ({exc}): {accepted}"
            ) from None


class _Removals:
    """Remote copies Lightning removed, deleted once no pointer can name them.

    Parameters:
        records: the state store holding the logger's records.
        store: the logger's store, which the objects are deleted from.
        retention: the run's retention records: a deletion goes through
            :meth:`~hoist.state.retention.Retention.release`, so an object any
            pointer of the run names stays, and each deletion is recorded as pruned.
        store_id: the store's id, as retention keys it.
        store_lock: held while the store is used (loads use it too).
    """

    def __init__(
        self,
        records: Records,
        store: ObjectStore,
        retention: Retention,
        store_id: str,
        store_lock: threading.Lock | None = None,
    ) -> None:
        self.records = records
        self.store = store
        self.retention = retention
        self.store_id = store_id
        self.store_lock = store_lock or threading.Lock()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._uploads: dict[str, str] = {}  # object -> the artifact id of its newest version
        self._pointer: tuple[str, str] | None = None  # newest (pointer id, target object)
        self._doomed: dict[str, str | None] = {}  # object -> its newest version's id

    def saved(self, object_name: str, artifact: str, pointer: str) -> None:
        """``object_name`` was logged again (as ``artifact``) and the pointer moved to it."""
        with self._lock:
            self._uploads[object_name] = artifact
            self._pointer = (pointer, object_name)
            self._doomed.pop(object_name, None)  # saved again after its removal: keep it

    def remove(self, object_name: str) -> None:
        """Delete ``object_name`` from the store once it is safe (see the module docs)."""
        with self._lock:
            self._doomed[object_name] = self._uploads.get(object_name)
        self._wake.set()

    def start(self) -> None:
        """Delete in a thread of its own from now on, as removals become due."""
        self._thread = threading.Thread(
            target=self._run, name="hoist-lightning-removals", daemon=True
        )
        self._thread.start()

    def finish(self) -> None:
        """After ``wait()``: delete what is due (all can be), log what is kept and why."""
        self.stop()
        try:
            self._delete_due()
        except Exception as exc:  # housekeeping: a blip must not fail a finished run
            log.warning("deleting removed checkpoints failed: %r", exc)
        with self._lock:
            kept, pointer = dict(self._doomed), self._pointer
        for object_name in kept:
            if pointer is None:
                why = "this process saved no checkpoint, so the run's pointer may name it"
            elif pointer[1] == object_name:
                why = "the run's pointer names it"
            else:
                why = "the run's pointer could not be moved past it (its target failed)"
            log.warning("kept %s in the store, which Lightning removed: %s", object_name, why)

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopped:
            try:
                self._delete_due()
            except Exception as exc:  # a Redis or store blip: tried again; the thread lives on
                log.warning("deleting removed checkpoints waits: %r", exc)
            with self._lock:
                idle = not self._doomed
            self._wake.wait(None if idle else POLL_SECONDS)
            self._wake.clear()

    def _delete_due(self) -> None:
        due = self._due()
        if not due:
            return
        with self.store_lock:
            deleted = self.retention.release(self.store, self.store_id, due)
        for object_name in deleted:
            log.info("deleted %s from the store: Lightning removed it", object_name)
            with self._lock:
                self._doomed.pop(object_name, None)

    def _due(self) -> list[str]:
        """The removed objects that no pointer of the run names, nor will."""
        with self._lock:
            pointer, doomed = self._pointer, dict(self._doomed)
        if pointer is None or not doomed:
            return []  # nothing saved here: the store's pointer may name any of them
        ids = [pointer[0], *(artifact for artifact in doomed.values() if artifact)]
        states = self.records.states(ids)
        # A record that is gone expired after finishing (records are written
        # before the calls that log them return).
        if states.get(pointer[0], State.DONE) is not State.DONE:
            return []  # the store's pointer may still name an older checkpoint
        return [
            object_name
            for object_name, artifact in doomed.items()
            if object_name != pointer[1]
            and (artifact is None or states.get(artifact, State.DONE).terminal)
        ]


def _local_path(path: str | os.PathLike[str], what: str) -> str:
    text = os.fspath(path)
    if "://" in text:
        raise ConfigurationError(
            f"HoistCheckpointIO cannot {what} {text!r}: it writes checkpoints to a local folder "
            "and uploads them from there; give ModelCheckpoint a local dirpath"
        )
    return text


def _artifact_name(path: str) -> str:
    name = f"{CHECKPOINTS}/{posixpath.basename(path.replace(os.sep, '/'))}"
    if name == POINTER:
        raise ConfigurationError(
            f"HoistCheckpointIO keeps {POINTER!r} for its pointer to the newest checkpoint; "
            "name checkpoints otherwise (ModelCheckpoint(filename=...))"
        )
    return name


def _not_found(text: str, hoist: ObjectStoreLogger, exc: ObjectNotFoundError) -> str:
    if "://" in text:
        return f"no checkpoint at {text}: {exc}"
    hint = (
        ""
        if text.startswith(f"{CHECKPOINTS}/")
        else (f"; artifact names of checkpoints start with {CHECKPOINTS + '/'!r}")
    )
    return f"no checkpoint {text!r} in run {hoist.run_name!r}: {exc}{hint}"
