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
import gc
import inspect
import math
import statistics
import time
import tracemalloc
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pandas as pd
from sqlalchemy import Engine, event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util.concurrency import await_, in_greenlet

from .backends import Backend
from .progress import progress

__all__ = [
    "RoundTrip",
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
    "listening",
    "peak_memory",
    "quartiles",
    "round_trip_ms",
    "scaling",
    "simulate_round_trip",
    "speedup",
    "sync_engines",
    "table",
]

Target = Backend | Engine | AsyncEngine


def sync_engines(target: Target) -> list[Engine]:
    """The sync-level engines whose events describe everything ``target`` sends."""
    if isinstance(target, Backend):
        # touch both so statements sent by either sync or async code are seen
        return [target.sync_engine, target.engine.sync_engine]
    if isinstance(target, AsyncEngine):
        return [target.sync_engine]
    return [target]


@contextmanager
def listening(
    target: Target | Sequence[Engine], hooks: Sequence[tuple[str, Callable[..., Any]]]
) -> Iterator[list[Engine]]:
    """Attach engine event ``hooks`` (``(name, fn)`` pairs) for the block, then remove them.

    ``target`` is a course Backend (both its engines), an Engine, an AsyncEngine, or a list
    of engines. Yields the engines listened on.
    """
    engines = list(target) if isinstance(target, list | tuple) else sync_engines(target)
    for engine in engines:
        for name, hook in hooks:
            event.listen(engine, name, hook)
    try:
        yield engines
    finally:
        for engine in engines:
            for name, hook in hooks:
                event.remove(engine, name, hook)


# --------------------------------------------------------------------------- counting


class Statement(NamedTuple):
    """One statement sent to the driver: its SQL, how many parameter sets, and its duration."""

    sql: str
    parameter_sets: int
    executemany: bool
    seconds: float
    #: how the statement was executed: "execute", "executemany" or "insertmanyvalues"
    style: str = "execute"
    #: bind values in its largest parameter set (a multi-VALUES insert carries them all in one)
    parameters: int = 0

    @property
    def verb(self) -> str:
        """The first SQL keyword (SELECT, INSERT, ...), for grouping."""
        return self.sql.lstrip().split(None, 1)[0].upper() if self.sql.strip() else ""


@dataclass
class StatementLog:
    """What :func:`count_statements` recorded, in the order the driver received it."""

    statements: list[Statement] = field(default_factory=list)
    #: BEGIN, COMMIT and ROLLBACK seen (SQLAlchemy's transaction boundaries): each is one
    #: more round trip to a networked server, even where SQLite's driver sends nothing
    transactions: dict[str, int] = field(default_factory=dict)

    @property
    def round_trips(self) -> int:
        """Statements plus transaction boundaries: what a network would charge for."""
        return self.count + sum(self.transactions.values())

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


def _width(params: Any, many: bool) -> int:
    """Bind values in the largest parameter set of one cursor execution."""
    sets = params if many else [params]
    return max((len(p) for p in sets if isinstance(p, list | tuple | Mapping)), default=0)


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
        style = getattr(getattr(context, "execute_style", None), "name", "EXECUTE").lower()
        record(
            Statement(sql, len(params) if many else 1, many, elapsed, style, _width(params, many))
        )

    def boundary(kind: str) -> Callable[..., None]:
        def hook(*_args: Any) -> None:
            log.transactions[kind] = log.transactions.get(kind, 0) + 1

        return hook

    hooks = [("before_cursor_execute", before), ("after_cursor_execute", after)]
    hooks += [(name, boundary(name.upper())) for name in ("begin", "commit", "rollback")]
    with listening(target, hooks):
        yield log


# ------------------------------------------------------------------ simulated round trip

_round_trips: weakref.WeakKeyDictionary[Engine, float] = weakref.WeakKeyDictionary()

