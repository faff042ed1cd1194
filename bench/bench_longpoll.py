"""How late a client sees an operation finish: the SDK's long-polling ``wait`` against its polling ``wait``, in
one run (issue 14 goal 6).

The real stack on loopback: embedded Valkey and SeaweedFS, ``strongroom api`` and ``strongroom worker`` (threads
pool). Each round creates a small ``privacy-audit`` operation and waits for it with one variant, alternately:

* **long poll**: ``StrongroomClient.wait`` (``GET ?wait=``, woken by the worker's notification);
* **polling**: ``StrongroomClient.wait(long_poll=False)``, the SDK's backoff polling (0.5 s doubling to 5 s with
  jitter), which is what ``wait`` did before.

The reference is the moment the worker's final record write completed: the worker publishes the operation id on
``layout.REDIS_STATUS_CHANNEL`` right after the write returns, and this script's own subscriber stamps its
arrival (the record's ``finished_at`` has whole seconds only). The lag is when ``wait`` returned ``succeeded``
minus that stamp, on the same clock.

    .venv/bin/python bench/bench_longpoll.py [--rounds 15]

Prints the median and 90th percentile lag of each variant, the create -> seen time and the status requests
each wait sent.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

LOOPBACK = "127.0.0.1"


class Stamps:
    """The arrival time of every status notification, per operation id (a subscriber thread of its own)."""

    def __init__(self, redis_url: str) -> None:
        import redis

        from shared.layout import REDIS_STATUS_CHANNEL

        self.client = redis.Redis.from_url(redis_url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(REDIS_STATUS_CHANNEL)
        self.seen: dict[str, list[float]] = {}
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import redis

        try:
            for message in self.pubsub.listen():
                now = time.time()
                if message.get("type") == "message":
                    with self.lock:
                        self.seen.setdefault(message["data"].decode(), []).append(now)
        except redis.ConnectionError:
            return  # Valkey stopped at the end of the run

    def last(self, operation_id: str, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                stamps = self.seen.get(operation_id)
            if stamps and len(stamps) >= 2:  # running, then the final status
                return stamps[-1]
            time.sleep(0.01)
        raise SystemExit(f"no final notification for {operation_id}")


class CountingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.status_requests = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.count("/") == 4:  # /api/v1/operations/{id}
            self.status_requests += 1
        return super().handle_request(request)


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def ready(api_url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the stack did not become ready (API + worker heartbeat)")


def one_round(client: Any, transport: CountingTransport, stamps: Stamps, long_poll: bool) -> tuple[float, ...]:
    transport.status_requests = 0
    start = time.time()
    created = client.create("privacy-audit", {"text": "mail jane.doe@example.com", "files": {}}, retention_days=1)
    done = client.wait(created.id, timeout=60, long_poll=long_poll)
    seen = time.time()
    if done.status != "succeeded":
        raise SystemExit(f"{created.id} ended {done.status}: {done.result}")
    written = stamps.last(created.id)
    return (seen - written) * 1000, (seen - start) * 1000, float(transport.status_requests)


def main() -> None:
    from shared.crypto.keyring import Keyring
    from strongroom.client import StrongroomClient
    from strongroom.client.identity import generate_identity
    from strongroom.dev.servers import S3Credentials, SeaweedServer, ValkeyServer, free_port

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="operations per variant (variants alternate)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="strongroom-bench-") as tmp:
        root = Path(tmp)
        with ValkeyServer(root / "valkey") as valkey, SeaweedServer(root / "s3", S3Credentials.generate()) as s3:
            port = free_port()
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(root),
                "REDIS_URL": valkey.url,
                "STRONGROOM_S3_ENDPOINT_URL": s3.endpoint_url,
                "AWS_ACCESS_KEY_ID": s3.access_key,
                "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                "AWS_REGION": s3.region,
                "STRONGROOM_S3_BUCKET": f"bench-{secrets.token_hex(4)}",
                "STRONGROOM_KEYRING": Keyring.generate_json(),
                "STRONGROOM_ENV": "development",
                "STRONGROOM_LOG_LEVEL": "WARNING",
                "STRONGROOM_API_HOST": LOOPBACK,
                "STRONGROOM_API_PORT": str(port),
                "STRONGROOM_PUBLIC_AUTHORITIES": f"{LOOPBACK}:{port}",
                "STRONGROOM_RATE_LIMIT_PER_MINUTE": "0",
                "STRONGROOM_WORK_DIR": str(root / "work"),
            }
            (root / "work").mkdir()
            subprocess.run([sys.executable, "-m", "strongroom", "init"], env=env, check=True, capture_output=True)
            api = start([sys.executable, "-m", "strongroom", "api"], env, root / "api.log")
            worker_argv = ["worker", "--pool", "threads", "--concurrency", "2"]
            worker = start([sys.executable, "-m", "strongroom", *worker_argv], env, root / "worker.log")
            api_url = f"http://{LOOPBACK}:{port}"
            try:
                ready(api_url)
                stamps = Stamps(valkey.url)
                transport = CountingTransport()
                with StrongroomClient(api_url, generate_identity(), transport=transport) as client:
                    variants = {"long poll": True, "polling": False}
                    for long_poll in variants.values():  # warm-up: imports, connections, the agent's first run
                        one_round(client, transport, stamps, long_poll)
                    figures: dict[str, list[tuple[float, ...]]] = {name: [] for name in variants}
                    for _ in range(args.rounds):
                        for name, long_poll in variants.items():
                            figures[name].append(one_round(client, transport, stamps, long_poll))
                report(figures, args.rounds)
            finally:
                for process in (api, worker):
                    process.terminate()
                    process.wait(timeout=30)


def report(figures: dict[str, list[tuple[float, ...]]], rounds: int) -> None:
    print(f"{rounds} operations per variant (privacy-audit, tiny input), alternating")
    print(f"{'variant':10} {'lag p50 ms':>11} {'lag p90 ms':>11} {'create->seen p50 ms':>20} {'status GETs':>12}")
    for name, rows in figures.items():
        lags = sorted(r[0] for r in rows)
        p90 = lags[min(len(lags) - 1, int(len(lags) * 0.9))]
        total = statistics.median(r[1] for r in rows)
        gets = statistics.mean(r[2] for r in rows)
        print(f"{name:10} {statistics.median(lags):11.1f} {p90:11.1f} {total:20.1f} {gets:12.1f}")
    print("lag: wait() returned 'succeeded' minus the arrival of the worker's notification of its final record write")


if __name__ == "__main__":
    main()
