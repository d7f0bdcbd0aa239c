"""hoist for Hugging Face ``transformers.Trainer``: ``callbacks=[HoistCallback(...)]``.

On every save the ``Trainer`` writes ``<output_dir>/checkpoint-<step>/``;
:class:`HoistCallback` hands that directory to hoist as a sharded checkpoint
(:meth:`hoist.ObjectStoreLogger.log_checkpoint_dir`: hard links, so the
training loop waits microseconds, not for a copy) and returns. Workers
upload it, verify it, and move ``<run>/latest.symlink`` to its manifest once
every file landed. At the end of training the callback waits until every
checkpoint is uploaded and verified, and raises the real cause of a failure.
Failures reach the loop sooner: ``on_train_begin`` waits up to
``store_check_timeout`` seconds for the fleet's check of the store, and
``on_step_end`` raises a failure the fleet recorded since (one GET a step;
see :mod:`hoist.logger.health`).

Hard links are safe here: the ``Trainer`` writes each checkpoint to a new
directory and never rewrites its files; deleting old ones
(``save_total_limit``) does not touch the staged links.

Example (needs a model and a fleet; tests/test_huggingface.py trains one):
    >>> trainer = Trainer(model, args, train_dataset=data,  # doctest: +SKIP
    ...                   callbacks=[HoistCallback(provider="s3", container="ckpts")])
    >>> trainer.train()  # returns once every checkpoint is in the store  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any, Literal

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hoist.errors import ConfigurationError
from hoist.logger.logger import ObjectStoreLogger
from hoist.logger.retention import KeepRule

SAVE_TOTAL_LIMIT = "save_total_limit"
"""``remote_keep_last`` that takes the ``TrainingArguments``' ``save_total_limit``."""


class HoistCallback(TrainerCallback):
    """Uploads the Trainer's checkpoints through a hoist fleet.

    Parameters:
        **logger_kwargs: :class:`hoist.ObjectStoreLogger` arguments (the store,
            ``broker_url``, ``upload_staging_folder``, ``settings``, …); what
            they leave out comes from the ``HOIST_*`` environment, read once
            when the logger is built, on the main process only. ``run_name``
            defaults to the ``TrainingArguments``' ``run_name``.
        store_check_timeout: seconds ``on_train_begin`` waits for the
            fleet's check of the store.
        remote_keep_last: how many committed checkpoints ``latest`` keeps in
            the store (:mod:`hoist.state.retention`); ``"save_total_limit"``
            takes the ``TrainingArguments``' own (which otherwise prunes only
            the local folder). Default None: the store keeps every checkpoint.
            Opt-in, since deleting remote copies is not what the callback did.
            Refused with ``load_best_model_at_end``: the best checkpoint is
            named by no pointer, so retention would not know to keep it.
    """

    def __init__(
        self,
        store_check_timeout: float = 10.0,
        remote_keep_last: int | Literal["save_total_limit"] | None = None,
        **logger_kwargs: Any,
    ) -> None:
        if remote_keep_last != SAVE_TOTAL_LIMIT:
            KeepRule.of(remote_keep_last)  # type: ignore[arg-type]  # refused here, at once
        self.remote_keep_last = remote_keep_last
        self.logger_kwargs = logger_kwargs
        self.store_check_timeout = store_check_timeout
        self.logger: ObjectStoreLogger | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.logger is None and state.is_world_process_zero:
            run_name = self.logger_kwargs.pop("run_name", None) or args.run_name
            keep = self.keep_last(args)
            self.logger = ObjectStoreLogger(run_name=run_name, keep_last=keep, **self.logger_kwargs)
            self.logger.check(self.store_check_timeout)

    def keep_last(self, args: Any) -> int | None:
        """The store's ``keep_last`` for these ``TrainingArguments``."""
        keep = self.remote_keep_last
        if keep == SAVE_TOTAL_LIMIT:
            keep = args.save_total_limit
        if keep is not None and getattr(args, "load_best_model_at_end", False):
            raise ConfigurationError(
                "HoistCallback(remote_keep_last=...) cannot keep the best checkpoint that "
                "load_best_model_at_end needs: no pointer names it; drop one of the two"
            )
        return keep  # type: ignore[return-value]

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.logger is not None:
            self.logger.check()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.logger is None:  # not the main process: it writes no checkpoint
            return
        step = state.global_step
        path = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        self.logger.log_checkpoint_dir(step, path, staging="link", ranks=1)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.logger is not None:
            self.logger.close()  # waits for every upload, verified
            self.logger = None
