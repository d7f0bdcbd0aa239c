"""``hoist demo``: a small multi-rank training job through the local cluster, watched live."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from hoist.commands.cluster_access import records_for
from hoist.commands.console import console, format_bytes, out
from hoist.commands.status import summarize
from hoist.errors import ConfigurationError, HoistError
from hoist.settings import CommandSettings
from hoist.state.records import ArtifactStatus, Records
from hoist.state.states import State
from hoist.workers.cluster import LocalCluster
from hoist.workers.envfile import apply_env_file, env_path


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "demo",
        help="run a small multi-rank training job through the local cluster",
        description="Start (or reuse) the local cluster, run --ranks training processes with "
        "torchrun-style variables that log checkpoints, a log file, hparams.yaml and a "
        "latest-rank{rank}.pt pointer, show progress, and list what landed.",
        epilog="example: hoist demo --ranks 4 --store s3://bucket/demo?endpoint_url=http://minio:9000",
    )
    parser.add_argument("--ranks", type=int, default=4, help="training processes (default 4)")
    parser.add_argument("--steps", type=int, default=12, help="training steps per rank")
    parser.add_argument("--checkpoint-every", type=int, default=4, help="steps between checkpoints")
    parser.add_argument("--checkpoint-mib", type=float, default=16.0, help="checkpoint size (MiB)")
    parser.add_argument("--store", help="store URI (default: the cluster's embedded store)")
    parser.add_argument("--run", help="run name (default: demo-<time>)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for uploads")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ensure_cluster(args.home)
    records = records_for(args)
    run_name = args.run or f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    command = CommandSettings.from_environment()
    store_uri = args.store or command.store_uri
    if not store_uri:
        raise ConfigurationError(
            "say where the demo uploads to: --store URI, or set HOIST_STORE_URI"
        )
    console.print(f"run [bold]{run_name}[/]: {args.ranks} ranks logging to {store_uri}")
    ranks = start_ranks(args, run_name, store_uri)
    artifacts = watch(records, run_name, ranks, args.timeout)
    failed_ranks = [rank for rank, proc in enumerate(ranks) if proc.returncode != 0]
    print_landed(artifacts)
    failures = [a for a in artifacts if a.state is State.FAILED]
    flower = command.flower_url
    if flower:
        console.print(
            f"Flower: {flower}/tasks (user {command.flower_user or 'hoist'}, "
            f"password: HOIST_FLOWER_PASSWORD in {os.path.join(args.home, 'env')})"
        )
    if failures or failed_ranks:
        for failure in failures:
            console.print(
                f"[red]failed[/] {failure.artifact_name}: {failure.error}", highlight=False
            )
        raise HoistError(
            f"the demo run {run_name} had {len(failures)} failed upload(s) and "
            f"{len(failed_ranks)} failed rank(s); see above and `hoist status --run {run_name}`"
        )
    console.print(f"[bold green]all {len(artifacts)} artifacts of {run_name} landed verified[/]")
    return 0


def ensure_cluster(home: str) -> None:
    """Use a cluster the environment names, else start (or reuse) the local one in ``home``."""
    if CommandSettings.from_environment().broker_url and not os.path.exists(env_path(home)):
        return  # a cluster elsewhere, chosen by the user
    info, reused = LocalCluster(home).start()
    console.print(
        f"{'reusing' if reused else 'started'} the local cluster in {home} (hoist down stops it)"
    )
    apply_env_file(home)


def start_ranks(
    args: argparse.Namespace, run_name: str, store_uri: str
) -> list[subprocess.Popen[bytes]]:
    procs = []
    for rank in range(args.ranks):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(args.ranks),
            "LOCAL_WORLD_SIZE": str(args.ranks),
            "GROUP_RANK": "0",
            "HOIST_RUN_NAME": run_name,
            "HOIST_STORE_URI": store_uri,
        }
        argv = [
            sys.executable, "-m", "hoist.demo",
            "--steps", str(args.steps),
            "--checkpoint-every", str(args.checkpoint_every),
            "--checkpoint-mib", str(args.checkpoint_mib),
        ]  # fmt: skip
        procs.append(subprocess.Popen(argv, env=env))
    return procs


def watch(
    records: Records, run_name: str, ranks: list[subprocess.Popen[bytes]], timeout: float
) -> list[ArtifactStatus]:
    """Show artifacts and bytes verified against staged until ranks exit and uploads settle."""
    # One count column for both bars: artifacts as "3/10", bytes in binary units.
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
               TextColumn("{task.fields[detail]}"))  # fmt: skip
    deadline = time.monotonic() + timeout
    with Progress(*columns, console=console) as bar:
        artifacts_bar = bar.add_task("artifacts verified", total=None, count="", detail="")
        bytes_bar = bar.add_task("bytes verified    ", total=None, count="", detail="")
        while True:
            artifacts = records.run_artifacts(run_name)
            summary = summarize(artifacts, time.time())
            live = summary.artifacts - summary.superseded
            bar.update(
                artifacts_bar,
                total=live,
                completed=summary.done,
                count=f"{summary.done}/{live}",
                detail=f"{summary.uploading} uploading, {summary.queued} queued, "
                f"{summary.retrying} retrying, {summary.failed} failed",
            )
            bar.update(
                bytes_bar,
                total=summary.bytes_total or None,  # 0 would draw a full bar
                completed=summary.bytes_done,
                count=f"{format_bytes(summary.bytes_done)} / {format_bytes(summary.bytes_total)}",
            )
            ranks_done = all(proc.poll() is not None for proc in ranks)
            settled = all(a.state.terminal for a in artifacts)
            if (ranks_done and settled) or time.monotonic() > deadline:
                return artifacts
            time.sleep(0.2)


def print_landed(artifacts: list[ArtifactStatus]) -> None:
    """The table of what landed: the newest version of each object name the run logged."""
    table = Table(title="what landed")
    for column in ("object", "size", "crc64nvme", "verified", "pointer to"):
        table.add_column(column, overflow="fold")
    newest = {a.message.get("object_name", ""): a for a in artifacts}  # in logging order
    superseded = len(artifacts) - len(newest)
    for name in sorted(newest):
        artifact = newest[name]
        fields = artifact.fields
        target = artifact.message.get("target_object_name", "")
        verified = fields.get("verified_by", "written" if target else "")
        if artifact.state is not State.DONE:
            verified = f"[red]{artifact.state.value}[/]"
        table.add_row(
            artifact.message.get("object_name", ""),
            format_bytes(int(fields.get("size", 0) or 0)),
            fields.get("checksum", "").removeprefix("crc64nvme:"),
            verified,
            target,
        )
    table.caption = f"and {superseded} older versions of these names (log file, pointers)"
    out.print(table, highlight=False)
