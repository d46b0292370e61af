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
import inspect
import itertools
import pstats
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from sqlalchemy import create_engine, delete, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from ..backends import Backend
from ..measure import StatementLog, label_of
from ..models import Car, Dealership
from ..plots import bar_chart

__all__ = [
    "CAR_COLUMNS",
    "DEALERSHIPS",
    "Profile",
    "asyncpg_copy",
    "asyncpg_executemany",
    "car_rows",
    "expected_import",
    "fastest_vs_raw",
    "importing",
    "per_row_speedup",
    "price_feed",
    "profile",
    "ratio_chart",
    "raw_executemany",
    "reference_import_cars",
    "reset_cars",
    "sql_digest",
    "vs_raw",
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
    ``backend`` column becomes e.g. ``"sqlite (sqlite3)"``; ``× raw`` is the ratio.
    """
    raw_labels = _labels(raw)
    out = pd.DataFrame(
        {
            "strategy": frame["strategy"],
            "backend": [
                f"{b} ({driver or _DRIVERS.get(b, b)})" for b in frame["backend"].astype(str)
            ],
            "rows": frame["n"],
            "statements": frame["statements"],
            "median": frame["median"],
            "spread": frame["spread"],
        }
    )
    out["µs per row"] = out["median"] * 1000 / out["rows"]
    out["rows per s"] = (1e6 / out["µs per row"]).round(-2).astype(int)
    is_raw = out["strategy"].isin(raw_labels)
    if not is_raw.any():
        raise ValueError(f"none of the raw strategies {raw_labels} is in the frame")
    fastest_raw = out[is_raw].groupby("backend")["µs per row"].min()
    out["× raw"] = out["µs per row"] / out["backend"].map(fastest_raw)
    out.attrs.update(frame.attrs)
    out.attrs["raw"] = raw_labels
    return out.reset_index(drop=True)


def per_row_speedup(
    table: pd.DataFrame, slow: str | Callable[..., Any], fast: str | Callable[..., Any]
) -> pd.Series:
    """Time per row of ``slow`` divided by that of ``fast``, per backend ("×N faster")."""
    slow_label, fast_label = _labels([slow, fast])
    per_row = table.set_index(["strategy", "backend"])["µs per row"]
    result = per_row.xs(slow_label, level="strategy") / per_row.xs(fast_label, level="strategy")
    return result.rename(f"{slow_label} / {fast_label}")


def fastest_vs_raw(table: pd.DataFrame, backend: str) -> tuple[str, float]:
    """The fastest non-raw strategy on ``backend`` (a prefix such as "sqlite") and its × raw."""
    part = table[table["backend"].str.startswith(backend)]
    part = part[~part["strategy"].isin(table.attrs.get("raw", []))]
    best = part.loc[part["× raw"].idxmin()]
    return str(best["strategy"]), float(best["× raw"])


def ratio_chart(table: pd.DataFrame, title: str) -> Figure:
    """The ``× raw`` column of :func:`vs_raw` as bars on a log axis, with the raw driver at 1."""
    frame = table.drop(columns=["spread"])
    frame.attrs = {}  # no "scale" in the title: scratch tables are not a dataset scale
    fig = bar_chart(frame, title, y="× raw")
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
    """New prices for cars 1..n: car id -> price, different on every call.

    Each call shifts the prices, so every run of an update strategy really changes every
    row (the unit of work skips attributes set to the value they already have).

    >>> a, b = price_feed(3), price_feed(3)
    >>> sorted(a) == [1, 2, 3] and all(a[i] != b[i] for i in a)
    True
    """
    run = next(_runs)
    return {car_id: 5_000 + 100 * ((car_id + run) % 700) for car_id in range(1, n + 1)}


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


def profile(strategies: dict[str, Callable[[], Any]], *, repeats: int = 5) -> Profile:
    """Run each ``fn()`` once untimed, then ``repeats`` times under cProfile.

    ``areas``: milliseconds per run spent in each area (rows) by strategy (columns), plus a
    total. ``functions``: the costliest functions (internal time per run) of each strategy.
    cProfile adds a cost to every Python call, so Python-heavy areas look a little larger
    than they are: read the ranking, not the last digit.

    >>> p = profile({"sum": lambda: sum(range(1000))}, repeats=2)
    >>> list(p.areas.columns)
    ['sum']
    """
    areas: dict[str, dict[str, float]] = {}
    top: list[dict[str, Any]] = []
    for label, fn in strategies.items():
        fn()  # warm-up: connect and compile outside the profile
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(repeats):
            fn()
        profiler.disable()
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
