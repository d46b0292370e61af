"""Tests for course_lib.course, course_lib.environment and course_lib.widgets."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import ipywidgets as widgets
import pandas as pd
import pytest

from course_lib.backends import Backend, checkout_tag, scratch_database
from course_lib.course import Course, setup, short_errors
from course_lib.environment import PACKAGES, environment_report, servers_ready
from course_lib.settings import CourseConfigError, data_dir
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
    """Python and SQLite are ok; every package gets a row; one row for SQLite, not two."""
    report = environment_report(backends=["sqlite"], redis=False, scale="tiny")
    assert list(report.columns) == ["component", "status", "version", "detail"]
    rows = report.set_index("component")
    assert rows.loc["python", "status"] == "ok"
    sqlite_row = rows.loc["sqlite (in-process library)"]
    assert sqlite_row["status"] == "ok"
    assert sqlite_row["version"] == sqlite3.sqlite_version
    # the dataset file of the scale in use: the report makes no database of its own
    assert sqlite_row["detail"] == "file $COURSE_DATA_DIR/course_tiny.sqlite"
    assert sorted(p.name for p in fresh.glob("*.sqlite")) == ["course_tiny.sqlite"]
    assert not rows.index.str.contains("sqlite server|sqlite library").any()
    assert rows.loc["sqlalchemy", "status"] == "ok"
    assert set(PACKAGES) <= set(rows.index)
    assert "postgresql server" not in rows.index
    assert rows.loc["redis server", "status"] == "needed from notebook 08"
    assert servers_ready(report) == ["sqlite"]


def test_postgresql_drivers_are_optional_on_the_sqlite_route(fresh: Path) -> None:
    """COURSE_BACKENDS=sqlite needs neither asyncpg nor psycopg nor pgserver."""
    rows = environment_report(backends=["sqlite"], scale="tiny").set_index("component")
    for package in ("asyncpg", "psycopg", "pgserver"):
        assert rows.loc[package, "status"].startswith("optional: "), package
        assert rows.loc[package, "detail"].endswith("not needed with COURSE_BACKENDS=sqlite")
    assert rows.loc["aiosqlite", "status"] == "ok"


def test_a_missing_package_is_optional_only_off_its_route(
    fresh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing asyncpg fails the PostgreSQL route's check, not the SQLite route's."""
    import course_lib.environment as environment

    real = environment._version
    monkeypatch.setattr(environment, "_version", lambda p: None if p == "asyncpg" else real(p))
    sqlite_only = environment_report(backends=["sqlite"], scale="tiny")
    assert sqlite_only.set_index("component").loc["asyncpg", "status"] == (
        "optional: not installed"
    )
    assert servers_ready(sqlite_only) == ["sqlite"]
    monkeypatch.setenv("COURSE_POSTGRES_URL", "postgresql://postgres@127.0.0.1:1/postgres")
    both = environment_report(backends=["sqlite", "postgresql"], scale="tiny")
    rows = both.set_index("component")
    assert rows.loc["asyncpg", "status"] == "missing"
    assert rows.loc["pgserver", "detail"].endswith("not needed: COURSE_POSTGRES_URL is set")
    with pytest.raises(CourseConfigError, match="asyncpg: PostgreSQL's async driver"):
        servers_ready(both)


