"""What a benchmark reports: figures (hoist against a peer), targets, the JSON and the chart."""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.files import fmt_seconds


@dataclass
class Target:
    """A target of issue 6, checked against a measured value.

    Parameters:
        text: the target as the issue states it.
        value: the measured value it is checked against (a ratio, seconds, MiB, ...).
        limit: the threshold.
        at_least: True if ``value`` must be at least ``limit``, False if at most.
    """

    text: str
    value: float
    limit: float
    at_least: bool

    @property
    def met(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    def line(self) -> str:
        sign = ">=" if self.at_least else "<="
        verdict = "PASS" if self.met else "MISS"
        return f"{verdict}  {self.text}: measured {self.value:.4g} (target {sign} {self.limit:g})"


@dataclass
class Figure:
    """One measured figure: hoist's median against its peer's, in the same run.

    Parameters:
        benchmark: which benchmark (``stall``, ``throughput``, ...).
        name: what was measured (``1 GiB end to end, S3``).
        unit: ``s`` for durations (lower is better), anything else for rates
            or sizes; ``higher_is_better`` says which way is good.
        hoist: hoist's median.
        peer: the peer's median, or None for a figure without a peer.
        peer_name: what the peer is (``s5cmd cp``).
        higher_is_better: True for rates.
        samples: every sample by candidate, for the JSON.
        note: anything a reader needs (verification mode, repeats).
    """

    benchmark: str
    name: str
    unit: str
    hoist: float
    peer: float | None = None
    peer_name: str = ""
    higher_is_better: bool = False
    samples: dict[str, list[float]] = field(default_factory=dict)
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """How many times better hoist did than the peer (above 1: hoist is better)."""
        if self.peer is None or self.peer == 0 or self.hoist == 0:
            return None
        return self.hoist / self.peer if self.higher_is_better else self.peer / self.hoist

    def line(self) -> str:
        def show(value: float) -> str:
            return fmt_seconds(value) if self.unit == "s" else f"{value:,.4g} {self.unit}"

        text = f"[{self.benchmark}] {self.name}: hoist {show(self.hoist)}"
        if self.peer is not None:
            text += f", {self.peer_name} {show(self.peer)}, ratio {self.ratio:.3g}x"
        if self.note:
            text += f"  ({self.note})"
        return text

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def median(samples: list[float]) -> float:
    if not samples:
        raise ValueError("no samples to take a median of")
    return statistics.median(samples)


@dataclass
class Report:
    """Everything one run of the suite measured."""

    figures: list[Figure] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        print(figure.line(), flush=True)
        return figure

    def target(self, target: Target) -> None:
        self.targets.append(target)
        print("    " + target.line(), flush=True)

    def note(self, benchmark: str, text: str) -> None:
        self.notes.append(f"[{benchmark}] {text}")
        print(f"[{benchmark}] note: {text}", flush=True)

    def write_json(self, path: str, meta: dict[str, Any]) -> None:
        data = {
            **meta,
            "figures": [f.to_json() for f in self.figures],
            "targets": [{**asdict(t), "met": t.met} for t in self.targets],
            "notes": self.notes,
            "details": self.details,
        }
        with open(path, "w") as out:
            json.dump(data, out, indent=2)
            out.write("\n")

    def write_chart(self, path: str, title: str) -> None:
        """One horizontal bar per figure with a peer: hoist's ratio against it, log scale."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [f for f in self.figures if f.ratio is not None]
        if not rows:
            return
        height = max(3.0, 0.32 * len(rows) + 1.2)
        fig, ax = plt.subplots(figsize=(10, height))
        labels = [f"{f.name} vs {f.peer_name}" for f in rows]
        ratios = [f.ratio or 0.0 for f in rows]
        colors = ["tab:green" if r >= 1 else "tab:orange" for r in ratios]
        ax.barh(range(len(rows)), ratios, color=colors)
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xlabel("hoist relative to the peer (>1: hoist faster / better), log scale")
        ax.set_title(title, fontsize=9)
        for y, ratio in enumerate(ratios):
            ax.text(ratio, y, f" {ratio:.3g}x", va="center", fontsize=6)
        fig.tight_layout()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
