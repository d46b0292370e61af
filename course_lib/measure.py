"""Honest measurement: count statements, time with warm-up and repeats, compare strategies.

Count what an engine really sends (engine events, not guesses):

>>> from sqlalchemy import text
>>> from course_lib.backends import sqlite
>>> db = sqlite("course_tiny")
>>> with count_statements(db) as log, db.Session() as s:
...     _ = s.scalar(text("select 1"))
>>> log.count
1

Time a strategy (``perf_counter``; warm-up runs are discarded; median and IQR reported):

>>> timing = benchmark(lambda: sum(range(1000)), warmup=1, repeats=5)
>>> timing.runs_s.__len__()
5

Sync and async variants share one implementation: ``benchmark``/``abenchmark``,
``compare``/``acompare``, ``scaling``/``ascaling``, ``peak_memory``/``apeak_memory``.
A strategy is a small function ``fn(backend, n)`` whose docstring's first line is its label.
"""

from __future__ import annotations

import asyncio
import inspect
import statistics
import time
import tracemalloc
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pandas as pd
from sqlalchemy import Engine, event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

from .backends import Backend

__all__ = [
    "Statement",
    "StatementLog",
    "Timing",
    "abenchmark",
    "acompare",
    "added_latency",
    "apeak_memory",
    "ascaling",
    "benchmark",
    "compare",
    "count_statements",
    "iqr",
    "label_of",
    "peak_memory",
    "round_trip_ms",
    "scaling",
    "simulate_round_trip",
    "speedup",
]

Target = Backend | Engine | AsyncEngine


def _sync_engines(target: Target) -> list[Engine]:
    """The sync-level engines whose events describe everything ``target`` sends."""
    if isinstance(target, Backend):
        # touch both so statements sent by either sync or async code are seen
        return [target.sync_engine, target.engine.sync_engine]
    if isinstance(target, AsyncEngine):
        return [target.sync_engine]
    return [target]


# --------------------------------------------------------------------------- counting


class Statement(NamedTuple):
    """One statement sent to the driver: its SQL, how many parameter sets, and its duration."""

    sql: str
    parameter_sets: int
    executemany: bool
    seconds: float

    @property
    def verb(self) -> str:
        """The first SQL keyword (SELECT, INSERT, ...), for grouping."""
        return self.sql.lstrip().split(None, 1)[0].upper() if self.sql.strip() else ""


@dataclass
class StatementLog:
    """What :func:`count_statements` recorded, in the order the driver received it."""

    statements: list[Statement] = field(default_factory=list)

    @property
    def count(self) -> int:
        """How many statements (an executemany counts once: it is one round of the driver)."""
        return len(self.statements)

    @property
    def parameter_sets(self) -> int:
        """How many parameter sets were sent in all (rows, for an executemany)."""
        return sum(s.parameter_sets for s in self.statements)

    @property
    def sql(self) -> list[str]:
        """The SQL of each statement."""
        return [s.sql for s in self.statements]

    def summary(self) -> pd.DataFrame:
        """Statements grouped by their SQL: how many times each was sent."""
        if not self.statements:
            return pd.DataFrame(columns=["sql", "times", "parameter_sets"])
        frame = pd.DataFrame(
            {
                "sql": [_one_line(s.sql) for s in self.statements],
                "parameter_sets": [s.parameter_sets for s in self.statements],
            }
        )
        grouped = frame.groupby("sql", sort=False).agg(
            times=("sql", "size"), parameter_sets=("parameter_sets", "sum")
        )
        return grouped.reset_index()

    def show(self, limit: int = 5, width: int = 110) -> str:
        """The first ``limit`` statements as text, one line each (deterministic: no timings)."""
        lines = [f"{self.count} statement(s)"]
        for i, stmt in enumerate(self.statements[:limit], 1):
            sql = _one_line(stmt.sql)
            sql = sql if len(sql) <= width else sql[: width - 1] + "…"
            many = f"  [{stmt.parameter_sets} parameter sets]" if stmt.executemany else ""
            lines.append(f"{i:>3}. {sql}{many}")
        if self.count > limit:
            lines.append(f"     … and {self.count - limit} more")
        return "\n".join(lines)


def _one_line(sql: str) -> str:
    return " ".join(sql.split())


