"""The only place that builds S3 keys and Redis keys, and validates the names that go into them.

Bucket layout (the design's directory structure)::

    operations/{id}/record.json            the operation record (keyring-encrypted): status, result, artifacts
    operations/{id}/input.json             the agent input (keyring-encrypted)
    operations/{id}/artifacts/{run}/{name}.enc  Cobblestone-256 ciphertext, readable only by the grantee
    operations/{id}/embedded/{run}/{name}  legacy copy for embedded base64 (keyring-encrypted; only if enabled)
    operations/{id}/access_log/{seq}.json  hash-chained audit batches (+ head.json, the newest batch digest)
    grantees/{address}/{inverted time}_{id} empty index object: a grantee's operations, newest first
    expiry/{yyyymmddhh}/{id}               empty index object: the operation expires in that UTC hour
    expiry.built                           present once the expiry index covers records from before it existed
    audit/{seq}.json                       hash-chained audit batches of events that name no operation

The record is written last: until it names an artifact, the artifact does not exist for the API.

``{run}`` is the id of the run (one claim of the operation by a worker) that uploaded the object, and the record
stores it with each artifact. Two runs of one operation therefore never write the same key: a stale run that keeps
uploading cannot overwrite what the current run stored, and a re-claim deletes only objects no record names.
Records written before run ids existed name run-less keys (``run_id=None``).
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from base64 import b32encode
from datetime import UTC, datetime

from shared.errors import ValidationFailed

OPERATIONS = "operations/"
GRANTEES = "grantees/"
EXPIRY = "expiry/"
EXPIRY_BUILT = "expiry.built"  # outside EXPIRY, so a listing of the buckets never meets it
REDIS_PREFIX = "strongroom:"

MAX_NAME_BYTES = 255
_AGENT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}$")
_OPERATION_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}_[a-z2-7]{26}$")
_ADDRESS_RE = re.compile(r"^0x[0-9a-f]{40}$")
RUN_ID_PATTERN = r"^[0-9a-f]{16}$"
_RUN_ID_RE = re.compile(RUN_ID_PATTERN)
_INVERTED_BASE = 10**12


# --- validation -------------------------------------------------------------------------------------------


def new_operation_id(agent: str) -> str:
    """``<agent>_<128 random bits, base32>``: unguessable, and readable in logs."""
    validate_agent_name(agent)
    return f"{agent}_{b32encode(secrets.token_bytes(16)).decode().rstrip('=').lower()}"


def is_agent_name(agent: str) -> bool:
    return bool(_AGENT_RE.fullmatch(agent))


def validate_agent_name(agent: str) -> str:
    if not is_agent_name(agent):
        raise ValidationFailed("agent must be lowercase letters, digits and '-'", code="agent_invalid")
    return agent


def is_operation_id(value: str) -> bool:
    return bool(_OPERATION_ID_RE.fullmatch(value))


def normalize_address(address: str) -> str:
    """Lowercase 0x address; ``ValidationFailed`` otherwise. Addresses are compared in this form only."""
    lowered = address.lower()
    if not _ADDRESS_RE.fullmatch(lowered):
        raise ValidationFailed("not an Ethereum address", code="address_invalid")
    return lowered


def validate_artifact_name(name: str) -> str:
    """Refuse anything that could escape the operation's prefix or confuse a filesystem or a header.

    No path separators, no ``.``/``..``, no control or format characters, no leading/trailing spaces, NFC only,
    at most 255 UTF-8 bytes.
    """
    problem = _artifact_name_problem(name)
    if problem:
        raise ValidationFailed(f"artifact name {problem}", code="artifact_name_invalid")
    return name


def _artifact_name_problem(name: str) -> str | None:
    if not name or name in {".", ".."}:
        return "is empty or a dot name"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if ".." in name:
        return "contains '..'"
    if name != name.strip() or name.startswith("-"):
        return "starts or ends with a space, or starts with '-'"
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"} for ch in name):
        return "contains a control or unassigned character"
    if unicodedata.normalize("NFC", name) != name:
        return "is not NFC-normalized"
    return None


# --- S3 keys ----------------------------------------------------------------------------------------------


def operation_prefix(operation_id: str) -> str:
    if not is_operation_id(operation_id):
        raise ValidationFailed("malformed operation id", code="operation_id_invalid")
    return f"{OPERATIONS}{operation_id}/"


def record_key(operation_id: str) -> str:
    return operation_prefix(operation_id) + "record.json"


def input_key(operation_id: str) -> str:
    return operation_prefix(operation_id) + "input.json"


def artifacts_prefix(operation_id: str) -> str:
    return operation_prefix(operation_id) + "artifacts/"


def new_run_id() -> str:
    """64 random bits: unique per claim, so no two runs of an operation share an object key."""
    return secrets.token_hex(8)


def _run_dir(run_id: str | None) -> str:
    if run_id is None:
        return ""  # a record from before per-run keys
    if not _RUN_ID_RE.fullmatch(run_id):
        raise ValidationFailed("malformed run id", code="run_id_invalid")
    return run_id + "/"


def artifact_key(operation_id: str, name: str, run_id: str | None) -> str:
    """The ciphertext object of artifact ``name`` as uploaded by run ``run_id`` (``None``: a legacy record).

    The run is a directory level, not a suffix: names cannot contain ``/``, so no name of one run (or of a legacy
    record) can ever spell another run's key.
    """
    return artifacts_prefix(operation_id) + _run_dir(run_id) + validate_artifact_name(name) + ".enc"


def embedded_prefix(operation_id: str) -> str:
    return operation_prefix(operation_id) + "embedded/"


def embedded_key(operation_id: str, name: str, run_id: str | None) -> str:
    """The keyring-sealed embedded copy, per run for the same reason as ``artifact_key``."""
    return embedded_prefix(operation_id) + _run_dir(run_id) + validate_artifact_name(name)


def access_log_prefix(operation_id: str) -> str:
    return operation_prefix(operation_id) + "access_log/"


def access_log_key(operation_id: str, sequence: int) -> str:
    return f"{access_log_prefix(operation_id)}{sequence:012d}.json"


def access_log_head_key(operation_id: str) -> str:
    """Sealed pointer to the newest batch, so removing the tail of a log is detectable."""
    return access_log_prefix(operation_id) + "head.json"


GLOBAL_AUDIT = "audit/"


def global_access_log_key(sequence: int) -> str:
    return f"{GLOBAL_AUDIT}{sequence:012d}.json"


def global_access_log_head_key() -> str:
    return f"{GLOBAL_AUDIT}head.json"


def grantee_prefix(address: str) -> str:
    return f"{GRANTEES}{normalize_address(address)}/"


def grantee_index_key(address: str, created_unix: int, operation_id: str) -> str:
    """Newest first under S3's ascending listing: the time part counts down."""
    return f"{grantee_prefix(address)}{_INVERTED_BASE - created_unix:012d}_{operation_id}"


