"""Reading EXPLAIN: the course's explain helper opened up, plans read on real queries, and
an exercise whose check reads the plan of the statement the learner's function sends.

>>> from course_lib.explain import Plan
>>> summary(Plan("sqlite", ["SCAN cars", "USE TEMP B-TREE FOR ORDER BY"], False))
'SCAN cars / USE TEMP B-TREE FOR ORDER BY'

Machinery for notebook 06:

- :func:`plans_scratch` / :func:`prepare_scratch`: a copy of the dataset with two more indexes
  (price, created_at) and statistics that stay put (VACUUM ANALYZE, autovacuum paused);
- :data:`TOUR` and :func:`tour`: the node types of both databases, each from a real query;
- :func:`loader_statements` and :func:`loader_plans`: what notebook 01's loaders send, planned
  as sent (:func:`course_lib.sent_statements`, :func:`course_lib.explain_sent`);
- :func:`import_cars`: a staging table analyzed after its first dealership, then loaded
  in full (stale statistics, a misestimate, a bad plan, then ANALYZE);
- :func:`prepared_plans`: PostgreSQL's generic plan against the custom plan of a prepared,
  parameterised statement, and the plan of its ``literal_binds`` rendering;
  :func:`auto_plans`: which of the two the default ``plan_cache_mode = auto`` runs, run by run;
- :func:`literal_rendering`: which values ``literal_binds`` cannot render, per dialect;
- :func:`auto_explained` and :func:`pg_stat_statements_note`: server-side tools when the
  server allows them;
- :func:`check_cars_on_day` / :func:`acheck_cars_on_day`: the exercise check (right rows, one
  statement with the day bound as a parameter, and a plan that searches created_at for that
  day alone), on data made ready by :func:`prepare_check_data`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from typing import Any

import pandas as pd
from IPython.display import HTML
from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Executable,
    Index,
    Interval,
    MetaData,
    Row,
    Select,
    Table,
    delete,
    func,
    insert,
    inspect,
    literal,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
from sqlalchemy.exc import DBAPIError, SAWarning
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, joinedload, selectinload, subqueryload

from ..backends import Backend
from ..claims import claim
from ..course import Course
from ..exercises import CheckResult, acheck, check
from ..explain import (
    AUTOMATIC_INDEX,
    Explain,
    Plan,
    PlanNode,
    Sent,
    aexplain_sent,
    compile_wrapped,
    explain,
    explain_on,
    explain_postgresql,
    explain_sent,
    explain_sqlite,
    pause_autovacuum,
    plan_from_rows,
    postgresql_prefix,
    sent_statements,
)
from ..measure import Timing, benchmark, count_statements
from ..models import Car, Comment, Post, User, post_tags
from ..plots import plan_tree_chart

__all__ = [
    "CHECK_DAY",
    "CHECK_SETTINGS",
    "CREATED_INDEX",
    "DAY_INDEX",
    "EDGE_MODEL",
    "IMPORTS",
    "IMPORTS_INDEX",
    "LOADERS",
    "PLANNER_ROWS",
    "PRICE_INDEX",
    "TOUR",
    "VOCABULARY",
    "Explain",
    "Stop",
    "acars_on_day",
    "acheck_cars_on_day",
    "add_day_index",
    "auto_explained",
    "auto_plans",
    "cars_on_day_statement",
    "cheapest_price",
    "check_cars_on_day",
    "comments_with_posts",
    "compile_wrapped",
    "created_at_indexes",
    "deep_offset",
    "edge_cars",
    "estimates_after_analyze",
    "explain_on",
    "explain_postgresql",
    "explain_sqlite",
    "import_cars",
    "import_report",
    "interval_filter",
    "json_filter",
    "limit_child",
    "literal_rendering",
    "loader_plans",
    "loader_statements",
    "off_by",
    "one_line",
    "pg_stat_statements_note",
    "plans_scratch",
    "postgresql_prefix",
    "prepare_check_data",
    "prepare_scratch",
    "prepared_plans",
    "price_band",
    "rows_line",
    "scan_of",
    "scratch_indexes",
    "sqlite_stat1",
    "sqlite_vocabulary",
    "summary",
    "time_report",
    "tour",
    "tree_beside_text",
    "users_with_posts",
    "vacuum_analyze",
]

# The pieces of ``course_lib/explain.py`` the notebook opens up with ``cl.source`` (imported
# above): Explain, compile_wrapped, explain_sqlite, postgresql_prefix, explain_postgresql and
# explain_on.

PLANNER_ROWS = 10_000
"""Below this many cars PostgreSQL rightly reads whole tables (they fit in a few pages):
the index and join node types are asserted only at scales with at least this many."""

PRICE_INDEX = "ix_cars_price"
CREATED_INDEX = "ix_cars_created_at"
_SCRATCH_INDEXES = {PRICE_INDEX: "price", CREATED_INDEX: "created_at"}

_COURSE_TABLES = ("users", "tags", "posts", "post_tags", "comments", "dealerships", "cars")


# ----------------------------------------------------------------------------- scratch


def _cars_table() -> Table:
    """A private Table over ``cars`` (indexes are built on it, the models stay untouched)."""
    return Table("cars", MetaData(), *(Column(c.name, c.type) for c in Car.__table__.c))


def vacuum_analyze(db: Backend) -> None:
    """Statistics and the visibility map made fresh now (PostgreSQL ``VACUUM ANALYZE``;
    SQLite ``ANALYZE``), outside any transaction."""
    with db.sync_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE" if db.name == "postgresql" else "ANALYZE")


def prepare_scratch(db: Backend) -> Backend:
    """Make a filled copy of the dataset ready for the lesson (idempotent).

    Adds ``ix_cars_price`` and ``ix_cars_created_at``, pauses autovacuum on every course
    table (PostgreSQL), then runs ``VACUUM ANALYZE``: fresh statistics and visibility map,
    which nothing changes behind the lesson's back. They are not the same numbers on every
    run: PostgreSQL's ANALYZE reads a random sample of rows (30,000 at the default
    statistics target), so estimates move a little from run to run and server to server.
    The lesson asserts plan shapes that hold whatever the sample, and prints estimates
    only in cells nbval does not compare.
    """
    shadow = _cars_table()
    with db.sync_engine.begin() as conn:
        existing = {ix["name"] for ix in inspect(conn).get_indexes("cars")}
        for name, column_name in _SCRATCH_INDEXES.items():
            if name not in existing:
                Index(name, shadow.c[column_name]).create(conn)
    for table in _COURSE_TABLES:
        pause_autovacuum(db, table)
    vacuum_analyze(db)
    return db


def plans_scratch(course: Course) -> Course:
    """``course.scratch("plans", filled=True)``, made ready by :func:`prepare_scratch`."""
    scratch = course.scratch("plans", filled=True)
    for db in scratch.backends:
        prepare_scratch(db)
    return scratch


def scratch_indexes(db: Backend) -> list[str]:
    """The indexes on ``cars`` (by name, sorted; primary keys aside): what plans may use."""
    with db.sync_engine.connect() as conn, warnings.catch_warnings():
        # SQLite's reflection skips expression indexes (with a warning): ask the catalog
        warnings.simplefilter("ignore", SAWarning)
        if db.name == "sqlite":
            rows = conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'cars' "
                "AND name NOT LIKE 'sqlite_autoindex%'"
            )
            return sorted(row[0] for row in rows)
        return sorted(ix["name"] for ix in inspect(conn).get_indexes("cars"))


DAY_INDEX = "ix_cars_created_day"
"""The expression index :func:`add_day_index` creates: ``cars (date(created_at))``."""


def add_day_index(db: Backend, name: str = DAY_INDEX) -> None:
    """``CREATE INDEX ix_cars_created_day ON cars (date(created_at))`` (the other fix).

    Built on a private Table over ``cars``: an ``Index`` built on ``Car.created_at`` would
    attach itself to the course's models, and every later ``create_all`` would create it.
    """
    shadow = _cars_table()
    Index(name, func.date(shadow.c.created_at)).create(db.sync_engine)


# ----------------------------------------------------------------------- reading plans


def summary(plan: Plan) -> str:
    """One line: SQLite's plan rows joined by ' / ', or PostgreSQL's nodes top down (type,
    index, table: 'Index Scan using cars_pkey on cars'), joined by ' → '."""
    if plan.backend == "sqlite":
        return " / ".join(line.strip() for line in plan.lines)
    return " → ".join(n.detail for n in plan.nodes)


def scan_of(plan: Plan, relation: str) -> PlanNode:
    """The first node of ``plan`` that reads ``relation`` (a scan, on either database)."""
    for node in plan.nodes:
        if node.relation == relation:
            return node
    raise ValueError(f"no node reads {relation!r} in:\n{plan.text}")


def off_by(node: PlanNode) -> float:
    """How many times the estimate was off, either way (>= 1): 25.0 for 49,600 against 2,000."""
    ratio = node.misestimate
    if ratio is None:
        raise ValueError("off_by needs an analyzed PostgreSQL node (estimated and actual rows)")
    return max(ratio, 1 / ratio)


def rows_line(node: PlanNode) -> str:
    """Estimated against actual rows of an analyzed node, in words, with its loops.

    'estimated 49,600 rows, actual 2,000: off by 25x'. Over several loops both figures are
    per loop, and the total is given; in a parallel plan each process's run is a loop:
    'estimated 206,750 rows per loop, actual 1,667 per loop × 3 loops in parallel processes
    (5,000 in all): off by 124x'.
    """
    estimated, actual = node.estimated_rows or 0, node.actual_rows or 0
    off = f"off by {off_by(node):.0f}x"
    if not node.loops or node.loops == 1:
        return f"estimated {estimated:,.0f} rows, actual {actual:,.0f}: {off}"
    where = " in parallel processes" if node.parallel else ""
    return (
        f"estimated {estimated:,.0f} rows per loop, actual {actual:,.0f} per loop "
        f"× {node.loops} loops{where} ({node.total_rows:,.0f} in all): {off}"
    )


def limit_child(plan: Plan) -> PlanNode:
    """The node under the plan's ``Limit``: the rows it produced are the rows OFFSET stepped."""
    for node in plan.nodes:
        if node.node_type == "Limit":
            return node.children[0]
    raise ValueError(f"no Limit in:\n{plan.text}")


