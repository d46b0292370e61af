"""Logging and profiling: what ``echo`` logs, the seed's slow-query log, where a request's
time goes (inside the driver, or in SQLAlchemy and Python), and notebook 07's exercise.

The take-home tools are in :mod:`course_lib.query_log` (``cl.log_slow_queries``,
``cl.top_statements``, ``cl.tag_origin``); this module holds what only the notebook needs.

>>> import logging
>>> with captured_logs() as logs:
...     logging.getLogger("sqlalchemy.engine.Engine").warning("[generated in 0.00012s] (1,)")
>>> logs.text()
'WARNING sqlalchemy.engine.Engine  [generated in …] (1,)'

- :func:`captured_logs`: the records of the ``sqlalchemy`` loggers (and the slow-query log)
  while a block runs, with volatile parts (timings, addresses, connection details) made
  stable, so a notebook can print them as checked output;
- :func:`echo_log`, :func:`echo_kinds`, :func:`pool_at_info`, :func:`driver_transaction`:
  what ``echo`` / ``echo_pool`` log on a new engine, and when the driver begins;
- :func:`parameter_leaks`, :func:`hide_parameters_caveats`: what ``hide_parameters`` hides,
  and where a secret still shows;
- :func:`workload` / :func:`aworkload`: one "request" of the course apps, with 01's N+1;
  :func:`origin_counts`, :func:`threshold_at`, :func:`top_text`: its log, printed;
- :func:`install_seed_slow_log`, :func:`seed_overlap`: the popular guides' slow-query
  recipe, to run and refute (failures, overlapping statements);
- :func:`driver_time`, :func:`time_split`, :func:`split_chart`: time inside the driver
  (cursor execute and fetch, measured with engine events) against the rest;
- :func:`profile_table` (cProfile as a DataFrame) and :func:`pyinstrument_report`;
- :func:`check_recent_posts`: the exercise check (hidden N+1, unneeded full entities), on
  :func:`check_data`, a copy of the newest posts of its own.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import linecache
import logging
import math
import os
import pstats
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from sqlalchemy import (
    Engine,
    ForeignKey,
    String,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    configure_mappers,
    mapped_column,
    relationship,
)

from ..backends import Backend, scratch_sibling
from ..course import free_frames
from ..data import reset_schema
from ..exercises import CheckResult, check, rows_fetched
from ..measure import listening, quartiles
from ..models import Car, Comment, Post, Tag, User
from ..plots import STYLE
from ..query_log import (
    LOGGER_NAME,
    SlowQueryLog,
    log_slow_queries,
    normalize_sql,
    top_statements,
)
from ..reading import source

__all__ = [
    "ECHO_SETTINGS",
    "FEW",
    "LOOKUP",
    "OVERLAP",
    "RECENT",
    "SEED_LOGGER",
    "TOKEN",
    "CheckData",
    "DriverClock",
    "LogCapture",
    "LogLine",
    "SlowQueryLog",
    "aworkload",
    "byline",
    "captured_logs",
    "check_data",
    "check_recent_posts",
    "clock_facts",
    "configure_demo_mapping",
    "driver_time",
    "driver_transaction",
    "echo_kinds",
    "echo_log",
    "error_parameters",
    "hide_parameters_caveats",
    "install_seed_slow_log",
    "merge_top",
    "naive_recent_posts",
    "origin_counts",
    "parameter_leaks",
    "pgss_diff",
    "pgss_note",
    "pool_at_info",
    "profile_sizes",
    "profile_table",
    "pyinstrument_report",
    "seed_overlap",
    "seed_start_times",
    "side_by_side",
    "source",
    "split_chart",
    "stable",
    "threshold_at",
    "time_split",
    "top_text",
    "try_lookup",
    "two_users",
    "workload",
    "workload_sizes",
]


# ----------------------------------------------------------------------- captured logs


@dataclass(frozen=True)
class LogLine:
    """One log record, formatted when it was emitted (a connection's repr changes later)."""

    level: str
    logger: str
    message: str

    @property
    def kind(self) -> str:
        """What the line is: statement, parameters, columns, row, transaction, checkout (a
        pooled connection checked out, returned or reset), pool, orm or other."""
        message = self.message
        if self.logger.startswith("sqlalchemy.pool"):
            checkout = ("checked out from pool", "being returned to pool", "-on-return", "reset")
            return "checkout" if any(part in message for part in checkout) else "pool"
        if self.logger.startswith("sqlalchemy.orm"):
            return "orm"
        if not self.logger.startswith("sqlalchemy.engine"):
            return "other"
        markers = ("[generated", "[cached", "[raw sql]", "[no key", "[caching disabled", "[dialect")
        if message.startswith(markers):
            return "parameters"
        if message.startswith("Col "):
            return "columns"
        if message.startswith("Row "):
            return "row"
        if message.split(" ", 1)[0] in {"BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"}:
            return "transaction"
        return "statement"


_VOLATILE = [
    # compile-cache markers carry timings
    (re.compile(r"\[generated in [0-9.e-]+s\]"), "[generated in …]"),
    (re.compile(r"\[cached since [0-9.e-]+s ago\]"), "[cached since … ago]"),
    (re.compile(r"\[no key [0-9.e-]+s\]"), "[no key …]"),
    (re.compile(r"\[caching disabled ((?:\([^)]*\) )?)[0-9.e-]+s ?\]"), r"[caching disabled \1…]"),
    (re.compile(r"(\[dialect \S+ does not support caching) [0-9.e-]+s\]"), r"\1 …]"),
    # DBAPI connection reprs: addresses, and host/database/state on PostgreSQL
    (
        re.compile(r"<(?:[^<>]|<[^<>]*>)*(?:Connection|connection)(?:[^<>]|<[^<>]*>)*>"),
        "<connection>",
    ),
    (re.compile(r" at 0x[0-9a-fA-F]+"), ""),
    # the slow-query log's measured duration
    (re.compile(r"slow query: [0-9.]+ ms"), "slow query: … ms"),
    (re.compile(r"\([0-9.]+ ms of it fetching"), "(… ms of it fetching"),
]


def stable(message: str) -> str:
    """``message`` with timings, addresses and connection details replaced (see ``_VOLATILE``).

    >>> stable("[cached since 0.0006s ago] (2,)")
    '[cached since … ago] (2,)'
    """
    for pattern, replacement in _VOLATILE:
        message = pattern.sub(replacement, message)
    return message


#: The logger the seed's slow-query recipe writes to (:func:`install_seed_slow_log`).
SEED_LOGGER = "seed.slow_queries"


class _Collect(logging.Handler):
    def __init__(self, lines: list[LogLine]):
        super().__init__(logging.DEBUG)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(LogLine(record.levelname, record.name, stable(record.getMessage())))


@dataclass
class LogCapture:
    """The lines :func:`captured_logs` collected, in order."""

    lines: list[LogLine] = field(default_factory=list)

    def clear(self) -> None:
        """Forget what was collected so far (e.g. an engine's first-connect queries)."""
        self.lines.clear()

    def select(self, *kinds: str) -> list[LogLine]:
        """The lines of these kinds (all lines when none is given)."""
        return [line for line in self.lines if not kinds or line.kind in kinds]

    def kinds(self) -> Counter[str]:
        """How many lines of each kind."""
        return Counter(line.kind for line in self.lines)

    def text(self, *kinds: str, width: int = 150) -> str:
        """One line per record (``LEVEL logger  message``, whitespace collapsed)."""
        out = []
        for line in self.select(*kinds):
            message = " ".join(line.message.split())
            if len(message) > width:
                message = message[: width - 1] + "…"
            out.append(f"{line.level:<7} {line.logger}  {message}")
        return "\n".join(out)


#: Loggers SQLAlchemy's ``echo`` flags use: with a handler of ours on them, ``echo=True``
#: adds no stdout handler of its own (it does so only on a logger without handlers).
_ECHO_LOGGERS = (
    "sqlalchemy.engine.Engine",
    "sqlalchemy.pool.impl.QueuePool",
    "sqlalchemy.pool.impl.AsyncAdaptedQueuePool",
    "sqlalchemy.pool.impl.NullPool",
    "sqlalchemy.pool.impl.StaticPool",
    "sqlalchemy.pool.impl.SingletonThreadPool",
    "sqlalchemy.pool.impl.AssertionPool",
)


def _level(value: int | str) -> int:
    return value if isinstance(value, int) else logging.getLevelNamesMapping()[value.upper()]


@contextmanager
def captured_logs(levels: Mapping[str, int | str] | None = None) -> Iterator[LogCapture]:
    """Collect the records of the ``sqlalchemy`` loggers, the slow-query log and the seed's
    recipe (:data:`SEED_LOGGER`) while the block runs.

    ``levels`` sets logger levels for the block (the logging-module route, e.g.
    ``{"sqlalchemy.engine": "INFO"}``); everything is restored afterwards. Nothing is
    printed while capturing: SQLAlchemy's own stdout handlers (added by ``echo=True``) are
    detached for the block, and the records do not reach the root logger.
    """
    capture = LogCapture()
    handler = _Collect(capture.lines)
    roots = ("sqlalchemy", LOGGER_NAME, SEED_LOGGER)
    names = set(roots) | set(_ECHO_LOGGERS) | set(levels or {})
    names |= {n for n in logging.root.manager.loggerDict if n.startswith("sqlalchemy.")}
    saved = {}
    for name in names:
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.propagate, logger.level)
        for existing in list(logger.handlers):  # echo's stdout handlers: silent for the block
            if isinstance(existing, logging.StreamHandler):
                logger.removeHandler(existing)
    for name in roots:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).propagate = False
    for name in _ECHO_LOGGERS:  # caught here, so they do not also reach "sqlalchemy"
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).propagate = False
    for name, level in (levels or {}).items():
        logging.getLogger(name).setLevel(_level(level))
    try:
        yield capture
    finally:
        for name, (handlers, propagate, level) in saved.items():
            logger = logging.getLogger(name)
            for current in list(logger.handlers):
                logger.removeHandler(current)
            for original in handlers:
                logger.addHandler(original)
            logger.propagate = propagate
            logger.setLevel(level)  # (setLevel clears the loggers' cached levels)
        for name in set(logging.root.manager.loggerDict) - set(saved):
            if name.startswith("sqlalchemy."):  # created during the block: leave it clean
                logger = logging.getLogger(name)
                if handler in logger.handlers:
                    logger.removeHandler(handler)


