"""Prometheus metrics fed by engine and pool events: nothing is called by hand per query.

>>> from sqlalchemy import text
>>> from course_lib.backends import sqlite
>>> db = sqlite("course_tiny")
>>> with instrument(db.sync_engine) as metrics, db.Session() as session:
...     _ = session.scalar(text("SELECT count(*) FROM users"))
>>> metrics.value("sqlalchemy_statements_total", kind="select", backend="sqlite")
1.0

:func:`instrument` attaches listeners to an ``Engine`` (an ``AsyncEngine`` through its
``.sync_engine``, a :class:`~course_lib.backends.Backend`: both) and returns
:class:`EngineMetrics`, whose instruments live in a ``CollectorRegistry`` of their own:

- ``sqlalchemy_statement_duration_seconds``: a Histogram of each statement's time at the
  driver (``before_cursor_execute`` to ``after_cursor_execute``, ``perf_counter``),
  labelled ``kind`` (select, insert, update, delete, other) and ``backend``;
- ``sqlalchemy_statements_total`` and ``sqlalchemy_statement_errors_total`` (the
  ``handle_error`` event; labelled by the error's class too);
- pool gauges: ``sqlalchemy_pool_checked_out`` connections in use,
  ``sqlalchemy_pool_overflow`` (in use beyond ``pool_size``),
  ``sqlalchemy_pool_waiting`` (requests queued because the pool is at
  ``pool_size + max_overflow`` with no idle connection), and the Histogram
  ``sqlalchemy_pool_checkout_seconds`` (how long getting a connection took).

Checkouts are timed by wrapping the pool's ``connect()`` (SQLAlchemy has no event before a
checkout waits), so connections of ``engine.execution_options(...)`` copies, which share
the pool, are timed too; ``engine.dispose()`` makes a new pool, which is wrapped again.

A registry per instrumented engine, never the process-wide default: instrumenting again
(re-running a cell) replaces the previous instruments of that engine instead of raising
"Duplicated timeseries" or counting every statement twice. Serve it with
``prometheus_client.make_asgi_app(registry=metrics.registry)`` or
``start_http_server(port, registry=metrics.registry)``.
"""

from __future__ import annotations

import bisect
import functools
import math
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pandas as pd
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import Engine, event
from sqlalchemy.ext.asyncio import AsyncEngine

from .backends import Backend
from .measure import sync_engines

__all__ = [
    "DURATION_BUCKETS",
    "KINDS",
    "EngineMetrics",
    "PoolSample",
    "histogram_quantile",
    "instrument",
    "statement_kind",
    "statement_listeners",
]

#: Statement kinds, the ``kind`` label's values.
KINDS = ("select", "insert", "update", "delete", "other")

#: Upper bounds (seconds) for statement and checkout durations: from 0.1 ms, where a SQLite
#: lookup lives, to 10 s. prometheus_client's default starts at 5 ms, too coarse here.
DURATION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

Target = Backend | Engine | AsyncEngine


@functools.lru_cache(maxsize=4096)
def statement_kind(sql: str) -> str:
    """select, insert, update, delete or other, from the statement's first keyword.

    A ``WITH`` statement is named after the first data-changing keyword in it (else select).

    >>> statement_kind("  select 1"), statement_kind("WITH x AS (SELECT 1) DELETE FROM t")
    ('select', 'delete')
    >>> statement_kind("PRAGMA foreign_keys")
    'other'
    """
    words = sql.split(None, 1)
    first = words[0].lower() if words else ""
    if first == "with":
        lowered = sql.lower()
        found = [(lowered.find(f" {k} "), k) for k in ("insert", "update", "delete")]
        found = [(at, k) for at, k in found if at >= 0]
        return min(found)[1] if found else "select"
    return first if first in KINDS else "other"


class PoolSample(NamedTuple):
    """The pool gauges at one pool event (kept when ``instrument(..., timeline=True)``)."""

    seconds: float  #: since instrumentation began
    checked_out: int
    #: requests queued for a connection: the pool was at its maximum when they asked
    waiting: int


