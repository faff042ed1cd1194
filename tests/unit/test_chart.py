"""Static checks of the deployment files: the chart's values against its schema, compose.yaml and the Dockerfile.

Rendering with the real helm binary and validating the manifests live in tests/integration/test_chart_render.py;
here everything is in-process: the schema must accept the shipped values and reject unsafe ones, and the
container files must keep the properties the chart relies on (non-root, read-only root, writable volumes).
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import chart_schema

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "strongroom"
DEPLOY = ROOT / "deploy"
STRONGROOM_SERVICES = ("init", "api", "worker", "beat")


def load() -> tuple[dict[str, Any], dict[str, Any]]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    return values, schema


def with_value(values: dict[str, Any], path: tuple[str, ...], value: object) -> dict[str, Any]:
    changed = copy.deepcopy(values)
    target = changed
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    return changed


# --- values and schema -------------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("name", ["values.yaml", "ci/production-values.yaml"])
def test_shipped_values_match_schema(name: str) -> None:
    _, schema = load()
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    overrides = yaml.safe_load((CHART / name).read_text())
    jsonschema.validate({**defaults, **overrides}, schema)


@pytest.mark.unit
def test_secure_defaults() -> None:
    values, _ = load()
    assert values["podSecurityContext"]["runAsNonRoot"] is True
    assert values["podSecurityContext"]["runAsUser"] != 0
    assert values["securityContext"]["readOnlyRootFilesystem"] is True
    assert values["securityContext"]["allowPrivilegeEscalation"] is False
    assert values["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert values["beat"]["replicas"] == 1
    for component in ("api", "worker", "beat", "init", "redis"):
        assert values[component]["resources"]["requests"], component
        assert values[component]["resources"]["limits"]["memory"], component


@pytest.mark.unit
@pytest.mark.parametrize(
    ("path", "bad"),
    [
        (("podSecurityContext", "runAsNonRoot"), False),
        (("securityContext", "readOnlyRootFilesystem"), False),
        (("securityContext", "allowPrivilegeEscalation"), True),
        (("securityContext", "capabilities", "drop"), ["NET_RAW"]),
        (("securityContext", "capabilities", "add"), ["SYS_ADMIN"]),
        (("config", "STRONGROOM_KEYRING"), "{}"),  # secrets belong in the Secret, never in the ConfigMap
        (("config", "STRONGROOM_ETH_RPC_URL"), "https://rpc.example/key"),
        (("config", "AWS_SECRET_ACCESS_KEY"), "x"),
        (("config", "REDIS_URL"), "redis://:password@redis:6379/0"),
        (("config", "STRONGROOM_WORK_DIR"), "/elsewhere"),  # chart-managed: it must match the emptyDir mount
        (("config", "lowercase"), "x"),
        (("config", "STRONGROOM_LOG_LEVEL"), {"nested": "object"}),
        (("worker", "pool"), "gevent"),
        (("worker", "workDirSizeLimit"), "-1Gi"),
        (("api", "replicas"), 0),
        (("api", "resources", "limits", "memory"), "-512Mi"),
        (("api", "resources", "limits", "cpu"), -1),
        (("api", "resources", "requests", "cpu"), "lots"),
        (("api", "resources", "unknown"), {}),
        (("api", "livenessProbe", "periodSeconds"), 0),
        (("api", "livenessProbe", "httpGet"), {"path": "/"}),  # paths are fixed by the chart
        (("secret", "redisUrl"), "http://redis"),
        (("image", "digest"), "sha256:short"),
        (("existingSecret",), "Not_A_Name"),
        (("beat", "replicas"), 2),  # beat is always exactly one
        (("beat", "replicas"), 0),
        (("beat", "livenessProbe", "maxScheduleAgeSeconds"), 60),  # shorter than beat's own sync interval
        (("redisUrl",), "redis://redis:6379/0"),  # moved to secret.redisUrl: may carry a password
        (("unknownTopLevel",), True),
        # typos inside nested objects are errors at every level the chart owns (issue 12)
        (("podSecurityContext", "runAsUserr"), 10001),
        (("securityContext", "privilegd"), False),
        (("api", "resources", "limits", "memroy"), "1Gi"),
        (("podSecurityContext", "seccompProfile", "type"), "Unconfined"),
        (("securityContext", "seccompProfile"), {"type": "Unconfined"}),
        (("securityContext", "privileged"), True),
        (("api", "autoscaling", "enabeld"), True),
        (("worker", "keda", "listLenght"), 5),
        (("metrics", "serviceMonitor", "intervall"), "30s"),
        (("networkPolicy", "enabeld"), True),
        (("redis", "auth", "password"), 'has"quote'),  # goes into the redis:// URL and valkey's config as is
        (("redis", "image", "digest"), "sha256:short"),
        # Kubernetes' own definitions (strict copies): unknown fields inside passed-through objects are errors
        (("affinity",), {"nodeAffinity": {"requiredDuringScheduling": {}}}),
        (("tolerations",), [{"key": "k", "operater": "Exists"}]),
        (
            ("worker", "topologySpreadConstraints"),
            [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "x", "labelSelectr": {}}],
        ),
        (("extraEnv",), [{"name": "A", "vaule": "b"}]),
        (("extraVolumes",), [{"name": "v", "emptyDirr": {}}]),
        (("networkPolicy", "extraEgress"), [{"too": []}]),
        (("ingress", "hosts"), [{"host": "Strongroom.Example.com"}]),
    ],
)
def test_schema_rejects(path: tuple[str, ...], bad: object) -> None:
    values, schema = load()
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(with_value(values, path, bad), schema)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("path", "good"),
    [
        (("api", "resources", "limits", "cpu"), "1500m"),
        (("api", "resources", "limits", "cpu"), 2),
        (("worker", "resources", "limits", "ephemeral-storage"), "10Gi"),
        (("api", "pdb", "minAvailable"), "50%"),
        (("secret", "redisUrl"), "rediss://:pw@redis.example:6380/0"),
        (("config", "STRONGROOM_ARTIFACT_RETENTION_DAYS"), 30),
        (("image", "digest"), "sha256:" + "a" * 64),
        (("podSecurityContext", "seccompProfile"), {"type": "Localhost", "localhostProfile": "strongroom.json"}),
        (
            ("affinity",),
            {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}},
        ),
        (("tolerations",), [{"key": "dedicated", "operator": "Equal", "value": "agents", "effect": "NoSchedule"}]),
        (("extraEnv",), [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}]),
        (("extraVolumes",), [{"name": "ca", "configMap": {"name": "corporate-ca"}}]),
        (("networkPolicy", "extraEgress"), [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16"}}], "ports": [{"port": 443}]}]),
        (("worker", "resources", "limits", "nvidia.com/gpu"), 1),
        (("redis", "auth", "password"), "A-z_0.9~"),
    ],
)
def test_schema_accepts(path: tuple[str, ...], good: object) -> None:
    values, schema = load()
    jsonschema.validate(with_value(values, path, good), schema)


@pytest.mark.unit
def test_templates_never_template_beat_replicas() -> None:
    beat = (CHART / "templates" / "beat.yaml").read_text()
    assert "replicas: 1" in beat and "type: Recreate" in beat and ".Values.beat.replicas" not in beat


# --- compose.yaml ------------------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """docker compose refuses a mapping with a key twice; PyYAML would silently keep the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [key.value for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge"]
        duplicates = {key for key in keys if keys.count(key) > 1}
        if duplicates:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {sorted(duplicates)}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load((DEPLOY / "compose.yaml").read_text(), Loader=_UniqueKeyLoader)
    return loaded


def writable_paths(service: dict[str, Any]) -> list[str]:
    mounts = [str(t).split(":")[0] for t in service.get("tmpfs", [])]
    return mounts + [str(v).split(":")[1] for v in service.get("volumes", [])]


@pytest.mark.unit
def test_compose_has_the_whole_stack_in_order() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "minio", "minio-setup", "init", *STRONGROOM_SERVICES}
    assert services["init"]["command"] == ["init"]
    assert services["init"]["depends_on"] == {
        "minio-setup": {"condition": "service_completed_successfully"},
        "redis": {"condition": "service_healthy"},
    }
    assert services["minio-setup"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    for name in ("api", "worker", "beat"):
        assert services[name]["depends_on"] == {"init": {"condition": "service_completed_successfully"}}
        assert services[name]["command"][0] == name
    for name in ("redis", "minio"):
        assert services[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert "latest" not in services["minio"]["image"]


@pytest.mark.unit
def test_compose_long_running_services_have_healthchecks_and_limits() -> None:
    services = compose()["services"]
    for name in ("redis", "minio", "api", "worker", "beat"):
        service = services[name]
        assert service["healthcheck"]["test"], name
        limits = service["deploy"]["resources"]["limits"]
        assert limits["memory"] and limits["cpus"], name
    assert "inspect ping" in " ".join(services["worker"]["healthcheck"]["test"])
    assert "celerybeat-schedule" in " ".join(services["beat"]["healthcheck"]["test"])


def interpolations(text: str) -> list[tuple[str, str]]:
    """(variable, modifier) of every ${VAR...} in compose.yaml ($$ escapes excluded)."""
    return re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)([^}]*)\}", text)


