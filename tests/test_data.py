"""Tests for course_lib.data: deterministic rows, the same on every backend, idempotent builds."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from course_lib.backends import Backend, sqlite
from course_lib.data import (
    BuildReport,
    build,
    current_fingerprint,
    dataset,
    expected_rows,
    fingerprint,
    generate,
    main,
    row_counts,
)
from course_lib.models import Base, Car, User
from course_lib.settings import CourseConfigError, lookup_scale, scales, seed

TINY = lookup_scale("tiny")
TABLE_ORDER = ["users", "tags", "posts", "post_tags", "comments", "dealerships", "cars"]


def _generated(seed_value: int | None = None) -> dict[str, list[dict]]:
    """All generated rows of the tiny scale, chunks joined per table."""
    tables: dict[str, list[dict]] = {}
    for name, rows in generate(TINY, seed_value):
        tables.setdefault(name, []).extend(rows)
    return tables


def _table_rows(db: Backend, name: str) -> list[dict]:
    """Every row of a course table, ordered by its primary key, as plain dicts."""
    table = Base.metadata.tables[name]
    with db.sync_engine.connect() as conn:
        result = conn.execute(select(table).order_by(*table.primary_key.columns))
        return [dict(row._mapping) for row in result]


@pytest.fixture
def scratch_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """An empty SQLite database in a private COURSE_DATA_DIR."""
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    return sqlite("course_scratch")


@pytest.fixture(params=["pg_service", "pg_embedded"])
def scratch_pg(
    request: pytest.FixtureRequest, fresh_database: Callable[[Backend, str], Backend]
) -> Backend:
    """An empty database, unique to this run, on each PostgreSQL."""
    return fresh_database(request.getfixturevalue(request.param), "data")


# ----------------------------------------------------------------------- generate


def test_generate_is_deterministic() -> None:
    """The same seed gives identical rows."""
    assert list(generate(TINY, seed=7)) == list(generate(TINY, seed=7))


def test_generate_depends_on_the_seed() -> None:
    """A different seed gives different rows (same shapes and counts)."""
    a, b = _generated(7), _generated(8)
    assert a != b
    assert a["users"] != b["users"]
    assert {k: len(v) for k, v in a.items()} == {k: len(v) for k, v in b.items()}


def test_generate_default_seed_is_the_configured_one() -> None:
    """seed=None uses the seed from data/scales.toml."""
    assert _generated(None) == _generated(seed())


def test_generate_order_and_counts() -> None:
    """Tables come in foreign-key order and in exactly the expected numbers."""
    names = [name for name, _ in generate(TINY, seed=1)]
    assert names == TABLE_ORDER
    counts = {name: len(rows) for name, rows in _generated(1).items()}
    assert counts == expected_rows(TINY)


def test_generate_first_user() -> None:
    """Ids start at 1 and e-mails are derived from them (the module doctest)."""
    users = _generated(1)["users"]
    assert len(users) == 12
    assert [u["id"] for u in users] == list(range(1, 13))
    assert users[0]["email"] == "user1@example.com"


def test_generated_rows_respect_the_scale() -> None:
    """Foreign keys point at existing rows and values stay in their documented ranges."""
    tables = _generated()
    user_ids = {u["id"] for u in tables["users"]}
    post_ids = {p["id"] for p in tables["posts"]}
    assert {p["author_id"] for p in tables["posts"]} <= user_ids
    assert {c["post_id"] for c in tables["comments"]} <= post_ids
    assert all(len(p["body"]) == TINY.body_chars for p in tables["posts"])
    assert all(4_000 <= c["price"] < 80_000 and c["price"] % 100 == 0 for c in tables["cars"])
    assert all(c["updated_at"] >= c["created_at"] for c in tables["cars"])
    pairs = [(link["post_id"], link["tag_id"]) for link in tables["post_tags"]]
    assert len(pairs) == len(set(pairs))


def test_expected_rows_tiny() -> None:
    """The tiny scale's expected row counts."""
    assert expected_rows(TINY) == {
        "users": 12,
        "tags": 6,
        "posts": 36,
        "post_tags": 72,
        "comments": 72,
        "dealerships": 3,
        "cars": 60,
    }


# ----------------------------------------------------------------------- built data


def test_row_counts_match_expected(any_db: Backend) -> None:
    """Each backend holds exactly expected_rows(tiny)."""
    assert row_counts(any_db) == expected_rows(TINY)


