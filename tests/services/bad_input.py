"""Hostile inputs shared by the bad-input tests: hypothesis strategies and a tally.

The strategies aim at the places names turn into paths and keys: ``..`` and
``.`` segments, absolute paths, NUL and other control characters, lone
surrogates (a ``str`` that is not UTF-8), names longer than a filesystem
allows, and format-string tricks in ``object_name`` templates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

from hoist.protocol.naming import OBJECT_NAME_FIELDS

TRICKY_SEGMENTS = [
    "..",
    ".",
    "",
    "...",
    "~",
    "$HOME",
    "%2e%2e",
    "..\\..",
    "\0",
    "a\0b",
    "\ud800",
    "\udcff",
    "\n",
    "\t",
    "\x7f",
    "é",
    "日本語",
    "🤖",
    "\u202e",
    "{rank}",
    "{0}",
    "{}",
    "{",
    "}",
    "x" * 300,
    "é" * 200,
]
"""Path segments that have broken path handling somewhere."""

segment = st.one_of(
    st.sampled_from(TRICKY_SEGMENTS),
    st.text(min_size=0, max_size=12),
    st.text(alphabet="./\\\0{}", max_size=6),
)

# Unicode segments that are plausible names (no surrogate, '/' or NUL), so that
# many examples are accepted and their landing place gets checked too.
plain_segment = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="/\0"),
    min_size=1,
    max_size=16,
)

names = st.one_of(
    st.lists(plain_segment, min_size=1, max_size=4).map("/".join),
    st.lists(segment, min_size=1, max_size=6).map("/".join),
    st.lists(segment, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts)),
    st.text(max_size=40),
    st.text(min_size=250, max_size=600),
)
"""Artifact names, run names, object names and relative paths."""

run_names = st.one_of(plain_segment, segment, names)
"""Run names: one path segment more often than not, so that many examples get past it."""

FIELD_NAMES = [
    *OBJECT_NAME_FIELDS,
    "rank.__class__",
    "rank.__class__.__mro__",
    "artifact_name[0]",
    "0",
    "",
    "1",
    "__import__",
    "artifact_name!r",
    "os",
]
FORMAT_SPECS = [
    "",
    ":>{world_size}",
    ":03d",
    ":s",
    ":x",
    ":>10",
    ":{rank}",
    ":{{",
    ":}",
    "!r",
    "!s",
]
TRICKY_TEMPLATES = [
    "{rank.__class__}/{artifact_name}",
    "{0}/{artifact_name}",
    "{}/{artifact_name}",
    "{rank!r:>{world_size}}/{artifact_name}",
    "{artifact_name",
    "artifact_name}",
    "{artifact_name}}",
    "{{artifact_name}",
    "{artifact_name:{rank.__class__}}",
    "{artifact_name[0]}",
    "{artifact_name!x}",
    "{artifact_name:%s}",
    "/../{artifact_name}",
    "{run_name}/../{artifact_name}",
    "../{artifact_name}",
    "{artifact_name}/..",
    "/{artifact_name}",
    "\0{artifact_name}",
    "{artifact_name:{artifact_name}}",
    "{artifact_name:>{rank}}",
    "{artifact_name:.0}",
    "{rank:0{world_size}d}-{artifact_name}",
]

template_piece = st.one_of(
    st.builds(
        lambda field_name, spec: "{" + field_name + spec + "}",
        st.sampled_from(FIELD_NAMES),
        st.sampled_from(FORMAT_SPECS),
    ),
    st.sampled_from(["/", "..", ".", "{", "}", "{{", "}}", "\0", "prefix", "é"]),
    st.text(max_size=5),
)
templates = st.one_of(
    st.sampled_from(TRICKY_TEMPLATES),
    st.lists(template_piece, min_size=1, max_size=6).map("".join),
)
"""``object_name`` templates: valid ones, broken ones, and format-string attacks."""


@dataclass
class Tally:
    """How many bad inputs a test module tried: hypothesis examples and explicit cases.

    Parameters:
        counts: tried inputs per kind.
    """

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, n: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def report(self) -> str:
        parts = ", ".join(f"{kind}: {n}" for kind, n in sorted(self.counts.items()))
        return f"bad inputs tried: {self.total} ({parts})"