def error_parameters(error: BaseException) -> str:
    """The line of a SQLAlchemy error message that shows the parameters (or says they
    are hidden); '' when there is none.

    >>> from sqlalchemy.exc import StatementError
    >>> error_parameters(StatementError("boom", "SELECT :t", {"t": "x"}, None))
    "[parameters: {'t': 'x'}]"
    """
    for line in str(error).splitlines():
        if line.startswith(("[parameters:", "[SQL parameters hidden")):
            return line
    return ""


def configure_demo_mapping() -> list[str]:
    """Map two new classes (a lot with its vehicles) and configure them: what the
    ``sqlalchemy.orm`` loggers report happens here, once, never per query. Returns the
    class names mapped."""

    class Base(DeclarativeBase):  # a registry of its own, so the course's mappers stay as they are
        pass

    class Lot(Base):
        __tablename__ = "lots"
        id: Mapped[int] = mapped_column(primary_key=True)
        vehicles: Mapped[list[Vehicle]] = relationship(back_populates="lot")

    class Vehicle(Base):
        __tablename__ = "vehicles"
        id: Mapped[int] = mapped_column(primary_key=True)
        lot_id: Mapped[int] = mapped_column(ForeignKey("lots.id"))
        plate: Mapped[str] = mapped_column(String(12))
        lot: Mapped[Lot] = relationship(back_populates="vehicles")

    configure_mappers()
    return [Lot.__name__, Vehicle.__name__]


# ------------------------------------------------------------------------- echo, shown


def two_users(engine: Engine) -> None:
    """The same select twice in one session: compiled once, then taken from the cache."""
    with Session(engine) as session:
        for _ in range(2):
            session.execute(select(User.id, User.name).where(User.id <= 2)).all()


def echo_log(
    db: Backend, *, levels: Mapping[str, int | str] | None = None, **options: Any
) -> LogCapture:
    """The log lines of :func:`two_users` on a new ``create_engine(db.sync_url, **options)``
    (e.g. ``echo=True``), with ``levels`` set on loggers for the block (see
    :func:`captured_logs`); the first connection's set-up queries are left out."""
    with captured_logs(levels) as logs:
        engine = create_engine(db.sync_url, **options)
        try:
            engine.connect().close()  # the first connection: the dialect's set-up queries
            logs.clear()
            two_users(engine)
        finally:
            engine.dispose()
    return logs


#: The ``create_engine`` options :func:`echo_kinds` compares, by label.
ECHO_SETTINGS: dict[str, dict[str, Any]] = {
    "echo=True": {"echo": True},
    "echo='debug'": {"echo": "debug"},
    "echo=True, echo_pool=True": {"echo": True, "echo_pool": True},
    "echo=True, echo_pool='debug'": {"echo": True, "echo_pool": "debug"},
}

_KINDS = ["transaction", "statement", "parameters", "columns", "row", "checkout", "pool"]


def echo_kinds(
    db: Backend, settings: Mapping[str, Mapping[str, Any]] = ECHO_SETTINGS
) -> pd.DataFrame:
    """How many log lines of each kind :func:`echo_log` gives per setting (rows: line kinds,
    columns: the settings' labels)."""
    counts = {label: echo_log(db, **options).kinds() for label, options in settings.items()}
    frame = pd.DataFrame(counts).reindex(_KINDS).fillna(0).astype(int)
    frame.index.name = "line kind"
    return frame


def pool_at_info(db: Backend) -> LogCapture:
    """What ``echo_pool=True`` (INFO) logs when a pooled connection is invalidated (as a
    disconnect would) and the pool replaces it: no checkout, but the invalidation."""
    with captured_logs() as logs:
        engine = create_engine(db.sync_url, echo_pool=True)
        try:
            with engine.connect() as conn:
                conn.invalidate()  # what SQLAlchemy does when the driver reports a disconnect
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1").all()
        finally:
            engine.dispose()
    return logs


