"""The grants file: what it accepts, what it refuses (with a reason), and how lookups and decisions follow it."""

from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import ConfigError
from shared.grants import (
    Grant,
    GrantDenied,
    OpenGrants,
    StaticGrants,
    build_grant_source,
    grant_for,
    operation_expiry,
    parse_grants,
    standing,
)

pytestmark = pytest.mark.unit

ALICE = "0x" + "a" * 40
BOB = "0x" + "b" * 40
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)

GOOD = f"""
version: 1
grants:
  - address: "{ALICE.upper().replace("0X", "0x")}"
    agents: [privacy-audit]
    expires_at: 2027-01-01T00:00:00Z
    max_retention_days: 3
    quotas: {{concurrent_operations: 2, operations_per_hour: 10, stored_bytes: 1000}}
  - address: "*"
    agents: ["*"]
"""


def test_a_yaml_file_parses_to_grants_by_lowercase_address() -> None:
    grants = parse_grants(GOOD)
    alice = grants[ALICE]
    assert alice.agents == ("privacy-audit",)
    assert alice.expires_at == datetime(2027, 1, 1, tzinfo=UTC)
    assert alice.max_retention_days == 3
    assert alice.quotas.concurrent_operations == 2
    assert grants["*"].quotas.stored_bytes is None


def test_json_is_accepted_too() -> None:
    document = {"grants": [{"address": BOB, "agents": ["*"], "quotas": {"stored_bytes": 5}}]}
    assert parse_grants(json.dumps(document))[BOB].quotas.stored_bytes == 5


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("grants: [", "not valid YAML/JSON"),
        ("- a\n- b\n", 'must be a mapping with a "grants" list'),
        ("grants:\n  - {address: '0x12', agents: ['*']}\n", "grants.0.address"),
        (f"grants:\n  - {{address: '{ALICE}', agents: []}}\n", "grants.0.agents"),
        (f"grants:\n  - {{address: '{ALICE}', agents: ['Bad Name']}}\n", "grants.0.agents"),
        (f"grants:\n  - {{address: '{ALICE}', agents: ['*'], quotas: {{stored_bytez: 1}}}}\n", "stored_bytez"),
        (f"grants:\n  - {{address: '{ALICE}', agents: ['*'], quotas: {{stored_bytes: -1}}}}\n", "stored_bytes"),
        (f"grants:\n  - {{address: '{ALICE}', agents: ['*'], expires_at: '2027-01-01T00:00:00'}}\n", "time zone"),
        (
            f"grants:\n  - {{address: '{ALICE}', agents: ['*']}}\n  - {{address: '{ALICE}', agents: ['*']}}\n",
            "more than one",
        ),
        ("version: 2\ngrants: []\n", "version"),
        (f"grants:\n  - {{address: '{ALICE}', agents: ['*'], colour: red}}\n", "colour"),
    ],
)
def test_a_bad_file_is_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_grants(text)


@given(st.text(max_size=300))
def test_the_parser_only_ever_accepts_or_raises_value_error(text: str) -> None:
    try:
        grants = parse_grants(text)
    except ValueError:
        return
    assert all(isinstance(g, Grant) for g in grants.values())


@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "address": st.from_regex(r"0x[0-9a-fA-F]{40}", fullmatch=True),
                "agents": st.lists(st.from_regex(r"[a-z0-9][a-z0-9-]{0,10}", fullmatch=True), min_size=1, max_size=3),
                "quotas": st.fixed_dictionaries(
                    {},
                    optional={
                        "concurrent_operations": st.integers(0, 10**6),
                        "operations_per_hour": st.integers(0, 10**6),
                        "stored_bytes": st.integers(0, 10**15),
                    },
                ),
            }
        ),
        max_size=5,
        unique_by=lambda g: g["address"].lower(),
    )
)
def test_every_valid_document_round_trips(entries: list[dict[str, object]]) -> None:
    grants = parse_grants(json.dumps({"grants": entries}))
    assert set(grants) == {str(e["address"]).lower() for e in entries}
    for entry in entries:
        grant = grants[str(entry["address"]).lower()]
        assert list(grant.agents) == entry["agents"]
        assert grant.quotas.model_dump(exclude_none=True) == entry["quotas"]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
FIELDS = {
    "address": st.one_of(st.just("*"), st.from_regex(r"0x[0-9a-fA-F]{38,42}", fullmatch=True), JSON_VALUES),
    "agents": st.one_of(
        st.lists(st.one_of(st.just("*"), st.from_regex(r"[a-zA-Z0-9 _-]{0,8}")), max_size=3), JSON_VALUES
    ),
    "expires_at": st.one_of(st.datetimes(timezones=st.none() | st.just(UTC)).map(lambda d: d.isoformat()), JSON_VALUES),
    "max_retention_days": st.one_of(st.integers(-2, 30), JSON_VALUES),
    "quotas": st.one_of(
        st.dictionaries(
            st.sampled_from(["concurrent_operations", "operations_per_hour", "stored_bytes", "other"]),
            st.one_of(st.integers(-2, 10**12), JSON_VALUES),
            max_size=3,
        ),
        JSON_VALUES,
    ),
    "colour": JSON_VALUES,
}
ENTRIES = st.lists(st.fixed_dictionaries({}, optional=FIELDS), max_size=4)


