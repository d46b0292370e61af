"""Tests for course_lib.lessons.plans: plans of what was sent, stale statistics, generic and
custom plans, literal rendering, server tools, and the exercise check, on every backend.

Most tests work on a copy of the tiny dataset made ready as the notebook's scratch copy is
(:func:`plans.prepare_scratch`: indexes on price and created_at, statistics that stay put)
plus the exercise's edge cars, in a database beside the fixture's whose name is unique to
this run (``fresh_database``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date, datetime, time, timedelta
from typing import Any

import pytest
from sqlalchemy import Date, String, bindparam, cast, create_engine, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from course_lib.backends import Backend
from course_lib.data import build
from course_lib.exercises import CheckResult
from course_lib.explain import (
    AUTOMATIC_INDEX,
    Plan,
    PlanNode,
    analyze,
    explain,
    explain_sent,
    sent_statements,
)
from course_lib.lessons import plans
from course_lib.models import Car
from course_lib.settings import choose_scale

TINY = choose_scale("tiny")
DAY = plans.CHECK_DAY


def _ready(db: Backend, *, edges: bool = True) -> Backend:
    build(db, TINY, force=True, progress=False)
    plans.prepare_scratch(db)
    if edges:
        plans.prepare_check_data(db)
    return db


@pytest.fixture(scope="module", params=["sqlite_db", "pg_service", "pg_embedded"])
def scratch(request: pytest.FixtureRequest, fresh_database: Any) -> Iterator[Backend]:
    """The tiny dataset, prepared as the notebook's scratch copy, with the edge cars."""
    db = _ready(fresh_database(request.getfixturevalue(request.param), "plans"))
    yield db
    db.sync_engine.dispose()


@pytest.fixture
def own_scratch(fresh_database: Any, scratch: Backend) -> Callable[..., Backend]:
    """``own_scratch(edges=...)``: a scratch copy of its own, for a test that changes the
    schema or the statistics (with or without the exercise's edge cars)."""

    def make(*, edges: bool) -> Backend:
        return _ready(fresh_database(scratch, "plans_own"), edges=edges)

    return make


# ------------------------------------------------------------------------ reading plans


def test_summary_of_both_databases() -> None:
    sqlite_plan = Plan("sqlite", ["SCAN cars", "USE TEMP B-TREE FOR ORDER BY"], False)
    assert plans.summary(sqlite_plan) == "SCAN cars / USE TEMP B-TREE FOR ORDER BY"
    limit = PlanNode("Limit", 0, "Limit")
    scan = PlanNode("Index Scan", 1, "Index Scan using cars_pkey on cars", index="cars_pkey")
    pg_plan = Plan("postgresql", ["..."], True, [limit, scan])
    assert plans.summary(pg_plan) == "Limit → Index Scan using cars_pkey on cars"


def test_rows_line_gives_loops_and_the_total() -> None:
    once = PlanNode("Seq Scan", 0, "x", estimated_rows=49_600, actual_rows=2_000, loops=1)
    assert plans.rows_line(once) == "estimated 49,600 rows, actual 2,000: off by 25x"
    parallel = PlanNode(
        "Parallel Seq Scan",
        2,
        "x",
        estimated_rows=206_750,
        actual_rows=1_667,
        loops=3,
        parallel=True,
    )
    assert plans.rows_line(parallel) == (
        "estimated 206,750 rows per loop, actual 1,667 per loop × 3 loops in parallel "
        "processes (5,001 in all): off by 124x"
    )


def test_off_by_is_symmetric() -> None:
    over = PlanNode("Seq Scan", 0, "Seq Scan on cars", estimated_rows=49_600, actual_rows=2_000)
    under = PlanNode("Index Scan", 0, "x", estimated_rows=1, actual_rows=2_000)
    assert plans.off_by(over) == pytest.approx(24.8)
    assert plans.off_by(under) == 2_000
    with pytest.raises(ValueError, match="analyzed"):
        plans.off_by(PlanNode("SCAN", 0, "SCAN cars"))