@contextmanager
def count_statements(target: Target) -> Iterator[StatementLog]:
    """Record every statement ``target`` sends while the block runs.

    ``target`` is a :class:`Backend` (both its engines), an ``Engine`` or an ``AsyncEngine``.
    """
    log = StatementLog()

    record = log.statements.append
    clock = time.perf_counter

    # These run for every statement, so they do as little as possible: the start time
    # rides on the execution context, and a Statement is a plain named tuple.
    def before(_conn: Any, _cur: Any, _sql: str, _params: Any, context: Any, _many: bool) -> None:
        context._course_t0 = clock()

    def after(_conn: Any, _cur: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        elapsed = clock() - context._course_t0
        # insertmanyvalues sends each batch as ONE parameter set (flat list or dict), even
        # though the event says executemany: only a list of sets is a real executemany
        many = (
            many
            and isinstance(params, list | tuple)
            and bool(params)
            and isinstance(params[0], tuple | list | Mapping)
        )
        record(Statement(sql, len(params) if many else 1, many, elapsed))

    engines = _sync_engines(target)
    for engine in engines:
        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "after_cursor_execute", after)
    try:
        yield log
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", before)
            event.remove(engine, "after_cursor_execute", after)


# ------------------------------------------------------------------ simulated round trip

_round_trips: weakref.WeakKeyDictionary[Engine, float] = weakref.WeakKeyDictionary()


def round_trip_ms(target: Target) -> float:
    """The simulated delay per statement currently added to ``target`` (0 when none)."""
    return max((_round_trips.get(e, 0.0) for e in _sync_engines(target)), default=0.0)


@contextmanager
def simulate_round_trip(target: Target, ms: float = 0.5) -> Iterator[float]:
    """Add a fixed ``ms`` delay before every statement, like a network hop would.

    It is **simulated**: results measured inside are labelled so in tables and charts.
    Async engines sleep with ``asyncio.sleep`` (other tasks keep running); sync engines
    with ``time.sleep``.
    """
    seconds = ms / 1000.0

    def sync_delay(*_args: Any) -> None:
        # sleep most of it, then spin: time.sleep alone overshoots sub-millisecond delays
        deadline = time.perf_counter() + seconds
        time.sleep(max(0.0, seconds - 0.0002))
        while time.perf_counter() < deadline:
            pass

    def async_delay(*_args: Any) -> None:
        # asyncio.sleep overshoots by a millisecond or more (the loop's timer granularity):
        # await most of a long delay, then spin the last 2 ms; short delays spin entirely.
        deadline = time.perf_counter() + seconds
        if seconds > 0.002:
            await_only(asyncio.sleep(seconds - 0.002))
        while time.perf_counter() < deadline:
            pass

    hooks: list[tuple[Engine, Callable[..., None]]] = []
    if isinstance(target, Backend):
        hooks = [(target.sync_engine, sync_delay), (target.engine.sync_engine, async_delay)]
    elif isinstance(target, AsyncEngine):
        hooks = [(target.sync_engine, async_delay)]
    else:
        hooks = [(target, sync_delay)]
    for engine, hook in hooks:
        event.listen(engine, "before_cursor_execute", hook)
        _round_trips[engine] = _round_trips.get(engine, 0.0) + ms  # nested blocks add up
    try:
        yield ms
    finally:
        for engine, hook in hooks:
            event.remove(engine, "before_cursor_execute", hook)
            remaining = _round_trips.get(engine, 0.0) - ms
            if remaining > 1e-9:
                _round_trips[engine] = remaining
            else:
                _round_trips.pop(engine, None)


# ----------------------------------------------------------------------------- timing


def iqr(values: Sequence[float]) -> float:
    """The spread the course reports: interquartile range (max - min for fewer than 4 values)."""
    if len(values) < 4:
        return max(values) - min(values)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q3 - q1


@dataclass
class Timing:
    """Repeated timings of one callable (seconds), after the warm-up runs were discarded."""

    label: str
    runs_s: list[float]
    statements: int | None = None

    @property
    def median_s(self) -> float:
        """Median of the runs."""
        return statistics.median(self.runs_s)

    @property
    def spread_s(self) -> float:
        """Interquartile range of the runs (max - min when there are fewer than 4)."""
        return iqr(self.runs_s)

    def __repr__(self) -> str:
        return (
            f"{self.label}: median {self.median_s * 1000:.3f} ms "
            f"± {self.spread_s * 1000:.3f} ms IQR over {len(self.runs_s)} runs"
        )


def label_of(fn: Callable[..., Any]) -> str:
    """A strategy's label: the first line of its docstring, else its name."""
    doc = inspect.getdoc(fn)
    return doc.splitlines()[0].strip() if doc else getattr(fn, "__name__", repr(fn))


