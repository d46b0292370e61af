"""Tests for course_lib.lessons.pagination: keyset pages, the walker, the checks, everywhere.

Every test works on a scratch copy of the tiny cars (60 cars, ids 1..60) plus one imported
car with id 0, in a database beside the fixture's whose name is unique to this run
(``fresh_database``): 61 cars, ids 0..60.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, insert, inspect, select, text
from sqlalchemy.orm import Session, aliased

from course_lib.backends import Backend
from course_lib.data import reset_schema
from course_lib.exercises import CheckResult, acheck, check
from course_lib.explain import Plan, explain
from course_lib.lessons import pagination as paging
from course_lib.measure import count_statements
from course_lib.models import Car
from course_lib.settings import choose_scale

ALL_IDS = list(range(0, 61))
TINY = choose_scale("tiny")


@pytest.fixture(scope="module", params=["sqlite_db", "pg_service", "pg_embedded"])
def cars(request: pytest.FixtureRequest, fresh_database: Any) -> Iterator[Backend]:
    """The tiny cars with the (price, id) index, plus car 0, in a database unique to this run."""
    db = reset_schema(fresh_database(request.getfixturevalue(request.param), "pagination"))
    paging.fill_cars(db, TINY)
    paging.add_car_zero(db)
    yield db
    db.sync_engine.dispose()


def _arun(db: Backend, coro_fn: Any) -> Any:
    """Run async work in a fresh loop (see Backend.run)."""
    return db.run(coro_fn)


# ------------------------------------------------------------------------ keyset pages


@pytest.mark.parametrize("size", [1, 7, 20, 61, 100])
def test_keyset_walk_returns_every_row_once_in_order(cars: Backend, size: int) -> None:
    with count_statements(cars) as log, cars.Session() as session:
        walked = paging.walk(paging.keyset_page, session, size)
    assert walked == ALL_IDS
    assert log.count == paging.PageWalk(size=size, first=None).pages(61)  # one per page


def test_cursor_zero_is_a_real_cursor(cars: Backend) -> None:
    with cars.Session() as session:
        assert paging.keyset_page(session, 0, 5) == ([1, 2, 3, 4, 5], 5)
        assert paging.keyset_page(session, None, 1) == ([0], 0)
        # the guides' version starts again from the first row: row 0 comes back
        assert paging.guide_page(session, 0, 5).ids == [0, 1, 2, 3, 4]


def test_last_page_returns_no_next_cursor(cars: Backend) -> None:
    with cars.Session() as session:
        assert paging.keyset_page(session, 55, 20) == ([56, 57, 58, 59, 60], None)
        assert paging.keyset_page(session, 40, 20) == (list(range(41, 61)), None)  # exactly full
        assert paging.keyset_page(session, 60, 20) == ([], None)
        guide_last = paging.guide_page(session, 40, 20)
        assert guide_last.next_cursor == 60  # the guides hand out a cursor on the last page
        assert paging.guide_page(session, guide_last.next_cursor, 20) == ([], None)


def test_keyset_statement_binds_the_cursor() -> None:
    compiled = paging.keyset_statement(0, 20).compile()
    assert compiled.params == {"id_1": 0, "param_1": 21}
    assert "cars.id > :id_1" in str(compiled)
    assert "WHERE" not in str(paging.keyset_statement(None, 20))


@pytest.mark.parametrize("size", [1, 6, 61])
def test_price_walk_matches_python_sort(cars: Backend, size: int) -> None:
    with cars.Session() as session:
        expected = paging.ids_in_price_order(session)
        walked = paging.walk(paging.price_page, session, size)
    assert sorted(expected) == ALL_IDS
    assert walked == expected

    async def walk_async() -> list[int]:
        async with cars.AsyncSession() as session:
            return await paging.awalk(paging.aprice_page, session, size)

    assert _arun(cars, walk_async) == expected


def test_price_statement_uses_row_values(cars: Backend) -> None:
    with count_statements(cars) as log, cars.Session() as session:
        page = paging.price_page(session, (3_900, 0), 3)
    assert log.count == 1
    assert "(cars.price, cars.id) >" in log.sql[0]
    with cars.Session() as session:
        expected = paging.ids_in_price_order(session)
    assert page.ids == expected[1:4]
    if cars.name == "sqlite":  # tiny tables: PostgreSQL may rightly prefer a scan and a sort
        plan = explain(cars, paging.price_statement((3_900, 0), 3))
        assert plan.uses_index(paging.PRICE_INDEX), plan


def test_offset_pages_are_complete_when_nothing_changes(cars: Backend) -> None:
    with cars.Session() as session:
        assert paging.walk(paging.offset_page, session, 7) == ALL_IDS
        assert paging.walk(paging.offset_count_page, session, 7) == ALL_IDS
        walked = paging.walk(paging.price_offset_page, session, 7)
        assert walked == paging.ids_in_price_order(session)


def test_async_pages_agree_with_sync(cars: Backend) -> None:
    async def pages() -> list[Any]:
        async with cars.AsyncSession() as session:
            return [
                await paging.akeyset_page(session, 0, 5),
                await paging.aoffset_page(session, 1, 5),
                await paging.aoffset_count_page(session, 1, 5),
                await paging.aguide_page(session, 0, 5),
                await paging.aprice_offset_page(session, 0, 5),
            ]

    with cars.Session() as session:
        expected = [
            paging.keyset_page(session, 0, 5),
            paging.offset_page(session, 1, 5),
            paging.offset_count_page(session, 1, 5),
            paging.guide_page(session, 0, 5),
            paging.price_offset_page(session, 0, 5),
        ]
    assert _arun(cars, pages) == expected


# ---------------------------------------------------------------- walking while writing


def _count(db: Backend) -> int:
    with db.Session() as session:
        return session.scalar(select(func.count()).select_from(Car))


def test_keyset_neither_skips_nor_repeats_while_rows_are_inserted(cars: Backend) -> None:
    report = paging.walk_while_writing(cars, paging.price_page, 7, paging.insert_before_and_after)
    assert report.repeated == 0
    assert report.skipped == 0
    assert set(ALL_IDS) <= set(report.ids)  # every existing row came back
    assert len(report.ids) == len(set(report.ids))  # none twice
    # one car was inserted before the cursor and one after it, between every two pages;
    # the walk sees those inserted after it and none of those inserted before
    assert report.inserted == 2 * (report.pages - 1)
    assert report.inserted_seen == report.inserted // 2
    assert report.finished and report.returned == 61 + report.inserted_seen
    assert _count(cars) == 61  # the walk was rolled back


def test_a_walk_of_size_one_under_inserts_stops_at_max_pages_and_says_so(cars: Backend) -> None:
    # each page reads one row while one more lands after the cursor: it would never end
    report = paging.walk_while_writing(
        cars, paging.price_page, 1, paging.insert_before_and_after, max_pages=80
    )
    assert report.pages == 80 and not report.finished
    done = paging.walk_while_writing(cars, paging.price_page, 5, paging.insert_before_and_after)
    assert done.finished and done.pages < 10_000


def test_offset_repeats_rows_when_rows_are_inserted_before_the_cursor(cars: Backend) -> None:
    report = paging.walk_while_writing(
        cars, paging.price_offset_page, 7, paging.insert_before_and_after
    )
    assert report.repeated > 0
    assert report.skipped == 0
    assert _count(cars) == 61


def test_deletes_make_offset_skip_but_not_keyset(cars: Backend) -> None:
    keyset = paging.walk_while_writing(cars, paging.price_page, 7, paging.delete_first_row)
    offset = paging.walk_while_writing(cars, paging.price_offset_page, 7, paging.delete_first_row)
    assert (keyset.repeated, keyset.skipped) == (0, 0)
    assert keyset.returned == 61
    assert offset.skipped > 0
    assert offset.repeated == 0
    assert _count(cars) == 61


def test_compare_walks_table(cars: Backend) -> None:
    frame = paging.compare_walks(
        cars,
        [paging.price_offset_page, paging.price_page],
        7,
        [paging.insert_before_and_after, paging.delete_first_row],
    )
    assert (
        frame["strategy"].tolist() == ["OFFSET/LIMIT by (price, id)", "keyset by (price, id)"] * 2
    )
    assert frame["change"].tolist() == ["insert_before_and_after"] * 2 + ["delete_first_row"] * 2
    keyset = frame[frame["strategy"] == "keyset by (price, id)"]
    assert (keyset[["repeated", "skipped"]] == 0).all().all()


# ------------------------------------------------------------------- the exercise check


def _full_page_cursor(session: Session, cursor: int | None, size: int) -> paging.Page:
    """Handles cursor 0, but hands out a next cursor whenever a page is full."""
    stmt = select(Car.id).order_by(Car.id).limit(size)
    if cursor is not None:
        stmt = stmt.where(Car.id > cursor)
    ids = list(session.scalars(stmt))
    return paging.Page(ids, ids[-1] if len(ids) == size else None)


def _stub(session: Session, cursor: int | None, size: int) -> paging.Page:
    raise NotImplementedError("your turn")


def _check(db: Backend, page: Any, walk: paging.PageWalk) -> CheckResult:
    return check(walk.of(page), db, reference=walk.reference, budget=walk.budget(db))


def test_check_budget_counts_pages() -> None:
    walk = paging.PageWalk(size=250, first=1)
    assert walk.pages(50_001) == 201
    assert walk.pages(1) == 1
    assert walk.pages(0) == 1
    assert paging.PageWalk(size=250, first=None).pages(50_000) == 200


def test_check_accepts_the_solution(cars: Backend) -> None:
    walk = paging.PageWalk(size=7, first=1)
    result = _check(cars, paging.keyset_page, walk)
    assert result.passed, result
    assert result.statements == result.budget == 10  # 1 row, then 60 in pages of 7


def test_check_says_not_attempted_for_the_stub(cars: Backend) -> None:
    result = _check(cars, _stub, paging.PageWalk(size=7))
    assert result.status == "not attempted"


def test_check_rejects_offset_with_count(cars: Backend) -> None:
    result = _check(cars, paging.offset_count_page, paging.PageWalk(size=7))
    assert result.status == "over budget", result
    assert result.statements == 2 * result.budget  # count(*) on every page


def test_check_rejects_the_guides_if_cursor(cars: Backend) -> None:
    result = _check(cars, paging.guide_page, paging.PageWalk(size=7))
    assert result.status == "wrong result", result  # cursor 0 brought row 0 back


def test_check_rejects_a_next_cursor_after_the_last_page(cars: Backend) -> None:
    walk = paging.PageWalk(size=6, first=1)  # 1 row, then 60 in 10 full pages
    result = _check(cars, _full_page_cursor, walk)
    assert result.status == "over budget", result
    assert result.statements == result.budget + 1  # one request for an empty page


def test_acheck_judges_async_page_functions(cars: Backend) -> None:
    walk = paging.PageWalk(size=7, first=1)

    async def verdicts() -> list[CheckResult]:
        return [
            await acheck(walk.of(page), cars, reference=walk.reference, budget=walk.budget(cars))
            for page in (paging.akeyset_page, paging.aguide_page, paging.aoffset_count_page)
        ]

    solution, guide, naive = _arun(cars, verdicts)
    assert solution.passed, solution
    assert guide.status == "wrong result"
    assert naive.status == "over budget"


def test_walk_stops_when_a_cursor_repeats(cars: Backend) -> None:
    def stuck(session: Session, cursor: int | None, size: int) -> paging.Page:
        return paging.Page([1], 1)

    with cars.Session() as session:
        assert paging.walk(stuck, session, 5) == [1, 1]


# -------------------------------------------------------------- cursors, estimates, plans


def test_keyset_cursor(cars: Backend) -> None:
    with cars.Session() as session:
        assert paging.keyset_cursor(session, 1, 5) is None
        assert paging.keyset_cursor(session, 3, 5) == 9  # ids 0..9 are on pages 1 and 2
        price_order = paging.ids_in_price_order(session)
        price, car_id = paging.keyset_cursor(session, 2, 5, by="price")
        assert car_id == price_order[4]
        assert session.get(Car, car_id).price == price
        with pytest.raises(ValueError, match="by must be"):
            paging.keyset_cursor(session, 2, 5, by="make")
    cursors = paging.keyset_cursors([cars], [1, 3], size=5)
    assert cursors == {(cars.name, 1): None, (cars.name, 3): 9}


def test_fill_cars_copies_the_shared_rows_and_adds_the_index(
    cars: Backend, sqlite_db: Backend
) -> None:
    columns = (Car.id, Car.dealership_id, Car.make, Car.model, Car.year, Car.price)
    with cars.Session() as scratch, sqlite_db.Session() as shared:
        copied = scratch.execute(select(*columns).where(Car.id > 0).order_by(Car.id)).all()
        original = shared.execute(select(*columns).order_by(Car.id)).all()
    assert copied == original
    indexes = {ix["name"] for ix in inspect(cars.sync_engine).get_indexes("cars")}
    assert paging.PRICE_INDEX in indexes
    assert "ix_cars_price_id" not in {ix.name for ix in Car.__table__.indexes}  # models untouched


def test_estimate_statement_is_bound_and_close(cars: Backend) -> None:
    stmt = paging.estimate_statement(cars.name)
    assert list(stmt.compile().params.values()) == ["cars"] + ([1] if cars.name == "sqlite" else [])
    assert "'cars'" not in str(stmt)
    with cars.Session() as session:
        estimate = paging.estimate_value(session.scalar(stmt))
        exact = session.scalar(select(func.count()).select_from(Car))
    assert exact == 61
    assert abs(estimate - exact) / exact < 0.10  # ANALYZE ran before car 0 was added
    with pytest.raises(ValueError):
        paging.estimate_statement("mysql")


def test_estimate_value() -> None:
    assert paging.estimate_value("61 2 1") == 61.0
    assert paging.estimate_value(61.0) == 61.0
    assert paging.estimate_value(None) != paging.estimate_value(None)  # NaN


def test_rows_scanned_reads_actual_rows() -> None:
    lines = [
        "Limit  (cost=1.0..2.0 rows=20 width=8) (actual time=1.0..1.1 rows=20 loops=1)",
        "  ->  Index Scan using cars_pkey on cars  (cost=0.29..1805.29 rows=50000 width=8)"
        " (actual time=0.038..12.304 rows=40000 loops=1)",
    ]
    assert paging.rows_scanned(Plan("postgresql", lines, True)) == 40_000
    with pytest.raises(ValueError):
        paging.rows_scanned(Plan("sqlite", ["SCAN cars"], False))


def test_rows_scanned_on_postgresql(cars: Backend) -> None:
    if cars.name != "postgresql":
        pytest.skip("EXPLAIN ANALYZE row counts are a PostgreSQL feature")
    offset = explain(cars, select(Car.id).order_by(Car.id).offset(40).limit(5))
    keyset = explain(cars, paging.keyset_statement(40, 5))
    assert paging.rows_scanned(offset) >= 45  # every row before the page, and the page
    assert paging.rows_scanned(keyset) < paging.rows_scanned(offset)


def test_plans_side_by_side_and_source() -> None:
    a = Plan("sqlite", ["SCAN cars"], False)
    b = Plan("sqlite", ["SEARCH cars USING INTEGER PRIMARY KEY (rowid>?)", "x"], False)
    frame = paging.plans_side_by_side({"offset": a, "keyset": b}).data
    assert frame.columns.tolist() == ["offset", "keyset"]
    assert frame["offset"].tolist() == ["SCAN cars", ""]
    text = paging.source(paging.aguide_page).data
    assert text.startswith("```python\nasync def aguide_page(")
    assert "if ids else None" in text


def test_deep_page_strategies_return_the_same_page(cars: Backend) -> None:
    offset_at_depth, your_page = paging.deep_page_strategies(paging.akeyset_page, depth=3)
    _, sync_page = paging.deep_page_strategies(paging.keyset_page, depth=3)

    async def pages() -> list[Any]:
        return [await offset_at_depth(cars, 5), await your_page(cars, 5), await sync_page(cars, 5)]

    offset, keyset, sync = _arun(cars, pages)
    assert offset.ids == keyset.ids == sync.ids == [10, 11, 12, 13, 14]


# ------------------------------------------------- the notebook's check: check_page / acheck_page


@pytest.fixture(scope="module", params=["sqlite_db", "pg_service"])
def gappy(request: pytest.FixtureRequest, fresh_database: Any) -> Iterator[Backend]:
    """The check's data: the tiny cars, plus car 0, minus the cars in GAPS (56 cars)."""
    db = reset_schema(fresh_database(request.getfixturevalue(request.param), "pagination_gaps"))
    paging.fill_cars(db, TINY)
    paging.prepare_check_data(db)
    paging.prepare_check_data(db)  # idempotent
    yield db
    db.sync_engine.dispose()


