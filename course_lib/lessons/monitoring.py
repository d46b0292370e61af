"""Monitoring (notebook 12): metrics, pool gauges, alerts, traces, and budgets as tests.

The pages whose N+1 notebook 01 found, ready to be watched:

>>> from course_lib.data import dataset
>>> db = dataset("sqlite", "tiny")
>>> with db.Session() as session:
...     users_with_posts_lazy(session, 3) == users_with_posts_selectin(session, 3)
True

Machinery for the notebook: :func:`app_workload` (a fixed round of requests, reads on the
dataset and writes on a scratch copy), :func:`concurrent_requests` on a
:func:`small_pool_engine` and :func:`pool_chart`, :func:`histogram_chart`,
:func:`p95_table` and :func:`alert_table` (alerting as code), :func:`traced_pages`,
:func:`compare_detectors` (queryspy and the course's detector on the same cases),
:func:`run_pytest` (a small test run in a subprocess), and the exercise's check
:func:`acheck_metrics`, which runs :func:`workload` itself on an engine the learner
instrumented.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import prometheus_client
import queryspy
from matplotlib.figure import Figure
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import Engine, delete, event, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session, load_only, selectinload

from ..backends import Backend
from ..budgets import find_n_plus_one, watch_statements
from ..exercises import CheckResult, acheck, check
from ..measure import count_statements
from ..metrics import (
    DURATION_BUCKETS,
    KINDS,
    EngineMetrics,
    histogram_quantile,
    statement_kind,
    statement_listeners,
)
from ..models import Car, Comment, Post, Tag, User
from ..tracing import dependency_conflict, span_frame, tracing
from .loading import reference_dealership_report

__all__ = [
    "ALERT_RULES",
    "CASES",
    "COUNTER",
    "DETECTORS",
    "HISTOGRAM",
    "PAUSE_S",
    "RUNS",
    "SELECTIN_CHUNK",
    "GuideMetrics",
    "PytestRun",
    "acheck_metrics",
    "alert_table",
    "app_workload",
    "ausers_with_posts_lazy",
    "ausers_with_posts_selectin",
    "aworkload",
    "bucket_of",
    "comments_of_every_post",
    "compare_detectors",
    "concurrent_requests",
    "dependency_conflict",
    "detector_verdicts",
    "exact_quantile",
    "first_users",
    "guide_counter_defined_twice",
    "guide_get_user_with_metrics",
    "guide_users_page",
    "histogram_chart",
    "instrumentation_support",
    "p95_table",
    "page_size",
    "pause_statement",
    "pool_chart",
    "pool_facts",
    "posts_per_user_core",
    "posts_per_user_in_list",
    "posts_per_user_text",
    "posts_per_user_text_session",
    "queryspy_message",
    "reference_dealership_report",
    "run_pytest",
    "selectin_chunks",
    "small_pool_engine",
    "span_summary",
    "statement_listeners",
    "traced_pages",
    "users_commit_each",
    "users_in_threads",
    "users_session_each",
    "users_to_thread",
    "users_with_posts_chunked",
    "users_with_posts_lazy",
    "users_with_posts_selectin",
    "watch_statements",
    "workload",
]


def page_size(users: int) -> int:
    """Users on the page: 10, or every user where the data has fewer."""
    return min(10, users)


# ------------------------------------------------------------------ notebook 01's pages


def first_users(n: int) -> Any:
    """The parent query of every page: the first n users by id."""
    return select(User).order_by(User.id).limit(n)


def users_with_posts_lazy(session: Session, n: int) -> dict[int, int]:
    """lazy loads, sync (01's silent N+1)"""
    counts = {}
    for user in session.scalars(first_users(n)):
        counts[user.id] = len(user.posts)  # a lazy load per user
    return counts


def users_with_posts_selectin(session: Session, n: int) -> dict[int, int]:
    """selectinload"""
    counts = {}
    for user in session.scalars(first_users(n).options(selectinload(User.posts))):
        counts[user.id] = len(user.posts)
    return counts


def users_with_posts_chunked(session: Session, n: int) -> dict[int, int]:
    """selectinload(chunksize=n // 3): IN batches"""
    option = selectinload(User.posts, chunksize=max(2, n // 3))
    counts = {}
    for user in session.scalars(first_users(n).options(option)):
        counts[user.id] = len(user.posts)
    return counts


async def ausers_with_posts_lazy(session: AsyncSession, n: int) -> dict[int, int]:
    """awaitable_attrs, async (01's N+1)"""
    counts = {}
    for user in (await session.scalars(first_users(n))).all():
        counts[user.id] = len(await user.awaitable_attrs.posts)  # a lazy load per user
    return counts


async def ausers_with_posts_selectin(session: AsyncSession, n: int) -> dict[int, int]:
    """selectinload, async"""
    counts = {}
    for user in await session.scalars(first_users(n).options(selectinload(User.posts))):
        counts[user.id] = len(user.posts)
    return counts


_POSTS_OF = text("SELECT count(*) FROM posts WHERE author_id = :author")


def posts_per_user_text(db: Backend, n: int) -> dict[int, int]:
    """a Core text() loop on a Connection"""
    counts = {}
    with db.sync_engine.connect() as conn:
        for i in conn.scalars(select(User.id).order_by(User.id).limit(n)).all():
            counts[i] = conn.scalar(_POSTS_OF, {"author": i})
    return counts


def posts_per_user_text_session(db: Backend, n: int) -> dict[int, int]:
    """the text() loop through a Session"""
    counts = {}
    with db.Session() as session:
        for i in session.scalars(select(User.id).order_by(User.id).limit(n)).all():
            counts[i] = session.scalar(_POSTS_OF, {"author": i})
    return counts


def posts_per_user_core(db: Backend, n: int) -> dict[int, int]:
    """a Core select() loop through a Session"""
    counts = {}
    with db.Session() as session:
        for i in session.scalars(select(User.id).order_by(User.id).limit(n)).all():
            stmt = select(func.count()).select_from(Post).where(Post.author_id == i)
            counts[i] = session.scalar(stmt)
    return counts


def posts_per_user_in_list(db: Backend, n: int) -> dict[int, int]:
    """a loop carrying a constant IN list of 2"""
    counts = {}
    with db.Session() as session:
        for user in session.scalars(first_users(n)).all():
            stmt = select(func.count()).select_from(Post)
            counts[user.id] = session.scalar(
                stmt.where(Post.author_id == user.id, Post.id.not_in([0, -1]))
            )
    return counts


def users_commit_each(db: Backend, n: int) -> dict[int, int]:
    """lazy loads, a commit after each user"""
    counts = {}
    with db.Session() as session:
        for user in session.scalars(first_users(n)).all():
            counts[user.id] = len(user.posts)
            session.commit()  # a batch job's commit per item
    return counts


def users_session_each(db: Backend, n: int) -> list[str]:
    """session.get, one Session per id"""
    names = []
    for user_id in range(1, n + 1):
        with db.Session() as session:
            names.append(session.get(User, user_id).name)
    return names


def comments_of_every_post(db: Backend, _n: int) -> int:
    """selectinload over every post (chunks of 500)"""
    stmt = select(Post).options(
        load_only(Post.id), selectinload(Post.comments).load_only(Comment.id)
    )
    with db.Session() as session:
        return sum(len(post.comments) for post in session.scalars(stmt))


def users_in_threads(db: Backend, n: int) -> list[str]:
    """session.get in 4 threads (concurrent requests)"""

    def name(user_id: int) -> str:
        with db.Session() as session:
            return session.get(User, user_id).name

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(name, range(1, n + 1)))


async def users_to_thread(db: Backend, n: int) -> list[str]:
    """asyncio.to_thread lookups (concurrent requests)"""

    def name(user_id: int) -> str:
        with db.Session() as session:
            return session.get(User, user_id).name

    return list(await asyncio.gather(*(asyncio.to_thread(name, i) for i in range(1, n + 1))))


#: The keys per IN statement ``selectinload`` sends when not given ``chunksize``: SQLAlchemy's
#: default (``_SelectInLoader._chunksize`` in ``sqlalchemy/orm/strategies.py``; a test checks).
SELECTIN_CHUNK = 500


def selectin_chunks(posts: int) -> int:
    """IN statements ``selectinload`` sends for ``posts`` parents in chunks of 500."""
    return math.ceil(posts / SELECTIN_CHUNK)


# --------------------------------------------------------- the detectors, side by side


def _sync(fn: Callable[[Session, int], Any]) -> Callable[[Backend, int], Any]:
    def run(db: Backend, n: int) -> Any:
        with db.Session() as session:
            return fn(session, n)

    run.__doc__ = fn.__doc__
    return run


def _async(fn: Callable[[AsyncSession, int], Any]) -> Callable[[Backend, int], Any]:
    async def run(db: Backend, n: int) -> Any:
        async with db.AsyncSession() as session:
            return await fn(session, n)

    run.__doc__ = fn.__doc__
    return run


def _report(db: Backend, _n: int) -> Any:
    """01's exercise report (with_parent)"""
    with db.Session() as session:
        return reference_dealership_report(session)


#: The cases :func:`compare_detectors` runs: (fn(db, n) whose docstring is its label, is it
#: an N+1?). Concurrent requests, each with its own session, are not one N+1.
CASES: list[tuple[Callable[[Backend, int], Any], bool]] = [
    (_sync(users_with_posts_lazy), True),
    (_async(ausers_with_posts_lazy), True),
    (_report, True),
    (posts_per_user_text, True),
    (posts_per_user_text_session, True),
    (posts_per_user_core, True),
    (posts_per_user_in_list, True),
    (users_commit_each, True),
    (users_session_each, True),
    (_sync(users_with_posts_selectin), False),
    (_sync(users_with_posts_chunked), False),
    (comments_of_every_post, False),
    (users_in_threads, False),
    (users_to_thread, False),
]

#: The detectors' columns in :func:`compare_detectors`'s frame.
DETECTORS = ("queryspy", "course, per block", "course, per transaction")


def _label(fn: Callable[..., Any]) -> str:
    return (fn.__doc__ or fn.__name__).strip().splitlines()[0]


def _spy_summary(recorder: Any) -> str:
    found = recorder.findings()
    return ", ".join(f"{f.kind} × {f.count}" for f in found) or "nothing"


def _ours_summary(watch: Any) -> str:
    return ", ".join(f"N+1 × {f.count}" for f in watch.findings) or "nothing"


async def compare_detectors(backends: Sequence[Backend], n: int) -> pd.DataFrame:
    """Each case of :data:`CASES` under queryspy and the course's detector at once.

    One row per case and backend: the statements the driver received (``cl.count_statements``),
    the statements queryspy counted and what it reported, and what ``find_n_plus_one``
    reported with the block as its unit of work and with each transaction as one
    (``per="transaction"``), both at their default thresholds. Deterministic: a checked cell
    prints it.
    """
    rows = []
    for db in backends:
        for fn, is_n_plus_one in CASES:
            with (
                count_statements(db) as log,
                find_n_plus_one(db) as block,
                find_n_plus_one(db, per="transaction") as transaction,
                queryspy.record() as spy,
            ):
                result = fn(db, n)
                if inspect.isawaitable(result):
                    await result
            rows.append(
                {
                    "case": _label(fn),
                    "backend": db.name,
                    "N+1?": "yes" if is_n_plus_one else "no",
                    "statements": log.count,
                    "queryspy counted": spy.query_count,
                    "queryspy": _spy_summary(spy),
                    "course, per block": _ours_summary(block),
                    "course, per transaction": _ours_summary(transaction),
                }
            )
    return pd.DataFrame(rows)


def detector_verdicts(frame: pd.DataFrame) -> pd.DataFrame:
    """Per detector: the N+1s it missed and its false alarms, from one backend's rows of
    :func:`compare_detectors` (indexed by case or not)."""
    frame = frame.reset_index() if "case" not in frame.columns else frame
    rows = []
    for detector in DETECTORS:
        reported = frame[detector] != "nothing"
        is_n_plus_one = frame["N+1?"] == "yes"
        rows.append(
            {
                "detector": detector,
                "missed N+1s": "; ".join(frame["case"][is_n_plus_one & ~reported]) or "none",
                "false alarms": "; ".join(frame["case"][~is_n_plus_one & reported]) or "none",
            }
        )
    return pd.DataFrame(rows).set_index("detector")


def queryspy_message(error: BaseException) -> str:
    """A queryspy failure's message without what varies between machines and runs.

    File paths are cut to the file name, and its timing line ("0.4ms in the database") is
    dropped, so the message can be printed in a checked cell.
    """
    lines = []
    for line in str(error).strip().splitlines():
        if re.search(r"\d+(\.\d+)?ms in the database", line):
            continue
        lines.append(re.sub(r"(?:[A-Za-z]:)?(?:[\\/][^\\/\s:]+)+[\\/]([^\\/\s:]+)", r"\1", line))
    return "\n".join(line for i, line in enumerate(lines) if line or (i and lines[i - 1]))


# --------------------------------------------------------------- the seed's metrics


@dataclass
class GuideMetrics:
    """The popular guides' metrics: module-level instruments, called by hand around a query."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.query_count = Counter(
            "db_queries", "Queries, counted by hand.", ["query"], registry=self.registry
        )
        self.query_time = Histogram(
            "db_query_seconds", "Query time, timed by hand.", ["query"], registry=self.registry
        )


def guide_get_user_with_metrics(metrics: GuideMetrics, session: Session, user_id: int) -> User:
    """The guides' ``get_user_with_metrics``: count and time one call, by hand."""
    metrics.query_count.labels("get_user").inc()
    with metrics.query_time.labels("get_user").time():
        return session.get(User, user_id)


def guide_users_page(metrics: GuideMetrics, session: Session, n: int) -> dict[int, int]:
    """A page of n users with their post counts, through the guides' function."""
    counts = {}
    for user_id in range(1, n + 1):
        user = guide_get_user_with_metrics(metrics, session, user_id)
        counts[user.id] = len(user.posts)  # a lazy load, outside the guide's counter
    return counts


def guide_counter_defined_twice() -> None:
    """The guides' module-level ``Counter``, defined a second time in the default registry,
    as a re-run cell, a reloaded module or a second engine does: prometheus_client raises.

    Its message lists the clashing names as a Python set, whose order changes from one
    process to the next, so they are sorted here. The first definition is unregistered
    afterwards, whatever happens, so that the cell can be run again.
    """
    first = prometheus_client.Counter("guide_db_queries", "Queries, counted by hand.")
    try:
        prometheus_client.Counter("guide_db_queries", "Queries, counted by hand.")
    except ValueError as error:
        head, _, names = str(error).partition(": ")
        clashing = sorted(re.findall(r"'(\w+)'", names))
        raise ValueError(f"{head}: {', '.join(clashing)}") from None
    finally:
        prometheus_client.REGISTRY.unregister(first)


def instrumentation_support() -> str:
    """Whether ``opentelemetry-instrumentation-sqlalchemy`` accepts the installed SQLAlchemy,
    in one sentence that names no installed version (the versions it declares, and why)."""
    declared = " and ".join(SQLAlchemyInstrumentor().instrumentation_dependencies())
    if dependency_conflict() is None:
        return f'The instrumentation declares "{declared}", and the installed SQLAlchemy is in it.'
    return (
        f'The instrumentation declares "{declared}", and the installed SQLAlchemy is outside '
        "it: instrument() logs the conflict and instruments nothing."
    )


# ------------------------------------------------------------------- the app workload


_SEARCH = select(Car.id, Car.price).where(Car.model == "no such model").order_by(Car.price)


async def app_workload(db: Backend, scratch: Backend, n: int) -> None:
    """One round of a small app's requests, on both engines of ``db`` and of ``scratch``.

    The users page with its N+1 (sync: 1 + n selects) and fixed (async: 2 selects), a car
    search that scans the table (1 select) and a count (1 select); on the scratch copy an
    insert, an update and a delete (rolled back, so every round sends the same), and one
    statement that fails (a missing table).
    """
    with db.Session() as session:
        users_with_posts_lazy(session, n)
    async with db.AsyncSession() as session:
        await ausers_with_posts_selectin(session, n)
        (await session.execute(_SEARCH)).all()
        await session.scalar(select(func.count()).select_from(Car))
    async with scratch.AsyncSession() as session:
        await session.execute(insert(Tag), [{"name": f"monitoring {i}"} for i in range(3)])
        await session.execute(update(Tag).where(Tag.name == "monitoring 1").values(name="one"))
        await session.execute(delete(Tag).where(Tag.name == "monitoring 2"))
        await session.rollback()
    with scratch.Session() as session:
        try:
            session.execute(text("SELECT * FROM no_such_table"))
        except DBAPIError:
            session.rollback()


def histogram_chart(metrics: EngineMetrics, title: str) -> Figure:
    """Statements per duration bucket (not cumulative), one panel per backend, bars by kind."""
    frame = metrics.buckets()
    backends = list(dict.fromkeys(frame["backend"]))
    fig, axes = plt.subplots(1, len(backends), figsize=(6 * len(backends), 3.4), squeeze=False)
    bounds = [*DURATION_BUCKETS, math.inf]
    names = [_bound(b) for b in bounds]
    for axis, backend in zip(axes[0], backends, strict=True):
        bottom = [0] * len(bounds)
        for kind in KINDS:
            rows = frame[(frame["backend"] == backend) & (frame["kind"] == kind)]
            if rows.empty or rows["cumulative"].max() == 0:
                continue
            cumulative = rows.set_index("le")["cumulative"].reindex(bounds).tolist()
            counts = [c - p for c, p in zip(cumulative, [0, *cumulative[:-1]], strict=True)]
            axis.bar(names, counts, bottom=bottom, label=kind)
            bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
        if len(backends) > 1:
            axis.set_title(backend)
        axis.set_xlabel("bucket: duration ≤ le")
        axis.set_ylabel("statements")
        axis.tick_params(axis="x", labelrotation=60, labelsize=7)
        axis.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def _bound(seconds: float) -> str:
    if math.isinf(seconds):
        return "+Inf"
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"


# -------------------------------------------------------------------- pool under load


def small_pool_engine(db: Backend, pool_size: int = 3, max_overflow: int = 2) -> AsyncEngine:
    """A new async engine on ``db`` with a small pool: at most pool_size + max_overflow."""
    return create_async_engine(db.async_url, pool_size=pool_size, max_overflow=max_overflow)


async def concurrent_requests(
    engine: AsyncEngine, requests: int = 12, statements: int = 3, think_s: float = 0.01
) -> int:
    """``requests`` asyncio tasks at once, each holding a session for a few statements with
    ``think_s`` of application work after each one (so connections stay checked out)."""

    async def one(i: int) -> int:
        async with AsyncSession(engine) as session:
            for _ in range(statements):
                await session.scalar(select(User.name).where(User.id == i % 10 + 1))
                await asyncio.sleep(think_s)
        return 1

    return sum(await asyncio.gather(*(one(i) for i in range(requests))))


def pool_facts(metrics: EngineMetrics) -> dict[str, int]:
    """What the pool timeline and the checkout histogram saw: peaks and checkouts."""
    timeline = metrics.pool_frame()
    checkouts = sum(
        metrics.value("sqlalchemy_pool_checkout_seconds_count", backend=b) for b in metrics.backends
    )
    return {
        "max checked out": int(timeline["checked_out"].max()) if len(timeline) else 0,
        "max waiting": int(timeline["waiting"].max()) if len(timeline) else 0,
        "checkouts": int(checkouts),
    }


def pool_chart(
    timelines: dict[str, EngineMetrics], pool_size: int, max_overflow: int, title: str
) -> Figure:
    """Connections checked out and requests waiting over time, one panel per backend."""
    fig, axes = plt.subplots(
        1, len(timelines), figsize=(6 * len(timelines), 3.2), squeeze=False, sharey=True
    )
    for axis, (name, metrics) in zip(axes[0], timelines.items(), strict=True):
        frame = metrics.pool_frame()
        axis.step(frame["ms"], frame["checked_out"], where="post", label="checked out")
        axis.step(frame["ms"], frame["waiting"], where="post", label="waiting", alpha=0.8)
        axis.axhline(pool_size, color="grey", linestyle=":", label="pool_size")
        axis.axhline(
            pool_size + max_overflow, color="black", linestyle="--", label="+ max_overflow"
        )
        axis.set_title(name)
        axis.set_xlabel("ms")
        axis.set_ylabel("connections / requests")
        axis.legend(fontsize=7, loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


# ------------------------------------------------------------------ alerting, as code

ALERT_RULES = """\
groups:
  - name: sqlalchemy
    rules:
      - alert: SlowStatements
        expr: |
          histogram_quantile(0.95, sum by (le, kind, backend)
            (rate(sqlalchemy_statement_duration_seconds_bucket[5m]))) > 0.25
        for: 10m
        annotations:
          summary: "p95 of {{ $labels.kind }} statements above 250 ms"
      - alert: PoolWait
        expr: |
          histogram_quantile(0.95, sum by (le, backend)
            (rate(sqlalchemy_pool_checkout_seconds_bucket[5m]))) > 0.05
        for: 5m
        annotations:
          summary: "requests wait more than 50 ms for a connection (p95)"
      - alert: StatementErrors
        expr: |
          sum by (backend) (rate(sqlalchemy_statement_errors_total[5m]))
            / sum by (backend) (rate(sqlalchemy_statements_total[5m])) > 0.01
        for: 5m
        annotations:
          summary: "more than 1 % of statements fail"
"""
"""Prometheus alerting rules on the instruments of :mod:`course_lib.metrics` (YAML)."""

#: The thresholds of :data:`ALERT_RULES`, for :func:`alert_table`.
THRESHOLDS = {"SlowStatements": 0.25, "PoolWait": 0.05, "StatementErrors": 0.01}


def exact_quantile(values: Sequence[float], q: float) -> float:
    """The nearest-rank quantile: the smallest value with at least ``q × n`` values ≤ it.

    This is the value whose bucket ``histogram_quantile`` interpolates in.

    >>> exact_quantile([5, 1, 4, 2, 3], 0.95)
    5
    """
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def bucket_of(value: float, bounds: Sequence[float] = DURATION_BUCKETS) -> tuple[float, float]:
    """The histogram bucket holding ``value``: (previous bound, bound], Prometheus's ``le``."""
    lower = 0.0
    for bound in [*bounds, math.inf]:
        if value <= bound:
            return lower, bound
        lower = bound
    return lower, math.inf


def p95_table(metrics: EngineMetrics, q: float = 0.95) -> pd.DataFrame:
    """Per backend and kind: the quantile from the buckets against the exact one.

    Needs ``instrument(..., record_durations=True)``. ``same bucket`` is True when the
    interpolated estimate lies in the bucket that holds the exact quantile (it always
    does: the interpolation happens inside that bucket).
    """
    if metrics.durations is None:
        raise ValueError("instrument(..., record_durations=True) keeps the exact durations")
    frame = metrics.buckets()
    rows = []
    for (backend, kind), group in frame.groupby(["backend", "kind"], sort=False):
        if group["cumulative"].max() == 0:
            continue
        estimate = histogram_quantile(q, list(zip(group["le"], group["cumulative"], strict=True)))
        exact = exact_quantile(metrics.durations[(backend, kind)], q)
        lower, upper = bucket_of(exact)
        rows.append(
            {
                "backend": backend,
                "kind": kind,
                "statements": int(group["cumulative"].max()),
                "p95 from buckets (ms)": round(estimate * 1000, 3),
                "exact p95 (ms)": round(exact * 1000, 3),
                "bucket (ms)": f"({_bound(lower)}, {_bound(upper)}]",
                "same bucket": lower <= estimate <= upper,
            }
        )
    return pd.DataFrame(rows)


def alert_table(metrics: EngineMetrics) -> pd.DataFrame:
    """The three rules of :data:`ALERT_RULES` evaluated on the registry (totals, not rates).

    p95 of each kind's statements, p95 of the checkout time, and the error rate, with
    each rule's threshold and whether it would fire.
    """
    rows = []
    frame = metrics.buckets()
    for (backend, kind), group in frame.groupby(["backend", "kind"], sort=False):
        if group["cumulative"].max():
            p95 = histogram_quantile(0.95, list(zip(group["le"], group["cumulative"], strict=True)))
            rows.append(("SlowStatements", f"{backend} {kind}", p95))
    waits = metrics.buckets("sqlalchemy_pool_checkout_seconds")
    for backend, group in waits.groupby("backend", sort=False):
        if group["cumulative"].max():
            p95 = histogram_quantile(0.95, list(zip(group["le"], group["cumulative"], strict=True)))
            rows.append(("PoolWait", backend, p95))
    counts = metrics.counts().groupby("backend", sort=False)[["statements", "errors"]].sum()
    for backend, row in counts.iterrows():
        rows.append(("StatementErrors", backend, row["errors"] / max(1, row["statements"])))
    table = pd.DataFrame(rows, columns=["alert", "series", "value"])
    table["threshold"] = table["alert"].map(THRESHOLDS)
    table["firing"] = table["value"] > table["threshold"]
    return table


# -------------------------------------------------------------------------- tracing


async def traced_pages(db: Backend, n: int) -> pd.DataFrame:
    """Two requests traced on ``db``'s async engine: the users page as an N+1, then fixed."""
    with tracing(db.engine) as traces:
        with traces.request("GET /users (awaitable_attrs: N+1)"):
            async with db.AsyncSession() as session:
                await ausers_with_posts_lazy(session, n)
        with traces.request("GET /users (selectinload)"):
            async with db.AsyncSession() as session:
                await ausers_with_posts_selectin(session, n)
    return span_frame(traces.spans())


def span_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per request: its spans in all, its statement spans and its connect spans."""
    rows = []
    for request, spans in frame.groupby("request", sort=False):
        children = spans[spans["depth"] > 0]
        connects = int((children["name"] == "connect").sum())
        rows.append(
            {
                "request": request,
                "spans": len(spans),
                "statements": len(children) - connects,
                "connects": connects,
            }
        )
    return pd.DataFrame(rows)


# ------------------------------------------------------------ a pytest run, in a subprocess


@dataclass
class PytestRun:
    """What :func:`run_pytest` saw: each test's outcome and its failure message."""

    returncode: int
    outcomes: dict[str, str]
    messages: dict[str, str]

    def summary(self, lines: int = 3) -> str:
        """Each test, passed or failed, with the first ``lines`` lines of its failure."""
        out = []
        for name, outcome in self.outcomes.items():
            out.append(f"{name}: {outcome}")
            message = self.messages.get(name, "")
            shown = [line.rstrip() for line in message.splitlines() if line.strip()][:lines]
            out += [f"    {line}" for line in shown]
        return "\n".join(out)


def run_pytest(files: dict[str, str], backends: Sequence[str], scale: str) -> PytestRun:
    """Write ``files`` to a temporary folder and run pytest there, in a fresh interpreter.

    The folder has no pytest configuration, so only what the files enable is active (the
    test's own conftest.py). ``COURSE_BACKENDS`` and ``COURSE_SCALE`` are passed on, so the
    tests see the same data as the notebook. Outcomes come from pytest's JUnit XML report.
    """
    with tempfile.TemporaryDirectory(prefix="course-pytest-") as folder:
        root = Path(folder)
        for name, source in files.items():
            (root / name).write_text(source)
        env = dict(os.environ, COURSE_BACKENDS=",".join(backends), COURSE_SCALE=scale)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        report = root / "report.xml"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--junitxml={report}",
            ],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if not report.exists():
            raise RuntimeError(f"pytest did not run:\n{done.stdout}\n{done.stderr}")
        outcomes, messages = {}, {}
        for case in ElementTree.parse(report).iter("testcase"):
            name = case.get("name", "")
            failure = case.find("failure")
            error = case.find("error")
            if failure is not None or error is not None:
                found = failure if failure is not None else error
                outcomes[name] = "failed" if failure is not None else "error"
                message = (found.get("message") or "").replace(folder + os.sep, "")
                messages[name] = queryspy_message(message)
            elif case.find("skipped") is not None:
                outcomes[name] = "skipped"
            else:
                outcomes[name] = "passed"
    return PytestRun(done.returncode, outcomes, messages)


# ------------------------------------------------------------------------- the exercise

COUNTER = "app_db_statements_total"
"""The exercise's counter: statements sent, labelled ``kind``."""

HISTOGRAM = "app_db_statement_duration_seconds"
"""The exercise's histogram: each statement's duration in seconds, labelled ``kind``."""


def workload(session: Session) -> None:
    """The exercise's fixed workload: an insert, four selects, an update, a delete, rolled back."""
    session.execute(insert(Tag), [{"name": f"exercise {i}"} for i in range(3)])
    for i in range(4):
        session.scalars(select(Tag).where(Tag.name == f"exercise {i}")).all()
    session.execute(update(Tag).where(Tag.name == "exercise 0").values(name="exercise zero"))
    session.execute(delete(Tag).where(Tag.name == "exercise 1"))
    session.rollback()


async def aworkload(session: AsyncSession) -> None:
    """The same workload in an AsyncSession."""
    await session.execute(insert(Tag), [{"name": f"exercise {i}"} for i in range(3)])
    for i in range(4):
        (await session.scalars(select(Tag).where(Tag.name == f"exercise {i}"))).all()
    await session.execute(update(Tag).where(Tag.name == "exercise 0").values(name="exercise zero"))
    await session.execute(delete(Tag).where(Tag.name == "exercise 1"))
    await session.rollback()


#: The check's slow statement takes at least this long on the server (seconds).
PAUSE_S = 0.02
#: Idle time before each run of the workload (seconds): a "duration" measured from the
#: previous statement, not from this statement's start, takes it in.
GAP_S = 0.05
#: How far the check sets the wall clock back right after its slow statement (seconds).
CLOCK_STEP_S = 3600.0
#: Times the check runs the workload on each engine, comparing each run's increments.
RUNS = 2


def pause_statement(dialect: str) -> Any:
    """A select that sleeps :data:`PAUSE_S` on the server: ``pg_sleep``, or on SQLite the
    ``course_sleep`` function the check registers on its own engine's connections."""
    if dialect == "postgresql":
        return text("SELECT pg_sleep(:seconds)").bindparams(seconds=PAUSE_S)
    return text("SELECT course_sleep(:seconds)").bindparams(seconds=PAUSE_S)


def _sleep(seconds: float) -> float:
    time.sleep(seconds)  # at least this long
    return seconds


def _allow_pause(engine: Engine) -> None:
    """On SQLite, give every new connection of ``engine`` a ``course_sleep(s)`` function."""
    if engine.dialect.name != "sqlite":
        return

    def register(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.create_function("course_sleep", 1, _sleep)

    event.listen(engine, "connect", register)


def _fresh(db: Backend) -> Backend:
    """New engines on ``db`` (nothing connected yet) that can run :func:`pause_statement`."""
    fresh = db.fresh()
    for engine in (fresh.sync_engine, fresh.engine.sync_engine):
        _allow_pause(engine)
    return fresh


class _WallClock:
    """``time.time`` while the check runs: set back an hour after the slow statement, as NTP
    or an administrator may set a server's clock while a statement runs (notebook 07)."""

    def __init__(self) -> None:
        self.real = time.time
        self.offset = 0.0

    def __call__(self) -> float:
        return self.real() + self.offset

    def set_back(self, _c: Any, _cur: Any, sql: str, _p: Any, _ctx: Any, _many: Any) -> None:
        if "sleep(" in sql:
            self.offset -= CLOCK_STEP_S


@contextmanager
def _clock_set_back(engine: Engine) -> Iterator[None]:
    """While the block runs, ``time.time`` is set back an hour as the slow statement starts.

    The listener is added last (after the learner's), so it runs after their
    ``before_cursor_execute`` noted the start and before their ``after_cursor_execute``
    (SQLAlchemy ignores ``insert=True`` for engine events, so the order is the order added).
    """
    clock = _WallClock()
    event.listen(engine, "before_cursor_execute", clock.set_back)
    time.time = clock  # type: ignore[assignment]
    try:
        yield
    finally:
        time.time = clock.real  # type: ignore[assignment]
        event.remove(engine, "before_cursor_execute", clock.set_back)


@dataclass
class _Read:
    """What the check reads from the learner's registry."""

    counted: dict[str, int] = field(default_factory=dict)
    timed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    select_seconds: float = 0.0
    #: cumulative counts of the select series, by upper bound
    select_buckets: dict[float, int] = field(default_factory=dict)
    counter_labels: set[str] = field(default_factory=set)
    histogram_labels: set[str] = field(default_factory=set)
    kinds: set[str] = field(default_factory=set)
    has_counter: bool = False
    has_histogram: bool = False
    histogram_type: str = ""
    #: whether the histogram has any series yet (a labelled one has none until observed)
    histogram_sampled: bool = False

    def __sub__(self, before: _Read) -> _Read:
        """The increments since ``before`` (labels and types as now)."""

        def minus(now: dict[Any, int], then: dict[Any, int]) -> dict[Any, int]:
            delta = {k: v - then.get(k, 0) for k, v in now.items()}
            return {k: v for k, v in delta.items() if v}

        return _Read(
            minus(self.counted, before.counted),
            minus(self.timed, before.timed),
            self.seconds - before.seconds,
            self.select_seconds - before.select_seconds,
            {k: v - before.select_buckets.get(k, 0) for k, v in self.select_buckets.items()},
            self.counter_labels,
            self.histogram_labels,
            self.kinds,
            self.has_counter,
            self.has_histogram,
            self.histogram_type,
            self.histogram_sampled,
        )

    def slow_selects(self) -> int | None:
        """Select observations above the highest bound below :data:`PAUSE_S` (None: no such
        bound, the buckets cannot tell)."""
        below = [le for le in self.select_buckets if le < PAUSE_S]
        if not below or math.inf not in self.select_buckets:
            return None
        return self.select_buckets[math.inf] - self.select_buckets[max(below)]


def _read(registry: CollectorRegistry) -> _Read:
    read = _Read()
    histogram = HISTOGRAM
    for family in registry.collect():
        read.has_counter |= family.name == COUNTER.removesuffix("_total")
        if family.name == histogram:
            read.has_histogram = True
            read.histogram_type = family.type
        for sample in family.samples:
            labels = dict(sample.labels)
            if sample.name == COUNTER:
                read.has_counter = True
                read.counter_labels |= set(labels)
                kind = labels.get("kind", "?")
                read.kinds.add(kind)
                read.counted[kind] = read.counted.get(kind, 0) + int(sample.value)
            elif sample.name.startswith(histogram):
                read.has_histogram = True
                le = labels.pop("le", None)
                labels.pop("quantile", None)
                read.histogram_sampled = True
                read.histogram_labels |= set(labels)
                kind = labels.get("kind", "?")
                if sample.name == f"{histogram}_count":
                    read.timed[kind] = read.timed.get(kind, 0) + int(sample.value)
                elif sample.name == f"{histogram}_sum":
                    read.seconds += sample.value
                    if kind == "select":
                        read.select_seconds += sample.value
                elif sample.name == f"{histogram}_bucket" and kind == "select" and le:
                    read.select_buckets[float(le)] = int(sample.value)
    read.counted = {k: v for k, v in read.counted.items() if v}
    read.timed = {k: v for k, v in read.timed.items() if v}
    return read


def _verdict(status: str, message: str, **extra: Any) -> CheckResult:
    return CheckResult(status, message, **extra)


def _judge_labels(read: _Read) -> CheckResult | None:
    if read.counter_labels != {"kind"} or not read.kinds <= set(KINDS):
        labels = sorted(read.counter_labels) or "none"
        return _verdict(
            "wrong labels",
            f"✗ Wrong labels on `{COUNTER}`: {labels}, with values "
            f"{sorted(read.kinds - {'?'})[:5]}. Label `kind` only, one of "
            f"{', '.join(KINDS)}: without it a dashboard cannot split by kind, and never "
            "the SQL text, which makes one time series per distinct statement.",
        )
    if read.histogram_sampled and read.histogram_labels != {"kind"}:
        labels = sorted(read.histogram_labels) or "none"
        return _verdict(
            "wrong labels",
            f"✗ Wrong labels on `{HISTOGRAM}`: {labels}. Label `kind` only, as the counter, "
            "so that a p95 can be computed per kind.",
        )
    return None


def _judge_before(read: _Read) -> CheckResult | None:
    """The mistake in a registry that the workload has not fed yet, or None."""
    if read.counted or read.timed:
        return _verdict(
            "filled in",
            f"✗ Before the workload ran, the registry already held {read.counted} statements "
            f"and {sum(read.timed.values())} durations: they were typed in, not counted. "
            "Create the instruments empty; only the engine's listeners may feed them.",
        )
    return None


def _judge_run(
    read: _Read, expected: dict[str, int], engine: str, wall: float
) -> CheckResult | None:
    """The mistake in what one run of the workload added to one registry, or None."""
    total = sum(expected.values())
    if not read.has_counter:
        return _verdict(
            "no counter",
            f"✗ The registry has no `{COUNTER}` counter: create a prometheus_client Counter "
            f"named `{COUNTER.removesuffix('_total')}`, labelled `kind`, in the registry "
            "you return.",
        )
    if read.counter_labels or read.counted:
        mistake = _judge_labels(read)
        if mistake is not None:
            return mistake
    if not read.counted:
        return _verdict(
            "nothing counted",
            f"✗ The counter exists but counted 0 of the {total} statements the workload sent "
            f"({engine}): nothing listens to the engine's events. Counting by hand in the "
            "workload does not count: the check runs the workload unchanged, so the counts "
            "must come from `before_cursor_execute` (or `after_cursor_execute`) listeners.",
        )
    if read.counted != expected:
        return _verdict(
            "wrong counts",
            f"✗ One run of the workload counted {read.counted} on the {engine}, expected "
            f"{expected}: one increment per statement, by the kind of its SQL (is a listener "
            "attached twice?).",
        )
    if not read.has_histogram:
        return _verdict(
            "no histogram",
            f"✗ Right counts, but the registry has no `{HISTOGRAM}` histogram, labelled `kind`.",
        )
    if read.histogram_type != "histogram":
        return _verdict(
            "not a histogram",
            f"✗ `{HISTOGRAM}` is a {read.histogram_type or 'metric'} without buckets: use a "
            "prometheus_client Histogram. Its cumulative `_bucket` counts are what "
            "`histogram_quantile` turns into a p95, summed over every instance of the app "
            "(a Summary's quantiles cannot be added up).",
        )
    if read.timed != expected:
        return _verdict(
            "empty histogram",
            f"✗ Right counts, but the histogram timed {sum(read.timed.values())} of {total} "
            f"statements ({engine}): `before_cursor_execute` alone has no duration. Note "
            "`perf_counter()` there (on the execution context) and `observe()` the elapsed "
            "time in `after_cursor_execute`.",
        )
    if read.seconds < 0:
        return _verdict(
            "wall clock",
            f"✗ The durations add up to {read.seconds:.0f} s: negative. The check set the wall "
            f"clock back {CLOCK_STEP_S / 3600:g} hour during a statement, as NTP or an "
            "administrator may, and `time.time()` followed it. Time with "
            "`time.perf_counter()`, which nothing can set (notebook 07).",
        )
    if read.seconds > wall + 1e-6:
        return _verdict(
            "durations too long",
            f"✗ The durations add up to {read.seconds * 1000:.0f} ms, more than the "
            f"{wall * 1000:.0f} ms the whole workload took ({engine}). Each duration must "
            "start at its own statement's `before_cursor_execute`, not at the previous "
            "statement or at instrumenting.",
        )
    slow = read.slow_selects()
    if read.select_seconds < PAUSE_S or slow == 0:
        return _verdict(
            "durations too short",
            f"✗ The check's slow select sleeps at least {PAUSE_S * 1000:g} ms on the server, "
            "but no select was observed that long: the select durations add up to "
            f"{read.select_seconds * 1000:.3f} ms ({engine}). Observe the time from the "
            "statement's `before_cursor_execute` to its `after_cursor_execute`: a constant, "
            "or a timer started and stopped inside one listener, measures nothing.",
        )
    return None


def _count(fresh: Backend) -> tuple[dict[str, int], int]:
    """Statements per kind one run sends (counted on ``fresh`` before it is instrumented)."""
    with count_statements(fresh.sync_engine) as log, fresh.Session() as session:
        _one_run(session)
    counted = Tally(statement_kind(s.sql) for s in log.statements)
    return dict(counted), log.count


def _one_run(session: Session) -> None:
    session.execute(pause_statement(session.get_bind().dialect.name))
    workload(session)


async def _aone_run(session: AsyncSession) -> None:
    await session.execute(pause_statement(session.sync_session.get_bind().dialect.name))
    await aworkload(session)


async def acheck_metrics(instrument: Callable[[Any], Any], db: Backend) -> CheckResult:
    """The exercise check: ``instrument(engine)`` must return a registry that the workload feeds.

    It instruments a fresh sync engine and a fresh async engine's ``.sync_engine`` (one call
    each: two registries) and reads each registry before anything ran: it must be empty.
    Then, on each engine, it runs :data:`RUNS` times a select that sleeps :data:`PAUSE_S`
    on the server followed by :func:`workload` (:func:`aworkload`), unchanged, and reads
    what each run added: ``app_db_statements_total{kind}`` must grow by the statements per
    kind the driver received; ``app_db_statement_duration_seconds{kind}``, a Histogram, must
    time every one, with at least one select observed at :data:`PAUSE_S` or more, durations
    adding up to no more than the run's wall time, and none negative while the check sets
    the wall clock back. It names the mistake: no counter, the global default registry,
    values typed in, hand counting, wrong labels, wrong counts, a Summary, an empty
    histogram, durations that are made up, measured from the wrong start, or taken on the
    wall clock.
    """

    def stub(_session: Any) -> Any:
        raise NotImplementedError

    counter = _fresh(db)
    try:
        expected, statements = _count(counter)
    finally:
        counter.sync_engine.dispose()
        await counter.engine.dispose()
    fresh = _fresh(db)
    engines = [fresh.sync_engine, fresh.engine.sync_engine]
    try:
        try:
            registries = [instrument(engine) for engine in engines]
        except NotImplementedError:
            return check(stub, db, expected=None, budget=0)
        except ValueError as error:
            if "Duplicated timeseries" not in str(error):
                raise
            return _verdict(
                "global registry",
                f"✗ The second engine raised `{type(error).__name__}: Duplicated timeseries`: "
                "the instruments live in one shared registry (the global default one, or a "
                "module-level one), so instrumenting another engine, or re-running the cell, "
                "fails. Create a `CollectorRegistry()` in each call and pass it as `registry=`.",
            )
        if any(r is prometheus_client.REGISTRY for r in registries):
            return _verdict(
                "global registry",
                "✗ It returned the global default registry: every engine and every re-run of "
                "the cell share it. Create a `CollectorRegistry()` in each call.",
            )
        if not all(isinstance(r, CollectorRegistry) for r in registries):
            kind = type(registries[0]).__name__
            return _verdict(
                "no registry",
                f"✗ Return the CollectorRegistry holding the instruments, not {kind}.",
            )
        for registry in registries:
            mistake = _judge_before(_read(registry))
            if mistake is not None:
                return mistake
        wall = [0.0]

        def sync_run(session: Session) -> None:
            start = time.perf_counter()
            _one_run(session)
            wall[0] = time.perf_counter() - start

        async def async_run(session: AsyncSession) -> None:
            start = time.perf_counter()
            await _aone_run(session)
            wall[0] = time.perf_counter() - start

        for registry, engine, label in zip(
            registries, engines, ("sync engine", "async engine"), strict=True
        ):
            before = _read(registry)
            for _ in range(RUNS):
                await asyncio.sleep(GAP_S)
                with _clock_set_back(engine):
                    if label == "sync engine":
                        ran = check(sync_run, fresh, expected=None, budget=statements)
                    else:
                        ran = await acheck(async_run, fresh, expected=None, budget=statements)
                after = _read(registry)
                mistake = _judge_run(after - before, expected, label, wall[0])
                if mistake is not None:
                    return mistake
                if not ran.passed:
                    return ran
                before = after
        return CheckResult(
            "passed",
            f"✓ Passed: {statements} statements counted by kind {expected} and timed, "
            f"{RUNS} runs on a sync and on an async engine, each with its own registry.",
            statements=statements,
            budget=statements,
        )
    finally:
        fresh.sync_engine.dispose()
        await fresh.engine.dispose()