def test_prepare_scratch_adds_the_indexes_and_pauses_autovacuum(scratch: Backend) -> None:
    assert plans.scratch_indexes(scratch) == [plans.CREATED_INDEX, plans.PRICE_INDEX]
    plans.prepare_scratch(scratch)  # idempotent
    assert plans.scratch_indexes(scratch) == [plans.CREATED_INDEX, plans.PRICE_INDEX]
    if scratch.name == "postgresql":
        with scratch.Session() as session:
            options = session.scalar(text("SELECT reloptions FROM pg_class WHERE relname = 'cars'"))
        assert options == ["autovacuum_enabled=false"]


def test_tour_on_sqlite_shows_every_phrase_at_tiny(scratch: Backend) -> None:
    stops = plans.tour([scratch])
    assert list(stops.index) == [stop.question for stop in plans.TOUR]
    if scratch.name == "sqlite":  # SQLite's choices do not depend on the table's size
        assert stops["sqlite_shows_it"].all(), stops
        vocabulary = plans.sqlite_vocabulary(scratch)
        assert (vocabulary["plan line"] != "").all(), vocabulary
    else:  # 60 cars in one page: PostgreSQL rightly reads tables whole; the tour still runs
        assert stops["postgresql"].str.len().gt(0).all()


def test_limit_child_counts_the_rows_offset_stepped(scratch: Backend) -> None:
    if scratch.name == "sqlite":
        pytest.skip("SQLite's plans carry no row counts")
    with scratch.Session() as session:
        cars = session.scalar(select(func.count()).select_from(Car))
    plan = explain(scratch, plans.deep_offset(cars))
    assert plan.nodes[0].actual_rows == 20
    assert plans.limit_child(plan).actual_rows == cars
    with pytest.raises(ValueError, match="no Limit"):
        plans.limit_child(explain(scratch, select(Car.id)))


def test_scan_of_finds_the_table(scratch: Backend) -> None:
    plan = explain(scratch, plans.comments_with_posts(5))
    assert plans.scan_of(plan, "comments").relation == "comments"
    with pytest.raises(ValueError, match="no node reads"):
        plans.scan_of(plan, "tags")


# ------------------------------------------------------------- what the driver received


def test_loaders_send_what_notebook_01_counted(scratch: Backend) -> None:
    sent = plans.loader_statements(scratch, 5)
    assert {name: len(statements) for name, statements in sent.items()} == {
        "selectinload": 2,
        "joinedload": 1,
        "subqueryload": 2,
    }
    assert len(sent["selectinload"][1].params) == 5  # the five user ids, bound
    frame = plans.loader_plans(scratch, sent)
    assert len(frame) == 5 and frame["plan"].str.len().gt(0).all()
    assert frame.query("loader == 'selectinload' and statement == 2")["reads_all_posts"].all()
    automatic = frame["plan"].str.contains("AUTOMATIC")
    assert (frame["builds_an_index"] == automatic).all()
    assert AUTOMATIC_INDEX not in frame.query("backend == 'postgresql'")["plan"].sum()


# --------------------------------------------------------------- estimates and ANALYZE


def test_import_cars_leaves_stale_statistics_until_analyze(
    own_scratch: Callable[..., Backend],
) -> None:
    db = own_scratch(edges=False)
    assert plans.import_cars(db) == {"rows when analyzed": 20, "rows now": 60}
    report = plans.import_report(1)
    with db.Session() as session:
        count, _total = session.execute(report).one()
    assert count == 20
    if db.name == "sqlite":
        assert plans.sqlite_stat1(db) == [(plans.IMPORTS_INDEX, "20 20")]
        assert explain(db, report).full_scans() == ["SCAN car_imports"]
        analyze(db, plans.IMPORTS.name)  # that table only
        assert plans.sqlite_stat1(db) == [(plans.IMPORTS_INDEX, "60 20")]
        assert explain(db, report).index_names() == [plans.IMPORTS_INDEX]
    else:
        with db.Session() as session:
            options = session.scalar(
                text("SELECT reloptions FROM pg_class WHERE relname = 'car_imports'")
            )
            analyzed = session.scalar(
                text("SELECT reltuples FROM pg_class WHERE relname = 'car_imports'")
            )
        assert options == ["autovacuum_enabled=false"] and analyzed == 20
    assert plans.import_cars(db)["rows now"] == 60  # idempotent: the table is made afresh