def _keyset(
    stmt: Any, cursor: int | None, size: int, ge: bool = False, truthy: bool = False
) -> Any:
    """``stmt`` after ``cursor`` (``>``, or ``>=``; the cursor tested for None, or for truth)."""
    if bool(cursor) if truthy else cursor is not None:
        stmt = stmt.where(Car.id >= cursor if ge else Car.id > cursor)
    return stmt


def _ids(session: Session, stmt: Any) -> list[int]:
    return list(session.scalars(stmt))


def _no_order(session: Session, cursor: int | None, size: int) -> paging.Page:
    """A keyset without ORDER BY: SQLite happens to return rowid order, so the rows look right."""
    ids = _ids(session, _keyset(select(Car.id).limit(size + 1), cursor, size))
    return paging.Page(ids[:size], ids[size - 1] if len(ids) > size else None)


def _non_unique_order(session: Session, cursor: int | None, size: int) -> paging.Page:
    """Ordered by price (not unique), with the id as the cursor."""
    ids = _ids(session, _keyset(select(Car.id).order_by(Car.price).limit(size + 1), cursor, size))
    return paging.Page(ids[:size], ids[size - 1] if len(ids) > size else None)


def _count_every_page(session: Session, cursor: int | None, size: int) -> paging.Page:
    """A correct keyset that also runs count(*) for a "page N of M" footer."""
    session.scalar(select(func.count()).select_from(Car))
    return paging.keyset_page(session, cursor, size)


