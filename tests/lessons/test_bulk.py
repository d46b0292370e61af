"""Tests for course_lib.lessons.bulk (notebook 03): rows, raw drivers, reports, the exercise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import InterfaceError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from course_lib.backends import Backend
from course_lib.course import short_errors
from course_lib.data import reset_schema
from course_lib.lessons import bulk
from course_lib.measure import count_statements
from course_lib.models import Car, Dealership

ROWS = bulk.car_rows(40, start=1_000)


@pytest.fixture
def scratch_next_to(fresh_database: Any) -> Callable[[Backend], Backend]:
    """``scratch_next_to(shared)``: empty course tables in a database unique to this run,
    on the same server as ``shared`` (never the shared dataset)."""

    def make(shared: Backend) -> Backend:
        return bulk.reset_cars(reset_schema(fresh_database(shared, "bulk")))

    return make


@pytest.fixture(params=["sqlite_db", "pg_service", "pg_embedded"])
def scratch_db(
    request: pytest.FixtureRequest, scratch_next_to: Callable[[Backend], Backend]
) -> Iterator[Backend]:
    """An empty scratch database (never the shared dataset) on each backend in turn."""
    db = scratch_next_to(request.getfixturevalue(request.param))
    yield db
    asyncio.run(db.dispose())


def _table(db: Backend) -> list[tuple]:
    with db.Session() as session:
        rows = session.execute(select(*(getattr(Car, c) for c in bulk.CAR_COLUMNS)))
        return sorted(tuple(r) for r in rows)


# ------------------------------------------------------------------ rows and resets


def test_car_rows_are_deterministic_complete_and_shiftable() -> None:
    assert bulk.car_rows(25) == bulk.car_rows(25)
    assert all(set(row) == set(bulk.CAR_COLUMNS) for row in bulk.car_rows(25))
    assert bulk.car_rows(5, start=10) == bulk.car_rows(15)[10:]
    dealerships = {row["dealership_id"] for row in bulk.car_rows(25)}
    assert dealerships == {d["id"] for d in bulk.DEALERSHIPS}


def test_reset_cars_empties_the_table_and_restarts_ids(scratch_db: Backend) -> None:
    bulk.reset_cars(scratch_db, cars=7)
    bulk.reset_cars(scratch_db, cars=3)
    with scratch_db.Session() as session:
        assert session.scalars(select(Car.id).order_by(Car.id)).all() == [1, 2, 3]
        assert session.scalar(select(func.count()).select_from(Dealership)) == len(bulk.DEALERSHIPS)
    assert _table(scratch_db) == bulk.expected_import(bulk.car_rows(3))


# ------------------------------------------------------------------ raw drivers


def test_raw_executemany_writes_rows_sqlalchemy_reads_back(scratch_db: Backend) -> None:
    with count_statements(scratch_db) as log:
        bulk.raw_executemany(scratch_db, ROWS)
    assert log.count == 0  # the raw driver goes around SQLAlchemy's events
    assert _table(scratch_db) == bulk.expected_import(ROWS)


@pytest.mark.parametrize("load", [bulk.asyncpg_executemany, bulk.asyncpg_copy])
def test_asyncpg_raw_paths_write_the_rows(pg_service: Backend, scratch_next_to, load) -> None:
    db = scratch_next_to(pg_service)

    async def run() -> None:
        await load(db, ROWS)
        await db.dispose()

    asyncio.run(run())
    assert _table(db) == bulk.expected_import(ROWS)


# ------------------------------------------------------------------ the lesson's facts


def test_add_all_is_one_insert_per_row_on_sqlite_and_batched_on_postgresql(
    scratch_db: Backend,
) -> None:
    with count_statements(scratch_db) as log, scratch_db.Session() as session:
        session.add_all([Car(**row) for row in bulk.car_rows(6)])
        session.commit()
    assert log.count == (6 if scratch_db.name == "sqlite" else 1)


def test_multi_values_breaks_asyncpg_parameter_limit(pg_service: Backend, scratch_next_to) -> None:
    db = scratch_next_to(pg_service)
    rows = bulk.car_rows(4_100)  # 32,800 bind parameters

    async def run() -> int:
        try:
            async with db.AsyncSession() as session:
                with pytest.raises(InterfaceError, match="32767"), short_errors():
                    await session.execute(insert(Car).values(rows))
            async with db.AsyncSession() as session:
                with count_statements(db) as log:
                    await session.execute(insert(Car), rows)
                await session.commit()
            return log.count
        finally:
            await db.dispose()

    assert asyncio.run(run()) == 1


# ------------------------------------------------------------------ reports


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "strategy": ["slow", "fast", "raw", "slow", "fast", "raw"],
            "backend": ["sqlite"] * 3 + ["postgresql"] * 3,
            "n": [10, 1000, 1000, 10, 1000, 1000],
            "median_ms": [100.0, 20.0, 10.0, 50.0, 30.0, 15.0],
            "q1_ms": [90.0, 18.0, 9.0, 45.0, 27.0, 14.0],
            "q3_ms": [110.0, 22.0, 11.0, 55.0, 33.0, 16.0],
            "iqr_ms": [20.0, 4.0, 2.0, 10.0, 6.0, 2.0],
            "statements": [10, 1, 0, 10, 1, 0],
        }
    )


def test_vs_raw_compares_per_row_against_the_raw_driver() -> None:
    table = bulk.vs_raw(_frame(), raw=["raw"])
    sqlite = table[table["backend"] == "sqlite (sqlite3)"].set_index("strategy")
    assert sqlite.loc["slow", "us_per_row"] == pytest.approx(10_000.0)
    assert sqlite.loc["slow", "rows_per_s"] == 100
    assert sqlite.loc["fast", "x_raw"] == pytest.approx(2.0)
    assert sqlite.loc["slow", "x_raw"] == pytest.approx(1000.0)
    assert {"median_ms", "q1_ms", "q3_ms", "iqr_ms"} <= set(table.columns)
    assert set(table["backend"]) == {"sqlite (sqlite3)", "postgresql (psycopg)"}
    assert bulk.fastest_vs_raw(table, "postgresql") == ("fast", pytest.approx(2.0))
    speedup = bulk.per_row_speedup(table, "slow", "fast")
    assert speedup["sqlite (sqlite3)"] == pytest.approx(500.0)
    with pytest.raises(ValueError, match="raw"):
        bulk.vs_raw(_frame(), raw=["missing"])


def test_vs_raw_accepts_concatenated_frames() -> None:
    frame = pd.concat([_frame()[:1], _frame()[1:]])  # index labels repeat after a concat
    frame.index = [0] * len(frame)
    table = bulk.vs_raw(frame, raw=["raw"])
    assert table.set_index(["strategy", "backend"]).loc[("fast", "sqlite (sqlite3)"), "x_raw"] == 2


def test_best_of_keeps_each_strategys_lower_median() -> None:
    first, second = _frame(), _frame()
    second.loc[0, "median_ms"] = 50.0  # "slow" on sqlite was faster in the second run
    second.loc[1, "median_ms"] = 90.0  # "fast" was slower in the second run
    best = bulk.best_of([first, second]).set_index(["strategy", "backend"])
    assert best.loc[("slow", "sqlite"), "median_ms"] == 50.0
    assert best.loc[("fast", "sqlite"), "median_ms"] == 20.0
    assert len(best) == len(first)


def test_vs_raw_labels_a_given_driver() -> None:
    table = bulk.vs_raw(_frame()[3:], raw=["raw"], driver="asyncpg")
    assert set(table["backend"]) == {"postgresql (asyncpg)"}


def test_ratio_chart_draws_a_log_axis() -> None:
    fig = bulk.ratio_chart(bulk.vs_raw(_frame(), raw=["raw"]), "demo")
    assert fig.axes[0].get_xscale() == "log"
    assert "scale" not in fig.axes[0].get_title()


def test_profile_adds_time_up_by_area_per_strategy(sqlite_db: Backend) -> None:
    def query() -> None:
        with sqlite_db.Session() as session:
            session.scalars(select(Car).limit(20)).all()

    profiled = bulk.profile({"query": query, "python": lambda: sorted(range(5_000))}, repeats=2)
    assert list(profiled.areas.columns) == ["query", "python"]
    assert profiled.areas.loc["total", "query"] > 0
    assert profiled.areas.loc["SQLAlchemy: ORM bulk persistence", "python"] == 0
    parts = profiled.areas.drop(index=["total", "of which gc pauses"])
    assert profiled.areas.loc["total"].sum() == pytest.approx(parts.to_numpy().sum())
    assert (profiled.areas.loc["of which gc pauses"] >= 0).all()
    import gc

    assert gc.get_freeze_count() == 0  # unfrozen afterwards
    assert set(profiled.functions["strategy"]) == {"query", "python"}


def test_short_errors_trims_the_sql_and_reraises() -> None:
    error = StatementError("boom", "SELECT " + "x, " * 500, {}, ValueError("x"))
    with pytest.raises(StatementError) as caught, short_errors(limit=20):
        raise error
    assert caught.value is error
    assert error.statement == "SELECT x, x, x, x, x …"
    with pytest.raises(KeyError), short_errors():
        raise KeyError("other errors pass through")


def test_sql_digest_groups_and_elides(sqlite_db: Backend) -> None:
    with count_statements(sqlite_db) as log, sqlite_db.Session() as session:
        for _ in range(3):
            session.scalars(select(Car.id).where(Car.price > 0).limit(1)).all()
    digest = bulk.sql_digest(log, width=40)
    lines = digest.splitlines()
    assert lines[0] == "3 statement(s)"
    assert len(lines) == 2 and lines[1].strip().startswith("3 × SELECT")
    assert " … " in lines[1]


def test_price_feed_changes_every_price_on_every_call() -> None:
    first, second = bulk.price_feed(50), bulk.price_feed(50)
    assert sorted(first) == list(range(1, 51))
    assert all(second[i] > first[i] for i in first)  # above every earlier price: a
    # discount (the notebook's same-change-for-all UPDATE) can never land on a later feed


def test_statement_counts_run_each_strategy_once_per_backend(sqlite_db, scratch_next_to) -> None:
    db = scratch_next_to(sqlite_db)

    def two_selects(db: Backend, n: int) -> None:
        """two selects"""
        with db.Session() as session:
            for _ in range(2):
                session.scalars(select(Car.id).limit(n)).all()

    counts = bulk.statement_counts([two_selects], [db], 3, prepare=bulk.reset_cars)
    assert counts.loc["two selects", ("statements", "sqlite")] == 2
    assert counts.loc["two selects", ("round_trips", "sqlite")] >= 2


def test_uncached_parses_counts_and_restores(pg_service: Backend, scratch_next_to) -> None:
    from psycopg import _queries

    db = scratch_next_to(pg_service)
    original = _queries._query2pg_nocache

    def add_all_cars(db: Backend, n: int) -> None:
        """add_all"""
        with db.Session() as session:
            session.add_all([Car(**r) for r in bulk.car_rows(n)])
            session.commit()

    def bulk_insert(db: Backend, n: int) -> None:
        """bulk"""
        with db.Session() as session:
            session.execute(insert(Car), bulk.car_rows(n))
            session.commit()

    counts = bulk.parse_counts([add_all_cars, bulk_insert], db, 20)
    assert counts["uncached_parses"].tolist() == [1, 0]  # 160 values: over the limit
    assert _queries._query2pg_nocache is original
    asyncio.run(db.dispose())


# ------------------------------------------------------------------ closing the gap, psycopg, ids


def test_as_stored_matches_what_datetime_and_boolean_store(scratch_db: Backend) -> None:
    if scratch_db.name != "sqlite":
        pytest.skip("the stored form is SQLite's")
    with scratch_db.sync_engine.begin() as conn:
        conn.execute(insert(bulk.lean_cars), bulk.as_stored(ROWS))
    assert _table(scratch_db) == bulk.expected_import(ROWS)  # Car reads them back as datetimes


def test_lean_cars_has_no_bind_processors_on_sqlite(sqlite_db: Backend) -> None:
    dialect = sqlite_db.sync_engine.dialect
    assert all(c.type._cached_bind_processor(dialect) is None for c in bulk.lean_cars.columns)
    assert Car.__table__.c.created_at.type._cached_bind_processor(dialect) is not None


def test_driver_sql_path_writes_the_rows(scratch_db: Backend) -> None:
    with scratch_db.sync_engine.begin() as conn:
        conn.exec_driver_sql(bulk.driver_insert(scratch_db), bulk.driver_tuples(scratch_db, ROWS))
    assert _table(scratch_db) == bulk.expected_import(ROWS)


def test_gap_breakdown_splits_the_gap_by_subtraction() -> None:
    frame = pd.DataFrame(
        {
            "strategy": ["orm", "core", "stored", "raw", "raw stored"],
            "backend": ["sqlite"] * 5,
            "n": [1000] * 5,
            "median_ms": [40.0, 30.0, 20.0, 15.0, 14.0],
            "q1_ms": [1.0] * 5,
            "q3_ms": [1.0] * 5,
            "iqr_ms": [0.0] * 5,
            "statements": [1, 1, 1, 0, 0],
        }
    )
    table = bulk.vs_raw(frame, raw=["raw"])
    gap = bulk.gap_breakdown(
        table, orm="orm", core="core", stored="stored", raw="raw", raw_stored="raw stored"
    )
    assert gap["us_per_row"].tolist() == [10.0, 9.0, 6.0]  # adds up to orm - raw = 25
    assert gap["share_of_gap"].tolist() == [0.4, 0.36, 0.24]


def test_psycopg_limits_and_page_facts(pg_service: Backend, scratch_next_to) -> None:
    db = bulk.reset_customers(scratch_next_to(pg_service))
    limits = bulk.psycopg_cache_limits()
    assert limits == {"MAX_CACHED_STATEMENT_LENGTH": 4096, "MAX_CACHED_STATEMENT_PARAMS": 50}
    cars = lambda: [Car(**r) for r in bulk.car_rows(20)]  # noqa: E731
    logs = {
        "default": bulk.flushed_pages(db, cars),
        "six": bulk.flushed_pages(db, cars, page_size=6),
        "customers": bulk.flushed_pages(
            db, lambda: [bulk.Customer(**r) for r in bulk.customer_rows(20)]
        ),
    }
    facts = bulk.page_facts(logs)
    assert facts["statements"].tolist() == [1, 4, 1]
    assert facts["bind_values_per_page"].tolist() == [160, 48, 40]
    assert facts["psycopg_caches_parse"].tolist() == [False, True, True]
    with db.Session() as session:  # flushed_pages rolled back
        assert session.scalar(select(func.count()).select_from(Car)) == 0
    assert bulk.psycopg_parse_ms(logs["default"].sql[0]) > 0
    bulk.raw_customers(db, bulk.customer_rows(3))
    with db.Session() as session:
        assert session.scalar(select(func.count()).select_from(bulk.Customer)) == 3
    asyncio.run(db.dispose())


_RESYNC = "SELECT setval(pg_get_serial_sequence('cars', 'id'), (SELECT max(id) FROM cars))"


def test_next_id_falls_behind_explicit_ids_until_setval(
    pg_service: Backend, scratch_next_to
) -> None:
    db = bulk.reset_cars(scratch_next_to(pg_service), cars=3)
    assert bulk.next_id(db) == 4
    with db.sync_engine.begin() as conn:
        conn.execute(insert(Car), [{**r, "id": 10 + i} for i, r in enumerate(bulk.car_rows(2))])
    assert bulk.next_id(db) == 4  # explicit ids do not move the sequence
    with db.sync_engine.begin() as conn:
        conn.execute(
            text("SELECT setval(pg_get_serial_sequence('cars', 'id'), (SELECT max(id) FROM cars))")
        )
    assert bulk.next_id(db) == 12
    asyncio.run(db.dispose())


def test_next_id_is_none_on_sqlite(sqlite_db: Backend) -> None:
    assert bulk.next_id(sqlite_db) is None  # no sequence: an INTEGER PRIMARY KEY takes max + 1


# ------------------------------------------------------------------ the exercise
# Each naive answer the notebook warns about must fail with a message that says why.


def import_with_bulk_insert(session: Session, rows: list[dict]) -> None:
    session.execute(insert(Car), rows)
    session.commit()


async def import_with_bulk_insert_async(session: AsyncSession, rows: list[dict]) -> None:
    await session.execute(insert(Car), rows)
    await session.commit()


async def import_one_by_one_async(session: AsyncSession, rows: list[dict]) -> None:
    for row in rows:
        session.add(Car(**row))
        await session.commit()


async def import_add_all_async(session: AsyncSession, rows: list[dict]) -> None:
    session.add_all([Car(**row) for row in rows])
    await session.commit()


def import_multi_values(session: Session, rows: list[dict]) -> None:
    session.execute(insert(Car).values(rows))
    session.commit()


async def import_multi_values_async(session: AsyncSession, rows: list[dict]) -> None:
    await session.execute(insert(Car).values(rows))
    await session.commit()


async def import_half_async(session: AsyncSession, rows: list[dict]) -> None:
    await session.execute(insert(Car), rows[: len(rows) // 2])
    await session.commit()


async def import_without_commit_async(session: AsyncSession, rows: list[dict]) -> None:
    await session.execute(insert(Car), rows)


async def import_execute_per_row_async(session: AsyncSession, rows: list[dict]) -> None:
    for row in rows:
        await session.execute(insert(Car), [row])
    await session.commit()


def _literal_sql(session: Session, rows: list[dict]) -> str:
    stmt = insert(Car).values(rows)
    dialect = session.get_bind().dialect
    return str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def import_literal_binds_text(session: Session, rows: list[dict]) -> None:
    session.execute(text(_literal_sql(session, rows)))
    session.commit()


def import_literal_binds_driver_sql(session: Session, rows: list[dict]) -> None:
    session.connection().exec_driver_sql(_literal_sql(session, rows))
    session.commit()


def import_fstring_values(session: Session, rows: list[dict]) -> None:
    """SQLite only: the values formatted into the SQL (never do this: injection)."""
    tuples = bulk.driver_tuples(session.get_bind(), rows)  # type: ignore[arg-type]
    values = ", ".join(repr(tuple(int(v) if isinstance(v, bool) else v for v in t)) for t in tuples)
    session.execute(text(f"INSERT INTO cars ({', '.join(bulk.CAR_COLUMNS)}) VALUES {values}"))
    session.commit()


def import_raw_driver_commit_per_row(session: Session, rows: list[dict]) -> None:
    """SQLite: the raw sqlite3 connection, a commit per row (SQLAlchemy sees nothing)."""
    raw = session.connection().connection.driver_connection
    for row in bulk.driver_tuples(session.get_bind(), rows):  # type: ignore[arg-type]
        raw.execute(bulk.driver_insert(session.get_bind()), row)  # type: ignore[arg-type]
        raw.commit()
    session.commit()


def import_bulk_save_objects(session: Session, rows: list[dict]) -> None:
    session.bulk_save_objects([Car(**row) for row in rows])
    session.commit()


def import_bulk_insert_mappings(session: Session, rows: list[dict]) -> None:
    session.bulk_insert_mappings(Car, rows)
    session.commit()


def import_ordered_returning(session: Session, rows: list[dict]) -> None:
    session.scalars(insert(Car).returning(Car.id, sort_by_parameter_order=True), rows).all()
    session.commit()


def import_commit_per_chunk(session: Session, rows: list[dict]) -> None:
    for start in range(0, len(rows), 10):
        session.execute(insert(Car), rows[start : start + 10])
        session.commit()


async def stub_async(session: AsyncSession, rows: list[dict]) -> None:
    raise NotImplementedError("your turn")


def _acheck(fn, db: Backend, rows=None):
    async def run():
        try:
            return await bulk.acheck_import(fn, db, rows)
        finally:
            await db.dispose()

    return asyncio.run(run())


def test_check_rejects_a_commit_per_row(scratch_db: Backend) -> None:
    verdict = bulk.check_import(bulk.reference_import_cars, scratch_db, ROWS)
    assert verdict.status == "built objects", verdict
    assert verdict.statements == len(ROWS)
    assert "40 Car objects" in verdict.message and "40 commit(s)" in verdict.message
    assert "insert(Car), rows" in verdict.message
    assert _acheck(import_one_by_one_async, scratch_db, ROWS).status == "built objects"


def test_check_rejects_one_statement_per_row_without_objects(scratch_db: Backend) -> None:
    verdict = _acheck(import_execute_per_row_async, scratch_db, ROWS)
    assert verdict.status == "over budget", verdict
    assert "budget is 5" in verdict.message


def test_check_rejects_multi_values_as_one_huge_statement(scratch_db: Backend) -> None:
    for verdict in (
        bulk.check_import(import_multi_values, scratch_db),
        _acheck(import_multi_values_async, scratch_db),
    ):
        assert verdict.status == "one huge statement", verdict
        assert verdict.statements == 1
        assert "8000 bind values" in verdict.message and "executemany" in verdict.message


def test_check_rejects_multi_values_without_bind_parameters(scratch_db: Backend) -> None:
    naive = [import_literal_binds_text, import_literal_binds_driver_sql]
    if scratch_db.name == "sqlite":
        naive.append(import_fstring_values)
    for fn in naive:
        verdict = bulk.check_import(fn, scratch_db, ROWS)
        assert verdict.status == "one huge statement", (fn.__name__, verdict)
        assert "40 rows of VALUES" in verdict.message and "executemany" in verdict.message


def test_check_rejects_rows_sent_around_sqlalchemy(sqlite_db, scratch_next_to) -> None:
    db = scratch_next_to(sqlite_db)
    verdict = bulk.check_import(import_raw_driver_commit_per_row, db, ROWS)
    assert verdict.status == "around SQLAlchemy", verdict
    assert "only 0 of the 40 rows" in verdict.message and "raw driver" in verdict.message


def test_check_rejects_add_all_and_legacy_bulk_on_every_backend(scratch_db: Backend) -> None:
    verdict = _acheck(import_add_all_async, scratch_db, ROWS)
    assert verdict.status == "built objects", verdict  # batched on PostgreSQL: still objects
    assert "ORM bulk insert" in verdict.message
    for fn in (import_bulk_save_objects, import_bulk_insert_mappings):
        verdict = bulk.check_import(fn, scratch_db, ROWS)
        assert verdict.status == "legacy bulk API", (fn.__name__, verdict)
        assert "legacy bulk API" in verdict.message and "ORM bulk insert" in verdict.message
    assert not hasattr(Session.bulk_save_objects, "__wrapped__")
    assert Session.bulk_save_objects.__name__ == "bulk_save_objects"  # restored


def test_check_explains_ordered_returning_on_sqlite(sqlite_db, scratch_next_to) -> None:
    db = scratch_next_to(sqlite_db)
    verdict = bulk.check_import(import_ordered_returning, db, ROWS)
    assert verdict.status == "over budget", verdict
    assert "sort_by_parameter_order" in verdict.message and "loop" not in verdict.message


def test_check_rejects_a_commit_per_chunk(scratch_db: Backend) -> None:
    verdict = bulk.check_import(import_commit_per_chunk, scratch_db, ROWS)
    assert verdict.status == "too many commits", verdict
    assert "4 commit(s)" in verdict.message


def test_check_rejects_missing_rows_and_a_missing_commit(scratch_db: Backend) -> None:
    for naive in (import_half_async, import_without_commit_async):
        verdict = _acheck(naive, scratch_db)
        assert verdict.status == "wrong result", verdict
        assert "differs from the reference" in verdict.message


def test_check_accepts_the_bulk_insert_sync_and_async(scratch_db: Backend) -> None:
    verdict = bulk.check_import(import_with_bulk_insert, scratch_db)
    assert verdict.passed, verdict
    assert verdict.statements == 1
    verdict = _acheck(import_with_bulk_insert_async, scratch_db)
    assert verdict.passed, verdict
    assert _table(scratch_db) == bulk.expected_import(bulk.import_batch())


def test_bulk_insert_is_an_executemany_on_every_driver(scratch_db: Backend) -> None:
    async def run() -> list[str]:
        try:
            async with scratch_db.AsyncSession() as session:
                with count_statements(scratch_db) as log:
                    await session.execute(insert(Car), ROWS)
                await session.commit()
            return [s.style for s in log.statements]
        finally:
            await scratch_db.dispose()

    assert asyncio.run(run()) == ["executemany"]


def test_check_says_not_attempted_for_the_stub(sqlite_db: Backend, scratch_next_to) -> None:
    db = scratch_next_to(sqlite_db)
    assert _acheck(stub_async, db).status == "not attempted"


def test_importing_starts_from_an_empty_table(scratch_db: Backend) -> None:
    bulk.reset_cars(scratch_db, cars=5)
    verdict = _acheck(import_with_bulk_insert_async, scratch_db, ROWS)
    assert verdict.passed, verdict
    assert _table(scratch_db) == bulk.expected_import(ROWS)