@dataclass(frozen=True)
class Stop:
    """One query of the plan tour and what its plan must show on each database."""

    question: str
    statement: Select
    postgresql: tuple[str, ...]  #: node types the PostgreSQL plan must contain
    sqlite: tuple[str, ...]  #: lines the SQLite plan must contain (exactly, after strip)


def price_band(low: int = 20_000, high: int = 20_900) -> Select:
    """Cars priced in a band (prices run from 4,000 to 79,900 in steps of 100)."""
    return select(Car.id, Car.make, Car.price).where(Car.price.between(low, high))


TOUR: list[Stop] = [
    Stop(
        "cars of one model year",
        select(Car.id, Car.make, Car.model).where(Car.year == 2020),
        ("Seq Scan",),
        ("SCAN cars",),
    ),
    Stop(
        "one car by its id",
        select(Car).where(Car.id == 42),
        ("Index Scan",),
        ("SEARCH cars USING INTEGER PRIMARY KEY (rowid=?)",),
    ),
    Stop(
        "the ids of twenty cars in a row",
        select(Car.id).where(Car.id.between(21, 40)),
        ("Index Only Scan",),
        ("SEARCH cars USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)",),
    ),
    Stop(
        "cars in a price band",
        price_band(),
        ("Bitmap Heap Scan", "Bitmap Index Scan"),
        (f"SEARCH cars USING INDEX {PRICE_INDEX} (price>? AND price<?)",),
    ),
    Stop(
        "the prices in that band (nothing else)",
        select(Car.price).where(Car.price.between(20_000, 20_900)),
        ("Index Only Scan",),
        (f"SEARCH cars USING COVERING INDEX {PRICE_INDEX} (price>? AND price<?)",),
    ),
    Stop(
        "one user's post titles",
        select(User.name, Post.title).join(User.posts).where(User.id == 7),
        ("Nested Loop",),
        ("SEARCH users USING INTEGER PRIMARY KEY (rowid=?)", "SCAN posts"),
    ),
    Stop(
        "comments per user",
        select(User.name, func.count(Comment.id)).join(Comment.user).group_by(User.name),
        ("Hash Join", "HashAggregate"),
        ("SCAN comments", "USE TEMP B-TREE FOR GROUP BY"),
    ),
    Stop(
        "each post's tag ids, in post order",
        select(Post.id, post_tags.c.tag_id)
        .join(post_tags, post_tags.c.post_id == Post.id)
        .order_by(Post.id),
        ("Merge Join",),
        ("SCAN posts",),
    ),
    Stop(
        "the ten newest model years",
        select(Car.id, Car.year).order_by(Car.year.desc(), Car.id).limit(10),
        ("Limit", "Sort"),
        ("SCAN cars", "USE TEMP B-TREE FOR ORDER BY"),
    ),
    Stop(
        "how many cars",
        select(func.count()).select_from(Car),
        ("Aggregate",),
        (),
    ),
]
"""The tour: course queries whose plans show each node type (at small and larger scales)."""