_BY_ID = select(Car.id).order_by(Car.id)


def _plus_one_returned(session: Session, cursor: int | None, size: int) -> paging.Page:
    """Returns all size + 1 rows; the cursor is the last of them."""
    ids = _ids(session, _keyset(_BY_ID.limit(size + 1), cursor, size))
    return paging.Page(ids, ids[-1] if len(ids) > size else None)


def _plus_one_returned_if_cursor(session: Session, cursor: int | None, size: int) -> paging.Page:
    """Returns all size + 1 rows, and `if cursor:`."""
    ids = _ids(session, _keyset(_BY_ID.limit(size + 1), cursor, size, truthy=True))
    return paging.Page(ids, ids[-1] if len(ids) > size else None)


def _if_cursor_ge_extra_row(session: Session, cursor: int | None, size: int) -> paging.Page:
    """`if cursor:` with `id >= cursor`, the next cursor being the extra row."""
    ids = _ids(session, _keyset(_BY_ID.limit(size + 1), cursor, size, ge=True, truthy=True))
    return paging.Page(ids[:size], ids[size] if len(ids) > size else None)


def _if_cursor_size_20(session: Session, cursor: int | None, size: int) -> paging.Page:
    """`if cursor:` and a hard-coded page size of 20."""
    ids = _ids(session, _keyset(_BY_ID.limit(21), cursor, 20, truthy=True))
    return paging.Page(ids[:20], ids[19] if len(ids) > 20 else None)


