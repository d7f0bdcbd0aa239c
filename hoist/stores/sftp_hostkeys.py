"""The SFTP store's host-key policy: known_hosts only, never trust on first use.

A server's host key is checked against known_hosts files and never accepted
blindly: an unknown or a changed key raises :class:`~hoist.errors.HostKeyError`
with the command that would trust it, for a person to run after checking the key.
"""

from __future__ import annotations

import os

import paramiko

from hoist.errors import ConfigurationError, HostKeyError

SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
"""Read after ``~/.ssh/known_hosts`` when no known_hosts file is given, as ``ssh`` does."""


def known_hosts_name(host: str, port: int) -> str:
    """How known_hosts and ssh-keygen name a server.

    Example:
        >>> known_hosts_name("backup.lan", 22)
        'backup.lan'
        >>> known_hosts_name("backup.lan", 2222)
        '[backup.lan]:2222'
    """
    return host if port == 22 else f"[{host}]:{port}"


def keyscan_command(host: str, port: int, known_hosts: str) -> str:
    """The shell command that appends a server's host keys to ``known_hosts``.

    Example:
        >>> keyscan_command("backup.lan", 22, "~/.ssh/known_hosts")
        'ssh-keyscan -p 22 backup.lan >> ~/.ssh/known_hosts'
    """
    return f"ssh-keyscan -p {port} {host} >> {known_hosts}"


def load_host_keys(
    client: paramiko.SSHClient, known_hosts: str | None, host: str, port: int
) -> None:
    """Load the host keys ``client`` accepts: ``known_hosts``, or the user's and the system's.

    Raises:
        ConfigurationError: ``known_hosts`` was given and does not exist.
    """
    if known_hosts is not None:
        if not os.path.isfile(known_hosts):
            raise ConfigurationError(
                f"known_hosts file {known_hosts!r} does not exist; create it with "
                f"`{keyscan_command(host, port, known_hosts)}` after checking the key"
            )
        client.load_system_host_keys(known_hosts)
        return
    client.load_system_host_keys()  # ~/.ssh/known_hosts, if there is one
    if os.path.isfile(SYSTEM_KNOWN_HOSTS):
        client.load_system_host_keys(SYSTEM_KNOWN_HOSTS)


class RejectUnknownHost(paramiko.MissingHostKeyPolicy):
    """Refuse a server whose host key is in no known_hosts file, saying how to trust it.

    Parameters:
        host: the server's name or address, as the store was given it.
        port: its SSH port.
        known_hosts: the known_hosts file the store reads, or None for the defaults.
    """

    def __init__(self, host: str, port: int, known_hosts: str | None) -> None:
        self._host = host
        self._port = port
        self._known_hosts = known_hosts

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        """Raise :class:`~hoist.errors.HostKeyError`: paramiko calls this for an unknown key."""
        source = self._known_hosts or "~/.ssh/known_hosts"
        raise HostKeyError(
            f"the host key of {self._host}:{self._port} is not in {source}, and hoist never "
            f"trusts an unknown key. It offered {key.get_name()} {key.fingerprint}. If that is "
            f"the server's key, add it with `{keyscan_command(self._host, self._port, source)}` "
            "or pass known_hosts= a file that holds it"
        )


def changed_host_key_error(exc: paramiko.BadHostKeyException, host: str, port: int) -> HostKeyError:
    """The error for a server whose key differs from the one known_hosts holds for it."""
    return HostKeyError(
        f"the host key of {host}:{port} has changed: it sent {exc.key.get_name()} "
        f"{exc.key.fingerprint}, known_hosts has {exc.expected_key.fingerprint}. This "
        "may be a man-in-the-middle attack, or the server was reinstalled. If you are sure "
        "the new key is right, remove the old one with "
        f"`ssh-keygen -R '{known_hosts_name(host, port)}'` and add "
        "the new one (or pass known_hosts= a file that holds it)"
    )
