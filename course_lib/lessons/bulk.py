"""Bulk writes: deterministic car rows, a resettable scratch table, raw-driver inserts,
profiles summarised into a table, and the import exercise of notebook 03.

Every write happens in a scratch database (``course.scratch("bulk")``), never in the
shared dataset. A strategy run starts from a known state: :func:`reset_cars` empties the
cars table (ids restart at 1) and makes sure the dealerships the foreign key needs exist.

>>> rows = car_rows(3)
>>> [(r["dealership_id"], r["make"], r["year"]) for r in rows]
[(1, 'Toyota', 2008), (2, 'Ford', 2009), (3, 'Volkswagen', 2010)]

The physical limit is the driver on its own: :func:`raw_executemany` (sqlite3 or psycopg,
through ``engine.raw_connection()``), :func:`asyncpg_executemany` and :func:`asyncpg_copy`
(the asyncpg connection behind ``AsyncConnection.get_raw_connection()``).
"""

from __future__ import annotations

import cProfile
import gc
import inspect
import itertools
import math
import pstats
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    insert,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import NullPool

from ..backends import Backend
from ..exercises import CheckResult, acheck, check
from ..measure import StatementLog, count_statements, label_of
from ..models import Car, Dealership
from ..plots import bar_chart

__all__ = [
    "CAR_COLUMNS",
    "DEALERSHIPS",
    "IMPORT_BUDGET",
    "MAX_BIND_VALUES",
    "MAX_COMMITS",
    "MAX_ROWS_PER_STATEMENT",
    "Customer",
    "Profile",
    "acheck_import",
    "as_stored",
    "astatement_counts",
    "asyncpg_copy",
    "asyncpg_executemany",
    "best_of",
    "car_rows",
    "check_import",
    "customer_rows",
    "driver_insert",
    "driver_tuples",
    "expected_import",
    "fastest_vs_raw",
    "flushed_pages",
    "gap_breakdown",
    "import_batch",
    "importing",
    "lean_cars",
    "next_id",
    "page_facts",
    "parse_counts",
    "per_row_speedup",
    "price_feed",
    "profile",
    "psycopg_cache_limits",
    "psycopg_parse_ms",
    "ratio_chart",
    "raw_customers",
    "raw_executemany",
    "raw_executemany_tuples",
    "reference_import_cars",
    "reset_cars",
    "reset_customers",
    "sql_digest",
    "statement_counts",
    "stored_tuples",
    "uncached_parses",
    "vs_raw",
    "within_2x",
]

CAR_COLUMNS = (
    "dealership_id",
    "make",
    "model",
    "year",
    "price",
    "is_sold",
    "created_at",
    "updated_at",
)
"""The columns every car row carries: the id is left to the database (server-generated)."""

DEALERSHIPS = [
    {"id": 1, "name": "Lyon Motors", "city": "Lyon"},
    {"id": 2, "name": "Porto Motors", "city": "Porto"},
    {"id": 3, "name": "Gent Motors", "city": "Gent"},
    {"id": 4, "name": "Turin Motors", "city": "Turin"},
    {"id": 5, "name": "Brno Motors", "city": "Brno"},
]
"""The dealerships the scratch cars belong to (inserted once by :func:`reset_cars`)."""

_MAKES = (
    ("Toyota", "Corolla"),
    ("Ford", "Focus"),
    ("Volkswagen", "Golf"),
    ("Renault", "Clio"),
    ("Skoda", "Octavia"),
    ("Kia", "Ceed"),
    ("Toyota", "Yaris"),
)
_EPOCH = datetime(2024, 1, 1)


def car_rows(n: int, *, start: int = 0) -> list[dict[str, Any]]:
    """``n`` deterministic car rows (dicts keyed by :data:`CAR_COLUMNS`, no id).

    ``start`` shifts the sequence, so two batches can differ:

    >>> car_rows(1, start=5)[0]["price"] == car_rows(6)[5]["price"]
    True
    """
    rows = []
    for i in range(start, start + n):
        make, model = _MAKES[i % len(_MAKES)]
        created = _EPOCH + timedelta(minutes=17 * i)
        rows.append(
            {
                "dealership_id": 1 + i % len(DEALERSHIPS),
                "make": make,
                "model": model,
                "year": 2008 + i % 18,
                "price": 4_000 + (i * 37) % 760 * 100,
                "is_sold": i % 10 < 3,
                "created_at": created,
                "updated_at": created + timedelta(days=i % 90),
            }
        )
    return rows


def reset_cars(db: Backend, cars: int = 0) -> Backend:
    """Empty the cars table (ids restart at 1), ensure the dealerships, insert ``cars`` rows.

    Runs on the sync engine in one transaction; call it outside any measured block.

    >>> from course_lib.backends import sqlite
    >>> db = reset_cars(sqlite("course_doctest_bulk"), cars=3)  # doctest: +SKIP
    """
    with db.sync_engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE cars RESTART IDENTITY"))
        else:  # SQLite: an INTEGER PRIMARY KEY restarts at max(rowid) + 1 = 1
            conn.execute(delete(Car))
        present = set(conn.scalars(select(Dealership.id)))
        missing = [d for d in DEALERSHIPS if d["id"] not in present]
        if missing:
            conn.execute(insert(Dealership), missing)
        if cars:
            conn.execute(insert(Car), car_rows(cars))
    return db


