"""The progress bar draws only on a terminal, only for downloads that take a while, and ends its line."""

from __future__ import annotations

import io

import pytest

from strongroom.client.progress import ProgressBar, human_size

pytestmark = pytest.mark.unit


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_draws_on_a_terminal_after_the_delay() -> None:
    stream = Tty()
    bar = ProgressBar("report.md", stream=stream, delay=0, rate=1000)
    bar(512 * 1024, 2 * 1024 * 1024)
    bar(2 * 1024 * 1024, 2 * 1024 * 1024)
    bar.close()
    text = stream.getvalue()
    assert "report.md" in text and " 25.0%" in text and "100.0%" in text
    assert "2.0 MiB/2.0 MiB" in text
    assert text.endswith("\n")


def test_silent_when_quick_or_not_a_terminal() -> None:
    quick = Tty()
    bar = ProgressBar("x", stream=quick, delay=60)
    bar(1, 2)
    bar.close()
    assert quick.getvalue() == ""
    piped = io.StringIO()
    bar = ProgressBar("x", stream=piped, delay=0)
    bar(1, 2)
    bar.close()
    assert piped.getvalue() == ""


@pytest.mark.parametrize(("size", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (3 << 30, "3.0 GiB")])
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text
