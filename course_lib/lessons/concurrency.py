"""Async patterns: sessions per task, gather against sequential, loop lag, timeouts,
cancellation, and the dashboards exercise (notebook 10).

The notebook's independent query is one dealership's dashboard, one statement:

>>> from course_lib.data import dataset
>>> db = dataset("sqlite", "tiny")
>>> with db.Session() as session:
...     dashboard_rows(session, [1])[0].dealership_id
1

Machinery for notebook 10:

- :func:`fill_lots` copies the dealerships and the first :data:`LOT` cars of each into a
  scratch copy, so a dashboard is cheap at every scale and the timings show the pool and
  the (simulated) network, not a table scan;
- :func:`pooled` gives a :class:`~course_lib.backends.Backend` its own engines: a fixed
  pool (``pool_size``, no overflow), an ``application_name`` on PostgreSQL (so the notebook
  only ever looks at, or cancels, its own server processes), and two helper SQL functions
  on SQLite (:data:`NAP`, :data:`WHO`);
- :func:`loop_lag` runs a ticker task and reports how late it woke (the event loop's lag);
- :func:`outcome` runs work and records the error chain, the time, and what the pool did;
- :func:`acheck_dashboards` is the exercise check.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import statistics
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, NamedTuple

import pandas as pd
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    Select,
    Table,
    case,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError, IllegalStateChangeError, InvalidRequestError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from sqlalchemy.util import greenlet_spawn

from ..backends import Backend
from ..course import Course
from ..exercises import CheckResult, acheck
from ..measure import simulate_round_trip
from ..models import Car, Dealership

__all__ = [
    "LOT",
    "NAP",
    "NAP_S",
    "PAUSE_S",
    "POOL",
    "SIMULATED_MS",
    "SLEEP_S",
    "SNAPSHOTS",
    "TIMEOUT_S",
    "WHO",
    "BlockingSleep",
    "Dashboard",
    "LoopLag",
    "Nap",
    "Outcome",
    "PeakConnections",
    "Pooled",
    "acheck_dashboards",
    "activity",
    "app_name",
    "cancel_backend",
    "cancel_midway",
    "checked_out",
    "dashboard",
    "dashboard_rows",
    "dashboard_statement",
    "dealership_ids",
    "dispose",
    "error_chain",
    "fill_lots",
    "ids_for",
    "lags",
    "last_nap",
    "legacy_lot_report",
    "loop_lag",
    "nap",
    "new_cars",
    "outcome",
    "peak_connections",
    "pooled",
    "running_queries",
    "stopped",
    "task_counts",
    "until_running",
    "warm",
    "who",
]

#: Connections in the pooled engines of the gather section (``pool_size``, no overflow).
POOL = 4
#: The simulated round trip of the gather section, in ms.
SIMULATED_MS = 3.0
#: How long the blocking examples block (time.sleep, a sync driver call, a CPU loop), in s.
PAUSE_S = 0.1
#: The slow query of the timeout sections (``pg_sleep``), in s: far longer than the limit.
SLEEP_S = 3.0
#: The limit each timeout sets, in s.
TIMEOUT_S = 0.2
#: The slow statement on SQLite (:data:`NAP`), in s: it cannot be interrupted, so it is short.
NAP_S = 0.5
#: Cars per dealership in the scratch copy: a dashboard reads this many rows.
LOT = 20
#: SQLite helper function: ``course_nap(seconds)`` sleeps inside the statement, in the
#: driver's thread (SQLite's stand-in for PostgreSQL's ``pg_sleep``).
NAP = "course_nap"
#: SQLite helper function: ``course_thread()`` returns the id of the thread running the
#: statement: aiosqlite runs each connection in a thread of its own.
WHO = "course_thread"


# ------------------------------------------------------------------------ the dashboard


class Dashboard(NamedTuple):
    """One dealership's dashboard: its name, city, cars on the lot, unsold, and their value."""

    dealership_id: int
    name: str
    city: str
    cars: int
    unsold: int
    unsold_value: int


def dashboard_statement(ids: Sequence[int]) -> Select:
    """The dashboards of ``ids`` (one row each, by id): one statement, whatever the count."""
    unsold = Car.is_sold.is_(False)
    return (
        select(
            Dealership.id,
            Dealership.name,
            Dealership.city,
            func.count(Car.id),
            func.coalesce(func.sum(case((unsold, 1), else_=0)), 0),
            func.coalesce(func.sum(case((unsold, Car.price), else_=0)), 0),
        )
        .outerjoin(Car, Car.dealership_id == Dealership.id)
        .where(Dealership.id.in_(list(ids)))
        .group_by(Dealership.id, Dealership.name, Dealership.city)
        .order_by(Dealership.id)
    )


def _dashboard(row: Any) -> Dashboard:
    return Dashboard(*(int(v) if isinstance(v, int) else v for v in row))


async def dashboard(session: AsyncSession, dealership_id: int) -> Dashboard:
    """One dealership's dashboard: one statement on ``session``."""
    row = (await session.execute(dashboard_statement([dealership_id]))).one()
    return _dashboard(row)


def dashboard_rows(session: Session, ids: Sequence[int]) -> list[Dashboard]:
    """The dashboards of ``ids`` in the order of ``ids`` (sync, one statement: the reference)."""
    found = {row[0]: _dashboard(row) for row in session.execute(dashboard_statement(ids))}
    return [found[i] for i in ids]


