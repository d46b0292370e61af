"""Loading related objects (notebook 01): errors, rows transferred, the FK index, the exercise.

A lazy load that cannot happen raises, and which error you get depends on the driver.
:func:`error_names` runs each case on each backend and tabulates the error's name:

>>> import asyncio
>>> from course_lib.data import dataset
>>> db = dataset("sqlite", "tiny")
>>> table = asyncio.run(error_names({"divide by zero": lambda db: 1 / 0}, [db]))
>>> table.loc["divide by zero", "sqlite"]
'ZeroDivisionError'

:func:`transferred` re-runs the statements a loader sent and counts the rows and the text
they carry back; :func:`create_author_index` adds the foreign-key index on a scratch copy;
:func:`statements_or_scans` splits the N+1's gap into what the index removed and what is
left. The exercise: :func:`reference_dealership_report` is written the N+1 way on purpose
(it is obviously right), and :func:`check_dealership_report` is the one check the notebook
and the tests use.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Index, MetaData, create_engine, event, func, insert, select, update
from sqlalchemy import inspect as inspect_schema
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, selectinload, sessionmaker, with_parent
from sqlalchemy.pool import StaticPool
from sqlalchemy.schema import CreateIndex

from ..backends import Backend
from ..course import free_frames
from ..exercises import CheckResult, check
from ..measure import acompare, count_statements, label_of
from ..models import Base, Car, Dealership, Post, User

__all__ = [
    "RECENT_YEAR",
    "Transfer",
    "check_dealership_report",
    "count_each",
    "create_author_index",
    "default_chunksize",
    "drop_author_index",
    "error_name",
    "error_names",
    "has_author_index",
    "index_ab",
    "judged_data",
    "objects_allowed",
    "ratios",
    "reference_dealership_report",
    "rows_allowed",
    "sizes_up_to",
    "statements_or_scans",
    "transferred",
    "year_after_last_car",
]

RECENT_YEAR = 2024
"""The dealership report lists cars of this model year or later."""

_EPOCH = datetime(2024, 1, 1)


# ------------------------------------------------------------------------ error names


def _describe(error: BaseException) -> str:
    """``MissingGreenlet``, or ``StatementError (wrapping MissingGreenlet)`` for a wrapped one."""
    name = type(error).__name__
    orig = getattr(error, "orig", None)
    if isinstance(orig, BaseException):
        return f"{name} (wrapping {type(orig).__name__})"
    return name


async def error_name(action: Callable[[], Any]) -> str:
    """Call ``action()`` (awaiting it if it is async) and name the error it raises.

    Returns ``"no error"`` when nothing is raised. A driver error that SQLAlchemy wrapped
    is named with what it wraps. When an async driver's coroutine was created but never
    awaited (aiosqlite's adapter does that when a lazy load raises MissingGreenlet), Python
    warns about it when the coroutine is garbage-collected, possibly cells later; the
    traceback frames holding it are cleared here, so that warning is not printed into an
    unrelated cell.

    >>> import asyncio
    >>> asyncio.run(error_name(lambda: {}["missing"]))
    'KeyError'
    >>> asyncio.run(error_name(lambda: "fine"))
    'no error'
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning
        )
        try:
            result = action()
            if inspect.isawaitable(result):
                await result
        except Exception as error:
            name = _describe(error)
            free_frames(error)
        else:
            name = "no error"
    return name


async def error_names(
    cases: dict[str, Callable[[Backend], Any]], backends: Backend | Sequence[Backend]
) -> pd.DataFrame:
    """One row per case, one column per backend: the name of the error ``case(backend)`` raises.

    Each case is a function of the backend, sync or ``async def``. Deterministic, so a
    notebook can print it in a checked cell.
    """
    dbs = [backends] if isinstance(backends, Backend) else list(backends)
    rows = {}
    for case, fn in cases.items():
        rows[case] = {db.name: await error_name(lambda fn=fn, db=db: fn(db)) for db in dbs}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "case"
    return frame


# ------------------------------------------------------------------- sizes and chunks


def sizes_up_to(limit: int, ladder: Sequence[int] = (2, 20, 200)) -> list[int]:
    """The ladder's sizes below ``limit``, then ``min(limit, top of the ladder)``.

    The scaling chart's n: two decades where the data has that many parents, fewer where
    it has not (the tiny scale's 12 users).

    >>> sizes_up_to(200), sizes_up_to(2000), sizes_up_to(12)
    ([2, 20, 200], [2, 20, 200], [2, 12])
    """
    top = min(limit, max(ladder))
    return [n for n in ladder if n < top] + [top]


