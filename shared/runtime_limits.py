"""Interpreter-wide limits our server processes keep, whatever their libraries set at import time.

py_ecc (imported through eth-account and web3) raises Python's recursion limit to 100000 when it is imported.
With that limit, deep recursion in C code (``json.loads`` of a deeply nested body, ``repr`` of a deep list...)
overflows the C stack and kills the process with SIGSEGV long before ``RecursionError``: one signed request took
the API down. ``pin_recursion_limit`` runs at each server process's start-up (API factory and lifespan, worker
and beat init): it imports the known offenders first, so a later lazy import cannot raise the limit again,
puts CPython's default back and checks that it holds. ``shared.bounded_json`` bounds what we parse besides.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import structlog

RECURSION_LIMIT = 1000  # CPython's default: deep enough for every library we use, shallow enough for the C stack
# Libraries known to change the limit when imported; imported here (when installed) before it is restored.
OFFENDERS = ("py_ecc",)

log = structlog.get_logger(__name__)


def pin_recursion_limit() -> None:
    """Restore ``RECURSION_LIMIT`` after the offenders are imported; raise ``RuntimeError`` if it does not hold."""
    for name in OFFENDERS:
        if name not in sys.modules and importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
    found = sys.getrecursionlimit()
    if found != RECURSION_LIMIT:
        sys.setrecursionlimit(RECURSION_LIMIT)
        log.debug("recursion limit restored", found=found, limit=RECURSION_LIMIT)
    if sys.getrecursionlimit() != RECURSION_LIMIT:
        raise RuntimeError(f"the interpreter recursion limit must be {RECURSION_LIMIT}")
