"""The file that tells every command where the local cluster is: ``<home>/env``.

``hoist up`` writes it (mode 0600: it holds the Redis password and the fleet
key); ``hoist demo``, ``status``, ``wait``, ``retry``, ``verify``,
``download`` and a user's training script (``set -a; . .hoist/env``) read it.
Variables already set in the environment win over the file, so a cluster
elsewhere is chosen by exporting ``HOIST_BROKER_URL``.

The format is ``NAME=value`` lines, shell-quoted, readable by ``sh``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping

ENV_FILE = "env"


def env_path(home: str) -> str:
    """``<home>/env``.

    Example:
        >>> env_path(".hoist")
        '.hoist/env'
    """
    return os.path.join(home, ENV_FILE)


def source_line(home: str) -> str:
    """The shell line that exports the variables of ``<home>/env``.

    Example:
        >>> source_line(".hoist")
        'set -a; . ./.hoist/env; set +a'
    """
    path = env_path(home)
    # `.` looks a name without a slash up on PATH, not in the current directory.
    if not os.path.isabs(path) and not path.startswith(("./", "../")):
        path = f"./{path}"
    return f"set -a; . {path}; set +a"


def write_env_file(home: str, values: Mapping[str, str]) -> str:
    """Write ``values`` to ``<home>/env`` atomically, readable by the owner only."""
    os.makedirs(home, exist_ok=True)
    path = env_path(home)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"# written by `hoist up`; source it with: set -a; . {path}; set +a\n")
        for name, value in values.items():
            f.write(f"{name}={shlex.quote(value)}\n")
    os.replace(tmp, path)
    return path


def read_env_file(home: str) -> dict[str, str]:
    """The variables in ``<home>/env``, or an empty dict when there is none."""
    try:
        with open(env_path(home)) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    values: dict[str, str] = {}
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#") or "=" not in line:
            continue
        name, _, raw = line.partition("=")
        parts = shlex.split(raw)
        values[name.strip()] = parts[0] if parts else ""
    return values


def apply_env_file(home: str) -> bool:
    """Fill unset ``HOIST_*`` variables from ``<home>/env``; True if the file exists."""
    values = read_env_file(home)
    for name, value in values.items():
        os.environ.setdefault(name, value)
    return bool(values)