#: The events a simulated network charges: every statement, and every BEGIN, COMMIT and
#: ROLLBACK (a real network charges for those too, whether or not SQL text is sent).
CHARGED_EVENTS = ("before_cursor_execute", "begin", "commit", "rollback")


def round_trip_ms(target: Target) -> float:
    """The simulated delay per round trip requested on ``target`` now (0 when none)."""
    return max((_round_trips.get(e, 0.0) for e in sync_engines(target)), default=0.0)


@dataclass
class RoundTrip:
    """What :func:`simulate_round_trip` did: the delay asked for, and each delay it really added.

    ``asyncio.sleep`` cannot wait less than the event loop's timer allows (about 1 ms with
    epoll), and ``time.sleep`` overshoots too, so the course reports the measured delay,
    never just the requested one.
    """

    requested_ms: float
    added_s: list[float] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)

    @property
    def charged(self) -> int:
        """How many round trips were charged (statements, BEGINs, COMMITs, ROLLBACKs)."""
        return len(self.added_s)

    @property
    def added_ms(self) -> float:
        """The median delay actually added per round trip (ms); 0 before any was charged."""
        return statistics.median(self.added_s) * 1000 if self.added_s else 0.0

    def summary(self) -> str:
        """One line: requested vs measured delay, and what was charged (volatile)."""
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.events.items()))
        return (
            f"requested {self.requested_ms:g} ms per round trip, measured {self.added_ms:.3f} ms "
            f"(median of {self.charged}: {kinds or 'none yet'})"
        )


@contextmanager
def simulate_round_trip(target: Target, ms: float = 1.0) -> Iterator[RoundTrip]:
    """Add a delay of about ``ms`` before every statement and every BEGIN/COMMIT/ROLLBACK.

    It is **simulated**: results measured inside are labelled so in tables and charts, and
    the yielded :class:`RoundTrip` records the delay each charge really added. Async engines
    wait with ``asyncio.sleep`` (never a busy loop, so other tasks keep running while one
    waits); sync engines with ``time.sleep`` (sync code blocks its thread on a real network
    too).
    """
    seconds = ms / 1000.0
    trip = RoundTrip(ms)
    clock = time.perf_counter

    def charge(kind: str, wait: Callable[[], None]) -> Callable[..., None]:
        def hook(*_args: Any) -> None:
            start = clock()
            wait()
            trip.added_s.append(clock() - start)
            trip.events[kind] = trip.events.get(kind, 0) + 1

        return hook

    def sync_wait() -> None:
        time.sleep(seconds)

    def async_wait() -> None:
        if in_greenlet():
            await_(asyncio.sleep(seconds))
        else:  # e.g. a rollback while a connection is garbage collected: no loop to yield to
            time.sleep(seconds)

    kinds = {"before_cursor_execute": "statement"}
    hooks: list[tuple[Engine, str, Callable[..., None]]] = []
    if isinstance(target, Backend):
        pairs = [(target.sync_engine, sync_wait), (target.engine.sync_engine, async_wait)]
    elif isinstance(target, AsyncEngine):
        pairs = [(target.sync_engine, async_wait)]
    else:
        pairs = [(target, sync_wait)]
    for engine, wait in pairs:
        for name in CHARGED_EVENTS:
            hooks.append((engine, name, charge(kinds.get(name, name.upper()), wait)))
        _round_trips[engine] = _round_trips.get(engine, 0.0) + ms  # nested blocks add up
    for engine, name, hook in hooks:
        event.listen(engine, name, hook)
    try:
        yield trip
    finally:
        for engine, name, hook in hooks:
            event.remove(engine, name, hook)
        for engine, _wait in pairs:
            remaining = _round_trips.get(engine, 0.0) - ms
            if remaining > 1e-9:
                _round_trips[engine] = remaining
            else:
                _round_trips.pop(engine, None)


# ----------------------------------------------------------------------------- timing