# ----------------------------------------------------------------- generic and custom


def test_time_report_and_estimates_after_analyze(
    own_scratch: Callable[..., Backend], capsys: pytest.CaptureFixture[str]
) -> None:
    db = own_scratch(edges=False)
    plans.import_cars(db)
    report = plans.import_report(1)
    stale = {db.name: explain(db, report)}
    before = plans.time_report([db], report, repeats=5)
    assert before[db.name].median_s > 0
    analyze(db, plans.IMPORTS.name)
    fresh = {db.name: explain(db, report)}
    frame = plans.estimates_after_analyze(report, [db], stale, fresh, before, rows=20)
    assert list(frame["statistics"]) == ["before ANALYZE", "after ANALYZE"]
    if db.name == "postgresql":
        assert list(frame["actual rows in all"]) == [20, 20]
    out = capsys.readouterr().out
    assert (
        "Not claimed with 20 rows" in out
        and "time with the stale plan / with fresh statistics" in out
    )


def test_prepared_plans_show_generic_custom_and_literal(scratch: Backend) -> None:
    if scratch.name == "sqlite":
        pytest.skip("plan caching of prepared statements is PostgreSQL's")
    stmt = select(Car.id).where(Car.price < bindparam("price"), Car.year > bindparam("year"))
    frame = plans.prepared_plans(scratch, stmt, [{"price": 4_100, "year": 2010}])
    assert list(frame["plan"]) == ["generic", "custom", "literal_binds"]
    conditions = dict(zip(frame["plan"], frame["condition"], strict=True))
    assert "$1" in conditions["generic"] and "$1" not in conditions["custom"]
    assert conditions["custom"] == conditions["literal_binds"]
    with scratch.sync_engine.connect() as conn:  # nothing left prepared, nothing left set
        assert conn.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements").scalar() == 0
        assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "auto"


def _prepared_left(db: Backend) -> int:
    with db.sync_engine.connect() as conn:
        sql = "SELECT count(*) FROM pg_prepared_statements WHERE name = 'course_plans_prepared'"
        return conn.exec_driver_sql(sql).scalar()


def test_prepared_plans_deallocate_after_an_error(scratch: Backend) -> None:
    """PREPARE is not transactional: an error inside must not leave it in the pooled session."""
    if scratch.name == "sqlite":
        pytest.skip("prepared statements are PostgreSQL's")
    db = scratch.fresh()  # one pooled connection, reused by the second call
    stmt = select(Car.id).where(Car.price < bindparam("price"))
    with pytest.raises(KeyError):
        plans.prepared_plans(db, stmt, [{"prize": 1}])  # a typo'd key fails inside
    assert _prepared_left(db) == 0
    assert len(plans.prepared_plans(db, stmt, [{"price": 5_000}])) == 3
    assert len(plans.auto_plans(db, stmt, {"price": 5_000}, runs=2)) == 2
    assert _prepared_left(db) == 0
    db.sync_engine.dispose()


def test_auto_mode_switches_to_the_generic_plan_after_five_custom_plans(
    scratch: Backend,
) -> None:
    if scratch.name == "sqlite":
        pytest.skip("plan caching of prepared statements is PostgreSQL's")
    stmt = select(Car.id).where(Car.price < bindparam("price"))
    frame = plans.auto_plans(scratch, stmt, {"price": 70_000}, runs=7)
    assert list(frame.index) == list(range(1, 8))
    assert list(frame["plan"]) == ["custom"] * 5 + ["generic"] * 2
    assert frame["node_types"].str.len().gt(0).all()


