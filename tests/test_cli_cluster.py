"""``hoist up`` / ``hoist down`` / ``hoist flower``: the embedded cluster, as a user runs it.

Real processes only: the commands run as subprocesses, start a real
``redis-server``, real workers and Flower; the tests talk to them over
loopback (redis-py, HTTP) and upload a real file through the cluster. A
module fixture starts one cluster and always stops it, killing whatever
``hoist down`` might have left, so no process outlives the module.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.events.state import State

from hoist import LogLevel, ObjectStoreLogger
from hoist.errors import UploadFailedError
from hoist.workers.envfile import apply_env_file
from tests.services.cluster import (
    REPO,
    Cluster,
    environment,
    hoist,
    local_cluster,
    pids,
    redis_password,
    running,
    up,
)
from tests.services.flower import signal_when_consuming
from tests.services.process import free_port, port_open
from tests.services.secrets import assert_not_in_redis
from tests.services.workers import wait_until

OUTPUT = REPO / ".hoist-test-output"
SCREENSHOT = OUTPUT / "flower-tasks.png"
CHROMIUM = Path("/usr/bin/chromium")
# --no-sandbox: the tests run as root. The rest keep Chromium from reaching for
# Google's hosts, which this machine's closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
CLUSTER_VARIABLES = (
    "HOIST_BROKER_URL",
    "HOIST_STAGING_DIR",
    "HOIST_FLEET_KEY",
    "HOIST_STORE_URI",
    "HOIST_FLOWER_URL",
    "HOIST_FLOWER_USER",
    "HOIST_FLOWER_PASSWORD",
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # Progress events every 10 ms, so that a short upload reports a few.
    env = {"HOIST_PROGRESS_SECONDS": "0.01"}
    with local_cluster(tmp_path_factory.mktemp("cluster") / "home", env=env) as running_cluster:
        yield running_cluster


def upload_through(cluster: Cluster, name: str, payload: bytes, **credentials: str) -> str:
    """Log ``payload`` as artifact ``name`` through the cluster as a rank would; its id.

    ``credentials`` join the store's ``provider_kwargs`` (sealed with the fleet key).
    """
    source = cluster.home.parent / name
    source.write_bytes(payload)
    saved = dict(os.environ)
    try:
        for variable in [n for n in os.environ if n.startswith("HOIST_")]:
            del os.environ[variable]
        assert apply_env_file(str(cluster.home))
        with ObjectStoreLogger(
            provider="local",
            container="artifacts",
            provider_kwargs={"key": str(cluster.home / "store"), **credentials},
            run_name="cluster-test",
            rank=0,
            local_rank=0,
            world_size=1,
            local_world_size=1,
            node_rank=0,
        ) as logger:
            artifact = logger.file_artifact(LogLevel.EPOCH, name, source)
            logger.wait(timeout=60)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert artifact is not None
    return artifact


@pytest.fixture(scope="module")
def uploaded(cluster: Cluster) -> tuple[str, Path, bytes]:
    """One file uploaded through the cluster: (id, object, bytes)."""
    payload = os.urandom(256 * 1024)
    artifact = upload_through(cluster, "ep1.pt", payload)
    target = cluster.home / "store" / "artifacts" / "cluster-test" / "artifacts" / "ep1.pt"
    return artifact, target, payload


def test_up_writes_a_private_env_file_and_prints_a_summary(cluster: Cluster) -> None:
    env_file = cluster.home / "env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    env = cluster.env
    assert set(CLUSTER_VARIABLES) <= set(env)
    assert env["HOIST_BROKER_URL"].startswith("redis://:")
    assert "@127.0.0.1:" in env["HOIST_BROKER_URL"]
    assert env["HOIST_STORE_URI"] == f"file://{cluster.home / 'store' / 'artifacts'}"
    assert (cluster.home / "store" / "artifacts").is_dir()
    assert env["HOIST_FLOWER_URL"] == f"http://127.0.0.1:{cluster.flower_port}"

    # rich may wrap long cells; compare without line breaks and box characters
    summary = " ".join(cluster.up.stdout.replace("│", " ").split())
    password = redis_password(env["HOIST_BROKER_URL"])
    assert "redis://:****@127.0.0.1:" in summary
    assert password not in cluster.up.stdout + cluster.up.stderr
    assert env["HOIST_FLOWER_PASSWORD"] not in cluster.up.stdout + cluster.up.stderr
    assert "HOIST_FLOWER_PASSWORD" in summary
    assert f"set -a; . {env_file}; set +a" in summary


def test_redis_requires_the_password_and_listens_on_loopback_only(cluster: Cluster) -> None:
    url = cluster.env["HOIST_BROKER_URL"]
    port = redis.Redis.from_url(url).connection_pool.connection_kwargs["port"]
    # A raw client: redis-py would retry an authentication error with backoff.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"PING\r\n")
        assert client.recv(100).startswith(b"-NOAUTH")
    assert redis.Redis.from_url(url, socket_timeout=5).ping()

    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                listening.append(address)
    assert listening == ["0100007F"]  # 127.0.0.1, and nothing on IPv6

    password = redis_password(url)
    for pid in pids(cluster.home).values():  # no secret on any command line (`ps`)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert password not in cmdline
        assert cluster.env["HOIST_FLOWER_PASSWORD"] not in cmdline


def test_workers_upload_through_the_cluster(uploaded: tuple[str, Path, bytes]) -> None:
    _, target, payload = uploaded
    assert target.read_bytes() == payload


def test_flower_requires_a_login_and_shows_readable_uploads(
    cluster: Cluster, uploaded: tuple[str, Path, bytes]
) -> None:
    artifact, _, payload = uploaded
    assert cluster.flower("/api/tasks")[0] == 401
    assert cluster.flower("/api/tasks", ("hoist", "wrong"))[0] == 401

    def our_task() -> dict[str, Any] | None:
        status, body = cluster.flower("/api/tasks", cluster.login)
        assert status == 200, body
        task = json.loads(body).get(artifact)
        return task if task and task.get("state") == "SUCCESS" else None

    task = wait_until(our_task, timeout=30, interval=0.3)
    assert task["name"] == "hoist.upload"
    assert task["kwargs"] == str(
        {"artifact": "ep1.pt", "size": len(payload), "run": "cluster-test", "rank": 0}
    )

    def both_workers() -> dict[str, Any] | None:
        # Flower fills its worker list from `inspect` replies a moment after
        # answering, so a refresh shows them on a later request.
        status, body = cluster.flower("/api/workers?refresh=1", cluster.login)
        assert status == 200, body
        workers = json.loads(body)
        complete = len(workers) == 2 and all("conf" in w and "stats" in w for w in workers.values())
        return workers if complete else None

    workers = wait_until(both_workers, timeout=30, interval=0.3)
    assert sorted(name.split("@")[0] for name in workers) == ["w0", "w1"]
    for worker in workers.values():
        assert worker["conf"]["broker_url"].startswith("redis://:********@127.0.0.1")
    status, broker_page = cluster.flower("/broker", cluster.login)
    assert status == 200
    assert "redis://:**@127.0.0.1" in broker_page
    secrets = (redis_password(cluster.env["HOIST_BROKER_URL"]), cluster.env["HOIST_FLEET_KEY"])
    for page in (json.dumps(task), json.dumps(workers), broker_page):
        for secret in secrets:
            assert secret not in page


def test_a_credential_given_to_the_logger_shows_nowhere(cluster: Cluster) -> None:
    """Redis, task arguments and results, Flower's pages and API, every log: no secret."""
    secret = f"store-secret-{os.urandom(8).hex()}"
    artifact = upload_through(cluster, "sealed.bin", os.urandom(1000), secret=secret)

    def flower_has_the_result() -> str | None:
        status, body = cluster.flower(f"/api/task/info/{artifact}", cluster.login)
        return body if status == 200 and '"SUCCESS"' in body else None

    pages = [wait_until(flower_has_the_result, timeout=30, interval=0.3)]
    table = "/tasks/datatable?draw=1&start=0&length=100&order[0][column]=0&columns[0][data]=name"
    for path in ("/api/tasks", f"/task/{artifact}", table, "/api/workers?refresh=1", "/workers",
                 "/broker"):  # fmt: skip
        status, body = cluster.flower(path, cluster.login)
        assert status == 200, (path, body[:200])
        pages.append(body)
    assert any("sealed.bin" in page for page in pages)  # the task is there, its secret is not
    for page in pages:
        assert secret not in page

    client = redis.Redis.from_url(cluster.env["HOIST_BROKER_URL"])
    record = client.hgetall(f"hoist:artifact:{artifact}")
    assert b"sealed" in record[b"message"]  # the credential travelled, sealed
    assert_not_in_redis(client, secret)
    logs = list((cluster.home / "logs").glob("*.log"))
    assert {p.name for p in logs} >= {"redis.log", "flower.log", "worker0.log", "worker1.log"}
    for log in logs:
        assert secret not in log.read_text(errors="replace"), log


