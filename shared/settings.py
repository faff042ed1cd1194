"""One typed settings object, read from the environment in one place.

Every option is an environment variable (``STRONGROOM_*``, plus ``REDIS_URL`` and the usual ``AWS_*`` names that
boto3 users expect). ``Settings.from_env()`` validates everything up front so a process with a bad value stops at
start-up with one line naming the variable, instead of failing on the first request. Settings are never created at
import time: callers build them and pass them down, which keeps tests free to inject their own mapping.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

from shared.errors import ConfigError
from shared.logging import register_secrets

T = TypeVar("T")

DeliveryMode = Literal["presigned", "proxy"]
EmbeddedMode = Literal["on", "deprecated", "off"]
LogFormat = Literal["json", "console"]


@dataclass(frozen=True)
class Option:
    """Documentation for one environment variable; README's configuration table is generated from these."""

    name: str
    default: str
    help: str


def _opt(name: str, default: str, help: str) -> Any:
    return field(metadata={"option": Option(name, default, help)})


@dataclass(frozen=True)
class Settings:
    # --- process and logging ---
    env: Literal["development", "production"] = _opt(
        "STRONGROOM_ENV", "production", "`development` or `production`; picks defaults such as log format."
    )
    log_level: str = _opt("STRONGROOM_LOG_LEVEL", "INFO", "Minimum log level (DEBUG, INFO, WARNING, ERROR).")
    log_format: LogFormat = _opt(
        "STRONGROOM_LOG_FORMAT", "", "`json` or `console`; default json in production, console in development."
    )

    # --- Redis ---
    redis_url: str = _opt("REDIS_URL", "", "Redis URL for tasks, nonces, rate limits and events (required).")

    # --- S3 ---
    s3_endpoint_url: str | None = _opt(
        "STRONGROOM_S3_ENDPOINT_URL", "", "S3 endpoint (MinIO, SeaweedFS...); empty means AWS."
    )
    s3_public_endpoint_url: str | None = _opt(
        "STRONGROOM_S3_PUBLIC_ENDPOINT_URL",
        "",
        "Endpoint used in presigned URLs when clients reach S3 by another address; default the endpoint.",
    )
    s3_bucket: str = _opt("STRONGROOM_S3_BUCKET", "strongroom", "Bucket holding every durable byte.")
    s3_region: str = _opt("AWS_REGION", "us-east-1", "S3 region.")
    s3_access_key_id: str | None = _opt(
        "AWS_ACCESS_KEY_ID", "", "S3 access key; empty uses boto3's default credential chain."
    )
    s3_secret_access_key: str | None = _opt("AWS_SECRET_ACCESS_KEY", "", "S3 secret key.")
    s3_addressing_style: Literal["auto", "path", "virtual"] = _opt(
        "STRONGROOM_S3_ADDRESSING_STYLE", "path", "`path`, `virtual` or `auto`."
    )
    s3_sse: Literal["none", "AES256", "aws:kms"] = _opt(
        "STRONGROOM_S3_SSE", "none", "S3 server-side encryption as a second layer: `none`, `AES256`, `aws:kms`."
    )
    s3_sse_kms_key_id: str | None = _opt(
        "STRONGROOM_S3_SSE_KMS_KEY_ID", "", "KMS key id when STRONGROOM_S3_SSE=aws:kms."
    )
    s3_cors_origins: tuple[str, ...] = _opt(
        "STRONGROOM_S3_CORS_ORIGINS",
        "",
        "Comma-separated origins allowed to fetch presigned URLs from a browser (bucket CORS rule).",
    )

    # --- server keyring (metadata encryption at rest) ---
    keyring: str | None = _opt(
        "STRONGROOM_KEYRING",
        "",
        'Server keyring JSON `{"primary": "<id>", "keys": {"<id>": "<base64 32 bytes>"}}`. Never logged.',
    )
    keyring_file: Path | None = _opt(
        "STRONGROOM_KEYRING_FILE", "", "Path of a file holding the keyring JSON (a mounted secret)."
    )

    # --- API ---
    api_host: str = _opt("STRONGROOM_API_HOST", "127.0.0.1", "Address the API listens on.")
    api_port: int = _opt("STRONGROOM_API_PORT", "8080", "Port the API listens on.")
    api_metrics_port: int = _opt(
        "STRONGROOM_API_METRICS_PORT",
        "0",
        "Port of the API's Prometheus `/metrics`, bound on STRONGROOM_API_HOST, apart from the public port (the "
        "image and chart use 9090); 0 serves `/metrics` on the API port itself (development only).",
    )
    public_authorities: tuple[str, ...] = _opt(
        "STRONGROOM_PUBLIC_AUTHORITIES",
        "",
        "Comma-separated `host[:port]` clients may sign as `@authority` (lowercase, port only if not the scheme's "
        "default). Required in production: a signature binds `@authority`, so if any Host is accepted a request "
        "captured for one deployment can be replayed once at another. Empty (development only): the request's Host.",
    )
    public_path_prefix: str = _opt(
        "STRONGROOM_PUBLIC_PATH_PREFIX", "", "Path prefix an ingress strips before the API (e.g. `/strongroom`)."
    )
    trusted_proxies: tuple[str, ...] = _opt(
        "STRONGROOM_TRUSTED_PROXIES",
        "",
        "Comma-separated CIDRs whose X-Forwarded-Host/-Proto/-Prefix headers are trusted.",
    )
    cors_origins: tuple[str, ...] = _opt(
        "STRONGROOM_CORS_ORIGINS", "", "Comma-separated browser origins allowed to call the API."
    )
    delivery_mode: DeliveryMode = _opt(
        "STRONGROOM_DELIVERY_MODE", "presigned", "`presigned` (307 to S3) or `proxy` (stream through the API)."
    )
    presign_ttl: int = _opt("STRONGROOM_PRESIGN_TTL", "300", "Lifetime of presigned download URLs, seconds.")
    max_input_bytes: int = _opt(
        "STRONGROOM_MAX_INPUT_BYTES", "1048576", "Largest accepted request body for creating an operation."
    )
    max_header_count: int = _opt(
        "STRONGROOM_MAX_HEADER_COUNT", "100", "Most header fields a request may carry (more: 431)."
    )
    max_header_bytes: int = _opt(
        "STRONGROOM_MAX_HEADER_BYTES", "32768", "Largest request line plus headers, bytes (more: 431)."
    )
    embedded_artifacts: EmbeddedMode = _opt(
        "STRONGROOM_EMBEDDED_ARTIFACTS", "off", "Legacy base64 artifacts in status: `on`, `deprecated`, `off`."
    )
    embedded_max_size: int = _opt(
        "STRONGROOM_EMBEDDED_MAX_SIZE", "1048576", "Largest artifact embedded as base64 (legacy modes)."
    )
    embedded_sunset: str = _opt(
        "STRONGROOM_EMBEDDED_SUNSET",
        "Fri, 01 Jan 2027 00:00:00 GMT",
        "HTTP date sent in the Sunset header in `deprecated` mode.",
    )

    # --- signed requests ---
    signature_max_window: int = _opt(
        "STRONGROOM_SIGNATURE_MAX_WINDOW", "300", "Largest accepted `expires - created`, seconds."
    )
    signature_clock_skew: int = _opt(
        "STRONGROOM_SIGNATURE_CLOCK_SKEW", "60", "Accepted clock skew for `created`, seconds."
    )
    allowed_chain_ids: tuple[int, ...] = _opt(
        "STRONGROOM_ALLOWED_CHAIN_IDS", "1", "Comma-separated chain ids accepted in `keyid`."
    )
    eth_rpc_url: str | None = _opt(
        "STRONGROOM_ETH_RPC_URL", "", "JSON-RPC endpoint for ERC-1271 contract wallets; empty refuses them."
    )
    eth_rpc_timeout: float = _opt("STRONGROOM_ETH_RPC_TIMEOUT", "3", "ERC-1271 call timeout, seconds.")
    rate_limit_per_minute: int = _opt(
        "STRONGROOM_RATE_LIMIT_PER_MINUTE", "600", "Signed requests per address per minute (0 disables)."
    )
    auth_failures_per_minute: int = _opt(
        "STRONGROOM_AUTH_FAILURES_PER_MINUTE",
        "60",
        "Refused signed requests per client IP (IPv6: per /64) per minute before 429; bounds the audit events "
        "and ERC-1271 RPC calls unauthenticated traffic can cause. Counted in Redis, fail closed (0 disables).",
    )
    eth_rpc_calls_per_minute: int = _opt(
        "STRONGROOM_ETH_RPC_CALLS_PER_MINUTE",
        "600",
        "ERC-1271 RPC calls (eth_getCode/eth_call not answered from cache) all API replicas together make per "
        "minute; past it contract-wallet signatures get 503 `rpc_busy` with Retry-After until the minute ends. "
        "Bounds what many clients and addresses can cost in RPC. Counted in Redis, fail closed (0 disables).",
    )
    audit_refusals_maxlen: int = _opt(
        "STRONGROOM_AUDIT_REFUSALS_MAXLEN",
        "100000",
        "Approximate cap of the Redis stream holding refusals of unproven requests until the worker persists them; "
        "a flood trims old refusals there, never accepted accesses (their stream is separate).",
    )

    # --- agent limits (the design's AGENT_RESOURCE_LIMITS) ---
    max_execution_time: int = _opt("STRONGROOM_MAX_EXECUTION_TIME", "600", "Agent wall-clock limit, seconds.")
    max_disk_usage: int = _opt("STRONGROOM_MAX_DISK_USAGE", "1073741824", "Agent working-directory limit, bytes.")
    max_artifact_count: int = _opt("STRONGROOM_MAX_ARTIFACT_COUNT", "50", "Most artifacts per operation.")
    max_artifact_size: int = _opt("STRONGROOM_MAX_ARTIFACT_SIZE", "104857600", "Largest artifact, bytes.")
    artifact_retention_days: int = _opt(
        "STRONGROOM_ARTIFACT_RETENTION_DAYS", "7", "Default and maximum retention of an operation, days."
    )
    agents: str = _opt(
        "STRONGROOM_AGENTS",
        "",
        'Command agents, JSON `{"<name>": {"command": ["gemini", "-p", "{prompt}", "-y"], "description": "...", '
        '"mounts": ["/opt/gemini"]}}` (`description` optional: what `GET /api/v1/agents` tells grantees; `mounts` '
        "optional: absolute paths the program needs besides `/usr`, shown read-only in its sandbox).",
    )
    agent_sandbox: Literal["bwrap", "none"] = _opt(
        "STRONGROOM_AGENT_SANDBOX",
        "bwrap",
        "`bwrap`: every agent run in its own bubblewrap sandbox (namespaces; a run is refused if it cannot be "
        "created); `none`: agents run unsandboxed (development only, refused when STRONGROOM_ENV=production).",
    )
    agent_network: Literal["allowed", "none"] = _opt(
        "STRONGROOM_AGENT_NETWORK",
        "allowed",
        "`none` gives agents a private network namespace (loopback only); a run is refused if it cannot be had.",
    )
    work_dir: Path | None = _opt(
        "STRONGROOM_WORK_DIR", "", "Where agents get their fresh working directories (default: system temp)."
    )

    # --- grants: who may start which agent ---
    grants_source: str = _opt(
        "STRONGROOM_GRANTS_SOURCE",
        "",
        "`open` (anyone may run every agent, no quotas) or `static` (the grants in STRONGROOM_GRANTS_FILE). "
        "Development defaults to `open`; in production it must be set (no default: the API and worker refuse to "
        "start without it), and `open` there is logged as a warning at start (docs/grants.md).",
    )
    grants_file: Path | None = _opt(
        "STRONGROOM_GRANTS_FILE", "", "YAML/JSON grants file for `static`; re-read when it changes."
    )

    # --- background jobs and quotas ---
    cleanup_interval: int = _opt("STRONGROOM_CLEANUP_INTERVAL", "3600", "Seconds between expiry sweeps.")
    monitor_interval: int = _opt("STRONGROOM_MONITOR_INTERVAL", "300", "Seconds between resource checks.")
    rotation_interval: int = _opt("STRONGROOM_ROTATION_INTERVAL", "86400", "Seconds between key rotations.")
    orphan_sweep_operations: int = _opt(
        "STRONGROOM_ORPHAN_SWEEP_OPERATIONS",
        "1000",
        "Operations the orphan sweep checks per run (every STRONGROOM_CLEANUP_INTERVAL), continuing from a cursor: "
        "a run reads at most this many records (plus its share of LIST pages) whatever is stored, and every "
        "operation is checked once per (stored operations / this) runs.",
    )
    quota_per_operation: int = _opt(
        "STRONGROOM_QUOTA_PER_OPERATION", "1073741824", "Stored bytes per operation before an alert."
    )
    quota_per_grantee: int = _opt(
        "STRONGROOM_QUOTA_PER_GRANTEE", "10737418240", "Stored bytes per grantee before an alert."
    )
    worker_metrics_port: int = _opt(
        "STRONGROOM_WORKER_METRICS_PORT",
        "0",
        "Port of the worker's Prometheus endpoint, bound on STRONGROOM_API_HOST (0: off).",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read and validate every option; raise ``ConfigError`` naming the first bad variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            opt: Option = f.metadata["option"]
            if f.name in overrides:
                values[f.name] = overrides[f.name]
                continue
            raw = env.get(opt.name)
            if raw is None and f.name == "redis_url":
                raw = env.get("STRONGROOM_REDIS_URL")
            raw = (opt.default if raw is None else raw).strip()
            values[f.name] = _parse(f.name, opt.name, raw, str(f.type))
        settings = cls(**values)
        settings._validate()
        register_secrets(settings.secret_values())
        return settings

    def _validate(self) -> None:
        if not self.redis_url:
            raise ConfigError("REDIS_URL", "is required (e.g. redis://127.0.0.1:6379/0)")
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("REDIS_URL", "must start with redis://, rediss:// or unix://")
        for name, url in (
            ("STRONGROOM_S3_ENDPOINT_URL", self.s3_endpoint_url),
            ("STRONGROOM_S3_PUBLIC_ENDPOINT_URL", self.s3_public_endpoint_url),
        ):
            if url and not url.startswith(("http://", "https://")):
                raise ConfigError(name, "must be an http:// or https:// URL")
        for cidr in self.trusted_proxies:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError("STRONGROOM_TRUSTED_PROXIES", f"{cidr!r} is not an IP network") from None
        if self.public_path_prefix and (
            not self.public_path_prefix.startswith("/") or self.public_path_prefix.endswith("/")
        ):
            raise ConfigError("STRONGROOM_PUBLIC_PATH_PREFIX", "must start with '/' and not end with '/'")
        if self.s3_sse == "aws:kms" and not self.s3_sse_kms_key_id:
            raise ConfigError("STRONGROOM_S3_SSE_KMS_KEY_ID", "is required when STRONGROOM_S3_SSE=aws:kms")
        if self.agents:
            try:
                agents = json.loads(self.agents)
            except json.JSONDecodeError as exc:
                raise ConfigError("STRONGROOM_AGENTS", f"is not valid JSON ({exc.msg})") from None
            if not isinstance(agents, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("command"), list) and v["command"] for v in agents.values()
            ):
                raise ConfigError("STRONGROOM_AGENTS", 'must map names to {"command": [<argv>...]}')
            if not all(isinstance(v.get("description", ""), str) for v in agents.values()):
                raise ConfigError("STRONGROOM_AGENTS", "an agent's description must be a string")
            for spec in agents.values():
                mounts = spec.get("mounts", [])
                if not isinstance(mounts, list) or not all(isinstance(m, str) and m.startswith("/") for m in mounts):
                    raise ConfigError("STRONGROOM_AGENTS", "an agent's mounts must be a list of absolute paths")
        if self.agent_sandbox == "none" and self.env == "production":
            raise ConfigError(
                "STRONGROOM_AGENT_SANDBOX",
                "is 'none' but STRONGROOM_ENV=production: agents run sandboxed in production (install bwrap, "
                "see docs/agents.md)",
            )
        if self.keyring and self.keyring_file:
            raise ConfigError("STRONGROOM_KEYRING", "set either STRONGROOM_KEYRING or STRONGROOM_KEYRING_FILE")
        if self.grants_source == "static" and not self.grants_file:
            raise ConfigError("STRONGROOM_GRANTS_FILE", "is required when STRONGROOM_GRANTS_SOURCE=static")
        if self.signature_max_window > 3600:
            raise ConfigError("STRONGROOM_SIGNATURE_MAX_WINDOW", "must be at most 3600 seconds")
        if not 1 <= self.presign_ttl <= 7 * 24 * 3600:
            raise ConfigError("STRONGROOM_PRESIGN_TTL", "must be between 1 and 604800 seconds")

    def validate_api(self) -> None:
        """Rules only the API process needs; ``strongroom api`` calls this at start-up, before serving.

        In production the accepted ``@authority`` values must be pinned: a signature binds the authority, and a
        server that believes any ``Host`` would accept a request captured for another deployment (once per nonce).
        """
        if self.api_metrics_port and self.api_metrics_port == self.api_port:
            raise ConfigError("STRONGROOM_API_METRICS_PORT", "must differ from STRONGROOM_API_PORT (or be 0)")
        if self.env == "production" and not self.public_authorities:
            raise ConfigError(
                "STRONGROOM_PUBLIC_AUTHORITIES",
                "is required when STRONGROOM_ENV=production (the host[:port] clients sign as @authority): "
                "without it a request signed for another deployment would be accepted here",
            )

    def require_grants_source(self) -> None:
        """Production has no default grant source: who may run the agents is a decision, not an accident.

        Checked where a process that enforces grants starts (``grants.grant_source_at_start``, which then loads a
        static source's file, once: a missing or invalid one is a start-up error), not in ``from_env``, so tools
        that never look at grants still load these settings.
        """
        if self.env == "production" and not self.grants_source:
            raise ConfigError(
                "STRONGROOM_GRANTS_SOURCE",
                "is required when STRONGROOM_ENV=production: set it to `static` (only the grants in "
                "STRONGROOM_GRANTS_FILE; what a public deployment uses) or `open` (anyone with a key may run every "
                "agent); see docs/grants.md",
            )

    @property
    def resolved_grants_source(self) -> str:
        """The grant source in use: as configured, else ``open`` (development's default). Production has no
        default, but that is checked where a process that enforces grants starts (``require_grants_source``):
        admin tools that never authorise anything (``audit verify``, ``keys``) run without the setting."""
        return self.grants_source or "open"

    @property
    def lifecycle_days(self) -> int:
        """Days after which the bucket's lifecycle rule expires ``operations/`` objects: a few days past the longest
        retention, so it only ever catches what the cleanup job missed."""
        return self.artifact_retention_days + 3

    @property
    def resolved_log_format(self) -> LogFormat:
        if self.log_format:
            return self.log_format
        return "console" if self.env == "development" else "json"

    def keyring_json(self) -> str | None:
        """The keyring document, from the variable or the mounted file."""
        if self.keyring_file:
            try:
                return self.keyring_file.read_text()
            except OSError as exc:
                raise ConfigError("STRONGROOM_KEYRING_FILE", f"cannot be read ({exc.strerror})") from None
        return self.keyring or None

    def secret_values(self) -> list[str]:
        """Configured secrets, so the log redaction can mask them even in free text."""
        values = [self.s3_secret_access_key or "", self.eth_rpc_url or ""]
        try:
            document = json.loads(self.keyring_json() or "{}")
        except (ValueError, ConfigError):
            document = {}
        keys = document.get("keys") if isinstance(document, dict) else None
        if isinstance(keys, dict):
            values += [str(v) for v in keys.values()]
        return [v for v in values if v]

    def agent_commands(self) -> dict[str, list[str]]:
        """Operator-configured command agents, by name."""
        if not self.agents:
            return {}
        return {name: list(spec["command"]) for name, spec in json.loads(self.agents).items()}

    def agent_mounts(self) -> dict[str, list[str]]:
        """What each command agent's program needs outside ``/usr`` (read-only in its sandbox), by name."""
        if not self.agents:
            return {}
        return {name: list(spec.get("mounts", [])) for name, spec in json.loads(self.agents).items()}

    def agent_descriptions(self) -> dict[str, str]:
        """Operator-written descriptions of the command agents that have one, by name."""
        if not self.agents:
            return {}
        return {name: spec["description"] for name, spec in json.loads(self.agents).items() if spec.get("description")}

    def __repr__(self) -> str:  # secrets stay out of reprs, tracebacks and logs
        return f"Settings(env={self.env!r}, redis=<set>, bucket={self.s3_bucket!r})"


