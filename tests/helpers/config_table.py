"""Render README.md's configuration table from ``shared.settings.options()`` (``make docs`` rewrites it)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from shared.settings import options

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- config-table:start -->", "<!-- config-table:end -->"


def render() -> str:
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for opt in options():
        default = f"`{opt.default}`" if opt.default else ""
        meaning = opt.help.replace("|", "\\|")
        rows.append(f"| `{opt.name}` | {default} | {meaning} |")
    return "\n".join(rows)


def update(text: str) -> str:
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"README.md lacks the {START} ... {END} markers")
    return pattern.sub(lambda _: f"{START}\n{render()}\n{END}", text)


if __name__ == "__main__":
    README.write_text(update(README.read_text()))
    sys.stdout.write("README.md configuration table updated\n")