def dealership_ids(db: Backend) -> list[int]:
    """Every dealership id in ``db``, in order."""
    with db.Session() as session:
        return list(session.scalars(select(Dealership.id).order_by(Dealership.id)))


def ids_for(ids: Sequence[int], n: int) -> list[int]:
    """``n`` dealership ids, going round ``ids`` (more tasks than dealerships repeat them)."""
    return [ids[i % len(ids)] for i in range(n)]


def task_counts(pool: int = POOL, most: int = 8) -> list[int]:
    """Task counts for the gather chart: 1, 2, 4, ... up to ``most`` times the pool size."""
    counts, n = [], 1
    while n <= pool * most:
        counts.append(n)
        n *= 2
    if pool not in counts:
        counts = sorted({*counts, pool})
    return counts


def fill_lots(scratch: Course, course: Course, lot: int = LOT) -> Course:
    """Copy every dealership, and the first ``lot`` cars of each, into ``scratch``'s empty tables.

    The cars are read from ``course`` (the shared dataset, never written) in one statement
    per backend (``row_number()`` over each dealership's cars by id) and inserted without
    their ids, so each backend numbers them 1, 2, ... in the same order.
    """
    rank = func.row_number().over(partition_by=Car.dealership_id, order_by=Car.id)
    columns = ("dealership_id", "make", "model", "year", "price", "is_sold", "created_at")
    numbered = select(*(getattr(Car, c) for c in columns), Car.updated_at, rank.label("rank"))
    first = numbered.subquery()
    wanted = select(*(first.c[c] for c in (*columns, "updated_at"))).where(first.c.rank <= lot)
    wanted = wanted.order_by(first.c.dealership_id, first.c.rank)
    for db in scratch.backends:
        source = course[db.name]
        with source.Session() as session:
            dealers = [dict(r._mapping) for r in session.execute(select(*Dealership.__table__.c))]
            cars = [dict(r._mapping) for r in session.execute(wanted)]
        with db.sync_engine.begin() as conn:
            conn.execute(insert(Dealership), dealers)
            conn.execute(insert(Car), cars)
    return scratch


def new_cars(count: int, dealership_id: int = 1, price: int = 20_000) -> list[dict[str, Any]]:
    """``count`` new car rows (no ids) for ``dealership_id``, for the write sections."""
    from datetime import datetime

    when = datetime(2026, 1, 1)
    return [
        {
            "dealership_id": dealership_id,
            "make": "Course",
            "model": f"Batch {i}",
            "year": 2026,
            "price": price,
            "is_sold": False,
            "created_at": when,
            "updated_at": when,
        }
        for i in range(count)
    ]


# ------------------------------------------------------------- run_sync: DDL and legacy

#: A table of the notebook's own, created with ``run_sync(SNAPSHOTS.create_all)``.
SNAPSHOTS = MetaData()
Table(
    "dashboard_snapshots",
    SNAPSHOTS,
    Column("id", Integer, primary_key=True),
    Column("dealership_id", ForeignKey(Dealership.__table__.c.id), nullable=False),
    Column("cars", Integer, nullable=False),
    Column("taken_at", DateTime, nullable=False),
)


def legacy_lot_report(session: Session, dealership_id: int) -> list[str]:
    """A legacy sync helper: the dealership's cars, read through a lazy load (``.cars``)."""
    dealership = session.get(Dealership, dealership_id)
    assert dealership is not None
    first = sorted(dealership.cars, key=lambda car: car.id)[:3]
    return [f"{car.year} {car.make} {car.model}" for car in first]


# --------------------------------------------------------------- engines of the lesson


def app_name(tag: str) -> str:
    """``course10_<tag>_p<pid>``: the ``application_name`` of this kernel's connections.

    PostgreSQL shows it in ``pg_stat_activity``, so the notebook finds (and may cancel) only
    the server processes it opened itself, on a server that others may share.
    """
    return f"course10_{tag}_p{os.getpid()}"[:63]


@dataclass
class Nap:
    """One :data:`NAP` call: the thread that ran it, and when it started and ended."""

    thread: int
    start: float
    end: float | None = None


_naps: list[Nap] = []


def _nap(seconds: float) -> int:
    """``course_nap(seconds)``: sleep in the driver's thread, as a slow statement would."""
    record = Nap(threading.get_ident(), time.perf_counter())
    _naps.append(record)
    time.sleep(seconds)
    record.end = time.perf_counter()
    return record.thread


def last_nap() -> Nap | None:
    """The most recent :data:`NAP` started in this process (None before any)."""
    return _naps[-1] if _naps else None


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.create_function(NAP, 1, _nap)
    dbapi_connection.create_function(WHO, 0, threading.get_ident)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")  # as the course's own engines do
    cursor.close()