def driver_transaction(db: Backend) -> str:
    """Whether the driver is inside a transaction after a session's first SELECT: the
    ``BEGIN (implicit)`` SQLAlchemy logs is its own bookkeeping; the driver decides when
    the database hears a BEGIN."""
    with db.Session() as session:
        session.execute(select(User.id).where(User.id <= 2)).all()
        raw = session.connection().connection.dbapi_connection
        if db.name == "sqlite":
            return (
                f"sqlite3 (isolation_level={raw.isolation_level!r}): in a transaction after "
                f"the SELECT: {raw.in_transaction}"
            )
        status = raw.info.transaction_status.name
        return (
            f"psycopg (autocommit={raw.autocommit}): transaction status after the SELECT: {status}"
        )


# --------------------------------------------------------------- parameters in logs

#: The secret the parameter cells bind (a password-reset token).
TOKEN = "reset-7f3a9c-SECRET"

#: A password-reset lookup with a typo in its column name (``reset_tokn``), so it fails.
LOOKUP = text("SELECT id FROM users WHERE reset_tokn = :token")


def try_lookup(engine: Engine) -> DBAPIError:
    """Run the failing :data:`LOOKUP` with :data:`TOKEN` bound; return the error it raised."""
    try:
        with engine.connect() as conn:
            conn.execute(LOOKUP, {"token": TOKEN})
    except DBAPIError as error:
        return error
    raise AssertionError("the lookup should fail")


def parameter_leaks(backends: Sequence[Backend]) -> pd.DataFrame:
    """Per backend, with and without ``hide_parameters``: does :data:`TOKEN` show in the
    ``echo=True`` log of the failing lookup, and in the error's message?"""
    rows = []
    for db in backends:
        for hide in (False, True):
            with captured_logs() as logs:
                engine = create_engine(db.sync_url, echo=True, hide_parameters=hide)
                try:
                    error = try_lookup(engine)
                finally:
                    engine.dispose()
            rows.append(
                {
                    "backend": db.name,
                    "hide_parameters": hide,
                    "error": type(error).__name__,
                    "token in the log": TOKEN in logs.text(),
                    "token in the error": TOKEN in str(error),
                    "the error's parameter line": error_parameters(error),
                }
            )
    return pd.DataFrame(rows)


def hide_parameters_caveats(
    backends: Sequence[Backend], scratches: Sequence[Backend]
) -> pd.DataFrame:
    """Where a secret still shows with ``hide_parameters=True``, per backend: a DEBUG ``Row``
    line (the looked-up e-mail comes back in the row), the error's ``.params`` (the
    exception keeps them), and ``str(error)`` of a unique violation (the database's own
    message). The duplicate insert runs in ``scratches`` (same order as ``backends``:
    empty course tables) and is rolled back."""
    rows = []
    for db, scratch in zip(backends, scratches, strict=True):
        with db.Session() as session:
            email = session.scalar(select(User.email).order_by(User.id).limit(1))
        with captured_logs() as logs:
            engine = create_engine(db.sync_url, echo="debug", hide_parameters=True)
            try:
                with engine.connect() as conn:
                    conn.execute(select(User.id, User.email).where(User.email == email)).all()
                error = try_lookup(engine)
            finally:
                engine.dispose()
        duplicate = _duplicate_email(scratch, email)
        shown = {
            "a DEBUG Row line (the row looked up)": email in logs.text("row"),
            "the INFO parameter line": email in logs.text("parameters"),
            "error.params of the failed lookup": TOKEN in repr(error.params),
            "str(error) of a unique violation": email in str(duplicate),
        }
        rows += [{"backend": db.name, "where": k, "secret shown": v} for k, v in shown.items()]
    frame = pd.DataFrame(rows).pivot(index="where", columns="backend", values="secret shown")
    frame = frame.reindex(index=list(shown), columns=[db.name for db in backends])
    frame.columns.name = "secret shown, hide_parameters=True"
    return frame


def _duplicate_email(scratch: Backend, email: str) -> DBAPIError:
    """The error of inserting a second user with ``email`` (rolled back)."""
    engine = create_engine(scratch.sync_url, hide_parameters=True)
    users = User.__table__
    row = {"name": "x", "email": email, "created_at": datetime(2026, 1, 1)}
    try:
        with engine.connect() as conn:
            conn.execute(users.insert(), {"id": 1, **row})
            try:
                conn.execute(users.insert(), {"id": 2, **row})
            except DBAPIError as error:
                return error
            finally:
                conn.rollback()
    finally:
        engine.dispose()
    raise AssertionError("the duplicate e-mail should violate the unique constraint")


# ---------------------------------------------------------------------------- workload


def workload_sizes(db: Backend) -> dict[str, int]:
    """The sizes :func:`workload` uses, from the data: users for the N+1, cars to look up."""
    with db.Session() as session:
        users = int(session.scalar(select(func.count()).select_from(User)))
        cars = int(session.scalar(select(func.count()).select_from(Car)))
    return {"users": min(20, users), "cars": min(5, cars)}


def workload(session: Session, users: int = 20, cars: int = 5) -> dict[str, Any]:
    """One request of the course apps, as code is often written (the N+1 of notebook 01).

    Statements: 1 + ``users`` (each user's posts, lazily), 1 (cars per make), 1 (a page of
    cars), 1 (a title search), and ``cars`` primary-key lookups.
    """
    authors = session.scalars(select(User).order_by(User.id).limit(users)).all()
    posts = {}
    for user in authors:
        posts[user.id] = len(user.posts)  # a lazy load per user: the N+1
    by_make = select(Car.make, func.count(), func.avg(Car.price)).group_by(Car.make)
    per_make = session.execute(by_make.order_by(Car.make)).all()
    next_page = select(Car.id, Car.make, Car.price).where(Car.id > 100).order_by(Car.id)
    page = session.execute(next_page.limit(20)).all()
    found = session.scalars(select(Post.id).where(Post.title.like("%SQL%"))).all()
    looked_up = []
    for car_id in range(1, cars + 1):
        looked_up.append(session.get(Car, car_id))  # one statement per car
    return {"posts": posts, "makes": len(per_make), "page": len(page), "found": len(found)}


async def aworkload(session: Any, users: int = 20, cars: int = 5) -> dict[str, Any]:
    """:func:`workload` under an ``AsyncSession`` (the lazy loads made explicit with
    ``awaitable_attrs``: still one statement per user)."""
    authors = (await session.scalars(select(User).order_by(User.id).limit(users))).all()
    posts = {}
    for user in authors:
        posts[user.id] = len(await user.awaitable_attrs.posts)
    by_make = select(Car.make, func.count(), func.avg(Car.price)).group_by(Car.make)
    per_make = (await session.execute(by_make.order_by(Car.make))).all()
    next_page = select(Car.id, Car.make, Car.price).where(Car.id > 100).order_by(Car.id)
    page = (await session.execute(next_page.limit(20))).all()
    found = (await session.scalars(select(Post.id).where(Post.title.like("%SQL%")))).all()
    looked_up = []
    for car_id in range(1, cars + 1):
        looked_up.append(await session.get(Car, car_id))
    return {"posts": posts, "makes": len(per_make), "page": len(page), "found": len(found)}