def test_literal_binds_cannot_render_json_anywhere_nor_intervals_on_sqlite(
    scratch: Backend,
) -> None:
    kias = plans.json_filter({"make": "Kia"})
    with scratch.Session() as session:
        bound = len(session.scalars(kias).all())
        expected = session.scalar(select(func.count()).where(Car.make == "Kia"))
    assert bound == expected > 0
    with scratch.Session() as session:  # SQLite has no interval arithmetic, even bound
        recent = len(session.scalars(plans.interval_filter(7)).all())
    assert scratch.name == "postgresql" or recent == 0
    frame = plans.literal_rendering(
        {"int": plans.price_band(), "json": kias, "interval": plans.interval_filter()}, [scratch]
    )
    interval = "CompileError" if scratch.name == "sqlite" else "renders"
    assert frame[scratch.name].to_dict() == {
        "int": "renders",
        "json": "CompileError",
        "interval": interval,
    }


# ------------------------------------------------------------------ pictures and tools


def test_tree_beside_text_holds_the_text_and_a_picture(scratch: Backend) -> None:
    plan = explain(scratch, plans.comments_with_posts(3))
    html = plans.tree_beside_text(plan, "demo").data
    assert "<pre" in html and "data:image/png;base64," in html
    assert plan.lines[0].split("(")[0].strip() in html


def test_auto_explained_logs_plans_or_says_why_not(scratch: Backend) -> None:
    if scratch.name == "sqlite":
        pytest.skip("auto_explain is PostgreSQL's")
    logged = plans.auto_explained(scratch, lambda conn: conn.execute(plans.price_band()).all())
    if isinstance(logged, str):  # the embedded server ships without the library
        assert logged.startswith("auto_explain is not available on this server")
    else:
        assert len(logged) == 1 and "Query Text:" in logged[0] and "cars" in logged[0]
    with scratch.sync_engine.connect() as conn:  # the session is usable afterwards
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    assert "pg_stat_statements" in plans.pg_stat_statements_note(scratch)


# ------------------------------------------------------------------------ the exercise


def _start(day: date) -> datetime:
    return datetime.combine(day, time())


def _ids(session: Session, stmt: Any) -> list[int]:
    return list(session.scalars(stmt))


def _stub(session: Session, day: date) -> list[int]:
    raise NotImplementedError


def _as_written(session: Session, day: date) -> list[int]:
    """The query as the notebook gives it."""
    return _ids(session, select(Car.id).where(func.date(Car.created_at) == day))


def _date_in(session: Session, day: date) -> list[int]:
    """date() IN (day)."""
    return _ids(session, select(Car.id).where(func.date(Car.created_at).in_([day])))


def _cast_to_date(session: Session, day: date) -> list[int]:
    """CAST(created_at AS DATE) = day."""
    return _ids(session, select(Car.id).where(cast(Car.created_at, Date) == day))


def _between_last_second(session: Session, day: date) -> list[int]:
    """BETWEEN day 00:00 AND day 23:59:59."""
    start = _start(day)
    last = start.replace(hour=23, minute=59, second=59)
    return _ids(session, select(Car.id).where(Car.created_at.between(start, last)))


def _up_to_next_midnight(session: Session, day: date) -> list[int]:
    """>= day AND <= next midnight."""
    start = _start(day)
    stmt = select(Car.id).where(Car.created_at >= start, Car.created_at <= start + timedelta(1))
    return _ids(session, stmt)


def _after_midnight(session: Session, day: date) -> list[int]:
    """> day AND < next midnight."""
    start = _start(day)
    stmt = select(Car.id).where(Car.created_at > start, Car.created_at < start + timedelta(1))
    return _ids(session, stmt)


def _next_day(session: Session, day: date) -> list[int]:
    """A range off by one day: the next day."""
    start = _start(day) + timedelta(1)
    stmt = select(Car.id).where(Car.created_at >= start, Car.created_at < start + timedelta(1))
    return _ids(session, stmt)


def _previous_day(session: Session, day: date) -> list[int]:
    """A range off by one day: the day before."""
    start = _start(day) - timedelta(1)
    stmt = select(Car.id).where(Car.created_at >= start, Car.created_at < start + timedelta(1))
    return _ids(session, stmt)


def _from_the_day_before(session: Session, day: date) -> list[int]:
    """> the day before's last instant... written as >= day - 1 microsecond."""
    start = _start(day) - timedelta(microseconds=1)
    stmt = select(Car.id).where(Car.created_at >= start, Car.created_at < start + timedelta(1))
    return _ids(session, stmt)