def operation_id_from_index_key(key: str) -> str:
    return key.rsplit("/", 1)[-1].split("_", 1)[1]


def expiry_bucket(moment: datetime) -> str:
    """The UTC hour ``moment`` falls in, as ``yyyymmddhh``: buckets sort in time order."""
    return moment.astimezone(UTC).strftime("%Y%m%d%H")


def expiry_bucket_prefix(bucket: str) -> str:
    return f"{EXPIRY}{bucket}/"


def expiry_key(expires_at: datetime, operation_id: str) -> str:
    """Empty marker: ``operation_id`` expires within this hour (cleanup lists only the buckets that are due)."""
    if not is_operation_id(operation_id):
        raise ValidationFailed("malformed operation id", code="operation_id_invalid")
    return expiry_bucket_prefix(expiry_bucket(expires_at)) + operation_id


def parse_expiry_key(key: str) -> tuple[str, str] | None:
    """``(bucket, operation_id)`` of an expiry marker, or None for anything else under ``EXPIRY``."""
    parts = key[len(EXPIRY) :].split("/") if key.startswith(EXPIRY) else []
    if len(parts) != 2 or len(parts[0]) != 10 or not parts[0].isdigit() or not is_operation_id(parts[1]):
        return None
    return parts[0], parts[1]


# --- Redis keys -------------------------------------------------------------------------------------------


def redis_nonce_key(keyid: str, nonce: str) -> str:
    return f"{REDIS_PREFIX}nonce:{keyid.lower()}:{nonce}"


