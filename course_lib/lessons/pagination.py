"""Pagination: OFFSET/LIMIT pages against keyset (cursor) pages, and a walker that proves a
page function returns every row exactly once.

A page function takes ``(session, cursor, size)`` and returns a :class:`Page`: the ids on
the page and the cursor of the next page (None after the last page).

>>> from course_lib.data import dataset
>>> db = dataset("sqlite", "tiny")
>>> with db.Session() as session:
...     first = keyset_page(session, None, 25)
...     second = keyset_page(session, first.next_cursor, 25)
>>> first.next_cursor, second.ids[:3]
(25, [26, 27, 28])
>>> with db.Session() as session:
...     walk(keyset_page, session, 25) == list(range(1, 61))
True

Machinery for notebook 04: :func:`cars_scratch` (a scratch copy of the cars with a
``(price, id)`` index), :class:`PageWalk` (the exercise check), :func:`walk_while_writing`
(rows inserted or deleted between pages), :func:`estimate_statement` (the planner's row
estimate), :func:`plans_side_by_side`, :func:`rows_scanned` and :func:`rows_stepped` (rows
the engine steps through, on both backends), :func:`library_page` (the same pages through
``sqlakeyset``), and :func:`check_page` / :func:`acheck_page` (the exercise check, which
rejects the naive answers the notebook warns about, on data made ready by
:func:`prepare_check_data`: car 0, and gaps in the ids).
"""

from __future__ import annotations

import inspect
import math
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

