"""Tests for course_lib.lessons.loading: errors, transfers, the FK index, the exercise check."""

from __future__ import annotations

import asyncio
import gc
import math
import secrets
import warnings
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterator
from datetime import datetime
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import create_engine, insert, select
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session, joinedload, selectinload, sessionmaker
from sqlalchemy.pool import NullPool

from course_lib.backends import Backend
from course_lib.data import build
from course_lib.explain import explain
from course_lib.lessons import loading as lesson
from course_lib.lessons.loading import RECENT_YEAR, error_name, error_names
from course_lib.measure import count_statements
from course_lib.models import Base, Car, Comment, Dealership, Post, User

# --------------------------------------------------------------------------- error names


def _run(db: Backend, make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run async work in a fresh loop (see Backend.run)."""
    return db.run(make)


def test_error_name_of_a_plain_error_and_of_no_error() -> None:
    assert asyncio.run(error_name(lambda: 1 / 0)) == "ZeroDivisionError"
    assert asyncio.run(error_name(lambda: "fine")) == "no error"


def test_error_name_awaits_coroutines() -> None:
    async def boom() -> None:
        raise KeyError("x")

    async def fine() -> int:
        return 1

    assert asyncio.run(error_name(boom)) == "KeyError"
    assert asyncio.run(error_name(fine)) == "no error"


def test_error_name_names_what_a_wrapped_error_wraps() -> None:
    def wrapped() -> None:
        raise StatementError("wrapped", "SELECT 1", {}, ValueError("inner"))

    assert asyncio.run(error_name(wrapped)) == "StatementError (wrapping ValueError)"


async def _loop_over_posts(db: Backend) -> list[int]:
    """The sync-style loop in an AsyncSession: a lazy load where no await can happen."""
    async with db.AsyncSession() as session:
        users = (await session.scalars(select(User).order_by(User.id).limit(3))).all()
        return [len(user.posts) for user in users]


def test_async_lazy_load_raises_missing_greenlet(any_db: Backend) -> None:
    """The curriculum's claim: under AsyncSession the loop raises; the name is deterministic."""
    name = _run(any_db, lambda: error_name(lambda: _loop_over_posts(any_db)))
    expected = {
        "sqlite": "StatementError (wrapping MissingGreenlet)",  # aiosqlite: raised mid-execute
        "postgresql": "MissingGreenlet",  # asyncpg: raised before the statement runs
    }
    assert name == expected[any_db.name]


def test_no_never_awaited_warning_escapes(sqlite_db: Backend) -> None:
    """aiosqlite leaves a never-awaited coroutine behind; error_name frees it in time."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        name = _run(sqlite_db, lambda: error_name(lambda: _loop_over_posts(sqlite_db)))
        gc.collect()
    assert "MissingGreenlet" in name
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []


def test_error_names_tabulates_cases_by_backend(sqlite_db: Backend) -> None:
    async def joined_without_unique(db: Backend) -> list[User]:
        async with db.AsyncSession() as session:
            stmt = select(User).options(joinedload(User.posts)).limit(2)
            return (await session.scalars(stmt)).all()

    def sync_loop(db: Backend) -> list[int]:
        with db.Session() as session:
            return [len(u.posts) for u in session.scalars(select(User).limit(2))]

    cases = {"joined": joined_without_unique, "sync": sync_loop}
    table = _run(sqlite_db, lambda: error_names(cases, [sqlite_db]))
    assert table.index.name == "case"
    assert list(table.index) == ["joined", "sync"]
    assert list(table.columns) == ["sqlite"]
    assert table.loc["joined", "sqlite"] == "InvalidRequestError"
    assert table.loc["sync", "sqlite"] == "no error"


# ------------------------------------------------------------------- sizes and chunks


def test_sizes_span_two_decades_where_the_data_allows() -> None:
    assert lesson.sizes_up_to(200) == [2, 20, 200]
    assert lesson.sizes_up_to(2_000) == [2, 20, 200]
    assert lesson.sizes_up_to(12) == [2, 12]
    assert lesson.sizes_up_to(50) == [2, 20, 50]
    assert lesson.sizes_up_to(2) == [2]
    assert lesson.sizes_up_to(5_000, ladder=(1, 10, 100, 1_000)) == [1, 10, 100, 1_000]


def test_default_chunksize_is_what_selectinload_does(tmp_path) -> None:
    """More parents than the default chunk: 1 + ceil(N / default) statements, and fewer
    with a larger chunk (SQLAlchemy 2.1's ``selectinload(..., chunksize=...)``)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'chunks.sqlite'}", poolclass=NullPool)
    Base.metadata.create_all(engine)
    default = lesson.default_chunksize()
    parents = default + 100
    with engine.begin() as conn:
        conn.execute(
            insert(User),
            [
                {"id": i, "name": f"u{i}", "email": f"u{i}@x", "created_at": datetime(2024, 1, 1)}
                for i in range(1, parents + 1)
            ],
        )
    counts = {}
    maker = sessionmaker(engine)
    for chunk in (None, 2 * default, 50):
        with count_statements(engine) as log, maker() as session:
            stmt = select(User).options(selectinload(User.posts, chunksize=chunk))
            session.scalars(stmt).all()
        counts[chunk] = log.count
    assert counts[None] == 1 + math.ceil(parents / default) == 3
    assert counts[2 * default] == 2
    assert counts[50] == 1 + math.ceil(parents / 50)
    engine.dispose()


# ------------------------------------------------------------------ rows transferred


def _posts_with_comments(db: Backend, option: Any, unique: bool) -> Callable[[], Any]:
    def run() -> dict[int, int]:
        with db.Session() as session:
            result = session.scalars(select(Post).order_by(Post.id).options(option))
            posts = (result.unique() if unique else result).all()
            return {post.id: len(post.comments) for post in posts}

    return run


def test_transferred_counts_rows_and_the_repeated_parent(any_db: Backend) -> None:
    with any_db.Session() as session:
        posts = session.scalar(select(Post.id).order_by(Post.id.desc()).limit(1))
        comments = session.scalar(select(Comment.id).order_by(Comment.id.desc()).limit(1))
    joined = lesson.transferred(
        any_db, _posts_with_comments(any_db, joinedload(Post.comments), unique=True)
    )
    selectin = lesson.transferred(
        any_db, _posts_with_comments(any_db, selectinload(Post.comments), unique=False)
    )
    assert joined.rows == (comments,)  # every post has comments: one row per comment
    assert selectin.rows == (posts, comments)
    assert joined.statements == 1 and selectin.statements == 2
    assert sum(joined.text_bytes) > sum(selectin.text_bytes)  # the body, once per comment
    row = joined.as_row()
    assert row["statements"] == 1 and row["rows"] == comments
    assert row["rows per statement"] == str(comments)


# --------------------------------------------------------------------- the FK index


@pytest.fixture
def scratch_copy(any_db: Backend) -> Iterator[Backend]:
    """The tiny dataset in a scratch database named for this run, dropped afterwards."""
    name = f"scratch_test_loading_{secrets.token_hex(4)}"
    copy = any_db.sibling(name)
    build(copy, "tiny", force=True, progress=False)
    yield copy
    asyncio.run(copy.dispose())
    if copy.name == "postgresql":
        admin = create_engine(
            any_db.sync_url.set(database="postgres"),
            isolation_level="AUTOCOMMIT",
            poolclass=NullPool,
        )
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        admin.dispose()


def test_create_author_index_adds_the_index_without_touching_the_models(
    scratch_copy: Backend,
) -> None:
    indexes_before = set(Post.__table__.indexes)
    lazy_load = select(Post).where(Post.author_id == 1)
    assert explain(scratch_copy, lazy_load, analyze=False).full_scans() != []
    ddl = lesson.create_author_index(scratch_copy)
    assert ddl == "CREATE INDEX ix_posts_author_id ON posts (author_id)"
    assert set(Post.__table__.indexes) == indexes_before  # the course metadata is unchanged
    if scratch_copy.name == "sqlite":  # PostgreSQL picks by cost: tiny tables are seq-scanned
        plan = explain(scratch_copy, lazy_load, analyze=False)
        assert plan.scans() == ["SEARCH posts USING INDEX ix_posts_author_id (author_id=?)"]
    with scratch_copy.sync_engine.connect() as conn:
        names = {ix["name"] for ix in scratch_copy.sync_engine.dialect.get_indexes(conn, "posts")}
    assert "ix_posts_author_id" in names


def test_statements_or_scans_splits_the_gap() -> None:
    def frame(lazy_ms: float, fast_ms: float) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "strategy": ["lazy", "fast"],
                "backend": ["sqlite", "sqlite"],
                "n": [50, 50],
                "median_ms": [lazy_ms, fast_ms],
            }
        )

    split = lesson.statements_or_scans(frame(100, 10), frame(30, 10), "lazy", "fast")
    row = split.iloc[0]
    assert row["ratio_no_index"] == 10 and row["ratio_indexed"] == 3
    assert row["gap_ms_no_index"] == 90 and row["gap_ms_indexed"] == 20
    assert row["scans_pct_of_gap"] == round(100 * 70 / 90, 2)
    assert row["statements_pct_of_gap"] == round(100 * 20 / 90, 2)
    assert row["noise_ms"] == 0 and not row["within_noise"]