class Pooled(Backend):
    """A copy of a :class:`Backend` with engines of its own (see :func:`pooled`)."""

    def __init__(
        self,
        db: Backend,
        size: int,
        tag: str,
        connect_args: dict[str, Any],
        pre_ping: bool = False,
    ):
        super().__init__(db.name, db.sync_url, db.async_url, db.source, db.database, db.pgdata)
        self.size, self.tag, self.connect_args = size, tag, connect_args
        self.pre_ping = pre_ping
        self.application_name = app_name(tag) if db.name == "postgresql" else None

    def __repr__(self) -> str:
        return f"<Pooled {self.name} pool_size={self.size} database={self.database}>"

    def _async_args(self) -> dict[str, Any]:
        args = dict(self.connect_args)
        if self.application_name:
            settings = dict(args.pop("server_settings", {}))
            settings.setdefault("application_name", self.application_name)
            args["server_settings"] = settings
        return args

    @cached_property
    def engine(self) -> AsyncEngine:
        """The async engine: ``pool_size=size``, ``max_overflow=0``."""
        engine = create_async_engine(
            self.async_url,
            pool_size=self.size,
            max_overflow=0,
            pool_pre_ping=self.pre_ping,
            connect_args=self._async_args(),
        )
        if self.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
        return engine

    @cached_property
    def sync_engine(self) -> Engine:
        """The sync engine, with the same pool size and ``application_name``."""
        args: dict[str, Any] = {}
        if self.application_name:
            args["application_name"] = self.application_name
        engine = create_engine(
            self.sync_url, pool_size=self.size, max_overflow=0, connect_args=args
        )
        if self.name == "sqlite":
            event.listen(engine, "connect", _on_sqlite_connect)
        return engine


def pooled(
    db: Backend,
    size: int = POOL,
    *,
    tag: str = "pool",
    pre_ping: bool = False,
    **connect_args: Any,
) -> Pooled:
    """``db`` with engines of its own: a pool of ``size`` and no overflow, so at most ``size``
    connections at once (more tasks queue for one), ``application_name`` =
    :func:`app_name` on PostgreSQL, :data:`NAP` and :data:`WHO` on SQLite; ``pre_ping``
    sets the async engine's ``pool_pre_ping``. Extra ``connect_args`` go to the async
    driver (e.g. ``command_timeout=0.2`` for asyncpg).
    """
    return Pooled(db, size, tag, connect_args, pre_ping)


async def dispose(*dbs: Backend) -> None:
    """Close every pooled connection of these backends' engines."""
    for db in dbs:
        await db.dispose()


def checked_out(db: Backend) -> int:
    """Connections of ``db``'s async engine checked out of its pool right now."""
    return db.engine.pool.checkedout()  # type: ignore[attr-defined]


def nap(db: Backend, seconds: float) -> Select:
    """A statement that takes ``seconds``: ``pg_sleep`` on PostgreSQL, :data:`NAP` on SQLite."""
    if db.name == "postgresql":
        return select(func.pg_sleep(seconds))
    return select(getattr(func, NAP)(seconds))


def who(db: Backend) -> Select:
    """Which connection runs the statement: its server process id on PostgreSQL
    (``pg_backend_pid()``), on SQLite the id of aiosqlite's thread for that connection.
    """
    if db.name == "postgresql":
        return select(func.pg_backend_pid())
    return select(getattr(func, WHO)())


@dataclass
class PeakConnections:
    """Connections checked out at once, from the pool's ``checkout``/``checkin`` events."""

    now: int = 0
    peak: int = 0
    checkouts: int = 0


@contextmanager
def peak_connections(db: Backend) -> Iterator[PeakConnections]:
    """Track the most connections ``db``'s async engine had checked out at once, in the block."""
    seen = PeakConnections()
    pool = db.engine.sync_engine.pool

    def on_checkout(*_args: Any) -> None:
        seen.now += 1
        seen.checkouts += 1
        seen.peak = max(seen.peak, seen.now)

    def on_checkin(*_args: Any) -> None:
        seen.now -= 1

    event.listen(pool, "checkout", on_checkout)
    event.listen(pool, "checkin", on_checkin)
    try:
        yield seen
    finally:
        event.remove(pool, "checkout", on_checkout)
        event.remove(pool, "checkin", on_checkin)


# -------------------------------------------------------------------------- loop lag


@dataclass
class LoopLag:
    """How late a ticker task woke, each time, while a block ran (seconds)."""

    interval_s: float
    late_s: list[float] = field(default_factory=list)

    @property
    def max_ms(self) -> float:
        """The longest the event loop kept the ticker waiting beyond its interval (ms)."""
        return max(self.late_s, default=0.0) * 1000

    @property
    def ticks(self) -> int:
        """How many times the ticker woke."""
        return len(self.late_s)


@asynccontextmanager
async def loop_lag(interval_s: float = 0.002) -> AsyncIterator[LoopLag]:
    """Run a ticker task (``asyncio.sleep(interval_s)`` in a loop) while the block runs.

    Each wake-up records how late it came. A loop that is free wakes it within a
    millisecond or so; code that blocks the loop (``time.sleep``, a sync driver call, a CPU
    loop) keeps it waiting for as long as it blocks.
    """
    lag = LoopLag(interval_s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def tick() -> None:
        while not stop.is_set():
            due = loop.time() + interval_s
            await asyncio.sleep(interval_s)
            lag.late_s.append(max(0.0, loop.time() - due))

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)  # the ticker starts before the block
    try:
        yield lag
    finally:
        stop.set()
        await ticker


async def lags(
    works: Mapping[Any, Callable[[], Awaitable[Any]]],
    *,
    repeats: int = 3,
    interval_s: float = 0.002,
) -> dict[Any, dict[str, float]]:
    """Run each ``work()`` ``repeats`` times under :func:`loop_lag`: per key, the median
    longest stall (``max_lag_ms``) and the median duration of the work (``work_ms``).

    As the course's timings do, the garbage collector is run and frozen first, so that a
    full collection of the notebook's older objects does not land inside one run (it would
    stall the loop whatever the work); what each run leaves is collected before the next.
    """
    found: dict[Any, dict[str, float]] = {}
    gc.collect()
    gc.freeze()
    try:
        for key, work in works.items():
            stalls, spans = [], []
            for _ in range(repeats):
                gc.collect()  # cheap: only what the previous run left
                start = time.perf_counter()
                async with loop_lag(interval_s) as lag:
                    await work()
                spans.append((time.perf_counter() - start) * 1000)
                stalls.append(lag.max_ms)
            found[key] = {
                "max_lag_ms": statistics.median(stalls),
                "work_ms": statistics.median(spans),
            }
    finally:
        gc.unfreeze()
    return found