def _ge_last_id(session: Session, cursor: int | None, size: int) -> paging.Page:
    """`id >= cursor` with the last id as the cursor: repeats a row per page."""
    ids = _ids(session, _keyset(_BY_ID.limit(size + 1), cursor, size, ge=True))
    return paging.Page(ids[:size], ids[size - 1] if len(ids) > size else None)


def _load_all_and_slice(session: Session, cursor: int | None, size: int) -> paging.Page:
    """Every id on every page, sliced in Python."""
    ids = [i for i in _ids(session, _BY_ID) if cursor is None or i > cursor]
    return paging.Page(ids[:size], ids[size - 1] if len(ids) > size else None)


def _no_limit(session: Session, cursor: int | None, size: int) -> paging.Page:
    """WHERE id > :cursor ORDER BY id with no LIMIT, sliced in Python."""
    ids = _ids(session, _keyset(_BY_ID, cursor, size))
    return paging.Page(ids[:size], ids[size - 1] if len(ids) > size else None)


def _descending_reversed(session: Session, cursor: int | None, size: int) -> paging.Page:
    """Every id in descending order, reversed in Python."""
    ids = [i for i in reversed(_ids(session, select(Car.id).order_by(Car.id.desc())))]
    ids = [i for i in ids if cursor is None or i > cursor]
    return paging.Page(ids[:size], ids[size - 1] if len(ids) > size else None)


