"""Run hoist's benchmark suite: ``python -m benchmarks`` from the repository root.

Every benchmark starts its own services on loopback (a private Redis, ``rclone
serve s3``, a private sshd, real ``hoist worker`` processes), measures hoist and
its peer in the same run, alternating them, and prints one line per figure
with the ratio (above 1: hoist did better), then each target of issue 6 with
PASS or MISS. Results go to ``benchmarks/results/<date>.json`` and a chart to
``benchmarks/results/<date>.png``.

    python -m benchmarks                       # everything (under 10 minutes on 2 cores)
    python -m benchmarks --only stall,memory   # some of them
    python -m benchmarks --quick               # sizes / 16: checks the suite, not hoist
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import sys
import time
import traceback
from contextlib import ExitStack

from benchmarks.config import RunConfig
from benchmarks.files import RESULTS_DIR, bench_dir, filesystem_of
from benchmarks.report import Report
from benchmarks.services import Lab

BENCHMARKS = [
    "stall", "throughput", "small_files", "fleet", "memory", "checksum", "signing", "resume",
    "redis_cost", "redis_parser", "training_loop", "backlog",
]  # fmt: skip
"""Modules of this package, in the order they run (checksum reuses throughput's figure)."""


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the chosen benchmarks, write the JSON and the chart.

    Parameters:
        argv: command-line arguments; ``sys.argv[1:]`` when None.

    Returns:
        0, or 1 if a benchmark crashed (the others still run and are written).
    """
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per candidate (>= 5)")
    parser.add_argument(
        "--large-repeats",
        type=int,
        default=3,
        help="timed runs per candidate of 1 GiB-class transfers (default 3, to fit 10 minutes)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="sizes / 16, to check the suite itself"
    )
    parser.add_argument(
        "--pool",
        choices=["prefork", "threads"],
        default="prefork",
        help="the workers' Celery pool (hoist worker --pool); results get a -threads suffix",
    )
    parser.add_argument("--output", default=RESULTS_DIR, help="where the JSON and PNG go")
    args = parser.parse_args(argv)
    chosen = BENCHMARKS if not args.only else [b.strip() for b in args.only.split(",")]
    unknown = [b for b in chosen if b not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {BENCHMARKS}")
    if args.repeats < 5:
        parser.error("--repeats must be at least 5: a median of fewer is mostly noise")
    if args.large_repeats < 1:
        parser.error("--large-repeats must be at least 1")
    cfg = RunConfig(args.repeats, args.large_repeats, 16 if args.quick else 1)

    report = Report()
    started = time.monotonic()
    status = 0
    timings: dict[str, float] = {}
    with bench_dir() as root, ExitStack() as stack:
        lab = Lab(root, stack, pool=args.pool)
        fstype = filesystem_of(root)
        print(
            f"hoist benchmarks: {', '.join(chosen)}; files on {fstype}; {os.cpu_count()} CPUs",
            flush=True,
        )
        for name in chosen:
            began = time.monotonic()
            print(f"\n== {name}", flush=True)
            module = importlib.import_module(f"benchmarks.{name}")
            try:
                module.run(lab, report, cfg)
            except Exception:  # one crashed benchmark must not lose the others' figures
                status = 1
                traceback.print_exc()
                report.note(name, "CRASHED: " + traceback.format_exc().strip().splitlines()[-1])
            timings[name] = round(time.monotonic() - began, 1)
            print(f"== {name} took {timings[name]:.0f} s", flush=True)

    elapsed = time.monotonic() - started
    print(f"\n== targets of issue 6 ({len(report.targets)}):")
    for target in report.targets:
        print("  " + target.line())
    date = dt.date.today().isoformat()
    os.makedirs(args.output, exist_ok=True)
    suffix = ("" if not args.quick else "-quick") + ("" if args.pool == "prefork" else "-threads")
    json_path = os.path.join(args.output, f"{date}{suffix}.json")
    png_path = os.path.join(args.output, f"{date}{suffix}.png")
    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    report.write_json(
        json_path,
        {
            "date": date,
            "command": command.strip(),
            "benchmarks": chosen,
            "seconds": round(elapsed, 1),
            "seconds_by_benchmark": timings,
            "config": vars(args),
            "python": sys.version.split()[0],
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "filesystem": fstype,
        },
    )
    report.write_chart(
        png_path, f"hoist vs peers, {date}, {os.cpu_count()} CPUs ({command.strip()})"
    )
    print(
        f"\nwrote {os.path.relpath(json_path)} and {os.path.relpath(png_path)} in {elapsed:.0f} s"
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
