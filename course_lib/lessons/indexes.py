"""Indexes (notebook 05): the DDL SQLAlchemy emits, plans as facts, timings, costs, the exercise.

Everything happens on a scratch copy (:func:`indexes_scratch`): the shared dataset keeps its
minimal indexes. Indexes are declared on copies of the course's tables (:func:`copy_of`), so
the models' metadata, which every build uses, never gains them.

>>> from sqlalchemy import Index
>>> from course_lib.models import Car
>>> cars = copy_of(Car)
>>> ddl(Index("ix_cars_make_year", cars.c.make, cars.c.year), "sqlite")
'CREATE INDEX ix_cars_make_year ON cars (make, year)'
>>> len(Car.__table__.indexes)  # the course's model is untouched
0

:func:`facts` reads a plan as the few facts a lesson asserts on: which index each table is
read through and how (a seek on its first column, a skip scan, the whole index, the whole
table), whether the rows are sorted afterwards. The exercise: :func:`exercise_statement` is
the slow query, :func:`check_index` judges the one index a learner adds for it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from sqlalchemy import (
    Column,
    Connection,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Select,
    Table,
    TextClause,
    bindparam,
    delete,
    exists,
    false,
    func,
    insert,
    inspect,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import OperationalError
from sqlalchemy.schema import CreateIndex

from ..backends import Backend
from ..course import Course, free_frames
from ..exercises import CheckResult, check
from ..explain import Plan, explain, pause_autovacuum
from ..measure import benchmark
from ..models import Base, Car, Comment, Dealership, Post, User
from ..plots import bar_chart
from .loading import create_author_index, has_author_index, index_ab, ratios

__all__ = [
    "INSERT_COUNTS",
    "INSERT_PATHS",
    "LISTING",
    "PAGE",
    "PLAN_ROWS",
    "SHOWN",
    "TIMING_ROWS",
    "Facts",
    "IndexCheckResult",
    "IndexInfo",
    "Parameters",
    "autocommit",
    "cascade_table",
    "check_index",
    "copy_of",
    "create_author_index",
    "create_fk_indexes",
    "create_index",
    "ddl",
    "delete_strategy",
    "drop_cascade_table",
    "drop_index",
    "drop_insert_tables",
    "duplicate_indexes",
    "exercise_statement",
    "expects_index",
    "facts",
    "fk_check",
    "forced",
    "forced_facts",
    "foreign_keys",
    "gain",
    "has_author_index",
    "index_ab",
    "index_names",
    "index_sizes",
    "index_usage",
    "index_valid",
    "indexes",
    "indexes_scratch",
    "insert_chart",
    "insert_strategies",
    "insert_tables",
    "insert_throughput",
    "parameters",
    "query_strategy",
    "ratios",
    "reset_indexes",
    "rewrite_rows",
    "rows_in",
    "run_workload",
    "signup_ids",
    "speedup_chart",
    "speedups",
    "sqlite_hinted",
    "triggers",
    "vacuum",
    "with_and_without",
]

PLAN_ROWS = 1_000
"""From this many rows in a table on, PostgreSQL's planner uses the lesson's indexes. Below it,
reading a table of a few pages whole is rightly cheaper: index use is asserted on SQLite only."""

TIMING_ROWS = 10_000
"""From this many cars on, the exercise check requires a measured speedup (2x or more)."""

PAGE = 20
"""Rows on one page of the exercise's listing."""

SHOWN = (Car.id, Car.make, Car.model, Car.year, Car.price)
"""The columns a list of cars shows."""

LISTING = (Car.id, Car.model, Car.price)
"""The few columns of the listing page that a covering index can answer alone."""

COURSE_TABLES = ("users", "posts", "comments", "post_tags", "tags", "dealerships", "cars")

_EPOCH = datetime(2024, 1, 1)


# ------------------------------------------------------------------ tables outside the models


def copy_of(model: type[Base] | Table, metadata: MetaData | None = None, **kw: Any) -> Table:
    """A copy of ``model``'s table in a private MetaData: indexes declared on it stay there.

    ``Index("ix", Car.make)`` would attach the index to ``Car.__table__``, and every later
    ``create_all`` (each dataset build) would create it. In an application that is what you
    want (declare it in ``__table_args__``); in the course the shared dataset stays minimal.
    """
    source = model if isinstance(model, Table) else model.__table__
    return source.to_metadata(metadata if metadata is not None else MetaData(), **kw)


# ------------------------------------------------------------------------ the scratch copy


def _quote(db: Backend | Connection, name: str) -> str:
    """An identifier quoted for the dialect (identifiers cannot be bound parameters)."""
    engine = db.sync_engine if isinstance(db, Backend) else db
    return engine.dialect.identifier_preparer.quote(name)


def _analyze(db: Backend, table: str | None = None) -> None:
    """``ANALYZE`` (one table, or all), outside a transaction."""
    target = f" {_quote(db, table)}" if table else ""
    with db.sync_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE" + target)


def vacuum(db: Backend, table: str | None = None, *, analyze: bool = False) -> None:
    """PostgreSQL ``VACUUM [ANALYZE] [table]``: dead rows reclaimed, the visibility map set.

    SQLite has no visibility map; there it runs ``ANALYZE`` (with ``analyze``) or nothing.
    """
    if db.name != "postgresql":
        if analyze:
            _analyze(db, table)
        return
    target = f" {_quote(db, table)}" if table else ""
    with db.sync_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(("VACUUM ANALYZE" if analyze else "VACUUM") + target)


def _plain_users(db: Backend) -> None:
    """The users table without the unique constraint on email: a model without ``unique=True``.

    PostgreSQL drops the constraint. SQLite cannot drop a table constraint: the table is
    rebuilt (create the new one, copy the rows, drop the old, rename), with foreign-key
    enforcement off for that connection only, and checked afterwards.
    """
    engine = db.sync_engine
    if db.name == "postgresql":
        names = [
            uc["name"]
            for uc in inspect(engine).get_unique_constraints("users")
            if uc["column_names"] == ["email"]
        ]
        with engine.begin() as conn:
            for name in names:
                conn.exec_driver_sql(f"ALTER TABLE users DROP CONSTRAINT {_quote(db, name)}")
        return
    users = User.__table__
    plain = Table(
        "users_plain",
        MetaData(),
        *[Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable) for c in users.c],
    )
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys = OFF")  # a no-op inside a transaction
        conn.commit()
        try:
            plain.create(conn)
            conn.execute(insert(plain).from_select(list(users.c.keys()), select(users)))
            conn.exec_driver_sql("DROP TABLE users")
            conn.exec_driver_sql("ALTER TABLE users_plain RENAME TO users")
            conn.commit()
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
            if broken:
                raise RuntimeError(f"rebuilding users broke foreign keys: {broken[:3]}")
        finally:
            conn.rollback()
            conn.exec_driver_sql("PRAGMA foreign_keys = ON")
            conn.commit()


def signups(course_users: int, cars: int) -> int:
    """How many sign-ups the scratch copy adds: as many accounts in all as cars listed.

    >>> signups(200, 50_000), signups(12, 60), signups(300, 100)
    (49800, 48, 0)
    """
    return max(0, cars - course_users)


def _add_signups(db: Backend, first_id: int, count: int) -> None:
    """``count`` users who signed up and never posted nor commented (ids from ``first_id``)."""
    rows = [
        {
            "id": i,
            "name": f"Visitor {i}",
            "email": f"user{i}@example.com",
            "created_at": _EPOCH + timedelta(minutes=7 * i),
        }
        for i in range(first_id, first_id + count)
    ]
    with db.sync_engine.begin() as conn:
        for start in range(0, len(rows), 5_000):
            conn.execute(insert(User), rows[start : start + 5_000])
        if db.name == "postgresql":
            largest = select(func.coalesce(func.max(User.id), 0) + 1).scalar_subquery()
            sequence = func.pg_get_serial_sequence("users", "id")
            conn.execute(select(func.setval(sequence, largest, False)))


