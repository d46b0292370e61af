"""Tests for course_lib.progress: a saved notebook keeps the final line, never a 0% bar."""

from __future__ import annotations

from typing import Any

import pytest

from course_lib import progress as progress_mod
from course_lib.progress import progress


class _Handle:
    def __init__(self, first: Any) -> None:
        self.shown = [first.data]

    def update(self, obj: Any) -> None:
        self.shown.append(obj.data)


def test_in_a_kernel_the_last_line_is_the_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """The line starts at 0 of N, and what stays is 'N rows in X s'."""
    handles: list[_Handle] = []
    monkeypatch.setattr(progress_mod, "_in_kernel", lambda: True)

    def fake_display(obj: Any, display_id: bool = False) -> _Handle:
        assert display_id
        handles.append(_Handle(obj))
        return handles[-1]

    monkeypatch.setattr("IPython.display.display", fake_display)
    with progress(1000, "sqlite medium", unit="rows") as bar:
        bar.every_s = 0.0
        bar.update(250)
    (handle,) = handles
    assert handle.shown[0] == "sqlite medium: 0 of 1,000 rows (0%)"
    assert handle.shown[1] == "sqlite medium: 250 of 1,000 rows (25%)"
    assert handle.shown[-1].startswith("sqlite medium: 250 rows in ")
    assert handle.shown[-1].endswith(" s")


def test_outside_a_kernel_it_is_a_tqdm_bar_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    with progress(10, "build", unit="rows") as bar:
        bar.update(10)
    assert bar.done == 10
    assert "build" in capsys.readouterr().err


def test_disabled_shows_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with progress(10, "build", enabled=False) as bar:
        bar.update(4)
    assert bar.done == 4
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""