# ------------------------------------------------------------------------ raw drivers

_SQLITE_INSERT = (
    "INSERT INTO cars (dealership_id, make, model, year, price, is_sold, created_at, "
    "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_PSYCOPG_INSERT = (
    "INSERT INTO cars (dealership_id, make, model, year, price, is_sold, created_at, "
    "updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
_ASYNCPG_INSERT = (
    "INSERT INTO cars (dealership_id, make, model, year, price, is_sold, created_at, "
    "updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
)


def _tuples(rows: Sequence[dict[str, Any]], *, datetimes_as_text: bool) -> list[tuple]:
    """Rows as tuples in :data:`CAR_COLUMNS` order, the way a raw-driver user writes it."""
    if not datetimes_as_text:
        return [
            (
                r["dealership_id"],
                r["make"],
                r["model"],
                r["year"],
                r["price"],
                r["is_sold"],
                r["created_at"],
                r["updated_at"],
            )
            for r in rows
        ]
    # sqlite3 has no datetime type: store the text SQLAlchemy's DateTime stores and reads
    return [
        (
            r["dealership_id"],
            r["make"],
            r["model"],
            r["year"],
            r["price"],
            r["is_sold"],
            r["created_at"].isoformat(" ", "microseconds"),
            r["updated_at"].isoformat(" ", "microseconds"),
        )
        for r in rows
    ]


def raw_executemany(db: Backend, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` with the sync driver alone: ``cursor.executemany`` then ``commit``.

    sqlite3 on SQLite, psycopg on PostgreSQL; the connection comes from
    ``db.sync_engine.raw_connection()``, so SQLAlchemy's events never see the statement.
    """
    conn = db.sync_engine.raw_connection()
    try:
        cursor = conn.cursor()
        if db.name == "sqlite":
            cursor.executemany(_SQLITE_INSERT, _tuples(rows, datetimes_as_text=True))
        else:
            cursor.executemany(_PSYCOPG_INSERT, _tuples(rows, datetimes_as_text=False))
        cursor.close()
        conn.commit()
    finally:
        conn.close()


async def asyncpg_executemany(db: Backend, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` with asyncpg's own ``executemany``, in one transaction.

    ``raw.driver_connection`` is the asyncpg connection behind SQLAlchemy's pool.
    """
    async with db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        async with driver.transaction():
            await driver.executemany(_ASYNCPG_INSERT, _tuples(rows, datetimes_as_text=False))


async def asyncpg_copy(db: Backend, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` with asyncpg's ``copy_records_to_table`` (PostgreSQL's COPY protocol)."""
    async with db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        async with driver.transaction():
            await driver.copy_records_to_table(
                "cars",
                records=_tuples(rows, datetimes_as_text=False),
                columns=list(CAR_COLUMNS),
            )


# ------------------------------------------------------------------------ reporting

_DRIVERS = {"sqlite": "sqlite3", "postgresql": "psycopg"}


def _significant(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant figures (the harness rounds its frames alike)."""
    if not value or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def _labels(items: Sequence[str | Callable[..., Any]]) -> list[str]:
    return [label_of(i) if callable(i) else i for i in items]


def vs_raw(
    frame: pd.DataFrame,
    raw: Sequence[str | Callable[..., Any]],
    *,
    driver: str | None = None,
) -> pd.DataFrame:
    """Each strategy's cost per row against the fastest raw-driver strategy on its backend.

    ``frame`` comes from ``cl.compare`` / ``cl.acompare`` (frames with different n may be
    concatenated: the comparison is per row). ``raw`` names the raw-driver strategies;
    ``driver`` labels the driver (default: sqlite3 / psycopg, the sync drivers). The
    ``backend`` column becomes e.g. ``"sqlite (sqlite3)"``. Columns: ``median_ms``,
    ``q1_ms``, ``q3_ms``, ``iqr_ms`` (per call, as measured), ``us_per_row``,
    ``rows_per_s`` and ``x_raw`` (time per row ÷ the fastest raw path's).
    """
    raw_labels = _labels(raw)
    frame = frame.reset_index(drop=True)  # concatenated frames repeat index labels
    out = pd.DataFrame(
        {
            "strategy": frame["strategy"],
            "backend": [
                f"{b} ({driver or _DRIVERS.get(b, b)})" for b in frame["backend"].astype(str)
            ],
            "rows": frame["n"],
            "statements": frame["statements"],
            "median_ms": frame["median_ms"],
            "q1_ms": frame["q1_ms"],
            "q3_ms": frame["q3_ms"],
            "iqr_ms": frame["iqr_ms"],
        }
    )
    per_row = out["median_ms"] * 1000 / out["rows"]
    is_raw = out["strategy"].isin(raw_labels)
    if not is_raw.any():
        raise ValueError(f"none of the raw strategies {raw_labels} is in the frame")
    fastest_raw = per_row[is_raw].groupby(out["backend"][is_raw]).min()
    out["us_per_row"] = per_row.map(_significant)
    out["rows_per_s"] = (1e6 / per_row).map(_significant).astype(int)
    out["x_raw"] = (per_row / out["backend"].map(fastest_raw)).round(2)
    out.attrs.update(frame.attrs)
    out.attrs["raw"] = raw_labels
    return out.reset_index(drop=True)


def best_of(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Per (strategy, backend, n), the row with the lowest median among repeated comparisons.

    A load spike on a shared machine can land on one strategy's samples and inflate its
    median; run the same ``cl.compare`` twice and keep each strategy's better run (as
    ``timeit`` advises taking the minimum). ``ratio`` is recomputed within the result.
    """
    both = pd.concat(frames, ignore_index=True)
    best = both.loc[both.groupby(["strategy", "backend", "n"], sort=False)["median_ms"].idxmin()]
    best = best.reset_index(drop=True)
    fastest = best.groupby(["backend", "n"])["median_ms"].transform("min")
    best["ratio"] = (best["median_ms"] / fastest).round(2)
    best.attrs.update(frames[0].attrs)
    return best


def per_row_speedup(
    table: pd.DataFrame, slow: str | Callable[..., Any], fast: str | Callable[..., Any]
) -> pd.Series:
    """Time per row of ``slow`` divided by that of ``fast``, per backend ("×N faster")."""
    slow_label, fast_label = _labels([slow, fast])
    per_row = table.set_index(["strategy", "backend"])["us_per_row"]
    result = per_row.xs(slow_label, level="strategy") / per_row.xs(fast_label, level="strategy")
    return result.rename(f"{slow_label} / {fast_label}")


def fastest_vs_raw(table: pd.DataFrame, backend: str) -> tuple[str, float]:
    """The fastest non-raw strategy on ``backend`` (a prefix such as "sqlite") and its x_raw."""
    part = table[table["backend"].str.startswith(backend)]
    part = part[~part["strategy"].isin(table.attrs.get("raw", []))]
    best = part.loc[part["x_raw"].idxmin()]
    return str(best["strategy"]), float(best["x_raw"])


def within_2x(table: pd.DataFrame) -> pd.Series:
    """Per backend of a :func:`vs_raw` table, the non-raw strategies within 2x of raw."""
    part = table[~table["strategy"].isin(table.attrs.get("raw", []))]
    inside = part[part["x_raw"] < 2]
    return (
        inside.groupby("backend")["strategy"]
        .agg(lambda labels: "; ".join(labels) or "none")
        .reindex(table["backend"].unique(), fill_value="none")
        .rename("within 2x of the raw driver")
    )


def ratio_chart(table: pd.DataFrame, title: str) -> Figure:
    """The ``x_raw`` column of :func:`vs_raw` as bars on a log axis, with the raw driver at 1."""
    frame = table.drop(columns=["q1_ms", "q3_ms", "iqr_ms"])
    frame.attrs = {}  # no "scale" in the title: scratch tables are not a dataset scale
    fig = bar_chart(frame, title, y="x_raw")
    ax = fig.axes[0]
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}×"))
    ax.axvline(1, color="black", linewidth=1)
    ax.axvline(2, color="grey", linewidth=1, linestyle="--")
    ax.set_xlabel("time per row ÷ the fastest raw-driver path (log scale; dashed line: 2×)")
    bars = frame["strategy"].nunique() * frame["backend"].nunique()
    fig.set_size_inches(10, max(3.5, 0.25 * bars + 1.6))
    fig.tight_layout()
    return fig


def sql_digest(log: StatementLog, width: int = 110) -> str:
    """Each distinct statement of ``log`` once, with how many times it was sent.

    Long SQL keeps its start and its end (where RETURNING and the sentinel ORDER BY are).
    """
    lines = [f"{log.count} statement(s)"]
    for sql, times in Counter(" ".join(s.split()) for s in log.sql).items():
        if len(sql) > width:
            half = (width - 3) // 2
            sql = f"{sql[:half]} … {sql[-half:]}"
        lines.append(f"  {times:>5} × {sql}")
    return "\n".join(lines)


_runs = itertools.count(1)


def price_feed(n: int) -> dict[int, int]:
    """New prices for cars 1..n: car id -> price, higher on every call than any before.

    A car's price from one call is above every price an earlier call gave it, and the
    notebook's same-change-for-all UPDATE only *lowers* prices (a discount). So whatever ran
    before, every run of an update strategy really changes every row (the unit of work
    skips attributes set to the value they already have).

    >>> a, b = price_feed(3), price_feed(3)
    >>> sorted(a) == [1, 2, 3] and all(b[i] > a[i] for i in a)
    True
    """
    run = next(_runs)
    return {car_id: 5_000 + 100 * run + car_id % 100 for car_id in range(1, n + 1)}


def statement_counts(
    strategies: Sequence[Callable[..., Any]],
    backends: Sequence[Backend],
    n: int,
    *,
    prepare: Callable[[Backend], Any] | None = None,
) -> pd.DataFrame:
    """Statements and round trips of ONE call of each ``strategy(db, n)``, per backend.

    Deterministic, unlike a timing frame: each strategy runs once under
    ``count_statements`` (after ``prepare(db)``, e.g. a reset, when given), so what ran
    before cannot change what it sends. Rows: strategies; columns: ``(value, backend)``.
    """
    rows = []
    for db in backends:
        for fn in strategies:
            if prepare is not None:
                prepare(db)
            with count_statements(db) as log:
                fn(db, n)
            rows.append(
                {
                    "strategy": label_of(fn),
                    "backend": db.name,
                    "statements": log.count,
                    "round_trips": log.round_trips,
                }
            )
    frame = pd.DataFrame(rows)
    return frame.pivot(index="strategy", columns="backend").reindex(
        [label_of(fn) for fn in strategies]
    )


async def astatement_counts(
    strategies: Sequence[Callable[..., Any]], db: Backend, n: int
) -> pd.DataFrame:
    """Like :func:`statement_counts` for ``async def strategy(db, n)``, on one backend."""
    rows = []
    for fn in strategies:
        with count_statements(db) as log:
            await fn(db, n)
        rows.append(
            {"strategy": label_of(fn), "statements": log.count, "round_trips": log.round_trips}
        )
    return pd.DataFrame(rows).set_index("strategy")


# ------------------------------------------------------------------------ profiling


def _area(filename: str, name: str) -> str:
    """Where a profiled function belongs, in words a learner can act on."""
    if filename == "~":  # built-ins: C functions and methods
        if "sqlite3." in name or "psycopg" in name or "asyncpg" in name:
            return "driver: executemany + commit (C)"
        if "isoformat" in name:
            return "datetime.isoformat (C)"
        return "Python built-ins"
    path = filename.replace("\\", "/")
    if "/sqlalchemy/" not in path:
        return "other Python (e.g. raw tuples)"
    if "/sqlalchemy/dialects/" in path or path.endswith("/sql/sqltypes.py"):
        return "SQLAlchemy: type conversion"
    if "/sqlalchemy/orm/" in path:
        return "SQLAlchemy: ORM bulk persistence"
    return "SQLAlchemy: Core parameters, execution"


@dataclass
class Profile:
    """cProfile of a few strategies, summarised: time per run by area and the top functions."""

    areas: pd.DataFrame
    functions: pd.DataFrame

    def __repr__(self) -> str:
        return self.areas.round(2).to_string()


@contextmanager
def _gc_frozen() -> Iterator[list[float]]:
    """Collect, then freeze every object alive now, and clock the gc pauses in the block.

    Frozen objects are never scanned again, so the objects the kernel already holds do not
    make the collections in the block longer; the list yields the seconds paused (total).
    """
    paused = [0.0]
    started: list[float] = []

    def clock(phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            paused[0] += time.perf_counter() - started.pop()

    gc.collect()
    gc.freeze()
    gc.callbacks.append(clock)
    try:
        yield paused
    finally:
        gc.callbacks.remove(clock)
        gc.unfreeze()


def profile(strategies: dict[str, Callable[[], Any]], *, repeats: int = 5) -> Profile:
    """Run each ``fn()`` once untimed, then ``repeats`` times under cProfile.

    The garbage collector is collected and frozen around the profiled runs (the objects
    the kernel holds are not scanned again), and its pauses are reported in the row
    ``of which gc pauses`` (already counted inside the areas).

    ``areas``: milliseconds per run spent in each area (rows) by strategy (columns), plus a
    total. ``functions``: the costliest functions (internal time per run) of each strategy.
    cProfile adds a cost to every Python call, so Python-heavy areas look a little larger
    than they are: read the ranking, not the last digit.

    >>> p = profile({"sum": lambda: sum(range(1000))}, repeats=2)
    >>> list(p.areas.columns)
    ['sum']
    """
    areas: dict[str, dict[str, float]] = {}
    gc_ms: dict[str, float] = {}
    top: list[dict[str, Any]] = []
    for label, fn in strategies.items():
        fn()  # warm-up: connect and compile outside the profile
        with _gc_frozen() as paused:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(repeats):
                fn()
            profiler.disable()
        gc_ms[label] = paused[0] * 1000 / repeats
        stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
        by_area: dict[str, float] = {}
        for (filename, _line, name), (_cc, calls, tottime, _ct, _callers) in stats.items():
            area = _area(filename, name)
            by_area[area] = by_area.get(area, 0.0) + tottime * 1000 / repeats
            top.append(
                {
                    "strategy": label,
                    "function": _short(filename, name),
                    "calls per run": calls // repeats,
                    "ms per run": tottime * 1000 / repeats,
                }
            )
        areas[label] = by_area
    frame = pd.DataFrame(areas).fillna(0.0)
    frame = frame.loc[frame.max(axis=1).sort_values(ascending=False).index]
    frame.loc["total"] = frame.sum()
    # gc pauses are inside the areas above (cProfile charges them to whatever ran);
    # reported apart, after collect + freeze, so a learner can see they stayed small
    frame.loc["of which gc pauses"] = pd.Series(gc_ms)
    frame.index.name = "ms per run, by area"
    functions = (
        pd.DataFrame(top)
        .sort_values(["strategy", "ms per run"], ascending=[True, False])
        .groupby("strategy", sort=False)
        .head(5)
        .reset_index(drop=True)
    )
    return Profile(frame, functions)


def _short(filename: str, name: str) -> str:
    if filename == "~":
        return name
    path = filename.replace("\\", "/")
    if "/sqlalchemy/" in path:
        path = "sqlalchemy/" + path.split("/sqlalchemy/", 1)[1]
    else:
        path = path.rsplit("/", 1)[-1]
    return f"{path}:{name}"


# ------------------------------------------------------------------------ closing the gap

lean_cars = Table(
    "cars",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("dealership_id", Integer),
    Column("make", String(40)),
    Column("model", String(40)),
    Column("year", Integer),
    Column("price", Integer),
    Column("is_sold", Integer),
    Column("created_at", String),
    Column("updated_at", String),
)
"""The same ``cars`` table, described with types that have no bind processor on SQLite.

``Car``'s ``DateTime`` and ``Boolean`` columns convert every value in Python before the
driver sees it (SQLite stores date-times as text, booleans as 0/1). This Core ``Table``
declares those columns as ``String`` and ``Integer``, so values already in the stored form
(see :func:`as_stored`) go to the driver untouched. For a Core insert only: the ORM keeps
using ``Car``.
"""


def as_stored(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with the values SQLite stores: text date-times (as ``DateTime`` writes them), 0/1.

    >>> as_stored(car_rows(1))[0]["created_at"], as_stored(car_rows(1))[0]["is_sold"]
    ('2024-01-01 00:00:00.000000', 1)
    """
    return [
        {
            **r,
            "is_sold": int(r["is_sold"]),
            "created_at": r["created_at"].isoformat(" ", "microseconds"),
            "updated_at": r["updated_at"].isoformat(" ", "microseconds"),
        }
        for r in rows
    ]


def driver_insert(db: Backend) -> str:
    """The INSERT of :data:`CAR_COLUMNS` in the sync driver's own placeholder style."""
    return _SQLITE_INSERT if db.name == "sqlite" else _PSYCOPG_INSERT


def driver_tuples(db: Backend, rows: Sequence[dict[str, Any]]) -> list[tuple]:
    """``rows`` as the tuples the sync driver takes (text date-times on SQLite)."""
    return _tuples(rows, datetimes_as_text=db.name == "sqlite")


def gap_breakdown(
    table: pd.DataFrame,
    *,
    orm: str | Callable[..., Any],
    core: str | Callable[..., Any],
    stored: str | Callable[..., Any],
    raw: str | Callable[..., Any],
    raw_stored: str | Callable[..., Any],
) -> pd.DataFrame:
    """Split the ORM bulk insert's time above the raw driver into three measured parts.

    From a :func:`vs_raw` table of one backend, by subtraction of medians per row, each
    part like for like: the ORM bulk layer (``orm - core``: the same values, with and
    without the ORM); the rest of Core (``stored - raw_stored``: both given values already
    in stored form, outside the timer); and bind processing, what is left
    (``(core - stored) - (raw - raw_stored)``: SQLAlchemy's type conversion, less the
    conversion the raw path does itself). The three add up to ``orm - raw``;
    ``share_of_gap`` is each part's share of it.
    """
    orm_l, core_l, stored_l, raw_l, raw_stored_l = _labels([orm, core, stored, raw, raw_stored])
    per_row = table.set_index("strategy")["us_per_row"]
    rest_of_core = per_row[stored_l] - per_row[raw_stored_l]
    parts = {
        "ORM bulk layer (ORM bulk insert - Core executemany)": per_row[orm_l] - per_row[core_l],
        "bind processing (the rest)": per_row[core_l] - per_row[raw_l] - rest_of_core,
        "rest of Core (Core, stored values - raw, stored values)": rest_of_core,
    }
    gap = per_row[orm_l] - per_row[raw_l]
    return pd.DataFrame(
        {
            "us_per_row": [_significant(v) for v in parts.values()],
            "share_of_gap": [round(v / gap, 2) for v in parts.values()],
        },
        index=pd.Index(list(parts), name="part of the gap"),
    )


def raw_executemany_tuples(db: Backend, tuples: Sequence[tuple]) -> None:
    """Like :func:`raw_executemany`, given tuples already in the driver's form (no conversion)."""
    conn = db.sync_engine.raw_connection()
    try:
        cursor = conn.cursor()
        cursor.executemany(driver_insert(db), tuples)
        cursor.close()
        conn.commit()
    finally:
        conn.close()


def stored_tuples(stored: Sequence[dict[str, Any]]) -> list[tuple]:
    """:func:`as_stored` rows as driver tuples in :data:`CAR_COLUMNS` order."""
    return [tuple(r[c] for c in CAR_COLUMNS) for r in stored]


# ------------------------------------------------------------------------ psycopg's parse cache


class _NarrowBase(DeclarativeBase):
    pass


class Customer(_NarrowBase):
    """A narrow table (id, name, description), the shape of SQLAlchemy's performance suite."""

    __tablename__ = "bulk_customers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(String(255))


def customer_rows(n: int) -> list[dict[str, Any]]:
    """``n`` deterministic customer rows (name, description; no id).

    >>> customer_rows(1)
    [{'name': 'customer name 0', 'description': 'customer description 0'}]
    """
    return [
        {"name": f"customer name {i}", "description": f"customer description {i}"} for i in range(n)
    ]


def reset_customers(db: Backend) -> Backend:
    """Create the narrow ``bulk_customers`` table in ``db`` if needed, and empty it."""
    _NarrowBase.metadata.create_all(db.sync_engine)
    with db.sync_engine.begin() as conn:
        conn.execute(delete(Customer))
    return db


def raw_customers(db: Backend, rows: Sequence[dict[str, Any]]) -> None:
    """Insert customer ``rows`` with the sync driver alone (executemany, commit)."""
    mark = "?" if db.name == "sqlite" else "%s"
    conn = db.sync_engine.raw_connection()
    try:
        cursor = conn.cursor()
        cursor.executemany(
            f"INSERT INTO bulk_customers (name, description) VALUES ({mark}, {mark})",
            [(r["name"], r["description"]) for r in rows],
        )
        cursor.close()
        conn.commit()
    finally:
        conn.close()


_PSYCOPG_PRIVATE = (
    "MAX_CACHED_STATEMENT_LENGTH",
    "MAX_CACHED_STATEMENT_PARAMS",
    "_query2pg_nocache",
)


def _psycopg_queries() -> Any:
    """psycopg's PRIVATE module ``psycopg._queries``, checked for what this lesson reads.

    The parse-cache lesson looks inside psycopg (3.1 to 3.3 keep these names); a psycopg
    release that renames them gets one clear error instead of a traceback.
    """
    try:
        from psycopg import _queries
    except ImportError as error:  # pragma: no cover - depends on the installed psycopg
        raise RuntimeError(
            f"this lesson reads psycopg's private psycopg._queries: {error}"
        ) from None
    missing = [name for name in _PSYCOPG_PRIVATE if not hasattr(_queries, name)]
    if missing:  # pragma: no cover - depends on the installed psycopg
        import psycopg

        raise RuntimeError(
            f"psycopg {psycopg.__version__} no longer has psycopg._queries.{', '.join(missing)}: "
            "this optional lesson reads psycopg's private parse cache, so it needs psycopg 3.1-3.3."
        )
    return _queries


def psycopg_cache_limits() -> dict[str, int]:
    """psycopg's limits for caching a parsed statement, read from its installed source.

    ``psycopg/_queries.py`` (a PRIVATE module: see :func:`_psycopg_queries`) parses a query
    (finds its ``%s`` placeholders) in Python, and keeps the result in an LRU cache only
    when the query is at most ``MAX_CACHED_STATEMENT_LENGTH`` bytes long with at most
    ``MAX_CACHED_STATEMENT_PARAMS`` parameters; any longer statement is parsed again on
    every execution.
    """
    queries = _psycopg_queries()
    return {
        "MAX_CACHED_STATEMENT_LENGTH": queries.MAX_CACHED_STATEMENT_LENGTH,
        "MAX_CACHED_STATEMENT_PARAMS": queries.MAX_CACHED_STATEMENT_PARAMS,
    }


@contextmanager
def uncached_parses() -> Iterator[list[int]]:
    """Count psycopg's parses that bypass its cache while the block runs (yields ``[count]``).

    psycopg calls ``psycopg._queries._query2pg_nocache`` for every execution of a
    statement over its cache limits; the block replaces it by a counting wrapper and
    puts the original back afterwards, whatever happens.
    """
    queries = _psycopg_queries()
    original = queries._query2pg_nocache
    count = [0]

    def counting(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return original(*args, **kwargs)

    queries._query2pg_nocache = counting
    try:
        yield count
    finally:
        queries._query2pg_nocache = original


def parse_counts(strategies: Sequence[Callable[..., Any]], db: Backend, n: int) -> pd.DataFrame:
    """Per ``strategy(db, n)``, run once: statements sent and psycopg's uncached parses."""
    rows = []
    for fn in strategies:
        with count_statements(db) as log, uncached_parses() as parses:
            fn(db, n)
        rows.append(
            {"strategy": label_of(fn), "statements": log.count, "uncached_parses": parses[0]}
        )
    return pd.DataFrame(rows).set_index("strategy")


def flushed_pages(
    db: Backend, objects: Callable[[], list[Any]], page_size: int | None = None
) -> StatementLog:
    """The statements ``add_all(objects())`` + flush sends, then roll back (nothing is kept).

    ``page_size`` sets the ``insertmanyvalues_page_size`` execution option on the session's
    connection: the most rows per INSERT page (SQLAlchemy's default is 1,000).
    """
    with db.Session() as session:
        if page_size:
            session.connection(execution_options={"insertmanyvalues_page_size": page_size})
        with count_statements(db) as log:
            session.add_all(objects())
            session.flush()
        session.rollback()
    return log


def page_facts(logs: dict[str, StatementLog]) -> pd.DataFrame:
    """Per labelled log: statements, bind values and bytes of its largest page, and whether
    psycopg caches that page's parse (both limits of :func:`psycopg_cache_limits` hold)."""
    limits = psycopg_cache_limits()
    rows = []
    for label, log in logs.items():
        widest = max(log.statements, key=lambda s: len(s.sql))
        size = len(widest.sql.encode())
        rows.append(
            {
                "flush": label,
                "statements": log.count,
                "bind_values_per_page": widest.parameters,
                "sql_bytes_per_page": size,
                "psycopg_caches_parse": size <= limits["MAX_CACHED_STATEMENT_LENGTH"]
                and widest.parameters <= limits["MAX_CACHED_STATEMENT_PARAMS"],
            }
        )
    return pd.DataFrame(rows).set_index("flush")


def psycopg_parse_ms(sql: str, *, repeats: int = 5) -> float:
    """Median milliseconds psycopg takes to parse ``sql`` without its cache (one execution).

    Calls the function psycopg itself calls for a statement over the cache limits
    (the private ``psycopg._queries._query2pg_nocache``), on the statement's bytes.
    """
    queries = _psycopg_queries()
    query = sql.encode()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        queries._query2pg_nocache(query, "utf-8")
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


# ------------------------------------------------------------------------ the id sequence


_NEXT_ID = text(
    "SELECT coalesce(last_value + increment_by, start_value) FROM pg_sequences "
    "WHERE quote_ident(schemaname) || '.' || quote_ident(sequencename) "
    "= pg_get_serial_sequence('cars', 'id')"
)


def next_id(db: Backend) -> int | None:
    """The id PostgreSQL's sequence behind ``cars.id`` hands out next (None on SQLite).

    Reads the ``pg_sequences`` view, so the sequence does not advance.
    """
    if db.name != "postgresql":
        return None
    with db.sync_engine.connect() as conn:
        return int(conn.scalar(_NEXT_ID))


# ------------------------------------------------------------------------ the exercise


def expected_import(rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What the cars table must hold after importing ``rows``: sorted column tuples."""
    return sorted(tuple(row[c] for c in CAR_COLUMNS) for row in rows)


def reference_import_cars(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """The obvious way: one ``Car`` and one commit per row (right, and slow)."""
    for row in rows:
        session.add(Car(**row))
        session.commit()


_READ_BACK = select(*(getattr(Car, c) for c in CAR_COLUMNS))


def importing(
    import_fn: Callable[..., Any], rows: Sequence[dict[str, Any]]
) -> Callable[[Any], Any]:
    """Wrap ``import_fn(session, rows)`` as a solution for ``cl.check`` / ``cl.acheck``.

    The wrapper empties the cars table, runs the import on the session the check gives it,
    and returns the rows read back. Emptying and reading back use a separate connection,
    so the check counts only the learner's statements. A sync ``import_fn`` goes with
    ``cl.check``, an ``async def`` one with ``await cl.acheck``.
    """
    if inspect.iscoroutinefunction(import_fn):

        async def solution_async(session: AsyncSession) -> list[tuple[Any, ...]]:
            engine = create_async_engine(session.bind.url, poolclass=NullPool)
            try:
                async with engine.begin() as conn:
                    await conn.execute(delete(Car))
                await import_fn(session, rows)
                async with engine.connect() as conn:
                    return sorted(tuple(r) for r in await conn.execute(_READ_BACK))
            finally:
                await engine.dispose()

        solution_async.__doc__ = import_fn.__doc__
        return solution_async

    def solution(session: Session) -> list[tuple[Any, ...]]:
        engine = create_engine(session.get_bind().url, poolclass=NullPool)
        try:
            with engine.begin() as conn:
                conn.execute(delete(Car))
            import_fn(session, rows)
            with engine.connect() as conn:
                return sorted(tuple(r) for r in conn.execute(_READ_BACK))
        finally:
            engine.dispose()

    solution.__doc__ = import_fn.__doc__
    return solution


IMPORT_BUDGET = 5
"""The most statements the exercise allows for its batch (a per-row loop sends 1,000)."""

MAX_BIND_VALUES = 100
"""The most bind values one plainly executed statement may carry in the exercise.

A multi-VALUES ``insert(Car).values(rows)`` of the batch carries 8 per row, all in one
statement; executemany and insertmanyvalues pages are exempt (SQLAlchemy pages them).
"""


def import_batch() -> list[dict[str, Any]]:
    """The exercise's 1,000 rows (distinct from every other batch of the notebook)."""
    return car_rows(1_000, start=50_000)


MAX_ROWS_PER_STATEMENT = MAX_BIND_VALUES // len(CAR_COLUMNS)
"""The most rows of VALUES one plainly executed statement may carry (12, i.e. 96 values).

Counted in the SQL itself, so it also catches the rows baked in *without* bind parameters
(``literal_binds``, an f-string): the bind-value judge alone cannot see those.
"""

MAX_COMMITS = 1
"""The exercise commits the batch once: a commit is a durable write (and a round trip)."""

_LEGACY_BULK = ("bulk_save_objects", "bulk_insert_mappings", "bulk_update_mappings")
_TUPLE_SEPARATOR = re.compile(r"\)\s*,\s*\(")


@dataclass
class _ImportWatch:
    """What the import check records beside ``cl.check``: one per attempt."""

    log: StatementLog
    cars_created: list[int]
    legacy: Counter[str]


@contextmanager
def _watch_import(db: Backend) -> Iterator[_ImportWatch]:
    """Statements (with commits), ``Car`` objects constructed, legacy bulk calls."""
    created = [0]
    legacy: Counter[str] = Counter()

    def on_init(_target: Any, _args: Any, _kwargs: Any) -> None:
        created[0] += 1

    originals = {name: getattr(Session, name) for name in _LEGACY_BULK}

    def spy(name: str) -> Callable[..., Any]:
        def call(self: Session, *args: Any, **kwargs: Any) -> Any:
            legacy[name] += 1
            return originals[name](self, *args, **kwargs)

        return call

    event.listen(Car, "init", on_init)
    for name in _LEGACY_BULK:
        setattr(Session, name, spy(name))
    try:
        with count_statements(db) as log:
            yield _ImportWatch(log, created, legacy)
    finally:
        for name, original in originals.items():
            setattr(Session, name, original)
        event.remove(Car, "init", on_init)


def _rows_in(statement: Any) -> int:
    """Rows of VALUES in one statement's SQL: ``(...), (...)`` groups after VALUES."""
    sql = statement.sql
    at = sql.upper().find("VALUES")
    return 0 if at < 0 else 1 + len(_TUPLE_SEPARATOR.findall(sql, at))


def _judge_import(
    verdict: CheckResult, watch: _ImportWatch, batch: Sequence[dict[str, Any]], dialect: str
) -> CheckResult:
    """Refine ``cl.check``'s verdict with the import's own judges (see :func:`check_import`)."""
    if verdict.status in {"not attempted", "wrong result"}:
        return verdict
    log, rows = watch.log, len(batch)
    commits = log.transactions.get("COMMIT", 0)
    facts = f"{log.count:,} statement(s), {commits:,} commit(s)"

    def fail(status: str, why: str) -> CheckResult:
        return CheckResult(
            status,
            f"✗ Right result, but {why}",
            statements=log.count,
            budget=verdict.budget,
            entities=verdict.entities,
        )

    inserts = [s for s in log.statements if s.verb == "INSERT" and "cars" in s.sql.lower()]
    seen = sum(s.parameter_sets * max(1, _rows_in(s)) for s in inserts)
    if seen < rows:
        return fail(
            "around SQLAlchemy",
            f"SQLAlchemy saw INSERTs for only {seen:,} of the {rows:,} rows ({facts}): the rows "
            "went through the raw driver connection. Use the session: "
            "session.execute(insert(Car), rows).",
        )
    baked = max((_rows_in(s) for s in log.statements if s.style == "execute"), default=0)
    if verdict.status == "one huge statement":  # cl.check counted its bind values
        return verdict
    if baked > MAX_ROWS_PER_STATEMENT:
        return fail(
            "one huge statement",
            f"one statement carried {baked:,} rows of VALUES in its SQL (at most "
            f"{MAX_ROWS_PER_STATEMENT}): that is a multi-VALUES statement built from the rows, "
            "with or without bind parameters. Pass the rows as execute parameters "
            "(executemany): session.execute(insert(Car), rows).",
        )
    if watch.legacy:
        names = ", ".join(f"Session.{name}()" for name in watch.legacy)
        return fail(
            "legacy bulk API",
            f"it used {names}, the legacy bulk API SQLAlchemy 2.0 keeps for compatibility. "
            "Use the ORM bulk insert: session.execute(insert(Car), rows).",
        )
    if watch.cars_created[0]:
        return fail(
            "built objects",
            f"it constructed {watch.cars_created[0]:,} Car objects ({facts}): the rows do not "
            "need objects. Use the ORM bulk insert: session.execute(insert(Car), rows), one "
            "executemany.",
        )
    if verdict.status == "over budget":
        per_row = [s for s in inserts if s.parameter_sets == 1 and _rows_in(s) == 1]
        on_sqlite = dialect == "sqlite"
        if (
            on_sqlite
            and len(per_row) == rows
            and all("RETURNING" in s.sql.upper() for s in per_row)
        ):
            return fail(
                "over budget",
                f"{log.count:,} statements (the budget is {verdict.budget}): SQLAlchemy itself "
                "sent one INSERT ... RETURNING per row, because on SQLite ordered RETURNING "
                "(sort_by_parameter_order=True) cannot be batched. The import needs no ids: "
                "session.execute(insert(Car), rows).",
            )
        return verdict
    if verdict.status != "passed":
        return verdict
    if commits > MAX_COMMITS:
        return fail(
            "too many commits",
            f"{facts}: commit the batch once (each commit is a durable write, and a round "
            "trip on a network).",
        )
    return verdict


def _import_check_args(rows: Sequence[dict[str, Any]] | None) -> tuple[list, dict[str, Any]]:
    batch = list(import_batch() if rows is None else rows)
    judges = {
        "expected": expected_import(batch),
        "budget": IMPORT_BUDGET,
        "max_parameters": MAX_BIND_VALUES,
        "max_objects": 0,
    }
    return batch, judges


def check_import(
    import_fn: Callable[[Session, list[dict[str, Any]]], Any],
    db: Backend,
    rows: Sequence[dict[str, Any]] | None = None,
) -> CheckResult:
    """Judge a sync ``import_fn(session, rows)``.

    ``cl.check`` judges the rows read back (a missing commit or missing rows: wrong
    result), the statement budget, the bind values per statement and objects loaded; this
    check adds: every row went through a counted INSERT (not the raw driver), no plainly
    executed statement has more than :data:`MAX_ROWS_PER_STATEMENT` rows of VALUES in its
    SQL (``literal_binds`` or an f-string), no legacy ``bulk_*`` method, no ``Car`` object
    constructed (``add``/``add_all``/``bulk_save_objects``, on every backend), and at most
    :data:`MAX_COMMITS` commit.
    """
    batch, judges = _import_check_args(rows)
    with _watch_import(db) as watch:
        verdict = check(importing(import_fn, batch), db, **judges)
    return _judge_import(verdict, watch, batch, db.name)


async def acheck_import(
    import_fn: Callable[..., Any],
    db: Backend,
    rows: Sequence[dict[str, Any]] | None = None,
) -> CheckResult:
    """Like :func:`check_import` for ``async def import_fn(session, rows)`` (an AsyncSession)."""
    batch, judges = _import_check_args(rows)
    with _watch_import(db) as watch:
        verdict = await acheck(importing(import_fn, batch), db, **judges)
    return _judge_import(verdict, watch, batch, db.name)