def _load_all_filter_in_python(session: Session, day: date) -> list[int]:
    """Every car's id and created_at, filtered in Python."""
    rows = session.execute(select(Car.id, Car.created_at))
    return [car_id for car_id, created in rows if created.date() == day]


def _count_first(session: Session, day: date) -> list[int]:
    """A count(*) first, then the right query."""
    session.scalar(select(func.count()).select_from(Car))
    return _solution(session, day)


def _rows_not_ids(session: Session, day: date) -> list[Any]:
    """Full Car objects instead of ids."""
    start = _start(day)
    stmt = select(Car).where(Car.created_at >= start, Car.created_at < start + timedelta(1))
    return list(session.scalars(stmt))


def _lower_bound_and_date(session: Session, day: date) -> list[int]:
    """created_at >= day AND date(created_at) = day: a search from the day to the end."""
    stmt = select(Car.id).where(Car.created_at >= _start(day), func.date(Car.created_at) == day)
    return _ids(session, stmt)


def _upper_bound_and_date(session: Session, day: date) -> list[int]:
    """created_at < next day AND date(created_at) = day: a search from the start to the day."""
    end = _start(day) + timedelta(1)
    stmt = select(Car.id).where(Car.created_at < end, func.date(Car.created_at) == day)
    return _ids(session, stmt)


def _id_and_date(session: Session, day: date) -> list[int]:
    """id > 0 AND date(created_at) = day: a search on the primary key that finds every car."""
    stmt = select(Car.id).where(Car.id > 0, func.date(Car.created_at) == day)
    return _ids(session, stmt)


def _price_and_date(session: Session, day: date) -> list[int]:
    """price > 0 AND date(created_at) = day: a search on the price index that finds them all."""
    stmt = select(Car.id).where(Car.price > 0, func.date(Car.created_at) == day)
    return _ids(session, stmt)


def _since_1900_and_date(session: Session, day: date) -> list[int]:
    """created_at > 1900-01-01 AND date(created_at) = day."""
    stmt = select(Car.id).where(
        Car.created_at > datetime(1900, 1, 1), func.date(Car.created_at) == day
    )
    return _ids(session, stmt)


def _three_days_and_date(session: Session, day: date) -> list[int]:
    """A range from the day before to the day after, and date(created_at) = day."""
    start = _start(day)
    stmt = select(Car.id).where(
        Car.created_at >= start - timedelta(1),
        Car.created_at < start + timedelta(2),
        func.date(Car.created_at) == day,
    )
    return _ids(session, stmt)


def _commented_text(session: Session, day: date) -> list[int]:
    """text() starting with a comment, date() bound: still planned."""
    sql = text("/* mine */ SELECT id FROM cars WHERE date(created_at) = :d")
    return list(session.scalars(sql, {"d": day.isoformat()}))


def _literal_range_text(session: Session, day: date) -> list[int]:
    """The right range, with the dates formatted into the SQL text."""
    start, end = _start(day), _start(day) + timedelta(1)
    # the naive answer under test: values formatted into SQL (never do this)
    sql = f"SELECT id FROM cars WHERE created_at >= '{start}' AND created_at < '{end}'"
    return list(session.scalars(text(sql)))


def _ids_in_a_list(session: Session, day: date) -> list[int]:
    """The day's ids found beforehand, then selected by id: no day in the statement."""
    return _ids(session, select(Car.id).where(Car.id.in_(_KNOWN[session.get_bind().url])))


_KNOWN: dict[Any, list[int]] = {}


def _hard_coded(session: Session, day: date) -> list[int]:
    """The day's ids, typed in: no statement at all."""
    return _KNOWN[session.get_bind().url]


def _own_connection(session: Session, day: date) -> list[int]:
    """The query as written, on a connection of its own (not the session's)."""
    engine = create_engine(session.get_bind().url)
    try:
        with engine.connect() as conn:
            return list(conn.scalars(select(Car.id).where(func.date(Car.created_at) == day)))
    finally:
        engine.dispose()


