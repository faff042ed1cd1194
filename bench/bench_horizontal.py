"""Horizontal scale on one machine (issue 14 goal 8): 3 API processes, 2 workers and 1 beat on one Valkey and one
SeaweedFS, with many SDK clients creating, waiting, listing, downloading and deleting at once.

Each client has its own identity and uses the three APIs in turn (any API must serve any operation). The run is
bounded by ``--seconds``; clients never retry (``max_retries=0``), so every error the servers answered is seen.
At the end the script checks what must hold whatever the load, and exits non-zero when it does not:

- no 5xx answered (the APIs' request logs) and no client error;
- no operation lost: every operation a client created is listed for its grantee and ``succeeded``;
- no operation run twice: each operation id appears in exactly one worker ``run.finished`` line;
- every download decrypted and verified (the SDK checks both SHA-256 digests), and a deleted artifact is gone
  from every API at once.

    .venv/bin/python bench/bench_horizontal.py [--clients 12] [--seconds 60]

Loopback only. Prints throughput and latency percentiles (create -> succeeded seen by the client, download).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

LOOPBACK = "127.0.0.1"
FAR = 10**9  # rate limits never reached
APIS, WORKERS = 3, 2


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "strongroom", *argv], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} never became ready:\n{log.read_text()[-3000:]}")


class Tally:
    """What every client saw, under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.created: dict[str, str] = {}  # operation id -> grantee
        self.finish_latency: list[float] = []
        self.download_latency: list[float] = []
        self.downloads = 0
        self.deletes = 0
        self.errors: list[str] = []

    def error(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)


def client_loop(urls: list[str], stop_at: float, tally: Tally, workdir: Path) -> None:
    from strongroom.client.identity import generate_identity
    from strongroom.client.sdk import StrongroomClient

    identity = generate_identity()
    clients = [StrongroomClient(url, identity, max_retries=0) for url in urls]
    rotation = itertools.cycle(clients)  # each call goes to the next API
    try:
        while time.monotonic() < stop_at:
            try:
                one_operation(lambda: next(rotation), identity.address.lower(), tally, workdir)
            except Exception as exc:
                tally.error(f"{type(exc).__name__}: {exc}")
    finally:
        for client in clients:
            client.close()


def one_operation(api: Any, grantee: str, tally: Tally, workdir: Path) -> None:
    started = time.monotonic()
    created = api().create("privacy-audit", {"text": f"contact me at someone{secrets.token_hex(2)}@example.com"})
    with tally.lock:
        tally.created[created.id] = grantee
    final = api().wait(created.id, timeout=120, initial_interval=0.1, max_interval=0.5)
    if final.status != "succeeded":
        tally.error(f"{created.id} ended {final.status}: {final.result}")
        return
    with tally.lock:
        tally.finish_latency.append(time.monotonic() - started)
    names = [a.name for a in api().artifacts(created.id).artifacts]
    for name in names:
        began = time.monotonic()
        api().download(created.id, name, workdir / f"{created.id}-{name}")  # verifies both digests
        with tally.lock:
            tally.download_latency.append(time.monotonic() - began)
            tally.downloads += 1
    api().delete(created.id, names[0])
    with tally.lock:
        tally.deletes += 1
    for client in (api(), api(), api()):  # every API, at once: no stale cache anywhere
        if names[0] in [a.name for a in client.artifacts(created.id).artifacts]:
            tally.error(f"{created.id}: deleted {names[0]} still listed by {client.api_url}")


def check(tally: Tally, urls: list[str], logs: dict[str, Path]) -> list[str]:
    """The invariants, from the clients' tally, the servers' logs and a final listing."""
    problems = list(tally.errors)
    server_errors = [
        line for name, log in logs.items() if name.startswith("api") for line in _json_lines(log)
        if line.get("event") == "request" and int(line.get("status", 0)) >= 500
        and line.get("path") != "/readyz"  # polled while the stack starts: 503 until ready, by design
    ]  # fmt: skip
    problems += [f"5xx: {line.get('method')} {line.get('path')} -> {line.get('status')}" for line in server_errors]
    finished = Counter(
        line.get("operation_id") for name, log in logs.items() if name.startswith("worker")
        for line in _json_lines(log) if line.get("event") == "run.finished"
    )  # fmt: skip
    for operation_id in tally.created:
        if finished[operation_id] != 1:
            problems.append(f"{operation_id}: finished {finished[operation_id]} times (want exactly 1)")
    return problems


