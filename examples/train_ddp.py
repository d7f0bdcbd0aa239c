"""A small model trained with PyTorch DDP on the CPU, its checkpoints handed to hoist.

Against the embedded default (``hoist up``), with torch's CPU build installed
(README.md, "A real DDP job", says how)::

    hoist up --detach && set -a && . ./.hoist/env && set +a
    torchrun --nproc-per-node 4 examples/train_ddp.py --run-name ddp-1 --steps 20
    # later, with the local checkpoints gone, go on from the newest one in the store:
    torchrun --nproc-per-node 4 examples/train_ddp.py --run-name ddp-1 --steps 40 --resume

Every rank saves its checkpoint every ``--checkpoint-every`` steps
(``torch.save`` to a new file, handed over with ``move=True``), re-points
``latest-rank{rank}.pt`` at it, and logs ``hparams.yaml`` and its log file.
``--resume`` downloads ``latest-rank{rank}.pt`` through its ``.symlink`` and
continues from the step it holds; with no checkpoint of the run in the store
yet it says so and starts at step 1, as Composer's ``autoresume`` does, so
the same command line serves the first run and every restart. Local files
live in a temporary directory removed at the end. The data of a step
depends only on the rank and the step, so a resumed run ends with the same
weights as one that never stopped. ``--no-hoist`` saves the checkpoints without handing them
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
from hoist.protocol.pointers import POINTER_SUFFIX
from hoist.stores.spec import store_class
from hoist.stores.uri import parse_store_uri, store_from_uri

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
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    store_uri: str,
    run: str,
    workdir: str,
) -> int:
    """Load the newest checkpoint this rank logged; the step it holds, or 0 when there is none.

    Every rank must hold the same step: a run whose ranks disagree (one with
    no checkpoint, or an older one) stops here rather than train on from
    mixed states.
    """
    rank = dist.get_rank()
    name = f"{run}/rank{rank}/latest-rank{rank}.pt"
    step = 0
    with store_from_uri(store_uri) as store:
        # Only "no checkpoint at all" starts fresh: a pointer naming a missing
        # object still fails in download_artifact, as it should.
        if store.exists(name) or store.exists(name + POINTER_SUFFIX):
            fetched = download_artifact(name, workdir, store=store)
            state = torch.load(fetched.path, weights_only=True)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            step = int(state["step"])
    steps: list[int | None] = [None] * dist.get_world_size()
    dist.all_gather_object(steps, step)
    if len(set(steps)) > 1:
        raise RuntimeError(
            f"cannot resume run {run!r}: its ranks' latest checkpoints hold different steps "
            f"({', '.join(f'rank {r}: {s}' for r, s in enumerate(steps))}; 0 is none)"
        )
    if step == 0 and rank == 0:
        print(
            f"--resume: run {run!r} has no checkpoint in {store_uri} yet; starting fresh at step 1",
            file=sys.stderr,
            flush=True,
        )
    return step


def train(
    args: argparse.Namespace,
    model: DistributedDataParallel,
    optimizer: torch.optim.Optimizer,
    logger: ObjectStoreLogger | None,
    workdir: str,
) -> tuple[int, list[float]]:
    """Run steps up to ``args.steps``; the first step run and each step's seconds."""
    rank = dist.get_rank()
    start = resume(model.module, optimizer, args.store, args.run, workdir) if args.resume else 0
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
    return start + 1, step_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-name", dest="run", default=os.environ.get("HOIST_RUN_NAME", "ddp"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument(
        "--resume", action="store_true", help="go on from latest-rank{rank}.pt, if there is one"
    )
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
    # Checkpoints are moved into staging; the log, hparams and a resumed
    # checkpoint are staged as copies, so the directory can go once close()
    # has returned (or the run failed).
    with tempfile.TemporaryDirectory(prefix=f"ddp-rank{rank}-") as workdir:
        first_step, step_seconds = train(args, model, optimizer, logger, workdir)
        if logger is not None:
            logger.close()  # waits until every upload is verified
    if rank == 0:
        if args.weights_out:
            torch.save(model.module.state_dict(), args.weights_out)
        summary = {
            "rank": rank,
            "first_step": first_step,
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