# ------------------------------------------------------------------ errors and timeouts


def error_chain(error: BaseException | None) -> list[str]:
    """The exception and what it wraps (``.orig``, then ``__cause__``), as qualified names.

    >>> error_chain(ValueError("x"))
    ['ValueError']
    """
    names: list[str] = []
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        kind = type(error)
        module = kind.__module__
        names.append(kind.__name__ if module == "builtins" else f"{module}.{kind.__qualname__}")
        error = getattr(error, "orig", None) or error.__cause__
    return names


@dataclass
class Outcome:
    """What happened when :func:`outcome` ran some work: its error, time and pool events."""

    label: str
    error: BaseException | None
    seconds: float
    events: dict[str, int]
    ended: float = 0.0  #: ``time.perf_counter()`` when the error (or the result) came back

    @property
    def chain(self) -> list[str]:
        """The error's chain of names (see :func:`error_chain`); empty when it succeeded."""
        return error_chain(self.error)

    @property
    def raised(self) -> str:
        """The error's class name, or "nothing"."""
        return type(self.error).__name__ if self.error is not None else "nothing"

    @property
    def message(self) -> str:
        """The first line of the innermost error's message (stable: no SQL, no timings)."""
        inner = self.error
        while inner is not None and (getattr(inner, "orig", None) or inner.__cause__):
            inner = getattr(inner, "orig", None) or inner.__cause__
        text_ = str(inner).strip().splitlines()[0] if inner is not None and str(inner) else ""
        return text_

    def row(self) -> dict[str, str]:
        """The deterministic facts, for a checked table: what it raised and what it wraps."""
        chain = self.chain
        return {
            "mechanism": self.label,
            "raised": chain[0] if chain else "nothing",
            "raised from": chain[-1] if len(chain) > 1 else "",
            "message": self.message,
            "connection afterwards": self.connection,
        }

    @property
    def connection(self) -> str:
        """What became of the connection: "invalidated" (closed) or "returned to the pool"."""
        if self.events.get("invalidate"):
            return "invalidated (closed)"
        if self.events.get("checkin"):
            return "returned to the pool"
        return "still checked out"


async def outcome(
    label: str, engine: AsyncEngine | Backend, work: Callable[[], Awaitable[Any]]
) -> Outcome:
    """Run ``work()``, catching any error (cancellation included); record what ``engine``'s
    pool did meanwhile (checkouts, checkins, invalidations).
    """
    engine = engine.engine if isinstance(engine, Backend) else engine
    pool = engine.sync_engine.pool
    events: dict[str, int] = {}

    def hook(name: str) -> Callable[..., None]:
        def seen(*_args: Any) -> None:
            events[name] = events.get(name, 0) + 1

        return seen

    hooks = [(name, hook(name)) for name in ("checkout", "checkin", "invalidate")]
    for name, fn in hooks:
        event.listen(pool, name, fn)
    start = time.perf_counter()
    error: BaseException | None = None
    try:
        await work()
    except (Exception, asyncio.CancelledError) as exc:
        error = exc
    finally:
        ended = time.perf_counter()
        for name, fn in hooks:
            event.remove(pool, name, fn)
    return Outcome(label, error, ended - start, events, ended)


# --------------------------------------------------------------- the server side (PG)


async def running_queries(monitor: Backend, application_name: str) -> pd.DataFrame:
    """This kernel's server processes named ``application_name``: pid, state, query.

    Read from ``pg_stat_activity`` through ``monitor`` (another connection: the course's
    own engine), filtered by the name, so other users of a shared server never show up.
    """
    stmt = text(
        "SELECT pid, state, left(query, 60) AS query FROM pg_stat_activity "
        "WHERE application_name = :name ORDER BY pid"
    )
    async with monitor.engine.connect() as conn:
        rows = (await conn.execute(stmt, {"name": application_name})).all()
    return pd.DataFrame(rows, columns=["pid", "state", "query"])


async def activity(monitor: Backend, application_name: str) -> list[str]:
    """The states of ``application_name``'s processes running ``pg_sleep`` (e.g. ["active"])."""
    frame = await running_queries(monitor, application_name)
    sleeping = frame[frame["query"].str.contains("pg_sleep", regex=False)]
    return list(sleeping["state"])


