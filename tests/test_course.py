"""Tests for course_lib.course, course_lib.environment and course_lib.widgets."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import ipywidgets as widgets
import pandas as pd
import pytest

from course_lib.course import Course, setup
from course_lib.environment import PACKAGES, environment_report, servers_ready
from course_lib.settings import CourseConfigError
from course_lib.widgets import BACKEND_CHOICES, apply_choice, settings_picker

TINY_LINE = (
    "Scale 'tiny' (seed 20261121): 12 users, 6 tags, 36 posts, 72 comments, 3 dealerships, 60 cars"
)


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Course]:
    """The tiny dataset on SQLite alone, in a private data folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COURSE_DATA_DIR", str(tmp_path_factory.mktemp("course")))
        yield setup(scale="tiny", backends="sqlite")


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty COURSE_DATA_DIR, no COURSE_SCALE / COURSE_BACKENDS."""
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("COURSE_SCALE", raising=False)
    monkeypatch.delenv("COURSE_BACKENDS", raising=False)
    return tmp_path


# ---------------------------------------------------------------------- Course


def test_course_repr(course: Course) -> None:
    """The repr names the scale, seed, counts and backends, and nothing machine-specific."""
    first, second = repr(course).splitlines()
    assert first == TINY_LINE
    assert second == "Backends: sqlite"


def test_course_backends(course: Course) -> None:
    """An sqlite-only course has the SQLite backend and nothing else."""
    assert course.names == ["sqlite"]
    assert course.sqlite is course["sqlite"]
    assert course.sqlite.database == "course_tiny"
    assert course.scale.name == "tiny"


def test_missing_backend_is_a_config_error(course: Course) -> None:
    """Asking an sqlite-only course for PostgreSQL explains how to get it, in one line."""
    with pytest.raises(CourseConfigError) as info:
        course["postgresql"]
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("Backend 'postgresql' is not in use here")
    assert "COURSE_BACKENDS" in message
    with pytest.raises(CourseConfigError):
        _ = course.postgres


def test_row_counts(course: Course) -> None:
    """row_counts() compares every backend with the expected counts."""
    counts = course.row_counts()
    assert list(counts.columns) == ["sqlite", "expected", "all equal"]
    assert counts.loc["cars", "sqlite"] == 60
    assert counts["all equal"].all()


def test_describe_has_no_absolute_path(course: Course) -> None:
    """describe() shows where data lives without absolute paths."""
    frame = course.describe()
    assert list(frame.columns) == ["backend", "database", "source", "async driver", "sync driver"]
    (source,) = frame["source"]
    assert source == "file $COURSE_DATA_DIR/course_tiny.sqlite"
    assert not any(word.startswith("/") for word in source.split())
    assert frame.loc[0, "async driver"] == "aiosqlite"
    assert frame.loc[0, "sync driver"] == "pysqlite"


def test_rebuild_returns_one_row_per_backend(course: Course) -> None:
    """rebuild() rebuilds every backend and reports one row each."""
    frame = course.rebuild(progress=False)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["backend", "database", "rows", "seconds"]
    assert frame["backend"].tolist() == ["sqlite"]
    assert frame["rows"].tolist() == [261]
    assert (frame["seconds"] >= 0).all()


def test_setup_from_environment(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """setup() with no arguments follows COURSE_SCALE and COURSE_BACKENDS."""
    monkeypatch.setenv("COURSE_SCALE", "tiny")
    monkeypatch.setenv("COURSE_BACKENDS", "sqlite")
    course = setup()
    assert repr(course).splitlines() == [TINY_LINE, "Backends: sqlite"]
    assert (fresh / "course_tiny.sqlite").exists()


def test_setup_with_bad_scale(fresh: Path) -> None:
    """A bad scale stops setup() with the one-line error, before building anything."""
    with pytest.raises(CourseConfigError, match="Unknown scale 'huge'"):
        setup(scale="huge", backends="sqlite")
    assert list(fresh.glob("*.sqlite")) == []


# ---------------------------------------------------------------------- environment


def test_environment_report_sqlite(fresh: Path) -> None:
    """Python and the SQLite server are ok; every package gets a row."""
    report = environment_report(backends=["sqlite"], redis=False)
    assert list(report.columns) == ["component", "status", "version", "detail"]
    rows = report.set_index("component")
    assert rows.loc["python", "status"] == "ok"
    assert rows.loc["sqlite server", "status"] == "ok"
    assert rows.loc["sqlite server", "version"] == sqlite3.sqlite_version
    assert rows.loc["sqlite server", "detail"] == "file $COURSE_DATA_DIR/course_env_check.sqlite"
    assert rows.loc["sqlalchemy", "status"] == "ok"
    assert set(PACKAGES) <= set(rows.index)
    assert "postgresql server" not in rows.index
    assert "redis server" not in rows.index
    assert servers_ready(report) == ["sqlite server"]


def test_environment_report_unavailable_servers(
    fresh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Servers that do not answer are 'unavailable' with their one-line reason."""
    monkeypatch.setenv("COURSE_POSTGRES_URL", "postgresql://postgres@127.0.0.1:1/postgres")
    monkeypatch.setenv("COURSE_REDIS_URL", "redis://127.0.0.1:1/0")
    report = environment_report(backends=["postgresql"], redis=True)
    rows = report.set_index("component")
    assert rows.loc["postgresql server", "status"] == "unavailable"
    assert rows.loc["postgresql server", "detail"].startswith(
        "Cannot use PostgreSQL at 127.0.0.1:1"
    )
    assert rows.loc["redis server", "status"] == "unavailable"
    assert "COURSE_REDIS_URL" in rows.loc["redis server", "detail"]
    with pytest.raises(CourseConfigError) as info:
        servers_ready(report)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("postgresql server: Cannot use PostgreSQL")
    assert "; redis server: Cannot reach Redis" in message