@dataclass
class _EnginePool:
    """The pool state of one engine, kept from its checkout and checkin events."""

    size: int
    out: int = 0
    backend: str = ""


@dataclass
class EngineMetrics:
    """The instruments fed by one :func:`instrument` call, in their own registry."""

    registry: CollectorRegistry
    statements: Counter
    errors: Counter
    duration: Histogram
    checked_out: Gauge
    overflow: Gauge
    waiting: Gauge
    checkout: Histogram
    #: the ``backend`` label's values (the dialects of the instrumented engines)
    backends: tuple[str, ...]
    #: pool gauges over time (``timeline=True``)
    timeline: list[PoolSample] | None = None
    #: every statement duration by (backend, kind) (``record_durations=True``): to check
    #: quantiles
    durations: dict[tuple[str, str], list[float]] | None = None
    _remove: list[Callable[[], None]] = field(default_factory=list, repr=False)

    # ------------------------------------------------------------------ reading

    def value(self, name: str, **labels: str) -> float:
        """One sample's value (0.0 when that series has no sample yet)."""
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    def exposition(self) -> str:
        """The Prometheus text format, as a scrape of ``/metrics`` returns it (volatile)."""
        return generate_latest(self.registry).decode()

    def checked(self) -> str:
        """The deterministic part of the exposition: HELP/TYPE, counters, histogram counts.

        Bucket counts, sums, gauges and ``_created`` timestamps depend on timing, so a
        checked notebook cell prints this instead of :meth:`exposition`.
        """
        keep = []
        for line in self.exposition().splitlines():
            if line.startswith("#"):
                name = line.split()[2]
                if not name.startswith("sqlalchemy_pool") and not name.endswith("_created"):
                    keep.append(line)
                continue
            metric = line.split("{", 1)[0].split(" ", 1)[0]
            if metric.endswith(("_total", "_count")) and not metric.startswith("sqlalchemy_pool"):
                keep.append(line)
        return "\n".join(keep)

    def counts(self) -> pd.DataFrame:
        """Statements, errors and timed statements per kind and backend (deterministic)."""
        rows = []
        for family in self.registry.collect():
            for sample in family.samples:
                kind, backend = sample.labels.get("kind"), sample.labels.get("backend")
                if kind is None:
                    continue
                column = {
                    "sqlalchemy_statements_total": "statements",
                    "sqlalchemy_statement_errors_total": "errors",
                    "sqlalchemy_statement_duration_seconds_count": "timed",
                }.get(sample.name)
                if column:
                    rows.append({"backend": backend, "kind": kind, column: sample.value})
        if not rows:
            return pd.DataFrame(columns=["backend", "kind", "statements", "errors", "timed"])
        columns = ["statements", "errors", "timed"]
        frame = pd.DataFrame(rows).groupby(["backend", "kind"], sort=False).sum()
        frame = frame.reindex(columns=columns).fillna(0).astype(int)
        return frame.reset_index()

    def buckets(self, name: str = "sqlalchemy_statement_duration_seconds") -> pd.DataFrame:
        """A histogram's cumulative bucket counts: one row per series and upper bound ``le``."""
        rows = []
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == f"{name}_bucket":
                    labels = dict(sample.labels)
                    le = float(labels.pop("le"))
                    rows.append({**labels, "le": le, "cumulative": int(sample.value)})
        return pd.DataFrame(rows)

    def quantile(
        self,
        q: float,
        kind: str,
        backend: str | None = None,
        name: str = "sqlalchemy_statement_duration_seconds",
    ) -> float:
        """``histogram_quantile(q, ...)`` of one kind's buckets (seconds): of one backend, or
        of all of them summed per bound (PromQL's ``sum by (le)``)."""
        frame = self.buckets(name)
        frame = frame[frame["kind"] == kind]
        if backend is not None:
            frame = frame[frame["backend"] == backend]
        summed = frame.groupby("le", sort=True)["cumulative"].sum()
        return histogram_quantile(q, list(zip(summed.index, summed.tolist(), strict=True)))

    def pool_frame(self) -> pd.DataFrame:
        """The pool timeline as a frame: ms since instrumenting, checked out, waiting."""
        samples = self.timeline or []
        frame = pd.DataFrame(samples, columns=list(PoolSample._fields))
        frame.insert(0, "ms", frame.pop("seconds") * 1000)
        return frame

    # ---------------------------------------------------------------- lifecycle

    def remove(self) -> None:
        """Detach every listener (the registry keeps the values counted so far)."""
        while self._remove:
            self._remove.pop()()

    def __enter__(self) -> EngineMetrics:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.remove()


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """The ``q`` quantile from cumulative bucket counts, as PromQL's ``histogram_quantile``.

    ``buckets`` are ``(upper bound, cumulative count)`` pairs ending with ``+Inf``. The rank
    ``q × total`` falls in the first bucket whose cumulative count reaches it; the result
    is interpolated linearly inside that bucket (its lower bound is the previous bound, 0
    for the first). A rank in the ``+Inf`` bucket returns the highest finite bound. As in
    PromQL, ``q > 1`` gives ``+Inf``, ``q < 0`` gives ``-Inf``, and no observations NaN.

    >>> histogram_quantile(0.5, [(0.1, 2), (0.2, 6), (float("inf"), 6)])
    0.125
    >>> histogram_quantile(1.5, [(0.1, 2), (float("inf"), 2)])
    inf
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    pairs = sorted(buckets)
    total = pairs[-1][1] if pairs else 0
    if total == 0:
        return math.nan
    rank = q * total
    counts = [count for _le, count in pairs]
    index = bisect.bisect_left(counts, rank)
    upper, count = pairs[index]
    if math.isinf(upper):
        return pairs[-2][0] if len(pairs) > 1 else math.nan
    lower, before = (pairs[index - 1][0], pairs[index - 1][1]) if index else (0.0, 0)
    if count == before:
        return upper
    return lower + (upper - lower) * (rank - before) / (count - before)


# ------------------------------------------------------------------------- instrumenting

_instrumented: weakref.WeakKeyDictionary[Engine, EngineMetrics] = weakref.WeakKeyDictionary()


def _make(registry: CollectorRegistry, buckets: Sequence[float]) -> dict[str, Any]:
    by_statement = ["kind", "backend"]
    return {
        "statements": Counter(
            "sqlalchemy_statements",
            "Statements sent to the driver, by kind.",
            by_statement,
            registry=registry,
        ),
        "errors": Counter(
            "sqlalchemy_statement_errors",
            "Statements that raised, by kind and error class.",
            [*by_statement, "error"],
            registry=registry,
        ),
        "duration": Histogram(
            "sqlalchemy_statement_duration_seconds",
            "Time from before_cursor_execute to after_cursor_execute.",
            by_statement,
            buckets=buckets,
            registry=registry,
        ),
        "checked_out": Gauge(
            "sqlalchemy_pool_checked_out",
            "Connections checked out of the pool now.",
            ["backend"],
            registry=registry,
        ),
        "overflow": Gauge(
            "sqlalchemy_pool_overflow",
            "Connections in use beyond pool_size now.",
            ["backend"],
            registry=registry,
        ),
        "waiting": Gauge(
            "sqlalchemy_pool_waiting",
            "Requests queued now: they found the pool at pool_size + max_overflow, none idle.",
            ["backend"],
            registry=registry,
        ),
        "checkout": Histogram(
            "sqlalchemy_pool_checkout_seconds",
            "Time to get a connection: waiting for a free one, or opening a new one.",
            ["backend"],
            buckets=buckets,
            registry=registry,
        ),
    }


def instrument(
    *targets: Target,
    buckets: Sequence[float] = DURATION_BUCKETS,
    timeline: bool = False,
    record_durations: bool = False,
) -> EngineMetrics:
    """Feed new Prometheus instruments from the events of ``targets``; see the module docstring.

    Several targets (say, a database and its scratch copy) feed one registry; the
    ``backend`` label is each engine's dialect. ``timeline=True`` also keeps the pool gauges
    at every pool event (for a chart); ``record_durations=True`` keeps every statement's
    duration (to compare a quantile computed from the buckets with the exact one). Use it
    as a context manager, or call ``.remove()``, to detach the listeners. Instrument an
    engine, not its ``execution_options()`` copies: they share its events and its pool, so
    they are measured with it.
    """
    engines = list(dict.fromkeys(e for target in targets for e in sync_engines(target)))
    if not engines:
        raise TypeError("instrument() needs at least one Engine, AsyncEngine or Backend")
    # instrumenting again replaces, never doubles: an earlier EngineMetrics listening on any
    # of these engines is detached (from all of its engines; its registry keeps its values)
    for engine in engines:
        previous = _instrumented.pop(engine, None)
        if previous is not None:
            previous.remove()
    registry = CollectorRegistry()
    metrics = EngineMetrics(
        registry,
        **_make(registry, buckets),
        backends=tuple(dict.fromkeys(e.dialect.name for e in engines)),
        timeline=[] if timeline else None,
        durations={} if record_durations else None,
    )
    pool = _Pools(metrics, engines)
    for engine in engines:
        _attach(metrics, engine, pool)
        _instrumented[engine] = metrics
    return metrics


class _Pools:
    """The pool gauges of one :class:`EngineMetrics`, kept from checkout and checkin events."""

    def __init__(self, metrics: EngineMetrics, engines: list[Engine]):
        self.metrics = metrics
        self.pools = {
            id(e): _EnginePool(_pool_size(e), _checked_out(e.pool), e.dialect.name) for e in engines
        }
        backends = list(dict.fromkeys(e.dialect.name for e in engines))
        self.waits: dict[str, int] = dict.fromkeys(backends, 0)
        # per backend, looked up once: its pools and its labelled gauges
        self.by_backend = {
            name: (
                [p for p in self.pools.values() if p.backend == name],
                metrics.checked_out.labels(name),
                metrics.overflow.labels(name),
                metrics.waiting.labels(name),
            )
            for name in backends
        }
        self.last: dict[str, tuple[int, int, int]] = {}
        self.lock = threading.Lock()
        self.t0 = time.perf_counter()
        with self.lock:
            for name in backends:
                self._sample(name)

    def _sample(self, backend: str) -> None:
        """Set the gauges of ``backend`` (lock held) and note them on the timeline."""
        pools, checked_out, overflow, waiting = self.by_backend[backend]
        if len(pools) == 1:
            pool = pools[0]
            now_out, now_over = pool.out, max(0, pool.out - pool.size) if pool.size else 0
        else:
            now_out = sum(p.out for p in pools)
            now_over = sum(max(0, p.out - p.size) for p in pools if p.size)
        values = (now_out, now_over, self.waits[backend])
        last = self.last.get(backend)
        if values != last:  # a gauge is set only when it changes: most events change one
            for gauge, value, before in zip(
                (checked_out, overflow, waiting), values, last or (None,) * 3, strict=True
            ):
                if value != before:
                    gauge.set(value)
            self.last[backend] = values
        if self.metrics.timeline is not None:
            now = time.perf_counter() - self.t0
            total = sum(p.out for p in self.pools.values())
            self.metrics.timeline.append(PoolSample(now, total, sum(self.waits.values())))

    def moved(self, engine: Engine, change: int) -> Callable[..., None]:
        """A checkout (+1) or checkin (-1) listener for ``engine``'s pool."""
        pool = self.pools[id(engine)]

        def hook(*_args: Any) -> None:
            with self.lock:
                pool.out = max(0, pool.out + change)  # never below 0, whatever came before
                self._sample(pool.backend)

        return hook

    def timed_connect(self, engine: Engine) -> Callable[[], Any]:
        """``engine.pool.connect``, timed: SQLAlchemy has no event before a checkout waits.

        Every ``Connection`` gets its DBAPI connection from ``pool.connect()`` (through
        ``Engine.raw_connection()``, of the engine or of an ``execution_options()`` copy;
        async engines through their ``sync_engine``). The wrapper measures how long that
        took; a request that finds the pool at ``pool_size + max_overflow`` with no idle
        connection (the test QueuePool makes before it waits) is counted as waiting
        until it gets one.
        """
        pool = engine.pool
        original = pool.connect
        backend = engine.dialect.name
        checkout = self.metrics.checkout.labels(backend)

        def connect() -> Any:
            queued = _exhausted(pool)
            if queued:
                with self.lock:
                    self.waits[backend] += 1
                    self._sample(backend)
            start = time.perf_counter()
            try:
                return original()
            finally:
                checkout.observe(time.perf_counter() - start)
                if queued:
                    with self.lock:
                        self.waits[backend] -= 1
                        self._sample(backend)

        return connect