def test_fingerprint_is_recorded(any_db: Backend) -> None:
    """course_meta records the scale, seed and schema version that were built."""
    assert current_fingerprint(any_db) == fingerprint(TINY, seed())
    assert fingerprint(TINY, 5) == "scale=tiny;seed=5;schema=1"


def test_database_holds_the_generated_rows(any_db: Backend) -> None:
    """Every table holds exactly the generated rows, values and types included."""
    generated = _generated()
    for name in TABLE_ORDER:
        assert _table_rows(any_db, name) == generated[name], name


def test_same_rows_on_sqlite_and_postgresql(sqlite_db: Backend, pg_service: Backend) -> None:
    """SQLite and the PostgreSQL service hold the same users and cars, row for row."""
    for name in ("users", "cars", "post_tags"):
        on_sqlite, on_pg = _table_rows(sqlite_db, name), _table_rows(pg_service, name)
        assert len(on_sqlite) == expected_rows(TINY)[name]
        assert on_sqlite == on_pg, name
    with sqlite_db.Session() as s1, pg_service.Session() as s2:
        query = select(Car.id, Car.make, Car.price, Car.is_sold).order_by(Car.id)
        assert [tuple(r) for r in s1.execute(query)] == [tuple(r) for r in s2.execute(query)]
        assert isinstance(s1.scalar(select(Car.is_sold).limit(1)), bool)
        assert isinstance(s1.scalar(select(User.created_at).limit(1)), datetime)


# ----------------------------------------------------------------------- build


def test_current_fingerprint_of_empty_database(scratch_sqlite: Backend) -> None:
    """A database without course data has no fingerprint."""
    assert current_fingerprint(scratch_sqlite) is None


def test_build_is_idempotent_and_force_rebuilds(scratch_sqlite: Backend) -> None:
    """The first build builds, the second skips, force=True builds again with the same rows."""
    first = build(scratch_sqlite, TINY, progress=False)
    assert first.built is True
    assert first.rows == expected_rows(TINY)
    assert first.seconds > 0

    second = build(scratch_sqlite, TINY)
    assert second.built is False
    assert second.seconds == 0.0
    assert second.rows == expected_rows(TINY)
    assert row_counts(scratch_sqlite) == expected_rows(TINY)

    forced = build(scratch_sqlite, TINY, force=True, progress=False)
    assert forced.built is True
    assert forced.rows == expected_rows(TINY)
    assert _table_rows(scratch_sqlite, "cars") == _generated()["cars"]


def test_build_with_another_seed_rebuilds(scratch_sqlite: Backend) -> None:
    """A different seed changes the fingerprint, so build() builds again."""
    build(scratch_sqlite, TINY, progress=False)
    again = build(scratch_sqlite, TINY, seed=99, progress=False)
    assert again.built is True
    assert current_fingerprint(scratch_sqlite) == fingerprint(TINY, 99)
    assert _table_rows(scratch_sqlite, "users") == _generated(99)["users"]


def test_build_on_postgresql_resets_sequences(scratch_pg: Backend) -> None:
    """After a build, new rows without an id get the next id after the generated ones."""
    report = build(scratch_pg, TINY, progress=False)
    assert report.built is True
    assert build(scratch_pg, TINY).built is False
    with scratch_pg.Session() as session, session.begin():
        user = User(name="New", email="new@example.com", created_at=datetime(2025, 1, 1))
        session.add(user)
        session.flush()
        assert user.id == TINY.users + 1
        car = Car(
            dealership_id=1,
            make="Kia",
            model="Niro",
            year=2024,
            price=20_000,
            created_at=datetime(2025, 1, 1),
            updated_at=datetime(2025, 1, 1),
        )
        session.add(car)
        session.flush()
        assert car.id == TINY.cars + 1
        session.rollback()
    assert row_counts(scratch_pg) == expected_rows(TINY)


def test_dataset_builds_into_course_scale(scratch_sqlite: Backend) -> None:
    """dataset() returns the backend of database course_<scale>, holding that scale."""
    db = dataset("sqlite", TINY)
    assert db.database == "course_tiny"
    assert row_counts(db) == expected_rows(TINY)


