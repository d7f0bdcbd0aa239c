"""Where the embedded cluster's files are: ``--home``, ``HOIST_HOME``, or the nearest ``.hoist``.

``<home>`` is ``--home``, else ``HOIST_HOME``, else the nearest ``.hoist``
holding an ``env`` file in the current directory or one above it
(:func:`find_home`), so a command run from ``project/src`` finds the
cluster ``hoist up`` started in ``project``, and ``hoist up`` there reuses it
rather than starting a second one whose ports clash with the first.

Apart from :mod:`hoist.commands.cluster_access`, which connects to the records:
every command starts here, and a download by URI never imports redis.
"""

from __future__ import annotations

import argparse
import os

from hoist.workers.envfile import apply_env_file, env_path

DEFAULT_HOME = ".hoist"
"""The embedded cluster's folder when neither ``--home`` nor ``HOIST_HOME`` names one."""


def find_home(start: str) -> str | None:
    """The nearest ``.hoist`` holding an ``env`` file in ``start`` or a directory above it.

    Returns None when there is none up to the filesystem's root. The path is
    returned as found (absolute when ``start`` is), so messages name it.

    Example:
        >>> find_home("/")  # no /.hoist/env here
    """
    here = os.path.abspath(start)
    while True:
        candidate = os.path.join(here, DEFAULT_HOME)
        if os.path.isfile(env_path(candidate)):
            return candidate
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def no_cluster_message(args: argparse.Namespace) -> str:
    """NO_CLUSTER's sentence, saying where this command looked.

    When the home was found or defaulted, the advice never says "run `hoist up`"
    alone: a cluster may be running from another directory, and a second one
    started here would clash with its ports.

    Example:
        >>> args = argparse.Namespace(home="/x/.hoist", home_given=True)
        >>> no_cluster_message(args).splitlines()[0]
        'no hoist cluster found: /x/.hoist/env does not exist and HOIST_BROKER_URL is not set'
    """
    home = args.home
    if getattr(args, "home_given", True):
        return (
            f"no hoist cluster found: {env_path(home)} does not exist and HOIST_BROKER_URL is "
            "not set\npass the --home a running cluster was started with, or start one with "
            f"`hoist --home {home} up --detach`, or set HOIST_BROKER_URL"
        )
    return (
        f"no hoist cluster found: no {DEFAULT_HOME}/env in {os.getcwd()} or any directory "
        "above it, and neither --home, HOIST_HOME nor HOIST_BROKER_URL is set\n"
        "if a cluster is running from another directory, run this command below that one "
        f"or pass --home DIR/{DEFAULT_HOME} (or export HOIST_HOME); otherwise start one in "
        "the project's top directory with `hoist up --detach`"
    )


def load_environment(args: argparse.Namespace) -> None:
    """Fill unset ``HOIST_*`` variables from ``<home>/env`` (``--home``), as every command does.

    Example:
        >>> load_environment(argparse.Namespace(home=".hoist"))  # doctest: +SKIP
    """
    apply_env_file(args.home)