def test_environment_report_defaults_to_the_backends_in_use(
    fresh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COURSE_BACKENDS=sqlite: PostgreSQL is not contacted, even with a dead URL set."""
    monkeypatch.setenv("COURSE_BACKENDS", "sqlite")
    monkeypatch.setenv("COURSE_SCALE", "tiny")
    monkeypatch.setenv("COURSE_POSTGRES_URL", "postgresql://postgres@127.0.0.1:1/postgres")
    rows = environment_report().set_index("component")
    assert "postgresql server" not in rows.index
    assert rows.loc["sqlite (in-process library)", "status"] == "ok"
    assert rows.loc["sqlite (in-process library)", "detail"].endswith("course_tiny.sqlite")
    assert servers_ready(rows.reset_index()) == ["sqlite"]


def test_environment_report_uses_the_dataset_database(pg_service) -> None:
    """On a shared server the report connects to the scale's dataset database: no new one."""
    from sqlalchemy import text

    with pg_service.sync_engine.connect() as conn:
        before = set(conn.scalars(text("select datname from pg_database")))
    report = environment_report(backends=["postgresql"], scale="tiny")
    with pg_service.sync_engine.connect() as conn:
        after = set(conn.scalars(text("select datname from pg_database")))
    assert after - before <= {"course_tiny"}
    assert servers_ready(report) == ["postgresql"]


def test_redis_is_never_a_failure_of_notebook_00(
    fresh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead COURSE_REDIS_URL is not contacted: Redis is 'needed from notebook 08'."""
    monkeypatch.setenv("COURSE_REDIS_URL", "redis://127.0.0.1:1/0")
    report = environment_report(backends=["sqlite"], scale="tiny")
    rows = report.set_index("component")
    assert rows.loc["redis server", "status"] == "needed from notebook 08"
    assert rows.loc["redis server", "detail"] == "will use COURSE_REDIS_URL"
    assert servers_ready(report) == ["sqlite"]


def test_environment_report_unavailable_servers(
    fresh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Servers that do not answer are 'unavailable' with their one-line reason."""
    monkeypatch.setenv("COURSE_POSTGRES_URL", "postgresql://postgres@127.0.0.1:1/postgres")
    monkeypatch.setenv("COURSE_REDIS_URL", "redis://127.0.0.1:1/0")
    report = environment_report(backends=["postgresql"], redis=True, scale="tiny")
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
    """scratch() starts from empty course tables in this kernel's scratch database, every call."""
    from sqlalchemy import insert

    from course_lib.data import row_counts
    from course_lib.models import Tag

    scratch = course.scratch("unit")
    assert scratch.names == course.names
    assert scratch.sqlite.database == scratch_database("unit", "tiny")
    with scratch.sqlite.sync_engine.begin() as conn:
        conn.execute(insert(Tag), [{"name": "a"}, {"name": "b"}])
    assert row_counts(scratch.sqlite)["tags"] == 2
    again = course.scratch("unit")
    assert again.sqlite.database == scratch.sqlite.database
    assert set(row_counts(again.sqlite).values()) == {0}
    assert row_counts(course.sqlite)["tags"] == 6  # the shared dataset is untouched


def test_scratch_names_carry_scale_checkout_and_process(course: Course) -> None:
    """scratch_<name>_<scale>_<checkout>_p<pid>: a medium copy never meets a small reader,
    two checkouts on one server never meet, and two kernels never fill the same copy."""
    name = course.scratch("pagination").sqlite.database
    assert name == f"scratch_pagination_tiny_{checkout_tag()}_p{os.getpid()}"
    assert scratch_database("pagination", "medium") != scratch_database("pagination", "small")
    # another process gets another name: see test_two_kernels_filling_a_scratch_copy_...


def test_scratch_names_fit_postgresql_identifiers() -> None:
    """A long name is cut so the whole identifier stays within 63 characters, tag kept."""
    name = scratch_database("x" * 80, "medium")
    assert len(name) == 63
    assert name.endswith(f"_medium_{checkout_tag()}_p{os.getpid()}")
    with pytest.raises(CourseConfigError, match="is not allowed"):
        scratch_database("Bad-Name", "tiny")


def test_two_kernels_filling_a_scratch_copy_do_not_collide(course: Course) -> None:
    """Another process fills scratch('bulk') with the same rows at the same time: no
    ``UNIQUE constraint failed``, as each kernel has its own copy."""
    from sqlalchemy import insert

    from course_lib.models import Tag

    mine = course.scratch("bulk").sqlite
    code = (
        "import os\n"
        "from sqlalchemy import insert\n"
        "from course_lib.course import setup\n"
        "from course_lib.models import Tag\n"
        "db = setup(scale='tiny', backends='sqlite').scratch('bulk').sqlite\n"
        "with db.sync_engine.begin() as conn:\n"
        "    conn.execute(insert(Tag), [{'id': i, 'name': f't{i}'} for i in range(1, 50)])\n"
        "print(db.database)\n"
    )
    with mine.sync_engine.begin() as conn:
        conn.execute(insert(Tag), [{"id": i, "name": f"t{i}"} for i in range(1, 50)])
        theirs = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy()
        )
    assert theirs.returncode == 0, theirs.stderr[-300:]
    assert theirs.stdout.strip() != mine.database
    folder = Path(mine.sync_url.database).parent
    assert not (folder / f"{theirs.stdout.strip()}.sqlite").exists()  # dropped at its exit


def test_stale_scratch_of_dead_processes_is_dropped(course: Course) -> None:
    """Scratch files of this checkout whose process died (a killed kernel) go at the next
    scratch(); those of live processes stay."""
    folder = Path(course.sqlite.sync_url.database).parent
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    stale = folder / f"scratch_old_tiny_{checkout_tag()}_p{dead}.sqlite"
    alive = folder / f"scratch_old_tiny_{checkout_tag()}_p{os.getppid()}.sqlite"
    foreign = folder / f"scratch_old_tiny_00000000_p{dead}.sqlite"
    for path in (stale, alive, foreign):
        path.write_bytes(b"")
    stale_lock = data_dir() / f"build-sqlite-{stale.stem}.lock"
    stale_lock.write_bytes(b"")
    course.scratch("unit")
    assert not stale.exists()
    assert not stale_lock.exists()  # its lock file goes with it: nothing piles up
    assert alive.exists() and foreign.exists()
    alive.unlink()
    foreign.unlink()


def test_setup_resolves_the_scale_once(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """setup() resolves COURSE_SCALE once and passes the Scale down: nothing below
    re-reads the environment (a change after setup() does not change what rebuild builds)."""
    import course_lib.data as data

    monkeypatch.setenv("COURSE_SCALE", "tiny")
    monkeypatch.setattr(
        data, "choose_scale", lambda *a: pytest.fail("choose_scale called below setup()")
    )
    course = setup(backends="sqlite")
    monkeypatch.setenv("COURSE_SCALE", "medium")
    assert course.rebuild(progress=False)["rows"].tolist() == [261]
    assert course.scratch("unit", filled=True).row_counts()["sqlite"].sum() == 261


def test_short_errors_frees_what_a_raising_cell_abandoned(sqlite_db: Backend) -> None:
    """aiosqlite's MissingGreenlet leaves a never-awaited coroutine: no warning escapes."""
    import asyncio
    import gc
    import warnings

    from sqlalchemy import select
    from sqlalchemy.exc import StatementError

    from course_lib.course import short_errors
    from course_lib.models import User

    async def loop_in_cell() -> None:
        try:
            with short_errors():
                async with sqlite_db.AsyncSession() as session:
                    users = (await session.scalars(select(User).limit(3))).all()
                    [len(user.posts) for user in users]  # a lazy load with no await
        finally:
            await sqlite_db.engine.dispose()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(StatementError, match="MissingGreenlet"):
            asyncio.run(loop_in_cell())
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []


def test_short_errors_drops_the_path_from_an_import_error() -> None:
    """ "cannot import name" carries the module's file path: a path of this machine."""
    with pytest.raises(ImportError) as raised, short_errors():
        from sqlalchemy.ext.baked import baked_query  # noqa: F401
    assert str(raised.value) == "cannot import name 'baked_query' from 'sqlalchemy.ext.baked'"