# ---------------------------------------------------------------------- widgets


def test_apply_choice_saves(fresh: Path) -> None:
    """A valid choice is saved to settings.json and confirmed with a 'Saved' sentence."""
    message = apply_choice("tiny", "SQLite only")
    assert message == (
        "Saved: scale tiny, SQLite only. Restart the kernel of any open notebook "
        "(Kernel ▸ Restart) so it picks this up."
    )
    saved = json.loads((fresh / "settings.json").read_text())
    assert saved == {"scale": "tiny", "backends": ["sqlite"]}


def test_apply_choice_unknown_scale(fresh: Path) -> None:
    """An unknown scale is not saved and the sentence says why."""
    message = apply_choice("huge", "SQLite only")
    assert message.startswith("Not saved: Unknown scale 'huge'")
    assert not (fresh / "settings.json").exists()


def test_backend_choices() -> None:
    """The three backend choices map to backend lists."""
    assert BACKEND_CHOICES == {
        "SQLite and PostgreSQL": ["sqlite", "postgresql"],
        "SQLite only": ["sqlite"],
        "PostgreSQL only": ["postgresql"],
    }


def test_settings_picker(fresh: Path) -> None:
    """Two drop-downs, a Save button that saves, and a message."""
    picker = settings_picker()
    scale, backends, save, message = picker.children
    assert isinstance(scale, widgets.Dropdown)
    assert [value for _, value in scale.options] == ["tiny", "small", "medium", "large"]
    assert "small" in [value for _, value in scale.options]
    assert scale.value == "small"
    assert scale.options[0][0] == "tiny: 12 users, 60 cars"
    assert list(backends.options) == list(BACKEND_CHOICES)
    scale.value = "tiny"
    backends.value = "SQLite only"
    save.click()
    assert message.value.startswith("Saved: scale tiny, SQLite only.")
    assert json.loads((fresh / "settings.json").read_text())["backends"] == ["sqlite"]


def test_scratch_gives_empty_tables_on_the_same_backends(course: Course) -> None:
    """scratch() starts from empty course tables in scratch_<name>, every call."""
    from sqlalchemy import insert

    from course_lib.data import row_counts
    from course_lib.models import Tag

    scratch = course.scratch("unit")
    assert scratch.names == course.names
    assert scratch.sqlite.database == "scratch_unit"
    with scratch.sqlite.sync_engine.begin() as conn:
        conn.execute(insert(Tag), [{"name": "a"}, {"name": "b"}])
    assert row_counts(scratch.sqlite)["tags"] == 2
    again = course.scratch("unit")
    assert set(row_counts(again.sqlite).values()) == {0}
    assert row_counts(course.sqlite)["tags"] == 6  # the shared dataset is untouched
