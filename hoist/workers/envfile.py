"""The file that tells every command where the local cluster is: ``<home>/env``.

``hoist up`` writes it (mode 0600: it holds the Redis password and the fleet
key); ``hoist demo``, ``status``, ``wait``, ``retry``, ``verify``,
``download`` and a user's training script (``set -a; . .hoist/env``) read it.
Variables already set in the environment win over the file, so a cluster
elsewhere is chosen by exporting ``HOIST_BROKER_URL``.

The format is ``NAME=value`` lines, shell-quoted, readable by ``sh``.

The workers of ``hoist up`` inherit the caller's environment, their store
credentials included. So that a later ``hoist up`` can say when the caller's
credentials are no longer those (:func:`changed_variables`), the cluster
keeps a fingerprint of each of :data:`CREDENTIAL_VARIABLES`
(:func:`fingerprints`), never a value: HMAC-SHA256 under a random salt of
that start. A fingerprint cannot be turned back into a key or a token; a
short value (a region, a profile name) could be guessed from it by whoever
reads the cluster's state, and those are no secrets.
"""

from __future__ import annotations

import hashlib
import hmac
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


CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
)
"""The variables whose change a running cluster's workers would not see."""


def fingerprints(environ: Mapping[str, str], salt: str) -> dict[str, str]:
    """A keyed hash of each of :data:`CREDENTIAL_VARIABLES` set in ``environ``.

    Example:
        >>> prints = fingerprints({"AWS_PROFILE": "ml", "HOME": "/root"}, salt="0f")
        >>> list(prints), len(prints["AWS_PROFILE"])
        (['AWS_PROFILE'], 64)
    """
    return {
        name: hmac.new(salt.encode(), environ[name].encode(), hashlib.sha256).hexdigest()
        for name in CREDENTIAL_VARIABLES
        if name in environ
    }


def changed_variables(
    recorded: Mapping[str, str], environ: Mapping[str, str], salt: str
) -> list[str]:
    """The credential variables set, unset or changed in ``environ`` since ``recorded`` was taken.

    Example:
        >>> then = fingerprints({"AWS_PROFILE": "ml"}, salt="0f")
        >>> changed_variables(then, {"AWS_PROFILE": "prod", "AWS_REGION": "eu-west-1"}, "0f")
        ['AWS_PROFILE', 'AWS_REGION']
    """
    now = fingerprints(environ, salt)
    return [
        name
        for name in CREDENTIAL_VARIABLES
        # compare_digest: how long a comparison takes says nothing about a fingerprint.
        if not hmac.compare_digest(recorded.get(name, ""), now.get(name, ""))
    ]
