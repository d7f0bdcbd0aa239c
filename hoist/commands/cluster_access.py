"""How the commands that read a run find the cluster: ``<home>/env``, then the environment.

``hoist status``, ``wait``, ``retry``, ``verify`` and ``download --run`` all
start here, so "no cluster configured" and "cluster unreachable" read the same
everywhere. Nothing here prints a URL with its password.
"""

from __future__ import annotations

import argparse
import os

import redis

from hoist.errors import ConfigurationError, HoistError
from hoist.protocol.urls import mask_url
from hoist.state.records import Records
from hoist.workers.envfile import apply_env_file

NO_CLUSTER = "no hoist cluster found: run `hoist up`, or set HOIST_BROKER_URL"


class ClusterUnreachableError(HoistError):
    """The cluster is configured, but its Redis does not answer."""


def load_environment(args: argparse.Namespace) -> None:
    """Fill unset ``HOIST_*`` variables from ``<home>/env`` (``--home``), as every command does.

    Example:
        >>> load_environment(argparse.Namespace(home=".hoist"))
    """
    apply_env_file(args.home)


def broker_url_from_environment() -> str:
    """``HOIST_BROKER_URL``; raises :class:`ConfigurationError` when no cluster is configured.

    Example:
        >>> os.environ["HOIST_BROKER_URL"] = "redis://127.0.0.1:6379/0"
        >>> broker_url_from_environment()
        'redis://127.0.0.1:6379/0'
    """
    url = os.environ.get("HOIST_BROKER_URL")
    if not url:
        raise ConfigurationError(NO_CLUSTER)
    return url


def state_url_from_environment() -> str:
    """The Redis holding the records: ``HOIST_STATE_URL``, else the broker.

    Example:
        >>> state_url_from_environment()
        'redis://127.0.0.1:6379/0'
    """
    broker = broker_url_from_environment()
    return os.environ.get("HOIST_STATE_URL") or broker


def connect(url: str) -> Records:
    """:class:`Records` on ``url``, checked with a ping so a dead Redis fails here, clearly.

    Example:
        >>> connect("redis://127.0.0.1:6379/0").runs(limit=5)
        ['bert-3']
    """
    records = Records.from_url(url)
    try:
        records.client.ping()
    except redis.RedisError as exc:
        raise ClusterUnreachableError(
            f"the hoist cluster's Redis at {mask_url(url)} does not answer ({exc}); start it "
            "with `hoist up`, or point HOIST_BROKER_URL at a running one"
        ) from None
    return records


def records_for(args: argparse.Namespace) -> Records:
    """The records of the cluster that ``--home``'s env file or the environment names.

    Parameters:
        args: the parsed command line; ``args.home`` locates ``<home>/env``.

    Example:
        >>> records_for(argparse.Namespace(home=".hoist")).runs()
        ['bert-3']
    """
    load_environment(args)
    return connect(state_url_from_environment())