def _json_lines(log: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in log.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
    return lines


def percentile(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * q))] * 1000 if values else float("nan")


def main() -> None:
    from shared.crypto.keyring import Keyring
    from shared.settings import Settings
    from shared.storage.s3 import S3ObjectStore
    from strongroom.dev.servers import S3Credentials, SeaweedServer, ValkeyServer, free_port

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="strongroom-horizontal-") as tmp:
        root = Path(tmp)
        with ValkeyServer(root / "valkey") as valkey, SeaweedServer(root / "s3", S3Credentials.generate()) as s3:
            ports = [free_port() for _ in range(APIS)]
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(root),
                "REDIS_URL": valkey.url,
                "STRONGROOM_S3_ENDPOINT_URL": s3.endpoint_url,
                "AWS_ACCESS_KEY_ID": s3.access_key,
                "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                "AWS_REGION": s3.region,
                "STRONGROOM_S3_BUCKET": f"horizontal-{secrets.token_hex(4)}",
                "STRONGROOM_KEYRING": Keyring.generate_json(),
                "STRONGROOM_ENV": "development",
                "STRONGROOM_LOG_FORMAT": "json",
                "STRONGROOM_API_HOST": LOOPBACK,
                "STRONGROOM_PUBLIC_AUTHORITIES": ",".join(f"{LOOPBACK}:{port}" for port in ports),
                "STRONGROOM_RATE_LIMIT_PER_MINUTE": str(FAR),
                "STRONGROOM_AUTH_FAILURES_PER_MINUTE": str(FAR),
            }
            settings = Settings.from_env(env)
            S3ObjectStore.from_settings(settings).ensure_bucket(expire_after_days=settings.lifecycle_days)
            logs: dict[str, Path] = {}
            processes: list[subprocess.Popen[bytes]] = []
            try:
                for index in range(WORKERS):
                    logs[f"worker{index}"] = root / f"worker{index}.log"
                    work = {**env, "STRONGROOM_WORK_DIR": str(root / f"work{index}")}
                    processes.append(start(["worker"], work, logs[f"worker{index}"]))
                logs["beat"] = root / "beat.log"
                processes.append(start(["beat"], {**env, "STRONGROOM_WORK_DIR": str(root / "beat")}, logs["beat"]))
                urls = []
                for index, port in enumerate(ports):
                    logs[f"api{index}"] = root / f"api{index}.log"
                    api = start(["api"], {**env, "STRONGROOM_API_PORT": str(port)}, logs[f"api{index}"])
                    processes.append(api)
                    urls.append(f"http://{LOOPBACK}:{port}")
                    wait_ready(urls[-1], api, logs[f"api{index}"])
                run(args, urls, logs, root)
            finally:
                for process in processes:
                    process.terminate()
                for process in processes:
                    try:
                        process.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        process.kill()


def run(args: argparse.Namespace, urls: list[str], logs: dict[str, Path], root: Path) -> None:
    tally = Tally()
    downloads = root / "downloads"
    downloads.mkdir()
    began = time.monotonic()
    stop_at = began + args.seconds
    threads = [
        threading.Thread(target=client_loop, args=(urls, stop_at, tally, downloads), daemon=True)
        for _ in range(args.clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=args.seconds + 180)
    elapsed = time.monotonic() - began
    time.sleep(2)  # let the last log lines reach the files
    problems = check(tally, urls, logs)
    done = len(tally.finish_latency)
    print(f"{APIS} APIs, {WORKERS} workers, 1 beat; {args.clients} clients for {elapsed:.0f} s")
    print(f"operations created {len(tally.created)}, succeeded and fetched {done} ({done / elapsed:.2f}/s)")
    print(f"downloads {tally.downloads} ({tally.downloads / elapsed:.2f}/s), deletes {tally.deletes}")
    print(
        f"create -> succeeded seen: p50 {percentile(tally.finish_latency, 0.5):.0f} ms, "
        f"p99 {percentile(tally.finish_latency, 0.99):.0f} ms"
    )
    print(
        f"download + verify + decrypt: p50 {percentile(tally.download_latency, 0.5):.0f} ms, "
        f"p99 {percentile(tally.download_latency, 0.99):.0f} ms"
    )
    if tally.finish_latency:
        print(f"mean create -> succeeded {statistics.mean(tally.finish_latency) * 1000:.0f} ms")
    print(f"problems: {len(problems)}")
    for problem in problems[:20]:
        print(f"  {problem}")
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
