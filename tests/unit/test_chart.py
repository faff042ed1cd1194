"""Static checks of the deployment files: the chart's values against its schema, compose.yaml and the Dockerfile.

Rendering with the real helm binary and validating the manifests live in tests/integration/test_chart_render.py;
here everything is in-process: the schema must accept the shipped values and reject unsafe ones, and the
container files must keep the properties the chart relies on (non-root, read-only root, writable volumes).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

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


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def writable_paths(service: dict[str, Any]) -> list[str]:
    mounts = [str(t).split(":")[0] for t in service.get("tmpfs", [])]
    return mounts + [str(v).split(":")[1] for v in service.get("volumes", [])]


@pytest.mark.unit
def test_compose_has_the_whole_stack_in_order() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "minio", "init", *STRONGROOM_SERVICES}
    assert services["init"]["command"] == ["init"]
    assert services["init"]["depends_on"] == {
        "minio": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    for name in ("api", "worker", "beat"):
        assert services[name]["depends_on"] == {"init": {"condition": "service_completed_successfully"}}
        assert services[name]["command"][0] == name
    for name in ("redis", "minio"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"
    assert "latest" not in services["minio"]["image"]


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
    assert stage[0] == "FROM python:3.11-slim"
    user = [line.split()[1] for line in stage if line.startswith("USER ")]
    assert user and re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", user[-1]), "numeric non-root USER"
    assert "STRONGROOM_ENV=production" in text
    assert "COPY --from=build /opt/venv /opt/venv" in text
    for tool in ("gcc", "build-essential", "apt-get install", "pip install"):
        assert tool not in text, tool
    assert 'ENTRYPOINT ["strongroom"]' in text
    for path in ("/var/lib/strongroom/work", "/var/lib/strongroom/beat"):
        assert path in text  # pre-created with the runtime user's ownership for volumes


@pytest.mark.unit
def test_dockerfile_uid_matches_chart() -> None:
    values, _ = load()
    uid = values["podSecurityContext"]["runAsUser"]
    user = next(line.split()[1] for line in final_stage() if line.startswith("USER "))
    assert user.split(":")[0] == str(uid)