def _cast_to_text_like(session: Session, day: date) -> list[int]:
    """CAST(created_at AS VARCHAR) LIKE 'day%'."""
    stmt = select(Car.id).where(cast(Car.created_at, String).like(f"{day.isoformat()}%"))
    return _ids(session, stmt)


def _solution(session: Session, day: date) -> list[int]:
    """The half-open range on the bare column."""
    start = _start(day)
    stmt = select(Car.id).where(Car.created_at >= start, Car.created_at < start + timedelta(1))
    return _ids(session, stmt)


NAIVE = [
    # (function, status, words the message must contain)
    (_as_written, "full scan", "date(...) wraps created_at"),
    (_date_in, "full scan", "date(...) wraps created_at"),
    (_commented_text, "full scan", "date(...) wraps created_at"),
    (_lower_bound_and_date, "unbounded search", "Bound the bare column on both sides"),
    (_upper_bound_and_date, "unbounded search", "Bound the bare column on both sides"),
    (_id_and_date, "unbounded search", "not created_at"),
    (_price_and_date, "unbounded search", "not created_at"),
    (_since_1900_and_date, "unbounded search", "Bound the bare column on both sides"),
    (_three_days_and_date, "unbounded search", "the day"),
    (_literal_range_text, "literal values", "the date is written into the SQL"),
    (_ids_in_a_list, "literal values", "the day is not among the statement's parameters"),
    (_hard_coded, "no statement", "no statement reached the database"),
    (_own_connection, "no statement", "no statement reached the database"),
    (_between_last_second, "wrong result", "BETWEEN day 00:00 AND day 23:59:59"),
    (_up_to_next_midnight, "wrong result", "`<=` the next day's midnight"),
    (_after_midnight, "wrong result", "`>` excludes the start of the day"),
    (_next_day, "wrong result", "off by a day"),
    (_previous_day, "wrong result", "off by a day"),
    (_from_the_day_before, "wrong result", "the range starts too early"),
    (_load_all_filter_in_python, "too many rows", "loaded every car and filtered in Python"),
    (_count_first, "over budget", "the budget is 1"),
    (_rows_not_ids, "wrong result", "Return a list of car ids"),
]


@pytest.mark.parametrize(("fn", "status", "why"), NAIVE, ids=[n[0].__name__ for n in NAIVE])
def test_check_rejects_each_naive_answer_and_says_why(
    scratch: Backend, fn: Callable[..., Any], status: str, why: str
) -> None:
    with scratch.Session() as session:
        _KNOWN[scratch.sync_engine.url] = plans._reference(DAY)(session)
    verdict = plans.check_cars_on_day(fn, scratch)
    assert not verdict.passed
    assert verdict.status == status, verdict
    assert why in verdict.message, verdict


def test_check_rejects_a_cast_on_either_database(scratch: Backend) -> None:
    """CAST(created_at AS DATE): no rows on SQLite (a number), a full scan on PostgreSQL."""
    verdict = plans.check_cars_on_day(_cast_to_date, scratch)
    if scratch.name == "sqlite":
        assert verdict.status == "wrong result" and "CAST(... AS DATE)" in verdict.message
    else:
        assert verdict.status == "full scan" and "CAST(... AS DATE) wraps" in verdict.message
    verdict = plans.check_cars_on_day(_cast_to_text_like, scratch)
    assert verdict.status == "full scan", verdict
    assert "CAST(... AS VARCHAR) wraps" in verdict.message, verdict


def test_check_plans_a_parenthesized_select(scratch: Backend) -> None:
    """A statement is planned whatever its first character (PostgreSQL accepts "(SELECT")."""
    if scratch.name == "sqlite":
        pytest.skip("SQLite does not accept a parenthesized top-level SELECT")

    def parenthesized(session: Session, day: date) -> list[int]:
        sql = text("(SELECT id FROM cars WHERE date(created_at) = :d)")
        return list(session.scalars(sql, {"d": day}))

    verdict = plans.check_cars_on_day(parenthesized, scratch)
    assert verdict.status == "full scan" and "date(...) wraps" in verdict.message, verdict