@settings(deadline=None)  # a loaded machine is slow, not wrong
@given(st.fixed_dictionaries({"grants": st.one_of(ENTRIES, JSON_VALUES)}, optional={"version": JSON_VALUES}))
def test_any_document_is_accepted_valid_or_refused_with_value_error(document: dict[str, object]) -> None:
    """Near-valid documents (right shape, any values), as JSON and as YAML: a ValueError naming the problem, or
    grants that keep every promise the decisions rely on."""
    for text in (json.dumps(document), yaml.safe_dump(document)):
        try:
            grants = parse_grants(text)
        except ValueError as exc:
            assert str(exc)  # a reason to log, never an empty message
            continue
        for address, grant in grants.items():
            assert address == grant.address and (address == "*" or re.fullmatch(r"0x[0-9a-f]{40}", address))
            assert grant.agents and all(a == "*" or re.fullmatch(r"[a-z0-9][a-z0-9-]*", a) for a in grant.agents)
            assert grant.expires_at is None or grant.expires_at.utcoffset() == timedelta(0)
            assert grant.max_retention_days is None or grant.max_retention_days >= 1
            quotas = grant.quotas.model_dump()
            assert all(value is None or (isinstance(value, int) and value >= 0) for value in quotas.values())


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=200) | st.builds(json.dumps, JSON_VALUES))
def test_a_rejected_file_never_changes_the_answers(text: str) -> None:
    """Whatever replaces a good file, a lookup answers either from the new file (when it parses) or the last good."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "grants.yaml"
        path.write_text(f"grants:\n  - {{address: '{ALICE}', agents: [a]}}\n")
        clock = Clock()
        source = StaticGrants(path, clock=clock)
        _replace(path, text)
        clock.now += 2
        try:
            expected = parse_grants(path.read_text(encoding="utf-8"))  # as the source reads it (newlines)
        except ValueError:
            expected = {ALICE: Grant(address=ALICE, agents=("a",))}
        for address in (ALICE, BOB):
            assert source.lookup(address) == (expected.get(address) or expected.get("*"))


def test_decisions_name_the_rule() -> None:
    source = StaticGrantsFromText(
        f"grants:\n  - {{address: '{ALICE}', agents: [privacy-audit], expires_at: 2027-01-01T00:00:00Z}}\n"
    )
    assert grant_for(source, ALICE, "privacy-audit", NOW).address == ALICE
    with pytest.raises(GrantDenied) as no_grant:
        grant_for(source, BOB, "privacy-audit", NOW)
    assert (no_grant.value.code, no_grant.value.status) == ("no_grant", 403)
    with pytest.raises(GrantDenied) as other_agent:
        grant_for(source, ALICE, "gemini", NOW)
    assert other_agent.value.code == "agent_not_granted"
    later = datetime(2027, 1, 1, tzinfo=UTC)
    with pytest.raises(GrantDenied) as expired:
        grant_for(source, ALICE, "privacy-audit", later)
    assert expired.value.code == "grant_expired"
    with pytest.raises(GrantDenied) as revoked:
        standing(source, BOB, NOW)
    assert revoked.value.code == "grant_revoked"
    with pytest.raises(GrantDenied, match="expired"):
        standing(source, ALICE, later)


def test_an_address_of_its_own_wins_over_the_wildcard() -> None:
    source = StaticGrantsFromText(
        f"grants:\n  - {{address: '{ALICE}', agents: [a]}}\n  - {{address: '*', agents: [b]}}\n"
    )
    assert source.lookup(ALICE).agents == ("a",)  # type: ignore[union-attr]
    assert source.lookup(BOB).agents == ("b",)  # type: ignore[union-attr]


def test_open_grants_let_everyone_run_everything() -> None:
    grant = grant_for(OpenGrants(), BOB, "anything", NOW)
    assert grant.quotas.concurrent_operations is None
    assert standing(OpenGrants(), BOB, NOW) is grant


def test_an_operation_expires_with_its_grant() -> None:
    retention = NOW + timedelta(days=7)
    ending = Grant(address=ALICE, agents=("*",), expires_at=NOW + timedelta(days=2))
    assert operation_expiry(retention, ending) == NOW + timedelta(days=2)
    assert operation_expiry(retention, Grant(address=ALICE, agents=("*",))) == retention


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def StaticGrantsFromText(text: str) -> StaticGrants:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "grants.yaml"
    path.write_text(text)
    return StaticGrants(path)


def _replace(path: Path, text: str) -> None:
    """Write a new version the way a ConfigMap update does: a new file renamed over the old one."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_a_changed_file_is_reloaded_and_a_bad_one_keeps_the_last_good(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "grants.yaml"
    path.write_text(f"grants:\n  - {{address: '{ALICE}', agents: ['*']}}\n")
    clock = Clock()
    source = StaticGrants(path, clock=clock)
    assert source.lookup(ALICE) is not None

    _replace(path, f"grants:\n  - {{address: '{BOB}', agents: ['*']}}\n")
    assert source.lookup(ALICE) is not None  # not re-checked within the same second
    clock.now += 2
    assert source.lookup(ALICE) is None  # revoked
    assert source.lookup(BOB) is not None

    _replace(path, "grants: [")
    clock.now += 2
    assert source.lookup(BOB) is not None  # the last good grants stay
    clock.now += 2
    assert source.lookup(BOB) is not None

    path.unlink()
    clock.now += 2
    assert source.lookup(BOB) is not None


def test_at_start_a_bad_or_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="STRONGROOM_GRANTS_FILE cannot be read"):
        build_grant_source("static", tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grants: 3\n")
    with pytest.raises(ConfigError, match=r"STRONGROOM_GRANTS_FILE bad\.yaml: grants"):
        build_grant_source("static", bad)
    with pytest.raises(ConfigError, match="required"):
        build_grant_source("static", None)
    assert isinstance(build_grant_source("open", None), OpenGrants)
