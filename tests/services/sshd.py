"""A private OpenSSH ``sshd`` on loopback serving SFTP from ``internal-sftp``.

It has its own host key, user key and ``authorized_keys`` under ``workdir`` and
listens on two free ports: ``port`` for ordinary SFTP and ``read_only_port``,
where ``internal-sftp -R`` refuses every write. The tests run as root, and root
ignores file permissions, so the read-only port is how a real "permission
denied" answer is produced.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests.services.process import ServerProcess, descendants, free_port, port_open

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself, so it must be started by absolute path
PRIVSEP_DIR = Path("/run/sshd")  # Debian's sshd refuses to start without it


def generate_key(path: Path) -> str:
    """Write a fresh ed25519 key pair (no passphrase) at ``path`` and ``path.pub``.

    Returns the public key line (``ssh-ed25519 AAAA…``) without its comment.
    """
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise RuntimeError("ssh-keygen is missing: install openssh-client")
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    subprocess.run(
        [keygen, "-q", "-t", "ed25519", "-N", "", "-C", "hoist-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    key_type, key_data, *_ = path.with_name(path.name + ".pub").read_text().split()
    return f"{key_type} {key_data}"


class SshServer:
    """Debian's ``sshd`` on 127.0.0.1 with public-key login for the current user.

    Parameters:
        workdir: directory for keys, config, log and the SFTP root.

    Attributes a test uses: ``host``, ``port``, ``read_only_port``, ``username``,
    ``key_filename`` (the user's private key), ``known_hosts`` (trusts the host
    key on both ports), ``host_public_key`` and ``root`` (a directory tests write
    under; give it to the store as ``cwd``).
    """

    host = "127.0.0.1"

    def __init__(self, workdir: Path) -> None:
        if not os.path.exists(SSHD):
            raise RuntimeError(f"{SSHD} is missing: install openssh-server")
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_port()
        self.read_only_port = free_port()
        self.username = getpass.getuser()
        self.root = workdir / "sftp-root"
        self.root.mkdir(exist_ok=True)
        self.session_home = workdir / "session-home"
        self.session_home.mkdir(exist_ok=True)

        self.host_public_key = generate_key(workdir / "ssh_host_ed25519_key")
        self.key_filename = str(workdir / "id_ed25519")
        user_public_key = generate_key(Path(self.key_filename))
        self.authorized_keys = workdir / "authorized_keys"
        self.authorized_keys.write_text(user_public_key + "\n")
        self.known_hosts = str(workdir / "known_hosts")
        self.write_known_hosts(self.known_hosts, self.host_public_key)

        config = workdir / "sshd_config"
        config.write_text(self._config())
        argv = [SSHD, "-D", "-e", "-f", str(config)]
        self.process = ServerProcess("sshd", argv, workdir / "sshd.log", self._up)

    def _config(self) -> str:
        return "\n".join(
            [
                f"ListenAddress {self.host}",
                f"Port {self.port}",
                f"Port {self.read_only_port}",
                f"HostKey {self.workdir / 'ssh_host_ed25519_key'}",
                f"AuthorizedKeysFile {self.authorized_keys}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "StrictModes no",  # pytest's temporary directories are not root-only
                "UsePAM no",
                f"PidFile {self.workdir / 'sshd.pid'}",
                "PermitRootLogin prohibit-password",
                "Subsystem sftp internal-sftp",
                # A command session's bash reads ~/.bashrc (Debian's bash does when sshd
                # starts it), and this machine's root's runs `pyenv init`: 150-180 ms of
                # every hash command hoist runs. An empty home of its own keeps the server
                # what a store's is; SFTP paths and the commands' directory come from the
                # account (pw_dir), not from $HOME.
                f"SetEnv HOME={self.session_home}",
                "LogLevel VERBOSE",
                # Match blocks run to the end of the file, so this one goes last.
                f"Match LocalPort {self.read_only_port}",
                "    ForceCommand internal-sftp -R",
                "",
            ]
        )

    def write_known_hosts(self, path: str | os.PathLike[str], key_line: str) -> None:
        """Write a known_hosts file that pins ``key_line`` for both of this server's ports.

        Pass another key's line (see :func:`generate_key`) to impersonate a changed host key.
        """
        lines = [f"[{self.host}]:{port} {key_line}\n" for port in (self.port, self.read_only_port)]
        Path(path).write_text("".join(lines))

    def _up(self) -> bool:
        return port_open(self.port) and port_open(self.read_only_port)

    def start(self) -> None:
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self.process.start()

    def stop(self) -> None:
        self.process.stop()

    def drop_connections(self) -> None:
        """Kill the processes serving open connections, as a crash or a cut cable would.

        Stopping the listener alone leaves them running: each connection's sshd
        is in a session of its own.
        """
        if self.process.proc is None:
            return
        for pid in descendants(self.process.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