def _entities(session: Session, cursor: int | None, size: int) -> paging.Page:
    """A correct keyset that loads full Car entities."""
    cars = list(
        session.scalars(_keyset(select(Car).order_by(Car.id).limit(size + 1), cursor, size))
    )
    ids = [car.id for car in cars]
    return paging.Page(ids[:size], ids[size - 1] if len(ids) > size else None)


def _id_arithmetic(session: Session, cursor: int | None, size: int) -> paging.Page:
    """WHERE id > c AND id <= c + size + 1: right only when ids have no gaps."""
    c = -1 if cursor is None else cursor
    ids = _ids(session, _BY_ID.where(Car.id > c, Car.id <= c + size + 1))
    return paging.Page(ids[:size], ids[size - 1] if len(ids) > size else None)


def _limit_comma(session: Session, cursor: int | None, size: int) -> paging.Page:
    """SQLite's LIMIT offset, count: an OFFSET without the keyword."""
    offset = cursor or 0
    stmt = text("SELECT id FROM cars ORDER BY id LIMIT :o, :n")
    ids = [row[0] for row in session.execute(stmt, {"o": offset, "n": size + 1})]
    return paging.Page(ids[:size], offset + size if len(ids) > size else None)


def _row_number(session: Session, cursor: int | None, size: int) -> paging.Page:
    """ROW_NUMBER() over every row, the cursor a position."""
    numbered = select(Car.id, func.row_number().over(order_by=Car.id).label("rn")).subquery()
    offset = cursor or 0
    stmt = select(numbered.c.id).where(numbered.c.rn > offset).order_by(numbered.c.id)
    ids = _ids(session, stmt.limit(size + 1))
    return paging.Page(ids[:size], offset + size if len(ids) > size else None)