def test_statements_or_scans_says_when_the_split_is_within_noise() -> None:
    def rounds(*pairs: tuple[float, float]) -> pd.DataFrame:
        rows = [
            {"strategy": s, "backend": "sqlite", "n": 50, "median_ms": ms, "round": r}
            for r, (lazy_ms, fast_ms) in enumerate(pairs, 1)
            for s, ms in (("lazy", lazy_ms), ("fast", fast_ms))
        ]
        return pd.DataFrame(rows)

    split = lesson.statements_or_scans(
        rounds((30, 10), (40, 10)), rounds((28, 10), (38, 10)), "lazy", "fast"
    )
    row = split.iloc[0]
    assert row["noise_ms"] == 10 and row["within_noise"]


def _sqlite_urls(path: Any) -> tuple[Any, Any]:
    from sqlalchemy.engine import make_url

    return make_url(f"sqlite:///{path}"), make_url(f"sqlite+aiosqlite:///{path}")


def test_index_ab_alternates_and_leaves_the_index(tmp_path) -> None:
    db = Backend("sqlite", *_sqlite_urls(tmp_path / "ab.sqlite"), "test", "ab")
    Base.metadata.create_all(db.sync_engine)

    def one(db: Backend, n: int) -> None:
        """one"""
        with db.Session() as session:
            session.scalars(select(Post).where(Post.author_id == 1)).all()

    no_index, indexed = _run(
        db, lambda: lesson.index_ab([db], [one], 1, rounds=2, repeats=5, min_sample_s=0.001)
    )
    assert no_index["round"].tolist() == [1, 2] == indexed["round"].tolist()
    assert lesson.has_author_index(db)
    db.sync_engine.dispose()