def indexes_scratch(course: Course, name: str = "indexes") -> Course:
    """The notebook's scratch copy: the dataset, users without the unique email, sign-ups.

    ``course.scratch(name, filled=True)`` copies this scale's dataset on every backend; then
    the users table loses its unique constraint on email (the login's "before"), and gets
    sign-ups who never posted, so that there are as many accounts as cars (the login is
    timed on a table as large as the cars, and their deletion shows what unindexed foreign
    keys cost). PostgreSQL: ``VACUUM ANALYZE`` (the visibility map is set, so the covering
    index's lesson starts from a known state) and autovacuum paused on the lesson's tables.
    Idempotent: every call starts again from the dataset.
    """
    scratch = course.scratch(name, filled=True)
    extra = signups(course.scale.users, course.scale.cars)
    for db in scratch.backends:
        _plain_users(db)
        _add_signups(db, course.scale.users + 1, extra)
        if db.name == "postgresql":
            for table in ("cars", "users", "posts", "comments"):
                pause_autovacuum(db, table)
        vacuum(db, analyze=True)
    return scratch


def rows_in(db: Backend, table: str) -> int:
    """Rows in one course table, counted now."""
    with db.sync_engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(Base.metadata.tables[table])))


def expects_index(db: Backend, rows: int) -> bool:
    """Whether the lesson asserts index use here: always on SQLite, from PLAN_ROWS on PostgreSQL.

    >>> from course_lib.backends import sqlite
    >>> expects_index(sqlite("course_tiny"), 60)
    True
    """
    return db.name == "sqlite" or rows >= PLAN_ROWS


# ------------------------------------------------------------------ parameters from the data


@dataclass(frozen=True)
class Parameters:
    """The values the slow queries ask for, each found in the data (never typed in)."""

    email: str  #: an email that exists (the user in the middle of the table)
    typed_email: str  #: the same email as a user might type it, with capitals
    author_id: int  #: a user with posts
    make: str  #: the (make, year) with the most cars
    year: int
    budget: int  #: the price under which about 1% of the unsold cars are
    model: str  #: the model with the most cars (the exercise)
    car_id: str  #: a car id, as text from a URL


def _most_common_model(session: Any) -> str:
    """The model with the most cars (the first by name among equals)."""
    stmt = select(Car.model).group_by(Car.model).order_by(func.count().desc(), Car.model)
    return session.scalar(stmt.limit(1))