def tour(backends: Sequence[Backend], stops: Sequence[Stop] = TOUR) -> pd.DataFrame:
    """Plan every stop on every backend: one row per question, one column per backend
    (:func:`summary` of the plan), plus whether each plan shows what the stop expects."""
    rows = []
    for stop in stops:
        row: dict[str, Any] = {"question": stop.question}
        for db in backends:
            plan = explain(db, stop.statement)
            row[db.name] = summary(plan)
            if db.name == "postgresql":
                found = set(plan.node_types())
                row["postgresql_shows_it"] = all(t in found for t in stop.postgresql)
            else:
                found = {line.strip() for line in plan.lines}
                row["sqlite_shows_it"] = all(line in found for line in stop.sqlite)
        rows.append(row)
    return pd.DataFrame(rows).set_index("question")


VOCABULARY = {
    "SCAN t": r"^SCAN \S+$",
    "SEARCH t USING INTEGER PRIMARY KEY": r"^SEARCH \S+ USING INTEGER PRIMARY KEY",
    "SEARCH t USING INDEX i": r"^SEARCH \S+ USING INDEX ",
    "SEARCH t USING COVERING INDEX i": r"^SEARCH \S+ USING COVERING INDEX ",
    "SCAN t USING COVERING INDEX i": r"^SCAN \S+ USING COVERING INDEX ",
    "USE TEMP B-TREE FOR ORDER BY": r"^USE TEMP B-TREE FOR ORDER BY$",
    "USE TEMP B-TREE FOR GROUP BY": r"^USE TEMP B-TREE FOR GROUP BY$",
}
"""SQLite's EXPLAIN QUERY PLAN phrases, and the pattern of a plan line that shows each."""


def sqlite_vocabulary(db: Backend, stops: Sequence[Stop] = TOUR) -> pd.DataFrame:
    """For each phrase of :data:`VOCABULARY`: the first tour query whose SQLite plan shows
    it, and that line (a phrase no query shows is reported with an empty line)."""
    plans = [(stop.question, explain(db, stop.statement)) for stop in stops]
    rows = []
    for phrase, pattern in VOCABULARY.items():
        found = next(
            (
                (question, line.strip())
                for question, plan in plans
                for line in plan.lines
                if re.search(pattern, line.strip())
            ),
            ("", ""),
        )
        rows.append({"phrase": phrase, "query": found[0], "plan line": found[1]})
    return pd.DataFrame(rows).set_index("phrase")


def cheapest_price(db: Backend) -> int:
    """The lowest car price in ``db`` (4,000 at every scale the generator makes)."""
    with db.Session() as session:
        return session.scalar(select(func.min(Car.price)))


def one_line(sql: str, width: int = 160) -> str:
    """``sql`` on one line, cut to ``width`` characters."""
    flat = " ".join(sql.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def comments_with_posts(last_comment: int = 20) -> Select:
    """The first comments with their post's title: a join driven by a few outer rows."""
    return select(Comment.text, Post.title).join(Comment.post).where(Comment.id <= last_comment)


def deep_offset(rows: int, size: int = 20) -> Select:
    """Notebook 04's last page by OFFSET: ``size`` cars after skipping ``rows - size``."""
    shown = (Car.id, Car.make, Car.model, Car.year, Car.price)
    return select(*shown).order_by(Car.id).limit(size).offset(max(rows - size, 0))


# ----------------------------------------------------------- the loaders of notebook 01


LOADERS = {
    "selectinload": selectinload,
    "joinedload": joinedload,
    "subqueryload": subqueryload,
}
"""Notebook 01's loaders for ``User.posts``, by name."""


def users_with_posts(loader: str, n: int) -> Select:
    """The first ``n`` users by id, with their posts loaded by ``loader`` (a LOADERS name)."""
    option = LOADERS[loader](User.posts)
    return select(User).order_by(User.id).limit(n).options(option)


def loader_statements(db: Backend, n: int) -> dict[str, list[Sent]]:
    """What each loader sends for the first ``n`` users and their posts: {loader: statements}.

    Counted with :func:`course_lib.count_statements` as in notebook 01, and recorded with
    their parameters by :func:`sent_statements`: the same statements, in the same order.
    """
    found = {}
    for name in LOADERS:
        with count_statements(db) as log, sent_statements(db) as sent, db.Session() as session:
            users = session.scalars(users_with_posts(name, n)).unique().all()
            assert len(users) == n and all(user.posts is not None for user in users)
        assert [s.sql for s in sent] == log.sql  # the counted statements, and no others
        found[name] = [s for s in sent if s.returns_rows]
    return found


def loader_plans(db: Backend, statements: dict[str, list[Sent]]) -> pd.DataFrame:
    """Each loader's statements, planned with their parameters: one row per statement.

    ``reads_all_posts``: some node reads ``posts`` whole; ``builds_an_index``: SQLite made
    an automatic index for this one statement (it says which index is missing).
    """
    rows = []
    for loader, sent in statements.items():
        for number, one in enumerate(sent, 1):
            plan = explain_sent(db, one)
            rows.append(
                {
                    "backend": db.name,
                    "loader": loader,
                    "statement": number,
                    "parameters": len(one.params or ()),
                    "plan": summary(plan),
                    "reads_all_posts": any(n.relation == "posts" and n.full for n in plan.nodes),
                    "builds_an_index": AUTOMATIC_INDEX in plan.index_names(),
                }
            )
    return pd.DataFrame(rows)


# --------------------------------------------------------------- estimates and ANALYZE


IMPORTS = Table("car_imports", MetaData(), *(Column(c.name, c.type) for c in Car.__table__.c))
"""A staging table shaped like ``cars``, which an import job fills one dealership at a time."""
IMPORTS_INDEX = "ix_car_imports_dealership_id"
Index(IMPORTS_INDEX, IMPORTS.c.dealership_id)


def import_report(dealership_id: int) -> Select:
    """How many cars one dealership sent to the import, and their total price."""
    return select(func.count(), func.sum(IMPORTS.c.price)).where(
        IMPORTS.c.dealership_id == dealership_id
    )


def _count_imports(db: Backend) -> int:
    with db.sync_engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(IMPORTS))


def import_cars(db: Backend, first: int = 1) -> dict[str, int]:
    """Fill ``car_imports`` from ``cars`` the way an import job would, with stale statistics.

    The table is created afresh (autovacuum paused on PostgreSQL, so nothing analyzes it
    behind the lesson's back); dealership ``first``'s cars are loaded and the table is
    analyzed; then every other dealership's cars are loaded and committed, without ANALYZE.
    Returns the rows at the time of the ANALYZE and now.
    """
    columns = [c.name for c in IMPORTS.c]
    cars = [Car.__table__.c[name] for name in columns]
    IMPORTS.drop(db.sync_engine, checkfirst=True)
    IMPORTS.create(db.sync_engine)
    pause_autovacuum(db, IMPORTS.name)
    with db.sync_engine.begin() as conn:
        conn.execute(
            insert(IMPORTS).from_select(columns, select(*cars).where(Car.dealership_id == first))
        )
    with db.sync_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"ANALYZE {IMPORTS.name}")  # a constant name, not a value
    analyzed = _count_imports(db)
    with db.sync_engine.begin() as conn:
        conn.execute(
            insert(IMPORTS).from_select(columns, select(*cars).where(Car.dealership_id != first))
        )
    return {"rows when analyzed": analyzed, "rows now": _count_imports(db)}