# ------------------------------------------------------------------ the reference answer


def _expected_report(db: Backend, since: int) -> list[tuple[str, list[int]]]:
    """The report computed independently: every car read once, grouped in Python."""
    with db.Session() as session:
        dealerships = session.execute(select(Dealership.id, Dealership.name)).all()
        cars = session.execute(select(Car.id, Car.dealership_id, Car.year, Car.price)).all()
    recent: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for car_id, dealership_id, year, price in cars:
        if year >= since:
            recent[dealership_id].append((-price, car_id))
    return [(name, [car for _, car in sorted(recent[i])]) for i, name in sorted(dealerships)]


def test_reference_report_is_right_and_n_plus_one(any_db: Backend) -> None:
    expected = _expected_report(any_db, RECENT_YEAR)
    with count_statements(any_db) as log, any_db.Session() as session:
        report = lesson.reference_dealership_report(session)
    assert report == expected
    with any_db.Session() as session:
        cars = session.scalar(select(Car.id).order_by(Car.id.desc()).limit(1))
    recent = sum(len(ids) for _, ids in report)
    assert 0 < recent < cars  # the year filter bites
    assert lesson.objects_allowed(any_db) == len(report) + recent
    assert any(ids != sorted(ids) for _, ids in report)  # price order is not id order
    assert log.count == 1 + len(report)


def test_year_after_last_car_leaves_every_list_empty(any_db: Backend) -> None:
    since = lesson.year_after_last_car(any_db)
    with any_db.Session() as session:
        report = lesson.reference_dealership_report(session, since)
    assert report and all(ids == [] for _, ids in report)
    assert lesson.objects_allowed(any_db, since) == len(report)


# ------------------------------------------------------------------ the exercise check
# Each naive answer below is one the notebook warns about; the check must reject it and
# say why. The solutions must pass.

Report = list[tuple[str, list[int]]]


def _by_price(cars: Any) -> list[int]:
    return [car.id for car in sorted(cars, key=lambda car: (-car.price, car.id))]


def stub(session: Session, since: int) -> Report:
    raise NotImplementedError("your turn")


def n_plus_one(session: Session, since: int) -> Report:
    """The reference itself: right, and 1 + N statements."""
    return lesson.reference_dealership_report(session, since)


