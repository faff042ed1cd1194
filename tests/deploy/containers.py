"""podman for the image tests, and a translator from the chart's rendered pod specs to `podman run` arguments.

podman gets storage of its own (vfs, under the strongroom cache directory, ``$STRONGROOM_CACHE_DIR``), so the
tests never touch a machine's default container storage, and the debootstrap base and the build's layer cache
survive between runs on one machine. Containers run with runc (see ``RUNTIME_ARGS``).

The translator runs a rendered container as Kubernetes would, as far as one host allows: exactly the rendered
args (``$(VAR)`` expanded the way the kubelet does), env and envFrom (ConfigMap and Secret values taken from the
same rendering), mounted Secret files (``defaultMode``, group ``fsGroup``), emptyDirs as host directories
owned like the kubelet makes them (``root:fsGroup``, mode 2777), and the pod's and container's security context.
What it cannot reproduce is said in ``Pod`` below.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.helm import cache_dir

# runc, not crun: Debian's crun failed to start containers on these hosts. podman's default RLIMIT_NOFILE/NPROC
# (1048576) are above the hard limits a CI sandbox grants, and without CAP_SYS_RESOURCE runc cannot raise them
# ("error setting rlimit type 7: operation not permitted"): ask for limits any host allows. 1024 open files is
# also what each agent run gets.
RUNTIME_ARGS = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]

# What the agent sandbox (bwrap) needs from the worker's container, found by running the worker's own start-up probe
# (worker_service.agents.sandbox.probe) in the hardened container (tests/deploy/test_image.py checks each step):
#
# 1. An unmasked /proc: podman ``unmask=/proc/*``, Kubernetes ``procMount: Unmasked``, Docker
#    ``systempaths=unconfined``. bwrap mounts a new procfs for its PID namespace, and the kernel refuses that
#    (bwrap: "Can't mount proc on /newroot/proc: Operation not permitted") while anything is mounted over part of
#    the container's /proc: runtimes mask /proc/kcore, /proc/keys, /proc/timer_list... and remount /proc/sys,
#    /proc/bus... read-only, so that procfs is not "fully visible". Unmasking only the directories still fails.
# 2. ``sethostname`` allowed by seccomp. The sandbox names its UTS namespace (bwrap ``--hostname``); podman's
#    default profile allows sethostname only to a container holding CAP_SYS_ADMIN, so it fails with EPERM ("Can't
#    set hostname to strongroom-agent") although the call is made in the sandbox's own user and UTS namespaces.
#    podman's default profile already allows unshare, mount and pivot_root; containerd's, CRI-O's and Docker's do
#    not without CAP_SYS_ADMIN, which is why the chart's worker asks for ``Unconfined`` (docs/deploy.md).
# Not needed under podman: any capability, ``label=disable`` (no SELinux here), an unconfined seccomp profile
# (``seccomp_profile`` below is enough: podman's default with that one rule changed).
PROC_UNMASKED = ["--security-opt", "unmask=/proc/*"]
DEFAULT_SECCOMP = Path("/usr/share/containers/seccomp.json")  # containers-common: podman's default profile
HOSTNAME_CALLS = {"sethostname", "setdomainname"}


def seccomp_profile(path: Path, default: Path = DEFAULT_SECCOMP) -> Path:
    """podman's default seccomp profile, except that sethostname/setdomainname are allowed without CAP_SYS_ADMIN."""
    profile = json.loads(default.read_text())
    for rule in profile["syscalls"]:
        if HOSTNAME_CALLS & set(rule["names"]) and (rule.get("includes") or rule.get("excludes")):
            rule["names"] = [name for name in rule["names"] if name not in HOSTNAME_CALLS]
    profile["syscalls"].append({"names": sorted(HOSTNAME_CALLS), "action": "SCMP_ACT_ALLOW", "args": []})
    path.write_text(json.dumps(profile))
    return path


class PodmanError(RuntimeError):
    pass