def _descending(session: Session, cursor: int | None, size: int) -> paging.Page:
    """Descending ids with `id < cursor`."""
    stmt = select(Car.id).order_by(Car.id.desc()).limit(size + 1)
    ids = _ids(session, stmt if cursor is None else stmt.where(Car.id < cursor))
    return paging.Page(ids[:size], ids[size - 1] if len(ids) > size else None)


def _max_id_every_page(session: Session, cursor: int | None, size: int) -> paging.Page:
    """max(id) on every page, to know whether more follow."""
    largest = session.scalar(select(func.max(Car.id)))
    ids = _ids(session, _keyset(_BY_ID.limit(size), cursor, size))
    return paging.Page(ids, ids[-1] if ids and ids[-1] < largest else None)


def _exists_next(session: Session, cursor: int | None, size: int) -> paging.Page:
    """An exact page, then EXISTS for the next one."""
    ids = _ids(session, _keyset(_BY_ID.limit(size), cursor, size))
    more = bool(ids) and session.scalar(select(select(Car.id).where(Car.id > ids[-1]).exists()))
    return paging.Page(ids, ids[-1] if more else None)


def _count_once() -> Any:
    cache: dict[str, int] = {}

    def count_once(session: Session, cursor: int | None, size: int) -> paging.Page:
        """count(*) once, cached; a correct keyset otherwise."""
        if "n" not in cache:
            cache["n"] = session.scalar(select(func.count()).select_from(Car))
        return paging.keyset_page(session, cursor, size)

    return count_once


NAIVE = [
    # (page function, status, words the message must contain)
    (paging.guide_page, "wrong result", "`if cursor:` treats 0 as no cursor"),
    (_full_page_cursor, "over budget", "the last page returned a next cursor"),
    (paging.offset_page, "uses OFFSET", "pages with OFFSET"),
    (paging.offset_count_page, "uses OFFSET", "pages with OFFSET"),
    (_no_order, "unstable order", "not ordered by the unique key"),
    (_non_unique_order, "unstable order", "not ordered by the unique key"),
    (_count_every_page, "over budget", "count(*)"),
    (_plus_one_returned, "wrong result", "return only the first size rows"),
    (_plus_one_returned_if_cursor, "wrong result", "return only the first size rows"),
    (_if_cursor_ge_extra_row, "wrong cursor", "must be the last id on the page"),
    (_if_cursor_size_20, "wrong result", "return only the first size rows"),
    (_ge_last_id, "wrong result", "`>=` repeats the last row"),
    (_load_all_and_slice, "fetches too much", "never load more ids and slice them in Python"),
    (_no_limit, "fetches too much", "LIMIT size + 1"),
    (_descending_reversed, "fetches too much", "slice them in Python"),
    (_entities, "loaded entities", "loaded full ORM objects"),
    (_id_arithmetic, "wrong result", "ids have gaps"),
    (_row_number, "wrong cursor", "nor a position"),
    (_descending, "wrong result", "descending id order"),
    (_max_id_every_page, "over budget", "max(id)"),
    (_exists_next, "over budget", "EXISTS"),
    (_count_once(), "over budget", "count once outside the page function"),
]
SQLITE_ONLY = [(_limit_comma, "uses OFFSET", "LIMIT offset, count")]


@pytest.mark.parametrize(("page", "status", "why"), NAIVE, ids=[n[0].__name__ for n in NAIVE])
def test_check_page_rejects_each_naive_answer_and_says_why(
    gappy: Backend, page: Any, status: str, why: str
) -> None:
    if page.__name__ == "count_once":
        page = _count_once()  # a fresh cache for each backend
    verdict = paging.check_page(page, gappy)
    assert not verdict.passed
    assert verdict.status == status, verdict
    assert why in verdict.message, verdict


@pytest.mark.parametrize(("page", "status", "why"), SQLITE_ONLY, ids=["limit_comma"])
def test_check_page_rejects_sqlite_limit_comma(
    gappy: Backend, page: Any, status: str, why: str
) -> None:
    if gappy.name != "sqlite":
        pytest.skip("LIMIT offset, count is SQLite syntax")
    verdict = paging.check_page(page, gappy)
    assert verdict.status == status and why in verdict.message, verdict


def _labelled(session: Session, cursor: int | None, size: int) -> paging.Page:
    """Correct: ORDER BY a label of the id."""
    car_id = Car.id.label("car_id")
    ids = _ids(session, _keyset(select(car_id).order_by(car_id).limit(size + 1), cursor, size))
    return paging.Page(ids[:size], ids[size - 1] if len(ids) > size else None)


def _aliased(session: Session, cursor: int | None, size: int) -> paging.Page:
    """Correct: an aliased(Car)."""
    car = aliased(Car)
    stmt = select(car.id).order_by(car.id).limit(size + 1)
    ids = _ids(session, stmt if cursor is None else stmt.where(car.id > cursor))
    return paging.Page(ids[:size], ids[size - 1] if len(ids) > size else None)


