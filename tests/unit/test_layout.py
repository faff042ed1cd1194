"""The layout is the only place keys are built: names that could escape a prefix never get that far."""

import pytest

from shared import layout
from shared.errors import ValidationFailed

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "a/b",
        "a\\b",
        "../etc",
        "x..y",
        " lead",
        "trail ",
        "-flag",
        "tab\there",
        "nl\nx",
        "bidi\u202eevil",
        "zero\u200bwidth",
        "e\u0301",  # not NFC
        "a" * 256,
        "\u00e9" * 128,  # 256 bytes in UTF-8
    ],
)
def test_unsafe_artifact_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        layout.validate_artifact_name(name)
    assert info.value.code == "artifact_name_invalid"


@pytest.mark.parametrize("name", ["report.md", "privacy_audit.md", "résumé.pdf", "a b.txt", "a" * 255, "数据.json"])
def test_ordinary_names_are_accepted(name: str) -> None:
    assert layout.validate_artifact_name(name) == name


def test_operation_ids_are_unguessable_and_recognised() -> None:
    ids = {layout.new_operation_id("privacy-audit") for _ in range(1000)}
    assert len(ids) == 1000
    for op_id in ids:
        assert op_id.startswith("privacy-audit_")
        assert layout.is_operation_id(op_id)
        assert len(op_id.split("_", 1)[1]) == 26  # 128 bits in base32


@pytest.mark.parametrize("bad", ["", "x", "privacy-audit_", "../record", "privacy-audit_" + "A" * 26, "a_b/c"])
def test_malformed_operation_ids_never_become_keys(bad: str) -> None:
    assert not layout.is_operation_id(bad)
    with pytest.raises(ValidationFailed):
        layout.record_key(bad)


def test_artifact_keys_stay_under_the_operation_prefix() -> None:
    op = layout.new_operation_id("privacy-audit")
    assert layout.artifact_key(op, "report.md", None) == f"operations/{op}/artifacts/report.md.enc"
    with pytest.raises(ValidationFailed):
        layout.artifact_key(op, "../../other/record.json", None)


def test_artifact_keys_are_per_run() -> None:
    op = layout.new_operation_id("privacy-audit")
    one, two = layout.new_run_id(), layout.new_run_id()
    assert one != two
    assert layout.artifact_key(op, "r.md", one) == f"operations/{op}/artifacts/{one}/r.md.enc"
    assert layout.embedded_key(op, "r.md", one) == f"operations/{op}/embedded/{one}/r.md"
    assert layout.artifact_key(op, "r.md", one) != layout.artifact_key(op, "r.md", two)
    # No name of a legacy (run-less) record can spell a run's key: names cannot contain "/".
    assert layout.artifact_key(op, "r.md", one) != layout.artifact_key(op, f"{one}.r.md", None)
    for bad in ("", "../x", "ABCDEF0123456789", "0" * 15, "0" * 16 + "/"):
        with pytest.raises(ValidationFailed):
            layout.artifact_key(op, "r.md", bad)


def test_grantee_index_lists_newest_first() -> None:
    address = "0x" + "ab" * 20
    older = layout.grantee_index_key(address, 1_700_000_000, layout.new_operation_id("a"))
    newer = layout.grantee_index_key(address, 1_700_000_001, layout.new_operation_id("a"))
    assert newer < older
    assert layout.operation_id_from_index_key(newer).startswith("a_")


def test_addresses_are_normalised_to_lowercase() -> None:
    mixed = "0xAbCdEf0123456789aBcDeF0123456789AbCdEf01"
    assert layout.normalize_address(mixed) == mixed.lower()
    with pytest.raises(ValidationFailed):
        layout.normalize_address("0x123")
