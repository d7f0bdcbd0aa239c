"""One rank of the demo training job that ``hoist demo`` starts.

Run as ``python -m hoist.demo`` with torchrun's variables (``RANK``,
``WORLD_SIZE``, …), ``HOIST_RUN_NAME``, ``HOIST_STORE_URI`` and the cluster's
variables. It "trains" a toy model for a few steps on the CPU and logs what a
real job logs: ``hparams.yaml`` once, a checkpoint every few steps (handed
over with ``move=True``, as a job that writes a fresh file per checkpoint
can), a ``latest-rank{rank}.pt`` pointer moved after each checkpoint,
and its log file re-logged with ``overwrite=True``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

from hoist.errors import ConfigurationError, HoistError
from hoist.logger.levels import LogLevel
from hoist.logger.logger import ObjectStoreLogger
from hoist.settings import CommandSettings, environment
from hoist.stores.spec import store_class
from hoist.stores.uri import parse_store_uri

OBJECT_NAME = "{run_name}/rank{rank}/{artifact_name}"
MiB = 1024 * 1024


def make_logger(store_uri: str) -> ObjectStoreLogger:
    """A logger for the store a URI names, as a user's training script would make it."""
    kind, kwargs = parse_store_uri(store_uri, CommandSettings.from_environment().sftp_password)
    return ObjectStoreLogger(
        object_store_cls=store_class(kind),
        object_store_kwargs=kwargs,
        object_name=OBJECT_NAME,
    )


def train(store_uri: str, steps: int, checkpoint_every: int, checkpoint_mib: float) -> None:
    """Train the toy model on this rank, logging to the store ``store_uri`` names."""
    rank = int(environment().get("RANK", "0"))
    rng = random.Random(rank)
    workdir = tempfile.mkdtemp(prefix=f"hoist-demo-rank{rank}-")
    log_path = os.path.join(workdir, "train.log")
    with make_logger(store_uri) as logger:
        hparams = os.path.join(workdir, "hparams.yaml")
        with open(hparams, "w") as f:
            f.write(f"lr: 0.001\nbatch_size: 32\nsteps: {steps}\nrank: {rank}\n")
        logger.file_artifact(LogLevel.FIT, "hparams.yaml", hparams)
        weights = [rng.random() for _ in range(1024)]
        for step in range(1, steps + 1):
            loss = _train_step(weights, rng)
            with open(log_path, "a") as log:
                log.write(f"step {step} loss {loss:.4f}\n")
            if step % checkpoint_every == 0:
                name = f"checkpoints/step{step:04d}-rank{rank}.pt"
                path = os.path.join(workdir, f"step{step}.pt")
                with open(path, "wb") as f:
                    f.write(rng.randbytes(int(checkpoint_mib * MiB)))
                logger.file_artifact(LogLevel.EPOCH, name, path, move=True)
                logger.symlink_artifact(name, f"latest-rank{rank}.pt")
                logger.file_artifact(LogLevel.BATCH, "train.log", log_path, overwrite=True)


def _train_step(weights: list[float], rng: random.Random) -> float:
    # Stands in for a forward and backward pass: some CPU work and a little time.
    for i in range(len(weights)):
        weights[i] -= 0.01 * (weights[i] - rng.random())
    time.sleep(0.05)
    return sum(w * w for w in weights) / len(weights)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one rank of the hoist demo job")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--checkpoint-every", type=int, default=4)
    parser.add_argument("--checkpoint-mib", type=float, default=16.0)
    args = parser.parse_args(argv)
    try:
        # This program is an edge: the store comes from the environment `hoist demo` set.
        store_uri = CommandSettings.from_environment().store_uri
        if not store_uri:
            raise ConfigurationError(
                "HOIST_STORE_URI is not set; `hoist demo` sets it for its ranks"
            )
        train(store_uri, args.steps, args.checkpoint_every, args.checkpoint_mib)
    except HoistError as exc:
        print(f"rank {environment().get('RANK', '0')}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
