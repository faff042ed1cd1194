"""The built-in ``privacy-audit`` agent: finds personal data and secrets in text, fully offline.

Run as ``python -m worker_service.agents.privacy_audit`` under the runner protocol: it reads ``input.json``
(``text``) and the files in ``in/``, writes ``out/privacy_audit.md`` (findings with line numbers, values masked so
the report does not become a second copy of the secrets) and ``out/recommendations.json``, and prints a final JSON
line with ``status`` and ``summary``. Standard library only, so it starts fast in an isolated interpreter.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_SCAN_BYTES = 20 * 1024 * 1024  # per source; bigger inputs are scanned up to here and the report says so


@dataclass(frozen=True)
class Rule:
    kind: str
    pattern: re.Pattern[str]
    advice: str
    check: Callable[[str], bool] = lambda _value: True


def _is_ip(value: str) -> bool:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    return not (address.is_loopback or address.is_unspecified)


RULES: tuple[Rule, ...] = (
    Rule(
        "private_key_block",
        re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
        "Remove the private key, revoke it, and issue a new one; keep keys in a secret manager.",
    ),
    Rule(
        "aws_access_key_id",
        re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
        "Deactivate the AWS access key in IAM and rotate it; use roles or a secret manager instead.",
    ),
    Rule(
        "api_token",
        re.compile(
            r"\b(?:sk-[A-Za-z0-9_-]{20,}|ghp_[A-Za-z0-9]{36}|xox[baprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35})"
        ),
        "Revoke the API token at its provider and load tokens from the environment, not from text.",
    ),
    Rule(
        "hex_private_key",
        re.compile(r"\b0x[0-9a-fA-F]{64}\b"),
        "A 32-byte hex value may be a wallet private key: move funds and retire the key if it is one.",
    ),
    Rule(
        "email",
        re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"),
        "Check that storing these email addresses has a legal basis; pseudonymise them where possible.",
    ),
    Rule(
        "phone_number",
        re.compile(r"(?<![\w.])\+?\(?\d{1,4}\)?(?:[ .-]?\(?\d{2,4}\)?){2,4}(?![\w.])"),
        "Phone numbers are personal data: minimise, mask or remove them.",
        check=lambda value: 9 <= sum(ch.isdigit() for ch in value) <= 15 and not _is_ip(value),
    ),
    Rule(
        "ip_address",
        re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)|\b(?:[0-9a-fA-F]{1,4}:){2,7}[0-9a-fA-F]{1,4}\b"),
        "IP addresses can identify people: truncate or drop them from logs and shared text.",
        check=_is_ip,
    ),
)


@dataclass(frozen=True)
class Finding:
    source: str
    line: int
    kind: str
    masked: str


def mask(value: str) -> str:
    """Enough to recognise the value, not enough to use it."""
    if "@" in value:
        local, _, domain = value.partition("@")
        return f"{local[:1]}***@{domain}"
    if len(value) <= 8:
        return value[:2] + "*" * (len(value) - 2)
    return f"{value[:4]}...{value[-2:]}"


def scan_lines(source: str, lines: Iterable[str]) -> Iterator[Finding]:
    for number, line in enumerate(lines, start=1):
        taken: list[tuple[int, int]] = []  # spans already reported, so a key is not also "a phone number"
        for rule in RULES:
            for match in rule.pattern.finditer(line):
                span = match.span()
                if any(span[0] < end and start < span[1] for start, end in taken):
                    continue
                if rule.check(match.group()):
                    taken.append(span)
                    yield Finding(source, number, rule.kind, mask(match.group()))


def _read_text(path: Path) -> tuple[str, bool]:
    with path.open("rb") as handle:
        data = handle.read(MAX_SCAN_BYTES + 1)
    return data[:MAX_SCAN_BYTES].decode("utf-8", "replace"), len(data) > MAX_SCAN_BYTES


def gather(workdir: Path) -> tuple[list[Finding], list[str], list[str]]:
    """Findings, the sources scanned, and notes (truncations)."""
    data = json.loads((workdir / "input.json").read_text(encoding="utf-8"))
    findings: list[Finding] = []
    sources: list[str] = []
    notes: list[str] = []
    text = data.get("text")
    if isinstance(text, str) and text:
        sources.append("input text")
        findings.extend(scan_lines("input text", text.splitlines()))
    in_dir = workdir / "in"
    for path in sorted(in_dir.iterdir()) if in_dir.is_dir() else []:
        if not path.is_file() or path.is_symlink():
            continue
        content, truncated = _read_text(path)
        sources.append(path.name)
        if truncated:
            notes.append(f"{path.name}: only the first {MAX_SCAN_BYTES} bytes were scanned")
        findings.extend(scan_lines(path.name, content.splitlines()))
    return findings, sources, notes


def render_report(findings: list[Finding], sources: list[str], notes: list[str]) -> str:
    counts = Counter(f.kind for f in findings)
    out = ["# Privacy audit", "", f"Sources scanned: {', '.join(sources) or 'none'}.", ""]
    if not findings:
        out += ["No personal data or secrets were found.", ""]
    else:
        out += ["## Summary", "", "| kind | count |", "| --- | --- |"]
        out += [f"| {kind} | {count} |" for kind, count in sorted(counts.items())]
        out += ["", "## Findings", "", "| source | line | kind | value (masked) |", "| --- | --- | --- | --- |"]
        out += [f"| {f.source} | {f.line} | {f.kind} | `{f.masked}` |" for f in findings]
        out.append("")
    if notes:
        out += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    return "\n".join(out)


def recommendations(findings: list[Finding]) -> list[dict[str, object]]:
    advice = {rule.kind: rule.advice for rule in RULES}
    counts = Counter(f.kind for f in findings)
    return [
        {"kind": kind, "occurrences": counts[kind], "recommendation": advice[kind]} for kind in advice if counts[kind]
    ]


def summarise(findings: list[Finding], sources: list[str]) -> str:
    if not findings:
        return f"no personal data or secrets found in {len(sources)} source(s)"
    counts = Counter(f.kind for f in findings)
    parts = ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items()))
    return f"{len(findings)} finding(s) in {len(sources)} source(s): {parts}"


def main(workdir: Path) -> int:
    findings, sources, notes = gather(workdir)
    out = workdir / "out"
    out.mkdir(exist_ok=True)
    (out / "privacy_audit.md").write_text(render_report(findings, sources, notes), encoding="utf-8")
    (out / "recommendations.json").write_text(
        json.dumps({"findings": len(findings), "recommendations": recommendations(findings)}, indent=2),
        encoding="utf-8",
    )
    print(json.dumps({"status": "ok", "summary": summarise(findings, sources)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(os.environ.get("AGENT_WORKDIR", "."))))