def default_chunksize() -> int:
    """How many keys ``selectinload`` puts in one IN statement when no ``chunksize`` is given.

    Measured, not read from SQLAlchemy's private attributes: users are loaded with their
    posts from an in-memory SQLite, with more users each round until the IN keys need a
    second batch; the first IN statement's bind values are then the default chunk.

    >>> default_chunksize()
    500
    """
    engine = create_engine("sqlite://", poolclass=StaticPool)
    Base.metadata.create_all(engine, tables=[User.__table__, Post.__table__])
    maker = sessionmaker(engine)
    made, parents = 0, 64
    try:
        while parents <= 1_000_000:
            with engine.begin() as conn:
                conn.execute(
                    insert(User),
                    [
                        {"id": i, "name": "u", "email": f"u{i}", "created_at": _EPOCH}
                        for i in range(made + 1, parents + 1)
                    ],
                )
            made = parents
            with count_statements(engine) as log, maker() as session:
                session.scalars(select(User).options(selectinload(User.posts))).all()
            if log.count > 2:  # the keys needed two IN batches: the first one is full
                return log.statements[1].parameters
            parents *= 4
    finally:
        engine.dispose()
    raise RuntimeError("selectinload sent every key in one IN statement")


async def count_each(
    strategies: Sequence[Callable[[Backend, int], Any]],
    backends: Backend | Sequence[Backend],
    n: int,
) -> pd.DataFrame:
    """Run each strategy ``fn(backend, n)`` once per backend and count its statements.

    One row per (strategy, backend): strategy (its label), backend, n, statements. Counts
    are deterministic, so a notebook prints them in a checked cell (``cl.table(frame,
    values="statements")``), apart from the timings, which need many more runs.
    """
    rows = []
    for db in [backends] if isinstance(backends, Backend) else list(backends):
        for fn in strategies:
            with count_statements(db) as log:
                result = fn(db, n)
                if inspect.isawaitable(result):
                    await result
            rows.append(
                {"strategy": label_of(fn), "backend": db.name, "n": n, "statements": log.count}
            )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ rows transferred


@dataclass(frozen=True)
class Transfer:
    """What the statements of one run brought back: rows and kB of text, per statement."""

    rows: tuple[int, ...]
    text_bytes: tuple[int, ...]

    @property
    def statements(self) -> int:
        """How many statements were sent (and re-run)."""
        return len(self.rows)

    def as_row(self) -> dict[str, Any]:
        """A table row: statements, rows per statement, total rows, kB of text in them."""
        return {
            "statements": self.statements,
            "rows per statement": " + ".join(map(str, self.rows)),
            "rows": sum(self.rows),
            "text_kB": round(sum(self.text_bytes) / 1000, 1),
        }


def _text_bytes(rows: Sequence[Sequence[Any]]) -> int:
    return sum(len(value.encode()) for row in rows for value in row if isinstance(value, str))