#: Fewer samples than this cannot give an interquartile range.
MIN_REPEATS = 5
#: Calls are repeated inside one sample until it lasts at least this long (as timeit does).
MIN_SAMPLE_S = 0.005
#: ... but never more than this many calls in one sample.
MAX_NUMBER = 1000


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """First quartile, median and third quartile (inclusive method: always within the data)."""
    if len(values) < 2:
        only = values[0]
        return only, only, only
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def iqr(values: Sequence[float]) -> float:
    """The spread the course reports: the interquartile range, Q3 - Q1."""
    q1, _, q3 = quartiles(values)
    return q3 - q1


class _GcClock:
    """Total time the garbage collector ran while it was installed (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.collections += 1

    def __enter__(self) -> _GcClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self)


@dataclass
class Timing:
    """Repeated timings of one callable, per call (seconds), after warm-up was discarded.

    Each of ``runs_s`` is one sample: ``number`` back-to-back calls, divided by ``number``.
    ``gc_s`` is the garbage collector's time per call in each sample.
    """

    label: str
    runs_s: list[float]
    statements: int | float | None = None
    number: int = 1
    gc_s: list[float] = field(default_factory=list)
    #: statements plus BEGIN/COMMIT/ROLLBACK per call (what a network charges)
    round_trips: int | float | None = None

    @property
    def median_s(self) -> float:
        """Median of the samples."""
        return statistics.median(self.runs_s)

    @property
    def q1_s(self) -> float:
        """First quartile of the samples."""
        return quartiles(self.runs_s)[0]

    @property
    def q3_s(self) -> float:
        """Third quartile of the samples."""
        return quartiles(self.runs_s)[2]

    @property
    def spread_s(self) -> float:
        """Interquartile range of the samples."""
        return iqr(self.runs_s)

    @property
    def gc_median_s(self) -> float:
        """Median garbage-collector time per call."""
        return statistics.median(self.gc_s) if self.gc_s else 0.0

    def __repr__(self) -> str:
        return (
            f"{self.label}: median {self.median_s * 1000:.3f} ms "
            f"(IQR {self.spread_s * 1000:.3f} ms) over {len(self.runs_s)} samples "
            f"of {self.number} call(s)"
        )


def label_of(fn: Callable[..., Any]) -> str:
    """A strategy's label: the first line of its docstring, else its name."""
    doc = inspect.getdoc(fn)
    return doc.splitlines()[0].strip() if doc else getattr(fn, "__name__", repr(fn))


def _next_number(number: int) -> int:
    """The next block size of the 1, 2, 5, 10, 20, 50, ... ladder (capped at MAX_NUMBER)."""
    digits = 10 ** (len(str(number)) - 1)
    lead = number // digits
    step = {1: 2, 2: 5}.get(lead, 10)
    return min(MAX_NUMBER, step * digits)


#: What a sample is timed with: the wall clock, or the process's CPU time (``clock="cpu"``).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


