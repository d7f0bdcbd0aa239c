"""A logger's retention settings: how many of a pointer's targets the store keeps.

The rules and the prune itself run on the workers (:mod:`hoist.state.retention`);
the rank only checks the numbers in the caller and puts them in the signed
pointer and commit messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from hoist.protocol.messages import check_keep


class KeepFields(TypedDict):
    """A pointer's or commit's retention fields, as its message carries them."""

    keep_last: int
    keep_every: int


@dataclass(frozen=True)
class KeepRule:
    """The logger's default ``keep_last`` (None: keep every target).

    Example:
        >>> KeepRule.of(3).fields(None, 10)
        {'keep_last': 3, 'keep_every': 10}
    """

    keep_last: int = 0

    @classmethod
    def of(cls, keep_last: int | None) -> KeepRule:
        """The rule, its number checked (:func:`~hoist.protocol.messages.check_keep`)."""
        return cls(check_keep("keep_last", keep_last))

    def fields(self, keep_last: int | None, keep_every: int | None) -> KeepFields:
        """A message's retention fields: a call's own ``keep_last`` wins over the default."""
        last = check_keep("keep_last", keep_last) or self.keep_last
        return {"keep_last": last, "keep_every": check_keep("keep_every", keep_every)}