def options() -> list[Option]:
    """Every documented environment variable, in declaration order."""
    return [f.metadata["option"] for f in fields(Settings)]


def _split(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def _int(var: str, raw: str, minimum: int = 0) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(var, f"must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(var, f"must be at least {minimum}, got {value}")
    return value


def _choice(var: str, raw: str, choices: tuple[str, ...]) -> str:
    if raw not in choices:
        raise ConfigError(var, f"must be one of {', '.join(choices)}; got {raw!r}")
    return raw


_CHOICES: dict[str, tuple[str, ...]] = {
    "env": ("development", "production"),
    "log_format": ("", "json", "console"),
    "s3_addressing_style": ("auto", "path", "virtual"),
    "s3_sse": ("none", "AES256", "aws:kms"),
    "delivery_mode": ("presigned", "proxy"),
    "embedded_artifacts": ("on", "deprecated", "off"),
    "agent_network": ("allowed", "none"),
    "grants_source": ("", "open", "static"),
    "agent_sandbox": ("bwrap", "none"),
}
_POSITIVE_INTS = {
    "api_port",
    "presign_ttl",
    "max_input_bytes",
    "max_header_count",
    "max_header_bytes",
    "signature_max_window",
    "max_execution_time",
    "max_disk_usage",
    "max_artifact_count",
    "max_artifact_size",
    "artifact_retention_days",
    "cleanup_interval",
    "monitor_interval",
    "rotation_interval",
    "orphan_sweep_operations",
    "quota_per_operation",
    "quota_per_grantee",
    "audit_refusals_maxlen",
}
_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "log_level": lambda var, raw: _choice(var, raw.upper(), ("DEBUG", "INFO", "WARNING", "ERROR")),
    "s3_cors_origins": lambda var, raw: tuple(_split(raw)),
    "public_authorities": lambda var, raw: tuple(a.lower() for a in _split(raw)),
    "trusted_proxies": lambda var, raw: tuple(_split(raw)),
    "cors_origins": lambda var, raw: tuple(_split(raw)),
    "allowed_chain_ids": lambda var, raw: tuple(_int(var, part, 1) for part in _split(raw)),
    "eth_rpc_timeout": lambda var, raw: _float(var, raw),
    "signature_clock_skew": lambda var, raw: _int(var, raw, 0),
    "rate_limit_per_minute": lambda var, raw: _int(var, raw, 0),
    "auth_failures_per_minute": lambda var, raw: _int(var, raw, 0),
    "eth_rpc_calls_per_minute": lambda var, raw: _int(var, raw, 0),
    "worker_metrics_port": lambda var, raw: _int(var, raw, 0),
    "api_metrics_port": lambda var, raw: _int(var, raw, 0),
    "keyring_file": lambda var, raw: Path(raw) if raw else None,
    "work_dir": lambda var, raw: Path(raw) if raw else None,
    "grants_file": lambda var, raw: Path(raw) if raw else None,
}


def _float(var: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(var, f"must be a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(var, "must be positive")
    return value


def _parse(attr: str, var: str, raw: str, annotation: str) -> Any:
    if attr in _CHOICES:
        return _choice(var, raw, _CHOICES[attr])
    if attr in _POSITIVE_INTS:
        return _int(var, raw, 1)
    if attr in _PARSERS:
        return _PARSERS[attr](var, raw)
    if annotation == "int":  # any other integer: at least 0
        return _int(var, raw, 0)
    return raw or (None if annotation.endswith("| None") else raw)