def load_all_filter_in_python(session: Session, since: int) -> Report:
    """Two statements, but every car is built and the year is filtered in Python."""
    stmt = select(Dealership).options(selectinload(Dealership.cars)).order_by(Dealership.id)
    return [
        (d.name, _by_price(car for car in d.cars if car.year >= since))
        for d in session.scalars(stmt)
    ]


def all_cars_grouped_in_python(session: Session, since: int) -> Report:
    """Two statements: all dealerships, all cars; grouped and filtered in Python."""
    dealerships = session.scalars(select(Dealership).order_by(Dealership.id)).all()
    cars: dict[int, list[Car]] = defaultdict(list)
    for car in session.scalars(select(Car)):
        if car.year >= since:
            cars[car.dealership_id].append(car)
    return [(d.name, _by_price(cars[d.id])) for d in dealerships]


def inner_join(session: Session, since: int) -> Report:
    """One statement, but an inner join drops dealerships without a matching car."""
    stmt = (
        select(Dealership.id, Dealership.name, Car.id)
        .join(Dealership.cars.and_(Car.year >= since))
        .order_by(Dealership.id, Car.price.desc(), Car.id)
    )
    report: dict[int, tuple[str, list[int]]] = {}
    for dealership_id, name, car_id in session.execute(stmt):
        report.setdefault(dealership_id, (name, []))[1].append(car_id)
    return list(report.values())


def forgets_the_year(session: Session, since: int) -> Report:
    """Two statements, every car of every dealership: the filter is missing."""
    stmt = select(Dealership).options(selectinload(Dealership.cars)).order_by(Dealership.id)
    return [(d.name, _by_price(d.cars)) for d in session.scalars(stmt)]


def unsorted_ids(session: Session, since: int) -> Report:
    """The right cars in the order the loader happened to return them."""
    recent = Dealership.cars.and_(Car.year >= since)
    stmt = select(Dealership).options(selectinload(recent)).order_by(Dealership.id)
    return [(d.name, [car.id for car in d.cars]) for d in session.scalars(stmt)]


def dealerships_unordered(session: Session, since: int) -> Report:
    """The right lists, dealerships by name instead of by id."""
    recent = Dealership.cars.and_(Car.year >= since)
    stmt = select(Dealership).options(selectinload(recent)).order_by(Dealership.name.desc())
    return [(d.name, _by_price(d.cars)) for d in session.scalars(stmt)]


def joined_without_unique(session: Session, since: int) -> Report:
    """joinedload on a collection without .unique(): a 2.x select() refuses."""
    recent = Dealership.cars.and_(Car.year >= since)
    stmt = select(Dealership).options(joinedload(recent)).order_by(Dealership.id)
    return [(d.name, _by_price(d.cars)) for d in session.scalars(stmt)]


def selectin_solution(session: Session, since: int) -> Report:
    """The notebook's hidden solution: selectinload with criteria, 2 statements."""
    recent = Dealership.cars.and_(Car.year >= since)
    stmt = select(Dealership).options(selectinload(recent)).order_by(Dealership.id)
    return [(d.name, _by_price(d.cars)) for d in session.scalars(stmt)]


def outer_join_solution(session: Session, since: int) -> Report:
    """One statement, no objects: an outer join on the same criteria, grouped in Python."""
    stmt = (
        select(Dealership.id, Dealership.name, Car.id)
        .outerjoin(Dealership.cars.and_(Car.year >= since))
        .order_by(Dealership.id, Car.price.desc(), Car.id)
    )
    report: dict[int, tuple[str, list[int]]] = {}
    for dealership_id, name, car_id in session.execute(stmt):
        _, ids = report.setdefault(dealership_id, (name, []))
        if car_id is not None:
            ids.append(car_id)
    return list(report.values())


def two_queries_solution(session: Session, since: int) -> Report:
    """Two statements: the dealerships, then only the matching cars, grouped in Python."""
    dealerships = session.scalars(select(Dealership).order_by(Dealership.id)).all()
    matching = select(Car).where(Car.year >= since).order_by(Car.price.desc(), Car.id)
    ids: dict[int, list[int]] = defaultdict(list)
    for car in session.scalars(matching):
        ids[car.dealership_id].append(car.id)
    return [(d.name, ids[d.id]) for d in dealerships]


