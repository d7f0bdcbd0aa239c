"""boto3's sessions, one per profile and process, and the credentials an S3 store signs with.

A client from a fresh session took 50-250 ms (S3's service model loads once
per session), so every store of a process shares one session per profile.
The credentials awscrt signs with are found as boto3's client would find
them, without building one: a download through awscrt never needs the
client, which cost 0.11 s of a ``hoist download``'s 0.32 s start-up.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import boto3
from botocore.credentials import Credentials

from hoist.errors import ConfigurationError

SESSIONS: dict[str | None, boto3.session.Session] = {}
SESSIONS_LOCK = threading.Lock()
"""Held to make a session's client or read its credentials: boto3 sessions are not
thread-safe."""
# A worker's main process makes S3 calls too (the resender's prunes) while
# Celery forks pool children: a child must not inherit the lock held.
os.register_at_fork(after_in_child=SESSIONS_LOCK._at_fork_reinit)  # type: ignore[attr-defined]


def session(profile_name: str | None) -> boto3.session.Session:
    """The process's session of ``profile_name``. Call with :data:`SESSIONS_LOCK` held."""
    if profile_name not in SESSIONS:
        SESSIONS[profile_name] = boto3.session.Session(profile_name=profile_name)
    return SESSIONS[profile_name]


def credentials_of(
    profile_name: str | None,
    access_key: str | None,
    secret_key: str | None,
    token: str | None,
) -> Callable[[], Credentials | None]:
    """What a boto3 client made with these arguments signs with, read at each call.

    The keys given, else the profile's chain (environment, files, instance
    metadata), refreshed as boto3 refreshes it; None while there are none.

    Example:
        >>> credentials_of(None, "AKIA", "secret", None)().access_key
        'AKIA'
    """
    if (access_key is None) != (secret_key is None):
        raise ConfigurationError(
            "give both aws_access_key_id and aws_secret_access_key, or neither"
        )
    if access_key is not None and secret_key is not None:
        given = Credentials(access_key, secret_key, token)
        return lambda: given

    def from_chain() -> Credentials | None:
        with SESSIONS_LOCK:
            return session(profile_name).get_credentials()

    return from_chain