def time_report(
    backends: Sequence[Backend], statement: Executable, repeats: int = 7
) -> dict[str, Timing]:
    """The time of ``statement`` (all its rows fetched) on each backend, by backend name."""

    def run(db: Backend) -> Any:
        with db.sync_engine.connect() as conn:
            return conn.execute(statement).all()

    return {db.name: benchmark(lambda db=db: run(db), repeats=repeats) for db in backends}


def estimates_after_analyze(
    statement: Executable,
    backends: Sequence[Backend],
    stale: dict[str, Plan],
    fresh: dict[str, Plan],
    before: dict[str, Timing],
    rows: int,
    table: str = "car_imports",
) -> pd.DataFrame:
    """The report timed again with fresh statistics, the claim that it got faster (the
    measured ratio printed), and the estimates beside the actual rows, before and after.

    ``stale`` and ``fresh`` are the plans before and after ANALYZE, ``before`` the times
    :func:`time_report` measured before it; ``rows`` is what the claim is made on.
    """
    after = time_report(backends, statement)
    ratio = pd.Series({name: before[name].median_s / after[name].median_s for name in after})
    claim(
        "after ANALYZE the report is more than 1.5x faster than with the stale plan",
        ratio > 1.5,
        detail=ratio,
        rows=rows,
    )
    shown = ", ".join(f"{name} {value:.1f}x" for name, value in ratio.items())
    print(f"The report's time with the stale plan / with fresh statistics: {shown}.")
    estimates = []
    for when, plans, timings in (("before", stale, before), ("after", fresh, after)):
        for name, plan in plans.items():
            scan = scan_of(plan, table)
            estimates.append(
                {
                    "backend": name,
                    "statistics": f"{when} ANALYZE",
                    "scan": scan.detail,
                    "estimated rows per loop": scan.estimated_rows,
                    "actual rows per loop": scan.actual_rows,
                    "loops": scan.loops,
                    "actual rows in all": scan.total_rows,
                    "ms": round(timings[name].median_s * 1e3, 3),
                }
            )
    return pd.DataFrame(estimates).dropna(axis=1, how="all")


def sqlite_stat1(db: Backend, table_name: str = IMPORTS.name) -> list[tuple[str, str]]:
    """SQLite's statistics for ``table_name``: (index, stat) from ``sqlite_stat1``.

    The stat is 'rows in the table, then rows per distinct key' as of the last ANALYZE.
    """
    with db.sync_engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT idx, stat FROM sqlite_stat1 WHERE tbl = ? ORDER BY idx", (table_name,)
        )
        return [(row.idx, row.stat) for row in rows]


# ----------------------------------------------- generic and custom plans (PostgreSQL)


_PREPARED = "course_plans_prepared"


def _deallocate(conn: Connection) -> None:
    """``DEALLOCATE`` the lesson's prepared statement on this session, if it exists."""
    exists = conn.execute(
        select(func.count())
        .select_from(text("pg_prepared_statements"))
        .where(literal_column("name") == _PREPARED)
    ).scalar_one()
    if exists:
        conn.exec_driver_sql(f"DEALLOCATE {_PREPARED}")  # a constant name, not a value


@contextmanager
def _prepared(conn: Connection, statement: Select) -> Iterator[Callable[[dict[str, Any]], str]]:
    """``PREPARE`` ``statement`` on ``conn`` as a prepared-statement driver sends it.

    Yields ``bind(params)``: it sets the parameter values for this transaction (with
    ``set_config``, bound) and returns the ``EXECUTE ...`` to explain. PREPARE is not
    transactional (a ROLLBACK leaves it in the session, and the session goes back to the
    pool): the statement is DEALLOCATEd on the way out, error or not, and one left by an
    interrupted earlier run is DEALLOCATEd first.
    """
    compiled = statement.compile(dialect=pg_asyncpg.dialect())
    names = list(compiled.positiontup or [])
    types = [compiled.binds[name].type.compile(dialect=conn.dialect) for name in names]
    arguments = ", ".join(
        f"current_setting('course.p{i}')::{type_}" for i, type_ in enumerate(types, 1)
    )

    def bind(params: dict[str, Any]) -> str:
        for i, name in enumerate(names, 1):
            conn.execute(select(func.set_config(f"course.p{i}", str(params[name]), True)))
        return f"EXECUTE {_PREPARED}({arguments})"

    _deallocate(conn)
    conn.exec_driver_sql(f"PREPARE {_PREPARED} AS " + str(compiled))
    try:
        yield bind
    finally:
        conn.rollback()  # out of a failed transaction, if any; the local settings go too
        _deallocate(conn)
        conn.commit()


def _shown(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items())


def prepared_plans(
    db: Backend, statement: Select, values: Sequence[dict[str, Any]]
) -> pd.DataFrame:
    """The plans PostgreSQL can run for a prepared, parameterised ``statement``.

    ``PREPARE`` the statement exactly as a prepared-statement driver sends it (numbered
    ``$1`` parameters: compiled with the asyncpg dialect), then, for each parameter set in
    ``values``, ``EXPLAIN EXECUTE`` it under ``plan_cache_mode = force_generic_plan`` (one
    plan for every value, chosen without seeing any) and ``force_custom_plan`` (a plan for
    these values), beside the plan of the ``literal_binds`` rendering the guides explain.
    EXECUTE's arguments cannot be bind parameters, so each value is passed with
    ``set_config(..., true)`` (bound) and read back with ``current_setting(...)``: no value
    is written into SQL text. One row per value and kind, with the plan's node types.
    """
    pg_dialect = db.sync_engine.dialect
    rows = []
    with db.sync_engine.connect() as conn, _prepared(conn, statement) as bind:
        for params in values:
            execute = bind(params)
            for kind, mode in (("generic", "force_generic_plan"), ("custom", "force_custom_plan")):
                conn.execute(select(func.set_config("plan_cache_mode", mode, True)))
                plan = _costless_plan(conn, execute)
                rows.append({"parameters": _shown(params), "plan": kind, **_plan_row(plan)})
            literal_sql = statement.params(**params).compile(
                dialect=pg_dialect, compile_kwargs={"literal_binds": True}
            )
            plan = _costless_plan(conn, str(literal_sql))
            rows.append({"parameters": _shown(params), "plan": "literal_binds", **_plan_row(plan)})
    return pd.DataFrame(rows)