# --------------------------------------------------------------- the seed's slow query log

seed_logger = logging.getLogger(SEED_LOGGER)


def install_seed_slow_log(engine: Engine) -> Callable[[], None]:
    """The popular guides' slow-query log, as they write it; returns a function removing it.

    (The guides listen on the ``Engine`` class, i.e. on every engine of the process; here
    it goes on ``engine`` only, so the rest of the notebook is not affected.)
    """

    def before_cursor_execute(conn, cursor, statement, parameters, context, executemany):
        conn.info.setdefault("query_start_time", []).append(time.time())

    def after_cursor_execute(conn, cursor, statement, parameters, context, executemany):
        total = time.time() - conn.info["query_start_time"].pop(-1)
        if total > 1.0:  # log queries slower than one second
            seed_logger.warning("Slow query (%.2fs): %s", total, statement)

    event.listen(engine, "before_cursor_execute", before_cursor_execute)
    event.listen(engine, "after_cursor_execute", after_cursor_execute)

    def remove() -> None:
        event.remove(engine, "before_cursor_execute", before_cursor_execute)
        event.remove(engine, "after_cursor_execute", after_cursor_execute)

    remove.listeners = (before_cursor_execute, after_cursor_execute)  # type: ignore[attr-defined]
    return remove


def seed_start_times(engine: Engine) -> int:
    """How many start times the seed's list holds on the pooled connection ``engine`` hands
    out next (``conn.info`` belongs to the DBAPI connection: it outlives every checkout)."""
    with engine.connect() as conn:
        return len(conn.info.get("query_start_time", []))


#: The overlap :func:`seed_overlap` stages: a long statement, a short one sent while the
#: long one runs, on the same ``AsyncConnection`` (seconds).
OVERLAP = {"long_s": 0.6, "gap_s": 0.2, "short_s": 0.05}


