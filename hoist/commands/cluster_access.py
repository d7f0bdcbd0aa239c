"""How the commands that read a run find the cluster: ``<home>/env``, then the environment.

``<home>`` is ``--home``, else ``HOIST_HOME``, else the nearest ``.hoist``
holding an ``env`` file in the current directory or one above it
(:func:`find_home`), so a command run from ``project/src`` finds the
cluster ``hoist up`` started in ``project``, and ``hoist up`` there reuses it
rather than starting a second one whose ports clash with the first.

``hoist status``, ``wait``, ``retry``, ``verify`` and ``download --run`` all
start here; connecting (and its "cluster unreachable" sentence) is
:func:`hoist.state.connection.connect`, shared with the library API.
Nothing here prints a URL with its password.
"""

from __future__ import annotations

import argparse
import os

from hoist import settings
from hoist.errors import ConfigurationError
from hoist.state.connection import NO_CLUSTER, connect
from hoist.state.records import Records
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


def broker_url_from_environment() -> str:
    """``HOIST_BROKER_URL``; raises :class:`ConfigurationError` when no cluster is configured.

    Example:
        >>> broker_url_from_environment()  # with HOIST_BROKER_URL set  # doctest: +SKIP
        'redis://127.0.0.1:6379/0'
    """
    url = settings.CommandSettings.from_environment().broker_url
    if not url:
        raise ConfigurationError(NO_CLUSTER)
    return url


def state_url_from_environment() -> str:
    """The Redis holding the records: ``HOIST_STATE_URL``, else the broker.

    Example:
        >>> state_url_from_environment()  # with HOIST_BROKER_URL set  # doctest: +SKIP
        'redis://127.0.0.1:6379/0'
    """
    broker = broker_url_from_environment()
    return settings.CommandSettings.from_environment().state_url or broker


def records_for(args: argparse.Namespace) -> Records:
    """The records of the cluster that ``--home``'s env file or the environment names.

    Parameters:
        args: the parsed command line; ``args.home`` locates ``<home>/env``.

    Example:
        >>> records_for(argparse.Namespace(home=".hoist")).runs()  # doctest: +SKIP
        ['bert-3']
    """
    load_environment(args)
    if not settings.CommandSettings.from_environment().broker_url:
        raise ConfigurationError(no_cluster_message(args))
    chosen = settings.CommandSettings.from_environment()
    return connect(state_url_from_environment(), chosen.retention_seconds, chosen.sentinel)
