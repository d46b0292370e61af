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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement, Executable

from .backends import Backend


class Explain(Executable, ClauseElement):
    """``EXPLAIN <statement>`` as a SQL construct (compiled per dialect, parameters bound)."""

    inherit_cache = False

    def __init__(self, statement: Executable, *, analyze: bool = True, costs: bool = True):
        self.statement = statement
        self.analyze = analyze
        self.costs = costs


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
    prefix = f"EXPLAIN ({', '.join(options)}) " if options else "EXPLAIN "
    return prefix + _inner(element, compiler, **kw)


_PG_SCAN = re.compile(
    r"((?:Parallel )?(?:Seq Scan|Index Only Scan|Index Scan|Bitmap Heap Scan|Bitmap Index Scan)"
    r"(?: Backward)?(?: using \S+)? on \S+)"
)


@dataclass
class Plan:
    """A query plan as text lines, with helpers a lesson can assert on."""

    backend: str
    lines: list[str]
    analyzed: bool

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

    def uses_index(self, name: str | None = None) -> bool:
        """True when some scan goes through an index (``name``, if given).

        SQLite's ``SEARCH t USING INTEGER PRIMARY KEY`` counts: it is the rowid B-tree.
        """
        found = [s for s in self.scans() if "INDEX" in s.upper() or "PRIMARY KEY" in s]
        return any(name in s for s in found) if name else bool(found)


def _explain_on(conn: Connection, statement: Executable, analyze: bool, costs: bool) -> Plan:
    """Run the EXPLAIN on ``conn`` inside a transaction that is always rolled back."""
    dialect = conn.dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise ValueError(f"explain() supports sqlite and postgresql, not {dialect}")
    # a savepoint when the caller already has a transaction open (e.g. after SET LOCAL)
    begin = conn.begin_nested if conn.in_transaction() else conn.begin
    with begin() as trans:
        rows = conn.execute(Explain(statement, analyze=analyze, costs=costs)).all()
        trans.rollback()
    if dialect == "postgresql":
        return Plan(dialect, [row[0] for row in rows], analyze)
    depth: dict[int, int] = {0: -1}
    lines = []
    for node_id, parent, _unused, detail in rows:
        depth[node_id] = depth.get(parent, -1) + 1
        lines.append("  " * depth[node_id] + detail)
    return Plan(dialect, lines, False)


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