async def seed_overlap(db: Backend) -> pd.DataFrame:
    """Two statements in flight at once on one ``AsyncConnection`` (``asyncio.gather``):
    ``pg_sleep(long_s)``, and ``gap_s`` later ``pg_sleep(short_s)``. The seed's recipe
    (its start times on a list in ``conn.info``) and ``cl.log_slow_queries`` each report
    both; the seed pops the *other* statement's start time.

    The driver runs one statement at a time per connection (SQLAlchemy's asyncpg adapter
    holds a lock), so the short one waits for the long one: both events fire around that
    wait, and ``waited_ms`` is how long it stood in line (measured: from its
    ``before_cursor_execute`` until the long one's ``after_cursor_execute``). Returns
    one row per statement: sleep_ms (what the server was asked to sleep), seed_ms, ours_ms,
    waited_ms.
    """
    long_s, gap_s, short_s = OVERLAP["long_s"], OVERLAP["gap_s"], OVERLAP["short_s"]
    engine = create_async_engine(db.async_url, pool_size=1)
    seed: dict[float, float] = {}
    stamps: dict[str, float] = {}

    def before(conn: Any, _cur: Any, _sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        conn.info.setdefault("query_start_time", []).append(time.time())
        if _sleep_of(params) == short_s:
            stamps["short_sent"] = time.perf_counter()

    def after(conn: Any, _cur: Any, _sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        seed[_sleep_of(params)] = time.time() - conn.info["query_start_time"].pop(-1)
        if _sleep_of(params) == long_s:
            stamps["long_done"] = time.perf_counter()

    try:
        async with engine.connect() as conn:  # the first connection, before listening
            await conn.execute(select(1))
        event.listen(engine.sync_engine, "before_cursor_execute", before)
        event.listen(engine.sync_engine, "after_cursor_execute", after)
        with log_slow_queries(engine, threshold_ms=0, logger=None, with_parameters=True) as ours:
            async with engine.connect() as conn:

                async def late() -> Any:
                    await asyncio.sleep(gap_s)
                    return (await conn.execute(select(func.pg_sleep(short_s)))).all()

                async def early() -> Any:
                    return (await conn.execute(select(func.pg_sleep(long_s)))).all()

                await asyncio.gather(early(), late())
    finally:
        await engine.dispose()
    measured = {_sleep_of(q.parameters): q.duration_ms for q in ours.records}
    waited = (stamps["long_done"] - stamps["short_sent"]) * 1000
    return pd.DataFrame(
        [
            {
                "statement": f"pg_sleep({s:g})"
                + (f", sent {gap_s:g} s later" if s == short_s else ""),
                "sleep_ms": s * 1000,
                "seed_ms": seed[s] * 1000,
                "ours_ms": measured[s],
                "waited_ms": waited if s == short_s else 0.0,
            }
            for s in (long_s, short_s)
        ]
    ).set_index("statement")


def _sleep_of(params: Any) -> float:
    """The seconds a ``pg_sleep`` statement's parameters ask for (asyncpg: a tuple)."""
    values = list(params.values()) if isinstance(params, Mapping) else list(params or ())
    return float(values[0]) if values else math.nan


def clock_facts() -> pd.DataFrame:
    """What Python says about ``time.time`` and ``time.perf_counter`` on this machine."""
    rows = []
    for name in ("time", "perf_counter"):
        info = time.get_clock_info(name)
        rows.append(
            {
                "clock": f"time.{name}()",
                "adjustable": info.adjustable,
                "monotonic": info.monotonic,
                "resolution_s": info.resolution,
            }
        )
    return pd.DataFrame(rows).set_index("clock")


_LINE_NUMBER = re.compile(r":\d+(?= )")


def _without_line(where: str) -> str:
    """``profiling.py:327 workload`` → ``profiling.py workload`` (a line number moves with
    every edit of the file above it: not for checked output)."""
    return _LINE_NUMBER.sub("", where, count=1)


def top_text(frame: pd.DataFrame, width: int = 110) -> str:
    """A top-statements frame as text: count, origin (file and function, when there is one)
    and shape, one line each (deterministic with ``by="count"``: no timings, no line
    numbers)."""
    lines = []
    origins = [
        _without_line(o) for o in frame.get("origin", pd.Series(dtype=object)) if isinstance(o, str)
    ]
    wide = max((len(o) for o in origins), default=0)
    for row in frame.itertuples(index=False):
        origin = getattr(row, "origin", None)
        where = f"{_without_line(origin):<{wide}}  " if isinstance(origin, str) else ""
        shape = row.shape if len(row.shape) <= width else row.shape[: width - 1] + "…"
        lines.append(f"{row.count:>5} × {where}{shape}")
    return "\n".join(lines)


def origin_counts(log: SlowQueryLog) -> str:
    """How many statements came from each line of code, in order of first appearance: the
    file, the function and the line's own source text (not its number, which moves when
    the file is edited above it).

    >>> origin_counts(SlowQueryLog([], 0, None, 0, 10, False, (), 100))
    ''
    """
    counts: Counter[tuple[str, str, str]] = Counter()
    for query in log.records:
        origin = query.origin
        if origin is None:
            counts[("?", "?", "")] += 1
            continue
        code = linecache.getline(origin.path, origin.line).split("  # ", 1)[0].strip()
        counts[(os.path.basename(origin.file), origin.function, code)] += 1
    return "\n".join(
        f"{n:>4} × {file} {function}: {code}" for (file, function, code), n in counts.items()
    )


def threshold_at(log: SlowQueryLog, quantile: float = 0.9) -> float:
    """A threshold (ms, 3 decimals) that the ``quantile`` of ``log``'s statements stay under:
    the statement time at that rank, from a complete record (``threshold_ms=0``)."""
    times = sorted(q.duration_ms for q in log.records)
    if not times:
        raise ValueError("the log recorded no statement: run it with threshold_ms=0 first")
    return round(times[min(len(times) - 1, int(len(times) * quantile))], 3)


# ------------------------------------------------------------------ pg_stat_statements


def pgss_note(db: Backend) -> str:
    """Why ``db`` has no ``pg_stat_statements`` view to read ('' when it has one)."""
    if db.name != "postgresql":
        return "pg_stat_statements is a PostgreSQL module."
    with db.sync_engine.connect() as conn:
        preload = conn.exec_driver_sql("SHOW shared_preload_libraries").scalar() or ""
        if "pg_stat_statements" not in preload:
            return (
                "pg_stat_statements is not loaded on this server (shared_preload_libraries = "
                f"{preload!r}), so there is no server-side view to compare with: add it there "
                "and restart the server."
            )
        installed = conn.execute(
            text("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'")
        ).first()
    if installed is None:
        return (
            "pg_stat_statements is loaded, but its view is not created in this database: "
            "CREATE EXTENSION pg_stat_statements (as the database owner)."
        )
    return ""


def side_by_side(db: Backend, run: Callable[[Session], Any]) -> pd.DataFrame | str:
    """``run(session)``'s statements as the client saw them (the top-statements table) next
    to the server's ``pg_stat_statements`` (calls and execution time added while ``run``
    ran, from two snapshots of this database and role: nothing is reset), matched by shape.
    Or, when the server has no such view, the one line :func:`pgss_note` gives.

    The server's calls are "at least" the client's: other sessions of the same role and
    database add theirs, and before PostgreSQL 18 each IN-list length is its own entry
    (the client's shape merges them; :func:`merge_top` sums the server's entries per shape).
    """
    note = pgss_note(db)
    if note:
        return note
    before = _pgss_snapshot(db)
    with (
        log_slow_queries(db.sync_engine, threshold_ms=0, logger=None) as client,
        db.Session() as session,
    ):
        run(session)
    after = _pgss_snapshot(db)
    return merge_top(top_statements(client), pgss_diff(before, after))


def merge_top(client: pd.DataFrame, server: pd.DataFrame) -> pd.DataFrame:
    """A client top-statements frame and a :func:`pgss_diff` frame, matched by shape
    (:func:`~course_lib.query_log.normalize_sql` of the server's text). Statements only one
    side saw keep empty cells on the other (the server also counts BEGIN and COMMIT)."""
    server = server.assign(shape=server["query"].map(normalize_sql))
    server = server.groupby("shape", as_index=False, sort=False).agg(
        server_calls=("calls", "sum"), server_ms=("total_ms", "sum")
    )
    client = client[["shape", "count", "total_ms"]].rename(
        columns={"count": "client_count", "total_ms": "client_ms"}
    )
    merged = client.merge(server, on="shape", how="outer")
    return merged.sort_values(["client_ms", "server_ms"], ascending=False).reset_index(drop=True)


def _pgss_snapshot(db: Backend) -> pd.DataFrame:
    # this database and this role only (pg_stat_statements has no application_name: other
    # clients of the same role and database still count, so its calls are "at least")
    query = text(
        "SELECT s.queryid, s.query, s.calls, s.total_exec_time "
        "FROM pg_stat_statements AS s JOIN pg_database AS d ON d.oid = s.dbid "
        "JOIN pg_roles AS r ON r.oid = s.userid "
        "WHERE d.datname = current_database() AND r.rolname = current_user AND s.toplevel"
    )
    with db.sync_engine.connect() as conn:
        rows = conn.execute(query).all()
    return pd.DataFrame(rows, columns=["queryid", "query", "calls", "total_exec_time"])


def pgss_diff(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """What was added between two ``pg_stat_statements`` snapshots, per query: calls,
    total and mean ms (server execution time only), largest total first."""
    merged = after.merge(
        before[["queryid", "calls", "total_exec_time"]],
        on="queryid",
        how="left",
        suffixes=("", "_before"),
    ).fillna({"calls_before": 0, "total_exec_time_before": 0.0})
    merged["calls"] = merged["calls"] - merged["calls_before"]
    merged["total_ms"] = merged["total_exec_time"] - merged["total_exec_time_before"]
    merged = merged[(merged["calls"] > 0) & ~merged["query"].str.contains("pg_stat_statements")]
    merged = merged.copy()
    merged["mean_ms"] = merged["total_ms"] / merged["calls"]
    merged["query"] = merged["query"].map(lambda q: " ".join(str(q).split()))
    merged = merged.sort_values("total_ms", ascending=False)
    return merged[["query", "calls", "total_ms", "mean_ms"]].reset_index(drop=True)


# ------------------------------------------------------------ where the time goes


@dataclass
class DriverClock:
    """Seconds spent inside the driver while :func:`driver_time` listened."""

    execute_s: float = 0.0
    fetch_s: float = 0.0
    statements: int = 0

    @property
    def seconds(self) -> float:
        """Execute plus fetch."""
        return self.execute_s + self.fetch_s


class _TimedCursor:
    """A DBAPI cursor whose ``fetch*`` calls add their time to a clock (all else forwarded)."""

    def __init__(self, cursor: Any, clock: DriverClock):
        self._cursor, self._clock = cursor, clock

    def _timed(self, method: str, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return getattr(self._cursor, method)(*args)
        finally:
            self._clock.fetch_s += time.perf_counter() - start

    def fetchone(self) -> Any:
        return self._timed("fetchone")

    def fetchmany(self, *args: Any) -> Any:
        return self._timed("fetchmany", *args)

    def fetchall(self) -> Any:
        return self._timed("fetchall")

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


@contextmanager
def driver_time(db: Backend) -> Iterator[DriverClock]:
    """Time spent inside the driver by ``db``'s engines while the block runs: each
    ``cursor.execute`` (between ``before_`` and ``after_cursor_execute``) and each
    ``fetch*`` call on the cursor SQLAlchemy then reads the rows from (wrapped in
    ``after_cursor_execute``, before the result is built). The rest of the block's time
    is SQLAlchemy and Python: compiling, building rows and ORM objects, the identity map.
    """
    clock = DriverClock()

    def before(_c: Any, _cur: Any, _sql: str, _p: Any, context: Any, _many: bool) -> None:
        context._profiling_t0 = time.perf_counter()

    def after(_c: Any, cursor: Any, _sql: str, _p: Any, context: Any, _many: bool) -> None:
        clock.execute_s += time.perf_counter() - context._profiling_t0
        clock.statements += 1
        if not cursor.description:
            return  # no rows to fetch
        # wrap what is there (the cursor, or another listener's wrapper of it, such as the
        # slow-query log's), once per statement
        if not (isinstance(context.cursor, _TimedCursor) and context.cursor._clock is clock):
            context.cursor = _TimedCursor(context.cursor, clock)

    hooks = [("before_cursor_execute", before), ("after_cursor_execute", after)]
    with listening(db, hooks):
        yield clock


def time_split(
    strategies: Sequence[Callable[[Backend, int], Any]],
    backends: Sequence[Backend],
    n: int,
    *,
    repeats: int = 7,
) -> pd.DataFrame:
    """Per strategy and backend: median total time, time inside the driver, and the rest
    (SQLAlchemy and Python), in ms, over ``repeats`` interleaved samples of one call each
    (a warm-up call first; ``gc.collect()`` before every sample), with the first and third
    quartiles of the total (``q1_ms``, ``q3_ms``: the spread :func:`split_chart` draws).

    Not ``cl.compare``: each sample must be one call, timed inside and outside the driver
    together, so the two parts come from the same runs."""
    rows = []
    for db in backends:
        samples: dict[str, list[tuple[float, float]]] = {}
        for fn in strategies:
            fn(db, n)  # warm-up: connections, compiled statements
        for _ in range(repeats):
            for fn in strategies:
                gc.collect()
                with driver_time(db) as clock:
                    start = time.perf_counter()
                    fn(db, n)
                    total = time.perf_counter() - start
                samples.setdefault(_label(fn), []).append((total, clock.seconds))
        for fn in strategies:
            pairs = samples[_label(fn)]
            q1, total, q3 = (q * 1000 for q in quartiles([t for t, _ in pairs]))
            driver = statistics.median(d for _, d in pairs) * 1000
            python = statistics.median(t - d for t, d in pairs) * 1000
            rows.append(
                {
                    "strategy": _label(fn),
                    "backend": db.name,
                    "n": n,
                    "total_ms": round(total, 2),
                    "driver_ms": round(driver, 2),
                    "python_ms": round(python, 2),
                    "python_share": round(python / total, 2) if total else float("nan"),
                    "q1_ms": round(q1, 2),
                    "q3_ms": round(q3, 2),
                }
            )
    return pd.DataFrame(rows)


def _label(fn: Callable[..., Any]) -> str:
    return (fn.__doc__ or fn.__name__).strip().splitlines()[0]


def split_chart(frame: pd.DataFrame, title: str) -> Figure:
    """Stacked horizontal bars, one panel per backend: time inside the driver, then the rest
    (medians), with the total's Q1-Q3 as an error bar at the end of each bar."""
    backends = list(dict.fromkeys(frame["backend"]))
    per_panel = len(frame) / max(1, len(backends))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            len(backends),
            1,
            figsize=(8, 1.0 + len(backends) * (0.6 + 0.45 * per_panel)),
            squeeze=False,
            sharex=True,
        )
        for ax, backend in zip(axes[:, 0], backends, strict=True):
            part = frame[frame["backend"] == backend]
            ys = range(len(part))
            ax.barh(ys, part["driver_ms"], label="inside the driver (execute + fetch)")
            ax.barh(
                ys,
                part["python_ms"],
                left=part["driver_ms"],
                label="SQLAlchemy and Python (rows, ORM objects)",
            )
            if {"q1_ms", "q3_ms", "total_ms"} <= set(part.columns):  # the total's Q1-Q3
                spread = [part["total_ms"] - part["q1_ms"], part["q3_ms"] - part["total_ms"]]
                ends = part["total_ms"]
                ax.errorbar(ends, ys, xerr=spread, fmt="none", ecolor="black", capsize=3, lw=1)
            ax.set_yticks(list(ys), part["strategy"])
            ax.invert_yaxis()
            ax.set_title(f"{title} · {backend}")
        axes[-1, 0].set_xlabel("median time per call (ms)")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    plt.close(fig)
    return fig


_SITE = re.compile(r"^.*?[\\/](?:site|dist)-packages[\\/]")


def _short_file(path: str) -> str:
    """A profiler's file name without this machine's folders (``In[n]`` for a notebook cell)."""
    if path.startswith(("~", "<")):
        return path
    cell = _cell_files().get(re.split(r"[\\/]", path)[-1])
    if cell is not None:
        return cell
    short = _SITE.sub("", path)
    if short == path:  # not an installed package: the file name only
        short = re.split(r"[\\/]", path)[-1]
    return short.replace("\\", "/")


def _cell_files() -> dict[str, str]:
    """The file names IPython compiled this session's cells into, and their ``In[n]``."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None  # type: ignore[attr-defined]
    names = getattr(getattr(shell, "compile", None), "_filename_map", None) or {}
    return {re.split(r"[\\/]", path)[-1]: f"In[{n}]" for path, n in names.items()}


@contextmanager
def _no_gc() -> Iterator[None]:
    """Collect first, then no collection during the block (restored after)."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def profile_table(fn: Callable[[], Any], top: int = 12, *, repeats: int = 3) -> pd.DataFrame:
    """Run ``fn()`` under cProfile; the ``top`` functions by cumulative time.

    After a warm-up call, ``repeats`` (at least 3) plain runs and ``repeats`` profiled runs
    alternate, each with the garbage collector off (a collection during a run would be
    charged to whatever function was running: ``gc.collect()`` before is not enough, the
    ORM allocates enough for dozens of collections in one load). The table is the last
    profiled run's. Columns: function (``package/file.py:line(name)``, no folders of this
    machine), calls, own_ms (time in the function itself) and cumulative_ms (with what it
    called). ``frame.attrs``: ``total_ms`` and ``plain_ms``, the medians of the profiled and
    of the plain runs' wall times (cProfile's own cost is the difference), and ``calls``,
    the call count of every function as ``"package/file.py:name"``.
    """
    repeats = max(3, repeats)
    fn()  # warm-up: connections, compiled statements
    plain, profiled = [], []
    profiler = cProfile.Profile()
    for _ in range(repeats):
        with _no_gc():
            start = time.perf_counter()
            fn()
            plain.append(time.perf_counter() - start)
        profiler = cProfile.Profile()
        with _no_gc():
            start = time.perf_counter()
            profiler.enable()
            try:
                fn()
            finally:
                profiler.disable()
                profiled.append(time.perf_counter() - start)
    stats = pstats.Stats(profiler)
    rows, calls_by_name = [], {}
    for (path, line, name), (_cc, calls, own, cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{_short_file(path)}:{line}({name})" if line else re.sub(r" at 0x\w+", "", name)
        if line:
            key = f"{_short_file(path)}:{name}"
            calls_by_name[key] = calls_by_name.get(key, 0) + calls
        rows.append(
            {
                "function": where,
                "calls": calls,
                "own_ms": own * 1000,
                "cumulative_ms": cumulative * 1000,
            }
        )
    frame = pd.DataFrame(rows).sort_values("cumulative_ms", ascending=False).head(top)
    frame = frame.round({"own_ms": 2, "cumulative_ms": 2}).reset_index(drop=True)
    frame.attrs["total_ms"] = statistics.median(profiled) * 1000
    frame.attrs["plain_ms"] = statistics.median(plain) * 1000
    frame.attrs["calls"] = calls_by_name
    return frame


#: An absolute path (``/a/b/c.py``, ``C:\\a\\c.py``), not a package-relative one (``a/b.py``).
_ABSOLUTE = re.compile(r"(?<![\w./\\])(?:[A-Za-z]:)?[\\/](?:[^\\/\s:]+[\\/])+([^\\/\s:]+)")


def pyinstrument_report(
    fn: Callable[[], Any], *, interval: float = 0.0005, show: str = r".*sqlalchemy.*"
) -> str:
    """Run ``fn()`` once under pyinstrument; its call tree as text (percent of the total).

    Frames of modules matching ``show`` are kept (pyinstrument hides library code by
    default, and SQLAlchemy is what we look into); branches under 2 % are cut. The header
    that names this machine's files is dropped, and file names keep no folders.
    """
    from pyinstrument import Profiler

    profiler = Profiler(interval=interval)
    gc.collect()
    profiler.start()
    try:
        fn()
    finally:
        profiler.stop()
    report = profiler.output_text(
        unicode=True,
        color=False,
        time="percent_of_total",
        processor_options={"show_regex": show, "filter_threshold": 0.02},
    )
    lines = [line for line in report.splitlines() if not line.strip().startswith("Profile at")]
    body = "\n".join(lines)
    body = re.sub(r"\S*(?:site|dist)-packages[\\/]", "", body)
    body = _ABSOLUTE.sub(r"\1", body)
    body = re.sub(r"(?<![\w.])(?:\.\.[\\/])+(?:[^\s\\/]+[\\/])*([^\s\\/]+)", r"\1", body)
    for file, cell in _cell_files().items():
        body = re.sub(rf"(?<![\w.]){re.escape(file)}", cell, body)
    return body.strip("\n")


# ------------------------------------------------------------------------- the exercise

#: How many recent posts the exercise's report lists (fewer when the scale has fewer).
RECENT = 50

#: The second size the check asks for: fewer posts than any scale has, so a hard-coded
#: limit, or every post fetched and cut in Python, shows.
FEW = 5


def byline(post: Post) -> str:
    """The author's name for a post's byline."""
    return post.author.name  # a lazy load of the author, the first time each is seen


def naive_recent_posts(session: Session, n: int = RECENT) -> list[tuple[str, str]]:
    """The newest ``n`` posts as (title, author name): the code the exercise starts from."""
    newest = select(Post).order_by(Post.created_at.desc(), Post.id.desc()).limit(n)
    return [(post.title, byline(post)) for post in session.scalars(newest)]


def _reference_recent_posts(session: Session, n: int = RECENT) -> list[tuple[str, str]]:
    """The check's reference: the newest ``n`` posts as (title, author name), newest first
    (ties: higher id first), in one statement that returns just those two columns."""
    stmt = (
        select(Post.title, User.name)
        .join(Post.author)
        .order_by(Post.created_at.desc(), Post.id.desc())
        .limit(n)
    )
    return [(title, name) for title, name in session.execute(stmt)]


class _DriverTally:
    """Statements that reached the DBAPI connections of the check's copy, counted by the
    driver itself (sqlite3's trace callback, a psycopg cursor class), while ``armed``: what
    a raw DBAPI cursor sends is there, though no SQLAlchemy event sees it."""

    def __init__(self) -> None:
        self.armed, self.count = False, 0

    def saw(self, sql: str) -> None:
        if self.armed and _is_query(sql):
            self.count += 1


def _is_query(sql: str) -> bool:
    words = sql.lstrip().split(None, 1)
    return bool(words) and words[0].upper() in {"SELECT", "WITH", "VALUES", "TABLE"}


def _hook_driver(engine: Engine, tally: _DriverTally) -> None:
    """Count, at the driver, every statement ``engine``'s connections execute."""
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _trace(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.set_trace_callback(tally.saw)

        return
    import psycopg

    class _TalliedCursor(psycopg.Cursor):  # type: ignore[type-arg]
        def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            sql = query
            if isinstance(query, bytes):
                sql = query.decode(errors="replace")
            elif not isinstance(query, str):  # psycopg.sql.Composed and friends
                try:
                    sql = query.as_string(self)
                except Exception:  # counted as a query all the same
                    sql = "SELECT"
            tally.saw(sql)
            return super().execute(query, *args, **kwargs)

    @event.listens_for(engine, "connect")
    def _cursors(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.cursor_factory = _TalliedCursor


@dataclass(frozen=True)
class CheckData:
    """Where :func:`check_recent_posts` judges: a scratch copy of the newest posts."""

    db: Backend
    #: posts the copy holds: the dataset's newest ``2 * RECENT`` (fewer if it has fewer) and
    #: one more, newer than all of them, which no result computed on the dataset holds
    posts: int
    #: the extra newest post's title
    fresh_title: str
    #: per size the check asks for: the ids (highest first) of the posts ranked n - 1 to
    #: n + 2, which share one ``created_at``, so only the id tie-breaker orders them
    tied: dict[int, tuple[int, ...]]
    driver: _DriverTally


_CHECK_DATA: dict[str, CheckData] = {}


def check_data(db: Backend) -> CheckData:
    """The copy :func:`check_recent_posts` runs on (made once per backend and process)."""
    key = db.sync_url.render_as_string()
    if key in _CHECK_DATA:
        return _CHECK_DATA[key]
    with db.Session() as session:
        top = session.execute(
            select(Post.__table__).order_by(Post.created_at.desc(), Post.id.desc())
        ).fetchmany(2 * RECENT)
        last_id = int(session.scalar(select(func.max(Post.id))) or 0)
        if not top:
            raise RuntimeError(f"{db.name} holds no posts: the check needs some")
        rows = [row._asdict() for row in top]
        authors = {row["author_id"] for row in rows}
        users = session.execute(select(User.__table__).where(User.id.in_(authors))).all()
    fresh = {
        **rows[-1],  # by the author of the oldest copied post
        "id": last_id + 1,
        "title": "Written after the dataset: what the logs said",
        "created_at": rows[0]["created_at"] + timedelta(hours=1),
    }
    rows.insert(0, fresh)
    tied = {}
    for n in (FEW, RECENT):
        if len(rows) >= n + 2 and n >= 2:
            group = rows[n - 2 : n + 2]  # ranks n - 1 .. n + 2 (two in the list, two not)
            for row in group:
                row["created_at"] = rows[n - 1]["created_at"]
            tied[n] = tuple(sorted((row["id"] for row in group), reverse=True))
    copy = reset_schema(scratch_sibling(db, "profiling_check", db.database.removeprefix("course_")))
    with copy.sync_engine.begin() as conn:
        conn.execute(insert(User.__table__), [row._asdict() for row in users])
        conn.execute(insert(Post.__table__), sorted(rows, key=lambda row: row["id"]))
    copy.sync_engine.dispose()
    copy = copy.fresh()  # engines made after the driver hook below: every connection counted
    driver = _DriverTally()
    _hook_driver(copy.sync_engine, driver)
    data = CheckData(copy, len(rows), fresh["title"], tied, driver)
    _CHECK_DATA[key] = data
    return data


@dataclass
class _Watched:
    """What :func:`_watch` saw while an answer ran."""

    #: (engine, bound values, sql) of every statement any engine of the process sent
    statements: list[tuple[Engine, int, str]] = field(default_factory=list)
    #: statements sent from inside the check's own reference function
    from_reference: int = 0
    rows: int = 0


@contextmanager
def _watch(data: CheckData) -> Iterator[_Watched]:
    """Listen on the ``Engine`` class (every engine of the process, one made by the answer
    too), count the rows of the copy at the driver, and arm the driver-level tally."""
    seen = _Watched()
    reference = _reference_recent_posts.__code__

    def before(conn: Any, _cur: Any, sql: str, params: Any, _ctx: Any, many: bool) -> None:
        values = len(params) if isinstance(params, Mapping | list | tuple) and not many else 0
        seen.statements.append((conn.engine, values, sql))
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code is reference:
                seen.from_reference += 1
                break
            frame = frame.f_back

    event.listen(Engine, "before_cursor_execute", before)
    data.driver.armed, data.driver.count = True, 0
    try:
        with rows_fetched(data.db) as tally:
            yield seen
        seen.rows = tally.rows
    finally:
        data.driver.armed = False
        event.remove(Engine, "before_cursor_execute", before)


def _expected_counts(data: CheckData, n: int) -> tuple[int, int]:
    """Posts the answer must list and distinct authors among them, counted on the copy."""
    with data.db.Session() as session:
        newest = (
            select(Post.author_id).order_by(Post.created_at.desc(), Post.id.desc()).limit(n)
        ).subquery()
        posts = int(session.scalar(select(func.count()).select_from(newest)))
        authors = int(session.scalar(select(func.count(newest.c.author_id.distinct()))))
    return posts, authors


def check_recent_posts(
    fn: Callable[[Session, int], Any], db: Backend, *, n: int = RECENT, budget: int = 2
) -> CheckResult:
    """Judge ``fn(session, n)``, the exercise: the newest ``n`` posts as (title, author name).

    It runs on :func:`check_data` (a copy of ``db``'s newest posts, with one post newer than
    the dataset's and ties across the n-th place), twice: for ``n`` posts and for
    :data:`FEW`. Each run must return the reference's list (rows compared as tuples, in
    order), in at most ``budget`` statements, all through the session it is given (one on
    another engine, or a raw DBAPI cursor, is rejected), at least one (a cached result is
    not a query), each with bound values (no value pasted into the SQL), building no ORM
    object (titles and names are columns), and fetching no more rows than the answer needs:
    the ``n`` posts, plus their distinct authors when the names come from a second
    statement. An error raised by ``fn`` is reported in one line; the untouched stub gives
    "not attempted".
    """
    data = check_data(db)
    verdict: CheckResult | None = None
    for size in dict.fromkeys((n, FEW)):
        verdict = _judge_recent(fn, data, size, budget)
        if not verdict.passed:
            return verdict
    assert verdict is not None
    return verdict


def _judge_recent(
    fn: Callable[[Session, int], Any], data: CheckData, n: int, budget: int
) -> CheckResult:
    posts, authors = _expected_counts(data, n)
    watched: list[_Watched] = []

    def answer(session: Session) -> Any:
        with _watch(data) as seen:
            watched.append(seen)
            return fn(session, n)

    try:
        verdict = check(
            answer,
            data.db,
            reference=lambda session: _reference_recent_posts(session, n),
            budget=budget,
            normalize=lambda rows: [tuple(row) for row in rows] if _rows_like(rows) else rows,
            forbid_entities=(Post, User, Comment, Tag),
            max_objects=0,
            max_rows=posts + authors,
        )
    except Exception as error:  # the learner's code raised: say what, in one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        free_frames(error)
        return CheckResult(
            "raised", f"✗ It raised {type(error).__name__}: {first[:200]}", budget=budget
        )
    if verdict.status == "not attempted" or not watched:
        return verdict
    verdict = _beyond_the_check(verdict, watched[0], data, posts, authors) or verdict
    if verdict.status == "over budget":
        verdict.message += (
            " The top-statements table shows which shape repeats, and its origin which line"
            " sends it."
        )
    if not verdict.passed:
        verdict.message = verdict.message.replace("✗ ", f"✗ With n={n}: ", 1)
    return verdict


def _beyond_the_check(
    verdict: CheckResult, seen: _Watched, data: CheckData, posts: int, authors: int
) -> CheckResult | None:
    """What ``cl.check`` cannot see: statements past the session, none at all, values
    pasted into the SQL, and a row or two too many. None when there is nothing to add."""
    ours = [
        (values, sql) for engine, values, sql in seen.statements if engine is data.db.sync_engine
    ]
    elsewhere = len(seen.statements) - len(ours)
    common = {
        "statements": verdict.statements,
        "budget": verdict.budget,
        "entities": verdict.entities,
    }
    past_events = data.driver.count - sum(_is_query(sql) for _, sql in ours)
    if elsewhere:
        return CheckResult(
            "other engine",
            f"✗ It sent {elsewhere} statement(s) through an engine of its own: the check "
            "(and any log or budget) watches the session it gives you. Query that session.",
            **common,
        )
    if past_events > 0:
        return CheckResult(
            "raw driver",
            f"✗ It ran {past_events} statement(s) on the raw DBAPI connection, past "
            "SQLAlchemy: no event, no echo line and no slow-query log sees them. Query the "
            "session.",
            **common,
        )
    if seen.from_reference:
        return CheckResult(
            "read the reference",
            "✗ It called the check's own reference function: write the query yourself.",
            **common,
        )
    if not verdict.passed:
        return None
    if not ours:
        return CheckResult(
            "no statement",
            "✗ Right result, but it sent no statement: a cached or precomputed result is "
            "not a query (the posts change under it). Query the session every time.",
            **common,
        )
    if any(values == 0 and _LITERAL.search(sql) for values, sql in ours):
        return CheckResult(
            "values in the SQL",
            "✗ Right result, but a statement carried no bound value: is the limit pasted "
            "into the SQL text (an f-string, LIMIT 50)? Bind it: .limit(n), or text() with :n.",
            **common,
        )
    allowed = posts + (authors if len(ours) > 1 else 0)
    if seen.rows > allowed:
        return CheckResult(
            "too many rows",
            f"✗ Right result and {len(ours)} statement(s), but {seen.rows:,} rows came back "
            f"from the database (at most {allowed:,}: the {posts} posts"
            + (f" and their {authors} authors" if len(ours) > 1 else "")
            + "): filter, sort and limit in SQL, not in Python.",
            **common,
        )
    return None


#: A number or a quoted string in SQL text: a value pasted in, when nothing is bound.
_LITERAL = re.compile(r"(?<![\w.\"])\d+(?![\w.])|'")


def _rows_like(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(
        isinstance(row, Sequence) and not isinstance(row, str) for row in value
    )


def profile_sizes(db: Backend, limit: int = 10_000) -> int:
    """How many cars the profiling section loads: ``limit``, or all at a smaller scale."""
    with db.Session() as session:
        return min(limit, int(session.scalar(select(func.count()).select_from(Car))))