def test_flower_serves_prometheus_metrics(cluster: Cluster) -> None:
    status, body = cluster.flower("/metrics")
    assert status == 200
    assert "# TYPE flower_events_total counter" in body


def test_an_upload_in_flight_reports_its_bytes_as_task_progress(cluster: Cluster) -> None:
    """The worker's ``task-progress`` events, as Flower receives and shows them."""
    events: list[dict[str, Any]] = []
    app = Celery(broker=cluster.env["HOIST_BROKER_URL"], set_as_current=False)
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": events.append})
        listening = threading.Event()
        capture = threading.Thread(
            target=receiver.capture, kwargs={"wakeup": False}, daemon=True, name="events"
        )
        receiver.consumer_context = signal_when_consuming(receiver.consumer_context, listening)
        capture.start()
        try:
            assert listening.wait(10)
            size = 40 * 1024 * 1024  # 5 read chunks: with reports every 10 ms, some and a last
            artifact = upload_through(cluster, "progress.bin", os.urandom(size))

            def succeeded() -> bool:
                return any(e["type"] == "task-succeeded" and e["uuid"] == artifact for e in events)

            wait_until(succeeded, timeout=30)
        finally:
            receiver.should_stop = True
            capture.join(10)

    ours = [e for e in events if e.get("uuid") == artifact]
    progress = [e for e in ours if e["type"] == "task-progress"]
    assert len(progress) >= 2, [e["type"] for e in ours]
    done = [e["bytes_done"] for e in progress]
    assert done == sorted(set(done)) and done[-1] == size
    assert {e["bytes_total"] for e in progress} == {size}

    # Replayed into Celery's event state, as Flower keeps it: PROGRESS, then SUCCESS.
    state = State()
    before_success = ours[: [e["type"] for e in ours].index("task-succeeded")]
    for event in before_success:
        state.event(dict(event))
    task = state.tasks[artifact]
    assert task.state == "PROGRESS"
    assert task.result == "uploading: 40.0 MiB of 40.0 MiB (100%)"  # what Flower shows
    state.event(dict(ours[len(before_success)]))
    assert state.tasks[artifact].state == "SUCCESS"


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"needs Debian's chromium at {CHROMIUM}")
def test_flower_shows_a_running_demo_in_chromium(cluster: Cluster) -> None:
    """Log in to Flower in headless Chromium while `hoist demo` runs; find its uploads."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    run = "browser-demo"
    argv = [sys.executable, "-m", "hoist.cli", "--home", str(cluster.home), "demo"]
    argv += ["--ranks", "2", "--steps", "6", "--checkpoint-every", "2", "--run", run]
    demo = subprocess.Popen(
        argv, env=environment(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{cluster.flower_port}/tasks"
    wanted = [f"'run': '{run}'", "step0002-rank0.pt", "step0002-rank1.pt"]
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                # Without credentials Chromium receives the 401 challenge and,
                # having nothing to answer it with, fails the navigation.
                anonymous = browser.new_context()
                page = anonymous.new_page()
                with page.expect_response(url) as challenge, contextlib.suppress(PlaywrightError):
                    page.goto(url)
                assert challenge.value.status == 401
                assert "Basic" in (challenge.value.headers.get("www-authenticate") or "")
                anonymous.close()

                user, password = cluster.login
                context = browser.new_context(
                    http_credentials={"username": user, "password": password},
                    viewport={"width": 1800, "height": 1000},
                )
                page = context.new_page()

                def table_lists_the_demo() -> str | None:
                    # The table fills from /tasks/datatable after each load.
                    response = page.goto(url)
                    assert response is not None and response.status == 200
                    table = page.locator("#tasks-table tbody")
                    with contextlib.suppress(PlaywrightError):
                        table.get_by_text("hoist.upload").first.wait_for(timeout=5_000)
                        # Flower shows the newest 15 tasks first; once the demo has
                        # logged more, its step-2 uploads are on page 2. A person
                        # would show more rows; the choice is saved for each reload.
                        length = page.locator("#tasks-table_length select")
                        if length.input_value(timeout=2_000) != "100":
                            length.select_option("100", timeout=2_000)
                            page.wait_for_timeout(1_000)
                    text = table.inner_text()
                    return text if all(w in text for w in wanted) else None

                text = wait_until(table_lists_the_demo, timeout=90, interval=1)
                assert "hoist.upload" in text
                OUTPUT.mkdir(exist_ok=True)
                page.screenshot(path=str(SCREENSHOT), full_page=True)
                print(f"\nFlower tasks page: {SCREENSHOT}")
                context.close()
            finally:
                browser.close()
        output, _ = demo.communicate(timeout=180)
        assert demo.returncode == 0, output.decode(errors="replace")
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()

    # The same uploads through Flower's HTTP API.
    status, body = cluster.flower("/api/tasks?limit=1000", cluster.login)
    assert status == 200, body
    demo_tasks = [t for t in json.loads(body).values() if f"'run': '{run}'" in t["kwargs"]]
    names = {t["name"] for t in demo_tasks}
    # Each rank's logger asked the fleet to check the store when it started.
    assert names == {"hoist.upload", "hoist.symlink", "hoist.probe"}
    assert any("step0002-rank0.pt" in t["kwargs"] for t in demo_tasks)
    # Every upload landed, or was overtaken by a newer version of its name (the
    # demo logs its log file again and again), which Flower shows as SUPERSEDED,
    # never as SUCCESS and never as a failure; pointers likewise.
    assert "SUCCESS" in {t["state"] for t in demo_tasks if t["name"] == "hoist.upload"}
    assert {t["state"] for t in demo_tasks} <= {"SUCCESS", "SUPERSEDED"}


def test_flower_shows_a_failed_upload_as_failed(
    cluster: Cluster, uploaded: tuple[str, Path, bytes]
) -> None:
    """An artifact that fails for good is a failed task to Celery and Flower too, so that
    Flower's FAILURE state and `flower_events_total{type="task-failed"}` count it."""
    with pytest.raises(UploadFailedError, match="ep1.pt") as caught:
        upload_through(cluster, "ep1.pt", os.urandom(1000))  # the name holds other bytes
    print(f"\n{caught.value}")

    def failed_task() -> dict[str, Any] | None:
        status, body = cluster.flower("/api/tasks", cluster.login)
        assert status == 200, body
        failed = [
            task
            for task in json.loads(body).values()
            if "'artifact': 'ep1.pt'" in task["kwargs"] and task["state"] == "FAILURE"
        ]
        return failed[0] if failed else None

    task = wait_until(failed_task, timeout=30, interval=0.3)
    assert task["name"] == "hoist.upload"
    assert "ArtifactFailed" in task["exception"] and "overwrite=True" in task["exception"]


