"""How much a run of the suite does: repeats and file sizes, full or quick."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.files import GIB, MIB


@dataclass(frozen=True)
class RunConfig:
    """Repeats and sizes for one run.

    Parameters:
        repeats: timed runs per candidate (the median is reported); at least 5.
        large_repeats: timed runs per candidate for 1 GiB-class transfers
            (1 GiB, 8 x 256 MiB), fewer only so that the suite fits its
            10-minute budget on 2 cores; the output says when it is below 5.
        scale: sizes are divided by this (``--quick`` uses 16 to check the
            suite itself in a minute; its figures mean nothing).
    """

    repeats: int = 5
    large_repeats: int = 3
    scale: int = 1

    def size(self, nominal: int) -> int:
        """``nominal`` bytes divided by the scale, but never below 1 MiB for large ones."""
        if self.scale == 1 or nominal < 16 * MIB:
            return nominal
        return max(MIB, nominal // self.scale)

    def count(self, nominal: int) -> int:
        return max(8, nominal // self.scale)

    @property
    def gib(self) -> int:
        return self.size(GIB)

    def repeats_note(self, repeats: int) -> str:
        return (
            f"median of {repeats}"
            + ("" if repeats >= 5 else " (fewer than 5 to fit the 10-minute budget)")
            + ("" if self.scale == 1 else f"; QUICK RUN, sizes / {self.scale}")
        )