def test_cli_build(scratch_sqlite: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m course_lib.data build` builds and then reports it already built."""
    assert main(["build", "--scale", "tiny", "--backend", "sqlite"]) == 0
    assert main(["build", "--scale", "tiny", "--backend", "sqlite"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"sqlite: course_tiny built in \d+\.\d s \(261 rows\)", lines[0])
    assert lines[1] == "sqlite: course_tiny already built (261 rows)"


# ----------------------------------------------------------------------- BuildReport


def test_build_report_repr() -> None:
    """The repr says whether it built, how long it took, and the rows with thousands separators."""
    built = BuildReport("postgresql", "course_small", "small", True, 12.345, {"a": 1000, "b": 234})
    assert repr(built) == "postgresql: course_small built in 12.3 s (1,234 rows)"
    skipped = BuildReport("sqlite", "course_tiny", "tiny", False, 0.0, expected_rows(TINY))
    assert repr(skipped) == "sqlite: course_tiny already built (261 rows)"
    assert (
        repr(BuildReport("sqlite", "x", "tiny", False, 0.0)) == "sqlite: x already built (0 rows)"
    )


def test_row_count_total_of_tiny() -> None:
    """261 rows in all at the tiny scale (the number the reprs above use)."""
    assert sum(expected_rows(TINY).values()) == 261


# ----------------------------------------------------------- the scale, resolved once


def test_build_and_dataset_take_a_scale_not_none(scratch_sqlite: Backend) -> None:
    """build()/dataset() never resolve the scale themselves: None is a TypeError."""
    with pytest.raises(TypeError, match="take a Scale"):
        build(scratch_sqlite, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="take a Scale"):
        dataset("sqlite", None)  # type: ignore[arg-type]


def test_dataset_ignores_the_environment(
    scratch_sqlite: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Scale passed in is what is built, whatever COURSE_SCALE or settings.json say."""
    monkeypatch.setenv("COURSE_SCALE", "large")
    (Path(scratch_sqlite.sync_url.database).parent / "settings.json").write_text("[broken")
    db = dataset("sqlite", TINY)
    assert current_fingerprint(db) == fingerprint(TINY, seed())


def test_a_scale_name_is_looked_up_not_resolved(scratch_sqlite: Backend) -> None:
    """A name (as in doctests) is a plain lookup in scales.toml; an unknown one is one line."""
    assert build(scratch_sqlite, "tiny", progress=False).scale == "tiny"
    with pytest.raises(CourseConfigError, match="Unknown scale 'huge'"):
        build(scratch_sqlite, "huge")


def test_cli_resolves_the_scale_at_the_boundary(
    scratch_sqlite: Backend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --scale, the command line resolves COURSE_SCALE once and builds that."""
    monkeypatch.setenv("COURSE_SCALE", "tiny")
    assert main(["build", "--backend", "sqlite"]) == 0
    assert capsys.readouterr().out.startswith("sqlite: course_tiny built in ")


# ------------------------------------------------------- readers during a rebuild


def _read_while(db: Backend, work: Callable[[], None], reader_connects: Callable) -> list:
    """Run ``work`` while a thread reads users/cars counts; return what the thread saw."""
    import threading

    seen: list = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                seen.append(reader_connects())
            except Exception as exc:
                seen.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        work()
    finally:
        done.set()
        thread.join()
    return seen


def _counts(conn) -> tuple[int, int, str]:
    users = conn.exec_driver_sql("select count(*) from users").scalar()
    cars = conn.exec_driver_sql("select count(*) from cars").scalar()
    meta = conn.exec_driver_sql("select value from course_meta").scalar()
    return users, cars, meta


def test_sqlite_readers_never_see_a_half_built_dataset(scratch_sqlite: Backend) -> None:
    """A rebuild writes a new file and renames it over the old: readers see whole datasets.

    Before, the rebuild dropped the tables in place, and a reader got ``no such table: users``.
    """
    small = scales()["tiny"]
    build(scratch_sqlite, small, progress=False)
    reader = Backend(
        "sqlite", scratch_sqlite.sync_url, scratch_sqlite.async_url, "", "reader"
    )  # another kernel's engine
    held = reader.sync_engine.connect()  # a connection opened before the rebuild
    before = _counts(held)

    def one_reader() -> tuple[int, int, str]:
        with reader.sync_engine.connect() as conn:
            return _counts(conn)

    def rebuild() -> None:
        for seed_value in (1, 2, 3, 4):
            build(scratch_sqlite, small, seed=seed_value, force=True, progress=False)

    seen = _read_while(scratch_sqlite, rebuild, one_reader)
    errors = [s for s in seen if isinstance(s, Exception)]
    assert errors == []
    assert len(seen) > 0
    assert {s[:2] for s in seen} == {(small.users, small.cars)}
    assert _counts(held) == before  # an open connection keeps reading the old, whole file
    held.close()
    reader.sync_engine.dispose()
    leftovers = list(Path(scratch_sqlite.sync_url.database).parent.glob("*.building-*"))
    assert leftovers == []


def test_postgres_readers_never_see_a_half_built_dataset(scratch_pg: Backend) -> None:
    """A rebuild is one transaction: readers wait for its commit, and never miss a table."""
    build(scratch_pg, TINY, progress=False)
    reader = scratch_pg.fresh()

    def one_reader() -> tuple[int, int, str]:
        with reader.sync_engine.connect() as conn:
            return _counts(conn)

    def rebuild() -> None:
        for seed_value in (1, 2, 3):
            build(scratch_pg, TINY, seed=seed_value, force=True, progress=False)

    seen = _read_while(scratch_pg, rebuild, one_reader)
    reader.sync_engine.dispose()
    assert [s for s in seen if isinstance(s, Exception)] == []
    assert {s[:2] for s in seen} == {(TINY.users, TINY.cars)}
    assert current_fingerprint(scratch_pg) == fingerprint(TINY, 3)


def _probe_mid_build(monkeypatch: pytest.MonkeyPatch, probe: Callable[[], object]) -> list:
    """Make build() call ``probe`` after its first batch of rows; return what it saw."""
    import course_lib.data as data

    seen: list = []
    real = data.generate

    def generate(*args: object, **kwargs: object) -> Iterator:
        for i, chunk in enumerate(real(*args, **kwargs)):  # type: ignore[arg-type]
            yield chunk
            if i == 1:
                try:
                    seen.append(probe())
                except Exception as exc:
                    seen.append(exc)

    monkeypatch.setattr(data, "generate", generate)
    return seen


def test_sqlite_reader_in_the_middle_of_a_rebuild_sees_the_old_dataset(
    scratch_sqlite: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half-way through a rebuild, another connection still reads the whole old dataset."""
    build(scratch_sqlite, TINY, progress=False)
    reader = Backend("sqlite", scratch_sqlite.sync_url, scratch_sqlite.async_url, "", "reader")

    def probe() -> tuple[int, int, str]:
        with reader.sync_engine.connect() as conn:
            return _counts(conn)

    seen = _probe_mid_build(monkeypatch, probe)
    build(scratch_sqlite, TINY, seed=5, force=True, progress=False)
    reader.sync_engine.dispose()
    assert seen == [(TINY.users, TINY.cars, fingerprint(TINY, seed()))]
    assert current_fingerprint(scratch_sqlite) == fingerprint(TINY, 5)


def test_postgres_reader_in_the_middle_of_a_rebuild_waits(
    scratch_pg: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half-way through a rebuild, a reader waits (here: gives up after 200 ms) for the commit."""
    from sqlalchemy.exc import OperationalError

    build(scratch_pg, TINY, progress=False)
    reader = scratch_pg.fresh()

    def probe() -> tuple[int, int, str]:
        with reader.sync_engine.connect() as conn:
            conn.exec_driver_sql("SET lock_timeout = '200ms'")
            return _counts(conn)

    seen = _probe_mid_build(monkeypatch, probe)
    build(scratch_pg, TINY, seed=5, force=True, progress=False)
    reader.sync_engine.dispose()
    assert len(seen) == 1
    assert isinstance(seen[0], OperationalError)
    assert "lock timeout" in str(seen[0])
    assert current_fingerprint(scratch_pg) == fingerprint(TINY, 5)


def test_postgres_rebuild_waits_for_an_open_transaction_then_says_why(
    scratch_pg: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel that keeps a transaction open on the dataset: the rebuild stops in one line."""
    import course_lib.data as data

    build(scratch_pg, TINY, progress=False)
    monkeypatch.setattr(data, "LOCK_WAIT", "300ms")
    other = scratch_pg.fresh()
    with other.Session() as session:
        session.scalar(select(User.id).limit(1))  # the transaction stays open
        with pytest.raises(CourseConfigError) as info:
            build(scratch_pg, TINY, force=True, progress=False)
    other.sync_engine.dispose()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"Cannot rebuild {scratch_pg.database}: another kernel has kept")
    assert "Close that session or restart that kernel" in message
    assert current_fingerprint(scratch_pg) == fingerprint(TINY, seed())  # the old data stays