class _Runs:
    """The timing of one strategy, driven by :func:`_plan` (sync and async alike).

    1. ``warmup`` calls, discarded; then, unless ``number`` is given, blocks of 1, 2, 5, 10,
       ... calls (discarded too) until one lasts ``min_sample_s``: that many calls make a
       sample, so each sample is long enough for ``perf_counter`` to time well;
    2. ``repeats`` samples, timed with ``perf_counter`` (``clock="cpu"``: the process's CPU
       time, for strategies that only compute in Python), with statements counted and
       garbage-collector pauses clocked. Unless ``collect=False``, everything alive is
       collected once and frozen (:func:`_frozen`), and each sample starts after a
       ``gc.collect()`` of what the previous samples left: no sample pays for garbage made
       before it, and no collection walks the whole process between samples.
    """

    def __init__(
        self,
        label: str,
        warmup: int,
        repeats: int,
        target: Target | None,
        *,
        number: int | None,
        min_sample_s: float,
        collect: bool,
        clock: str = "wall",
    ):
        if clock not in CLOCKS:
            raise ValueError(f"clock={clock!r}: use one of {', '.join(CLOCKS)}")
        if repeats < MIN_REPEATS:
            raise ValueError(
                f"repeats={repeats}: at least {MIN_REPEATS} samples are needed for an IQR"
            )
        if warmup < 1:
            raise ValueError("warmup must be >= 1: the first call is never representative")
        if number is not None and number < 1:
            raise ValueError("number must be >= 1")
        self.label, self.warmup, self.repeats, self.target = label, warmup, repeats, target
        self.number, self.min_sample_s, self.collect = number, min_sample_s, collect
        self.now = CLOCKS[clock]
        self.runs: list[float] = []
        self.gc: list[float] = []
        self.statements: int | float | None = None
        self.round_trips: int | float | None = None
        self.last_call_s = 0.0

    def preparation(self) -> Iterator[tuple[int, Any]]:
        """(calls, block): the warm-up calls, then the calibration blocks (all discarded)."""
        for _ in range(self.warmup):
            yield 1, self._warmup(1)
        if self.number is None:
            # as timeit.autorange: 1, 2, 5, 10, 20, ... calls until a block is long enough.
            # A first call is often cold (compiling, connecting): when the warm-up alone was
            # long enough, one more single call decides whether one call really is.
            number = 1
            if self.last_call_s >= self.min_sample_s:
                yield 1, self._warmup(1)
            while self.last_call_s < self.min_sample_s and number < MAX_NUMBER:
                number = _next_number(number)
                yield number, self._warmup(number)
            self.number = number

    def sample(self) -> Any:
        """One timed sample of ``number`` calls (the caller makes the calls inside it)."""
        return self._sample()

    @contextmanager
    def _warmup(self, number: int) -> Iterator[None]:
        start = self.now()
        yield
        self.last_call_s = self.now() - start  # of the whole block of `number` calls

    @contextmanager
    def _sample(self) -> Iterator[None]:
        number = self.number or 1
        if self.collect:
            gc.collect()
        log: StatementLog | None = None
        with ExitStack() as stack:
            if self.target is not None:
                log = stack.enter_context(count_statements(self.target))
            clock = stack.enter_context(_GcClock())
            start = self.now()
            yield
            elapsed = self.now() - start
        self.runs.append(elapsed / number)
        self.gc.append(clock.seconds / number)
        if log is not None:  # the last sample: the steady state
            self.statements = _per_call(log.count, number)
            self.round_trips = _per_call(log.round_trips, number)

    def result(self) -> Timing:
        return Timing(
            self.label, self.runs, self.statements, self.number or 1, self.gc, self.round_trips
        )


def _per_call(total: int, number: int) -> int | float:
    per_call = total / number
    return int(per_call) if per_call.is_integer() else per_call


@contextmanager
def _frozen(collect: bool) -> Iterator[None]:
    """Collect everything once and freeze the survivors, for the length of a measurement.

    Frozen objects (the kernel's own included) sit in the permanent generation, so the
    ``gc.collect()`` before each sample walks only what the strategies left behind
    (microseconds), instead of every object in the process: a full collection evicts the CPU
    caches and made the next calls several times slower (measured: 0.16 ms -> 1.1 ms).
    """
    if collect:
        gc.collect()
        gc.freeze()
    try:
        yield
    finally:
        if collect:
            gc.unfreeze()


def _plan(runs: Sequence[_Runs]) -> Iterator[tuple[int, int, Any]]:
    """(which run, calls, block): each run's preparation, then the samples, interleaved.

    Sample i of every run is taken before sample i + 1 of any: a slow spell on a shared
    machine then lands on all strategies alike, instead of on one strategy's whole timing,
    so rankings hold under load.
    """
    for index, run in enumerate(runs):
        for calls, block in run.preparation():
            yield index, calls, block
    for _ in range(max(run.repeats for run in runs)):
        for index, run in enumerate(runs):
            yield index, run.number or 1, run.sample()