def test_check_says_when_postgresql_plans_were_forced(scratch: Backend) -> None:
    """At tiny PostgreSQL rightly reads 65 cars whole: the verdict says the plan was forced."""
    verdict = plans.check_cars_on_day(_solution, scratch)
    forced = "enable_seqscan = off" in verdict.message
    assert forced is (scratch.name == "postgresql"), verdict


def test_check_rejects_dialect_functions(scratch: Backend) -> None:
    if scratch.name == "sqlite":
        fn = _dialect_fn(lambda day: func.strftime("%Y-%m-%d", Car.created_at) == day.isoformat())
        name = "strftime(...)"
    else:
        fn = _dialect_fn(lambda day: func.date_trunc("day", Car.created_at) == _start(day))
        name = "date_trunc(...)"
    verdict = plans.check_cars_on_day(fn, scratch)
    assert verdict.status == "full scan" and f"{name} wraps" in verdict.message, verdict


def _dialect_fn(condition: Callable[[date], Any]) -> Callable[[Session, date], list[int]]:
    def fn(session: Session, day: date) -> list[int]:
        return _ids(session, select(Car.id).where(condition(day)))

    return fn


def _last_microsecond(session: Session, day: date) -> list[int]:
    """Correct: BETWEEN the day's midnight AND one microsecond before the next."""
    start = _start(day)
    last = start + timedelta(days=1, microseconds=-1)
    return _ids(session, select(Car.id).where(Car.created_at.between(start, last)))


def _text_bound(session: Session, day: date) -> list[int]:
    """Correct: text() with the range as bound parameters (typed, so each driver binds it)."""
    start = _start(day)
    sql = text("SELECT id FROM cars WHERE created_at >= :start AND created_at < :end")
    typed = sql.bindparams(
        bindparam("start", type_=Car.created_at.type), bindparam("end", type_=Car.created_at.type)
    )
    return list(session.scalars(typed, {"start": start, "end": start + timedelta(1)}))


def _date_objects(session: Session, day: date) -> list[int]:
    """Correct: the range bounds as dates (SQLAlchemy binds them as the column's type)."""
    stmt = select(Car.id).where(Car.created_at >= day, Car.created_at < day + timedelta(1))
    return _ids(session, stmt)


def _ordered(session: Session, day: date) -> list[int]:
    """Correct: the same range, ordered by id."""
    start = _start(day)
    stmt = (
        select(Car.id)
        .where(Car.created_at >= start, Car.created_at < start + timedelta(1))
        .order_by(Car.id)
    )
    return _ids(session, stmt)


def _as_rows(session: Session, day: date) -> list[Any]:
    """Correct: one-column rows instead of scalars."""
    start = _start(day)
    stmt = select(Car.id).where(Car.created_at >= start, Car.created_at < start + timedelta(1))
    return list(session.execute(stmt).all())


CORRECT = [_solution, _date_objects, _ordered, _as_rows, _last_microsecond, _text_bound]


@pytest.mark.parametrize("fn", CORRECT, ids=[f.__name__ for f in CORRECT])
def test_check_accepts_correct_answers(scratch: Backend, fn: Callable[..., Any]) -> None:
    verdict = plans.check_cars_on_day(fn, scratch)
    assert verdict.passed, verdict
    assert verdict.statements == verdict.budget == 1
    assert f"its plan searches {plans.CREATED_INDEX}, bounded to the day" in verdict.message