async def until_running(db: Backend, monitor: Backend | None = None, seconds: float = 10) -> int:
    """Wait until ``db`` runs a slow statement (:func:`nap`); return its pid (PG) or 0.

    On PostgreSQL, poll ``pg_stat_activity`` (through ``monitor``, another backend on the
    same server) for an active ``pg_sleep`` of ``db``'s ``application_name``; on SQLite,
    for a :data:`NAP` to be under way.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if db.name == "postgresql":
            name = getattr(db, "application_name", None)
            if not name or monitor is None:
                raise ValueError("on PostgreSQL: a pooled() backend and a monitor, please")
            frame = await running_queries(monitor, name)
            busy = frame[(frame["state"] == "active") & frame["query"].str.contains("pg_sleep")]
            if len(busy):
                return int(busy["pid"].iloc[0])
        elif _naps and _naps[-1].end is None:
            return 0
        await asyncio.sleep(0.01)
    raise TimeoutError("the slow statement did not start")


async def stopped(monitor: Backend, application_name: str, within: float = 2.0) -> bool:
    """Whether ``application_name``'s ``pg_sleep`` is gone from ``pg_stat_activity`` (or no
    longer active) within ``within`` seconds: a server process may take a moment to exit.
    """
    deadline = time.monotonic() + within
    while True:
        if "active" not in await activity(monitor, application_name):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)


async def cancel_backend(monitor: Backend, pid: int, application_name: str) -> bool:
    """``pg_cancel_backend(pid)``, only if ``pid`` is one of ``application_name``'s processes.

    Never a broad cancel: the filter on the name means this kernel can only cancel a query
    it started itself, even on a server shared with others.
    """
    stmt = text(
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
        "WHERE pid = :pid AND application_name = :name"
    )
    async with monitor.engine.connect() as conn:
        done = (await conn.execute(stmt, {"pid": pid, "name": application_name})).scalar()
    return bool(done)


class BlockingSleep:
    """A sync driver call that runs ``pg_sleep`` (PG) or :data:`NAP` (SQLite) in a thread.

    ``run()`` is what ``asyncio.to_thread`` runs; ``finished`` is set when the call returns
    (or fails: ``error`` then names the driver's error), so a notebook can wait for the
    thread that a cancelled task left behind.
    """

    def __init__(self, db: Backend, seconds: float):
        self.db, self.seconds = db, seconds
        self.finished = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        """Run the slow statement on the sync engine, then set ``finished``."""
        try:
            with self.db.sync_engine.connect() as conn:
                conn.execute(nap(self.db, self.seconds))
        except DBAPIError as exc:
            self.error = error_chain(exc)[-1]
        finally:
            self.finished.set()


# ------------------------------------------------------------------- the exercise check

#: The simulated round trip during the check (ms): every BEGIN, statement and ROLLBACK.
CHECK_MS = 10.0
#: The deadline of the check's normal run (seconds): generous, it must never be missed.
GENEROUS_S = 60.0
#: At most this many dashboards per check run.
CHECK_IDS = 24
#: How long the check waits for what an attempt started to finish, after it returned (s).
SETTLE_S = 10.0


#: The connection limit of the check's normal run and of its timeout run: neither is
#: :data:`POOL`, so that an answer which ignores ``limit`` (``Semaphore(4)``) shows.
CHECK_LIMITS = (3, 2)


def check_limit(dealerships: int, most: int = CHECK_LIMITS[0]) -> int:
    """The connection limit the check sets: ``most``, or fewer so that the ids outnumber it."""
    return max(2, min(most, dealerships - 1))


def _is_dashboard(statement: str) -> bool:
    """Whether ``statement`` is a dashboard query (:func:`dashboard_statement`)."""
    return "count(cars.id)" in statement.lower()


def _overlap(intervals: list[tuple[int, float]]) -> int:
    """The most of ``intervals`` (start, end) open at once."""
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    now = peak = 0
    for _, step in sorted(points, key=lambda p: (p[0], p[1])):
        now += step
        peak = max(peak, now)
    return peak


def check_ids(db: Backend) -> list[int]:
    """The ids the check asks for: up to :data:`CHECK_IDS`, in a shuffled (fixed) order."""
    ids = dealership_ids(db)[:CHECK_IDS]
    return ids[1::2] + ids[0::2]  # odd positions first: the answer must follow this order


class _RecordingMaker(async_sessionmaker):  # type: ignore[type-arg]
    """An ``async_sessionmaker`` that keeps every session it makes (the check closes them)."""

    def __init__(self, engine: AsyncEngine, sessions: list[AsyncSession]):
        super().__init__(engine, expire_on_commit=False)
        self.sessions = sessions

    def __call__(self, **kw: Any) -> AsyncSession:
        session = super().__call__(**kw)
        self.sessions.append(session)
        return session


@dataclass
class _Run:
    """One call of the learner's function, and what it left behind."""

    result: Any = None
    error: BaseException | None = None
    peak: int = 0
    shared: bool = False
    at_return: int = 0  # connections still checked out the moment the call returned
    settled: int = 0  # ... and once every task it started had finished
    unclosed: int = 0  # sessions it made that were still in a transaction by then
    after: int = 0  # statements sent after the call had returned (work nobody waits for)
    dashboards: int = 0  # dashboard statements it sent
    working: int = 0  # the most checkouts that ran a dashboard statement, at once
    cancelled: bool = False  # whether the call ended cancelled
    foreign: bool = False  # whether it ran statements without a session of the check's maker


class _Watch:
    """Everything the check records while an attempt runs on the check's engine."""

    def __init__(self, db: Pooled):
        self.db = db
        self.users: dict[int, set[int]] = {}
        self.tasks_per_checkout: list[int] = []
        self.clock = 0  # a counter of checkouts and checkins: their order, not their time
        self.opened: dict[int, tuple[int, bool]] = {}  # open checkouts: start, ran a dashboard
        self.intervals: list[tuple[int, float]] = []  # checkouts that ran a dashboard
        self.dashboards = 0
        self.cancel: asyncio.Task[Any] | None = None  # cancelled after the first statement
        self.returned = False
        self.after = 0
        pool = db.engine.sync_engine.pool
        self.hooks: list[tuple[Any, str, Callable[..., None]]] = [
            (pool, "checkout", self._checkout),
            (pool, "checkin", self._checkin),
            (db.engine.sync_engine, "before_cursor_execute", self._statement),
            (db.engine.sync_engine, "after_cursor_execute", self._statement_done),
        ]

    def _checkout(self, dbapi_connection: Any, *_args: Any) -> None:
        self.users[id(dbapi_connection)] = set()
        self.clock += 1
        self.opened[id(dbapi_connection)] = (self.clock, False)

    def _checkin(self, dbapi_connection: Any, *_args: Any) -> None:
        self.tasks_per_checkout.append(len(self.users.pop(id(dbapi_connection), set())))
        self.clock += 1
        start, worked = self.opened.pop(id(dbapi_connection), (0, False))
        if worked:
            self.intervals.append((start, self.clock))

    @property
    def working(self) -> int:
        """The most checkouts that ran a dashboard statement, open at once."""
        still = [(start, float("inf")) for start, worked in self.opened.values() if worked]
        return _overlap(self.intervals + still)

    def _statement(self, conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if self.returned:
            self.after += 1
        task = asyncio.current_task()
        key = id(conn.connection.dbapi_connection)
        if _is_dashboard(statement):
            self.dashboards += 1
            if key in self.opened:
                self.opened[key] = (self.opened[key][0], True)
        if task is not None and key in self.users:
            self.users[key].add(id(task))

    def _statement_done(self, *_args: Any) -> None:
        if self.cancel is not None:  # the first dashboard has its row: cancel the call now
            self.cancel.cancel()
            self.cancel = None

    def __enter__(self) -> _Watch:
        for target, name, fn in self.hooks:
            event.listen(target, name, fn)
        return self

    def __exit__(self, *_exc: object) -> None:
        for target, name, fn in self.hooks:
            event.remove(target, name, fn)

    @property
    def shared(self) -> bool:
        """Whether one checkout (one session's connection) ran statements for several tasks."""
        busy = self.tasks_per_checkout + [len(used) for used in self.users.values()]
        return any(n > 1 for n in busy)


def _shared(error: BaseException | None) -> bool:
    """Whether ``error`` (or one it came from) is SQLAlchemy's "concurrent operations" error."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, IllegalStateChangeError):
            return True
        if isinstance(error, InvalidRequestError) and getattr(error, "code", None) == "isce":
            return True
        error = error.__context__ or error.__cause__
    return False


async def warm(db: Backend, count: int = POOL) -> None:
    """Open ``count`` pooled connections now, so that no checkout later waits to connect."""
    conns = [await db.engine.connect() for _ in range(count)]
    for conn in conns:
        await conn.execute(select(1))
    for conn in conns:
        await conn.close()


async def _settle(started: set[asyncio.Task[Any]]) -> None:
    """Wait (up to :data:`SETTLE_S`) for the tasks an attempt started to finish."""
    current = asyncio.current_task()
    pending = {t for t in asyncio.all_tasks() - started if t is not current and not t.done()}
    if pending:
        await asyncio.wait(pending, timeout=SETTLE_S)


class _Leases:
    """Every connection checked out of ``db``'s pool and not yet returned (for the cleanup)."""

    def __init__(self, db: Pooled):
        self.pool = db.engine.sync_engine.pool
        self.out: dict[int, Any] = {}

    def _checkout(self, _dbapi: Any, record: Any, proxy: Any) -> None:
        self.out[id(record)] = proxy

    def _checkin(self, _dbapi: Any, record: Any) -> None:
        self.out.pop(id(record), None)

    def __enter__(self) -> _Leases:
        event.listen(self.pool, "checkout", self._checkout)
        event.listen(self.pool, "checkin", self._checkin)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.pool, "checkout", self._checkout)
        event.remove(self.pool, "checkin", self._checkin)


async def _cleanup(
    db: Pooled, started: set[asyncio.Task[Any]], sessions: list[Any], leases: _Leases
) -> None:
    """Stop every task the attempts left running, close their sessions, free the pool.

    A session whose close was interrupted still holds its connection: that one is
    invalidated (closed) here, so nothing is left for the garbage collector to warn about.
    """
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() - started if t is not current and not t.done()]
    for task in left:
        task.cancel()
    if left:
        await asyncio.gather(*left, return_exceptions=True)
    for session in sessions:
        with contextlib.suppress(Exception):
            await session.close()
    sessions.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what a leaked session left, closed here or collected
        for proxy in list(leases.out.values()):
            if getattr(proxy, "dbapi_connection", None) is not None:
                with contextlib.suppress(Exception):
                    await greenlet_spawn(proxy.invalidate)
        gc.collect()
    await db.engine.dispose()


