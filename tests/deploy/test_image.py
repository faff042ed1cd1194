"""The container image, built from deploy/Dockerfile with podman and run hardened, as the Helm chart renders it.

1. Build: ``podman build --isolation chroot --network host --pull=never -f deploy/Dockerfile .`` (vfs storage of
   its own, see tests/deploy/containers.py). No container registry is reachable in CI, so unless an image of the
   Dockerfile's ``FROM`` name is already stored, deploy/base-image.sh makes one with ``debootstrap --variant=minbase
   bookworm`` (Debian's Python 3.11, the slim image's minor version) and imports it under that name; the test says
   so in its output. Everything after ``FROM`` runs as written: the dependencies come only from
   deploy/requirements.lock, hash-checked.
2. Run: the chart is rendered (pinned helm) against the test's Valkey and SeaweedFS, and its init Job, API, worker
   and beat containers run with exactly the rendered args, env, Secret files, emptyDirs and security context:
   read-only root filesystem, uid/gid 10001, every capability dropped, no new privileges; the worker also with
   what the chart gives it for the agent sandbox (an unmasked /proc, seccomp and AppArmor unconfined). Which of
   those the sandbox really needs is checked separately, by the worker's own sandbox probe in variants of the
   worker's container (tests/deploy/containers.py says why each is needed).
3. Check: init creates the bucket; ``/healthz`` and ``/readyz`` through the rendered probes' ports and paths; the
   rendered worker and beat liveness commands inside their containers; a signed create of the built-in agent run
   by the containerised worker inside its sandbox, downloaded and decrypted by the SDK; the hardening as seen from
   inside; warm shutdown on SIGTERM.

Runs as root with podman, runc and debootstrap (.ci/run installs them). Elsewhere it is skipped, saying why,
unless STRONGROOM_REQUIRE_IMAGE or CI is set: then a missing tool is a failure.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import httpx
import pytest
import redis
import yaml

from shared.crypto.keyring import Keyring
from strongroom.client import StrongroomClient
from strongroom.client.identity import generate_identity
from strongroom.dev.servers import LOOPBACK, free_port
from tests.deploy.containers import Pod, Podman, Rendered, podman_root, seccomp_profile
from tests.helpers.helm import helm_path

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
IMAGE = "localhost/strongroom:image-test"
ARTIFACTS = {"privacy_audit.md", "recommendations.json"}
TEXT = "Write to jane.doe@example.com or call +1 415 555 0100.\n" * 50
# A Redis database of its own on the session's Valkey: a session worker started by another module (another
# keyring, another bucket) must not take this API's tasks, nor this module's beat feed that worker.
REDIS_DB = 11
# A command agent still running when the worker gets SIGTERM: warm shutdown must let it finish and store its file.
SLOW_AGENT = "sleep 15; echo {prompt} > out/slow.txt"


def say(config: pytest.Config, line: str) -> None:
    """A line in pytest's own output (not captured): what the image test did instead of pulling."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"[image] {line}")