class _Runs:
    """The one timing loop both ``benchmark`` and ``abenchmark`` drive.

    Each item is a context manager around exactly one call; warm-up calls are not kept.
    """

    def __init__(self, label: str, warmup: int, repeats: int, target: Target | None):
        if repeats < 1 or warmup < 0:
            raise ValueError("repeats must be >= 1 and warmup >= 0")
        self.label, self.warmup, self.repeats, self.target = label, warmup, repeats, target
        self.runs: list[float] = []
        self.statements: int | None = None

    def __iter__(self) -> Iterator[Any]:
        for i in range(self.warmup + self.repeats):
            yield self._one(keep=i >= self.warmup)

    @contextmanager
    def _one(self, keep: bool) -> Iterator[None]:
        if self.target is None:
            start = time.perf_counter()
            yield
            elapsed = time.perf_counter() - start
        else:
            with count_statements(self.target) as log:
                start = time.perf_counter()
                yield
                elapsed = time.perf_counter() - start
            if keep:
                self.statements = log.count  # the last measured run: the steady state
        if keep:
            self.runs.append(elapsed)

    def result(self) -> Timing:
        return Timing(self.label, self.runs, self.statements)


def benchmark(
    fn: Callable[[], Any],
    *,
    warmup: int = 1,
    repeats: int = 5,
    target: Target | None = None,
    label: str | None = None,
) -> Timing:
    """Time ``fn()``: ``warmup`` discarded runs, then ``repeats`` measured with perf_counter.

    With ``target``, the statements of the last measured run are counted too.
    """
    if inspect.iscoroutinefunction(fn):
        raise TypeError("fn is a coroutine function: use `await abenchmark(fn, ...)`")
    runs = _Runs(label or label_of(fn), warmup, repeats, target)
    for run in runs:
        with run:
            fn()
    return runs.result()


async def abenchmark(
    fn: Callable[[], Any],
    *,
    warmup: int = 1,
    repeats: int = 5,
    target: Target | None = None,
    label: str | None = None,
) -> Timing:
    """Like :func:`benchmark`, awaiting ``fn()`` when it returns an awaitable."""
    runs = _Runs(label or label_of(fn), warmup, repeats, target)
    for run in runs:
        with run:
            result = fn()
            if inspect.isawaitable(result):
                await result
    return runs.result()


# ------------------------------------------------------------------------- comparisons


def _backend_label(db: Backend) -> str:
    rtt = round_trip_ms(db)
    return f"{db.name} + simulated {rtt:g} ms/statement" if rtt else db.name


def base_backend(labels: pd.Series) -> pd.Series:
    """Backend names without the "+ simulated ..." suffix that simulated runs carry."""
    return labels.str.split(" + ", regex=False).str[0]


def _scale_of(db: Backend) -> str:
    """The dataset scale a backend holds ("small" for course_small); "" for scratch databases."""
    return db.database.removeprefix("course_") if db.database.startswith("course_") else ""


def _frame(rows: list[dict[str, Any]], title: str | None) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    fastest = frame.groupby(["backend", "n"])["median"].transform("min")
    frame["ratio"] = frame["median"] / fastest
    scales = sorted(set(frame.pop("scale")) - {""})
    frame.attrs.update(unit="ms", title=title, scales=scales)
    return frame


def _row(
    fn: Callable[..., Any], db: Backend, n: int, timing: Timing, peak: int | None
) -> dict[str, Any]:
    row = {
        "strategy": label_of(fn),
        "backend": _backend_label(db),
        "n": n,
        "median": timing.median_s * 1000,
        "spread": timing.spread_s * 1000,
        "statements": timing.statements,
        "simulated_ms": round_trip_ms(db),
        "scale": _scale_of(db),
    }
    if peak is not None:
        row["peak_kib"] = peak / 1024
    return row


def _grid(
    strategies: Iterable[Callable[[Backend, int], Any]],
    backends: Backend | Sequence[Backend],
    ns: Iterable[int],
) -> Iterator[tuple[Callable[..., Any], Backend, int, Callable[[], Any]]]:
    """Every (strategy, backend, n) to measure, with the zero-argument call that runs it."""
    strategies, ns = list(strategies), list(ns)
    for db in [backends] if isinstance(backends, Backend) else list(backends):
        for n in ns:
            for fn in strategies:
                yield fn, db, n, (lambda fn=fn, db=db, n=n: fn(db, n))


