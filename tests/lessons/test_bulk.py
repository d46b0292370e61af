"""Tests for course_lib.lessons.bulk (notebook 03): rows, resets, raw drivers, reports, the exercise."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pandas as pd
import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import InterfaceError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from course_lib import backends
from course_lib.lessons import bulk
from course_lib.backends import Backend
from course_lib.course import short_errors
from course_lib.data import reset_schema
from course_lib.exercises import acheck, check
from course_lib.measure import count_statements
from course_lib.models import Car, Dealership

ROWS = bulk.car_rows(40, start=1_000)


def scratch_next_to(shared: Backend) -> Backend:
    """Empty course tables in ``scratch_test_bulk`` on the same server as ``shared``."""
    if shared.name == "sqlite":
        return bulk.reset_cars(reset_schema(backends.sqlite("scratch_test_bulk")))
    with pytest.MonkeyPatch.context() as mp:  # reach the server the fixture used
        if shared.source.startswith("embedded"):
            mp.delenv("COURSE_POSTGRES_URL", raising=False)
        else:
            server = shared.sync_url.set(drivername="postgresql", database="postgres")
            mp.setenv("COURSE_POSTGRES_URL", server.render_as_string(hide_password=False))
        db = backends.postgres("scratch_test_bulk")
    return bulk.reset_cars(reset_schema(db))


@pytest.fixture(params=["sqlite_db", "pg_service", "pg_embedded"])
def scratch_db(request: pytest.FixtureRequest) -> Iterator[Backend]:
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
def test_asyncpg_raw_paths_write_the_rows(pg_service: Backend, load) -> None:
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


def test_multi_values_breaks_asyncpg_parameter_limit(pg_service: Backend) -> None:
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
            "median": [100.0, 20.0, 10.0, 50.0, 30.0, 15.0],
            "spread": [1.0] * 6,
            "statements": [10, 1, 0, 10, 1, 0],
        }
    )


def test_vs_raw_compares_per_row_against_the_raw_driver() -> None:
    table = bulk.vs_raw(_frame(), raw=["raw"])
    sqlite = table[table["backend"] == "sqlite (sqlite3)"].set_index("strategy")
    assert sqlite.loc["slow", "µs per row"] == pytest.approx(10_000.0)
    assert sqlite.loc["fast", "× raw"] == pytest.approx(2.0)
    assert sqlite.loc["slow", "× raw"] == pytest.approx(1000.0)
    assert set(table["backend"]) == {"sqlite (sqlite3)", "postgresql (psycopg)"}
    assert bulk.fastest_vs_raw(table, "postgresql") == ("fast", pytest.approx(2.0))
    speedup = bulk.per_row_speedup(table, "slow", "fast")
    assert speedup["sqlite (sqlite3)"] == pytest.approx(500.0)
    with pytest.raises(ValueError, match="raw"):
        bulk.vs_raw(_frame(), raw=["missing"])


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
    assert profiled.areas.loc["total"].sum() == pytest.approx(
        profiled.areas.drop(index="total").to_numpy().sum()
    )
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
    assert all(first[i] != second[i] for i in first)


# ------------------------------------------------------------------ the exercise


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


async def import_half_async(session: AsyncSession, rows: list[dict]) -> None:
    await session.execute(insert(Car), rows[: len(rows) // 2])
    await session.commit()


async def import_without_commit_async(session: AsyncSession, rows: list[dict]) -> None:
    await session.execute(insert(Car), rows)


async def stub_async(session: AsyncSession, rows: list[dict]) -> None:
    raise NotImplementedError("your turn")


def _acheck(fn, db: Backend):
    async def run():
        try:
            return await acheck(
                bulk.importing(fn, ROWS), db, expected=bulk.expected_import(ROWS), budget=5
            )
        finally:
            await db.dispose()

    return asyncio.run(run())


def test_check_rejects_the_per_row_loop(scratch_db: Backend) -> None:
    verdict = check(
        bulk.importing(bulk.reference_import_cars, ROWS),
        scratch_db,
        expected=bulk.expected_import(ROWS),
        budget=5,
    )
    assert verdict.status == "over budget", verdict
    assert verdict.statements == len(ROWS)
    assert _acheck(import_one_by_one_async, scratch_db).status == "over budget"


def test_check_accepts_the_bulk_insert_sync_and_async(scratch_db: Backend) -> None:
    verdict = check(
        bulk.importing(import_with_bulk_insert, ROWS),
        scratch_db,
        expected=bulk.expected_import(ROWS),
        budget=5,
    )
    assert verdict.passed, verdict
    assert verdict.statements == 1
    verdict = _acheck(import_with_bulk_insert_async, scratch_db)
    assert verdict.passed, verdict
    assert _table(scratch_db) == bulk.expected_import(ROWS)


def test_check_judges_add_all_by_backend(scratch_db: Backend) -> None:
    verdict = _acheck(import_add_all_async, scratch_db)
    expected = "over budget" if scratch_db.name == "sqlite" else "passed"
    assert verdict.status == expected, verdict


def test_check_rejects_missing_rows_and_a_missing_commit(scratch_db: Backend) -> None:
    assert _acheck(import_half_async, scratch_db).status == "wrong result"
    assert _acheck(import_without_commit_async, scratch_db).status == "wrong result"


def test_check_says_not_attempted_for_the_stub(sqlite_db: Backend) -> None:
    db = scratch_next_to(sqlite_db)
    assert _acheck(stub_async, db).status == "not attempted"


def test_importing_starts_from_an_empty_table(scratch_db: Backend) -> None:
    bulk.reset_cars(scratch_db, cars=5)
    verdict = _acheck(import_with_bulk_insert_async, scratch_db)
    assert verdict.passed, verdict
    assert _table(scratch_db) == bulk.expected_import(ROWS)
