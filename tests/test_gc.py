"""``hoist gc --incomplete``: real incomplete multipart uploads on moto and rclone, and
SFTP temporary files on the private sshd, found by age, listed, and removed."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from hoist.cli import main
from hoist.commands import console as console_module
from hoist.stores.leftovers import MULTIPART, TEMPORARY
from hoist.stores.names import temporary_name
from tests.services.s3 import S3Server
from tests.services.sshd import SshServer
from tests.test_store_sftp import make_store as sftp_store

MiB = 1024 * 1024


def gc(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--home", str(home), "gc", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def open_uploads(server: S3Server, prefix: str) -> dict[str, str]:
    """Key -> upload id of every multipart upload in progress under ``prefix``."""
    answer = server.client().list_multipart_uploads(Bucket=server.bucket, Prefix=prefix)
    return {u["Key"]: u["UploadId"] for u in answer.get("Uploads", [])}


def test_gc_aborts_incomplete_multipart_uploads_under_the_prefix_only(
    s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = s3_server.client()
    prefix = f"gc-{uuid.uuid4().hex[:8]}/"
    killed = client.create_multipart_upload(Bucket=s3_server.bucket, Key=f"{prefix}run/ep1.pt")
    client.upload_part(
        Bucket=s3_server.bucket,
        Key=f"{prefix}run/ep1.pt",
        UploadId=killed["UploadId"],
        PartNumber=1,
        Body=os.urandom(5 * MiB),
    )
    client.create_multipart_upload(Bucket=s3_server.bucket, Key=f"{prefix}run/ep2.pt")
    elsewhere = f"other-{uuid.uuid4().hex[:8]}/"
    client.create_multipart_upload(Bucket=s3_server.bucket, Key=f"{elsewhere}keep.pt")
    client.put_object(Bucket=s3_server.bucket, Key=f"{prefix}run/done.pt", Body=b"landed")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setattr(console_module.out, "width", 200)
    store = f"s3://{s3_server.bucket}/{prefix}?endpoint_url={s3_server.endpoint_url}"
    home = tmp_path / "home"
    home.mkdir()
    time.sleep(1.1)  # the servers stamp Initiated in whole seconds

    args = ("--store", store, "--incomplete", "--older-than", "1s")
    if s3_server.name == "rclone":  # moto answers every Initiated with 2010-11-10
        code, out, err = gc(capsys, home, "--store", store, "--incomplete", "--older-than", "1h")
        assert code == 0 and "0 incomplete upload(s)" in err  # too young to be abandoned
    code, out, _ = gc(capsys, home, *args, "--force", "--dry-run", "--json")
    listed = json.loads(out)
    assert code == 0 and listed["dry_run"] and listed["objects"] == 2
    assert listed["bytes"] == 5 * MiB
    assert {item["kind"] for item in listed["removed"]} == {MULTIPART}
    assert len(open_uploads(s3_server, prefix)) == 2  # a dry run changes nothing

    code, _, err = gc(capsys, home, *args)  # too young without --force
    assert code == 1 and "may abort uploads still running; give 1h or more" in err
    whole = f"s3://{s3_server.bucket}?endpoint_url={s3_server.endpoint_url}"
    code, _, err = gc(capsys, home, "--store", whole, "--incomplete", "--older-than", "1d")
    assert code == 1 and "has no prefix, so gc would abort every multipart upload" in err
    code, out, err = gc(capsys, home, *args, "--force")
    assert code == 0 and "2 incomplete upload(s); freed 5.0 MiB" in err
    assert f"s3://{s3_server.bucket}/{prefix}run/ep1.pt" in out
    assert open_uploads(s3_server, prefix) == {}
    assert list(open_uploads(s3_server, elsewhere)) == [f"{elsewhere}keep.pt"]
    landed = client.get_object(Bucket=s3_server.bucket, Key=f"{prefix}run/done.pt")
    assert landed["Body"].read() == b"landed"


def test_gc_refuses_a_duration_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--home", str(tmp_path), "gc", "--store", "file:///x", "--incomplete",
              "--older-than", "yesterday"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "not a duration; write it as 90s, 30m, 12h or 7d" in capsys.readouterr().err


def test_sftp_temporary_files_of_killed_uploads_are_found_by_age_and_removed(
    sshd_server: SshServer,
) -> None:
    cwd = sshd_server.root / f"gc-{uuid.uuid4().hex[:8]}"
    (cwd / "run" / "rank0").mkdir(parents=True)
    old = cwd / temporary_name("run/rank0/ep1.pt")
    old.write_bytes(os.urandom(1000))
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    fresh = cwd / temporary_name("run/rank0/ep2.pt")  # an upload still running
    fresh.write_bytes(b"in progress")
    landed = cwd / "run" / "rank0" / "ep0.pt"
    landed.write_bytes(b"landed")
    os.utime(landed, (hour_ago, hour_ago))
    looks_like = cwd / ".hoist-tmp-notahexname-x.pt"  # not a name hoist writes
    looks_like.write_bytes(b"someone else's")
    os.utime(looks_like, (hour_ago, hour_ago))
    with sftp_store(sshd_server, cwd=str(cwd)) as store:
        (found,) = store.leftovers(older_than=600)
        assert (found.kind, found.size) == (TEMPORARY, 1000)
        assert found.uri == store.get_uri(str(old.relative_to(cwd)))
        store.discard(found)
        assert store.leftovers(older_than=600) == []
    assert not old.exists()
    assert fresh.exists() and landed.exists() and looks_like.exists()