def cols_all_cars_python(session: Session, since: int) -> Report:
    """Two column statements over every car; filtered and sorted in Python (no objects)."""
    dealerships = session.execute(select(Dealership.id, Dealership.name).order_by(Dealership.id))
    cars = session.execute(select(Car.id, Car.dealership_id, Car.year, Car.price)).all()
    report = []
    for dealership_id, name in dealerships.all():
        mine = [c for c in cars if c.dealership_id == dealership_id and c.year >= since]
        report.append((name, [c.id for c in sorted(mine, key=lambda c: (-c.price, c.id))]))
    return report


def one_stmt_all_cars_outer(session: Session, since: int) -> Report:
    """One statement: every (dealership, car) outer-joined; old cars dropped in Python."""
    stmt = (
        select(Dealership.id, Dealership.name, Car.id, Car.year)
        .outerjoin(Dealership.cars)
        .order_by(Dealership.id, Car.price.desc(), Car.id)
    )
    report: dict[int, tuple[str, list[int]]] = {}
    for dealership_id, name, car_id, year in session.execute(stmt):
        _, ids = report.setdefault(dealership_id, (name, []))
        if car_id is not None and year >= since:
            ids.append(car_id)
    return list(report.values())


def _outer_join(session: Session, since: int, *order: Any) -> Report:
    stmt = (
        select(Dealership.id, Dealership.name, Car.id)
        .outerjoin(Dealership.cars.and_(Car.year >= since))
        .order_by(*order)
    )
    report: dict[int, tuple[str, list[int]]] = {}
    for dealership_id, name, car_id in session.execute(stmt):
        _, ids = report.setdefault(dealership_id, (name, []))
        if car_id is not None:
            ids.append(car_id)
    return list(report.values())


def no_tiebreak(session: Session, since: int) -> Report:
    """ORDER BY price DESC without the id tie-break."""
    return _outer_join(session, since, Dealership.id, Car.price.desc())


def id_desc_tiebreak(session: Session, since: int) -> Report:
    """Equal prices broken by id descending."""
    return _outer_join(session, since, Dealership.id, Car.price.desc(), Car.id.desc())


def no_dealership_order(session: Session, since: int) -> Report:
    """selectinload with criteria, but the dealerships come in whatever order the scan gives."""
    stmt = select(Dealership).options(selectinload(Dealership.cars.and_(Car.year >= since)))
    return [(d.name, _by_price(d.cars)) for d in session.scalars(stmt)]


def ids_as_str(session: Session, since: int) -> Report:
    """The right ids, as strings."""
    return [(name, [str(i) for i in ids]) for name, ids in selectin_solution(session, since)]


def second_session(session: Session, since: int) -> Report:
    """The N+1 on a private Session bound to the same connection: still counted."""
    with Session(session.get_bind()) as private:
        return lesson.reference_dealership_report(private, since)


def joined_solution(session: Session, since: int) -> Report:
    """joinedload with criteria + unique(): 1 statement."""
    recent = Dealership.cars.and_(Car.year >= since)
    stmt = select(Dealership).options(joinedload(recent)).order_by(Dealership.id)
    return [(d.name, _by_price(d.cars)) for d in session.scalars(stmt).unique()]


NAIVE = {
    n_plus_one: ("over budget", "statements: the budget is 2"),
    second_session: ("over budget", "statements: the budget is 2"),
    load_all_filter_in_python: ("too many objects", "filter and limit in SQL"),
    all_cars_grouped_in_python: ("too many objects", "filter and limit in SQL"),
    cols_all_cars_python: ("too many rows", "rows came back from the database"),
    one_stmt_all_cars_outer: ("too many rows", "rows came back from the database"),
    inner_join: ("wrong result", "with an empty list when no car matches"),
    forgets_the_year: ("wrong result", "the wrong cars: check the model-year filter"),
    unsorted_ids: ("wrong result", "in the wrong order: most expensive first"),
    id_desc_tiebreak: ("wrong result", "equal prices by id"),
    dealerships_unordered: ("wrong result", "not in id order"),
    no_dealership_order: ("wrong result", "not in id order"),
    ids_as_str: ("wrong result", "list of int ids"),
    joined_without_unique: ("raised", "InvalidRequestError"),
}


@pytest.mark.parametrize("naive", list(NAIVE), ids=lambda fn: fn.__name__)
def test_check_rejects_each_naive_answer_and_says_why(any_db: Backend, naive) -> None:
    status, why = NAIVE[naive]
    verdict = lesson.check_dealership_report(naive, any_db)
    assert not verdict.passed
    assert verdict.status == status, verdict
    assert why in verdict.message, verdict.message
    assert verdict.message.startswith("✗")


