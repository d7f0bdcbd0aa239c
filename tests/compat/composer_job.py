"""A tiny training job on the real ``composer.Trainer``, for tests/compat/test_composer.py.

``python -m tests.compat.composer_job --run NAME --epochs N --place first|last
--out DIR [--autoresume] [--load-path NAME]`` trains a linear classifier on the
CPU for ``N`` epochs, checkpointing every epoch to ``{run_name}/checkpoints``
(under the working directory) with ``HoistDestination`` and Composer's
``FileLogger`` in ``loggers``, ``HoistDestination`` first or last. The store,
broker and staging root come from ``HOIST_*`` (the Libcloud ``local`` store
the test names). Under ``composer -n 2`` every rank runs it (DDP over gloo).

Each rank writes ``DIR/rank<r>.json``: where training started (the epoch
and the weights, after a resume), the world size, and every call Composer
made on ``HoistDestination`` (:class:`tests.compat.recording.Recorded`),
which tests/test_composer.py's stand-in is checked against.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from composer import Trainer
from composer.callbacks import CheckpointSaver
from composer.core import Callback, State
from composer.loggers import FileLogger, Logger
from composer.models import ComposerClassifier
from composer.utils import dist

from tests.compat.recording import Recorded


class Started(Callback):
    """Notes where training starts (after any load): the epoch and the weights."""

    def __init__(self) -> None:
        self.epoch = -1
        self.weights: dict[str, list[Any]] = {}

    def fit_start(self, state: State, logger: Logger) -> None:
        self.epoch = int(state.timestamp.epoch)
        self.weights = {k: v.tolist() for k, v in state.model.state_dict().items()}


def loader() -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=generator)
    y = (x.sum(1) > 0).long()
    dataset = torch.utils.data.TensorDataset(x, y)
    # Composer's sampler: each rank its share under DDP (world size from the launcher).
    sampler = dist.get_sampler(dataset, shuffle=False)
    return torch.utils.data.DataLoader(dataset, batch_size=4, sampler=sampler)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--place", choices=["first", "last"], default="first")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--autoresume", action="store_true")
    parser.add_argument("--load-path", help="a remote name, read through HoistDestination")
    args = parser.parse_args()

    torch.manual_seed(0)
    destination = Recorded(store_check_timeout=30.0)
    file_logger = FileLogger()
    loggers = [destination, file_logger] if args.place == "first" else [file_logger, destination]
    started = Started()
    trainer = Trainer(
        model=ComposerClassifier(torch.nn.Linear(4, 2), num_classes=2),
        train_dataloader=loader(),
        max_duration=f"{args.epochs}ep",
        optimizers=None,
        device="cpu",
        run_name=args.run,
        loggers=loggers,
        callbacks=[started],
        save_folder="{run_name}/checkpoints",
        save_interval="1ep",
        save_overwrite=False,
        autoresume=args.autoresume,
        load_path=args.load_path,
        load_object_store=destination if args.load_path else None,
        progress_bar=False,
        log_to_console=False,
    )
    saver = next(c for c in trainer.state.callbacks if isinstance(c, CheckpointSaver))
    trainer.fit()
    trainer.close()
    rank = dist.get_global_rank()
    summary = {
        "rank": rank,
        "world_size": dist.get_world_size(),
        "epoch": started.epoch,
        "weights": started.weights,
        "saved": [str(p) for p in saver.saved_checkpoints],
        "calls": destination.calls,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{rank}.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