def redis_rate_key(address: str, window: int) -> str:
    return f"{REDIS_PREFIX}rate:{address.lower()}:{window}"


def redis_auth_failure_key(client: str, window: int) -> str:
    """Refused requests from one client address (IP or /64) in one rate window."""
    return f"{REDIS_PREFIX}authfail:{client}:{window}"


def redis_wallet_failure_key(client: str, address: str, window: int) -> str:
    """Refused requests from one client naming one keyid address in one rate window: the budget that gates the
    ERC-1271 path, so a neighbour behind the same NAT cannot use up a contract-wallet user's budget."""
    return f"{REDIS_PREFIX}authfail-wallet:{address.lower()}:{client}:{window}"


def redis_rpc_budget_key(window: int) -> str:
    """ERC-1271 RPC calls made by all API replicas together in one rate window."""
    return f"{REDIS_PREFIX}rpc-budget:{window}"


def redis_cancel_key(operation_id: str) -> str:
    return f"{REDIS_PREFIX}cancel:{operation_id}"


def redis_operation_lock(operation_id: str) -> str:
    return f"{REDIS_PREFIX}lock:operation:{operation_id}"


def redis_record_version(operation_id: str) -> str:
    """A random token replaced after every write of the operation's record: validates per-process caches."""
    return f"{REDIS_PREFIX}record-version:{operation_id}"


def redis_run_lease(operation_id: str) -> str:
    """Held (and refreshed) by the worker running the operation; gone means that worker died."""
    return f"{REDIS_PREFIX}lease:run:{operation_id}"


def redis_redelivered(operation_id: str) -> str:
    """Set when the monitor re-sends an operation's run task, so it does so at most once per interval."""
    return f"{REDIS_PREFIX}redelivered:{operation_id}"


def redis_job_lock(job: str) -> str:
    return f"{REDIS_PREFIX}lock:job:{job}"


def redis_audit_head(log: str) -> str:
    """The newest (sequence, digest) appended to a log (``global`` or an operation id): the head kept outside S3."""
    return f"{REDIS_PREFIX}audit:head:{log}"


REDIS_WORKERS = f"{REDIS_PREFIX}workers"  # sorted set: worker name -> last heartbeat (unix seconds)
# hash: worker name -> why it cannot sandbox agents (only workers with a problem; /readyz reports them)
REDIS_WORKER_SANDBOX = f"{REDIS_PREFIX}workers:sandbox"
REDIS_AUDIT_STREAM = f"{REDIS_PREFIX}audit:events"  # accepted accesses and worker changes; trimmed only as a bound
# Refusals of requests that proved nobody: capped on their own, so their volume never trims REDIS_AUDIT_STREAM.
REDIS_AUDIT_REFUSALS = f"{REDIS_PREFIX}audit:refusals"
REDIS_AUDIT_STREAMS = (REDIS_AUDIT_STREAM, REDIS_AUDIT_REFUSALS)  # what the consumer group reads, in this order
REDIS_AUDIT_GROUP = "strongroom-audit"
REDIS_AUDIT_SEEN = f"{REDIS_PREFIX}audit:seen"  # sorted set: event id -> persisted at (unix seconds; dedup)
# sorted set: worker -> when its disk was last full (unix seconds); the resource monitor alerts on recent ones
REDIS_WORKER_DISK_FULL = f"{REDIS_PREFIX}alerts:worker-disk-full"
REDIS_MONITOR_SNAPSHOT = f"{REDIS_PREFIX}monitor:snapshot"  # last resource report (JSON) for any metrics endpoint
# set: operation ids whose record was written or deleted since the resource monitor last looked (it keeps running
# totals and re-reads only these; see worker_service.pipeline.monitor)
REDIS_MONITOR_CHANGED = f"{REDIS_PREFIX}monitor:changed"
REDIS_MONITOR_LEDGER = f"{REDIS_PREFIX}monitor:ledger"  # the monitor's running totals (several keys share this prefix)
# Pub/sub channel: the id of an operation whose record a worker just wrote with a (possibly) new status; API
# processes wake the requests long-polling it (shared.status_feed). A hint to re-read, never the state itself.
REDIS_STATUS_CHANNEL = f"{REDIS_PREFIX}operation-status"