import pandas as pd
import sqlakeyset
import sqlakeyset.asyncio
import sqlakeyset.paging
from pandas.io.formats.style import Styler
from sqlalchemy import (
    Column,
    Executable,
    Index,
    Integer,
    MetaData,
    Row,
    Select,
    Table,
    column,
    delete,
    func,
    insert,
    select,
    table,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from ..backends import Backend
from ..course import Course
from ..data import generate
from ..exercises import CheckResult, acheck, check
from ..explain import Plan, analyze, explain, pause_autovacuum
from ..measure import listening
from ..models import Car, Dealership
from ..reading import source
from ..settings import Scale

__all__ = [
    "PRICE_INDEX",
    "SHOWN",
    "SIZE",
    "TIMING_ROWS",
    "Page",
    "PageWalk",
    "WalkReport",
    "acheck_page",
    "add_car_zero",
    "aguide_page",
    "akeyset_page",
    "alibrary_page",
    "analyze",
    "aoffset_count_page",
    "aoffset_page",
    "aprice_offset_page",
    "aprice_page",
    "awalk",
    "cars_scratch",
    "check_page",
    "compare_walks",
    "deep_page_strategies",
    "delete_first_row",
    "estimate_statement",
    "estimate_value",
    "fill_cars",
    "guide_page",
    "guide_statement",
    "ids_in_price_order",
    "insert_before_and_after",
    "keyset_cursor",
    "keyset_cursors",
    "keyset_page",
    "keyset_statement",
    "last_page_cursor",
    "library_page",
    "library_price_page",
    "library_statement",
    "new_cars",
    "offset_count_page",
    "offset_page",
    "page_count",
    "page_depths",
    "pause_autovacuum",
    "plans_side_by_side",
    "prepare_check_data",
    "price_offset_page",
    "price_page",
    "price_page_of",
    "price_statement",
    "rows_scanned",
    "rows_stepped",
    "source",
    "walk",
    "walk_while_writing",
]

SIZE = 20
"""The page size of the lesson: 20 cars per page."""

PRICE_INDEX = "ix_cars_price_id"
"""The composite index :func:`fill_cars` adds on ``cars (price, id)`` (scratch copies only)."""

SHOWN = (Car.id, Car.make, Car.model, Car.year, Car.price)
"""The columns a page of cars shows (the composite-key pages select them)."""

Cursor = Any  # an id (int), a (price, id) tuple, or an offset: whatever the page function uses


class Page(NamedTuple):
    """One page: the ids on it, in order, and the cursor of the next page (None: last page)."""

    ids: list[int]
    next_cursor: Cursor | None


# ------------------------------------------------------------------ keyset by id (unique key)


def keyset_statement(cursor: int | None, size: int) -> Select:
    """Car ids after ``cursor`` in id order, one row more than the page.

    >>> keyset_statement(0, 2).compile().params
    {'id_1': 0, 'param_1': 3}
    """
    stmt = select(Car.id).order_by(Car.id).limit(size + 1)
    if cursor is not None:  # 0 is a real cursor: test for None, never for truth
        stmt = stmt.where(Car.id > cursor)
    return stmt


def _id_page(ids: Sequence[int], size: int) -> Page:
    """The first ``size`` ids; a next cursor only when the extra row proved that more follow."""
    ids = list(ids)
    page = ids[:size]
    return Page(page, page[-1] if len(ids) > size else None)


def keyset_page(session: Session, cursor: int | None, size: int = SIZE) -> Page:
    """keyset by id"""
    return _id_page(session.scalars(keyset_statement(cursor, size)).all(), size)


async def akeyset_page(session: AsyncSession, cursor: int | None, size: int = SIZE) -> Page:
    """keyset by id (async; the exercise's reference solution)"""
    return _id_page((await session.scalars(keyset_statement(cursor, size))).all(), size)


# ------------------------------------------------------- keyset by (price, id): a composite key


def price_statement(cursor: tuple[int, int] | None, size: int) -> Select:
    """Cars after ``cursor`` in (price, id) order: price is not unique, the id breaks ties."""
    stmt = select(*SHOWN).order_by(Car.price, Car.id).limit(size + 1)
    if cursor is not None:  # test for None, never for truth
        price, car_id = cursor
        stmt = stmt.where(tuple_(Car.price, Car.id) > tuple_(price, car_id))
    return stmt


def price_page_of(rows: Sequence[Row[Any]], size: int) -> Page:
    """The first ``size`` rows; the next cursor is the last row's (price, id), if more follow."""
    more = len(rows) > size  # the extra row says that another page follows
    rows = rows[:size]
    next_cursor = (rows[-1].price, rows[-1].id) if more else None
    return Page([row.id for row in rows], next_cursor)


async def aprice_page(
    session: AsyncSession, cursor: tuple[int, int] | None, size: int = SIZE
) -> Page:
    """keyset by (price, id)"""
    rows = (await session.execute(price_statement(cursor, size))).all()
    return price_page_of(rows, size)


def price_page(session: Session, cursor: tuple[int, int] | None, size: int = SIZE) -> Page:
    """keyset by (price, id)"""
    return price_page_of(session.execute(price_statement(cursor, size)).all(), size)


def ids_in_price_order(session: Session) -> list[int]:
    """Every car id in (price, id) order, the obvious way: load all, sort in Python."""
    rows = session.execute(select(Car.id, Car.price)).all()
    return [row.id for row in sorted(rows, key=lambda row: (row.price, row.id))]


# -------------------------------------------------------------------------- OFFSET pages


def _offset_statement(offset: int, size: int) -> Select:
    return select(Car.id).order_by(Car.id).limit(size + 1).offset(offset)


def _price_offset_statement(offset: int, size: int) -> Select:
    return select(*SHOWN).order_by(Car.price, Car.id).limit(size + 1).offset(offset)


def _offset_page(ids: Sequence[int], offset: int, size: int) -> Page:
    ids = list(ids)
    return Page(ids[:size], offset + size if len(ids) > size else None)


def offset_page(session: Session, cursor: int | None, size: int = SIZE) -> Page:
    """OFFSET/LIMIT by id"""
    offset = cursor or 0  # the cursor is an offset: here 0 and None both mean the first page
    return _offset_page(session.scalars(_offset_statement(offset, size)).all(), offset, size)


async def aoffset_page(session: AsyncSession, cursor: int | None, size: int = SIZE) -> Page:
    """OFFSET/LIMIT by id"""
    offset = cursor or 0
    rows = (await session.scalars(_offset_statement(offset, size))).all()
    return _offset_page(rows, offset, size)


def price_offset_page(session: Session, cursor: int | None, size: int = SIZE) -> Page:
    """OFFSET/LIMIT by (price, id)"""
    offset = cursor or 0
    rows = session.execute(_price_offset_statement(offset, size)).all()
    return _offset_page([row.id for row in rows], offset, size)


async def aprice_offset_page(session: AsyncSession, cursor: int | None, size: int = SIZE) -> Page:
    """OFFSET/LIMIT by (price, id)"""
    offset = cursor or 0
    rows = (await session.execute(_price_offset_statement(offset, size))).all()
    return _offset_page([row.id for row in rows], offset, size)


def _total() -> Select:
    return select(func.count()).select_from(Car)


def _counted_page(total: int, ids: Sequence[int], offset: int, size: int) -> Page:
    return Page(list(ids), offset + size if offset + size < total else None)


def offset_count_page(session: Session, cursor: int | None, size: int = SIZE) -> Page:
    """OFFSET/LIMIT + count(*): "page N of M", two statements per page"""
    offset = cursor or 0
    total = session.scalar(_total())
    ids = session.scalars(select(Car.id).order_by(Car.id).limit(size).offset(offset)).all()
    return _counted_page(total, ids, offset, size)


async def aoffset_count_page(session: AsyncSession, cursor: int | None, size: int = SIZE) -> Page:
    """OFFSET/LIMIT + count(*): "page N of M", two statements per page"""
    offset = cursor or 0
    total = await session.scalar(_total())
    stmt = select(Car.id).order_by(Car.id).limit(size).offset(offset)
    return _counted_page(total, (await session.scalars(stmt)).all(), offset, size)


# ------------------------------------------------------------- the popular guides' version


def guide_statement(cursor: int | None, size: int) -> Select:
    """The statement popular guides build: ``if cursor:`` drops the filter when cursor is 0."""
    stmt = select(Car.id).order_by(Car.id).limit(size)
    if cursor:  # the bug: 0 is falsy, so cursor 0 starts again from the first row
        stmt = stmt.where(Car.id > cursor)
    return stmt


async def aguide_page(session: AsyncSession, cursor: int | None, size: int = SIZE) -> Page:
    """the popular guides' keyset (if cursor:)"""
    ids = list((await session.scalars(guide_statement(cursor, size))).all())
    return Page(ids, ids[-1] if ids else None)  # the bug: the last page hands out a cursor too


def guide_page(session: Session, cursor: int | None, size: int = SIZE) -> Page:
    """the popular guides' keyset (if cursor:)"""
    ids = list(session.scalars(guide_statement(cursor, size)).all())
    return Page(ids, ids[-1] if ids else None)


# -------------------------------------------------------------------------------- walking


class _Walker:
    """The bookkeeping of one walk, shared by :func:`walk` and :func:`awalk`."""

    def __init__(self, size: int, first: int | None, max_pages: int):
        self.size, self.first, self.max_pages = size, first, max_pages
        self.ids: list[int] = []
        self.cursor: Cursor | None = None
        self.pages = 0
        self.seen_cursors: set[Hashable] = set()

    def next_size(self) -> int:
        return self.first if self.pages == 0 and self.first is not None else self.size

    def take(self, result: Any) -> bool:
        """Record one page; True while the walk should go on."""
        ids, next_cursor = result
        self.pages += 1
        self.ids.extend(ids)
        if next_cursor is None or self.pages >= self.max_pages:
            return False
        key = next_cursor if isinstance(next_cursor, Hashable) else repr(next_cursor)
        if key in self.seen_cursors:  # the same cursor again would loop forever
            return False
        self.seen_cursors.add(key)
        self.cursor = next_cursor
        return True


def walk(
    page: Callable[[Session, Any, int], Any],
    session: Session,
    size: int = SIZE,
    *,
    first: int | None = None,
    max_pages: int = 10_000,
) -> list[int]:
    """Every id that ``page`` returns, walking from cursor None until the next cursor is None.

    ``first`` sets the size of the first request only (the check uses 1, so the second
    request carries the cursor of the very first row). A cursor seen twice ends the walk.
    """
    walker = _Walker(size, first, max_pages)
    while walker.take(page(session, walker.cursor, walker.next_size())):
        pass
    return walker.ids


async def awalk(
    page: Callable[[AsyncSession, Any, int], Awaitable[Any]],
    session: AsyncSession,
    size: int = SIZE,
    *,
    first: int | None = None,
    max_pages: int = 10_000,
) -> list[int]:
    """Like :func:`walk` for an ``async def`` page function."""
    walker = _Walker(size, first, max_pages)
    while walker.take(await page(session, walker.cursor, walker.next_size())):
        pass
    return walker.ids


@dataclass(frozen=True)
class PageWalk:
    """The exercise check: walk every page of cars in id order, from the first to the last.

    >>> from course_lib.data import dataset
    >>> from course_lib.exercises import check
    >>> db = dataset("sqlite", "tiny")
    >>> walk_check = PageWalk(size=25, first=1)
    >>> walk_check.budget(db)  # 1 row, then 59 rows in pages of 25
    4
    >>> check(walk_check.of(keyset_page), db, reference=walk_check.reference,
    ...       budget=walk_check.budget(db)).passed
    True

    ``of(page)`` turns a page function into what ``cl.check`` / ``cl.acheck`` judge: the
    list of ids walked, which must equal ``reference`` (every car once, in id order).
    The budget is one statement per page, and no request after the last page.
    """

    size: int = 250
    first: int | None = 1

    def of(self, page: Callable[..., Any]) -> Callable[[Any], Any]:
        """A solution for ``cl.check`` (sync ``page``) or ``cl.acheck`` (``async def page``)."""
        if inspect.iscoroutinefunction(page):

            async def walk_async(session: AsyncSession) -> list[int]:
                return await awalk(page, session, self.size, first=self.first)

            return walk_async

        def walk_sync(session: Session) -> list[int]:
            return walk(page, session, self.size, first=self.first)

        return walk_sync

    @staticmethod
    def reference(session: Session) -> list[int]:
        """Every car id in id order, the obvious way: all ids, sorted in Python."""
        return sorted(session.scalars(select(Car.id)))

    def pages(self, rows: int) -> int:
        """How many requests a correct page function needs for ``rows`` rows."""
        if self.first is None:
            return max(1, math.ceil(rows / self.size))
        return 1 + math.ceil(max(0, rows - self.first) / self.size)

    def budget(self, db: Backend) -> int:
        """The statement budget on ``db``: one statement per page (rows counted now)."""
        with db.Session() as session:
            return self.pages(session.scalar(_total()))


# ------------------------------------------------------------- walking while rows change


@dataclass
class WalkReport:
    """What a walk returned while rows were inserted or deleted between its pages."""

    strategy: str
    pages: int
    returned: int
    repeated: int  # extra copies of rows that existed before the walk
    skipped: int  # rows present for the whole walk that it never returned
    inserted: int
    inserted_seen: int
    finished: bool = True  # False: stopped at max_pages, before the last page
    ids: list[int] = field(default_factory=list, repr=False)

    def row(self) -> dict[str, Any]:
        """The report as a table row (without the ids)."""
        return {k: v for k, v in self.__dict__.items() if k != "ids"}


Change = Callable[[Page], list[tuple[Executable, Any]]]

_NEW_CAR = {
    "dealership_id": 1,
    "make": "Kia",
    "model": "Picanto",
    "year": 2025,
    "is_sold": False,
    "created_at": datetime(2025, 6, 1),
    "updated_at": datetime(2025, 6, 1),
}


def new_cars(count: int, price: int = 20_000) -> list[dict[str, Any]]:
    """``count`` new car rows (no id: the database assigns it), for bulk inserts."""
    return [{**_NEW_CAR, "price": price} for _ in range(count)]


def insert_before_and_after(page: Page) -> list[tuple[Executable, Any]]:
    """After each page, insert a car that sorts first by (price, id) and one that sorts last.

    Cars cost 4,000 to 79,900: price 1 lands before every cursor, 999,999 after it.
    """
    return [(insert(Car), new_cars(1, price=1) + new_cars(1, price=999_999))]


def delete_first_row(page: Page) -> list[tuple[Executable, Any]]:
    """After each page, delete the first row of that page (a row before the cursor)."""
    return [(delete(Car).where(Car.id == page.ids[0]), None)] if page.ids else []


def _label(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn)
    return doc.splitlines()[0].strip() if doc else fn.__name__


def walk_while_writing(
    db: Backend,
    page: Callable[[Session, Any, int], Any],
    size: int,
    change: Change,
    *,
    max_pages: int = 10_000,
) -> WalkReport:
    """Walk every page of ``page``, running ``change(page)``'s statements between pages.

    Everything happens in one transaction that is rolled back, so ``db`` is left as it was.
    A walk that reaches ``max_pages`` stops there and reports ``finished=False`` (with a
    page size of 1, rows inserted after the cursor arrive as fast as they are read).
    """
    with db.Session() as session, session.begin():
        ids = select(Car.id)
        before = set(session.connection().scalars(ids))  # Core: no ORM work for 50,000 ids
        walker = _Walker(size, None, max_pages)
        finished = False
        while True:
            result = Page(*page(session, walker.cursor, size))
            if not walker.take(result):
                finished = result.next_cursor is None
                break
            for stmt, params in change(result):
                session.execute(stmt, params)
        after = set(session.connection().scalars(ids))
        session.rollback()
    counts = Counter(walker.ids)
    inserted = after - before
    return WalkReport(
        strategy=_label(page),
        pages=walker.pages,
        returned=len(walker.ids),
        repeated=sum(n - 1 for i, n in counts.items() if n > 1 and i in before),
        skipped=len((before & after) - set(counts)),
        inserted=len(inserted),
        inserted_seen=len(inserted & set(counts)),
        finished=finished,
        ids=walker.ids,
    )


def compare_walks(
    db: Backend,
    pages: Sequence[Callable[[Session, Any, int], Any]],
    size: int,
    changes: Sequence[Change],
    *,
    max_pages: int = 10_000,
) -> pd.DataFrame:
    """One :func:`walk_while_writing` per change and page function: a table of reports."""
    rows = []
    for change in changes:
        for page in pages:
            report = walk_while_writing(db, page, size, change, max_pages=max_pages)
            rows.append({"backend": db.name, "change": change.__name__, **report.row()})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------- scratch copy


def _car_rows(scale: Scale, dealerships: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """The scale's dealership and car rows (of the first ``dealerships`` only, if given)."""
    keep = dealerships if dealerships is not None else scale.dealerships
    rows: dict[str, list[dict[str, Any]]] = {"dealerships": [], "cars": []}
    for name, chunk in generate(scale):
        if name == "dealerships":
            rows[name].extend(row for row in chunk if row["id"] <= keep)
        elif name == "cars":
            rows[name].extend(row for row in chunk if row["dealership_id"] <= keep)
    return rows


def fill_cars(
    db: Backend,
    scale: Scale,
    *,
    index: bool = True,
    dealerships: int | None = None,
    rows: dict[str, list[dict[str, Any]]] | None = None,
) -> Backend:
    """Load the scale's dealerships and cars into ``db`` (empty tables), then ANALYZE.

    Bulk Core inserts (``conn.execute(insert(table), rows)``) of the same deterministic rows
    as the shared dataset (only the first ``dealerships``, if given); with ``index``, also
    ``CREATE INDEX ix_cars_price_id ON cars (price, id)``, built on a private Table so the
    course's models are untouched.
    """
    rows = rows if rows is not None else _car_rows(scale, dealerships)
    engine = db.sync_engine
    with engine.begin() as conn:
        conn.execute(insert(Dealership), rows["dealerships"])
        conn.execute(insert(Car), rows["cars"])
        if index:
            shadow = Table("cars", MetaData(), Column("price", Integer), Column("id", Integer))
            Index(PRICE_INDEX, shadow.c.price, shadow.c.id).create(conn)
        if engine.dialect.name == "postgresql":
            largest = select(func.coalesce(func.max(Car.id), 0) + 1).scalar_subquery()
            sequence = func.pg_get_serial_sequence("cars", "id")
            conn.execute(select(func.setval(sequence, largest, False)))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")
    return db


def cars_scratch(
    course: Course, name: str = "pagination", *, dealerships: int | None = None
) -> Course:
    """``course.scratch(name)`` holding the same cars, plus the ``(price, id)`` index.

    ``dealerships=k`` keeps only the cars of the first k dealerships (a smaller copy).
    Idempotent: every call starts from empty tables and fills them again.
    """
    scratch = course.scratch(name)
    rows = _car_rows(course.scale, dealerships)
    for db in scratch.backends:
        fill_cars(db, course.scale, rows=rows)
    return scratch


# ---------------------------------------------------------------- cursors and estimates


def keyset_cursor(session: Session, page_number: int, size: int = SIZE, by: str = "id") -> Any:
    """The cursor a client holds when it asks for page ``page_number`` (None for page 1).

    Found with an OFFSET query, once and outside any timing: the key of the last row of the
    previous page, ``id`` or ``(price, id)`` depending on ``by``.
    """
    if page_number <= 1:
        return None
    offset = (page_number - 1) * size - 1
    if by == "id":
        return session.scalar(select(Car.id).order_by(Car.id).offset(offset).limit(1))
    if by == "price":
        row = session.execute(
            select(Car.price, Car.id).order_by(Car.price, Car.id).offset(offset).limit(1)
        ).one()
        return (row.price, row.id)
    raise ValueError(f"by must be 'id' or 'price', not {by!r}")


def keyset_cursors(
    backends: Sequence[Backend], page_numbers: Sequence[int], size: int = SIZE, by: str = "id"
) -> dict[tuple[str, int], Any]:
    """:func:`keyset_cursor` for each backend and page: ``{(backend name, page): cursor}``."""
    cursors = {}
    for db in backends:
        with db.Session() as session:
            for number in page_numbers:
                cursors[db.name, number] = keyset_cursor(session, number, size, by)
    return cursors


def estimate_statement(dialect: str, table_name: str = "cars") -> Select:
    """The planner's row-count estimate for ``table_name``, as a select with bound parameters.

    PostgreSQL: ``pg_class.reltuples`` (set by ANALYZE and VACUUM). SQLite: the first
    number of ``sqlite_stat1.stat`` (rows, as of the last ANALYZE).

    >>> estimate_statement("postgresql").compile().params
    {'to_regclass_1': 'cars'}
    """
    if dialect == "postgresql":
        pg_class = table("pg_class", column("oid"), column("reltuples"))
        return select(pg_class.c.reltuples).where(pg_class.c.oid == func.to_regclass(table_name))
    if dialect == "sqlite":
        stat1 = table("sqlite_stat1", column("tbl"), column("stat"))
        return select(stat1.c.stat).where(stat1.c.tbl == table_name).limit(1)
    raise ValueError(f"no row estimate for {dialect}")


def estimate_value(raw: Any) -> float:
    """The number in an :func:`estimate_statement` result.

    >>> estimate_value("50000 66 1"), estimate_value(50000.0)
    (50000.0, 50000.0)
    """
    return float(str(raw).split()[0]) if raw is not None else float("nan")


# --------------------------------------------------------------------------- display


def plans_side_by_side(plans: dict[str, Plan]) -> Styler:
    """Plans as the columns of one table, line by line (``{'deep OFFSET': p1, 'keyset': p2}``).

    >>> plan = Plan("sqlite", ["SCAN cars"], False)
    >>> plans_side_by_side({"a": plan, "b": plan}).data.columns.tolist()
    ['a', 'b']
    """
    longest = max(len(plan.lines) for plan in plans.values())
    frame = pd.DataFrame(
        {title: plan.lines + [""] * (longest - len(plan.lines)) for title, plan in plans.items()}
    )
    return frame.style.set_properties(
        **{"text-align": "left", "white-space": "pre", "font-family": "monospace"}
    ).hide(axis="index")


_ACTUAL_ROWS = re.compile(r"actual time=\S+ rows=(\d+) loops=(\d+)")
_REMOVED = re.compile(r"^\s*Rows Removed by Filter: (\d+)")


def rows_scanned(plan: Plan) -> int:
    """Rows the scan nodes of a PostgreSQL ``EXPLAIN ANALYZE`` plan produced (rows x loops).

    SQLite's ``EXPLAIN QUERY PLAN`` has no row counts: use ``plan.full_scans()`` there.
    """
    if not plan.analyzed:
        raise ValueError("rows_scanned needs an analyzed PostgreSQL plan (EXPLAIN ANALYZE)")
    total = 0
    for line in plan.lines:
        if " Scan " in f" {line.strip()} " and (found := _ACTUAL_ROWS.search(line)):
            total += int(found.group(1)) * int(found.group(2))
    return total


# ------------------------------------------------------------------ the exercise timing


def deep_page_strategies(
    page: Callable[..., Any], depth: int, size: int = SIZE
) -> list[Callable[[Backend, int], Any]]:
    """Two strategies ``fn(backend, n)`` for ``cl.acompare``, ``n`` being the page size:
    OFFSET/LIMIT at page ``depth``, and ``page`` given the cursor of that page (looked up
    once beforehand, not timed). ``page`` may be sync or ``async def``.
    """
    cursors: dict[str, Any] = {}

    def cursor_for(db: Backend, n: int) -> Any:
        if (db.database, n) not in cursors:
            with db.Session() as session:
                cursors[db.database, n] = keyset_cursor(session, depth, n)
        return cursors[db.database, n]

    async def offset_at_depth(db: Backend, n: int) -> Page:
        """OFFSET/LIMIT"""
        async with db.AsyncSession() as session:
            return await aoffset_page(session, (depth - 1) * n, n)

    async def your_page(db: Backend, n: int) -> Any:
        """your page function"""
        cursor = cursor_for(db, n)
        if inspect.iscoroutinefunction(page):
            async with db.AsyncSession() as session:
                return await page(session, cursor, n)
        with db.Session() as session:
            return page(session, cursor, n)

    return [offset_at_depth, your_page]


# ------------------------------------------------------------------ depths from the data


TIMING_ROWS = 10_000
"""Below this many cars PostgreSQL may rightly scan and sort rather than use an index."""


def page_count(rows: int, size: int = SIZE) -> int:
    """How many pages of ``size`` hold ``rows`` rows (at least one, possibly empty).

    >>> page_count(50_000), page_count(60), page_count(61), page_count(0)
    (2500, 3, 4, 1)
    """
    return max(1, math.ceil(rows / size))


def page_depths(pages: int) -> list[int]:
    """Page numbers from 1 to ``pages`` (the last): the powers of 10 below it, and itself.

    >>> page_depths(2500), page_depths(25_000)
    ([1, 10, 100, 1000, 2500], [1, 10, 100, 1000, 10000, 25000])
    >>> page_depths(3), page_depths(1)
    ([1, 3], [1])
    """
    return sorted({*(10**e for e in range(9) if 10**e < pages), pages})


def last_page_cursor(session: Session, size: int = SIZE) -> int:
    """The cursor of a full last page: the id with exactly ``size`` cars after it."""
    stmt = select(Car.id).order_by(Car.id.desc()).offset(size).limit(1)
    found = session.scalar(stmt)
    if found is None:
        raise ValueError(f"fewer than {size + 1} cars: there is no full last page")
    return found


# ----------------------------------------------------------------------- rows stepped


@contextmanager
def _step_counter(conn: Any) -> Iterator[list[int]]:
    """Register ``course_step(x)`` on a sqlite3 connection: it counts its calls, returns 1."""
    calls = [0]

    def step(_value: Any) -> int:
        calls[0] += 1
        return 1

    raw = conn.connection.driver_connection
    raw.create_function("course_step", 1, step)
    try:
        yield calls
    finally:
        raw.create_function("course_step", 1, None)  # unregister


def rows_stepped(db: Backend, stmt: Select) -> int:
    """Rows the engine steps through to answer ``stmt`` (a select from ``cars``).

    SQLite: the statement runs with ``AND course_step(cars.id)`` added to its WHERE, a
    function registered on the sqlite3 connection that counts each call: SQLite calls it
    once for each row it visits before OFFSET and LIMIT are applied. PostgreSQL: the
    ``actual rows`` of the scan nodes in ``EXPLAIN ANALYZE`` (:func:`rows_scanned`), plus
    the rows their filters removed (``Rows Removed by Filter``): every row a scan visited.
    """
    if db.name == "sqlite":
        with db.sync_engine.connect() as conn, _step_counter(conn) as calls:
            conn.execute(stmt.where(func.course_step(Car.id) == 1)).all()
        return calls[0]
    plan = explain(db, stmt)
    removed = sum(int(found.group(1)) for line in plan.lines if (found := _REMOVED.search(line)))
    return rows_scanned(plan) + removed


# ------------------------------------------------------------------ the library: sqlakeyset


def _library_statement() -> Select:
    return select(Car.id).order_by(Car.id)


def _library_ids(page: Any, size: int) -> Page:
    ids = [row.id for row in page]
    paging = page.paging
    return Page(ids, paging.next[0][0] if paging.has_next else None)


def library_page(session: Session, cursor: int | None, size: int = SIZE) -> Page:
    """sqlakeyset.select_page by id"""
    after = (cursor,) if cursor is not None else None
    page = sqlakeyset.select_page(session, _library_statement(), per_page=size, after=after)
    return _library_ids(page, size)


async def alibrary_page(session: AsyncSession, cursor: int | None, size: int = SIZE) -> Page:
    """sqlakeyset.asyncio.select_page by id"""
    after = (cursor,) if cursor is not None else None
    page = await sqlakeyset.asyncio.select_page(
        session, _library_statement(), per_page=size, after=after
    )
    return _library_ids(page, size)


def library_statement(db: Backend, cursor: int | None, size: int = SIZE) -> Select:
    """The statement ``sqlakeyset.select_page`` sends for the page after ``cursor`` by id
    (built by sqlakeyset's own ``prepare_paging``), e.g. for :func:`rows_stepped`."""
    place = (cursor,) if cursor is not None else None
    stmt = select(*SHOWN).order_by(Car.id)
    prepared = sqlakeyset.paging.prepare_paging(
        stmt, size, place, False, False, db.sync_engine.dialect
    )
    return prepared.select


def library_price_page(session: Session, cursor: tuple[int, int] | None, size: int = SIZE) -> Page:
    """sqlakeyset.select_page by (price, id)"""
    stmt = select(*SHOWN).order_by(Car.price, Car.id)
    page = sqlakeyset.select_page(session, stmt, per_page=size, after=cursor)
    ids = [row.id for row in page]
    return Page(ids, page.paging.next[0] if page.paging.has_next else None)


# ------------------------------------------------------------------ estimates, refreshed


# ------------------------------------------------------------------------ the exercise check


def add_car_zero(db: Backend) -> None:
    """Add the imported car with id 0 (idempotent): the check needs a cursor of 0."""
    when = datetime(2024, 1, 1)
    with db.Session.begin() as session:
        if session.get(Car, 0) is None:
            session.add(
                Car(
                    id=0,
                    dealership_id=1,
                    make="Fiat",
                    model="Panda",
                    year=2009,
                    price=3_900,
                    created_at=when,
                    updated_at=when,
                )
            )


def _fitting_size(rows_after_first: int, most: int = 250) -> int:
    """A page size that divides the rows after the first request evenly (a full last page),
    with at least three pages where possible.

    >>> _fitting_size(50_000), _fitting_size(60), _fitting_size(7), _fitting_size(0)
    (250, 20, 1, 1)
    """
    limit = max(1, min(most, rows_after_first // 3))
    return next(d for d in range(limit, 0, -1) if rows_after_first % d == 0)


GAPS = (2, 3, 5, 8, 13)
"""Car ids :func:`prepare_check_data` deletes: real ids have gaps (deleted rows)."""

PROBE_SIZE = 3
"""The check asks ``page(session, 0, PROBE_SIZE)`` directly: cursor 0 must not return car 0."""


def prepare_check_data(db: Backend) -> None:
    """Make ``db`` (a scratch copy) ready for the check: car 0 added, the cars in :data:`GAPS`
    deleted (idempotent), so a page function that does arithmetic on ids fails."""
    add_car_zero(db)
    with db.Session.begin() as session:
        session.execute(delete(Car).where(Car.id.in_(GAPS)))


def _top_level(sql: str, word: str) -> list[int]:
    """Positions of ``word`` (e.g. 'ORDER BY') outside any parentheses in ``sql``."""
    found, depth = [], 0
    pattern = re.compile(r"\(|\)|\b" + word.replace(" ", r"\s+") + r"\b", re.IGNORECASE)
    for match in pattern.finditer(sql):
        text = match.group(0)
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
        elif depth == 0:
            found.append(match.start())
    return found


def _bound(sql: str, params: Any, start: int, token: str) -> Any:
    """The value of ``token`` (a literal or a placeholder at ``start`` in ``sql``), or None."""
    token = token.split("::")[0].rstrip(";,)")
    if token.isdigit():
        return int(token)
    if token == "?" and isinstance(params, tuple | list):
        index = sql.count("?", 0, start)
        return params[index] if index < len(params) else None
    if (named := re.fullmatch(r"%\((\w+)\)s", token)) and isinstance(params, dict):
        return params.get(named.group(1))
    if (numbered := re.fullmatch(r"\$(\d+)", token)) and isinstance(params, tuple | list):
        return params[int(numbered.group(1)) - 1]
    return None


_OFFSET = re.compile(r"\bOFFSET\s+(\S+)", re.IGNORECASE)
_LIMIT_COMMA = re.compile(r"\bLIMIT\s+[^\s,]+\s*,", re.IGNORECASE)


def _uses_offset(sql: str, params: Any) -> bool:
    """Whether a statement skips rows with OFFSET (an OFFSET bound to 0 does not), or with
    SQLite's ``LIMIT offset, count`` (an OFFSET without the keyword)."""
    if _LIMIT_COMMA.search(sql):
        return True
    for found in _OFFSET.finditer(sql):
        value = _bound(sql, params, found.start(1), found.group(1))
        if value != 0:
            return True
    return False


def _order_key(sql: str) -> tuple[bool, bool]:
    """(ends with an id, descending) for the top-level ORDER BY of ``sql``.

    The last ORDER BY term must be an ``id`` column (``cars.id``, ``cars_1.id``, ``id``) or
    a label of one (``cars.id AS car_id ... ORDER BY car_id``).
    """
    positions = _top_level(sql, "ORDER BY")
    if not positions:
        return False, False
    clause = re.split(r"\b(?:LIMIT|OFFSET|FETCH)\b", sql[positions[-1] + 8 :], flags=re.I)[0]
    terms, depth, current = [], 0, ""
    for char in clause:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    words = (current or (terms[-1] if terms else "")).split()
    if not words:
        return False, False
    name = words[0].strip('"').lower()
    descending = len(words) > 1 and words[1].upper() == "DESC"
    if name == "id" or name.endswith(".id") or name.endswith('."id"'):
        return True, descending
    label = re.search(r"(\S+)\s+AS\s+\"?" + re.escape(name) + r"\"?\b", sql, re.IGNORECASE)
    return bool(label and label.group(1).lower().rstrip(",").endswith(".id")), descending


def _ordered_by_id(sql: str) -> bool:
    """Whether the top-level ORDER BY ends with the unique key (an id, or a label of one)."""
    return _order_key(sql)[0]


@contextmanager
def _sql_with_values(db: Backend) -> Iterator[list[tuple[str, Any]]]:
    """Record each statement's SQL and its bind values on both engines of ``db``."""
    seen: list[tuple[str, Any]] = []

    def after(_conn: Any, _cur: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        seen.append((sql, params))

    with listening(db, [("after_cursor_execute", after)]):
        yield seen


@dataclass
class _Call:
    """One request the check made: what it asked, what came back, the statements it ran."""

    cursor: Any
    size: int
    ids: list[Any]
    next_cursor: Any
    statements: list[tuple[str, Any]]
    fetched: list[list[Any]] = field(default_factory=list)  # first column, up to size + 2 rows


@dataclass(frozen=True)
class _Setup:
    """What a check of ``db`` expects, computed from the data before the attempt runs."""

    expected: list[int]
    size: int  # walk A: a first request of 1 row, then this size (a full last page)
    other: int  # walk B: three pages of another size (a hard-coded size fails one walk)

    @classmethod
    def of(cls, db: Backend) -> _Setup:
        with db.Session() as session:
            expected = PageWalk.reference(session)
        if not expected or expected[0] != 0 or set(GAPS) & set(expected):
            raise ValueError(
                "the check needs car 0 and gaps in the ids: run lesson.prepare_check_data(db) first"
            )
        size = _fitting_size(len(expected) - 1)
        return cls(expected, size, size // 2 if size >= 4 else size + 1)

    @property
    def pages(self) -> int:
        return PageWalk(size=self.size, first=1).pages(len(self.expected))

    @property
    def budget(self) -> int:
        """One statement per request: walk A, three pages of walk B, the cursor-0 probe."""
        return self.pages + 3 + 1

    def answer(self) -> list[list[int]]:
        return [self.expected, self.expected[: 3 * self.other], self.expected[1 : 1 + PROBE_SIZE]]

    def page_after(self, cursor: Any, size: int) -> tuple[list[int], bool]:
        """The right ids after ``cursor`` (an id, or None) and whether more cars follow."""
        after = self.expected if cursor is None else [i for i in self.expected if i > cursor]
        return after[:size], len(after) > size

    def script(self) -> Any:
        """The requests, as a generator: it yields (cursor, size) and is sent each result."""
        answers = []
        for size, first, most in ((self.size, 1, self.pages + 1), (self.other, None, 3)):
            walker = _Walker(size, first, most)
            while walker.take((yield walker.cursor, walker.next_size())):
                pass
            answers.append(walker.ids)
        probe = yield 0, PROBE_SIZE
        return [*answers, list(probe[0])]


def _fetch_sync(db: Backend, calls: list[_Call]) -> None:
    """Run each recorded SELECT again (sync driver) and keep what it fetches."""
    with db.sync_engine.connect() as conn:
        for call in calls:
            for sql, params in call.statements:
                if _is_select(sql):
                    try:
                        rows = _first_column(conn.exec_driver_sql(sql, params), call.size)
                    except Exception:  # a statement that cannot run again: judge it by the rest
                        conn.rollback()
                        rows = []
                    call.fetched.append(rows)


async def _fetch_async(db: Backend, calls: list[_Call]) -> None:
    """Like :func:`_fetch_sync` on the async driver (its SQL and bind values)."""
    async with db.engine.connect() as conn:
        for call in calls:
            for sql, params in call.statements:
                if _is_select(sql):
                    try:
                        result = await conn.exec_driver_sql(sql, params)
                        rows = _first_column(result, call.size)
                    except Exception:  # a statement that cannot run again: judge it by the rest
                        await conn.rollback()
                        rows = []
                    call.fetched.append(rows)


def _is_select(sql: str) -> bool:
    return sql.lstrip().upper().startswith(("SELECT", "WITH"))


def _first_column(result: Any, size: int) -> list[Any]:
    """The first column of up to ``size + 2`` rows: enough to see more than size + 1 came."""
    rows = result.fetchmany(size + 2)
    result.close()
    return [row[0] for row in rows]


def _what(sql: str) -> str:
    low = sql.lower()
    for needle, name in (("count(", "count(*)"), ("max(", "max(id)"), ("exists", "EXISTS")):
        if needle in low:
            return name
    return "another SELECT"


def _diagnose(setup: _Setup, calls: list[_Call]) -> tuple[str, str] | None:
    """(status, why) for the first mistake the notebook warns about, or None."""
    selects = [
        (sql, params) for call in calls for sql, params in call.statements if _is_select(sql)
    ]
    if any(_uses_offset(sql, params) for sql, params in selects):
        return "uses OFFSET", (
            "It pages with OFFSET (or SQLite's LIMIT offset, count): page k makes the database "
            "step through every row before it. Filter on the cursor instead: "
            "WHERE cars.id > :cursor."
        )
    for number, call in enumerate(calls, 1):
        if len(call.ids) > call.size:
            return "wrong result", (
                f"Request {number} asked for {call.size} ids and got {len(call.ids)}: return "
                "only the first size rows. The extra row (size + 1) only says whether a next "
                "page exists."
            )
        too_many = [rows for rows in call.fetched if len(rows) > call.size + 1]
        if too_many:
            return "fetches too much", (
                f"Request {number} (a page of {call.size}) fetched more than {call.size + 1} rows "
                "in one statement: filter and limit in SQL (WHERE cars.id > :cursor ... "
                "LIMIT size + 1), never load more ids and slice them in Python."
            )
    page_sql = [
        sql
        for call in calls
        if call.ids
        for (sql, _), rows in zip(
            [s for s in call.statements if _is_select(s[0])], call.fetched, strict=True
        )
        if set(call.ids) <= set(rows)
    ]
    for sql in page_sql:
        by_id, descending = _order_key(sql)
        if not by_id:
            return "unstable order", (
                "A page statement is not ordered by the unique key (ORDER BY ... cars.id): "
                "without a total order the database may return rows in any order, so pages can "
                "overlap or skip rows. End the ORDER BY with the id."
            )
        if descending:
            return "wrong result", (
                "The pages come in descending id order (ORDER BY ... DESC): the exercise pages "
                "from the smallest id up (ascending, with WHERE cars.id > :cursor)."
            )
    repeats_cursor = any(c.cursor not in (None, 0) and c.cursor in c.ids for c in calls)
    for number, call in enumerate(calls, 1):
        expected, more = setup.page_after(call.cursor, call.size)
        if call.ids != expected:
            if call.cursor is not None and call.cursor in call.ids:
                if repeats_cursor:
                    return "wrong result", (
                        f"The page after cursor {call.cursor} began with car {call.cursor} "
                        "itself: `>=` repeats the last row of the previous page. "
                        "Use WHERE cars.id > :cursor."
                    )
                return "wrong result", (
                    "After cursor 0 the next page began again at the first row (car 0 came "
                    "back): `if cursor:` treats 0 as no cursor. Test `cursor is not None`."
                )
            if call.ids == expected[: len(call.ids)]:
                return "wrong result", (
                    f"After cursor {call.cursor}, a page of {call.size} held {len(call.ids)} "
                    "ids, though more cars follow: ids have gaps (deleted rows), so a range "
                    "computed from the cursor (id <= cursor + size) comes up short. "
                    "Use WHERE cars.id > :cursor ORDER BY cars.id LIMIT size + 1."
                )
            return "wrong result", (
                f"After cursor {call.cursor}, a page of {call.size} returned "
                f"{call.ids[:5]}... instead of {expected[:5]}...: the page must be the "
                f"next {call.size} ids after the cursor, in id order."
            )
        if number == len(calls):
            continue  # the cursor-0 probe: only its ids are judged
        if call.next_cursor is None and more:
            return "wrong result", (
                f"The page after cursor {call.cursor} returned no next cursor, though more "
                "cars follow: fetch size + 1 rows and hand out a cursor when the extra row came."
            )
        if call.next_cursor is not None and not more:
            return "over budget", (
                "Right rows, but the last page returned a next cursor, so the walk asked for "
                "an empty page: fetch size + 1 rows and return None when no extra row came."
            )
        if call.next_cursor is not None and call.next_cursor != call.ids[-1]:
            return "wrong cursor", (
                f"The next cursor after a page ending with car {call.ids[-1]} was "
                f"{call.next_cursor!r}: it must be the last id on the page (not the extra "
                "row's id, nor a position: positions move when rows are inserted or deleted)."
            )
    crowded = [(n, call) for n, call in enumerate(calls, 1) if len(call.statements) > 1]
    if crowded:
        number, call = crowded[0]
        extras = sorted({_what(sql) for sql, _ in call.statements if not _is_page(sql)}) or [
            "another SELECT"
        ]
        return "over budget", (
            f"Right rows, but {len(crowded)} of {len(calls)} page requests ran more than one "
            f"statement (request {number}: {len(call.statements)}, with {', '.join(extras)}). "
            "One page, one statement: the extra row of LIMIT size + 1 says whether a next page "
            "exists, so no count(*), max(id) or EXISTS is needed. If the interface shows a "
            "total, count once outside the page function."
        )
    return None


def _is_page(sql: str) -> bool:
    return _what(sql) == "another SELECT"


def _verdict(setup: _Setup, result: CheckResult, calls: list[_Call]) -> CheckResult:
    """Explain why an attempt fails, in terms of the mistakes the notebook warns about."""
    if result.status == "not attempted":
        return result
    found = _diagnose(setup, calls)
    if found is not None:
        status, why = found
        return replace(result, status=status, message=f"✗ {why}")
    if result.status == "wrong result":
        return replace(result, message="✗ Wrong result: the walk did not return every car once.")
    return result


def _record(calls: list[_Call], request: tuple[Any, int], result: Any, ran: list[Any]) -> None:
    ids, next_cursor = result
    calls.append(_Call(request[0], request[1], list(ids), next_cursor, list(ran)))


def check_page(page: Callable[[Session, Any, int], Any], db: Backend) -> CheckResult:
    """The exercise check for a sync page function ``page(session, cursor, size)`` on ``db``.

    Requests: a walk over every page (a first request of one row, so the second carries
    cursor 0; then a page size that fills the last page exactly), three pages of another
    size, and ``page(session, 0, 3)``. Each request must return the right ids (at most
    ``size``) and the last id as the next cursor (None after the last page), in one
    statement that fetches at most ``size + 1`` rows, ordered by the id, without OFFSET,
    and no ``Car`` entities. ``db`` must be ready (:func:`prepare_check_data`): car 0, and
    gaps in the ids.
    """
    setup = _Setup.of(db)
    calls: list[_Call] = []

    def attempt(session: Session) -> Any:
        script = setup.script()
        request = next(script)
        while True:
            start = len(seen)
            result = page(session, *request)
            _record(calls, request, result, seen[start:])
            try:
                request = script.send(result)
            except StopIteration as stop:
                return stop.value

    with _sql_with_values(db) as seen:
        result = check(
            attempt, db, expected=setup.answer(), budget=setup.budget, forbid_entities=(Car,)
        )
    _fetch_sync(db, calls)
    return _verdict(setup, result, calls)


async def acheck_page(page: Callable[..., Any], db: Backend) -> CheckResult:
    """Like :func:`check_page` for an ``async def page(session, cursor, size)``."""
    setup = _Setup.of(db)
    calls: list[_Call] = []

    async def attempt(session: AsyncSession) -> Any:
        script = setup.script()
        request = next(script)
        while True:
            start = len(seen)
            result = await page(session, *request)
            _record(calls, request, result, seen[start:])
            try:
                request = script.send(result)
            except StopIteration as stop:
                return stop.value

    with _sql_with_values(db) as seen:
        result = await acheck(
            attempt, db, expected=setup.answer(), budget=setup.budget, forbid_entities=(Car,)
        )
    await _fetch_async(db, calls)
    return _verdict(setup, result, calls)
