"""Print a results JSON as the Markdown table docs/benchmarks.md shows.

python -m benchmarks.table benchmarks/results/<date>.json
"""

from __future__ import annotations

import json
import sys


def _show(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "s":
        return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"
    return f"{value:,.4g} {unit}"


def markdown(data: dict) -> str:  # type: ignore[type-arg]
    """The figures and the targets of one run as Markdown."""
    lines = [
        "| benchmark | figure | hoist | peer | peer value | ratio (>1: hoist better) |",
        "|---|---|---|---|---|---|",
    ]
    for f in data["figures"]:
        ratio = "" if f["ratio"] is None else f"{f['ratio']:.3g}x"
        lines.append(
            f"| {f['benchmark']} | {f['name']} | {_show(f['hoist'], f['unit'])} | "
            f"{f['peer_name']} | {_show(f['peer'], f['unit'])} | {ratio} |"
        )
    lines += ["", "| target | measured | limit | |", "|---|---|---|---|"]
    for t in data["targets"]:
        sign = ">=" if t["at_least"] else "<="
        verdict = "PASS" if t["met"] else "**MISS**"
        lines.append(f"| {t['text']} | {t['value']:.4g} | {sign} {t['limit']:g} | {verdict} |")
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1]) as results:
        print(markdown(json.load(results)))