def auto_plans(
    db: Backend, statement: Select, params: dict[str, Any], runs: int = 7
) -> pd.DataFrame:
    """What PostgreSQL's default, ``plan_cache_mode = auto``, runs for a prepared statement.

    The statement is prepared as in :func:`prepared_plans` and explained ``runs`` times with
    the same ``params`` (each ``EXPLAIN EXECUTE`` plans it as an execution would). Which plan
    each run got is read from ``pg_prepared_statements``' ``custom_plans`` and
    ``generic_plans`` counters: the first five are custom plans; from the sixth PostgreSQL
    switches to its generic plan whenever that looks no dearer than the custom plans' average,
    and then keeps it. One row per run: the kind of plan and its node types.
    """
    counters = (
        select(literal_column("custom_plans"), literal_column("generic_plans"))
        .select_from(text("pg_prepared_statements"))
        .where(literal_column("name") == _PREPARED)
    )
    rows = []
    with db.sync_engine.connect() as conn, _prepared(conn, statement) as bind:
        conn.execute(select(func.set_config("plan_cache_mode", "auto", True)))
        execute = bind(params)
        for run in range(1, runs + 1):
            custom_before, _generic = conn.execute(counters).one()
            raw = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + execute).scalar_one()
            custom_after, _generic = conn.execute(counters).one()
            plan = plan_from_rows("postgresql", [], raw)
            kind = "custom" if custom_after > custom_before else "generic"
            rows.append({"run": run, "plan": kind, "node_types": summary(plan)})
    return pd.DataFrame(rows).set_index("run")


def _costless_plan(conn: Connection, sql: str) -> Plan:
    """A PostgreSQL plan without costs (text) and its nodes (FORMAT JSON), not executed."""
    lines = conn.exec_driver_sql("EXPLAIN (COSTS OFF) " + sql).scalars().all()
    raw = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql).scalar_one()
    return plan_from_rows("postgresql", [(line,) for line in lines], raw)


def _plan_row(plan: Plan) -> dict[str, Any]:
    conditions = [
        line.strip() for line in plan.lines if line.strip().startswith(("Filter", "Index Cond"))
    ]
    return {"node_types": summary(plan), "condition": conditions[0] if conditions else ""}


# ---------------------------------------------------------- what literal_binds can render


def json_filter(filters: dict[str, Any]) -> Select:
    """Cars whose make is the ``make`` field of a JSON document sent as a parameter."""
    return select(Car.id).where(Car.make == literal(filters, JSON)["make"].as_string())


def literal_rendering(
    statements: dict[str, Executable], backends: Sequence[Backend]
) -> pd.DataFrame:
    """Which statements ``compile_kwargs={"literal_binds": True}`` can render, per dialect:
    'renders', or the name of the error it raises."""
    rows = []
    for label, statement in statements.items():
        row: dict[str, str] = {"statement": label}
        for db in backends:
            try:
                statement.compile(
                    dialect=db.sync_engine.dialect, compile_kwargs={"literal_binds": True}
                )
                row[db.name] = "renders"
            except Exception as exc:  # the error's name is the lesson
                row[db.name] = type(exc).__name__
        rows.append(row)
    return pd.DataFrame(rows).set_index("statement")


def interval_filter(days: int = 7) -> Select:
    """Cars updated within ``days`` of their creation (an Interval parameter)."""
    return select(Car.id).where(
        Car.updated_at < Car.created_at + literal(timedelta(days), Interval)
    )


# ------------------------------------------------------------------ the tree, beside text


def tree_beside_text(plan: Plan, title: str) -> HTML:
    """The plan as a tree (:func:`course_lib.plan_tree_chart`) beside its text, in one row."""
    import base64
    import html
    import io

    figure = plan_tree_chart(plan, title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    image = base64.b64encode(buffer.getvalue()).decode("ascii")
    plan_text = html.escape(plan.text)
    return HTML(
        '<div style="display:flex;gap:1.5em;align-items:flex-start">'
        f'<pre style="font-size:11px;margin:0;white-space:pre">{plan_text}</pre>'
        f'<img style="max-width:60%" src="data:image/png;base64,{image}"/></div>'
    )


# ----------------------------------------------------------------- server-side tools


def auto_explained(db: Backend, work: Callable[[Connection], Any]) -> list[str] | str:
    """The plans ``auto_explain`` logs for the statements ``work(conn)`` runs, or one line
    saying why it is not available.

    ``LOAD 'auto_explain'`` in this session (superusers only, and the library must be
    installed), then ``auto_explain.log_min_duration = 0`` and ``log_level = notice``: each
    plan comes back to this client as a NOTICE, caught with psycopg's notice handler. All
    settings are local to one transaction, which is rolled back.
    """
    notices: list[str] = []
    with db.sync_engine.connect() as conn:
        try:
            conn.exec_driver_sql("LOAD 'auto_explain'")
        except DBAPIError as exc:
            conn.rollback()
            reason = str(exc.orig).splitlines()[0]
            return f"auto_explain is not available on this server: {reason}"
        raw = conn.connection.driver_connection

        def on_notice(diagnostic: Any) -> None:
            notices.append(diagnostic.message_primary or "")

        raw.add_notice_handler(on_notice)
        try:
            for name, value in (
                ("auto_explain.log_level", "notice"),
                ("auto_explain.log_analyze", "on"),
                ("auto_explain.log_buffers", "on"),
                ("auto_explain.log_min_duration", "0"),
            ):
                conn.execute(select(func.set_config(name, value, True)))
            work(conn)
            conn.execute(select(func.set_config("auto_explain.log_min_duration", "-1", True)))
        finally:
            raw.remove_notice_handler(on_notice)
            conn.rollback()
    return [n for n in notices if "set_config" not in n]


def pg_stat_statements_note(db: Backend) -> str:
    """One line on ``pg_stat_statements``: loaded on this server, or what it would need."""
    with db.sync_engine.connect() as conn:
        preload = conn.exec_driver_sql("SHOW shared_preload_libraries").scalar() or ""
        available = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_stat_statements'"
        ).scalar()
    if "pg_stat_statements" in preload:
        return (
            "pg_stat_statements is loaded here: CREATE EXTENSION pg_stat_statements in a "
            "database, then SELECT query, calls, mean_exec_time FROM pg_stat_statements "
            "ORDER BY total_exec_time DESC lists what the server spends its time on."
        )
    installed = "installed but not loaded" if available else "not installed"
    return (
        f"pg_stat_statements is {installed} on this server: it needs "
        "shared_preload_libraries = 'pg_stat_statements' and a restart."
    )


# ------------------------------------------------------------------------ the exercise


CHECK_DAY = date(2024, 6, 3)
"""The day the exercise asks for (inside the data's range, 2024-01-01 to 2025-12-01)."""

EDGE_MODEL = "Edge case"
"""The model name of the cars :func:`prepare_check_data` adds at the edges of the day."""


