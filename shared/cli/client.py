"""`strongroom client ...` (filled in by the API/SDK work)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("client", help="talk to a strongroom API")
    parser.set_defaults(handler=lambda args: parser.print_help())
