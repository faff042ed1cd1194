"""The signed API under load, against its floor, in one run: the real ``strongroom api`` process against the
embedded Valkey and SeaweedFS, and a bare Starlette app doing one coincurve recover + one boto3 presign per
request, served by the same uvicorn settings (uvloop, httptools, one process pinned to CPU 0).

An operation with ``--artifacts`` artifacts is written straight through ``OperationStore``; ``--requests``
distinct requests per path are signed up front and each replayed once, with keep-alive over ``--connections``
connections, by a client process pinned to CPU 1 (a small asyncio HTTP/1.1 client: httpx would be the
bottleneck). The per-address rate limit is raised so it never triggers. Loopback only; bounded in time.

    .venv/bin/python bench/bench_load.py [--requests 2000] [--connections 32] [--rounds 2]

Prints req/s, p50/p99 per path and the ratio of each to the bare app measured in the same run, and the server
process's CPU time per request (from ``/proc``) with the same ratio: on a shared machine the CPU ratio is the
steadier figure, since req/s also measures whoever else is using the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

KEY = "0x" + "42" * 32
LOOPBACK = "127.0.0.1"
SERVER_CPU, CLIENT_CPU = 0, 1
FAR = 10**9  # a rate limit never reached


# --- the baseline app ------------------------------------------------------------------------------------------


def baseline_app() -> Any:
    """One EIP-191 recovery and one boto3 presign per request: what the download-URL request cannot avoid."""
    import boto3
    import coincurve
    from botocore.config import Config
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    digest = hashlib.sha3_256(b"bench").digest()
    signature = coincurve.PrivateKey(bytes.fromhex(KEY[2:])).sign_recoverable(digest, hasher=None)
    s3 = boto3.client(
        "s3",
        endpoint_url=os.environ["STRONGROOM_S3_ENDPOINT_URL"],
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )

    async def ticket(request: Any) -> JSONResponse:
        coincurve.PublicKey.from_signature_and_message(signature, digest, hasher=None)
        url = s3.generate_presigned_url(
            "get_object", Params={"Bucket": "bench", "Key": request.path_params["name"]}, ExpiresIn=300
        )
        return JSONResponse({"url": url})

    return Starlette(routes=[Route("/t/{name}", ticket)])


def serve_baseline(port: int) -> None:
    import uvicorn

    uvicorn.run(baseline_app(), host=LOOPBACK, port=port, loop="uvloop", http="httptools", log_level="warning")


# --- the client ------------------------------------------------------------------------------------------------


async def _connection(port: int, queue: list[bytes], latencies: list[float], statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        while queue:
            raw = queue.pop()
            start = time.perf_counter()
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


def _replay(port: int, requests: list[bytes], connections: int, out: Any) -> None:
    os.sched_setaffinity(0, {CLIENT_CPU})
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = list(reversed(requests))

    async def run() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(_connection(port, queue, latencies, statuses) for _ in range(connections)))
        return time.perf_counter() - start

    elapsed = asyncio.run(run())
    out.send((len(latencies) / elapsed, latencies, statuses))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (``/proc/<pid>/stat``), to charge each request its server CPU."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def replay(port: int, pid: int, requests: list[bytes], connections: int) -> tuple[float, float, float, float, dict]:
    """(req/s, p50 ms, p99 ms, server CPU ms per request, status counts), from a separate client process pinned
    to its own CPU. The CPU figure barely depends on what else the machine runs; req/s does."""
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.Process(target=_replay, args=(port, requests, connections, child))
    before = cpu_seconds(pid)
    process.start()
    rate, latencies, statuses = parent.recv()
    cpu = (cpu_seconds(pid) - before) * 1000 / len(requests)
    process.join(timeout=60)
    latencies.sort()
    p50, p99 = latencies[len(latencies) // 2] * 1000, latencies[int(len(latencies) * 0.99)] * 1000
    return rate, p50, p99, cpu, statuses


def raw_request(method: str, port: int, target: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {LOOPBACK}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def signed_requests(port: int, target: str, n: int, accept: str) -> list[bytes]:
    from shared.auth.signer import sign_request

    url = f"http://{LOOPBACK}:{port}{target}"
    now = int(time.time())
    return [
        raw_request("GET", port, target, {**sign_request(KEY, "GET", url, created=now, ttl=290), "Accept": accept})
        for _ in range(n)
    ]


# --- the stack -------------------------------------------------------------------------------------------------


def seed(env: dict[str, str], artifacts: int) -> str:
    """One succeeded operation of the bench signer with ``artifacts`` artifacts, written through the store."""
    from eth_account import Account

    from shared.crypto.keyring import Keyring
    from shared.layout import new_operation_id
    from shared.models import OperationRecord, expiry, utcnow
    from shared.records import OperationStore
    from shared.settings import Settings
    from shared.storage.s3 import S3ObjectStore

    settings = Settings.from_env(env)
    store = S3ObjectStore.from_settings(settings)
    store.ensure_bucket(cors_origins=settings.s3_cors_origins, expire_after_days=settings.lifecycle_days)
    now = utcnow()
    digest = "sha256:" + "0" * 64
    wrapped = {"version": "x25519-xsalsa20-poly1305", "nonce": "n", "ephemPublicKey": "k", "ciphertext": "c"}
    record = OperationRecord(
        id=new_operation_id("bench"),
        agent="bench",
        grantee=Account.from_key(KEY).address.lower(),
        encryption_public_key="bench",
        status="succeeded",
        created_at=now,
        expires_at=expiry(now, 7),
        finished_at=now + timedelta(seconds=1),
        artifacts=[
            {
                "name": f"file-{i:02d}.txt",
                "size": 1000,
                "content_type": "text/plain",
                "created_at": now,
                "checksum": digest,
                "ciphertext_checksum": digest,
                "ciphertext_size": 1100,
                "encryption": {"wrapped_key": wrapped},
            }
            for i in range(artifacts)
        ],
    )
    OperationStore(store, Keyring.from_settings(settings)).put(record)
    return record.id


def start(argv: list[str], env: dict[str, str], log: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    os.sched_setaffinity(process.pid, {SERVER_CPU})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://{LOOPBACK}:{port}/healthz", timeout=1).status_code < 500:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"{argv} did not start:\n{log.read_text()[-3000:]}")


def main() -> None:
    from strongroom.dev.servers import S3Credentials, SeaweedServer, ValkeyServer, free_port

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="distinct signed requests per path and round")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="rounds (paths alternated); medians are printed")
    parser.add_argument("--artifacts", type=int, default=50)
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="also record the API process with py-spy during the measured rounds (collapsed stacks to FILE; "
        "costs some CPU on the client's core, so figures of a profiled run are not comparable)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="strongroom-bench-") as tmp:
        root = Path(tmp)
        with ValkeyServer(root / "valkey") as valkey, SeaweedServer(root / "s3", S3Credentials.generate()) as s3:
            api_port, base_port = free_port(), free_port()
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(root),
                "REDIS_URL": valkey.url,
                "STRONGROOM_S3_ENDPOINT_URL": s3.endpoint_url,
                "AWS_ACCESS_KEY_ID": s3.access_key,
                "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                "AWS_REGION": s3.region,
                "STRONGROOM_S3_BUCKET": f"bench-{secrets.token_hex(4)}",
                "STRONGROOM_KEYRING": _keyring(),
                "STRONGROOM_ENV": "development",
                "STRONGROOM_LOG_LEVEL": "WARNING",
                "STRONGROOM_API_HOST": LOOPBACK,
                "STRONGROOM_API_PORT": str(api_port),
                "STRONGROOM_PUBLIC_AUTHORITIES": f"{LOOPBACK}:{api_port}",
                "STRONGROOM_RATE_LIMIT_PER_MINUTE": str(FAR),
                "STRONGROOM_AUTH_FAILURES_PER_MINUTE": str(FAR),
                "STRONGROOM_WORK_DIR": str(root / "work"),
            }
            operation_id = seed(env, args.artifacts)
            api = start([sys.executable, "-m", "strongroom", "api"], env, root / "api.log", api_port)
            base = start(
                [sys.executable, __file__, "--serve-baseline", str(base_port)],
                env,
                root / "baseline.log",
                base_port,
            )
            try:
                run(args, {"api": (api_port, api.pid), "bare": (base_port, base.pid)}, operation_id)
            finally:
                for process in (api, base):
                    process.terminate()
                    process.wait(timeout=10)


def _profiler(path: str, pid: int) -> subprocess.Popen[bytes]:
    """py-spy sampling the API (100 Hz, without pausing it) until interrupted; on the client's core."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        raise SystemExit(f"--profile needs py-spy beside {sys.executable}: pip install py-spy (not a dependency)")
    argv = [str(spy), "record", "--nonblocking", "--pid", str(pid), "--rate", "100", "--format", "raw", "-o", path]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.sched_setaffinity(process.pid, {CLIENT_CPU})
    time.sleep(1)  # attached before the first measured request
    return process