async def _call(
    fn: Callable[..., Awaitable[Any]],
    db: Pooled,
    ids: list[int],
    limit: int,
    deadline: float,
    sessions: list[AsyncSession],
    *,
    cancel: bool = False,
) -> _Run:
    """Await ``fn(maker, ids, limit, deadline)``; with ``cancel``, cancel it the moment its
    first statement has run (the first dashboard then closes its session: a simulated
    ROLLBACK, a sleep of :data:`CHECK_MS`). Record the connections still checked out the
    moment it returned; then wait for what it started to finish, and count the statements
    sent after it returned.
    """
    run = _Run()
    maker = _RecordingMaker(db.engine, sessions)
    first = len(sessions)
    started = asyncio.all_tasks()
    with peak_connections(db) as peak, _Watch(db) as watch:
        task = asyncio.create_task(fn(maker, list(ids), limit, deadline))
        if cancel:
            watch.cancel = task
        try:
            run.result = await task
        except (Exception, asyncio.CancelledError) as exc:
            run.error = exc
        run.at_return = checked_out(db)
        run.cancelled = task.cancelled()
        watch.returned = True
        await _settle(started | {task})
    run.settled = checked_out(db)
    run.unclosed = sum(1 for session in sessions[first:] if session.in_transaction())
    run.foreign = len(sessions) == first
    run.peak = peak.peak
    run.shared = _shared(run.error) or watch.shared
    run.after = watch.after
    run.dashboards = watch.dashboards
    run.working = watch.working
    return run


