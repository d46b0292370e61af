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
:func:`course_lib.plots.plan_tree_chart`. On SQLite they come from the plan rows.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine
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


def _inner(element: Explain, compiler: SQLCompiler, **kw: Any) -> str:
    """Compile the wrapped statement; its result columns are not ours (plan rows are text)."""
    sql = compiler.process(element.statement, **kw)
    # The plan is the result, not the inner statement: drop its result columns (their type
    # processors would parse plan text) and its DML flags (EXPLAIN itself returns rows).
    compiler._result_columns = []
    compiler.isinsert = compiler.isupdate = compiler.isdelete = False
    return sql


@compiles(Explain, "sqlite")
def _explain_sqlite(element: Explain, compiler: SQLCompiler, **kw: Any) -> str:
    return "EXPLAIN QUERY PLAN " + _inner(element, compiler, **kw)


@compiles(Explain, "postgresql")
def _explain_postgresql(element: Explain, compiler: SQLCompiler, **kw: Any) -> str:
    options = ["ANALYZE", "BUFFERS"] if element.analyze else []
    if not element.costs:
        options.append("COSTS OFF")
        if element.analyze:
            options += ["TIMING OFF", "SUMMARY OFF"]
    if element.json:
        options.append("FORMAT JSON")
    prefix = f"EXPLAIN ({', '.join(options)}) " if options else "EXPLAIN "
    return prefix + _inner(element, compiler, **kw)


_PG_SCAN = re.compile(
    r"((?:Parallel )?(?:Seq Scan|Index Only Scan|Index Scan|Bitmap Heap Scan|Bitmap Index Scan)"
    r"(?: Backward)?(?: using \S+)? on \S+)"
)
_SQLITE_SCAN = re.compile(
    r"^(?P<type>SCAN|SEARCH) (?P<relation>\S+)(?: AS \S+)?"
    r"(?: USING (?:(?P<covering>COVERING )?INDEX (?P<index>\S+)|(?P<pk>INTEGER PRIMARY KEY)))?"
)


@dataclass
class PlanNode:
    """One node of a plan, with the facts a lesson asserts on.

    ``estimated_rows`` is the planner's guess per loop; ``actual_rows`` what one loop really
    produced (PostgreSQL with ANALYZE; None otherwise). ``exclusive_ms`` is the node's own
    time: its total over all loops, less its children's.
    """

    node_type: str
    depth: int
    detail: str
    relation: str | None = None
    index: str | None = None
    covering: bool = False
    full: bool = False  #: reads a whole table or a whole index (no condition to seek on)
    estimated_rows: float | None = None
    actual_rows: float | None = None
    loops: int | None = None
    total_cost: float | None = None
    actual_total_ms: float | None = None
    exclusive_ms: float | None = None
    shared_hit: int | None = None
    shared_read: int | None = None
    children: list[PlanNode] = field(default_factory=list, repr=False)

    @property
    def misestimate(self) -> float | None:
        """How far the estimate was off: actual rows / estimated rows (None without ANALYZE)."""
        if self.actual_rows is None or self.estimated_rows is None:
            return None
        return max(self.actual_rows, 0.5) / max(self.estimated_rows, 0.5)


@dataclass
class Plan:
    """A query plan as text lines and as nodes, with helpers a lesson can assert on."""

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


def _pg_node_type(raw: dict[str, Any]) -> str:
    """The node's name as the text format prints it (HashAggregate, Update, Parallel ...)."""
    node_type = raw["Node Type"]
    node_type = _PG_STRATEGY.get((node_type, raw.get("Strategy")), node_type)
    if node_type == "ModifyTable":
        node_type = raw.get("Operation", node_type)
    if raw.get("Parallel Aware"):
        node_type = "Parallel " + node_type
    return node_type


def _pg_node(raw: dict[str, Any], depth: int, out: list[PlanNode]) -> PlanNode:
    """A PostgreSQL JSON plan node, and its children, appended to ``out`` top down."""
    node_type = _pg_node_type(raw)
    index = raw.get("Index Name")
    loops = raw.get("Actual Loops")
    total = raw.get("Actual Total Time")
    relation = raw.get("Relation Name")
    seekable = any(key in raw for key in ("Index Cond", "Recheck Cond"))
    full = node_type.endswith("Seq Scan") or (index is not None and not seekable)
    detail = node_type + (f" using {index}" if index else "")
    detail += f" on {relation}" if relation else ""
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
        actual_total_ms=None if total is None else total * (loops or 1),
        shared_hit=raw.get("Shared Hit Blocks"),
        shared_read=raw.get("Shared Read Blocks"),
    )
    out.append(node)
    node.children = [_pg_node(child, depth + 1, out) for child in raw.get("Plans", [])]
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
    return PlanNode(
        node_type=match["type"],
        depth=depth,
        detail=detail,
        relation=match["relation"],
        index=match["index"],
        covering=bool(match["covering"]),
        full=match["type"] == "SCAN",
    )


def _sqlite_tree(nodes: list[PlanNode], parents: list[int], ids: list[int]) -> dict[str, Any]:
    """SQLite's plan rows as a JSON-like tree (``Node Type``, ``Plans``), for drawing."""
    by_id: dict[int, dict[str, Any]] = {0: {"Node Type": "QUERY PLAN", "Plans": []}}
    for node, parent, node_id in zip(nodes, parents, ids, strict=True):
        entry = {"Node Type": node.detail, "Plans": []}
        by_id[node_id] = entry
        by_id.get(parent, by_id[0])["Plans"].append(entry)
    return by_id[0]


def _run(conn: Connection, construct: Explain) -> list[Any]:
    """One EXPLAIN in a savepoint, rolled back: an ANALYZEd DML leaves nothing for the next."""
    with conn.begin_nested() as savepoint:
        rows = conn.execute(construct).all()
        savepoint.rollback()
    return rows


def _explain_on(conn: Connection, statement: Executable, analyze: bool, costs: bool) -> Plan:
    """Run the EXPLAIN on ``conn`` inside a transaction that is always rolled back."""
    dialect = conn.dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise ValueError(f"explain() supports sqlite and postgresql, not {dialect}")
    # a savepoint when the caller already has a transaction open (e.g. after SET LOCAL)
    begin = conn.begin_nested if conn.in_transaction() else conn.begin
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
    if dialect == "postgresql":
        document = json.loads(raw) if isinstance(raw, str) else raw
        nodes: list[PlanNode] = []
        _pg_node(document[0]["Plan"], 0, nodes)
        return Plan(dialect, [row[0] for row in rows], analyze, nodes, document[0])
    depth: dict[int, int] = {0: -1}
    by_id: dict[int, PlanNode] = {}
    lines, nodes, parents, ids = [], [], [], []
    for node_id, parent, _unused, detail in rows:
        depth[node_id] = depth.get(parent, -1) + 1
        lines.append("  " * depth[node_id] + detail)
        node = by_id[node_id] = _sqlite_node(detail, depth[node_id])
        if parent in by_id:
            by_id[parent].children.append(node)
        nodes.append(node)
        parents.append(parent)
        ids.append(node_id)
    return Plan(dialect, lines, False, nodes, _sqlite_tree(nodes, parents, ids))


def analyze(db: Backend) -> None:
    """Run ``ANALYZE`` (outside a transaction): the planner's statistics, refreshed now."""
    with db.sync_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")


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
        return _explain_on(target, statement, analyze, costs)
    engine = target.sync_engine if isinstance(target, Backend) else target
    with engine.connect() as conn:
        return _explain_on(conn, statement, analyze, costs)


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
        return await conn.run_sync(_explain_on, statement, analyze, costs)