def parameters(db: Backend) -> Parameters:
    """Every parameter of the lesson's queries, read from ``db``'s data."""
    with db.Session() as session:
        users = session.scalar(select(func.count()).select_from(User))
        email = session.scalar(select(User.email).order_by(User.id).offset(users // 2).limit(1))
        author = session.scalar(select(Post.author_id).order_by(Post.id).limit(1))
        many = func.count().desc()
        make, year = session.execute(
            select(Car.make, Car.year)
            .group_by(Car.make, Car.year)
            .order_by(many, Car.make, Car.year)
        ).first()
        unsold = session.scalar(select(func.count()).where(Car.is_sold == false()))
        budget = session.scalar(
            select(Car.price)
            .where(Car.is_sold == false())
            .order_by(Car.price)
            .offset(max(1, unsold // 100) - 1)
            .limit(1)
        )
        model = _most_common_model(session)
        cars = session.scalar(select(func.count()).select_from(Car))
        car_id = session.scalar(select(Car.id).order_by(Car.id).offset(cars // 2).limit(1))
    local, domain = email.split("@")
    return Parameters(
        email=email,
        typed_email=f"{local.capitalize()}@{domain.capitalize()}",
        author_id=int(author),
        make=make,
        year=int(year),
        budget=int(budget),
        model=model,
        car_id=str(car_id),
    )


def query_strategy(label: str, stmt: Select) -> Callable[[Backend, int], Any]:
    """A strategy ``fn(db, n)`` for ``cl.compare``: run ``stmt`` once in a Session, all rows."""

    def run(db: Backend, n: int) -> Any:
        with db.Session() as session:
            return session.execute(stmt).all()

    run.__doc__ = label
    run.__name__ = re.sub(r"\W+", "_", label).strip("_") or "query"
    return run


# ------------------------------------------------------------------------------- the DDL


def ddl(index: Index, dialect: str | Backend) -> str:
    """The ``CREATE INDEX`` SQLAlchemy emits for ``index`` on a dialect ('sqlite', a Backend).

    >>> from sqlalchemy import Index, false
    >>> cars = copy_of(Car)
    >>> ix = Index("ix_p", cars.c.price, postgresql_where=cars.c.is_sold == false())
    >>> ddl(ix, "sqlite"), ddl(ix, "postgresql")
    ('CREATE INDEX ix_p ON cars (price)', 'CREATE INDEX ix_p ON cars (price) WHERE is_sold = false')
    """
    if isinstance(dialect, Backend):
        compiled_for = dialect.sync_engine.dialect
    else:
        from sqlalchemy.dialects import postgresql, sqlite

        compiled_for = {"sqlite": sqlite.dialect(), "postgresql": postgresql.dialect()}[dialect]
    return str(CreateIndex(index).compile(dialect=compiled_for)).strip()


def create_index(db: Backend, index: Index) -> str:
    """Create ``index`` in ``db``, refresh its table's statistics, and return the DDL emitted."""
    index.create(db.sync_engine)
    _analyze(db, index.table.name)
    return ddl(index, db)


def drop_index(db: Backend, name: str) -> None:
    """``DROP INDEX IF EXISTS name`` (a scratch copy only)."""
    with db.sync_engine.begin() as conn:
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {_quote(db, name)}")


@dataclass(frozen=True)
class IndexInfo:
    """One index as the catalog describes it: its keys (None for an expression), unique or not."""

    name: str
    table: str
    keys: tuple[str | None, ...]
    expressions: tuple[str, ...]
    unique: bool


def _top_level_items(inside: str) -> list[str]:
    """``"lower(model), price"`` -> ``["lower(model)", "price"]`` (commas outside parentheses)."""
    items, depth, current = [], 0, ""
    for char in inside:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += char
    return [*items, current.strip()] if current.strip() else items


def _parenthesized(sql: str) -> str:
    """What the first parentheses of ``sql`` hold, nested ones included.

    >>> _parenthesized("CREATE INDEX ix ON cars (lower(model), price) WHERE x = 1")
    'lower(model), price'
    """
    start = sql.index("(")
    depth = 0
    for position in range(start, len(sql)):
        depth += (sql[position] == "(") - (sql[position] == ")")
        if depth == 0:
            return sql[start + 1 : position]
    return sql[start + 1 :]


def _sqlite_indexes(conn: Connection) -> list[IndexInfo]:
    found = []
    listed = conn.execute(
        text("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name")
    ).all()
    for name, table, sql in listed:
        quoted = conn.dialect.identifier_preparer.quote(name)
        info = conn.exec_driver_sql(f"PRAGMA index_xinfo({quoted})").all()
        keys = tuple(row[2] for row in info if row[5] == 1)  # key columns; None: an expression
        expressions: tuple[str, ...] = ()
        if sql and None in keys:
            items = _top_level_items(_parenthesized(sql))
            expressions = tuple(i for i, k in zip(items, keys, strict=False) if k is None)
        unique = sql is None or sql.lstrip().upper().startswith("CREATE UNIQUE")
        found.append(IndexInfo(name, table, keys, expressions, unique))
    return found


_PG_INDEXES = text(
    "SELECT c.relname, t.relname, i.indisunique, "
    "array(SELECT CASE WHEN i.indkey[k - 1] = 0 THEN NULL "
    "ELSE pg_get_indexdef(i.indexrelid, k, true) END "
    "FROM generate_series(1, i.indnkeyatts) AS k ORDER BY k), "
    "array(SELECT pg_get_indexdef(i.indexrelid, k, true) "
    "FROM generate_series(1, i.indnkeyatts) AS k WHERE i.indkey[k - 1] = 0 ORDER BY k) "
    "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
    "WHERE n.nspname = current_schema() ORDER BY c.relname"
)


def indexes(db: Backend, tables: Sequence[str] = COURSE_TABLES) -> list[IndexInfo]:
    """Every index on ``tables`` now, read from the catalog (``sqlite_master`` and
    ``PRAGMA index_xinfo``, or ``pg_index``): expression indexes included, which SQLAlchemy's
    SQLite inspector skips with a warning."""
    with db.sync_engine.connect() as conn:
        if db.name == "sqlite":
            found = _sqlite_indexes(conn)
        else:
            found = [
                IndexInfo(name, table, tuple(keys), tuple(expressions), bool(unique))
                for name, table, unique, keys, expressions in conn.execute(_PG_INDEXES)
            ]
    return [ix for ix in found if ix.table in tables]


def index_names(db: Backend, tables: Sequence[str] = COURSE_TABLES) -> dict[str, str]:
    """Every index on ``tables`` now: ``{index name: table}`` (constraints' included)."""
    return {ix.name: ix.table for ix in indexes(db, tables)}


def reset_indexes(backends: Backend | Sequence[Backend] | Course) -> None:
    """Drop every lesson index (named ``ix_...``) on the course tables: the bare scratch copy."""
    dbs = _backends(backends)
    for db in dbs:
        for name in index_names(db):
            if name.startswith("ix_"):
                drop_index(db, name)


def _backends(target: Backend | Sequence[Backend] | Course) -> list[Backend]:
    if isinstance(target, Course):
        return list(target.backends)
    return [target] if isinstance(target, Backend) else list(target)


# --------------------------------------------------------------------------- plan facts


_LITERAL = re.compile(r"'(?:[^']|'')*'")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _leading_keys(db: Backend) -> dict[str, set[str]]:
    """PostgreSQL: the words of each index's first key (``make``, ``lower(email::text)``)."""
    stmt = text(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid, 1, true) "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema()"
    )
    with db.sync_engine.connect() as conn:
        return {name: set(_WORD.findall(key)) for name, key in conn.execute(stmt)}


@dataclass(frozen=True)
class Facts:
    """How a plan reads its tables, as facts that do not depend on costs or timings.

    ``reads`` says it in words, one entry per table access: "seek on ix" (the index's first
    column is constrained), "seek on ix, index only" (the table is not read), "skip scan of
    ix" (SQLite: one seek per value of the first column), "full scan of index ix", "full scan
    of cars"; ``sorts`` names the sort steps (Sort, Incremental Sort, a temp B-tree).
    """

    backend: str
    reads: tuple[str, ...]
    seeks: frozenset[str] = frozenset()
    index_only: frozenset[str] = frozenset()
    whole_indexes: frozenset[str] = frozenset()  #: read whole, or skip-scanned
    skip_scans: frozenset[str] = frozenset()
    full_tables: tuple[str, ...] = ()
    sorts: tuple[str, ...] = ()
    heap_fetches: int | None = None
    plan: Plan | None = field(default=None, repr=False, compare=False)

    @property
    def indexes(self) -> frozenset[str]:
        """Every index the plan reads, however."""
        return self.seeks | self.whole_indexes

    def seeks_on(self, name: str) -> bool:
        """The plan seeks on index ``name``, reads no table whole, and sorts nothing."""
        return name in self.seeks and not self.full_tables and not self.sorts

    def __str__(self) -> str:
        return "; ".join([*self.reads, *(f"then {s}" for s in self.sorts)]) or "(no table read)"


def _pg_facts(plan: Plan, leading: dict[str, set[str]]) -> Facts:
    reads: list[str] = []
    seeks: set[str] = set()
    only: set[str] = set()
    whole: set[str] = set()
    full: list[str] = []
    sorts: list[str] = []
    fetches: list[int] = []

    def visit(node: dict[str, Any]) -> None:
        kind = node["Node Type"]
        index = node.get("Index Name")
        if kind.endswith("Sort"):
            sorts.append(kind)
        elif kind == "Seq Scan":
            full.append(node.get("Relation Name", "?"))
            reads.append(f"full scan of {node.get('Relation Name', '?')}")
        elif index is not None:
            cond = _LITERAL.sub("", node.get("Index Cond", ""))
            wanted = leading.get(index, set())
            if cond and wanted and wanted <= set(_WORD.findall(cond)):
                seeks.add(index)
                if kind == "Index Only Scan":
                    only.add(index)
                    fetches.append(int(node.get("Heap Fetches", 0)))
                reads.append(f"seek on {index}" + (", index only" if index in only else ""))
            else:
                whole.add(index)
                reads.append(f"full scan of index {index}")
        for child in node.get("Plans", []):
            visit(child)

    if plan.tree is not None:
        visit(plan.tree["Plan"])
    return Facts(
        "postgresql",
        tuple(reads),
        frozenset(seeks),
        frozenset(only),
        frozenset(whole),
        frozenset(),
        tuple(full),
        tuple(sorts),
        sum(fetches) if fetches else None,
        plan,
    )


def _sqlite_facts(plan: Plan) -> Facts:
    reads: list[str] = []
    seeks: set[str] = set()
    only: set[str] = set()
    whole: set[str] = set()
    skips: set[str] = set()
    full: list[str] = []
    sorts: list[str] = []
    for node in plan.nodes:
        detail = node.detail
        if "TEMP B-TREE" in detail and "ORDER BY" in detail:
            sorts.append(detail)
        elif node.node_type == "SCAN" and node.index is None:
            full.append(node.relation or "?")
            reads.append(f"full scan of {node.relation}")
        elif node.node_type == "SCAN":
            whole.add(node.index)
            reads.append(f"full scan of index {node.index}")
        elif node.node_type == "SEARCH" and node.index is not None:
            if "(ANY(" in detail:
                skips.add(node.index)
                whole.add(node.index)
                reads.append(f"skip scan of {node.index}")
            else:
                seeks.add(node.index)
                if node.covering:
                    only.add(node.index)
                reads.append(f"seek on {node.index}" + (", index only" if node.covering else ""))
        elif node.node_type == "SEARCH":
            seeks.add("PRIMARY KEY")
            reads.append(f"seek on the primary key of {node.relation}")
    return Facts(
        "sqlite",
        tuple(reads),
        frozenset(seeks),
        frozenset(only),
        frozenset(whole),
        frozenset(skips),
        tuple(full),
        tuple(sorts),
        None,
        plan,
    )


def facts(db: Backend, stmt: Any) -> Facts:
    """The facts of ``stmt``'s plan on ``db`` (PostgreSQL: ``EXPLAIN ANALYZE``, rolled back)."""
    plan = explain(db, stmt, costs=False)
    if db.name == "postgresql":
        return _pg_facts(plan, _leading_keys(db))
    return _sqlite_facts(plan)


def triggers(plan: Plan) -> list[tuple[str, int]]:
    """PostgreSQL ``EXPLAIN ANALYZE`` of a DML: ``(constraint, calls)`` of each trigger it fired.

    A DELETE of parent rows fires the foreign key's check once per deleted row. Sorted by
    constraint name (the firing order follows trigger names, which carry OIDs).
    """
    found = (plan.tree or {}).get("Triggers", [])
    return sorted((t.get("Constraint Name", t["Trigger Name"]), int(t["Calls"])) for t in found)


# -------------------------------------------------------------------------- before / after


_SWITCHED_OFF = "full scan (index switched off)"
_INDEX_SCANS_OFF = (
    "SET LOCAL enable_indexscan = off",
    "SET LOCAL enable_indexonlyscan = off",
    "SET LOCAL enable_bitmapscan = off",
)


def sqlite_hinted(stmt: Select, hint: str) -> TextClause:
    """``stmt`` for SQLite with ``hint`` (``NOT INDEXED``, ``INDEXED BY ix``) after its table.

    SQLAlchemy's SQLite dialect renders no table hints (``with_hint`` is silently ignored
    there), so the hint goes into the SQL it compiles (named parameters), and the values stay
    bound parameters, with their types; the result columns keep theirs.

    >>> from course_lib.models import Car
    >>> " ".join(str(sqlite_hinted(select(Car.id).where(Car.make == "Kia"), "NOT INDEXED")).split())
    'SELECT cars.id FROM cars NOT INDEXED WHERE cars.make = :make_1'
    """
    compiled = stmt.compile(dialect=sqlite_dialect.dialect(paramstyle="named"))
    table = stmt.get_final_froms()[0].name
    sql, found = re.subn(
        rf"\bFROM {re.escape(table)}\b", f"FROM {table} {hint}", str(compiled), count=1
    )
    if not found:
        raise ValueError(f"no FROM {table} to put {hint} after")
    binds = [
        bindparam(name, value=bind.effective_value, type_=bind.type)
        for bind, name in compiled.bind_names.items()
    ]
    return text(sql).bindparams(*binds).columns(*stmt.selected_columns)


def forced(stmt: Select, index: str, *, use_index: bool, label: str) -> Callable[..., Any]:
    """A strategy running ``stmt`` through ``index`` (``use_index``) or with a full scan.

    SQLite: ``INDEXED BY index`` or ``NOT INDEXED`` on the table (:func:`sqlite_hinted`).
    PostgreSQL: the planner's switches for this transaction only (``SET LOCAL
    enable_seqscan = off``, or every index scan off); it has no hint naming an index, so with
    ``use_index`` the planner picks among the indexes that fit (the lesson makes one), and
    may read it as a Bitmap Heap Scan. For measuring what the planner declined, never for
    production code.
    """
    sqlite_stmt = sqlite_hinted(stmt, f"INDEXED BY {index}" if use_index else "NOT INDEXED")
    switches = ("SET LOCAL enable_seqscan = off",) if use_index else _INDEX_SCANS_OFF

    def run(db: Backend, n: int) -> Any:
        with db.Session() as session:
            if db.name == "sqlite":
                return session.execute(sqlite_stmt).all()
            for switch in switches:
                session.execute(text(switch))
            return session.execute(stmt).all()

    run.__doc__ = label
    run.sqlite_statement = sqlite_stmt  # type: ignore[attr-defined]
    run.statement = stmt  # type: ignore[attr-defined]
    run.switches = switches  # type: ignore[attr-defined]
    return run


def forced_facts(db: Backend, strategy: Callable[..., Any]) -> Facts:
    """The plan facts of a :func:`forced` strategy, with its hint or its planner switches."""
    if db.name == "sqlite":
        return facts(db, strategy.sqlite_statement)  # type: ignore[attr-defined]
    with db.sync_engine.connect() as conn, conn.begin():
        for switch in strategy.switches:  # type: ignore[attr-defined]
            conn.execute(text(switch))
        plan = explain(conn, strategy.statement, costs=False)  # type: ignore[attr-defined]
    return _pg_facts(plan, _leading_keys(db))


def with_and_without(
    backends: Sequence[Backend], label: str, stmt: Select, index: str
) -> list[Callable[[Backend, int], Any]]:
    """Two strategies for one ``cl.compare``: ``stmt`` with ``index`` in use, and with every
    index switched off for it (the full scan it had before the index existed).

    Both are timed together, their samples interleaved, so a slow spell of the machine falls
    on both. The switched-off plan is checked to be a full scan on every backend, and the
    two to return the same rows (in any order: without an ORDER BY, each plan has its own).
    """
    without = forced(stmt, index, use_index=False, label=f"{label}: {_SWITCHED_OFF}")

    def with_index(db: Backend, n: int) -> Any:
        with db.Session() as session:
            return session.execute(stmt).all()

    with_index.__doc__ = f"{label}: with {index}"
    for db in backends:
        plan = forced_facts(db, without)
        if not plan.full_tables or plan.indexes:
            raise AssertionError(f"{db.name}: switched off, {label} is not a full scan: {plan}")
        if Counter(map(tuple, without(db, 1))) != Counter(map(tuple, with_index(db, 1))):
            raise AssertionError(f"{db.name}: {label} returns other rows with {index}")
    return [without, with_index]


def _halves(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the switched-off rows, the rows with the index) of a :func:`with_and_without` frame."""
    off = frame["strategy"].str.endswith(_SWITCHED_OFF)
    return frame[off].set_index("backend"), frame[~off].set_index("backend")


def gain(frame: pd.DataFrame) -> pd.Series:
    """Per backend: the median without the index over the median with it (a
    :func:`with_and_without` pair timed by ``cl.compare``)."""
    without, with_it = _halves(frame)
    return (without["median_ms"] / with_it["median_ms"]).rename("without / with the index")


def speedups(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per index kind and backend: the times without and with the index, and the
    speedup, from each kind's :func:`with_and_without` frame (``{kind: frame}``)."""
    rows = []
    for kind, frame in frames.items():
        without, with_it = _halves(frame)
        for backend in without.index:
            slow, fast = without.at[backend, "median_ms"], with_it.at[backend, "median_ms"]
            rows.append(
                {
                    "kind": kind,
                    "backend": backend,
                    "no index (ms)": slow,
                    "with it (ms)": fast,
                    "speedup": round(slow / fast, 1),
                }
            )
    return pd.DataFrame(rows)


def speedup_chart(frame: pd.DataFrame, title: str = "Speedup per index kind") -> Figure:
    """Bars of ``speedups(...)``: one per kind and backend, on a log axis (1 = no gain)."""
    shaped = frame.rename(columns={"kind": "strategy"}).assign(n=1)
    fig = bar_chart(shaped, title, y="speedup")
    ax = fig.axes[0]
    ax.set_xscale("log")
    ax.axvline(1, color="grey", linewidth=1)
    ax.set_xlabel("full-scan time / time with the index (log scale; 1 = no gain)")
    return fig


# ---------------------------------------------------------------------------- write costs


INSERT_COUNTS = (0, 1, 3, 6)
"""How many indexes the insert-cost tables carry."""


def _write_indexes(table: Table, dialect: str, count: int) -> list[Index]:
    """The first ``count`` of the lesson's six indexes, declared on ``table`` (a cars copy)."""
    c = table.c
    name = table.name
    unsold = c.is_sold == false()

    def covering() -> Index:
        if dialect == "postgresql":
            return Index(
                f"ix_{name}_listing", c.make, c.year, postgresql_include=["model", "price", "id"]
            )
        return Index(f"ix_{name}_listing", c.make, c.year, c.model, c.price)

    makers: list[Callable[[], Index]] = [
        lambda: Index(f"ix_{name}_dealership_id", c.dealership_id),
        lambda: Index(f"ix_{name}_make_year", c.make, c.year),
        lambda: Index(
            f"ix_{name}_unsold_price", c.price, sqlite_where=unsold, postgresql_where=unsold
        ),
        lambda: Index(f"ix_{name}_is_sold", c.is_sold),
        lambda: Index(f"ix_{name}_model_price_id", c.model, c.price, c.id),
        covering,
    ]
    return [make() for make in makers[:count]]


def insert_tables(db: Backend, counts: Sequence[int] = INSERT_COUNTS) -> dict[int, Table]:
    """Empty copies of the cars table, ``cars_<k>_indexes``, each with the first k indexes.

    Same columns and foreign key as ``cars``; dropped and made again on every call. On
    PostgreSQL autovacuum is off for them: the rolled-back inserts leave dead rows that it
    would otherwise clean up at a moment of its choosing, in the middle of a measurement.
    """
    metadata = MetaData()
    copy_of(Dealership, metadata)
    tables: dict[int, Table] = {}
    for k in counts:
        tables[k] = copy_of(Car, metadata, name=f"cars_{k}_indexes")
        _write_indexes(tables[k], db.name, k)  # attached: created with the table
    drop_insert_tables(db, counts)
    with db.sync_engine.begin() as conn:
        for table in tables.values():
            table.create(conn)
    for table in tables.values():
        pause_autovacuum(db, table.name)
    return tables


def drop_insert_tables(db: Backend, counts: Sequence[int] = INSERT_COUNTS) -> None:
    """Drop the ``cars_<k>_indexes`` tables (and their indexes)."""
    with db.sync_engine.begin() as conn:
        for k in counts:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {_quote(db, f'cars_{k}_indexes')}")


def _new_car_rows(db: Backend, count: int) -> list[dict[str, Any]]:
    """The first ``count`` cars of the dataset as new rows (no id: the database assigns it)."""
    with db.sync_engine.connect() as conn:
        rows = conn.execute(_source_rows(count)).mappings().all()
    return [dict(row) for row in rows]


def _source_rows(count: int) -> Select:
    """The first ``count`` cars of the dataset, every column but the id."""
    return select(*[c for c in Car.__table__.c if c.name != "id"]).order_by(Car.id).limit(count)


INSERT_PATHS = ("executemany", "INSERT ... SELECT")
"""How the insert-cost strategies write: rows sent from Python, or copied inside the database."""


def insert_strategies(
    backends: Sequence[Backend], batch: int, counts: Sequence[int] = INSERT_COUNTS
) -> list[Callable[[Backend, int], Any]]:
    """Two strategies per index count k, each writing ``batch`` cars into ``cars_<k>_indexes``:

    - "executemany": the rows sent from Python, ``conn.execute(insert(table), rows)``;
    - "INSERT ... SELECT": the same rows copied from ``cars`` inside the database, so the
      time is the database's own work (the heap and every index), without the driver's.

    The tables are made first (:func:`insert_tables`). Each call writes in a transaction that
    is rolled back, so every call starts from the same empty table; all strategies are timed
    together by ``cl.compare``, their samples interleaved.
    """
    tables = {db.name: insert_tables(db, counts) for db in backends}
    rows = {db.name: _new_car_rows(db, batch) for db in backends}
    source = _source_rows(batch)
    names = [c.name for c in source.selected_columns]
    strategies = []
    for path in INSERT_PATHS:
        for k in counts:

            def run(db: Backend, n: int, k: int = k, path: str = path) -> None:
                table = tables[db.name][k]
                with db.sync_engine.connect() as conn, conn.begin() as transaction:
                    if path == "executemany":
                        conn.execute(insert(table), rows[db.name])
                    else:
                        conn.execute(insert(table).from_select(names, source))
                    transaction.rollback()

            run.__doc__ = f"{path}: {k} index" + ("" if k == 1 else "es")
            run.__name__ = f"insert_with_{k}_indexes"
            strategies.append(run)
    return strategies


def insert_throughput(frame: pd.DataFrame, batch: int) -> pd.DataFrame:
    """Rows per second for each path, index count and backend, and the time relative to the
    same path with no index."""
    out = frame[["strategy", "backend", "median_ms", "q1_ms", "q3_ms"]].copy()
    parts = out.pop("strategy").str.split(": ", n=1)
    out.insert(0, "path", parts.str[0])
    out.insert(1, "indexes", parts.str[1].str.split().str[0].astype(int))
    out["rows_per_s"] = (batch / (out["median_ms"] / 1000)).round(-2)
    base = out[out["indexes"] == 0].set_index(["backend", "path"])["median_ms"]
    keys = pd.MultiIndex.from_frame(out[["backend", "path"]])
    out["time_vs_no_index"] = (out["median_ms"].to_numpy() / base.reindex(keys).to_numpy()).round(2)
    return out.sort_values(["path", "backend", "indexes"], ignore_index=True)


def insert_chart(throughput: pd.DataFrame, title: str = "Insert throughput") -> Figure:
    """Rows per second against the number of indexes: a colour per backend, a style per path."""
    styles = dict(zip(INSERT_PATHS, ["-", "--"], strict=True))
    with plt.rc_context({"figure.figsize": (8, 4.2), "axes.grid": True, "grid.alpha": 0.3}):
        fig, ax = plt.subplots()
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        backends = sorted(set(throughput["backend"]), key=lambda name: (name != "sqlite", name))
        for b, backend in enumerate(backends):  # SQLite first, as in the course's other charts
            for path in INSERT_PATHS:
                part = throughput[(throughput["backend"] == backend) & (throughput["path"] == path)]
                if part.empty:
                    continue
                part = part.sort_values("indexes")
                ax.plot(
                    part["indexes"],
                    part["rows_per_s"],
                    marker="o",
                    color=colours[b % len(colours)],
                    linestyle=styles.get(path, ":"),
                    label=f"{backend}, {path}",
                )
        ax.set_xticks(sorted(throughput["indexes"].unique()))
        ax.set_xlabel("indexes on the table besides the primary key")
        ax.set_ylabel("rows inserted per second (median)")
        ax.set_yscale("log")
        ax.set_title(title, fontweight="bold")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        fig.tight_layout()
    plt.close(fig)
    return fig


# ------------------------------------------------------------------------------- sizes


def index_sizes(db: Backend, names: Sequence[str]) -> pd.DataFrame:
    """Pages and KiB of each index in ``names``, and ``entry_pages``: the pages that hold
    entries (PostgreSQL's B-tree metapage not counted).

    PostgreSQL: ``pg_relation_size``. SQLite: the ``dbstat`` virtual table (pages of that
    B-tree); a SQLite built without ``dbstat`` gives an empty frame with ``attrs["note"]``.
    """
    rows = []
    with db.sync_engine.connect() as conn:
        if db.name == "postgresql":
            block = int(conn.scalar(text("SELECT current_setting('block_size')")))
            for name in names:
                size = conn.scalar(select(func.pg_relation_size(func.to_regclass(name))))
                rows.append({"index": name, "pages": int(size) // block, "KiB": int(size) / 1024})
        else:
            try:
                for name in names:
                    pages, size = conn.execute(
                        text(
                            "SELECT count(*), coalesce(sum(pgsize), 0) FROM dbstat WHERE name = :n"
                        ),
                        {"n": name},
                    ).one()
                    rows.append({"index": name, "pages": int(pages), "KiB": int(size) / 1024})
            except OperationalError:
                frame = pd.DataFrame(columns=["backend", "index", "pages", "KiB", "entry_pages"])
                frame.attrs["note"] = "this SQLite has no dbstat table: index sizes not shown"
                return frame
    frame = pd.DataFrame(rows)
    frame.insert(0, "backend", db.name)
    frame["entry_pages"] = (frame["pages"] - (db.name == "postgresql")).clip(lower=0)
    return frame


# ------------------------------------------------------------------- usage and duplicates


def run_workload(db: Backend, statements: Sequence[Any]) -> None:
    """Run each statement once on one connection, then make PostgreSQL publish its counters.

    ``pg_stat_force_next_flush()`` (PostgreSQL 15+) asks this backend to flush its pending
    statistics when it goes idle, which it does at the COMMIT that follows, before replying.
    """
    with db.sync_engine.connect() as conn:
        for stmt in statements:
            conn.execute(stmt).all()
        if db.name == "postgresql":
            conn.execute(select(func.pg_stat_force_next_flush()))
        conn.commit()


def index_usage(db: Backend, tables: Sequence[str] = COURSE_TABLES) -> pd.DataFrame:
    """PostgreSQL: scans per index (``pg_stat_user_indexes.idx_scan``), size, constraint or not.

    Counters are cumulative since the index was created (or the statistics reset).
    """
    stmt = text(
        "SELECT s.relname AS table, s.indexrelname AS index, s.idx_scan AS scans, "
        "pg_relation_size(s.indexrelid) / 1024 AS kib, "
        "EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = s.indexrelid) AS constraint "
        "FROM pg_stat_user_indexes s ORDER BY s.relname, s.indexrelname"
    )
    with db.sync_engine.connect() as conn:
        conn.execute(select(func.pg_stat_clear_snapshot()))
        frame = pd.DataFrame(conn.execute(stmt).mappings().all())
    return frame[frame["table"].isin(tables)].reset_index(drop=True)


def duplicate_indexes(db: Backend) -> list[tuple[str, ...]]:
    """PostgreSQL: groups of indexes on the same table with the same keys, expressions,
    predicate, operator classes and collations (``pg_index``), e.g. ``(cars_pkey, ix_cars_id)``.
    """
    stmt = text(
        "SELECT string_agg(indexrelid::regclass::text, ' ' ORDER BY indexrelid::regclass::text) "
        "FROM pg_index "
        "GROUP BY indrelid, indkey::text, indclass::text, indcollation::text, "
        "coalesce(pg_get_expr(indexprs, indrelid), ''), "
        "coalesce(pg_get_expr(indpred, indrelid), '') "
        "HAVING count(*) > 1 ORDER BY 1"
    )
    with db.sync_engine.connect() as conn:
        return [tuple(row[0].split()) for row in conn.execute(stmt)]


# ---------------------------------------------------------------------------- foreign keys


def foreign_keys(db: Backend, tables: Sequence[str] = COURSE_TABLES) -> pd.DataFrame:
    """Every foreign key of the course tables, and whether an index starts with its column.

    An index serves the foreign key when the key's columns are its first columns (the
    primary key counts: ``post_tags (post_id, tag_id)`` serves ``post_id``).
    """
    inspector = inspect(db.sync_engine)
    keys_of: dict[str, list[list[str | None]]] = {}
    for ix in indexes(db, tables):
        keys_of.setdefault(ix.table, []).append(list(ix.keys))
    rows = []
    for table in tables:
        if not inspector.has_table(table):
            continue
        leading = [*keys_of.get(table, [])]
        leading.append(inspector.get_pk_constraint(table)["constrained_columns"])
        for fk in inspector.get_foreign_keys(table):
            columns = fk["constrained_columns"]
            served = [ix for ix in leading if ix[: len(columns)] == columns]
            rows.append(
                {
                    "table": table,
                    "column": ", ".join(columns),
                    "references": f"{fk['referred_table']}.{', '.join(fk['referred_columns'])}",
                    "indexed": bool(served),
                }
            )
    return pd.DataFrame(rows).sort_values(["table", "column"], ignore_index=True)


def create_fk_indexes(db: Backend) -> list[str]:
    """The two indexes a DELETE of users needs: ``posts.author_id`` and ``comments.user_id``."""
    made = [] if "ix_posts_author_id" in index_names(db, ["posts"]) else [create_author_index(db)]
    comments = copy_of(Comment)
    made.append(create_index(db, Index("ix_comments_user_id", comments.c.user_id)))
    return made


def fk_check(column: Any, value: Any) -> Select:
    """The search a DELETE of a parent row makes, per foreign key, for a referencing row.

    PostgreSQL's foreign-key trigger runs ``SELECT 1 FROM ONLY child x WHERE column = $1 FOR
    KEY SHARE OF x`` once for each deleted parent row; SQLite searches the same way (and
    renders no ``FOR KEY SHARE``). ``column``: ``Post.author_id`` or a table column.
    """
    column = getattr(column, "expression", column)
    return (
        select(literal(1))
        .select_from(column.table)
        .where(column == value)
        .with_for_update(read=True, key_share=True)
    )


def signup_ids(db: Backend, count: int) -> list[int]:
    """The ids of ``count`` users who never posted nor commented (the newest sign-ups)."""
    never_posted = ~exists().where(Post.author_id == User.id)
    never_commented = ~exists().where(Comment.user_id == User.id)
    stmt = (
        select(User.id).where(never_posted, never_commented).order_by(User.id.desc()).limit(count)
    )
    with db.sync_engine.connect() as conn:
        return sorted(conn.scalars(stmt).all())


def delete_strategy(ids: Sequence[int], label: str) -> Callable[[Backend, int], Any]:
    """A strategy deleting the users ``ids`` in a transaction rolled back (repeatable)."""
    stmt = delete(User).where(User.id.in_(list(ids)))

    def run(db: Backend, n: int) -> None:
        with db.sync_engine.connect() as conn, conn.begin() as transaction:
            conn.execute(stmt)
            transaction.rollback()

    run.__doc__ = label
    return run


def cascade_table(db: Backend) -> Table:
    """``favourites`` (scratch only): the cars users saved, ``ON DELETE CASCADE`` from users.

    One favourite per car whose id is also a user's id (as many rows as cars at every
    scale), and no index on ``user_id``: deleting a user deletes their favourites, and the
    database must find them first (PostgreSQL: the foreign key's trigger, once per user).
    """
    metadata = MetaData()
    copy_of(User, metadata)
    table = Table(
        "favourites",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        Column("car_id", Integer, nullable=False),
    )
    table.drop(db.sync_engine, checkfirst=True)
    table.create(db.sync_engine)
    source = select(Car.id, User.id.label("user_id"), Car.id.label("car_id")).join_from(
        Car, User, User.id == Car.id
    )
    with db.sync_engine.begin() as conn:
        conn.execute(insert(table).from_select(["id", "user_id", "car_id"], source))
    _analyze(db, "favourites")
    return table


def drop_cascade_table(db: Backend) -> None:
    """Drop the ``favourites`` table of :func:`cascade_table` again."""
    with db.sync_engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS favourites")


# --------------------------------------------------------------------------- in production


@contextmanager
def autocommit(db: Backend) -> Iterator[Connection]:
    """A connection outside any transaction (``isolation_level="AUTOCOMMIT"``): for
    ``CREATE INDEX CONCURRENTLY``, ``VACUUM`` and other commands a transaction forbids."""
    with db.sync_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        yield conn


def index_valid(db: Backend, name: str) -> bool:
    """PostgreSQL: ``pg_index.indisvalid`` of the index ``name`` (a failed concurrent build
    leaves an invalid index behind). Other backends: whether the index exists."""
    if db.name != "postgresql":
        return name in index_names(db)
    stmt = text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)")
    with db.sync_engine.connect() as conn:
        return bool(conn.scalar(stmt, {"name": name}))


# ------------------------------------------------------------------------------ exercise


def exercise_statement(db: Backend) -> Select:
    """The exercise's slow query: the cheapest cars of the most common model, a page of them.

    ``WHERE model = :model ORDER BY price, id LIMIT 20``: the id breaks ties on price, so
    the page is the same whatever plan reads it.
    """
    with db.Session() as session:
        model = _most_common_model(session)
    return select(*SHOWN).where(Car.model == model).order_by(Car.price, Car.id).limit(PAGE)


@dataclass(repr=False)
class IndexCheckResult(CheckResult):
    """A :class:`CheckResult` with what the index check measured."""

    index: str | None = None
    reads: str = ""
    speedup: float | None = None


def _fail(status: str, why: str, **kw: Any) -> IndexCheckResult:
    return IndexCheckResult(status, f"✗ {why}", statements=1, budget=1, **kw)


def _time_query(db: Backend, stmt: Select) -> float:
    """Median seconds of ``stmt`` on one open connection (the statement, not the pool)."""
    with db.sync_engine.connect() as conn:
        timing = benchmark(lambda: conn.execute(stmt).all(), repeats=5)
    return timing.median_s


def _describe_index(db: Backend, name: str) -> tuple[str, list[str | None], list[str]]:
    """(table, key columns (None for an expression), expressions) of the index ``name``."""
    for ix in indexes(db):
        if ix.name == name:
            return ix.table, list(ix.keys), list(ix.expressions)
    return "?", [], []


_PG_DIRECTIONS = text(
    "SELECT (i.indoption[k - 1] & 1) = 1 FROM pg_index i, generate_series(1, i.indnkeyatts) k "
    "WHERE i.indexrelid = to_regclass(:name) ORDER BY k"
)


def _shown(db: Backend, name: str, columns: list[str | None]) -> str:
    """The index's keys as a learner wrote them: ``model, price DESC, id``."""
    with db.sync_engine.connect() as conn:
        if db.name == "sqlite":
            info = conn.exec_driver_sql(f"PRAGMA index_xinfo({_quote(db, name)})").all()
            descending = [bool(row[3]) for row in info if row[5] == 1]
        else:
            descending = [bool(d) for d in conn.scalars(_PG_DIRECTIONS, {"name": name})]
    descending += [False] * (len(columns) - len(descending))
    return ", ".join(
        (c if c is not None else "an expression") + (" DESC" if d else "")
        for c, d in zip(columns, descending, strict=False)
    )


def _why_unused(name: str, columns: list[str | None], expressions: list[str], shown: str) -> str:
    if expressions or None in columns:
        return (
            f"The plan does not use {name}: it indexes an expression ({', '.join(expressions)}), "
            "and the query compares the column model itself. An expression index serves only "
            "a WHERE on the same expression."
        )
    if columns == ["id"]:
        return (
            f"{name} indexes id, which the primary key already indexes: a duplicate that "
            "changes nothing (the plan still reads every car and sorts). Index what the WHERE "
            "pins: model."
        )
    if columns[:1] == ["model"]:
        return (
            f"The plan does not use {name} ({shown}), although it starts with model: the "
            "planner finds no way to read it in the ORDER BY's order. Use a B-tree on "
            "(model, price, id)."
        )
    return (
        f"The plan does not use {name} ({shown}): the query pins model and orders by price, "
        "id, so the index must start with model."
    )


def _judge_plan(db: Backend, name: str, found: Facts) -> IndexCheckResult | None:
    """The first plan fact that rejects the index ``name``, or None when the plan is right."""
    _table, columns, expressions = _describe_index(db, name)
    shown = _shown(db, name, columns)
    if name not in found.indexes:
        return _fail("index not used", _why_unused(name, columns, expressions, shown), index=name)
    if name in found.whole_indexes:
        how = "skip-scanned" if name in found.skip_scans else "read whole"
        return _fail(
            "wrong column order",
            f"{name} ({shown}) is {how}: its first column is {columns[0]}, but the query pins "
            "model. Put the column the WHERE pins with = first, then the ORDER BY's columns "
            "in order.",
            index=name,
            reads=str(found),
        )
    if found.sorts:
        if db.name == "postgresql" and columns[-1:] != ["id"] and "price" in columns:
            why = (
                f"PostgreSQL still sorts ({', '.join(found.sorts)}) after seeking {name} "
                f"({shown}): the ties on price are ordered by id, and a PostgreSQL index "
                "holds no id unless you put it there (a SQLite index ends with the rowid, "
                "which is why it needs no sort). Add id as the last column."
            )
        else:
            why = (
                f"{name} ({shown}) finds the {columns[0]} rows, but the database still sorts "
                f"them ({', '.join(found.sorts)}) for ORDER BY price, id. Add the ORDER BY's "
                "columns, in order and in one direction, after the column the WHERE pins."
            )
        return _fail("leaves a sort", why, index=name, reads=str(found))
    if found.full_tables:
        return _fail(
            "full scan",
            f"The plan still reads {', '.join(found.full_tables)} whole ({found}).",
            index=name,
            reads=str(found),
        )
    return None


@dataclass(frozen=True)
class _Saved:
    """One index as the check found it: how to drop it and how to make it again."""

    table: str
    create: str | None  #: the DDL that makes it again (None: SQLite's own, for a constraint)
    drop: str | None  #: DROP INDEX, or ALTER TABLE ... DROP CONSTRAINT for a constraint's index
    partial: bool


_PG_CATALOG = text(
    "SELECT c.relname, t.relname, pg_get_indexdef(i.indexrelid), con.conname, "
    "pg_get_constraintdef(con.oid), i.indpred IS NOT NULL "
    "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
    "LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.contype IN ('p', 'u', 'x') "
    "WHERE n.nspname = current_schema()"
)


def _has_predicate(sql: str) -> bool:
    """Whether a SQLite ``CREATE INDEX`` has a ``WHERE`` after its column list."""
    inside = _parenthesized(sql)
    rest = sql[sql.index(inside) + len(inside) :]
    return re.search(r"\bWHERE\b", rest, re.IGNORECASE) is not None


def _catalog(db: Backend) -> dict[str, _Saved]:
    """Every index on the course tables, with the DDL to drop it and to make it again."""
    found: dict[str, _Saved] = {}
    with db.sync_engine.connect() as conn:
        if db.name == "sqlite":
            listed = conn.execute(
                text("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index'")
            ).all()
            for name, table, sql in listed:
                drop = f"DROP INDEX {_quote(db, name)}" if sql else None
                found[name] = _Saved(table, sql, drop, bool(sql) and _has_predicate(sql))
        else:
            for name, table, indexdef, constraint, condef, partial in conn.execute(_PG_CATALOG):
                if constraint is None:
                    create, drop = indexdef, f"DROP INDEX {_quote(db, name)}"
                else:
                    on = f"ALTER TABLE {_quote(db, table)}"
                    create = f"{on} ADD CONSTRAINT {_quote(db, constraint)} {condef}"
                    drop = f"{on} DROP CONSTRAINT {_quote(db, constraint)}"
                found[name] = _Saved(table, create, drop, bool(partial))
    return {name: saved for name, saved in found.items() if saved.table in COURSE_TABLES}


_MODEL_INDEXES = {table.name: frozenset(table.indexes) for table in Base.metadata.tables.values()}
"""The indexes the course's models declare (none): frozen at import, so anything attached to
them later (``Index("ix", Car.model)`` attaches to ``Car.__table__``) can be detached."""


def _detach_model_indexes() -> set[str]:
    """Detach every index declared on the course's models since import; their names."""
    detached = set()
    for table in Base.metadata.tables.values():
        for index in set(table.indexes) - _MODEL_INDEXES.get(table.name, frozenset()):
            table.indexes.discard(index)
            detached.add(str(index.name))
    return detached


_PG_FORCED = ("SET LOCAL enable_seqscan = off", "SET LOCAL enable_bitmapscan = off")


def _forced_plan(db: Backend, stmt: Select) -> Facts:
    """PostgreSQL: the plan with sequential and bitmap scans switched off (this transaction)."""
    with db.sync_engine.connect() as conn, conn.begin():
        for switch in _PG_FORCED:
            conn.execute(text(switch))
        plan = explain(conn, stmt, costs=False)
    return _pg_facts(plan, _leading_keys(db))


def _concurrently_hint(error: Exception) -> str:
    if "CONCURRENTLY" not in str(error).upper():
        return ""
    return (
        " CREATE INDEX CONCURRENTLY cannot run inside the transaction the check gives "
        "add_index: leave postgresql_concurrently=True to production code, run through an "
        "autocommit connection (see 'In production')."
    )


def check_index(add_index: Callable[[Connection], Any], db: Backend) -> IndexCheckResult:
    """Judge ``add_index(conn)``: it must create the one index that serves the exercise query.

    On ``db`` (a scratch copy, left as it was found: the learner's indexes are dropped
    after, anything it dropped is made again), the check requires: the same rows as without
    the index; exactly one new index, on ``lesson.copy_of(Car)`` (not on ``Car`` itself),
    not partial, and nothing dropped; a plan that seeks on it (its first column
    constrained) with no full scan of a table or an index and no sort, on every backend and
    scale (on PostgreSQL below :data:`PLAN_ROWS` cars, where its planner rightly reads the
    table whole, the plan is judged with sequential and bitmap scans switched off); and from
    :data:`TIMING_ROWS` cars, a measured speedup of 2x or more.
    """
    stmt = exercise_statement(db)
    cars = rows_in(db, "cars")
    forced_plan = not expects_index(db, cars)
    timed = cars >= TIMING_ROWS
    saved = _catalog(db)
    existing = set(saved)
    with db.sync_engine.connect() as conn:
        reference = conn.execute(stmt).all()
    declared = _detach_model_indexes()  # left on the models before the check began
    try:
        try:
            with db.sync_engine.begin() as conn:
                add_index(conn)
        except NotImplementedError:
            return IndexCheckResult(
                "not attempted",
                "⏳ Not attempted yet: replace the `raise NotImplementedError` with your code, "
                "then run this cell again.",
                budget=1,
            )
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            hint = _concurrently_hint(error)
            free_frames(error)
            return _fail("raised", f"It raised {type(error).__name__}: {first[:200]}.{hint}")
        finally:
            declared |= _detach_model_indexes()  # the course's models stay minimal
            db.sync_engine.dispose()  # no planner setting of add_index's session survives
        now = _catalog(db)
        removed = sorted(existing - set(now))
        if removed:
            return _fail(
                "dropped an index",
                f"add_index dropped {', '.join(removed)}: the exercise adds one index and "
                "drops nothing (the check has made it again).",
            )
        new = sorted(set(now) - existing)
        if not new:
            return _fail(
                "no index",
                "No new index: create one in add_index, e.g. Index(...).create(conn).",
            )
        if len(new) > 1:
            return _fail(
                "too many indexes",
                f"{len(new)} new indexes ({', '.join(new)}): the query needs one. Every extra "
                "index costs every INSERT and UPDATE (see 'What indexes cost').",
            )
        name = new[0]
        if name in declared:
            return _fail(
                "declared on the model",
                f"{name} was declared on Car itself (Index(..., Car.model, ...) attaches it to "
                "Car.__table__, and every later build of the course's dataset would create it; "
                "the check detached it). Declare it on lesson.copy_of(Car).",
                index=name,
            )
        if now[name].table != "cars":
            return _fail(
                "index not used",
                f"{name} is on {now[name].table}; the query reads cars.",
                index=name,
            )
        if now[name].partial:
            return _fail(
                "partial index",
                f"{name} is partial (it has a WHERE): it serves only the rows its predicate "
                "selects, and the query's model is a parameter: the page of any other model "
                "could not use it. Index every car.",
                index=name,
            )
        _analyze(db, "cars")
        rows = check(lambda session: session.execute(stmt).all(), db, expected=reference, budget=1)
        if not rows.passed:
            return _fail("wrong result", f"With {name}, the query returned other rows.", index=name)
        found = _forced_plan(db, stmt) if forced_plan else facts(db, stmt)
        rejected = _judge_plan(db, name, found)
        if rejected is not None:
            return rejected
        gain = before_s = None
        if timed:  # with the index, then without it again: the copy as the check found it
            after_s = _time_query(db, stmt)
            _drop_new(db, saved)
            if set(_catalog(db)) != existing:
                return _fail("not dropped", f"{name} could not be dropped again.", index=name)
            before_s = _time_query(db, stmt)
            gain = before_s / after_s
            if gain < 2:
                return _fail(
                    "no speedup",
                    f"The plan looks right, but the query is only {gain:.1f}x faster "
                    f"({before_s * 1000:.2f} ms -> {after_s * 1000:.2f} ms; 2x is required).",
                    index=name,
                    reads=str(found),
                    speedup=gain,
                )
        timing = (
            f"{gain:.0f}x faster ({before_s * 1000:.2f} ms -> {before_s / gain * 1000:.3f} ms)"
            if gain is not None and before_s is not None
            else f"no timing below {TIMING_ROWS:,} cars"
        )
        plan_note = (
            f"the plan with sequential and bitmap scans off (below {PLAN_ROWS:,} cars "
            f"PostgreSQL rightly reads the table whole): {found}"
            if forced_plan
            else f"the plan: {found}"
        )
        return IndexCheckResult(
            "passed",
            f"✓ Passed: the same {len(reference)} rows, 1 new index ({name}); {plan_note}; "
            f"{timing}.",
            statements=1,
            budget=1,
            index=name,
            reads=str(found),
            speedup=gain,
        )
    finally:
        _drop_new(db, saved)


def _drop_new(db: Backend, saved: dict[str, _Saved]) -> None:
    """Drop every index not in ``saved`` (what the learner added; a constraint's index by
    dropping its constraint), make again what is missing, then re-ANALYZE."""
    now = _catalog(db)
    added = {name: now[name] for name in set(now) - set(saved)}
    missing = {name: saved[name] for name in set(saved) - set(now)}
    for name, info in added.items():
        with suppress(Exception), db.sync_engine.begin() as conn:
            conn.exec_driver_sql(info.drop or f"DROP INDEX IF EXISTS {_quote(db, name)}")
    for info in missing.values():
        if info.create:
            with db.sync_engine.begin() as conn:
                conn.exec_driver_sql(info.create)
    if added or missing:
        _analyze(db, "cars")


def rewrite_rows(db: Backend, where: Any) -> int:
    """Rewrite the cars ``where`` selects, values unchanged: each UPDATE writes a new row
    version all the same (and on PostgreSQL clears the page's all-visible bit)."""
    with db.sync_engine.begin() as conn:
        return conn.execute(update(Car).where(where).values(updated_at=Car.updated_at)).rowcount
