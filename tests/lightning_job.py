"""A tiny Lightning training job for tests/test_lightning.py, in-process or under DDP.

``python -m tests.lightning_job --store DIR --run NAME --dirpath DIR --epochs N
--devices K --summary FILE [--ckpt-path P]`` trains :class:`Tiny` on the CPU
with ``HoistCheckpointIO`` uploading to the Libcloud ``local`` store ``DIR``
(the broker, staging root and fleet key from ``HOIST_*``), keeping the 2 best
checkpoints by a ``val_loss`` that follows :data:`VAL_LOSS` and ``last.ckpt``.
Each rank writes a JSON summary (``<summary>-rank<r>.json``): where training
started (epoch, step and weights, after a resume) and the best checkpoints.
With ``--resume-run`` the same processes then resume from ``--resume-from``
in a fresh folder, for one more epoch. With ``--devices 2`` Lightning's
launcher starts the second process itself (``strategy="ddp"``, gloo).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from hoist.integrations.lightning import HoistCheckpointIO

VAL_LOSS = [0.5, 0.3, 0.4, 0.2, 0.35, 0.25, 0.45]
"""The ``val_loss`` of each epoch. After 4 epochs the 2 best are epochs 1 and 3;
epochs 0 and 2 were saved and then removed (after epochs 2 and 3)."""


class Tiny(L.LightningModule):
    """A linear layer on random data; its ``val_loss`` is scheduled, not measured."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", torch.tensor(VAL_LOSS[self.current_epoch]), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), 8)


class Started(Callback):
    """Notes where training starts: the epoch, the step and the weights (after a resume)."""

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.epoch, self.step = trainer.current_epoch, trainer.global_step
        self.weights = {k: v.detach().clone() for k, v in module.state_dict().items()}


def trainer(
    plugin: HoistCheckpointIO, dirpath: Path, epochs: int, devices: int = 1
) -> tuple[L.Trainer, ModelCheckpoint, Started]:
    checkpoints = ModelCheckpoint(
        dirpath=dirpath,
        filename="{epoch}",
        monitor="val_loss",
        mode="min",
        save_top_k=2,
        save_last=True,
    )
    started = Started()
    run = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=epochs,
        plugins=[plugin],
        callbacks=[checkpoints, started],
        default_root_dir=dirpath.parent,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
    )
    return run, checkpoints, started


def local_store(store: Path) -> dict[str, Any]:
    """HoistCheckpointIO arguments for the Libcloud ``local`` store at ``store``."""
    return {"provider": "local", "container": "artifacts", "provider_kwargs": {"key": str(store)}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--dirpath", type=Path, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--summary", type=Path, required=True)
    parser.add_argument("--resume-run", help="then resume in this run, in a fresh folder")
    parser.add_argument("--resume-from", help="the ckpt_path to resume from")
    parser.add_argument("--resume-dirpath", type=Path)
    args = parser.parse_args()
    summary: dict[str, Any] = {
        "fit": fit(args.store, args.run, args.dirpath, args.epochs, args.devices, None)
    }
    if args.resume_run:
        summary["resume"] = fit(
            args.store,
            args.resume_run,
            args.resume_dirpath,
            args.epochs + 1,
            args.devices,
            args.resume_from,
        )
    rank = summary["fit"]["rank"]
    (args.summary.parent / f"{args.summary.stem}-rank{rank}.json").write_text(json.dumps(summary))


def fit(
    store: Path, run_name: str, dirpath: Path, epochs: int, devices: int, ckpt_path: str | None
) -> dict[str, Any]:
    """Train; what this rank saw: where training started, the best checkpoints."""
    plugin = HoistCheckpointIO(**local_store(store), run_name=run_name)
    run, checkpoints, started = trainer(plugin, dirpath, epochs, devices)
    run.fit(Tiny(), loader(), loader(), ckpt_path=ckpt_path)
    return {
        "rank": run.global_rank,
        "world_size": run.world_size,
        "epoch": started.epoch,
        "step": started.step,
        "weights": {key: value.tolist() for key, value in started.weights.items()},
        "best": sorted(Path(p).name for p in checkpoints.best_k_models),
    }


if __name__ == "__main__":
    main()
