"""How the SFTP store tells paramiko's failures apart: a lost connection, a full disk, a refusal.

paramiko raises the SFTP status "Failure" as a bare OSError and a dropped
connection as several kinds of exception; these predicates are what
:class:`~hoist.stores.sftp.SFTPObjectStore` translates them by.
"""

from __future__ import annotations

import errno
import socket

import paramiko
from paramiko.ssh_exception import NoValidConnectionsError

CONNECTION_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.ETIMEDOUT,
    errno.EPIPE,
}
FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def is_sftp_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the SFTP status "Failure", which paramiko raises as a bare OSError."""
    return type(exc) is OSError and exc.errno is None


def is_connection_failure(exc: BaseException) -> bool:
    if isinstance(exc, (EOFError, socket.timeout, NoValidConnectionsError, socket.gaierror)):
        return True
    if isinstance(exc, paramiko.SSHException):  # "Server connection dropped", a closed channel…
        return True
    return isinstance(exc, OSError) and exc.errno in CONNECTION_ERRNOS