def _offset_zero(session: Session, cursor: int | None, size: int) -> paging.Page:
    """Correct: a keyset with a harmless .offset(0)."""
    ids = _ids(session, _keyset(_BY_ID.limit(size + 1).offset(0), cursor, size))
    return paging.Page(ids[:size], ids[size - 1] if len(ids) > size else None)


def _text_sql(session: Session, cursor: int | None, size: int) -> paging.Page:
    """Correct: text() SQL with bound values, ORDER BY a bare id."""
    if cursor is None:
        rows = session.execute(text("SELECT id FROM cars ORDER BY id LIMIT :n"), {"n": size + 1})
    else:
        stmt = text("SELECT id FROM cars WHERE id > :c ORDER BY id LIMIT :n")
        rows = session.execute(stmt, {"c": cursor, "n": size + 1})
    ids = [row[0] for row in rows]
    return paging.Page(ids[:size], ids[size - 1] if len(ids) > size else None)


CORRECT = [paging.keyset_page, paging.library_page, _labelled, _aliased, _offset_zero, _text_sql]


@pytest.mark.parametrize("page", CORRECT, ids=[p.__name__ for p in CORRECT])
def test_check_page_accepts_correct_answers(gappy: Backend, page: Any) -> None:
    verdict = paging.check_page(page, gappy)
    assert verdict.passed, verdict
    # 56 cars: 1 row, then 55 in pages of 11; 3 pages of 5; the cursor-0 probe
    assert verdict.statements == verdict.budget == 6 + 3 + 1


def test_check_page_says_not_attempted_for_the_stub(gappy: Backend) -> None:
    assert paging.check_page(_stub, gappy).status == "not attempted"


def test_acheck_page_judges_async_page_functions(gappy: Backend) -> None:
    async def plus_one(session: Any, cursor: Any, size: int) -> paging.Page:
        stmt = _keyset(_BY_ID.limit(size + 1), cursor, size)
        ids = list((await session.scalars(stmt)).all())
        return paging.Page(ids, ids[-1] if len(ids) > size else None)

    async def stub(session: Any, cursor: Any, size: int) -> paging.Page:
        raise NotImplementedError

    async def verdicts() -> list[CheckResult]:
        pages = (
            paging.akeyset_page,
            paging.alibrary_page,
            paging.aguide_page,
            paging.aoffset_page,
            paging.aoffset_count_page,
            plus_one,
            stub,
        )
        return [await paging.acheck_page(page, gappy) for page in pages]

    keyset, library, guide, offset, counted, extra, stub_verdict = _arun(gappy, verdicts)
    assert keyset.passed and library.passed, (keyset, library)
    assert "`if cursor:`" in guide.message
    assert offset.status == counted.status == "uses OFFSET"
    assert "return only the first size rows" in extra.message
    assert stub_verdict.status == "not attempted"


def test_check_page_needs_car_zero(sqlite_db: Backend) -> None:
    with pytest.raises(ValueError, match="prepare_check_data"):
        paging.check_page(paging.keyset_page, sqlite_db)  # the shared tiny dataset: ids 1..60


def test_fitting_size_fills_the_last_page() -> None:
    for rows in (60, 50_000, 500_000, 7, 1, 97):
        size = paging._fitting_size(rows)
        assert rows % size == 0 and 1 <= size <= 250
        assert rows // size >= 3 or size == 1