def scaling(
    strategies: Iterable[Callable[[Backend, int], Any]],
    backends: Backend | Sequence[Backend],
    ns: Iterable[int],
    *,
    warmup: int = 1,
    repeats: int = 5,
    title: str | None = None,
    memory: bool = False,
) -> pd.DataFrame:
    """Time each sync strategy ``fn(backend, n)`` on each backend for each n.

    Returns one row per (strategy, backend, n) with columns strategy, backend, n, median
    and spread (ms), statements, simulated_ms and ratio (to the fastest at that backend and n).
    ``memory=True`` adds ``peak_kib``: tracemalloc's peak in one extra, untimed run.
    """
    rows = []
    for fn, db, n, call in _grid(strategies, backends, ns):
        timing = benchmark(call, warmup=warmup, repeats=repeats, target=db, label=label_of(fn))
        rows.append(_row(fn, db, n, timing, peak_memory(call) if memory else None))
    return _frame(rows, title)


async def ascaling(
    strategies: Iterable[Callable[[Backend, int], Any]],
    backends: Backend | Sequence[Backend],
    ns: Iterable[int],
    *,
    warmup: int = 1,
    repeats: int = 5,
    title: str | None = None,
    memory: bool = False,
) -> pd.DataFrame:
    """Like :func:`scaling` for strategies that may be ``async def``."""
    rows = []
    for fn, db, n, call in _grid(strategies, backends, ns):
        kwargs = {"warmup": warmup, "repeats": repeats, "target": db, "label": label_of(fn)}
        timing = await abenchmark(call, **kwargs)
        rows.append(_row(fn, db, n, timing, await apeak_memory(call) if memory else None))
    return _frame(rows, title)


def compare(
    strategies: Iterable[Callable[[Backend, int], Any]],
    backends: Backend | Sequence[Backend],
    n: int,
    **kwargs: Any,
) -> pd.DataFrame:
    """:func:`scaling` at a single n: one row per strategy and backend (``ratio`` ranks them)."""
    return scaling(strategies, backends, [n], **kwargs)


async def acompare(
    strategies: Iterable[Callable[[Backend, int], Any]],
    backends: Backend | Sequence[Backend],
    n: int,
    **kwargs: Any,
) -> pd.DataFrame:
    """:func:`ascaling` at a single n."""
    return await ascaling(strategies, backends, [n], **kwargs)


def speedup(
    frame: pd.DataFrame, slow: Callable[..., Any] | str, fast: Callable[..., Any] | str
) -> pd.Series:
    """Median of ``slow`` divided by median of ``fast``, per backend (and n): "×N faster"."""
    pick = {name: label_of(f) if callable(f) else f for name, f in (("slow", slow), ("fast", fast))}
    medians = frame.set_index(["strategy", "backend", "n"])["median"]
    result = medians.xs(pick["slow"], level="strategy") / medians.xs(pick["fast"], level="strategy")
    return result.rename(f"{pick['slow']} / {pick['fast']}")


def added_latency(local: pd.DataFrame, simulated: pd.DataFrame) -> pd.DataFrame:
    """What a simulated round trip added to each strategy: in total and per statement (ms).

    Rows are matched on strategy, n and the backend's name (its label without the
    "+ simulated" suffix), so frames covering several backends line up correctly.
    """
    keys = ["strategy", "backend", "n"]
    local = local.assign(backend=base_backend(local["backend"]))
    simulated = simulated.assign(backend=base_backend(simulated["backend"]))
    joined = local.merge(simulated, on=keys, suffixes=(" local", " simulated"))
    joined["added"] = joined["median simulated"] - joined["median local"]
    joined["statements"] = joined["statements simulated"]
    joined["added per statement"] = joined["added"] / joined["statements"]
    return joined[
        [*keys, "statements", "median local", "median simulated", "added", "added per statement"]
    ]


# ------------------------------------------------------------------------------ memory


@contextmanager
def _traced() -> Iterator[list[int]]:
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    peak: list[int] = []
    try:
        yield peak
    finally:
        _, top = tracemalloc.get_traced_memory()
        peak.append(max(0, top - base))
        if not was_tracing:
            tracemalloc.stop()


def peak_memory(fn: Callable[[], Any]) -> int:
    """Peak bytes Python allocated while ``fn()`` ran, above what was live before (tracemalloc)."""
    with _traced() as peak:
        fn()
    return peak[0]


async def apeak_memory(fn: Callable[[], Any]) -> int:
    """Like :func:`peak_memory`, awaiting ``fn()`` when it returns an awaitable."""
    with _traced() as peak:
        result = fn()
        if inspect.isawaitable(result):
            await result
    return peak[0]