def test_a_missing_tie_break_is_caught_on_postgresql(pg_service: Backend) -> None:
    """SQLite returns equal prices in id order by accident; PostgreSQL's rewritten rows do not."""
    verdict = lesson.check_dealership_report(no_tiebreak, pg_service)
    assert verdict.status == "wrong result"
    assert "equal prices by id" in verdict.message


def test_judged_data_ties_prices_and_rolls_back(any_db: Backend) -> None:
    before = _expected_report(any_db, RECENT_YEAR)
    with lesson.judged_data(any_db) as judged, judged.Session() as session:
        prices = session.execute(
            select(Car.dealership_id, Car.price).where(Car.year >= RECENT_YEAR)
        ).all()
        assert len(prices) > len(set(prices))  # equal (dealership, price) pairs exist
    assert _expected_report(any_db, RECENT_YEAR) == before  # nothing was kept
    with any_db.Session() as session:
        ids = session.scalars(select(Dealership.id)).all()  # no ORDER BY: scan order
    assert ids == sorted(ids)  # the reversed scan did not outlive the check


def test_rows_allowed_counts_dealerships_cars_and_null_rows(any_db: Backend) -> None:
    report = _expected_report(any_db, RECENT_YEAR)
    cars = sum(len(ids) for _, ids in report)
    empty = sum(not ids for _, ids in report)
    assert lesson.rows_allowed(any_db) == len(report) + cars + empty
    since = lesson.year_after_last_car(any_db)
    assert lesson.rows_allowed(any_db, since) == 2 * len(report)


def test_check_says_how_many_objects_were_allowed(sqlite_db: Backend) -> None:
    verdict = lesson.check_dealership_report(load_all_filter_in_python, sqlite_db)
    assert f"at most {lesson.objects_allowed(sqlite_db)}" in verdict.message


def test_inner_join_is_caught_by_the_case_without_matching_cars(any_db: Backend) -> None:
    verdict = lesson.check_dealership_report(inner_join, any_db)
    assert f"since={lesson.year_after_last_car(any_db)}" in verdict.message


@pytest.mark.parametrize(
    "solution, statements",
    [
        (selectin_solution, 2),
        (outer_join_solution, 1),
        (two_queries_solution, 2),
        (joined_solution, 1),
    ],
    ids=lambda value: getattr(value, "__name__", str(value)),
)
def test_check_accepts_the_solutions(any_db: Backend, solution, statements: int) -> None:
    verdict = lesson.check_dealership_report(solution, any_db)
    assert verdict.passed, verdict
    assert verdict.statements == statements


def test_check_reports_an_untouched_stub(sqlite_db: Backend) -> None:
    verdict = lesson.check_dealership_report(stub, sqlite_db)
    assert verdict.status == "not attempted"
    assert not verdict.passed


def test_ratios_line_up_local_and_simulated_rows_by_backend() -> None:
    local = pd.DataFrame(
        {"strategy": ["slow", "fast"], "backend": ["sqlite"] * 2, "n": [5, 5], "median_ms": [9, 3]}
    )
    simulated = local.assign(backend="sqlite + simulated 1 ms/statement", median_ms=[20, 4])
    table = lesson.ratios({"local": local, "simulated": simulated}, "slow", "fast")
    assert table.to_dict() == {"local": {"sqlite": 3.0}, "simulated": {"sqlite": 5.0}}
    assert table.columns.name == "slow / fast"


def test_count_each_counts_one_run_per_strategy_and_backend(sqlite_db: Backend) -> None:
    def one(db: Backend, n: int) -> None:
        """one statement"""
        with db.Session() as session:
            session.scalars(select(User).limit(n)).all()

    async def lazy(db: Backend, n: int) -> None:
        """lazy"""
        async with db.AsyncSession() as session:
            for user in (await session.scalars(select(User).order_by(User.id).limit(n))).all():
                await user.awaitable_attrs.posts

    counts = _run(sqlite_db, lambda: lesson.count_each([one, lazy], [sqlite_db], 4))
    assert counts.to_dict("records") == [
        {"strategy": "one statement", "backend": "sqlite", "n": 4, "statements": 1},
        {"strategy": "lazy", "backend": "sqlite", "n": 4, "statements": 5},
    ]