def transferred(db: Backend, run: Callable[[], Any]) -> Transfer:
    """Run ``run()`` (sync, on ``db.Session``), then re-run each statement it sent and count.

    The driver is asked again, with the same SQL and parameters, and every row it returns
    is counted, with the bytes of its text values (titles, bodies, comments): what crossed
    from the database into Python, which a joined eager load repeats per child row.
    Deterministic for a given dataset, so it can be checked.
    """
    sent: list[tuple[str, Any]] = []

    def before(_conn: Any, _cur: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        sent.append((sql, params))

    event.listen(db.sync_engine, "before_cursor_execute", before)
    try:
        run()
    finally:
        event.remove(db.sync_engine, "before_cursor_execute", before)
    rows: list[int] = []
    sizes: list[int] = []
    with db.sync_engine.connect() as conn:
        for sql, params in sent:
            fetched = conn.exec_driver_sql(sql, params).fetchall()
            rows.append(len(fetched))
            sizes.append(_text_bytes(fetched))
    return Transfer(tuple(rows), tuple(sizes))


# --------------------------------------------------------------------- the FK index


_AUTHOR_INDEX = "ix_posts_author_id"


def has_author_index(db: Backend) -> bool:
    """Whether ``posts`` has the foreign-key index now."""
    names = {ix["name"] for ix in inspect_schema(db.sync_engine).get_indexes("posts")}
    return _AUTHOR_INDEX in names


def _author_index() -> Index:
    posts = Post.__table__.to_metadata(MetaData())
    return Index(_AUTHOR_INDEX, posts.c.author_id)


def _analyze_posts(db: Backend) -> None:
    with db.sync_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE posts")


def create_author_index(db: Backend) -> str:
    """Create ``ix_posts_author_id`` on ``posts.author_id`` in ``db`` and return its DDL.

    Only for scratch copies: the shared dataset keeps its minimal indexes. The index is
    declared on a copy of the table, so the course's metadata (which every build uses)
    does not gain it. Planner statistics are refreshed afterwards.
    """
    index = _author_index()
    index.create(db.sync_engine)
    _analyze_posts(db)
    return str(CreateIndex(index).compile(dialect=db.sync_engine.dialect)).strip()


def drop_author_index(db: Backend) -> None:
    """Drop ``ix_posts_author_id`` again (a scratch copy only), refreshing the statistics."""
    _author_index().drop(db.sync_engine)
    _analyze_posts(db)


async def index_ab(
    backends: Sequence[Backend],
    strategies: Sequence[Callable[[Backend, int], Any]],
    n: int,
    *,
    rounds: int = 2,
    **kwargs: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Time ``strategies`` on the same databases without and with the FK index, alternating.

    Each round drops the index (when present) and times every strategy in one
    ``acompare`` call, then creates it and times them again: A, B, A, B... so a slow
    spell of the machine falls on both states. The index is left in place. Returns the
    frames without and with the index, each with a ``round`` column (volatile).
    """
    frames: dict[bool, list[pd.DataFrame]] = {False: [], True: []}
    for number in range(1, rounds + 1):
        for indexed in (False, True):
            for db in backends:
                if has_author_index(db) != indexed:
                    (create_author_index if indexed else drop_author_index)(db)
            frame = await acompare(strategies, list(backends), n=n, **kwargs)
            frames[indexed].append(frame.assign(round=number))
    return pd.concat(frames[False], ignore_index=True), pd.concat(frames[True], ignore_index=True)


def statements_or_scans(
    no_index: pd.DataFrame,
    indexed: pd.DataFrame,
    slow: Callable[..., Any] | str,
    fast: Callable[..., Any] | str,
) -> pd.DataFrame:
    """Split ``slow``'s lead over ``fast`` into what the index removed and what is left.

    Both frames time both strategies at the same n, without and with the foreign-key index
    (several rounds each: the mean of the rounds' medians is used). The gap is
    ``slow - fast`` (ms). What the index took away is the scans; what remains is the cost
    of the extra statements themselves. ``noise_ms`` is the largest spread between rounds
    of one state's gap; ``within_noise`` is true when the index changed the gap by less
    than twice that, and then the split says nothing. One row per backend (volatile).
    """
    slow_label, fast_label = (label_of(f) if callable(f) else f for f in (slow, fast))

    def gaps(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame if "round" in frame else frame.assign(round=1)
        wide = frame.pivot_table(
            index=["backend", "n", "round"], columns="strategy", values="median_ms"
        )
        return wide.assign(gap=wide[slow_label] - wide[fast_label])

    before, after = gaps(no_index), gaps(indexed)
    levels = ["backend", "n"]
    mean_before = before.groupby(level=levels).mean()
    mean_after = after.groupby(level=levels).mean()
    spread = pd.concat(
        [
            before["gap"].groupby(level=levels).agg(lambda g: g.max() - g.min()),
            after["gap"].groupby(level=levels).agg(lambda g: g.max() - g.min()),
        ],
        axis=1,
    ).max(axis=1)
    gap_before, gap_after = mean_before["gap"], mean_after["gap"]
    split = pd.DataFrame(
        {
            "ratio_no_index": mean_before[slow_label] / mean_before[fast_label],
            "ratio_indexed": mean_after[slow_label] / mean_after[fast_label],
            "gap_ms_no_index": gap_before,
            "gap_ms_indexed": gap_after,
            "scans_pct_of_gap": 100 * (gap_before - gap_after) / gap_before,
            "statements_pct_of_gap": 100 * gap_after / gap_before,
            "noise_ms": spread,
            "within_noise": (gap_before - gap_after).abs() < 2 * spread,
        }
    )
    return split.round(2).reset_index()


def ratios(
    frames: dict[str, pd.DataFrame],
    slow: Callable[..., Any] | str,
    fast: Callable[..., Any] | str,
) -> pd.DataFrame:
    """``slow`` / ``fast`` per backend (rows) for each labelled frame (columns), to 2 decimals.

    A simulated run's backend label ("sqlite + simulated 1 ms/statement") counts as its
    backend's, so local and simulated ratios line up in one row per backend.
    """
    slow_label, fast_label = (label_of(f) if callable(f) else f for f in (slow, fast))
    columns = {}
    for name, frame in frames.items():
        medians = frame.assign(backend=frame["backend"].str.split(" + ", regex=False).str[0])
        wide = medians.pivot_table(index="backend", columns="strategy", values="median_ms")
        columns[name] = wide[slow_label] / wide[fast_label]
    table = pd.DataFrame(columns).round(2)
    table.index.name = "backend"
    table.columns.name = f"{slow_label} / {fast_label}"
    return table


# ----------------------------------------------------------------------- the exercise


def reference_dealership_report(
    session: Session, since: int = RECENT_YEAR
) -> list[tuple[str, list[int]]]:
    """Notebook 01's exercise, the N+1 way: every dealership with the ids of its recent cars.

    Dealerships come in id order, each as ``(name, ids)``: the ids of its cars of model year
    ``since`` or later, most expensive first (equal prices: lower id first), and an empty
    list when it has none. One query for the dealerships, then one per dealership: 1 + N.

    >>> from course_lib.data import dataset
    >>> with dataset("sqlite", "tiny").Session() as session:
    ...     report = reference_dealership_report(session)
    >>> report[0]
    ('Cork Motors 1', [9, 13])
    """
    report = []
    for dealership in session.scalars(select(Dealership).order_by(Dealership.id)):
        recent = (
            select(Car.id)
            .where(with_parent(dealership, Dealership.cars), Car.year >= since)
            .order_by(Car.price.desc(), Car.id)
        )
        report.append((dealership.name, list(session.scalars(recent))))
    return report


def year_after_last_car(db: Backend) -> int:
    """A model year no car has reached: with it, every dealership's list must be empty."""
    with db.Session() as session:
        return int(session.scalar(select(func.max(Car.year)))) + 1


def _counts(db: Backend, since: int) -> tuple[int, int, int]:
    """Dealerships, cars of model year ``since`` or later, dealerships with none of them."""
    with db.Session() as session:
        dealerships = session.scalar(select(func.count()).select_from(Dealership))
        cars = session.scalar(select(func.count()).where(Car.year >= since))
        with_cars = session.scalar(
            select(func.count(Car.dealership_id.distinct())).where(Car.year >= since)
        )
    return int(dealerships), int(cars), int(dealerships) - int(with_cars)


def objects_allowed(db: Backend, since: int = RECENT_YEAR) -> int:
    """The most ORM objects a good answer builds: every dealership and its matching cars.

    Derived from the data (counted now), so it holds at every scale. Loading all cars and
    filtering in Python builds more.
    """
    dealerships, cars, _ = _counts(db, since)
    return dealerships + cars


def rows_allowed(db: Backend, since: int = RECENT_YEAR) -> int:
    """The most rows a good answer fetches: every dealership, its matching cars, and one
    more row per dealership without a matching car (an outer join's row of NULLs).

    Derived from the data. Fetching every car as columns and filtering in Python fetches
    more, even though it builds no ORM object.
    """
    dealerships, cars, empty = _counts(db, since)
    return dealerships + cars + empty


def _tie_prices(conn: Connection, since: int = RECENT_YEAR, pairs: int = 3) -> int:
    """Give the two lowest-id recent cars of (up to ``pairs``) dealerships the same price.

    The lower id takes the higher id's price, so the report must list it first; on
    PostgreSQL the updated row also moves behind the other in the table's physical order.
    Returns how many pairs were tied.
    """
    rows = conn.execute(
        select(Car.dealership_id, Car.id, Car.price)
        .where(Car.year >= since)
        .order_by(Car.dealership_id, Car.id)
    ).all()
    firsts: dict[int, list[tuple[int, Any]]] = {}
    for dealership_id, car_id, price in rows:
        firsts.setdefault(dealership_id, []).append((car_id, price))
    tied = 0
    for cars in firsts.values():
        if len(cars) >= 2 and tied < pairs:
            (low, _), (_, price) = cars[0], cars[1]
            conn.execute(update(Car).where(Car.id == low).values(price=price))
            tied += 1
    return tied


def _shuffle_unordered(conn: Connection, backend: str) -> None:
    """Make reads without ORDER BY come back in an order other than by id, where cheap.

    SQLite: ``PRAGMA reverse_unordered_selects`` (scans run backwards). PostgreSQL: the first
    dealerships are rewritten, so their new row versions sit behind the others.
    """
    if backend == "sqlite":
        conn.exec_driver_sql("PRAGMA reverse_unordered_selects = ON")
        return
    first = select(Dealership.id).order_by(Dealership.id).limit(2).scalar_subquery()
    conn.execute(update(Dealership).where(Dealership.id.in_(first)).values(name=Dealership.name))


@contextmanager
def judged_data(db: Backend) -> Iterator[Backend]:
    """``db`` as the exercise check sees it: one connection, in a transaction rolled back after.

    Inside it, two recent cars of some dealerships have equal prices (so an ORDER BY
    without the id tie-break can show) and reads without ORDER BY are reordered (SQLite
    scans backwards; PostgreSQL's first dealerships move behind the others). The shared
    data is never changed. The Backend yielded shares ``db``'s engines; its ``Session``
    is bound to that connection.
    """
    db.engine  # noqa: B018  (create the async engine once, on db, before copying)
    with db.sync_engine.connect() as conn:
        transaction = conn.begin()
        try:
            _tie_prices(conn)
            _shuffle_unordered(conn, db.name)
            view = copy.copy(db)
            view.__dict__["Session"] = sessionmaker(
                bind=conn, join_transaction_mode="rollback_only", expire_on_commit=False
            )
            yield view
        finally:
            if transaction.is_active:
                transaction.rollback()
            if db.name == "sqlite":
                conn.exec_driver_sql("PRAGMA reverse_unordered_selects = OFF")
                conn.rollback()


def _why_wrong(result: Any, expected: list[tuple[str, list[int]]]) -> str:
    """One line saying how a report differs from the reference."""
    if not isinstance(result, list) or not all(
        isinstance(item, tuple) and len(item) == 2 for item in result
    ):
        return "it must return a list of (name, list of car ids) tuples"
    if not all(isinstance(ids, list) and all(type(i) is int for i in ids) for _, ids in result):
        return "each dealership's cars must be a list of int ids (Car.id)"
    names = [name for name, _ in result]
    wanted = [name for name, _ in expected]
    if sorted(names) != sorted(wanted):
        return (
            f"it lists {len(names)} dealerships, the reference {len(wanted)}: every dealership "
            "belongs in the report, with an empty list when no car matches (an inner join "
            "drops them; use an outer join or a loader)"
        )
    if names != wanted:
        return "the dealerships are not in id order (ORDER BY Dealership.id)"
    pairs = list(zip(result, expected, strict=True))
    if any(sorted(got) != sorted(want) for (_, got), (_, want) in pairs):
        return "some dealerships have the wrong cars: check the model-year filter"
    return (
        "the right cars, in the wrong order: most expensive first, equal prices by id "
        "(ORDER BY Car.price DESC, Car.id)"
    )


def _judge(fn: Callable[[Session, int], Any], db: Backend, since: int, budget: int) -> CheckResult:
    expected_box: list[Any] = []

    def reference(session: Session) -> list[tuple[str, list[int]]]:
        expected_box.append(reference_dealership_report(session, since))
        return expected_box[-1]

    verdict = check(
        lambda session: fn(session, since),
        db,
        reference=reference,
        budget=budget,
        max_objects=objects_allowed(db, since),
        max_rows=rows_allowed(db, since),
    )
    if verdict.status == "wrong result":
        with db.Session() as session:
            result = fn(session, since)
        why = _why_wrong(result, expected_box[-1])
        verdict.message = f"✗ Wrong result with since={since}: {why}."
    return verdict


def check_dealership_report(
    fn: Callable[[Session, int], Any], db: Backend, *, budget: int = 2
) -> CheckResult:
    """Judge ``fn(session, since)`` as notebook 01's exercise; the notebook and tests share it.

    It runs twice, on :func:`judged_data` (price ties, unordered reads reordered, all
    rolled back): with ``since=RECENT_YEAR``, and with a year after every car (so every
    dealership must be listed with an empty list). Each run must return the reference's
    report, in at most ``budget`` statements, building at most :func:`objects_allowed`
    ORM objects and fetching at most :func:`rows_allowed` rows. An error raised by ``fn``
    is reported, not raised. An untouched stub gives "not attempted".
    """
    verdict: CheckResult | None = None
    with judged_data(db) as judged:
        for since in (RECENT_YEAR, year_after_last_car(judged)):
            try:
                verdict = _judge(fn, judged, since, budget)
            except Exception as error:  # the learner's code raised: say what, in one line
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                free_frames(error)
                return CheckResult(
                    "raised", f"✗ It raised {type(error).__name__}: {first[:200]}", budget=budget
                )
            if not verdict.passed:
                return verdict
    assert verdict is not None
    return verdict