def edge_cars(day: date = CHECK_DAY) -> list[tuple[datetime, bool]]:
    """The cars the check adds: (created_at, created on ``day``?).

    The dataset's cars are created on whole minutes. Real timestamps (``datetime.now()``)
    carry microseconds, so the check adds a car at 23:59:59.5, one at midnight exactly, one
    at each neighbouring midnight's edge, and one at noon.
    """
    start = datetime.combine(day, time())
    return [
        (start, True),
        (start + timedelta(hours=12, microseconds=250_000), True),
        (start + timedelta(days=1) - timedelta(microseconds=500_000), True),
        (start - timedelta(microseconds=1), False),
        (start + timedelta(days=1), False),
    ]


def prepare_check_data(db: Backend, day: date = CHECK_DAY) -> None:
    """Make ``db`` (a scratch copy) ready for the check: the :func:`edge_cars` added
    (idempotent) and the index on ``cars.created_at`` present."""
    rows = [
        {
            "dealership_id": 1,
            "make": "Skoda",
            "model": EDGE_MODEL,
            "year": 2024,
            "price": 19_900,
            "is_sold": False,
            "created_at": created,
            "updated_at": created,
        }
        for created, _on_day in edge_cars(day)
    ]
    with db.sync_engine.begin() as conn:
        conn.execute(delete(Car).where(Car.model == EDGE_MODEL))
        conn.execute(insert(Car), rows)
    if CREATED_INDEX not in scratch_indexes(db):
        prepare_scratch(db)


def cars_on_day_statement(day: date) -> Select:
    """The right query: the bare column against a half-open range, [day, next day)."""
    start = datetime.combine(day, time())
    return (
        select(Car.id)
        .where(Car.created_at >= start, Car.created_at < start + timedelta(days=1))
        .order_by(Car.id)
    )


async def acars_on_day(session: AsyncSession, day: date) -> list[int]:
    """The ids of the cars created on ``day`` (the exercise's reference solution)."""
    return list((await session.scalars(cars_on_day_statement(day))).all())


def _reference(day: date) -> Callable[[Session], list[int]]:
    def reference(session: Session) -> list[int]:
        return list(session.scalars(cars_on_day_statement(day)).all())

    return reference


def _normalize(value: Any) -> Any:
    """Ids in any order, plain or as one-column rows, compare as a sorted list."""
    if isinstance(value, list | tuple | set):
        items = [v[0] if isinstance(v, Row | tuple) and len(v) == 1 else v for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    return value


@dataclass
class _Setup:
    """What the check of ``db`` expects, read from the data before the attempt runs."""

    db: Backend
    day: date
    expected: list[int]
    cars: int  #: rows in cars: below PLANNER_ROWS PostgreSQL's plan is judged forced

    @classmethod
    def of(cls, db: Backend, day: date) -> _Setup:
        with db.Session() as session:
            expected = _reference(day)(session)
            edges = session.scalars(
                select(Car.created_at).where(Car.model == EDGE_MODEL).order_by(Car.id)
            ).all()
            cars = session.scalar(select(func.count()).select_from(Car))
        ready = list(edges) == [created for created, _ in edge_cars(day)]
        if not ready or CREATED_INDEX not in scratch_indexes(db):
            raise ValueError(
                "the check needs the edge cars and the created_at index: run "
                "lesson.prepare_check_data(db) first"
            )
        return cls(db, day, expected, cars)

    @property
    def start(self) -> datetime:
        return datetime.combine(self.day, time())

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=1)

    @property
    def forced(self) -> bool:
        """On PostgreSQL below PLANNER_ROWS cars, the plan is judged with seq scans off."""
        return self.db.name == "postgresql" and self.cars < PLANNER_ROWS

    @property
    def most_read(self) -> int:
        """The most index entries a search bounded to the day reads: the answer and the
        two edge cars just outside it."""
        return len(self.expected) + len(edge_cars(self.day))

    def created(self, ids: set[int]) -> list[datetime]:
        """When the cars ``ids`` were created (for saying which edge a range got wrong)."""
        if not ids:
            return []
        with self.db.Session() as session:
            return list(session.scalars(select(Car.created_at).where(Car.id.in_(sorted(ids)))))


def created_at_indexes(db: Backend) -> list[str]:
    """The indexes on ``cars`` whose definition mentions ``created_at`` (sorted): the ones a
    search for a day can use, including an expression index the learner adds."""
    with db.sync_engine.connect() as conn:
        if db.name == "sqlite":
            sql = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'cars'"
        else:
            sql = (
                "SELECT indexname, indexdef FROM pg_indexes "
                "WHERE tablename = 'cars' AND schemaname = current_schema()"
            )
        rows = conn.exec_driver_sql(sql).all()
    return sorted(name for name, definition in rows if "created_at" in (definition or ""))


_WRAPPED = re.compile(
    r"\b(?P<fn>date|datetime|strftime|date_trunc|julianday|extract|to_char)\s*\("
    r"(?:[^()]|\([^()]*\))*?\bcreated_at\b"
    r"|\bCAST\s*\(\s*(?:\"?cars\"?\.)?\"?created_at\"?\s+AS\s+(?P<type>\w+)",
    re.IGNORECASE,
)


def _wrapped_column(sql: str) -> str | None:
    """How ``created_at`` is wrapped in the SQL (``date(...)``, ``CAST(... AS VARCHAR)``)."""
    found = _WRAPPED.search(sql)
    if found is None:
        return None
    return f"{found['fn']}(...)" if found["fn"] else f"CAST(... AS {found['type'].upper()})"


_DATE_LITERAL = re.compile(r"\d{4}-\d{2}-\d{2}")


def _moments(sent: Sent) -> list[datetime]:
    """The parameters of ``sent`` that are dates or times (SQLite receives them as ISO text)."""
    params = sent.params[0] if sent.many else sent.params
    values = params.values() if isinstance(params, dict) else (params or ())
    found = []
    for value in values:
        if isinstance(value, datetime):
            found.append(value.replace(tzinfo=None))
        elif isinstance(value, date):
            found.append(datetime.combine(value, time()))
        elif isinstance(value, str) and _DATE_LITERAL.match(value):
            try:
                found.append(datetime.fromisoformat(value.rstrip("%")))
            except ValueError:
                found.append(datetime.combine(date.fromisoformat(value[:10]), time()))
    return found


