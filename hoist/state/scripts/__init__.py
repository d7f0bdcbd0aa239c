"""The state store's Lua scripts: one ``.lua`` file each, read once, registered on a client.

Each file opens with a comment listing its ``KEYS`` and ``ARGV`` (meaning and
unit) and what it returns. Redis runs a script atomically, which is why each
decision that reads and then writes (claim, settle, take due entries, raise a
marker, take leases) is one.

Two things are put in front of a script's text when it is read:

- ``TERMINAL``, a Lua table of the finished states, built from
  :data:`hoist.state.states.TERMINAL_STATES` (so that list exists once);
- ``raise_marker``, a function shared by two scripts
  (``raise_marker_function.lua``);
- ``count_outcome``, the fleet's counting, kept in a file of its own
  (``count_outcome_function.lua``) in front of ``settle.lua``.
"""

from __future__ import annotations

import functools
from importlib import resources

import redis
from redis.commands.core import Script

from hoist.state.states import TERMINAL_STATES

_TERMINAL = "TERMINAL"
_RAISE_MARKER = "raise_marker_function"
_COUNT_OUTCOME = "count_outcome_function"

# What each script needs in front of its own text.
_PRELUDES: dict[str, tuple[str, ...]] = {
    "claim": (_TERMINAL,),
    "create": (_RAISE_MARKER,),
    "raise_marker": (_RAISE_MARKER,),
    "settle": (_COUNT_OUTCOME,),
}

NAMES = (
    "acquire_leases",
    "claim",
    "create",
    "drop_mark",
    "fail_queued",
    "raise_marker",
    "recheck_queued",
    "register_shards",
    "renew_claim",
    "renew_lease",
    "reset_failed",
    "settle",
    "states",
    "take_due",
    "throttle_down",
    "throttle_up",
    "withdraw",
)
"""Every script, by the name of its file without ``.lua``."""


def terminal_table() -> str:
    """The Lua table of finished states that a script sees as ``TERMINAL``.

    Example:
        >>> print(terminal_table())
        local TERMINAL = {['done'] = true, ['failed'] = true, ['superseded'] = true}
    """
    entries = ", ".join(f"['{state.value}'] = true" for state in TERMINAL_STATES)
    return f"local TERMINAL = {{{entries}}}"


def _file(name: str) -> str:
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


@functools.cache
def source(name: str) -> str:
    """The text Redis runs for script ``name``: its preludes, then its file.

    Read from the package once per process.

    Raises:
        KeyError: no script of that name.
    """
    if name not in NAMES:
        raise KeyError(f"no state script named {name!r}; there are {', '.join(NAMES)}")
    parts = [
        terminal_table() if prelude == _TERMINAL else _file(prelude)
        for prelude in _PRELUDES.get(name, ())
    ]
    return "\n".join([*parts, _file(name)])


def register(client: redis.Redis, name: str) -> Script:
    """Script ``name`` registered on ``client``: calling it runs EVALSHA (EVAL the first time)."""
    return client.register_script(source(name))