def test_flower_refuses_an_open_address_without_auth(tmp_path: Path) -> None:
    port = str(free_port())
    result = hoist(tmp_path, "flower", "--address", "0.0.0.0", "--port", port, timeout=30)
    assert result.returncode == 1
    assert "without authentication" in " ".join(result.stderr.split())
    assert not port_open(int(port))


def test_a_second_up_reuses_the_running_cluster(cluster: Cluster) -> None:
    before = pids(cluster.home)
    again = up(cluster.home, cluster.flower_port, env=cluster.extra_env)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    assert pids(cluster.home) == before


def test_up_names_changed_credentials_and_restart_applies_them(cluster: Cluster) -> None:
    """Before the test of ``down``, whose ``up`` starts the cluster with its first environment."""
    before = pids(cluster.home)
    same = up(cluster.home, cluster.flower_port, env=cluster.extra_env)
    assert "already running" in same.stdout and "differ" not in same.stderr

    secret = f"hoist-test-secret-{os.urandom(8).hex()}"
    changed = {**cluster.extra_env, "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "eu-north-1"}
    again = up(cluster.home, cluster.flower_port, env=changed)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout and pids(cluster.home) == before
    note = " ".join(again.stderr.split())
    assert "AWS_SECRET_ACCESS_KEY, AWS_REGION differ from what the running workers" in note
    assert "`hoist up --restart`" in note

    args = ("up", "--detach", "--restart", "--workers", "2", "--concurrency", "1")
    port = ("--flower-port", str(cluster.flower_port))
    restarted = hoist(cluster.home, *args, *port, env=environment(**changed))
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    cluster.remember()
    assert "stopped the running cluster" in restarted.stderr
    after = pids(cluster.home)
    assert not any(running(pid) for pid in before.values())
    assert set(after.values()).isdisjoint(before.values())
    worker_env = Path(f"/proc/{after['worker0']}/environ").read_bytes().split(b"\0")
    assert b"AWS_REGION=eu-north-1" in worker_env

    quiet = up(cluster.home, cluster.flower_port, env=changed)
    assert "already running" in quiet.stdout and "differ" not in quiet.stderr
    # Fingerprints only: the secret is nowhere under the cluster's home.
    for path in cluster.home.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert stat.S_IMODE((cluster.home / "cluster.json").stat().st_mode) == 0o600


def test_down_stops_everything_and_up_keeps_the_data(cluster: Cluster) -> None:
    url = cluster.env["HOIST_BROKER_URL"]
    port = redis.Redis.from_url(url).connection_pool.connection_kwargs["port"]
    redis.Redis.from_url(url).set("hoist-test:persisted", "yes")
    before = pids(cluster.home)

    down = hoist(cluster.home, "down")
    assert down.returncode == 0, down.stderr
    assert not any(running(pid) for pid in before.values())
    assert not port_open(port)
    assert not port_open(cluster.flower_port)
    assert not (cluster.home / "cluster.json").exists()

    again = up(cluster.home, cluster.flower_port, env=cluster.extra_env)
    assert again.returncode == 0, again.stdout + again.stderr
    cluster.remember()
    assert cluster.env["HOIST_BROKER_URL"] == url  # same port and password
    assert redis.Redis.from_url(url).get("hoist-test:persisted") == b"yes"


def test_foreground_up_stops_in_order_on_sigint(tmp_path: Path) -> None:
    home = tmp_path / "home"
    argv = [sys.executable, "-m", "hoist.cli", "--home", str(home), "up", "--workers", "1"]
    argv += ["--concurrency", "1", "--flower-port", str(free_port())]
    proc = subprocess.Popen(argv, env=environment(), cwd=REPO, stdout=subprocess.PIPE, text=True)
    started: dict[str, int] = {}
    try:
        assert proc.stdout is not None
        summary = proc.stdout.readline()  # the table's title comes once everything is ready
        assert "hoist cluster" in summary
        started = pids(home)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert not any(running(pid) for pid in started.values())
        assert "Redis is now ready to exit" in (home / "logs" / "redis.log").read_text()
        assert "Warm shutdown" in (home / "logs" / "worker0.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in started.values():
            if running(pid):
                os.killpg(pid, signal.SIGKILL)


def test_up_without_redis_server_says_how_to_install_it(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    home = tmp_path / "home"
    result = hoist(home, "up", "--detach", env=environment(PATH=str(empty)), timeout=30)
    assert result.returncode == 1
    message = " ".join(result.stderr.split())  # rich wraps long lines
    assert "redis-server is not installed" in message
    assert "apt-get install redis-server" in message
    assert not (home / "cluster.json").exists()