async def _release() -> None:
    """Let aiosqlite's threads finish what a cancellation interrupted, then collect the
    cursors that cancelled statements left (on SQLite an unclosed cursor of a cancelled
    SELECT keeps a SHARED lock on the file until it is collected)."""
    await asyncio.sleep(0.05)
    gc.collect()


async def cancel_midway(
    fan_out: Callable[[Any, list[int]], Awaitable[Any]],
    db: Backend,
    ids: Sequence[int],
    pool: int = POOL,
) -> dict[str, Any]:
    """Run ``fan_out(Session, ids)`` and cancel it the moment its first statement has run,
    as the exercise check does (a fresh engine with ``pool`` connections, warmed up, and a
    simulated round trip of :data:`CHECK_MS`). Returns what it left behind: connections
    checked out as the cancelled call returned, and once all its tasks had finished
    (plain values: nothing of the cancelled run is kept, and the file is left unlocked).
    """
    found = await _cancel_midway(fan_out, db, ids, pool)
    await _release()
    return found


async def _cancel_midway(
    fan_out: Callable[[Any, list[int]], Awaitable[Any]],
    db: Backend,
    ids: Sequence[int],
    pool: int,
) -> dict[str, Any]:
    check_db = pooled(db, size=pool, tag="cancel")
    started = asyncio.all_tasks()
    sessions: list[AsyncSession] = []
    leases = _Leases(check_db)

    async def adapted(maker: Any, ids_: list[int], _limit: int, _deadline: float) -> Any:
        return await fan_out(maker, ids_)

    try:
        await warm(check_db, pool)
        with leases, simulate_round_trip(check_db.engine, CHECK_MS):
            run = await _call(
                adapted, check_db, list(ids), len(ids), GENEROUS_S, sessions, cancel=True
            )
    finally:
        await _cleanup(check_db, started, sessions, leases)
        check_db.sync_engine.dispose()
    found = {
        "raised": type(run.error).__name__ if run.error is not None else "nothing",
        "checked out as it returned": run.at_return,
        "after its tasks finished": run.settled,
    }
    run.error = run.result = None
    return found


_VERDICTS = {
    "shared session": (
        "✗ One AsyncSession was used by several tasks at once ({detail}): a session is not "
        "safe for concurrent use. Open one per task: `async with Session() as session:` "
        "inside the coroutine each task runs."
    ),
    "over the limit": (
        "✗ Right dashboards, but {peak} connections were checked out at once (the limit is "
        "{limit}): an unbounded gather takes one per task. Bound the fan-out, e.g. with "
        "`asyncio.Semaphore(limit)` around each dashboard, and close the session inside "
        "the gate: `async with gate, Session() as session:` (with `async with Session() "
        "as session, gate:` the gate lets the next task in before the session has given "
        "its connection back)."
    ),
    "not concurrent": (
        "✗ Right dashboards, but never more than one ran at a time: that is sequential. Run "
        "up to `limit` of them concurrently (asyncio.gather or a TaskGroup, with a semaphore)."
    ),
    "left checked out": (
        "✗ Right dashboards, but {left} connection(s) were still checked out after it "
        "returned: close every session (`async with Session() as session:`)."
    ),
    "no deadline": (
        "✗ Given a deadline it cannot meet, it did not raise TimeoutError ({what}): wrap the "
        "fan-out in `async with asyncio.timeout(deadline):`."
    ),
    "kept running": (
        "✗ {when}, its tasks went on running for a caller that had given up ({left} "
        "connection(s) checked out as it returned, {after} more statement(s) after): keep "
        "every task inside the call (a TaskGroup), so that a timeout or a cancellation "
        "reaches all of them; not create_task left running."
    ),
    "leaked on cancel": (
        "✗ {when}, {sessions} session(s) were never closed{holding}: a session closed by "
        "hand (`await session.close()`) is skipped when the task is cancelled before it "
        "gets there. Open sessions with `async with Session() as session:`, which closes "
        "them on cancellation too."
    ),
    "swallowed cancel": (
        "✗ Cancelled midway, it returned {what} instead of ending cancelled: a coroutine "
        "that catches asyncio.CancelledError must re-raise it (`raise`), or its caller "
        "never learns that the work was stopped."
    ),
    "foreign session": (
        "✗ Right dashboards, but none of them came from a session of the `Session` it was "
        "given (e.g. `db.AsyncSession`): open every session with the `Session` argument, "
        "`async with Session() as session:`, so that the limit applies to its pool."
    ),
}

#: The note a passing answer gets when a cancelled call returned before its tasks had
#: finished closing their sessions (a cancelled gather without ``return_exceptions``).
STILL_CLOSING = (
    " Note: {when}, your call returned while {left} connection(s) were still being closed "
    "by its tasks; a TaskGroup or gather(return_exceptions=True) waits for them."
)


def _fail(result: CheckResult, status: str, **detail: Any) -> CheckResult:
    return replace(result, status=status, message=_VERDICTS[status].format(**detail))