def wait_until(check: Callable[[], bool], timeout: float, what: str, diagnose: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise AssertionError(f"{what} not within {timeout:.0f}s\n{diagnose()[-6000:]}")


# --- build -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def podman() -> Podman:
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    reason = ""
    if missing:
        reason = f"{', '.join(missing)} not installed (.ci/run installs them: apt-get install podman runc debootstrap)"
    elif os.geteuid() != 0:
        reason = "needs root (debootstrap for the base image, runc for the containers)"
    if reason:
        if os.environ.get("STRONGROOM_REQUIRE_IMAGE") or os.environ.get("CI"):
            pytest.fail(f"the image test must run here: {reason}")
        pytest.skip(reason)
    return Podman(podman_root())


def from_name() -> str:
    """The Dockerfile's default base image, fully qualified as podman stores a short name pulled from Docker Hub."""
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, "deploy/Dockerfile names its base in ARG PYTHON_IMAGE"
    name = match.group(1)
    return name if "/" in name else f"docker.io/library/{name}"


@pytest.fixture(scope="module")
def image(podman: Podman, pytestconfig: pytest.Config) -> str:
    started = time.monotonic()
    base = from_name()
    label = podman("image", "inspect", "--format", '{{index .Config.Labels "org.strongroom.base"}}', base, check=False)
    if label.returncode == 0 and label.stdout.strip() in ("", "<no value>"):
        say(pytestconfig, f"building FROM {base}, already stored (not made by deploy/base-image.sh)")
    else:
        made = subprocess.run(
            ["bash", str(ROOT / "deploy" / "base-image.sh"), base],
            env=podman.env,
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        assert made.returncode == 0, f"deploy/base-image.sh failed:\n{made.stdout}\n{made.stderr[-4000:]}"
        said = "; ".join(line for line in made.stdout.splitlines() if line.strip())
        say(pytestconfig, f"no registry used: FROM {base} is a debootstrap bookworm. {said}")
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    podman(
        "build",
        "--isolation", "chroot",
        "--network", "host",
        "--pull=never",
        # One commit per stage: vfs copies the whole root filesystem for every layer it commits, so a layered
        # build is several times slower and leaves gigabytes behind per commit built.
        "--layers=false",
        "-f", str(DOCKERFILE.relative_to(ROOT)),
        "--ignorefile", "deploy/Dockerfile.dockerignore",  # BuildKit finds it by itself; podman 4.3 does not
        "--build-arg", f"REVISION={revision.stdout.strip() or 'unknown'}",
        "-t", IMAGE,
        ".",
        cwd=ROOT,
        timeout=1800,
    )  # fmt: skip
    # The previous build's image, untagged by this one: keep the disk bounded.
    podman("image", "prune", "--force", check=False, timeout=600)
    say(pytestconfig, f"built {IMAGE} in {time.monotonic() - started:.0f}s (base included)")
    return IMAGE


def test_image_is_built_from_the_lock_as_a_non_root_user(podman: Podman, image: str) -> None:
    info = podman("image", "inspect", "--format", "{{.Config.User}}|{{json .Config.Labels}}", image).stdout
    user, labels = info.strip().split("|", 1)
    assert user == "10001:10001"
    assert '"org.opencontainers.image.title":"strongroom"' in labels
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    if revision.returncode == 0:
        assert f'"org.opencontainers.image.revision":"{revision.stdout.strip()}"' in labels
    # Every installed distribution is pinned in the lock, at the locked version (the package itself aside).
    listed = podman(
        "run", "--rm", "--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
        "--network", "none", "--entrypoint", "python", image,
        "-c", "import importlib.metadata as m; print('\\n'.join(f'{d.name}=={d.version}' for d in m.distributions()))",
    ).stdout.split()  # fmt: skip
    lock = (ROOT / "deploy" / "requirements.lock").read_text()
    locked = {m.group(1).lower().replace("_", "-"): m.group(2) for m in re.finditer(r"^(\S+)==(\S+) \\$", lock, re.M)}
    installed = {n.lower().replace("_", "-"): v for n, v in (line.split("==", 1) for line in listed)}
    assert installed.pop("strongroom")
    assert {"pip", "setuptools", "wheel"}.isdisjoint(installed), "build tools are removed from the runtime venv"
    assert installed, listed
    assert {name: version for name, version in installed.items() if locked.get(name) != version} == {}


# --- the rendered chart against the test's Valkey and SeaweedFS ---------------------------------------------------


@pytest.fixture(scope="module")
def own_redis_url(redis_url: str) -> Iterator[str]:
    url = urlsplit(redis_url)._replace(path=f"/{REDIS_DB}").geturl()
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory, own_redis_url: str, s3_server: Any) -> Rendered:
    api_port = free_port()
    values = {
        "redis": {"enabled": False},
        "secret": {
            "keyring": Keyring.generate_json(),
            "redisUrl": own_redis_url,
            "awsAccessKeyId": s3_server.access_key,
            "awsSecretAccessKey": s3_server.secret_key,
        },
        "s3": {"endpointUrl": s3_server.endpoint_url},
        "config": {
            "STRONGROOM_AGENTS": json.dumps({"slow": {"command": ["/bin/sh", "-c", SLOW_AGENT]}}),
            "STRONGROOM_PUBLIC_AUTHORITIES": f"{LOOPBACK}:{api_port}",
            "STRONGROOM_S3_BUCKET": f"sr-image-{secrets.token_hex(4)}",
            "AWS_REGION": s3_server.region,
        },
        "grants": {"source": "open"},
        "api": {"port": api_port},
        # Every container shares the host's network here, so the API's and the worker's metrics ports (one port
        # number, one per pod in a cluster) would collide.
        "metrics": {"enabled": False},
    }
    path = tmp_path_factory.mktemp("image-chart") / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    rendered = subprocess.run(
        [str(helm_path()), "template", "sr", str(ROOT / "charts" / "strongroom"), "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert rendered.returncode == 0, rendered.stderr
    return Rendered([doc for doc in yaml.safe_load_all(rendered.stdout) if doc])


@pytest.fixture(scope="module")
def files_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("image-files")
    directory.chmod(0o755)
    return directory


@pytest.fixture(scope="module")
def pods(podman: Podman, image: str, chart: Rendered, files_dir: Path) -> Iterator[dict[str, Pod]]:
    made = {
        "init": Pod(chart.workload("Job", "init"), chart, image, files_dir),
        "api": Pod(chart.workload("Deployment", "api"), chart, image, files_dir),
        "worker": Pod(chart.workload("Deployment", "worker"), chart, image, files_dir),
        "beat": Pod(chart.workload("Deployment", "beat"), chart, image, files_dir),
    }
    try:
        yield made
    finally:
        for pod in made.values():
            podman("rm", "--force", "--time", "5", pod.name, check=False, timeout=120)


def s3_client(chart: Rendered) -> Any:
    config = chart.data("ConfigMap", next(o["metadata"]["name"] for o in chart.objects if o["kind"] == "ConfigMap"))
    secret = chart.data("Secret", next(o["metadata"]["name"] for o in chart.objects if o["kind"] == "Secret"))
    return boto3.client(
        "s3",
        endpoint_url=config["STRONGROOM_S3_ENDPOINT_URL"],
        aws_access_key_id=secret["aws-access-key-id"],
        aws_secret_access_key=secret["aws-secret-access-key"],
        region_name=config["AWS_REGION"],
    )


@pytest.fixture(scope="module")
def initialised(podman: Podman, pods: dict[str, Pod], chart: Rendered) -> str:
    """The init Job's container, run to completion (it creates the bucket); returns the bucket name."""
    init = pods["init"]
    bucket = init.environment()["STRONGROOM_S3_BUCKET"]
    s3 = s3_client(chart)
    assert bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    result = podman(*init.run_args(detach=False), check=False, timeout=600)
    assert result.returncode == 0, f"init exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    s3.head_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(scope="module")
def running(podman: Podman, pods: dict[str, Pod], initialised: str) -> dict[str, Pod]:
    for component in ("worker", "beat", "api"):
        podman(*pods[component].run_args(detach=True), timeout=600)
    return pods


def diagnose(podman: Podman, pods: dict[str, Pod]) -> Callable[[], str]:
    def text() -> str:
        parts = []
        try:
            parts.append(f"--- /readyz: {http_probe(pods['api'], 'readinessProbe').text}")
        except (httpx.HTTPError, KeyError) as exc:
            parts.append(f"--- /readyz: {exc!r}")
        for component, pod in pods.items():
            state = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", pod.name, check=False)
            parts.append(f"--- {component} ({state.stdout.strip()}) ---\n{podman.logs(pod.name)[-2500:]}")
        return "\n".join(parts)

    return text


def http_probe(pod: Pod, kind: str) -> httpx.Response:
    get = pod.probe(kind)["httpGet"]
    return httpx.get(f"http://{LOOPBACK}:{pod.port(get['port'])}{get['path']}", timeout=5)


def test_init_created_the_bucket(initialised: str) -> None:
    assert initialised.startswith("sr-image-")


def test_api_healthy_and_ready_through_its_rendered_probes(podman: Podman, running: dict[str, Pod]) -> None:
    api = running["api"]
    show = diagnose(podman, running)

    def answers(kind: str) -> Callable[[], bool]:
        def check() -> bool:
            try:
                return http_probe(api, kind).status_code == 200
            except httpx.HTTPError:
                return False

        return check

    wait_until(answers("startupProbe"), 180, "startup probe (/healthz)", show)
    assert http_probe(api, "livenessProbe").status_code == 200
    # /readyz needs Redis, the bucket, and a worker heartbeat from a worker whose agent sandbox works.
    wait_until(answers("readinessProbe"), 240, "readiness probe (/readyz)", show)
    body = http_probe(api, "readinessProbe").json()
    assert body["checks"]["agent_sandbox"].get("error") is None, body


def test_worker_and_beat_rendered_liveness_commands_pass(podman: Podman, running: dict[str, Pod]) -> None:
    show = diagnose(podman, running)
    for component in ("worker", "beat"):
        pod = running[component]
        last: list[subprocess.CompletedProcess[str]] = []

        def alive(pod: Pod = pod, last: list[subprocess.CompletedProcess[str]] = last) -> bool:
            last[:] = [pod.exec_probe(podman, "livenessProbe")]
            return last[0].returncode == 0

        def why(last: list[subprocess.CompletedProcess[str]] = last) -> str:
            return f"{last}\n{show()}"

        wait_until(alive, 180, f"{component} liveness command", why)


def test_signed_create_runs_in_the_sandbox_of_the_containerised_worker(
    podman: Podman, running: dict[str, Pod], tmp_path: Path
) -> None:
    api = running["api"]
    url = f"http://{LOOPBACK}:{api.port('http')}"
    with StrongroomClient(url, generate_identity()) as client:
        created = client.create("privacy-audit", {"text": TEXT, "files": {}}, retention_days=1)
        done = client.wait(created.id, timeout=240, initial_interval=0.5, max_interval=2.0)
        assert done.status == "succeeded", f"{done.result}\n{diagnose(podman, running)()}"
        assert {a.name for a in done.artifacts.artifacts} == ARTIFACTS
        for meta in done.artifacts.artifacts:
            result = client.download(created.id, meta.name, tmp_path / meta.name)
            assert result.checksum == meta.checksum
    report = (tmp_path / "privacy_audit.md").read_text()
    assert "Privacy audit" in report
    assert "jane.doe@example.com" not in report


def test_containers_run_hardened(podman: Podman, running: dict[str, Pod]) -> None:
    for component in ("api", "worker", "beat"):
        name = running[component].name
        seen = podman(
            "exec", name, "sh", "-c",
            "id -u; id -g; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; "
            "touch /opt/venv/x 2>/dev/null && echo root-writable || echo root-read-only; "
            "touch /tmp/x && echo tmp-writable",
        ).stdout.split("\n")  # fmt: skip
        assert seen[:2] == ["10001", "10001"], (component, seen)
        assert "CapEff:\t0000000000000000" in seen and "CapBnd:\t0000000000000000" in seen, (component, seen)
        assert "NoNewPrivs:\t1" in seen, (component, seen)
        assert "root-read-only" in seen and "tmp-writable" in seen, (component, seen)


def test_sigterm_is_a_warm_shutdown(podman: Podman, running: dict[str, Pod], tmp_path: Path) -> None:
    """SIGTERM (`podman stop`, the rendered grace period) while an agent runs: the worker lets it finish, stores
    its file, and exits 0; then beat and the API exit 0 too."""
    show = diagnose(podman, running)
    url = f"http://{LOOPBACK}:{running['api'].port('http')}"
    with StrongroomClient(url, generate_identity()) as client:
        created = client.create("slow", {"prompt": "finished", "files": {}}, retention_days=1)
        wait_until(lambda: client.get(created.id).status != "pending", 120, "the slow agent to start", show)
        assert client.get(created.id).status == "running"
        for component in ("worker", "beat", "api"):
            pod = running[component]
            grace = int(pod.spec.get("terminationGracePeriodSeconds", 30))
            podman("stop", "--time", str(grace), pod.name, timeout=grace + 120)
            status, code = podman.state(pod.name)
            assert (status, code) == ("exited", 0), f"{component}: {status} {code}\n{show()}"
            if component == "worker":
                assert "Warm shutdown" in podman.logs(pod.name)
                done = client.get(created.id)
                assert done.status == "succeeded", f"{done.result}\n{show()}"
                client.download(created.id, "slow.txt", tmp_path / "slow.txt")
    assert (tmp_path / "slow.txt").read_text() == "finished\n"


PROBE = (
    "from worker_service.agents.sandbox import SandboxPolicy, probe; "
    "print('sandbox probe:', probe(SandboxPolicy()) or 'ok')"
)


def test_what_the_agent_sandbox_needs_from_the_worker_container(
    podman: Podman, image: str, chart: Rendered, files_dir: Path
) -> None:
    """The worker's start-up sandbox probe in its rendered container with parts of its sandbox settings taken
    away: each missing part fails with bwrap's own reason, and podman's default seccomp profile plus sethostname
    (narrower than the chart's Unconfined) is enough under podman."""
    worker = chart.workload("Deployment", "worker")
    rendered = worker["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert rendered.get("procMount") == "Unmasked", rendered
    hardened = {k: v for k, v in rendered.items() if k not in ("procMount", "seccompProfile", "appArmorProfile")}
    profile = seccomp_profile(files_dir / "runtime-default-with-sethostname.json")
    with_sethostname = ["--security-opt", f"seccomp={profile}"]
    variants = [
        ("masked /proc", hardened, with_sethostname, "Can't mount proc on /newroot/proc: Operation not permitted"),
        ("default seccomp", {**hardened, "procMount": "Unmasked"}, [], "Can't set hostname"),
        ("both", {**hardened, "procMount": "Unmasked"}, with_sethostname, "sandbox probe: ok"),
    ]
    for label, context, extra, expected in variants:
        variant = copy.deepcopy(worker)
        container = variant["spec"]["template"]["spec"]["containers"][0]
        container.update(securityContext=context, command=["python", "-c", PROBE], args=[])
        pod = Pod(variant, chart, image, files_dir, extra=extra)
        result = podman(*pod.run_args(detach=False, remove=True), check=False, timeout=600)
        assert result.returncode == 0 and expected in result.stdout, (label, result.stdout, result.stderr[-2000:])