def _wrong_rows(setup: _Setup, got: Any, sent: list[Sent]) -> str:
    """Why the rows are wrong, in terms of the mistakes the notebook warns about: read from
    when the missing and the extra cars were created."""
    if not isinstance(got, list | tuple | set):
        return "Return a list of car ids (ints), e.g. list(session.scalars(select(Car.id)...))."
    returned = _normalize(got)
    if any(not isinstance(i, int) for i in returned):
        return "Return a list of car ids (ints), e.g. list(session.scalars(select(Car.id)...))."
    expected = set(setup.expected)
    missing, extra = expected - set(returned), set(returned) - expected
    wrapped = next((w for s in sent if (w := _wrapped_column(s.sql))), None)
    start = datetime.combine(setup.day, time())
    end = start + timedelta(days=1)
    lost, gained = setup.created(missing), setup.created(extra)
    if wrapped and not returned:
        return (
            f"No cars came back: {wrapped} on created_at does not give a date to compare on "
            "this database (SQLite's CAST(... AS DATE) yields a number). Compare the bare "
            "column with a half-open range instead."
        )
    if len(returned) != len(set(returned)):
        return "Some cars came back twice: return each car's id once."
    if gained and all(t < start for t in gained) and not lost:
        return (
            "It returned cars of the day before (the last one at 23:59:59.999999): the "
            "range starts too early. Start at the day's midnight, with `>=`."
        )
    if gained and all(t == end for t in gained) and not lost:
        return (
            "It also returned the cars created at midnight of the next day: `<=` the next "
            "day's midnight includes them. End the range with `<` the next day."
        )
    if lost and all(t == start for t in lost) and not gained:
        return (
            "It missed the cars created at midnight exactly: `>` excludes the start of the day. "
            "Start the range with `>=` the day."
        )
    if lost and all(t > end - timedelta(seconds=1) for t in lost) and not gained:
        return (
            "It missed the car created at 23:59:59.5: BETWEEN day 00:00 AND day 23:59:59 "
            "leaves out the last second's fractions, and real timestamps have microseconds. "
            "Use a half-open range: created_at >= day AND created_at < the next day."
        )
    if gained and all(not start <= t < end for t in gained) and len(lost) > len(expected) // 2:
        return (
            f"It returned {len(returned)} cars, {len(extra)} of them from another day: the range "
            "is off by a day. The day runs from its midnight (>=) to the next midnight (<)."
        )
    return (
        f"It returned {len(returned)} cars for {setup.day}; {len(expected)} were created that "
        f"day ({len(missing)} missing, {len(extra)} extra)."
    )


def _full_scans(plan: Plan) -> list[str]:
    return plan.full_scans() + plan.full_index_scans()


def _reads_cars(plan: Plan) -> bool:
    return any(n.relation == "cars" or (n.index or "").startswith("ix_cars") for n in plan.nodes)


_SQLITE_BOUNDED = (("created_at>", "created_at<"), ("<expr>=",), ("<expr>>", "<expr><"))


def _sqlite_search(plan: Plan, indexes: list[str]) -> tuple[PlanNode | None, str]:
    """The SEARCH bounded to the day on a created_at index, or the reason there is none."""
    searches = [n for n in plan.nodes if n.node_type == "SEARCH" and n.index_cond]
    for node in searches:
        cond = node.index_cond or ""
        if node.index in indexes and any(all(b in cond for b in both) for both in _SQLITE_BOUNDED):
            return node, ""
    on_created = [n for n in searches if n.index in indexes]
    if on_created:
        node = on_created[0]
        return None, (
            f"its plan searches {node.index} bounded on one side only ({node.detail.strip()}): "
            "it reads every entry on that side of the bound, to the end of the index"
        )
    if searches:
        node = searches[0]
        what = node.index or "the primary key"
        return None, (
            f"its plan searches {what} ({node.index_cond}), not created_at: every row that "
            "search returns must then be tested"
        )
    return None, "its plan searches no index on created_at"


def _below(node: PlanNode) -> list[PlanNode]:
    return [d for child in node.children for d in (child, *_below(child))]


def _pg_search(setup: _Setup, plan: Plan, indexes: list[str]) -> tuple[PlanNode | None, str]:
    """The created_at index node of an analyzed plan, if what it read is the day alone.

    The rows read are counted at the table: an Index Scan's rows and what its filter threw
    away, or a Bitmap Heap Scan's over a created_at bitmap. (A Bitmap Index Scan's own count
    includes index entries of dead row versions, which an UPDATE leaves until VACUUM.)
    """
    on_created = [n for n in plan.nodes if n.index in indexes]
    if not on_created:
        seeks = [n for n in plan.nodes if n.index]
        if seeks:
            node = seeks[0]
            return None, (
                f"its plan searches {node.index} {_parenthesized(node.index_cond)}, not "
                "created_at: every row that search returns must then be tested"
            )
        return None, "its plan searches no index on created_at"
    readers = [
        n
        for n in plan.nodes
        if (n.index in indexes and not n.node_type.endswith("Bitmap Index Scan"))
        or (n.node_type.endswith("Bitmap Heap Scan") and any(d.index in indexes for d in _below(n)))
    ]
    read = sum((n.total_rows or 0) + (n.removed_rows or 0) for n in readers)
    removed = sum(n.removed_rows or 0 for n in plan.nodes if n.relation == "cars")
    if read <= setup.most_read and removed <= len(edge_cars(setup.day)):
        return on_created[0], ""
    node = on_created[0]
    return None, (
        f"its plan reads {read:,.0f} rows through {node.index} "
        f"{_parenthesized(readers[0].index_cond if readers else node.index_cond)} and throws "
        f"{removed:,.0f} of them away, for {len(setup.expected)} cars: the search is not "
        "bounded to the day"
    )


def _parenthesized(condition: str | None) -> str:
    """A plan's condition in one pair of parentheses (PostgreSQL prints its own)."""
    condition = condition or ""
    return condition if condition.startswith("(") else f"({condition})"


def _forced_note(setup: _Setup) -> str:
    if not setup.forced:
        return ""
    return (
        f" (At {setup.cars:,} cars PostgreSQL rightly reads a table this small whole, so the "
        "check judged the plan it gets with enable_seqscan = off.)"
    )


_RANGE = "created_at >= :day AND created_at < :next_day"


def _before_plans(setup: _Setup, result: CheckResult, sent: list[Sent]) -> CheckResult | None:
    """A failing verdict that needs no plan: no statement, or the day not bound."""
    if not sent:
        return replace(
            result,
            status="no statement",
            message=(
                "✗ The right ids, but no statement reached the database through the session "
                "the check gave your function: the check judges the plan of the query your "
                "function sends. Query with `session` (no ids typed in, no connection of "
                "your own)."
            ),
        )
    for one in sent:
        literal_date = _DATE_LITERAL.search(one.sql)
        if literal_date:
            return replace(
                result,
                status="literal values",
                message=(
                    f"✗ Right cars, but the date is written into the SQL ({literal_date[0]}…): "
                    "pass the day as a bound parameter (compare Car.created_at with a datetime "
                    "in select(), or use :names in text() with a dict of values), never "
                    "formatted into the SQL text."
                ),
            )
    if not any(_moments(one) for one in sent):
        return replace(
            result,
            status="literal values",
            message=(
                "✗ Right cars, but the day is not among the statement's parameters: the query "
                f"must find the cars of the day it is given, with the day bound ({_RANGE})."
            ),
        )
    return None