def _aftermath(result: CheckResult, run: _Run, when: str) -> CheckResult | None:
    """The verdict on what a timed-out or cancelled run left behind once its tasks had
    settled (up to :data:`SETTLE_S`), or None if nothing: connections still checked out
    the moment it returned are only a note (:data:`STILL_CLOSING`), they are a race."""
    if run.after:
        return _fail(result, "kept running", when=when, left=run.at_return, after=run.after)
    if run.settled or run.unclosed:
        holding = f" ({run.settled} still holding a connection)" if run.settled else ""
        return _fail(result, "leaked on cancel", when=when, sessions=run.unclosed, holding=holding)
    return None


async def acheck_dashboards(fn: Callable[..., Awaitable[Any]], db: Backend) -> CheckResult:
    """The exercise check for ``async def fn(Session, ids, limit, deadline)`` on ``db``.

    ``db`` must hold :func:`fill_lots`'s data. The check gives ``fn`` an
    ``async_sessionmaker`` on an engine of its own, whose pool would allow a connection per
    id (so only ``fn`` can keep within ``limit``), warmed up, with a simulated round trip of
    :data:`CHECK_MS` on every BEGIN, statement and ROLLBACK. It requires:

    1. the dashboards of ``ids`` in the order of ``ids``, in at most one statement each
       (``cl.acheck``), from sessions of the given maker, with no session used by two tasks;
    2. at most ``limit`` connections at once, and at least two running a dashboard at once;
    3. nothing checked out once it has returned;
    4. ``TimeoutError`` given a deadline of one round trip (a dashboard takes three), before
       every dashboard has run, within a smaller limit, and nothing left checked out or
       still sending statements once its tasks have settled;
    5. the same after a run cancelled midway (as soon as its first statement has run), which
       must end cancelled.
    """
    verdict = await _judge(fn, db)
    await _release()
    return verdict


async def _judge(fn: Callable[..., Awaitable[Any]], db: Backend) -> CheckResult:
    """:func:`acheck_dashboards` without the final release of what the runs left."""
    ids = check_ids(db)
    limit = check_limit(len(ids))
    check_db = pooled(db, size=len(ids), tag="check")
    with check_db.Session() as session:
        expected = dashboard_rows(session, ids)
    started = asyncio.all_tasks()
    sessions: list[AsyncSession] = []
    run = _Run()

    async def attempt(_session: AsyncSession) -> Any:
        nonlocal run
        run = await _call(fn, check_db, ids, limit, GENEROUS_S, sessions)
        if isinstance(run.error, NotImplementedError):
            raise run.error
        return run.result if run.error is None else run.error

    leases = _Leases(check_db)
    try:
        await warm(check_db, len(ids))
        with leases, simulate_round_trip(check_db.engine, CHECK_MS):
            result = await acheck(attempt, check_db, expected=expected, budget=len(ids))
            if result.status == "not attempted":
                return result
            if run.shared:
                names = error_chain(run.error)[:1]
                detail = f"it raised {names[0]}" if names else "their statements took turns"
                return _fail(result, "shared session", detail=detail)
            if run.error is not None:
                message = f"✗ It raised {type(run.error).__name__}: {run.error}"
                return replace(result, status="error", message=message[:300])
            if run.foreign:
                return _fail(result, "foreign session")
            if not result.passed:
                return result
            if run.at_return:
                return _fail(result, "left checked out", left=run.at_return)
            if run.peak > limit:
                return _fail(result, "over the limit", peak=run.peak, limit=limit)
            if run.working < 2:
                return _fail(result, "not concurrent")
            tight = check_limit(len(ids), CHECK_LIMITS[1])
            late = await _call(fn, check_db, ids, tight, CHECK_MS / 1000, sessions)
            if not isinstance(late.error, TimeoutError):
                what = (
                    "it returned"
                    if late.error is None
                    else f"it raised {type(late.error).__name__}"
                )
                return _fail(result, "no deadline", what=what)
            if late.dashboards >= len(ids):
                what = f"it ran all {late.dashboards} dashboards first, then raised TimeoutError"
                return _fail(result, "no deadline", what=what)
            if late.peak > tight:
                return _fail(result, "over the limit", peak=late.peak, limit=tight)
            verdict = _aftermath(result, late, "After the TimeoutError")
            if verdict is not None:
                return verdict
            cancelled = await _call(fn, check_db, ids, limit, GENEROUS_S, sessions, cancel=True)
            if not cancelled.cancelled:
                what = (
                    f"a {type(cancelled.result).__name__}"
                    if cancelled.error is None
                    else f"by raising {type(cancelled.error).__name__}"
                )
                return _fail(result, "swallowed cancel", what=what)
            verdict = _aftermath(result, cancelled, "After the run was cancelled midway")
            if verdict is not None:
                return verdict
            notes = "".join(
                STILL_CLOSING.format(when=when, left=r.at_return)
                for r, when in ((late, "after the TimeoutError"), (cancelled, "when cancelled"))
                if r.at_return
            )
            late = cancelled = run = _Run()  # keep nothing of the runs (their tracebacks)
    finally:
        await _cleanup(check_db, started, sessions, leases)
        check_db.sync_engine.dispose()
    return replace(
        result,
        message=(
            f"✓ Passed: the {len(ids)} dashboards in {result.statements} statement(s) "
            f"(budget {result.budget}), within the limit of {limit} connections, "
            "TimeoutError at the deadline, and nothing left behind when cancelled." + notes
        ),
    )
