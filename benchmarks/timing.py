"""Timing candidates against each other: alternated, repeated, with a settle step between."""

from __future__ import annotations

import time
from collections.abc import Callable

Candidate = Callable[[int], "float | None"]
"""One timed run, given the round number; it may return its own measured seconds
(when part of the call, such as starting a process, must not count), else the
harness times the whole call."""


def alternate(
    candidates: dict[str, Candidate],
    repeats: int,
    *,
    warmup: int = 0,
    between: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Run every candidate ``warmup + repeats`` times, alternating; return the timed samples.

    The order flips every round (A B C, C B A, ...) so that no candidate always
    runs right after the same other one, and drift (page cache, a noisy
    neighbour on the shared cores) hits all alike.

    Parameters:
        candidates: what to time, by name.
        repeats: timed runs per candidate.
        warmup: untimed runs per candidate first.
        between: called (untimed) before every run: clear the bucket, sync the disk.

    Returns:
        Seconds of each timed run, by candidate name.

    Example:
        >>> alternate({"hoist": upload_with_hoist, "s5cmd": upload_with_s5cmd}, 5)  # doctest: +SKIP
        {'hoist': [...], 's5cmd': [...]}
    """
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for round_ in range(warmup + repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            if between is not None:
                between()
            start = time.perf_counter()
            measured = candidates[name](round_)
            seconds = time.perf_counter() - start if measured is None else measured
            if round_ >= warmup:
                samples[name].append(seconds)
    return samples