def _plan_verdict(
    setup: _Setup, result: CheckResult, plans: list[tuple[Sent, Plan | Exception]]
) -> CheckResult:
    """Judge the plans of the statements sent, once rows, budget and parameters are right."""
    indexes = created_at_indexes(setup.db)
    note = _forced_note(setup)
    searched: list[str] = []
    for sent, plan in plans:
        if isinstance(plan, Exception):
            reason = str(getattr(plan, "orig", plan)).splitlines()[0]
            return replace(
                result,
                status="not explained",
                message=f"✗ Right cars, but its statement could not be explained: {reason}.",
            )
        wrapped = _wrapped_column(sent.sql)
        if not _reads_cars(plan):
            return replace(
                result,
                status="not on cars",
                message=(
                    f"✗ Right ids, but its statement does not read cars ({summary(plan)}): "
                    "select the cars created on the day from the cars table."
                ),
            )
        full = _full_scans(plan)
        if full:
            why = (
                f"{wrapped} wraps created_at in a function, so the index on created_at "
                "cannot be searched (the database must compute it for every row)"
                if wrapped
                else "nothing in it lets the database seek in the index on created_at"
            )
            return replace(
                result,
                status="full scan",
                message=(
                    f"✗ Right cars in {result.statements} statement(s), but its plan reads the "
                    f"whole table or index ({full[0]}): {why}. Compare the bare column with a "
                    f"half-open range: {_RANGE} (or give the database an expression index on "
                    "what you compare)." + note
                ),
            )
        if setup.db.name == "sqlite":
            node, why = _sqlite_search(plan, indexes)
        else:
            node, why = _pg_search(setup, plan, indexes)
        if node is None:
            then = f", and {wrapped} is computed for each" if wrapped else ""
            return replace(
                result,
                status="unbounded search",
                message=(
                    f"✗ Right cars in {result.statements} statement(s), but {why}{then}. Bound "
                    f"the bare column on both sides: {_RANGE}." + note
                ),
            )
        searched.append(node.index or "")
        outside = [m for m in _moments(sent) if not setup.start <= m <= setup.end]
        if outside:
            return replace(
                result,
                status="unbounded search",
                message=(
                    f"✗ Right cars in {result.statements} statement(s), but it compares "
                    f"created_at with {outside[0]}, outside {setup.day}: a range wider than "
                    f"the day reads other days' entries too. Bound it to the day: {_RANGE}."
                ),
            )
    used = f"; its plan searches {searched[0]}, bounded to the day" if searched else ""
    return replace(result, message=result.message.rstrip(".") + used + "." + note)


def _improve(setup: _Setup, result: CheckResult, got: Any, sent: list[Sent]) -> CheckResult:
    """A verdict that names the mistake (before any plan is read)."""
    if result.status == "wrong result":
        return replace(result, message="✗ " + _wrong_rows(setup, got, sent))
    if result.status == "too many rows":
        return replace(
            result,
            message=(
                f"✗ Right cars, but the database handed back more rows than the "
                f"{len(setup.expected)} cars of the day: it loaded every car and filtered in "
                "Python. Filter in SQL, with a WHERE on created_at that the index can serve."
            ),
        )
    return result


#: Planner settings for the check's EXPLAIN on PostgreSQL below PLANNER_ROWS cars, where a
#: whole-table read is rightly cheaper: sequential scans made to look prohibitively
#: expensive, so the check sees whether the statement *can* search an index. A statement
#: that cannot still gets a full scan. From PLANNER_ROWS on the natural plan is judged.
CHECK_SETTINGS = {"enable_seqscan": "off"}


def _settings(setup: _Setup) -> dict[str, str] | None:
    return CHECK_SETTINGS if setup.forced else None


def _attempt_kwargs(setup: _Setup) -> dict[str, Any]:
    return {
        "expected": setup.expected,
        "budget": 1,
        "normalize": _normalize,
        "max_rows": len(setup.expected),
    }


def check_cars_on_day(
    fn: Callable[[Session, date], Any], db: Backend, day: date = CHECK_DAY
) -> CheckResult:
    """The exercise check for a sync ``fn(session, day) -> list of car ids``.

    Right rows (the ids of the cars created on ``day``, in any order, including the
    :func:`edge_cars`), one statement sent through the session given (none is not enough),
    no more rows from the database than the answer holds, the day bound as a parameter (no
    date in the SQL text), and the plan of the statement (explained as sent, with its own
    parameters: :func:`course_lib.explain_sent`) must read cars, read no whole table and no
    whole index, and search an index on created_at for that day alone. SQLite: the SEARCH
    bounds created_at on both sides (or equals an expression index), and every date
    parameter lies within the day. PostgreSQL (EXPLAIN ANALYZE, rolled back): the index
    entries read are at most the answer and the edge cars, and the filter throws almost
    nothing away; the natural plan from :data:`PLANNER_ROWS` cars, below that the plan with
    :data:`CHECK_SETTINGS` (the verdict says so).
    """
    setup = _Setup.of(db, day)
    got: list[Any] = []

    def attempt(session: Session) -> Any:
        got.append(fn(session, day))
        return got[-1]

    with sent_statements(db) as sent:
        result = check(attempt, db, **_attempt_kwargs(setup))
    if result.status == "not attempted":
        return result
    if not result.passed:
        return _improve(setup, result, got[0] if got else None, sent)
    early = _before_plans(setup, result, sent)
    if early is not None:
        return early
    plans: list[tuple[Sent, Plan | Exception]] = []
    for one in sent:
        try:
            plans.append((one, explain_sent(db, one, settings=_settings(setup))))
        except DBAPIError as exc:
            plans.append((one, exc))
    return _plan_verdict(setup, result, plans)


async def acheck_cars_on_day(
    fn: Callable[[AsyncSession, date], Any], db: Backend, day: date = CHECK_DAY
) -> CheckResult:
    """Like :func:`check_cars_on_day` for ``async def fn(session, day)``."""
    setup = _Setup.of(db, day)
    got: list[Any] = []

    async def attempt(session: AsyncSession) -> Any:
        got.append(await fn(session, day))
        return got[-1]

    with sent_statements(db) as sent:
        result = await acheck(attempt, db, **_attempt_kwargs(setup))
    if result.status == "not attempted":
        return result
    if not result.passed:
        return _improve(setup, result, got[0] if got else None, sent)
    early = _before_plans(setup, result, sent)
    if early is not None:
        return early
    plans: list[tuple[Sent, Plan | Exception]] = []
    for one in sent:
        try:
            plans.append((one, await aexplain_sent(db, one, settings=_settings(setup))))
        except DBAPIError as exc:
            plans.append((one, exc))
    return _plan_verdict(setup, result, plans)