def test_offset_and_order_judges_read_sql_and_values() -> None:
    assert paging._uses_offset("SELECT cars.id FROM cars LIMIT ? OFFSET ?", (21, 40))
    assert not paging._uses_offset("SELECT cars.id FROM cars LIMIT ? OFFSET ?", (21, 0))
    assert not paging._uses_offset("SELECT cars.id FROM cars LIMIT $1 OFFSET $2", (21, 0))
    assert not paging._uses_offset("SELECT cars.id FROM cars WHERE cars.id > $1 LIMIT $2", (1, 2))
    assert paging._uses_offset("SELECT 1 FROM cars LIMIT 20 OFFSET 40", ())
    assert paging._ordered_by_id("SELECT cars.id FROM cars ORDER BY cars.price, cars.id LIMIT ?")
    assert paging._ordered_by_id("SELECT cars.id FROM cars ORDER BY cars.id ASC LIMIT ?")
    assert not paging._ordered_by_id("SELECT cars.id FROM cars ORDER BY cars.price LIMIT ?")
    assert not paging._ordered_by_id("SELECT cars.id FROM cars WHERE cars.id > ? LIMIT ?")
    assert paging._uses_offset("SELECT id FROM cars ORDER BY id LIMIT ?, ?", (0, 21))
    assert not paging._uses_offset(
        "SELECT cars.id FROM cars LIMIT %(l)s OFFSET %(o)s", {"l": 2, "o": 0}
    )
    assert paging._uses_offset(
        "SELECT cars.id FROM cars LIMIT %(l)s OFFSET %(o)s", {"l": 2, "o": 9}
    )
    assert not paging._uses_offset(
        "SELECT cars.id FROM cars LIMIT $1::INTEGER OFFSET $2::INTEGER", (2, 0)
    )
    assert paging._ordered_by_id("SELECT cars.id AS car_id FROM cars ORDER BY car_id LIMIT ?")
    assert paging._ordered_by_id("SELECT cars_1.id FROM cars AS cars_1 ORDER BY cars_1.id LIMIT ?")
    assert paging._ordered_by_id("SELECT id FROM cars ORDER BY id LIMIT ?")
    assert not paging._ordered_by_id(
        "SELECT a.id FROM (SELECT cars.id, row_number() OVER (ORDER BY cars.id) AS rn "
        "FROM cars) AS a LIMIT ?"
    )
    assert paging._order_key("SELECT cars.id FROM cars ORDER BY cars.id DESC LIMIT ?") == (
        True,
        True,
    )


# ------------------------------------------------------------- rows stepped, depths, library


def test_rows_stepped_is_offset_plus_limit(cars: Backend) -> None:
    by_id = select(Car.id, Car.price).order_by(Car.id)
    keyset = paging.keyset_statement(40, 5).with_only_columns(Car.id, Car.price)
    cases = [(by_id.limit(5), 5), (by_id.limit(5).offset(40), 45), (by_id.limit(5).offset(58), 61)]
    for stmt, expected in [*cases, (keyset, 6)]:  # the keyset: 5 + the extra row, at any depth
        stepped = paging.rows_stepped(cars, stmt)
        if cars.name == "sqlite":  # SQLite walks the rowid in order: exactly OFFSET + LIMIT
            assert stepped == expected
        else:  # 61 rows: PostgreSQL may rightly scan them all and sort, rather than walk an index
            assert stepped in (expected, 61), (stmt, stepped)


def test_rows_stepped_leaves_no_function_behind(cars: Backend) -> None:
    if cars.name != "sqlite":
        pytest.skip("the counting function is a SQLite technique")
    paging.rows_stepped(cars, select(Car.id).limit(1))
    with cars.sync_engine.connect() as conn, pytest.raises(Exception, match="course_step"):
        conn.exec_driver_sql("SELECT course_step(1)")


def test_page_count_and_depths() -> None:
    assert paging.page_count(50_000) == 2_500
    assert paging.page_count(500_000) == 25_000
    assert paging.page_count(61) == 4
    assert paging.page_depths(25_000)[-3:] == [1_000, 10_000, 25_000]
    for pages in (1, 2, 3, 4, 2_500, 25_000):
        depths = paging.page_depths(pages)
        assert depths[0] == 1 and depths[-1] == pages and depths == sorted(set(depths))


def test_last_page_cursor(cars: Backend) -> None:
    with cars.Session() as session:
        cursor = paging.last_page_cursor(session, 20)
        assert cursor == 40  # ids 41..60 follow it
        assert paging.keyset_page(session, cursor, 20) == (list(range(41, 61)), None)
        with pytest.raises(ValueError, match="no full last page"):
            paging.last_page_cursor(session, 61)


def test_library_pages_match_the_hand_written_keyset(cars: Backend) -> None:
    with cars.Session() as session:
        for cursor in (None, 0, 17, 40, 59, 60):
            assert paging.library_page(session, cursor, 7) == paging.keyset_page(session, cursor, 7)
        expected = paging.walk(paging.price_page, session, 6)
        assert paging.walk(paging.library_price_page, session, 6) == expected


def test_estimate_is_stale_after_a_commit_until_analyze(
    any_db: Backend, fresh_database: Any
) -> None:
    db = reset_schema(fresh_database(any_db, "pagination_estimate"))
    paging.fill_cars(db, TINY, index=False)
    assert paging.pause_autovacuum(db) == (db.name == "postgresql")

    def estimate() -> float:
        with db.Session() as session:
            return paging.estimate_value(session.scalar(paging.estimate_statement(db.name)))

    assert estimate() == _count(db) == 60
    with db.Session.begin() as session:
        session.execute(insert(Car), paging.new_cars(30))
    assert _count(db) == 90
    assert estimate() == 60  # committed, but not in the estimate
    paging.analyze(db)
    assert estimate() == 90
    db.sync_engine.dispose()
