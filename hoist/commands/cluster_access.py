"""How the commands that read a run reach the cluster's records.

``<home>/env`` is found and read first (:mod:`hoist.commands.home`), then the
environment. ``hoist status``, ``wait``, ``retry``, ``verify`` and ``download --run`` all
start here; connecting (and its "cluster unreachable" sentence) is
:func:`hoist.state.connection.connect`, shared with the library API.
Nothing here prints a URL with its password.
"""

from __future__ import annotations

import argparse

from hoist import settings
from hoist.commands.home import load_environment, no_cluster_message
from hoist.errors import ConfigurationError
from hoist.state.connection import NO_CLUSTER, connect
from hoist.state.records import Records


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