@pytest.mark.unit
def test_compose_has_no_default_secrets() -> None:
    """Every secret must be given (``${VAR:?...}``): a default would be the same password on every install."""
    text = (DEPLOY / "compose.yaml").read_text()
    found = interpolations(text)
    assert {name for name, _ in found} >= {
        "REDIS_PASSWORD",
        "MINIO_ROOT_USER",
        "MINIO_ROOT_PASSWORD",
        "STRONGROOM_S3_ACCESS_KEY",
        "STRONGROOM_S3_SECRET_KEY",
    }
    for name, modifier in found:
        assert not modifier.startswith((":-", "-")), f"{name} has a default"
    assert "change-me" not in text


@pytest.mark.unit
def test_compose_application_does_not_use_minio_root_credentials() -> None:
    services = compose()["services"]
    env = services["api"]["environment"]
    assert "MINIO_ROOT" not in env["AWS_ACCESS_KEY_ID"] + env["AWS_SECRET_ACCESS_KEY"]
    assert "STRONGROOM_S3_ACCESS_KEY" in env["AWS_ACCESS_KEY_ID"]
    setup = services["minio-setup"]
    script = setup["command"][0]
    assert "mc admin user add" in script and "arn:aws:s3:::strongroom/*" in script
    assert "REDIS_PASSWORD" in env["REDIS_URL"] and "requirepass" in services["redis"]["command"][0]