class Podman:
    """`podman` with its own vfs storage under ``root`` (every call sees the same CONTAINERS_* configuration)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        # Run-time state (locks, container state) of this storage only: two storages must not share one.
        key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
        run_root = Path(f"/run/strongroom-podman/{key}") if os.geteuid() == 0 else root / "run"
        storage = root / "storage.conf"
        storage.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{root / "storage"}"\nrunroot = "{run_root}"\n')
        engine = root / "containers.conf"
        engine.write_text(
            '[containers]\nlog_driver = "k8s-file"\n\n[engine]\nevents_logger = "file"\ncgroup_manager = "cgroupfs"\n'
        )
        self.env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(storage), "CONTAINERS_CONF": str(engine)}

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 300, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *args], env=self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise PodmanError(f"podman {' '.join(args[:3])} ... exited {result.returncode}:\n{result.stderr[-4000:]}")
        return result

    def logs(self, name: str) -> str:
        result = self("logs", name, check=False, timeout=60)
        return result.stdout + result.stderr

    def state(self, name: str) -> tuple[str, int]:
        out = self("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name, timeout=60).stdout.split()
        return out[0], int(out[1])


def podman_root() -> Path:
    return cache_dir() / "podman"


# --- the chart's rendered objects -----------------------------------------------------------------------------

Manifest = dict[str, Any]
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion: a defined variable is replaced, an undefined reference stays, ``$$``
    is a literal ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _VAR_REF.sub(replace, text)


def _string_data(obj: Manifest) -> dict[str, str]:
    raw = obj.get("data") or {}
    data = dict(raw) if obj["kind"] == "ConfigMap" else {k: base64.b64decode(v).decode() for k, v in raw.items()}
    data.update(obj.get("stringData") or {})
    return data


@dataclass
class Rendered:
    """Every object of one `helm template`, looked up by kind and name."""

    objects: list[Manifest]

    def get(self, kind: str, name: str) -> Manifest:
        for obj in self.objects:
            if obj["kind"] == kind and obj["metadata"]["name"] == name:
                return obj
        raise KeyError(f"{kind}/{name} is not in the rendering")

    def workload(self, kind: str, component: str) -> Manifest:
        for obj in self.objects:
            labels = obj["metadata"].get("labels") or {}
            if obj["kind"] == kind and labels.get("app.kubernetes.io/component") == component:
                return obj
        raise KeyError(f"no {kind} of component {component}")

    def data(self, kind: str, name: str) -> dict[str, str]:
        return _string_data(self.get(kind, name))


@dataclass
class Pod:
    """One container of a rendered workload, as a `podman run` command line.

    Differences from a cluster, all forced by running on one host: ``hostUsers: false`` is not reproduced (the
    containers share the host's user namespace; podman 4.3 here has no per-container idmapped volumes, and the
    test runs as root without subordinate ID ranges), so the worker's ``procMount: Unmasked`` is applied without the
    user namespace Kubernetes requires around it; the network is the host's (so the containers reach the test's
    Valkey and SeaweedFS on 127.0.0.1 and every port of every "pod" shares one namespace; the test renders distinct
    ports); resource limits are not applied (cgroup v1 inside a CI sandbox); emptyDir
    ``sizeLimit`` (an eviction threshold in Kubernetes, not a mount size) is not enforced; Secret files are plain
    files, not the kubelet's ``..data`` symlink farm. ``extra`` holds what the test adds on purpose and says why.
    """

    workload: Manifest
    rendered: Rendered
    image: str
    files_dir: Path
    extra: list[str] = field(default_factory=list)
    name: str = ""

    def __post_init__(self) -> None:
        component = self.workload["metadata"]["labels"]["app.kubernetes.io/component"]
        self.name = self.name or f"sr-{component}-{secrets.token_hex(3)}"

    @property
    def spec(self) -> Manifest:
        return self.workload["spec"]["template"]["spec"]

    @property
    def container(self) -> Manifest:
        containers = self.spec["containers"]
        assert len(containers) == 1, "one container per strongroom pod"
        return containers[0]

    def environment(self) -> dict[str, str]:
        """envFrom, then env in order (each may refer to earlier ones with $(VAR)), as the kubelet builds it."""
        env: dict[str, str] = {}
        for source in self.container.get("envFrom") or []:
            if "configMapRef" in source:
                env.update(self.rendered.data("ConfigMap", source["configMapRef"]["name"]))
            elif "secretRef" in source:
                env.update(self.rendered.data("Secret", source["secretRef"]["name"]))
        for var in self.container.get("env") or []:
            if "value" in var:
                env[var["name"]] = expand(str(var["value"]), env)
                continue
            ref = var["valueFrom"]
            if "fieldRef" in ref:
                assert ref["fieldRef"]["fieldPath"] == "metadata.name", ref
                env[var["name"]] = self.name
            elif "secretKeyRef" in ref or "configMapKeyRef" in ref:
                kind = "Secret" if "secretKeyRef" in ref else "ConfigMap"
                key_ref = ref["secretKeyRef"] if kind == "Secret" else ref["configMapKeyRef"]
                values = self.rendered.data(kind, key_ref["name"])
                if key_ref["key"] in values:
                    env[var["name"]] = values[key_ref["key"]]
                elif not key_ref.get("optional"):
                    raise KeyError(f"{kind} {key_ref['name']} has no key {key_ref['key']} (not optional)")
            else:
                raise NotImplementedError(f"env source {ref}")
        return env

    def security_args(self) -> list[str]:
        pod = self.spec.get("securityContext") or {}
        ctx = {**pod, **(self.container.get("securityContext") or {})}
        args = ["--user", f"{ctx['runAsUser']}:{ctx.get('runAsGroup', ctx['runAsUser'])}"]
        if "fsGroup" in pod:
            args += ["--group-add", str(pod["fsGroup"])]
        if ctx.get("readOnlyRootFilesystem"):
            args += ["--read-only", "--read-only-tmpfs=false"]  # podman would otherwise add its own tmpfs mounts
        for cap in (ctx.get("capabilities") or {}).get("drop") or []:
            args += ["--cap-drop", cap]
        for cap in (ctx.get("capabilities") or {}).get("add") or []:
            args += ["--cap-add", cap]
        if ctx.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        seccomp = (ctx.get("seccompProfile") or {}).get("type", "RuntimeDefault")
        assert seccomp in ("RuntimeDefault", "Unconfined"), seccomp  # RuntimeDefault: podman's default profile
        if seccomp == "Unconfined":
            args += ["--security-opt", "seccomp=unconfined"]
        apparmor = (ctx.get("appArmorProfile") or {}).get("type", "RuntimeDefault")
        assert apparmor in ("RuntimeDefault", "Unconfined"), apparmor
        if apparmor == "Unconfined":
            args += ["--security-opt", "apparmor=unconfined"]
        if ctx.get("procMount") == "Unmasked":
            args += PROC_UNMASKED
        assert not ctx.get("privileged"), "a strongroom container is never privileged"
        return args

    def volume_args(self) -> list[str]:
        fs_group = (self.spec.get("securityContext") or {}).get("fsGroup")
        volumes = {v["name"]: v for v in self.spec.get("volumes") or []}
        args: list[str] = []
        for mount in self.container.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            target = mount["mountPath"]
            if "emptyDir" in volume:
                # A directory on the node's disk, as the kubelet makes it: 0777, then for fsGroup owned by that
                # group with the setgid bit (files created inside belong to the group).
                directory = self.files_dir / f"{self.name}-emptydir-{mount['name']}"
                directory.mkdir()
                if fs_group is not None:
                    os.chown(directory, 0, fs_group)
                directory.chmod(0o2777 if fs_group is not None else 0o777)
                args += ["--volume", f"{directory}:{target}"]
            elif "secret" in volume or "configMap" in volume:
                kind = "Secret" if "secret" in volume else "ConfigMap"
                source = volume["secret"] if kind == "Secret" else volume["configMap"]
                name = source.get("secretName") or source.get("name")
                directory = self._files(kind, name, source, fs_group)
                args += ["--volume", f"{directory}:{target}:ro" if mount.get("readOnly") else f"{directory}:{target}"]
            else:
                raise NotImplementedError(f"volume {volume}")
        return args

    def _files(self, kind: str, name: str, source: Manifest, fs_group: int | None) -> Path:
        values = self.rendered.data(kind, name)
        directory = self.files_dir / f"{self.name}-{kind.lower()}-{name}"
        directory.mkdir(parents=True)
        directory.chmod(0o755)
        mode = int(source.get("defaultMode", 0o644))
        items = source.get("items") or [{"key": k, "path": k} for k in values]
        for item in items:
            path = directory / item["path"]
            path.write_text(values[item["key"]])
            path.chmod(int(item.get("mode", mode)))
            if fs_group is not None:
                os.chown(path, 0, fs_group)
        return directory

    def run_args(self, *, detach: bool, remove: bool = False) -> list[str]:
        env = self.environment()
        args = [expand(a, env) for a in self.container.get("args") or []]
        command = [expand(a, env) for a in self.container.get("command") or []]
        argv = ["run", "--name", self.name, "--hostname", self.name, "--network", "host", "--pull", "never"]
        argv += ["--detach"] if detach else []
        argv += ["--rm"] if remove else []
        argv += RUNTIME_ARGS + self.security_args() + self.volume_args() + self.extra
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        if command:
            argv += ["--entrypoint", command[0]]
            args = command[1:] + args
        return [*argv, self.image, *args]

    def port(self, name_or_number: str | int) -> int:
        if isinstance(name_or_number, int):
            return name_or_number
        for port in self.container.get("ports") or []:
            if port["name"] == name_or_number:
                return int(port["containerPort"])
        raise KeyError(f"no port named {name_or_number}")

    def probe(self, kind: str) -> Manifest:
        return self.container[kind]

    def exec_probe(self, podman: Podman, kind: str) -> subprocess.CompletedProcess[str]:
        """Run the rendered exec probe inside the running container, as the kubelet would."""
        command: Sequence[str] = self.probe(kind)["exec"]["command"]
        return podman("exec", self.name, *command, check=False, timeout=120)
