"""``hoist flower``: Flower for the hoist app, with authentication and no secrets on show.

What Flower 2.2 does, read from its source (``flower/command.py``,
``flower/views``), and what hoist does about it:

- Every option can come from a ``FLOWER_<NAME>`` environment variable, and
  ``--basic-auth`` is a list split on commas. hoist hands the credentials
  over as ``FLOWER_BASIC_AUTH`` in Flower's environment, so they never
  appear on a command line that ``ps`` shows to every user of the machine.
- Flower's own ``--address`` default is every interface; hoist's is
  127.0.0.1, and hoist refuses to listen beyond loopback without
  authentication (basic auth, or Flower's OAuth ``FLOWER_AUTH``).
- The broker page and the start-up banner show the broker URL through
  kombu's ``as_uri()``, which masks the password (``redis://:**@host``);
  worker stats drop it too. Task arguments are what the sender's
  ``kwargsrepr`` says: :meth:`hoist.protocol.messages.Message.summary`.
- The tasks page shows each task's arguments, shortest first (artifact,
  size, run, rank; :meth:`~hoist.protocol.messages.Message.summary`), and
  its result (:mod:`hoist.workers.flower_config`). Flower builds both from
  the workers' events alone, so the workers say what to show
  (:class:`hoist.tasks.delivery.Shown`): an upload in flight is
  ``PROGRESS`` with ``uploading: X of Y (Z%)`` (``task-progress`` events,
  :mod:`hoist.tasks.progress`); a failed artifact ``FAILURE`` with its error
  in the Result column; one waiting (a limit, a pointer's target) or
  retrying after a transient error Celery's ``RETRY``, saying what for and
  when it is sent again; one a newer version overtook ``SUPERSEDED``. The
  texts are the records' errors, which never hold a secret.
- ``/metrics`` (Prometheus) and ``/healthcheck`` answer without
  authentication by Flower's design; they carry task names and counts,
  not arguments.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping, MutableMapping

from hoist.errors import ConfigurationError
from hoist.settings import WorkerSettings
from hoist.tasks.app import worker_app

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 5555
USER_ENV = "HOIST_FLOWER_USER"
PASSWORD_ENV = "HOIST_FLOWER_PASSWORD"
FLOWER_BASIC_AUTH_ENV = "FLOWER_BASIC_AUTH"
FLOWER_OAUTH_ENV = "FLOWER_AUTH"
TASKS_COLUMNS = "name,uuid,state,kwargs,result,received,runtime,worker"
CONFIG_FILE = os.path.join(os.path.dirname(__file__), "flower_config.py")


def is_loopback(address: str) -> bool:
    """Whether ``address`` is reachable from this machine only.

    Parameters:
        address: an IP address or host name, as given to ``--address``.
            The empty string is Flower's "every interface".

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
        (True, True, False)
    """
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to anything


def basic_auth_from(
    option: str | None,
    user: str | None,
    password: str | None,
    environ: Mapping[str, str],
) -> str | None:
    """The ``USER:PASS[,USER:PASS…]`` Flower should require, or None.

    First match wins: the ``--basic-auth`` option, then
    ``HOIST_FLOWER_USER`` with ``HOIST_FLOWER_PASSWORD`` (what ``hoist up``
    writes to ``<home>/env``), then Flower's own ``FLOWER_BASIC_AUTH``.

    Parameters:
        option: the value of ``--basic-auth``, if given.
        user, password: ``HOIST_FLOWER_USER`` and ``HOIST_FLOWER_PASSWORD``
            (:class:`hoist.settings.CommandSettings`), if set.
        environ: Flower's own environment (``FLOWER_BASIC_AUTH``).

    Example:
        >>> basic_auth_from(None, "hoist", "pw", {})
        'hoist:pw'
        >>> basic_auth_from(None, None, None, {"FLOWER_BASIC_AUTH": "ops:secret"})
        'ops:secret'
    """
    if option:
        return _checked(option, "--basic-auth")
    if user and password:
        return _checked(f"{user}:{password}", f"{USER_ENV}/{PASSWORD_ENV}")
    if user or password:
        raise ConfigurationError(
            f"set both {USER_ENV} and {PASSWORD_ENV} for Flower's basic authentication, or neither"
        )
    existing = environ.get(FLOWER_BASIC_AUTH_ENV)
    return _checked(existing, FLOWER_BASIC_AUTH_ENV) if existing else None


def _checked(credentials: str, source: str) -> str:
    # Flower splits the list on commas and compares each entry with the
    # decoded "user:password" of the request, so a comma cannot be in a password.
    for entry in credentials.split(","):
        user, sep, password = entry.partition(":")
        if not (user and sep and password):
            raise ConfigurationError(
                f"{source} must be USER:PASSWORD (several separated by commas, none of them "
                "containing a comma)"
            )
    return credentials


def check_exposure(address: str, basic_auth: str | None, environ: Mapping[str, str]) -> None:
    """Refuse to serve Flower beyond loopback without authentication.

    Flower can revoke tasks and shut workers down, and shows what every run
    is uploading, so it is never open to the network.

    Parameters:
        address: where Flower will listen.
        basic_auth: the basic-auth credentials, if any.
        environ: read for ``FLOWER_AUTH`` (Flower's OAuth e-mail pattern),
            which counts as authentication too.

    Raises:
        ConfigurationError: ``address`` is not loopback and nothing authenticates.

    Example:
        >>> check_exposure("127.0.0.1", None, {})  # fine: this machine only
    """
    if is_loopback(address) or basic_auth or environ.get(FLOWER_OAUTH_ENV):
        return
    raise ConfigurationError(
        f"Flower would listen on {address or 'every interface'} without authentication; set "
        f"{USER_ENV} and {PASSWORD_ENV} (or pass --basic-auth USER:PASSWORD), or keep "
        f"--address {DEFAULT_ADDRESS}"
    )


def flower_argv(address: str, port: int, url_prefix: str | None = None) -> list[str]:
    """The ``celery flower`` arguments, without credentials.

    Example:
        >>> flower_argv("127.0.0.1", 5555)[2:]
        ['--address=127.0.0.1', '--port=5555']
    """
    argv = ["flower", f"--conf={CONFIG_FILE}", f"--address={address}", f"--port={port}"]
    if url_prefix:
        argv.append(f"--url_prefix={url_prefix.strip('/')}")
    return argv


def prepare_environment(
    address: str,
    basic_auth_option: str | None,
    login: tuple[str | None, str | None],
    environ: MutableMapping[str, str],
) -> str | None:
    """Check the exposure rule and put the credentials where Flower reads them.

    Returns the basic-auth credentials in force, or None.
    """
    basic_auth = basic_auth_from(basic_auth_option, *login, environ)
    check_exposure(address, basic_auth, environ)
    if basic_auth:
        environ[FLOWER_BASIC_AUTH_ENV] = basic_auth
    return basic_auth


PLAIN_HTTP_NOTE = (
    "[yellow]note:[/] basic auth over plain HTTP; put Flower behind TLS "
    "(FLOWER_CERTFILE/FLOWER_KEYFILE or a reverse proxy) beyond a trusted network"
)
"""Said before Flower serves beyond loopback (rich markup: the CLI prints it)."""


def run_flower(
    settings: WorkerSettings,
    address: str,
    port: int,
    *,
    basic_auth: str | None = None,
    login: tuple[str | None, str | None] = (None, None),
    url_prefix: str | None = None,
    environ: MutableMapping[str, str] | None = None,
    note: Callable[[str], None] = print,
) -> int:
    """Run Flower in this process until it is stopped; returns its exit code.

    Parameters:
        settings: the broker and Celery settings, resolved by the caller
            (``hoist flower`` reads them from ``--broker-url`` and the environment).
        address, port, url_prefix: where Flower serves.
        basic_auth: the ``--basic-auth`` option, if given (see :func:`basic_auth_from`).
        login: ``HOIST_FLOWER_USER`` and ``HOIST_FLOWER_PASSWORD``, if set.
        environ: where Flower reads its ``FLOWER_*`` options (default: this
            process's environment, the only place Flower looks).
        note: how to tell the user something worth knowing; the fleet side
            does not print, so the CLI passes its console.

    Raises:
        ConfigurationError: the credentials are malformed, or Flower would be
            exposed without authentication.
    """
    prepare_environment(address, basic_auth, login, os.environ if environ is None else environ)
    if not is_loopback(address):
        note(PLAIN_HTTP_NOTE)
    # The workers' app, for its task names (Flower's banner and its task API);
    # Flower starts no worker, so its handlers never run here.
    app = worker_app(settings)
    return int(app.start(flower_argv(address, port, url_prefix)) or 0)
