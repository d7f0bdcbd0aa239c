"""A small model trained with PyTorch DDP on the CPU, its checkpoints handed to hoist.

Against the embedded default (``hoist up``)::

    hoist up --detach && set -a && . .hoist/env && set +a
    torchrun --nproc-per-node 4 examples/train_ddp.py --run-name ddp-1 --steps 20
    # later, with the local checkpoints gone, go on from the newest one in the store:
    torchrun --nproc-per-node 4 examples/train_ddp.py --run-name ddp-1 --steps 40 --resume

Every rank saves its checkpoint every ``--checkpoint-every`` steps
(``torch.save`` to a new file, handed over with ``move=True``), re-points
``latest-rank{rank}.pt`` at it, and logs ``hparams.yaml`` and its log file.
``--resume`` downloads ``latest-rank{rank}.pt`` through its ``.symlink`` and
continues from the step it holds. The data of a step depends only on the
rank and the step, so a resumed run ends with the same weights as one that
never stopped. ``--no-hoist`` saves the checkpoints without handing them
over, for measuring what hoist adds to a step. Rank 0 prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hoist import LogLevel, ObjectStoreLogger, download_artifact
from hoist.stores.spec import store_class
from hoist.stores.uri import parse_store_uri

OBJECT_NAME = "{run_name}/rank{rank}/{artifact_name}"


def make_model() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's data for ``step``: the same whenever the step is run."""
    generator = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(64, 32, generator=generator)
    return x, x.sum(dim=1, keepdim=True).sin()


def make_logger(store_uri: str, run: str) -> ObjectStoreLogger:
    kind, kwargs = parse_store_uri(store_uri)
    return ObjectStoreLogger(
        object_store_cls=store_class(kind),
        object_store_kwargs=kwargs,
        object_name=OBJECT_NAME,
        run_name=run,
    )


def resume(
    model: nn.Module, optimizer: torch.optim.Optimizer, store_uri: str, run: str, rank: int
) -> int:
    """Load the newest checkpoint this rank logged; return the step it holds."""
    local = tempfile.mkdtemp(prefix=f"resume-rank{rank}-")
    fetched = download_artifact(f"{run}/rank{rank}/latest-rank{rank}.pt", local, store=store_uri)
    state = torch.load(fetched.path, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-name", dest="run", default=os.environ.get("HOIST_RUN_NAME", "ddp"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--resume", action="store_true", help="go on from latest-rank{rank}.pt")
    parser.add_argument("--no-hoist", action="store_true", help="save checkpoints, hand none over")
    parser.add_argument("--store", default=os.environ.get("HOIST_STORE_URI"), help="store URI")
    parser.add_argument("--weights-out", help="rank 0 saves the final weights here")
    args = parser.parse_args(argv)
    if not args.store and not args.no_hoist:
        parser.error("no store: pass --store URI or set HOIST_STORE_URI (hoist up writes it)")

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = DistributedDataParallel(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    logger = None if args.no_hoist else make_logger(args.store, args.run)
    workdir = tempfile.mkdtemp(prefix=f"ddp-rank{rank}-")
    start = 0
    if args.resume:
        start = resume(model.module, optimizer, args.store, args.run, rank)
    if logger is not None and start == 0:
        hparams = os.path.join(workdir, "hparams.yaml")
        with open(hparams, "w") as f:
            f.write(f"lr: 0.05\nmomentum: 0.9\nsteps: {args.steps}\n")
        logger.file_artifact(LogLevel.FIT, "hparams.yaml", hparams)

    log_path = os.path.join(workdir, "train.log")
    step_seconds = []
    for step in range(start + 1, args.steps + 1):
        began = time.perf_counter()
        x, y = batch(rank, step)
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with open(log_path, "a") as log:
            log.write(f"step {step} loss {loss.item():.6f}\n")
        if step % args.checkpoint_every == 0:
            path = os.path.join(workdir, f"step{step}.pt")
            state = {"step": step, "model": model.module.state_dict()}
            torch.save({**state, "optimizer": optimizer.state_dict()}, path)
            if logger is not None:
                name = f"checkpoints/step{step:06d}-rank{rank}.pt"
                logger.file_artifact(LogLevel.EPOCH, name, path, move=True)
                logger.symlink_artifact(name, f"latest-rank{rank}.pt")
                logger.file_artifact(LogLevel.BATCH, "train.log", log_path, overwrite=True)
        step_seconds.append(time.perf_counter() - began)

    if logger is not None:
        logger.close()  # waits until every upload is verified
    if rank == 0:
        if args.weights_out:
            torch.save(model.module.state_dict(), args.weights_out)
        summary = {
            "rank": rank,
            "first_step": start + 1,
            "steps": len(step_seconds),
            "step_ms_median": 1000 * statistics.median(step_seconds) if step_seconds else None,
            "step_ms_mean": 1000 * statistics.fmean(step_seconds) if step_seconds else None,
        }
        print(json.dumps(summary), flush=True)
    # Every rank reaches the end before gloo is torn down: a rank that leaves
    # early can abort the others ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