def _keyring() -> str:
    from shared.crypto.keyring import Keyring

    return Keyring.generate_json()


def run(args: argparse.Namespace, servers: dict[str, tuple[int, int]], operation_id: str) -> None:
    (api_port, _), (base_port, _) = servers["api"], servers["bare"]
    prefix = f"/api/v1/operations/{operation_id}"
    paths: dict[str, Any] = {
        "bare recover+presign": lambda: [raw_request("GET", base_port, f"/t/{i}", {}) for i in range(args.requests)],
        "download URL (JSON)": lambda: signed_requests(
            api_port, f"{prefix}/artifacts/file-07.txt", args.requests, "application/json"
        ),
        "operation status": lambda: signed_requests(api_port, prefix, args.requests, "application/json"),
        f"artifact list ({args.artifacts})": lambda: signed_requests(
            api_port, f"{prefix}/artifacts", args.requests, "application/json"
        ),
        "healthz": lambda: [raw_request("GET", api_port, "/healthz", {}) for _ in range(args.requests)],
    }
    figures: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in paths}
    for name, build in paths.items():  # warm-up: imports, connections, caches
        port, pid = servers["bare" if name.startswith("bare") else "api"]
        replay(port, pid, build()[: max(100, args.requests // 10)], args.connections)
    spy = _profiler(args.profile, servers["api"][1]) if args.profile else None
    for _ in range(args.rounds):
        for name, build in paths.items():
            port, pid = servers["bare" if name.startswith("bare") else "api"]
            rate, p50, p99, cpu, statuses = replay(port, pid, build(), args.connections)
            if set(statuses) != {200}:
                raise SystemExit(f"{name}: unexpected statuses {statuses}")
            figures[name].append((rate, p50, p99, cpu))
    if spy is not None:
        spy.send_signal(2)  # py-spy writes its file on SIGINT
        spy.wait(timeout=60)
    bare = figures["bare recover+presign"]
    floor, floor_cpu = statistics.median(f[0] for f in bare), statistics.median(f[3] for f in bare)
    print(f"median of {args.rounds} rounds, {args.requests} requests each, {args.connections} connections")
    print(f"{'path':26} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'/ bare':>7} {'CPU ms/req':>11} {'bare/CPU':>9}")
    for name, rounds in figures.items():
        rate, p50, p99, cpu = (statistics.median(f[i] for f in rounds) for i in range(4))
        print(f"{name:26} {rate:7.0f} {p50:7.1f} {p99:7.1f} {rate / floor:7.2f} {cpu:11.3f} {floor_cpu / cpu:9.2f}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-baseline":
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "x")
        serve_baseline(int(sys.argv[2]))
    else:
        main()