@pytest.mark.unit
def test_compose_env_script_sets_every_required_variable(tmp_path: Path) -> None:
    import subprocess

    output = subprocess.run(["sh", str(DEPLOY / "compose-env.sh")], capture_output=True, text=True, check=True).stdout
    given = dict(line.split("=", 1) for line in output.splitlines())
    required = {name for name, modifier in interpolations((DEPLOY / "compose.yaml").read_text()) if modifier}
    assert required <= set(given)
    assert len({given["REDIS_PASSWORD"], given["MINIO_ROOT_PASSWORD"], given["STRONGROOM_S3_SECRET_KEY"]}) == 3
    assert all(len(given[k]) >= 32 for k in ("REDIS_PASSWORD", "MINIO_ROOT_PASSWORD", "STRONGROOM_S3_SECRET_KEY"))


@pytest.mark.unit
@pytest.mark.parametrize("name", STRONGROOM_SERVICES)
def test_compose_strongroom_services_are_hardened(name: str) -> None:
    service = compose()["services"][name]
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert "user" not in service  # the image's numeric non-root user
    assert "/tmp" in writable_paths(service)
    env = service["environment"]
    assert env["STRONGROOM_ENV"] == "production"
    assert "STRONGROOM_KEYRING" not in env and env["STRONGROOM_KEYRING_FILE"] == "/run/secrets/keyring"
    assert service["secrets"] == ["keyring"]


@pytest.mark.unit
def test_compose_processes_write_only_to_mounted_paths() -> None:
    services = compose()["services"]
    worker, beat = services["worker"], services["beat"]
    assert worker["environment"]["STRONGROOM_WORK_DIR"] in writable_paths(worker)
    schedule = beat["command"][beat["command"].index("--schedule") + 1]
    assert str(Path(schedule).parent) in writable_paths(beat)


@pytest.mark.unit
def test_compose_sets_the_grant_source_and_mounts_its_file() -> None:
    """Production refuses to start without an explicit grant source; compose's is `static`, on a shipped file that
    grants nobody until edited, and that the servers' own parser accepts."""
    from shared.grants import parse_grants

    services = compose()["services"]
    for name in STRONGROOM_SERVICES:
        env = services[name]["environment"]
        assert env["STRONGROOM_GRANTS_SOURCE"] == "static", name
        path = Path(env["STRONGROOM_GRANTS_FILE"])
        mounts = {str(v).split(":")[1]: str(v) for v in services[name]["volumes"]}
        assert mounts[str(path.parent)] == f"./grants:{path.parent}:ro", name  # a directory: edits are seen
    shipped = DEPLOY / "grants" / path.name
    assert parse_grants(shipped.read_text(), filename=shipped.name) == {}