def _make_runs(labels: Sequence[str], target: Target | None, **timing: Any) -> list[_Runs]:
    options = {"warmup": 1, "repeats": MIN_REPEATS, "number": None}
    options.update(min_sample_s=MIN_SAMPLE_S, collect=True, clock="wall")
    unknown = set(timing) - set(options)
    if unknown:
        raise TypeError(f"unknown timing option(s): {', '.join(sorted(unknown))}")
    options.update(timing)
    return [
        _Runs(
            label,
            options["warmup"],
            options["repeats"],
            target,
            number=options["number"],
            min_sample_s=options["min_sample_s"],
            collect=options["collect"],
            clock=options["clock"],
        )
        for label in labels
    ]


def _run_all(
    calls: Sequence[Callable[[], Any]], labels: Sequence[str], target: Target | None, **timing: Any
) -> list[Timing]:
    """Time several sync calls together (see :func:`_plan`)."""
    runs = _make_runs(labels, target, **timing)
    with _frozen(runs[0].collect):
        for index, count, block in _plan(runs):
            fn = calls[index]
            with block:
                for _ in range(count):
                    fn()
    return [run.result() for run in runs]


async def _arun_all(
    calls: Sequence[Callable[[], Any]], labels: Sequence[str], target: Target | None, **timing: Any
) -> list[Timing]:
    """Like :func:`_run_all`, awaiting each call that returns an awaitable."""
    runs = _make_runs(labels, target, **timing)
    with _frozen(runs[0].collect):
        for index, count, block in _plan(runs):
            fn = calls[index]
            with block:
                for _ in range(count):
                    result = fn()
                    if inspect.isawaitable(result):
                        await result
    return [run.result() for run in runs]


def benchmark(
    fn: Callable[[], Any],
    *,
    warmup: int = 1,
    repeats: int = MIN_REPEATS,
    target: Target | None = None,
    label: str | None = None,
    number: int | None = None,
    min_sample_s: float = MIN_SAMPLE_S,
    collect: bool = True,
    clock: str = "wall",
) -> Timing:
    """Time ``fn()``: ``warmup`` discarded calls, then ``repeats`` samples (perf_counter).

    A sample is ``number`` calls in a row (calibrated from the warm-up when not given, so a
    sample lasts at least ``min_sample_s``), after a ``gc.collect()`` unless ``collect`` is
    false. With ``target``, the statements per call are counted too (in the last sample).
    ``clock="cpu"`` times the process's CPU time instead of the wall clock: for work that only
    computes in Python (building or compiling a statement), it leaves out the time the
    process spent waiting for a core, so a busy machine does not reorder the strategies.
    """
    if inspect.iscoroutinefunction(fn):
        raise TypeError("fn is a coroutine function: use `await abenchmark(fn, ...)`")
    options = dict(warmup=warmup, repeats=repeats, number=number)
    options.update(min_sample_s=min_sample_s, collect=collect, clock=clock)
    return _run_all([fn], [label or label_of(fn)], target, **options)[0]


async def abenchmark(
    fn: Callable[[], Any],
    *,
    warmup: int = 1,
    repeats: int = MIN_REPEATS,
    target: Target | None = None,
    label: str | None = None,
    number: int | None = None,
    min_sample_s: float = MIN_SAMPLE_S,
    collect: bool = True,
    clock: str = "wall",
) -> Timing:
    """Like :func:`benchmark`, awaiting ``fn()`` when it returns an awaitable."""
    options = dict(warmup=warmup, repeats=repeats, number=number)
    options.update(min_sample_s=min_sample_s, collect=collect, clock=clock)
    return (await _arun_all([fn], [label or label_of(fn)], target, **options))[0]


# ------------------------------------------------------------------------- comparisons


def _backend_label(db: Backend) -> str:
    rtt = round_trip_ms(db)
    return f"{db.name} + simulated {rtt:g} ms/round trip" if rtt else db.name


