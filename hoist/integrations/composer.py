"""hoist as a MosaicML Composer logger destination: ``Trainer(loggers=[HoistDestination(...)])``.

Composer's ``Trainer`` hands checkpoints to its loggers through
``LoggerDestination.upload_file(state, remote_file_name, file_path,
overwrite=...)``, reads them back for autoresume and ``load_path`` through
``download_file(remote_file_name, destination, overwrite, progress_bar)``
(following a ``<name>.symlink`` object whose text is the target's remote
name), and waits for uploads at ``fit_end``. This class keeps those
signatures, on top of :class:`hoist.ObjectStoreLogger`:

- ``upload_file`` stages the file and returns (the training thread never
  uploads); the remote file name is the object name, as Composer formats it.
- a ``.symlink`` Composer uploads becomes hoist's pointer to the artifact it
  names: written only once that checkpoint is uploaded and verified, and never
  moved back to an older one. Composer uploads its ``.symlink`` file right after
  the checkpoint, without waiting for it.
- ``init`` builds the logger and waits up to ``store_check_timeout`` seconds
  for the fleet's check of the store (:mod:`hoist.logger.health`), so a
  missing bucket or a wrong secret fails there, as Composer's own
  ``RemoteUploaderDownloader`` fails in the ``Trainer`` constructor;
  ``batch_end`` raises a failure the fleet recorded since (one GET a batch).
- ``fit_end`` waits until every upload of this rank is uploaded *and
  verified* and raises the real cause of any failure; Composer's own
  ``wait_for_workers`` returns when its queue is empty, which can be while
  an upload is still in flight.
- ``download_file`` returns objects as they are (a ``.symlink`` object as its
  text), raising ``FileNotFoundError`` for a missing one, which Composer's
  ``get_file`` relies on to try ``<name>.symlink``.
- uploads are accepted until ``post_close``, which waits for them and closes
  hoist's logger; ``close`` closes nothing. Composer's ``Engine.close`` calls
  every destination's ``close`` in ``loggers`` order, then every
  ``post_close``; ``FileLogger`` and ``TensorboardLogger`` upload their last
  files from their own ``close``, so with ``HoistDestination`` first (as the
  README shows) a logger closed in ``close`` refused them and the log's last
  bytes never landed. Waiting in ``post_close`` is what Composer's own
  ``RemoteUploaderDownloader`` does, and works whatever the destination's
  place in ``loggers``. A destination that uploads from its *own*
  ``post_close`` is too late for any place: hoist refuses that upload with
  :class:`~hoist.errors.ConfigurationError`, and Composer logs it.

Composer is not a dependency: when it is installed the class is a real
``LoggerDestination``; otherwise it has the same methods, so code and tests
can drive it the way the ``Trainer`` does.

Example (needs Composer and a fleet; tests/test_composer.py drives it as the Trainer does):
    >>> from composer import Trainer  # doctest: +SKIP
    >>> destination = HoistDestination(provider="s3", container="ckpts")  # doctest: +SKIP
    >>> trainer = Trainer(..., loggers=[destination],  # doctest: +SKIP
    ...                   save_folder="{run_name}/checkpoints", save_interval="1ep")
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from hoist.errors import ConfigurationError
from hoist.logger.levels import LogLevel
from hoist.logger.logger import ObjectStoreLogger
from hoist.logger.retention import KeepRule
from hoist.protocol.pointers import POINTER_SUFFIX

try:  # a real LoggerDestination where Composer is installed
    from composer.loggers import LoggerDestination as _Base
except ImportError:
    _Base = object


class HoistDestination(_Base):
    """A Composer logger destination that uploads through a hoist fleet.

    Parameters:
        **logger_kwargs: :class:`hoist.ObjectStoreLogger` arguments (the store,
            ``broker_url``, ``upload_staging_folder``, ``settings``, …); what
            they leave out comes from the ``HOIST_*`` environment, read once
            when the logger is built. ``object_name`` is
            always ``"{artifact_name}"``: Composer formats remote file names
            itself. The logger is built at ``init``, when Composer's run name
            is known.
        store_check_timeout: seconds ``init`` waits for the fleet's check of
            the store (unanswered by then, training starts and a failure
            raises at a later ``batch_end``).
        remote_keep_last: keep this many of each pointer's targets in the
            store (Composer points ``latest-rank{rank}.pt`` at every
            checkpoint it saves): older checkpoints are deleted by the workers
            once the pointer moved past them, never one a pointer names
            (:mod:`hoist.state.retention`). Default None: keep all. Composer's
            ``save_num_checkpoints_to_keep`` prunes only the local folder.
    """

    def __init__(
        self,
        store_check_timeout: float = 10.0,
        remote_keep_last: int | None = None,
        **logger_kwargs: Any,
    ) -> None:
        if "object_name" in logger_kwargs:
            raise ConfigurationError(
                "HoistDestination names objects as Composer formats them; set Composer's "
                "save_filename / remote_file_name instead of object_name"
            )
        super().__init__()
        KeepRule.of(remote_keep_last)  # refused here, not at init
        self.remote_keep_last = remote_keep_last
        self.logger_kwargs = logger_kwargs
        self.store_check_timeout = store_check_timeout
        self.logger: ObjectStoreLogger | None = None
        self._post_closed = False  # uploads after post_close are refused, saying why

    # ----- Composer's events -------------------------------------------------

    def run_event(self, event: Any, state: Any, logger: Any) -> None:
        """Call the method named after ``event``, as Composer's ``Callback`` does."""
        hook = getattr(self, str(getattr(event, "value", event)), None)
        if callable(hook):
            hook(state, logger)

    def init(self, state: Any, logger: Any) -> None:
        self._post_closed = False
        self.logger = ObjectStoreLogger(
            **{
                "run_name": state.run_name,
                "keep_last": self.remote_keep_last,
                **self.logger_kwargs,
            },
            object_name="{artifact_name}",
        )
        self.logger.check(self.store_check_timeout)

    def batch_end(self, state: Any, logger: Any) -> None:
        """Raise an upload failure the fleet recorded since the last batch."""
        self._logger().check()

    def fit_end(self, state: Any, logger: Any) -> None:
        self._logger().wait()

    def eval_standalone_end(self, state: Any, logger: Any) -> None:
        self._logger().wait()

    def predict_end(self, state: Any, logger: Any) -> None:
        self._logger().wait()

    def close(self, state: Any, logger: Any) -> None:
        """Keep accepting uploads: the destinations after this one upload from their ``close``.

        Composer calls every destination's ``close`` before any ``post_close``;
        :meth:`post_close` waits for everything and closes hoist's logger.
        """

    def post_close(self) -> None:
        """Wait for every upload of this rank, the ones logged in ``close`` included; let go.

        Raises:
            UploadFailedError: an upload failed that ``fit_end`` had not
                reported (Composer logs it as an error of ``post_close``).
        """
        self._post_closed = True
        if self.logger is not None:
            self.logger.close()  # waits, unless the logger was built with wait_on_close=False

    # ----- files ---------------------------------------------------------------

    def can_upload_files(self) -> bool:
        return True

    def upload_file(
        self, state: Any, remote_file_name: str, file_path: pathlib.Path | str, *, overwrite: bool
    ) -> None:
        """Stage ``file_path`` as the object ``remote_file_name``; a ``.symlink``: a pointer."""
        if self._post_closed:
            raise ConfigurationError(
                f"HoistDestination cannot upload {remote_file_name!r}: Composer already called "
                "its post_close, which waited for this rank's uploads and closed them; upload "
                "from a destination's close(), not its post_close()"
            )
        hoist = self._logger()
        if remote_file_name.endswith(POINTER_SUFFIX):
            target = pathlib.Path(file_path).read_text().strip()
            if hoist.has_logged(target):
                hoist.symlink_artifact(target, remote_file_name.removesuffix(POINTER_SUFFIX))
                return
            # A target this rank did not log (another rank's file, a sharded
            # checkpoint's directory): the pointer is an ordinary small object.
        hoist.file_artifact(LogLevel.FIT, remote_file_name, file_path, overwrite=overwrite)

    def download_file(
        self,
        remote_file_name: str,
        destination: str,
        overwrite: bool = False,
        progress_bar: bool = True,
    ) -> None:
        """Download the object as it is; ``FileNotFoundError`` if there is none."""
        if os.path.exists(destination) and not overwrite:
            raise FileExistsError(f"{destination} exists; pass overwrite=True to replace it")
        self._logger().store.download_file(remote_file_name, destination)

    def get_uri_for_file(self, remote_file_name: str) -> str:
        return self._logger().get_uri_for_artifact(remote_file_name)

    # ----- what other destinations log: not hoist's business --------------------

    def log_hyperparameters(self, hyperparameters: dict[str, Any]) -> None:
        """Hyperparameters go to metric loggers; hoist uploads files."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Metrics go to metric loggers; hoist uploads files."""

    def _logger(self) -> ObjectStoreLogger:
        if self.logger is None:
            raise ConfigurationError(
                "HoistDestination was used before Composer's INIT event; pass it to "
                "Trainer(loggers=[...]) rather than calling it directly"
            )
        return self.logger