def test_dead_row_versions_do_not_count_as_rows_read(
    own_scratch: Callable[..., Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """UPDATEs leave index entries of dead row versions until VACUUM (autovacuum is paused):
    a Bitmap Index Scan counts them, the rows read at the table do not."""
    db = own_scratch(edges=True)
    bitmap = {"enable_seqscan": "off", "enable_indexscan": "off"}  # the plan medium gets
    monkeypatch.setattr(plans, "CHECK_SETTINGS", bitmap)
    start = _start(DAY)
    on_day = (Car.created_at >= start) & (Car.created_at < start + timedelta(1))
    for _ in range(4):  # price is indexed: no HOT update, every version gets index entries
        with db.sync_engine.begin() as conn:
            conn.execute(update(Car).where(on_day).values(price=Car.price + 1))
    verdict = plans.check_cars_on_day(_solution, db)
    assert verdict.passed, verdict
    assert plans.check_cars_on_day(_lower_bound_and_date, db).status == "unbounded search"
    if db.name == "postgresql":
        with sent_statements(db) as sent, db.Session() as session:
            expected = len(_solution(session, DAY))
        plan = explain_sent(db, sent[0], settings=bitmap)
        (entries,) = plan.find("Bitmap Index Scan")
        assert entries.total_rows > expected + 5  # the dead versions the check must not count


def test_check_says_not_attempted_for_the_stub(scratch: Backend) -> None:
    assert plans.check_cars_on_day(_stub, scratch).status == "not attempted"


def test_check_expects_the_edge_cars(scratch: Backend) -> None:
    with scratch.Session() as session:
        expected = plans._reference(DAY)(session)
    edges = [created for created, on_day in plans.edge_cars(DAY) if on_day]
    with scratch.Session() as session:
        found = session.scalars(select(Car.created_at).where(Car.id.in_(expected))).all()
    assert set(edges) <= set(found)  # midnight, noon and 23:59:59.5 are the day's
    assert len(plans.edge_cars(DAY)) == 5


def test_check_needs_prepared_data(sqlite_db: Backend) -> None:
    with pytest.raises(ValueError, match="prepare_check_data"):
        plans.check_cars_on_day(_solution, sqlite_db)  # the shared tiny dataset


def test_an_expression_index_makes_the_query_as_written_pass(
    own_scratch: Callable[..., Backend],
) -> None:
    db = own_scratch(edges=True)
    assert plans.check_cars_on_day(_as_written, db).status == "full scan"
    plans.add_day_index(db)
    assert plans.DAY_INDEX in plans.scratch_indexes(db)
    verdict = plans.check_cars_on_day(_as_written, db)
    assert verdict.passed, verdict
    assert f"its plan searches {plans.DAY_INDEX}" in verdict.message
    assert not Car.__table__.indexes  # the course's models are untouched


def test_acheck_judges_async_functions(scratch: Backend) -> None:
    db = scratch.fresh()

    async def as_written(session: AsyncSession, day: date) -> list[int]:
        return list(await session.scalars(select(Car.id).where(func.date(Car.created_at) == day)))

    async def between(session: AsyncSession, day: date) -> list[int]:
        start = _start(day)
        last = start.replace(hour=23, minute=59, second=59)
        return list(
            await session.scalars(select(Car.id).where(Car.created_at.between(start, last)))
        )

    async def stub(session: AsyncSession, day: date) -> list[int]:
        raise NotImplementedError

    async def lower_bound(session: AsyncSession, day: date) -> list[int]:
        stmt = select(Car.id).where(Car.created_at >= _start(day), func.date(Car.created_at) == day)
        return list(await session.scalars(stmt))

    async def commented(session: AsyncSession, day: date) -> list[int]:
        sql = text("/* mine */ SELECT id FROM cars WHERE date(created_at) = :d")
        return list(await session.scalars(sql, {"d": day}))  # asyncpg binds a date

    async def typed_in(session: AsyncSession, day: date) -> list[int]:
        return known

    with db.Session() as session:
        known = plans._reference(DAY)(session)

    async def verdicts() -> list[CheckResult]:
        fns = (plans.acars_on_day, as_written, between, stub, lower_bound, commented, typed_in)
        return [await plans.acheck_cars_on_day(fn, db) for fn in fns]

    solution, written, late, not_yet, one_sided, text_sql, none = db.run(verdicts)
    assert solution.passed, solution
    assert written.status == "full scan" and "date(...) wraps" in written.message
    assert late.status == "wrong result" and "23:59:59" in late.message
    assert not_yet.status == "not attempted"
    assert one_sided.status == "unbounded search", one_sided
    assert text_sql.status == "full scan", text_sql
    assert none.status == "no statement", none
    db.sync_engine.dispose()


def test_module_doctests() -> None:
    import doctest

    assert doctest.testmod(plans).failed == 0
