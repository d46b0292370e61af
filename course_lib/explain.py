"""EXPLAIN any SQLAlchemy statement, with its bound parameters, on SQLite or PostgreSQL.

>>> from sqlalchemy import select
>>> from course_lib.backends import sqlite
>>> from course_lib.models import Car
>>> plan = explain(sqlite("course_tiny"), select(Car).where(Car.price < 5000))
>>> plan.full_scans()
['SCAN cars']

How it works, and why it is safe:

- the statement is wrapped in an :class:`Explain` construct that the dialect compiles,
  so parameters stay bound (no f-strings, no ``literal_binds``) and the driver's own
  parameter style is used;
- SQLite gets ``EXPLAIN QUERY PLAN``; PostgreSQL gets ``EXPLAIN (ANALYZE, BUFFERS)``;
- everything runs inside a transaction that is rolled back, because ``EXPLAIN ANALYZE``
  of an INSERT, UPDATE or DELETE really executes it.

A :class:`Plan` also holds its nodes (:class:`PlanNode`: node type, table, index, estimated
and actual rows, loops, time, buffers), so a lesson asserts on facts, not on text. On
PostgreSQL they come from a second ``EXPLAIN (..., FORMAT JSON)`` of the same statement (for an
ANALYZEd INSERT, UPDATE or DELETE the first runs in a savepoint that is rolled back, so both
runs see the same rows), which also gives :attr:`Plan.tree` (the JSON plan) for
:func:`course_lib.plots.plan_tree_chart`. With ANALYZE these are two executions: the text's
times and buffers are the first run's, the nodes' (and the tree's shares) the second's. On
SQLite the nodes come from the plan rows.

What the application really sent can be planned too: :func:`sent_statements` records each
statement the driver received, with its parameters (:class:`Sent`), and :func:`explain_sent`
/ :func:`aexplain_sent` prefix EXPLAIN to exactly that SQL, parameters still bound.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.expression import ClauseElement, Executable

from .backends import Backend


class Explain(Executable, ClauseElement):
    """``EXPLAIN <statement>`` as a SQL construct (compiled per dialect, parameters bound)."""

    inherit_cache = False

    def __init__(
        self,
        statement: Executable,
        *,
        analyze: bool = True,
        costs: bool = True,
        json: bool = False,
    ):
        self.statement = statement
        self.analyze = analyze
        self.costs = costs
        self.json = json


def compile_wrapped(element: Explain, compiler: SQLCompiler, **kw: Any) -> str:
    """Compile the wrapped statement; its result columns are not ours (plan rows are text)."""
    sql = compiler.process(element.statement, **kw)
    # The plan is the result, not the inner statement: drop its result columns (their type
    # processors would parse plan text) and its DML flags (EXPLAIN itself returns rows).
    compiler._result_columns = []
    compiler.isinsert = compiler.isupdate = compiler.isdelete = False
    return sql


def postgresql_prefix(analyze: bool, costs: bool = True, json: bool = False) -> str:
    """``EXPLAIN (ANALYZE, BUFFERS[, COSTS OFF ...][, FORMAT JSON]) `` for PostgreSQL."""
    options = ["ANALYZE", "BUFFERS"] if analyze else []
    if not costs:
        options.append("COSTS OFF")
        if analyze:
            options += ["TIMING OFF", "SUMMARY OFF"]
    if json:
        options.append("FORMAT JSON")
    return f"EXPLAIN ({', '.join(options)}) " if options else "EXPLAIN "


@compiles(Explain, "sqlite")
def explain_sqlite(element: Explain, compiler: SQLCompiler, **kw: Any) -> str:
    return "EXPLAIN QUERY PLAN " + compile_wrapped(element, compiler, **kw)


@compiles(Explain, "postgresql")
def explain_postgresql(element: Explain, compiler: SQLCompiler, **kw: Any) -> str:
    prefix = postgresql_prefix(element.analyze, element.costs, element.json)
    return prefix + compile_wrapped(element, compiler, **kw)


_PG_SCAN = re.compile(
    r"((?:Parallel )?(?:Seq Scan|Index Only Scan|Index Scan|Bitmap Heap Scan|Bitmap Index Scan)"
    r"(?: Backward)?(?: using \S+)? on \S+)"
)
_SQLITE_SCAN = re.compile(
    r"^(?P<type>SCAN|SEARCH) (?P<relation>\S+)(?: AS \S+)?"
    r"(?: USING (?:(?P<automatic>AUTOMATIC )?(?P<covering>(?:PARTIAL )?COVERING )?INDEX"
    r"(?: (?P<index>[^\s(]+))?|(?P<pk>INTEGER PRIMARY KEY)))?"
)
_SQLITE_CONDITION = re.compile(r"^\s*\((?P<cond>.*)\)")
#: SQLite builds an index for one statement when none serves a join: it has no name
AUTOMATIC_INDEX = "(automatic index)"


@dataclass
class PlanNode:
    """One node of a plan, with the facts a lesson asserts on.

    ``estimated_rows`` is the planner's guess per loop; ``actual_rows`` what one loop really
    produced, on average (PostgreSQL with ANALYZE; None otherwise), and :attr:`total_rows`
    that times ``loops``. In a parallel part of a plan (``parallel``: under a Gather or
    Gather Merge) each process's runs count as loops, so per-loop figures are per process.

    ``actual_total_ms`` is the node's time over all its loops, as wall time: for a
    ``parallel`` node its processes run at once, so it is the time of all loops divided by
    the number of processes. ``exclusive_ms`` is the node's own time: its
    ``actual_total_ms`` less its children's (so the nodes' shares add up to the root's).

    ``full`` is True for a read with nothing to seek on: a Seq Scan or SQLite's plain
    ``SCAN t`` (the whole table), or an index scan with no condition on the index (PostgreSQL:
    no ``Index Cond`` and no ``Recheck Cond``; SQLite: ``SCAN t USING [COVERING] INDEX i``),
    which reads the index in order from one end. Such a scan is whole unless a LIMIT stops
    it: ``under_limit`` (PostgreSQL only) says a Limit above takes the node's rows as they
    come (no Sort, Hash or whole-input aggregate in between), so the node stops after the
    rows the Limit needs (OFFSET included: ``total_rows`` says how far it went).

    ``index_cond`` is what the index is searched with (PostgreSQL's ``Index Cond`` or
    ``Recheck Cond``; SQLite's parenthesised ``(col>? AND col<?)``), ``filter`` the condition
    checked on each row read (PostgreSQL), ``removed_rows`` the rows that condition (and a
    lossy bitmap's recheck) threw away, over all loops.
    """

    node_type: str
    depth: int
    detail: str
    relation: str | None = None
    index: str | None = None
    covering: bool = False
    full: bool = False  #: nothing to seek on: a whole table, or an index read from one end
    estimated_rows: float | None = None
    actual_rows: float | None = None
    loops: int | None = None
    total_cost: float | None = None
    actual_total_ms: float | None = None
    exclusive_ms: float | None = None
    shared_hit: int | None = None
    shared_read: int | None = None
    parallel: bool = False  #: runs in parallel processes (under a Gather / Gather Merge)
    under_limit: bool = False  #: a Limit above takes its rows as they come (may stop early)
    index_cond: str | None = None
    filter: str | None = None
    removed_rows: float | None = None
    children: list[PlanNode] = field(default_factory=list, repr=False)

    @property
    def misestimate(self) -> float | None:
        """How far the estimate was off: actual rows / estimated rows (None without ANALYZE)."""
        if self.actual_rows is None or self.estimated_rows is None:
            return None
        return max(self.actual_rows, 0.5) / max(self.estimated_rows, 0.5)

    @property
    def total_rows(self) -> float | None:
        """The rows the node produced over all its loops: ``actual_rows`` × ``loops``.

        PostgreSQL reports the per-loop average rounded to a whole row, so this is exact
        when every loop produced the same number of rows and close otherwise.
        """
        if self.actual_rows is None:
            return None
        return self.actual_rows * (self.loops or 1)


@dataclass
class Plan:
    """A query plan as text lines and as nodes, with helpers a lesson can assert on.

    On PostgreSQL with ANALYZE, ``lines`` (the text) and ``nodes`` / ``tree`` (FORMAT JSON)
    come from two executions of the statement: their node types and row counts agree, their
    times and buffers are each their own run's.
    """

    backend: str
    lines: list[str]
    analyzed: bool
    nodes: list[PlanNode] = field(default_factory=list, repr=False)
    tree: dict[str, Any] | None = field(default=None, repr=False)  #: PostgreSQL's JSON plan

    @property
    def text(self) -> str:
        """The plan as the database printed it (indented tree)."""
        return "\n".join(self.lines)

    def __repr__(self) -> str:
        return self.text

    def scans(self) -> list[str]:
        """How each table is read: 'SCAN cars', 'SEARCH cars USING INDEX ..', 'Seq Scan on cars'."""
        if self.backend == "sqlite":
            return [
                line.strip() for line in self.lines if line.strip().startswith(("SCAN", "SEARCH"))
            ]
        return [m.group(1) for line in self.lines for m in [_PG_SCAN.search(line)] if m]

    def full_scans(self) -> list[str]:
        """The scans that read a whole table (SQLite SCAN without index, PostgreSQL Seq Scan)."""
        return [
            s
            for s in self.scans()
            if (s.startswith("SCAN") and " INDEX " not in s) or "Seq Scan" in s
        ]

    def full_index_scans(self) -> list[str]:
        """Index scans with nothing to seek on: they read the whole index, in index order.

        SQLite's ``SCAN t USING [COVERING] INDEX i``; PostgreSQL's Index (Only) Scan with
        no Index Cond. Cheaper than reading the table, but they still grow with it.
        """
        return [n.detail for n in self.nodes if n.full and n.index is not None]

    def uses_index(self, name: str | None = None) -> bool:
        """True when some scan goes through an index (``name``, if given).

        SQLite's ``SEARCH t USING INTEGER PRIMARY KEY`` counts: it is the rowid B-tree.
        """
        found = [s for s in self.scans() if "INDEX" in s.upper() or "PRIMARY KEY" in s]
        return any(name in s for s in found) if name else bool(found)

    def node_types(self) -> list[str]:
        """Node types, top down: ['Sort', 'Hash Join', 'Seq Scan', ...] or ['SCAN', 'SEARCH']."""
        return [n.node_type for n in self.nodes]

    def index_names(self) -> list[str]:
        """The indexes the plan reads, in plan order (no repeats)."""
        return list(dict.fromkeys(n.index for n in self.nodes if n.index))

    def find(self, node_type: str) -> list[PlanNode]:
        """The nodes of one type, e.g. ``plan.find("Index Only Scan")``."""
        return [n for n in self.nodes if n.node_type == node_type]

    def frame(self) -> pd.DataFrame:
        """One row per node: type, table, index, estimated and actual rows, loops, time."""
        columns = [
            "node_type",
            "relation",
            "index",
            "estimated_rows",
            "actual_rows",
            "loops",
            "total_rows",
            "misestimate",
            "exclusive_ms",
            "shared_hit",
            "shared_read",
        ]
        rows = []
        for n in self.nodes:
            row = {c: getattr(n, c) for c in columns}
            row["node_type"] = "  " * n.depth + n.node_type
            rows.append(row)
        frame = pd.DataFrame(rows, columns=columns)
        return frame.dropna(axis=1, how="all")


_PG_STRATEGY = {
    ("Aggregate", "Hashed"): "HashAggregate",
    ("Aggregate", "Sorted"): "GroupAggregate",
    ("Aggregate", "Mixed"): "MixedAggregate",
    ("SetOp", "Hashed"): "HashSetOp",
}

#: Nodes that read all their input before they return a row: a Limit above them cannot
#: stop what is below them early (a sorted, hashed or whole-input aggregate).
_PG_BLOCKING = {"Sort", "Hash", "SetOp", "WindowAgg", "Recursive Union"}
_PG_GATHER = {"Gather", "Gather Merge"}


def _pg_node_type(raw: dict[str, Any]) -> str:
    """The node's name as the text format prints it (HashAggregate, Update, Parallel ...)."""
    node_type = raw["Node Type"]
    node_type = _PG_STRATEGY.get((node_type, raw.get("Strategy")), node_type)
    if node_type == "ModifyTable":
        node_type = raw.get("Operation", node_type)
    if raw.get("Parallel Aware"):
        node_type = "Parallel " + node_type
    return node_type


def _pg_blocks(raw: dict[str, Any]) -> bool:
    """True when the node consumes its whole input before returning its first row."""
    kind = raw["Node Type"]
    return kind in _PG_BLOCKING or (kind == "Aggregate" and raw.get("Strategy") != "Sorted")


def _pg_node(
    raw: dict[str, Any],
    depth: int,
    out: list[PlanNode],
    *,
    processes: int | None = None,
    under_limit: bool = False,
) -> PlanNode:
    """A PostgreSQL JSON plan node, and its children, appended to ``out`` top down.

    ``processes`` is set inside a parallel part of the plan: how many processes ran it
    (the loops of the Gather's child: the workers launched, plus the leader when it takes
    part). There a node's rows and times are averages over the loops of all processes.
    """
    node_type = _pg_node_type(raw)
    index = raw.get("Index Name")
    loops = raw.get("Actual Loops")
    total = raw.get("Actual Total Time")
    relation = raw.get("Relation Name")
    index_cond = raw.get("Index Cond") or raw.get("Recheck Cond")
    full = node_type.endswith("Seq Scan") or (index is not None and index_cond is None)
    detail = node_type + (f" using {index}" if index else "")
    detail += f" on {relation}" if relation else ""
    removed = [raw.get(key) for key in ("Rows Removed by Filter", "Rows Removed by Index Recheck")]
    found = [r for r in removed if r is not None]
    wall_ms = None
    if total is not None:
        wall_ms = total * (loops or 1) / (processes or 1)  # processes run side by side
    node = PlanNode(
        node_type=node_type,
        depth=depth,
        detail=detail,
        relation=relation,
        index=index,
        covering=raw["Node Type"] == "Index Only Scan",
        full=full,
        estimated_rows=raw.get("Plan Rows"),
        actual_rows=raw.get("Actual Rows"),
        loops=loops,
        total_cost=raw.get("Total Cost"),
        actual_total_ms=wall_ms,
        shared_hit=raw.get("Shared Hit Blocks"),
        shared_read=raw.get("Shared Read Blocks"),
        parallel=processes is not None,
        under_limit=under_limit,
        index_cond=index_cond,
        filter=raw.get("Filter"),
        removed_rows=sum(found) * (loops or 1) if found else None,
    )
    out.append(node)
    below_limit = raw["Node Type"] == "Limit" or (under_limit and not _pg_blocks(raw))
    for child in raw.get("Plans", []):
        inside = processes
        if raw["Node Type"] in _PG_GATHER:
            inside = max(int(child.get("Actual Loops") or 1), 1)
        node.children.append(
            _pg_node(child, depth + 1, out, processes=inside, under_limit=below_limit)
        )
    if node.actual_total_ms is not None:
        below = sum(c.actual_total_ms or 0.0 for c in node.children)
        node.exclusive_ms = max(node.actual_total_ms - below, 0.0)
    return node


def _sqlite_node(detail: str, depth: int) -> PlanNode:
    """A SQLite EXPLAIN QUERY PLAN row as a node: SCAN/SEARCH, its table and its index."""
    match = _SQLITE_SCAN.match(detail)
    if match is None:
        node_type = re.sub(r"\s*\(.*\)$", "", detail).strip()
        return PlanNode(node_type=node_type, depth=depth, detail=detail)
    condition = _SQLITE_CONDITION.match(detail[match.end() :])
    return PlanNode(
        node_type=match["type"],
        depth=depth,
        detail=detail,
        relation=match["relation"],
        index=AUTOMATIC_INDEX if match["automatic"] else match["index"],
        covering=bool(match["covering"]),
        full=match["type"] == "SCAN",
        index_cond=condition["cond"] if condition and match["type"] == "SEARCH" else None,
    )


def _sqlite_tree(nodes: list[PlanNode], parents: list[int], ids: list[int]) -> dict[str, Any]:
    """SQLite's plan rows as a JSON-like tree (``Node Type``, ``Plans``), for drawing."""
    by_id: dict[int, dict[str, Any]] = {0: {"Node Type": "QUERY PLAN", "Plans": []}}
    for node, parent, node_id in zip(nodes, parents, ids, strict=True):
        entry = {"Node Type": node.detail, "Plans": []}
        by_id[node_id] = entry
        by_id.get(parent, by_id[0])["Plans"].append(entry)
    return by_id[0]


def plan_from_rows(
    dialect: str, rows: Sequence[Sequence[Any]], json_plan: Any = None, analyzed: bool = False
) -> Plan:
    """A :class:`Plan` from the rows an EXPLAIN returned.

    SQLite: the rows of ``EXPLAIN QUERY PLAN`` (id, parent, unused, detail). PostgreSQL: the
    rows of the text EXPLAIN (one line each) and ``json_plan``, the result of the same
    statement's ``EXPLAIN (..., FORMAT JSON)`` (a JSON string or the decoded list), which
    gives the nodes and the tree. ``analyzed``: whether the EXPLAIN ran with ANALYZE.
    """
    if dialect == "postgresql":
        document = json.loads(json_plan) if isinstance(json_plan, str) else json_plan
        nodes: list[PlanNode] = []
        _pg_node(document[0]["Plan"], 0, nodes)
        return Plan(dialect, [row[0] for row in rows], analyzed, nodes, document[0])
    if dialect != "sqlite":
        raise ValueError(f"plans are read for sqlite and postgresql, not {dialect}")
    depth: dict[int, int] = {0: -1}
    by_id: dict[int, PlanNode] = {}
    lines, sqlite_nodes, parents, ids = [], [], [], []
    for node_id, parent, _unused, detail in rows:
        depth[node_id] = depth.get(parent, -1) + 1
        lines.append("  " * depth[node_id] + detail)
        node = by_id[node_id] = _sqlite_node(detail, depth[node_id])
        if parent in by_id:
            by_id[parent].children.append(node)
        sqlite_nodes.append(node)
        parents.append(parent)
        ids.append(node_id)
    return Plan(dialect, lines, False, sqlite_nodes, _sqlite_tree(sqlite_nodes, parents, ids))


def _run(conn: Connection, construct: Explain) -> list[Any]:
    """One EXPLAIN in a savepoint, rolled back: an ANALYZEd DML leaves nothing for the next."""
    with conn.begin_nested() as savepoint:
        rows = conn.execute(construct).all()
        savepoint.rollback()
    return rows


def explain_on(conn: Connection, statement: Executable, analyze: bool, costs: bool) -> Plan:
    """Run the EXPLAIN on ``conn`` inside a transaction that is always rolled back."""
    dialect = conn.dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise ValueError(f"explain() supports sqlite and postgresql, not {dialect}")
    # a savepoint when the caller already has a transaction open (e.g. after SET LOCAL)
    begin = conn.begin_nested if conn.in_transaction() else conn.begin
    raw = None
    with begin() as trans:
        if dialect == "postgresql":  # twice: the text to read, the JSON for the nodes
            text_plan = Explain(statement, analyze=analyze, costs=costs)
            dml = analyze and isinstance(statement, UpdateBase)
            rows = _run(conn, text_plan) if dml else conn.execute(text_plan).all()
            json_plan = Explain(statement, analyze=analyze, costs=True, json=True)
            raw = conn.execute(json_plan).scalar_one()
        else:
            rows = conn.execute(Explain(statement, analyze=analyze, costs=costs)).all()
        trans.rollback()
    return plan_from_rows(dialect, rows, raw, analyze and dialect == "postgresql")


# older, private names of the pieces above (kept for code written against them)
_inner, _explain_on = compile_wrapped, explain_on
_explain_sqlite, _explain_postgresql = explain_sqlite, explain_postgresql


def analyze(db: Backend, table: str | None = None) -> None:
    """Run ``ANALYZE`` (outside a transaction): the planner's statistics, refreshed now.

    ``table``: only that table (its name quoted as an identifier by the dialect); every
    table when None.
    """
    with db.sync_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if table is None:
            conn.exec_driver_sql("ANALYZE")
        else:
            name = conn.dialect.identifier_preparer.quote(table)  # an identifier, not a value
            conn.exec_driver_sql(f"ANALYZE {name}")


def pause_autovacuum(db: Backend, table: str = "cars") -> bool:
    """On PostgreSQL, stop autovacuum from analyzing ``table`` (on a scratch copy only).

    Without it, autovacuum could refresh the estimate at any moment and the lesson's
    "stale until ANALYZE" would be a race. SQLite has no autovacuum of statistics: no-op.
    """
    if db.name != "postgresql":
        return False
    with db.sync_engine.begin() as conn:
        name = conn.dialect.identifier_preparer.quote(table)  # an identifier, not a value
        conn.exec_driver_sql(f"ALTER TABLE {name} SET (autovacuum_enabled = false)")
    return True


def explain(
    target: Backend | Engine | Connection,
    statement: Executable,
    *,
    analyze: bool = True,
    costs: bool = True,
) -> Plan:
    """The plan of ``statement`` (sync). PostgreSQL plans are ``EXPLAIN (ANALYZE, BUFFERS)``.

    ``costs=False`` drops costs and timings, for plans stable enough to compare.
    """
    if isinstance(target, Connection):
        return explain_on(target, statement, analyze, costs)
    engine = target.sync_engine if isinstance(target, Backend) else target
    with engine.connect() as conn:
        return explain_on(conn, statement, analyze, costs)


async def aexplain(
    target: Backend | AsyncEngine,
    statement: Executable,
    *,
    analyze: bool = True,
    costs: bool = True,
) -> Plan:
    """Like :func:`explain`, on the async engine (aiosqlite or asyncpg)."""
    engine = target.engine if isinstance(target, Backend) else target
    async with engine.connect() as conn:
        return await conn.run_sync(explain_on, statement, analyze, costs)


# ------------------------------------------------------------ what the driver received


@dataclass(frozen=True)
class Sent:
    """One statement as the driver received it.

    ``sql`` is the driver's own SQL (``?``, ``%(name)s`` or ``$1`` placeholders), ``params``
    its parameters (for an executemany, the list of parameter sets: ``many``),
    ``via_async`` whether the async engine sent it (asyncpg's ``$1`` needs the async engine
    to run again), ``returns_rows`` whether it returned rows (the cursor described a
    result: a SELECT, whatever its first word, or DML with RETURNING).
    """

    sql: str
    params: Any
    via_async: bool = False
    returns_rows: bool = True
    many: bool = False


@contextmanager
def sent_statements(db: Backend) -> Iterator[list[Sent]]:
    """Record every statement both engines of ``db`` send, with its parameters.

    >>> from sqlalchemy import select
    >>> from course_lib.backends import sqlite
    >>> from course_lib.models import Car
    >>> db = sqlite("course_tiny")
    >>> with sent_statements(db) as sent, db.Session() as session:
    ...     _ = session.scalars(select(Car.id).where(Car.price < 5000)).all()
    >>> sent[0].sql, sent[0].params
    ('SELECT cars.id \\nFROM cars \\nWHERE cars.price < ?', (5000,))

    :func:`course_lib.count_statements` counts statements; this keeps their parameters
    too, so :func:`explain_sent` can plan exactly what was sent.
    """
    seen: list[Sent] = []

    def listener(via_async: bool) -> Callable[..., None]:
        def after(_c: Any, cursor: Any, sql: str, params: Any, _ctx: Any, many: bool) -> None:
            if many:
                copied: Any = [dict(p) if isinstance(p, dict) else p for p in params]
            else:
                copied = dict(params) if isinstance(params, dict) else params
            rows = getattr(cursor, "description", None) is not None
            seen.append(Sent(sql, copied, via_async, rows, many))

        return after

    hooks = [(db.sync_engine, listener(False)), (db.engine.sync_engine, listener(True))]
    for engine, hook in hooks:
        event.listen(engine, "after_cursor_execute", hook)
    try:
        yield seen
    finally:
        for engine, hook in hooks:
            event.remove(engine, "after_cursor_execute", hook)


def _set_locally(conn: Connection, settings: dict[str, str]) -> None:
    """Planner settings for this transaction only (``set_config(name, value, true)``, bound)."""
    for name, value in settings.items():
        conn.execute(select(func.set_config(name, value, True)))


def _explain_sent_on(
    conn: Connection,
    sent: Sent,
    analyze: bool,
    costs: bool,
    settings: dict[str, str] | None,
) -> Plan:
    """EXPLAIN the SQL a driver received, with its parameters, in a rolled-back transaction."""
    dialect = conn.dialect.name
    params = sent.params[0] if sent.many else sent.params
    begin = conn.begin_nested if conn.in_transaction() else conn.begin
    raw = None
    with begin() as trans:
        if dialect == "postgresql":
            _set_locally(conn, settings or {})
            text_sql = postgresql_prefix(analyze, costs) + sent.sql
            if analyze:  # it really runs (an UPDATE, or a SELECT calling a function that writes)
                with conn.begin_nested() as savepoint:
                    rows = conn.exec_driver_sql(text_sql, params).all()
                    savepoint.rollback()
            else:
                rows = conn.exec_driver_sql(text_sql, params).all()
            json_sql = postgresql_prefix(analyze, True, json=True) + sent.sql
            raw = conn.exec_driver_sql(json_sql, params).scalar_one()
        elif dialect == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sent.sql, params).all()
        else:
            raise ValueError(f"explain_sent() supports sqlite and postgresql, not {dialect}")
        trans.rollback()
    return plan_from_rows(dialect, rows, raw, analyze and dialect == "postgresql")


def explain_sent(
    db: Backend,
    sent: Sent,
    *,
    analyze: bool = True,
    costs: bool = True,
    settings: dict[str, str] | None = None,
) -> Plan:
    """The plan of one recorded statement (:func:`sent_statements`), exactly as sent.

    EXPLAIN is prefixed to the driver's SQL and the parameters stay bound: nothing is
    rendered into it. Like :func:`explain`, it runs in a transaction that is rolled back
    (on PostgreSQL with ANALYZE the first of the two EXPLAINs in a savepoint of its own, as
    the statement may write). A statement sent through the async engine (asyncpg's ``$1``)
    is explained through the async engine; in a running event loop use
    :func:`aexplain_sent` for those. ``settings`` are PostgreSQL planner settings (e.g.
    ``{"enable_seqscan": "off"}``) for the EXPLAIN's transaction only; SQLite has none.
    For an executemany the first parameter set is explained.
    """
    if sent.via_async:
        return db.run(
            lambda: aexplain_sent(db, sent, analyze=analyze, costs=costs, settings=settings)
        )
    with db.sync_engine.connect() as conn:
        return _explain_sent_on(conn, sent, analyze, costs, settings)


async def aexplain_sent(
    db: Backend,
    sent: Sent,
    *,
    analyze: bool = True,
    costs: bool = True,
    settings: dict[str, str] | None = None,
) -> Plan:
    """Like :func:`explain_sent`, awaited (a statement of either engine)."""
    if not sent.via_async:
        with db.sync_engine.connect() as conn:
            return _explain_sent_on(conn, sent, analyze, costs, settings)
    async with db.engine.connect() as conn:
        return await conn.run_sync(_explain_sent_on, sent, analyze, costs, settings)