def _exhausted(pool: Any) -> bool:
    """True when a checkout from ``pool`` must wait: a queue pool at its maximum (pool_size +
    max_overflow connections exist) with none idle, as ``QueuePool._do_get`` decides."""
    max_overflow = getattr(pool, "_max_overflow", -1)
    if max_overflow < 0 or not hasattr(pool, "checkedin"):
        return False
    return pool._overflow >= max_overflow and pool.checkedin() == 0


def _checked_out(pool: Any) -> int:
    """Connections ``pool`` has checked out now (0 for pools that do not say)."""
    checkedout = getattr(pool, "checkedout", None)
    return max(0, int(checkedout())) if callable(checkedout) else 0


def statement_listeners(metrics: EngineMetrics, engine: Engine) -> list[tuple[str, Callable]]:
    """The statement listeners of one engine, as (event name, listener); each does as little
    as it can: the labelled children are looked up once, here, not per statement."""
    backend = engine.dialect.name
    counted = {k: metrics.statements.labels(k, backend) for k in KINDS}
    timed = {k: metrics.duration.labels(k, backend) for k in KINDS}
    durations = metrics.durations
    clock = time.perf_counter

    def before(_conn: Any, _cur: Any, sql: str, _params: Any, context: Any, _many: Any) -> None:
        kind = statement_kind(sql)
        counted[kind].inc()
        context._course_metrics = (kind, clock())

    def after(_conn: Any, _cur: Any, _sql: str, _params: Any, context: Any, _many: Any) -> None:
        started = getattr(context, "_course_metrics", None)
        if started is None:  # it began before instrumenting
            return
        kind, t0 = started
        elapsed = clock() - t0
        timed[kind].observe(elapsed)
        if durations is not None:
            durations.setdefault((backend, kind), []).append(elapsed)

    def error(context: Any) -> None:
        kind = statement_kind(context.statement) if context.statement else "other"
        name = type(context.original_exception).__name__
        metrics.errors.labels(kind, backend, name).inc()

    return [
        ("before_cursor_execute", before),
        ("after_cursor_execute", after),
        ("handle_error", error),
    ]


def _attach(metrics: EngineMetrics, engine: Engine, pools: _Pools) -> None:
    hooks = statement_listeners(metrics, engine)
    hooks += [("checkout", pools.moved(engine, +1)), ("checkin", pools.moved(engine, -1))]

    def wrap_pool(*_args: Any) -> None:  # now, and after each engine.dispose()
        engine.pool.connect = pools.timed_connect(engine)  # type: ignore[method-assign]

    hooks.append(("engine_disposed", wrap_pool))
    for name, hook in hooks:
        event.listen(engine, name, hook)
        metrics._remove.append(functools.partial(event.remove, engine, name, hook))
    wrap_pool()
    metrics._remove.append(functools.partial(_restore, engine, metrics))


def _restore(engine: Engine, metrics: EngineMetrics) -> None:
    """Undo :meth:`_Pools.timed_connect` (the class's method shows through again)."""
    engine.pool.__dict__.pop("connect", None)
    if _instrumented.get(engine) is metrics:
        del _instrumented[engine]


def _pool_size(engine: Engine) -> int:
    """``pool_size`` of a queue pool; 0 for pools without one (NullPool, StaticPool...)."""
    size = getattr(engine.pool, "size", None)
    return int(size()) if callable(size) else 0