def base_backend(labels: pd.Series) -> pd.Series:
    """Backend names without the "+ simulated ..." suffix that simulated runs carry."""
    return labels.str.split(" + ", regex=False).str[0]


def _scale_of(db: Backend) -> str:
    """The dataset scale a backend holds ("small" for course_small); "" for scratch databases."""
    return db.database.removeprefix("course_") if db.database.startswith("course_") else ""


#: Columns of every comparison frame, in order (``peak_kib`` only with ``memory=True``).
COLUMNS = [
    "strategy",
    "backend",
    "n",
    "median_ms",
    "q1_ms",
    "q3_ms",
    "iqr_ms",
    "statements",
    "round_trips",
    "calls_per_sample",
    "gc_ms",
    "simulated_ms",
    "ratio",
]


def _significant(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant figures: no fake precision in tables."""
    if not value or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def _frame(rows: list[dict[str, Any]], title: str | None) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    fastest = frame.groupby(["backend", "n"])["median_ms"].transform("min")
    frame["ratio"] = (frame["median_ms"] / fastest).round(2)
    for column in ("median_ms", "q1_ms", "q3_ms", "iqr_ms", "gc_ms", "peak_kib"):
        if column in frame:
            frame[column] = frame[column].map(_significant)
    scales = sorted(set(frame.pop("scale")) - {""})
    frame = frame[[c for c in COLUMNS if c in frame] + [c for c in frame if c not in COLUMNS]]
    frame.attrs.update(unit="ms", title=title, scales=scales)
    return frame


def _row(
    fn: Callable[..., Any], db: Backend, n: int, timing: Timing, peak: int | None
) -> dict[str, Any]:
    row = {
        "strategy": label_of(fn),
        "backend": _backend_label(db),
        "n": n,
        "median_ms": timing.median_s * 1000,
        "q1_ms": timing.q1_s * 1000,
        "q3_ms": timing.q3_s * 1000,
        "iqr_ms": timing.spread_s * 1000,
        "statements": timing.statements,
        "round_trips": timing.round_trips,
        "calls_per_sample": timing.number,
        "gc_ms": timing.gc_median_s * 1000,
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


def _groups(grid: list[Any]) -> list[list[Any]]:
    """The grid's rows grouped by (backend, n): the strategies timed together, interleaved."""
    groups: dict[tuple[int, int], list[Any]] = {}
    for item in grid:
        groups.setdefault((id(item[1]), item[2]), []).append(item)
    return list(groups.values())


def _progress(total: int, title: str | None, enabled: bool) -> Any:
    """One progress line over the grid (off unless asked); see :mod:`course_lib.progress`."""
    return progress(total, title or "measuring", enabled=enabled, unit="measurements")


def scaling(
    strategies: Iterable[Callable[[Backend, int], Any]],
    backends: Backend | Sequence[Backend],
    ns: Iterable[int],
    *,
    title: str | None = None,
    memory: bool = False,
    progress: bool = False,
    **timing: Any,
) -> pd.DataFrame:
    """Time each sync strategy ``fn(backend, n)`` on each backend for each n.

    Returns one row per (strategy, backend, n): strategy, backend, n, ``median_ms``,
    ``q1_ms``, ``q3_ms``, ``iqr_ms`` (per call), ``statements`` (per call),
    ``calls_per_sample``, ``gc_ms`` (collector time per call), ``simulated_ms`` and ``ratio``
    (to the fastest at that backend and n). ``memory=True`` adds ``peak_kib``: tracemalloc's
    peak in one extra, untimed run. ``timing`` goes to :func:`benchmark` (``repeats``,
    ``warmup``, ``number``, ``min_sample_s``, ``collect``, ``clock``).
    """
    rows = []
    grid = list(_grid(strategies, backends, ns))
    with _progress(len(grid), title, progress) as bar:
        for group in _groups(grid):
            db = group[0][1]
            labels = [label_of(fn) for fn, *_ in group]
            results = _run_all([call for *_, call in group], labels, db, **timing)
            for (fn, _db, n, call), result in zip(group, results, strict=True):
                rows.append(_row(fn, db, n, result, peak_memory(call) if memory else None))
                bar.update()
    return _frame(rows, title)


async def ascaling(
    strategies: Iterable[Callable[[Backend, int], Any]],
    backends: Backend | Sequence[Backend],
    ns: Iterable[int],
    *,
    title: str | None = None,
    memory: bool = False,
    progress: bool = False,
    **timing: Any,
) -> pd.DataFrame:
    """Like :func:`scaling` for strategies that may be ``async def``."""
    rows = []
    grid = list(_grid(strategies, backends, ns))
    with _progress(len(grid), title, progress) as bar:
        for group in _groups(grid):
            db = group[0][1]
            labels = [label_of(fn) for fn, *_ in group]
            results = await _arun_all([call for *_, call in group], labels, db, **timing)
            for (fn, _db, n, call), result in zip(group, results, strict=True):
                peak = await apeak_memory(call) if memory else None
                rows.append(_row(fn, db, n, result, peak))
                bar.update()
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
    medians = frame.set_index(["strategy", "backend", "n"])["median_ms"]
    result = medians.xs(pick["slow"], level="strategy") / medians.xs(pick["fast"], level="strategy")
    return result.rename(f"{pick['slow']} / {pick['fast']}")


def table(
    frame: pd.DataFrame,
    values: str | Sequence[str] = "median_ms",
    *,
    by: str = "backend",
) -> pd.DataFrame:
    """A readable view of a comparison frame: strategies as rows, one column per ``by`` value.

    >>> frame = pd.DataFrame({"strategy": ["a", "a"], "backend": ["sqlite", "postgresql"],
    ...                       "n": [1, 1], "median_ms": [1.23456, 2.5]})
    >>> table(frame).to_dict()
    {'postgresql': {'a': 2.5}, 'sqlite': {'a': 1.235}}
    """
    wanted = [values] if isinstance(values, str) else list(values)
    index = ["strategy"] + (["n"] if "n" in frame and frame["n"].nunique() > 1 else [])
    pivot = frame.pivot_table(index=index, columns=by, values=wanted, sort=False, aggfunc="first")
    pivot = pivot.map(_significant)
    if len(wanted) == 1:
        pivot.columns = pivot.columns.droplevel(0)
    pivot.columns.name = None
    return pivot


def added_latency(local: pd.DataFrame, simulated: pd.DataFrame) -> pd.DataFrame:
    """What a simulated round trip added to each strategy: in total, per statement and per
    round trip (statements plus BEGIN/COMMIT/ROLLBACK, when the frames count them), in ms.

    Rows are matched on strategy, n and the backend's name (its label without the
    "+ simulated" suffix), so frames covering several backends line up correctly.
    """
    keys = ["strategy", "backend", "n"]
    local = local.assign(backend=base_backend(local["backend"]))
    simulated = simulated.assign(backend=base_backend(simulated["backend"]))
    joined = local.merge(simulated, on=keys, suffixes=("_local", "_simulated"))
    joined["added_ms"] = joined["median_ms_simulated"] - joined["median_ms_local"]
    joined["statements"] = joined["statements_simulated"]
    joined["added_per_statement_ms"] = joined["added_ms"] / joined["statements"]
    if "round_trips_simulated" in joined:
        joined["round_trips"] = joined["round_trips_simulated"]
        joined["added_per_round_trip_ms"] = joined["added_ms"] / joined["round_trips"]
    extra = ["round_trips", "added_per_round_trip_ms"] if "round_trips" in joined else []
    return joined[
        [
            *keys,
            "statements",
            "median_ms_local",
            "median_ms_simulated",
            "added_ms",
            "added_per_statement_ms",
            *extra,
        ]
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