@pytest.mark.unit
def test_compose_worker_alone_can_create_agent_sandboxes() -> None:
    """bwrap needs seccomp and AppArmor to allow unshare/mount and an unmasked /proc: the worker, nobody else."""
    services = compose()["services"]
    relaxed = {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"}
    assert relaxed <= set(services["worker"]["security_opt"])
    for name in ("init", "api", "beat"):
        assert services[name]["security_opt"] == ["no-new-privileges:true"], name
    # every concurrent run's scratch tmpfs fits in the worker's memory limit, with 512 MiB for the worker itself
    command = services["worker"]["command"]
    concurrency = int(command[command.index("--concurrency") + 1])
    disk = int(
        services["worker"]["environment"].get("STRONGROOM_MAX_DISK_USAGE") or _default("STRONGROOM_MAX_DISK_USAGE")
    )
    memory = services["worker"]["deploy"]["resources"]["limits"]["memory"]
    assert memory.endswith("G") and int(memory[:-1]) * 1000**3 >= concurrency * disk + 512 * 1024**2


def _default(name: str) -> str:
    from shared.settings import options

    return {o.name: o.default for o in options()}[name]


@pytest.mark.unit
def test_compose_publishes_only_on_loopback() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), name


# --- Dockerfile --------------------------------------------------------------------------------------------------


def final_stage() -> list[str]:
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    assert len(starts) >= 2, "multi-stage build expected"
    return lines[starts[-1] :]


@pytest.mark.unit
def test_dockerfile_final_stage() -> None:
    stage = final_stage()
    text = "\n".join(stage)
    assert stage[0] == "FROM ${PYTHON_IMAGE}"
    user = [line.split()[1] for line in stage if line.startswith("USER ")]
    assert user and re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", user[-1]), "numeric non-root USER"
    assert "STRONGROOM_ENV=production" in text
    assert "STRONGROOM_API_METRICS_PORT=9090" in text  # /metrics never on the public port
    assert "COPY --from=build /opt/venv /opt/venv" in text
    for tool in ("gcc", "build-essential", "apt-get install", "pip install"):
        assert tool not in text, tool
    assert 'ENTRYPOINT ["strongroom"]' in text
    for path in ("/var/lib/strongroom/work", "/var/lib/strongroom/beat"):
        assert path in text  # pre-created with the runtime user's ownership for volumes
    for label in ("title", "version", "revision", "licenses", "base.name"):
        assert f"org.opencontainers.image.{label}=" in text, label


@pytest.mark.unit
def test_dockerfile_installs_only_the_hashed_lock() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs == [
        "RUN pip install --require-hashes --only-binary=:all: --no-deps -r deploy/requirements.lock",
        "RUN pip install --no-index --no-build-isolation --no-deps '.[server,contracts]' \\",
    ]
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in text  # the Debian release debootstrap stands in for
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert "!deploy/requirements.lock" in ignore


def locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of deploy/requirements.lock."""
    text = (DEPLOY / "requirements.lock").read_text().replace("\\\n", " ")
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement, *options = line.split()
        name, version = requirement.split("==")
        hashes = [o.removeprefix("--hash=sha256:") for o in options if o.startswith("--hash=sha256:")]
        pins[canonicalize_name(name.split("[")[0])] = (version, hashes)
    return pins


@pytest.mark.unit
def test_lock_pins_every_dependency_with_hashes() -> None:
    """The lock satisfies pyproject.toml (dependencies, the image's `server` and `contracts` extras, the build
    backend): run `make lock` after changing them. Every line is an exact pin with SHA-256 hashes, as
    --require-hashes needs."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = locked()
    assert pins
    for name, (version, hashes) in pins.items():
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), name
    wanted = [
        *pyproject["project"]["dependencies"],
        *pyproject["project"]["optional-dependencies"]["server"],
        *pyproject["project"]["optional-dependencies"]["contracts"],
        *pyproject["build-system"]["requires"],
    ]
    for text in wanted:
        requirement = Requirement(text)
        if requirement.name == "strongroom":  # an extra naming another extra of ours, listed above
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"python_version": "3.11"}):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in deploy/requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (
            f"{name}=={pins[name][0]} in the lock does not satisfy {requirement}: run `make lock`"
        )


@pytest.mark.unit
def test_dockerfile_uid_matches_chart() -> None:
    values, _ = load()
    uid = values["podSecurityContext"]["runAsUser"]
    user = next(line.split()[1] for line in final_stage() if line.startswith("USER "))
    assert user.split(":")[0] == str(uid)


@pytest.mark.unit
def test_schema_kubernetes_definitions_are_current() -> None:
    """The io.k8s.* definitions are Kubernetes' own: `python -m tests.helpers.chart_schema` regenerates them."""
    _, schema = load()
    assert schema == chart_schema.with_kubernetes_definitions(schema)
    assert chart_schema.dump(schema) == (CHART / "values.schema.json").read_text()
