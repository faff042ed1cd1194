"""`--help` speaks to users: no source files or internal names, and the exit codes listed in words, the same
codes docs/cli.md documents."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from strongroom.cli import build_parser
from strongroom.cli import client as cli

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
INTERNALS = re.compile(r"\.py\b|``|EXIT_CODES|strongroom\.(cli|client|dev)\b|shared\.")


def every_parser(
    parser: argparse.ArgumentParser, path: str = "strongroom"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from every_parser(sub, f"{path} {name}")


def test_no_help_text_mentions_internals() -> None:
    leaks = {
        path: INTERNALS.findall(parser.format_help())
        for path, parser in every_parser(build_parser())
        if INTERNALS.search(parser.format_help())
    }
    assert leaks == {}


def test_client_help_lists_every_exit_code_in_words() -> None:
    (client,) = [p for path, p in every_parser(build_parser()) if path == "strongroom client"]
    text = client.format_help()
    listed = {int(code) for code in re.findall(r"^  (\d+) +\S", text[text.index("exit codes:") :], re.MULTILINE)}
    meanings = dict(cli.EXIT_MEANINGS)
    assert listed == set(meanings)
    assert {code for _, code in cli.EXIT_CODES} | {cli.EXIT_NOT_SUCCEEDED, cli.EXIT_INTERRUPTED} <= set(meanings)


def test_docs_table_documents_the_same_exit_codes() -> None:
    doc = (ROOT / "docs" / "cli.md").read_text()
    section = doc[doc.index("## Exit codes") :]
    section = section[: section.index("\n## ", 1)]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.MULTILINE)}
    assert documented == {code for code, _ in cli.EXIT_MEANINGS}


def test_docs_describe_every_client_command() -> None:
    doc = (ROOT / "docs" / "cli.md").read_text()
    documented = set(re.findall(r"^\| `(\w+)[ `]", doc, re.MULTILINE)) | set(
        re.findall(r"^strongroom client (\w+)", doc, re.M)
    )
    assert {name for name, *_ in cli._COMMANDS} <= documented
