"""Tests for course_lib.explain: plans on both databases, bound parameters, DML rolled back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import (
    Column,
    Index,
    Integer,
    MetaData,
    Table,
    delete,
    func,
    insert,
    select,
    text,
    update,
)

from course_lib.backends import Backend
from course_lib.data import reset_schema
from course_lib.explain import (
    AUTOMATIC_INDEX,
    Plan,
    PlanNode,
    Sent,
    _sqlite_node,
    aexplain,
    aexplain_sent,
    analyze,
    explain,
    explain_sent,
    pause_autovacuum,
    plan_from_rows,
    sent_statements,
)
from course_lib.measure import count_statements
from course_lib.models import Car, Post, Tag, User
from course_lib.plots import plan_tree_chart


@pytest.fixture(params=["pg_service", "pg_embedded"])
def pg_db(request: pytest.FixtureRequest) -> Backend:
    """Each PostgreSQL in turn."""
    return request.getfixturevalue(request.param)


def _price(db: Backend, car_id: int) -> int:
    with db.Session() as session:
        return session.scalar(select(Car.price).where(Car.id == car_id))


def _count(db: Backend, model: type) -> int:
    with db.Session() as session:
        return session.scalar(select(func.count()).select_from(model))


# ---------------------------------------------------------------------- real plans


def test_full_scan(any_db: Backend) -> None:
    """A filter on an unindexed column scans the whole table."""
    plan = explain(any_db, select(Car).where(Car.price < 5000))
    expected = "SCAN cars" if any_db.name == "sqlite" else "Seq Scan on cars"
    assert plan.full_scans() == [expected]
    assert plan.scans() == [expected]
    assert plan.uses_index() is False
    assert plan.backend == any_db.name
    assert plan.analyzed is (any_db.name == "postgresql")


def test_primary_key_lookup_on_sqlite(sqlite_db: Backend) -> None:
    """On SQLite a primary-key lookup searches the rowid B-tree."""
    plan = explain(sqlite_db, select(Car).where(Car.id == 3))
    assert plan.lines == ["SEARCH cars USING INTEGER PRIMARY KEY (rowid=?)"]
    assert plan.full_scans() == []


def test_primary_key_lookup_on_postgresql(pg_db: Backend) -> None:
    """On PostgreSQL a primary-key lookup can use cars_pkey.

    60 cars fit in one page, so the planner rightly prefers a Seq Scan here; the test
    turns sequential scans off to see the index path (explain() accepts a Connection).
    """
    with pg_db.sync_engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")
        conn.commit()  # explain() begins its own transaction, so none may be open
        try:
            plan = explain(conn, select(Car).where(Car.id == 3))
        finally:
            conn.exec_driver_sql("RESET enable_seqscan")
            conn.commit()
    assert plan.uses_index("cars_pkey") is True
    assert plan.uses_index() is True
    assert plan.full_scans() == []
    assert any(s.endswith("using cars_pkey on cars") for s in plan.scans())


def test_parameters_stay_bound(any_db: Backend) -> None:
    """The EXPLAIN sent to the driver carries a placeholder, not the literal value."""
    with count_statements(any_db) as log:
        explain(any_db, select(Car).where(Car.price < 4999))
    if any_db.name == "sqlite":
        (sql,) = log.sql
        assert sql.startswith("EXPLAIN QUERY PLAN SELECT")
        assert "cars.price < ?" in sql
        assert "4999" not in sql
    else:  # the text plan to read, then the JSON plan for the nodes
        text_sql, json_sql = log.sql
        assert text_sql.startswith("EXPLAIN (ANALYZE, BUFFERS) SELECT")
        assert json_sql.startswith("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT")
        for sql in log.sql:
            assert "cars.price < %(price_1)s" in sql and "4999" not in sql


def test_costs_off_on_postgresql(pg_db: Backend) -> None:
    """costs=False drops costs and timings; analyze=False plans without running."""
    stable = explain(pg_db, select(Car).where(Car.price < 5000), costs=False)
    assert "cost=" not in stable.text
    assert "time=" not in stable.text
    assert stable.lines[0].startswith("Seq Scan on cars")
    estimated = explain(pg_db, select(Car).where(Car.price < 5000), analyze=False)
    assert estimated.analyzed is False
    assert "cost=" in estimated.text
    assert "actual" not in estimated.text


def test_analyze_of_update_is_rolled_back(pg_db: Backend) -> None:
    """EXPLAIN ANALYZE really runs the UPDATE, but explain() rolls it back."""
    before = _price(pg_db, 1)
    assert before != 1
    plan = explain(pg_db, update(Car).where(Car.id == 1).values(price=1))
    assert plan.lines[0].startswith("Update on cars")
    assert _price(pg_db, 1) == before


def test_analyze_of_delete_and_insert_is_rolled_back(pg_db: Backend) -> None:
    """A DELETE and an INSERT explained with ANALYZE leave the tables as they were."""
    cars, tags = _count(pg_db, Car), _count(pg_db, Tag)
    plan = explain(pg_db, delete(Car).where(Car.id == 1))
    assert plan.lines[0].startswith("Delete on cars")
    plan = explain(pg_db, insert(Tag).values(name="explained"))
    assert plan.lines[0].startswith("Insert on tags")
    assert (_count(pg_db, Car), _count(pg_db, Tag)) == (cars, tags)
    assert _price(pg_db, 1) is not None


def test_explain_of_dml_on_sqlite(sqlite_db: Backend) -> None:
    """SQLite explains DML without running it."""
    before = _price(sqlite_db, 1)
    plan = explain(sqlite_db, update(Car).where(Car.id == 1).values(price=1))
    assert plan.scans() == ["SEARCH cars USING INTEGER PRIMARY KEY (rowid=?)"]
    assert _price(sqlite_db, 1) == before


def test_explain_on_an_engine_and_a_join(sqlite_db: Backend) -> None:
    """An Engine is accepted, and nested plan rows are indented under their parent."""
    plan = explain(sqlite_db.sync_engine, select(Car).where(Car.id.in_(select(Car.id).limit(3))))
    assert plan.backend == "sqlite"
    assert plan.lines == ["SCAN cars", "LIST SUBQUERY 1", "  SCAN cars"]
    assert plan.scans() == ["SCAN cars", "SCAN cars"]


@pytest.fixture
def async_db(any_db: Backend) -> Iterator[Backend]:
    """A fresh copy of the backend, so async pools never outlive an event loop."""
    yield any_db.fresh()


def test_aexplain(async_db: Backend) -> None:
    """aexplain gives the same plan on the async engine."""

    async def plan_it() -> Plan:
        try:
            return await aexplain(async_db, select(Car).where(Car.price < 5000))
        finally:
            await async_db.dispose()

    plan = asyncio.run(plan_it())
    expected = "SCAN cars" if async_db.name == "sqlite" else "Seq Scan on cars"
    assert plan.full_scans() == [expected]


def test_aexplain_of_update_is_rolled_back(async_db: Backend) -> None:
    """The async path rolls back EXPLAIN ANALYZE of DML too."""
    before = _price(async_db, 2)

    async def plan_it() -> Plan:
        try:
            return await aexplain(
                async_db.engine, update(Car).where(Car.id == 2).values(price=before + 100)
            )
        finally:
            await async_db.dispose()

    asyncio.run(plan_it())
    assert _price(async_db, 2) == before


# ---------------------------------------------------------------------- handmade plans


def test_sqlite_plan_helpers() -> None:
    """SCAN without an index is a full scan; SEARCH and covering-index scans are not."""
    plan = Plan(
        "sqlite",
        [
            "SCAN cars",
            "  SEARCH dealerships USING INTEGER PRIMARY KEY (rowid=?)",
            "SCAN posts USING COVERING INDEX ix_posts_author_id",
            "USE TEMP B-TREE FOR ORDER BY",
        ],
        False,
    )
    assert plan.scans() == [
        "SCAN cars",
        "SEARCH dealerships USING INTEGER PRIMARY KEY (rowid=?)",
        "SCAN posts USING COVERING INDEX ix_posts_author_id",
    ]
    assert plan.full_scans() == ["SCAN cars"]
    assert plan.uses_index() is True
    assert plan.uses_index("ix_posts_author_id") is True
    assert plan.uses_index("ix_missing") is False
    assert plan.text.splitlines()[1] == "  SEARCH dealerships USING INTEGER PRIMARY KEY (rowid=?)"
    assert repr(plan) == plan.text


def test_postgresql_plan_helpers() -> None:
    """Scan kinds are read from PostgreSQL plan lines, with their index and table."""
    plan = Plan(
        "postgresql",
        [
            "Nested Loop  (cost=0.15..10.00 rows=1 width=8)",
            "  ->  Seq Scan on dealerships  (cost=0.00..1.03 rows=3 width=4)",
            "  ->  Index Scan using cars_pkey on cars  (cost=0.15..8.17 rows=1 width=72)",
            "  ->  Bitmap Heap Scan on posts  (cost=4.2..9.9 rows=3 width=8)",
            "        ->  Bitmap Index Scan on ix_posts_author_id  (cost=0.00..4.2 rows=3)",
            "  ->  Parallel Seq Scan on comments  (cost=0.00..99.00 rows=10 width=8)",
        ],
        True,
    )
    assert plan.scans() == [
        "Seq Scan on dealerships",
        "Index Scan using cars_pkey on cars",
        "Bitmap Heap Scan on posts",
        "Bitmap Index Scan on ix_posts_author_id",
        "Parallel Seq Scan on comments",
    ]
    assert plan.full_scans() == ["Seq Scan on dealerships", "Parallel Seq Scan on comments"]
    assert plan.uses_index("cars_pkey") is True
    assert plan.uses_index("ix_posts_author_id") is True
    assert plan.uses_index("users_pkey") is False


def test_plan_without_index() -> None:
    """A plan with only a sequential scan uses no index."""
    plan = Plan("postgresql", ["Seq Scan on cars  (cost=0.00..1.75 rows=60 width=45)"], False)
    assert plan.uses_index() is False
    assert plan.full_scans() == ["Seq Scan on cars"]


# ---------------------------------------------------------------------- plan nodes


def test_nodes_of_a_join_on_postgresql(pg_db: Backend) -> None:
    """Nodes carry the text format's names, tables, estimated and actual rows, and times."""
    stmt = (
        select(User.name, func.count(Post.id))
        .join(Post)
        .where(User.id < 6)
        .group_by(User.name)
        .order_by(User.name)
    )
    with pg_db.sync_engine.connect() as conn:
        conn.exec_driver_sql("SET enable_hashagg = on")
        conn.commit()
        plan = explain(conn, stmt)
    types = plan.node_types()
    assert types[0] == "Sort"
    assert any(t in ("HashAggregate", "GroupAggregate") for t in types)
    assert {n.relation for n in plan.nodes if n.relation} == {"users", "posts"}
    scans = [n for n in plan.nodes if n.relation]
    assert all(n.estimated_rows is not None and n.actual_rows is not None for n in scans)
    assert all(n.exclusive_ms is not None and n.exclusive_ms >= 0 for n in plan.nodes)
    assert plan.nodes[0].actual_rows == 5  # five users, one row each
    assert plan.tree is not None and plan.tree["Plan"]["Node Type"] == "Sort"
    assert len(plan.nodes[0].children) == 1
    frame = plan.frame()
    assert list(frame["node_type"].str.strip()) == types
    assert {"estimated_rows", "actual_rows", "loops", "misestimate"} <= set(frame.columns)


def test_index_names_and_full_index_scans_on_postgresql(pg_db: Backend) -> None:
    """An index scan with a condition seeks; one without reads the whole index."""
    with pg_db.sync_engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")
        conn.commit()
        try:
            seek = explain(conn, select(Car.id).where(Car.id == 3))
            walk = explain(conn, select(Car.id).order_by(Car.id))
        finally:
            conn.exec_driver_sql("RESET enable_seqscan")
            conn.commit()
    assert seek.index_names() == ["cars_pkey"] and seek.full_index_scans() == []
    assert walk.index_names() == ["cars_pkey"]
    assert walk.full_index_scans() == ["Index Only Scan using cars_pkey on cars"]
    assert walk.find("Index Only Scan")[0].covering is True


def test_dml_nodes_on_postgresql(pg_db: Backend) -> None:
    """An UPDATE's top node is named as in the text plan; both runs are rolled back."""
    before = _price(pg_db, 1)
    plan = explain(pg_db, update(Car).where(Car.id == 1).values(price=before + 1))
    assert plan.node_types()[0] == "Update"
    assert plan.nodes[0].relation == "cars"
    assert _price(pg_db, 1) == before


def test_sqlite_nodes(sqlite_db: Backend) -> None:
    """SQLite rows become SCAN/SEARCH nodes with their table and index, nested by parent."""
    plan = explain(sqlite_db, select(Car).where(Car.id.in_(select(Car.id).limit(3))))
    assert plan.node_types() == ["SCAN", "LIST SUBQUERY 1", "SCAN"]
    assert [n.depth for n in plan.nodes] == [0, 0, 1]
    assert plan.nodes[1].children == [plan.nodes[2]]
    assert plan.nodes[0].full and plan.nodes[0].relation == "cars"
    assert plan.index_names() == [] and plan.full_index_scans() == []
    assert plan.tree is not None and len(plan.tree["Plans"]) == 2


def test_sqlite_covering_and_search_nodes(
    sqlite_db: Backend, fresh_database: Callable[[Backend, str], Backend]
) -> None:
    """A composite index: SEARCH with it, or SCAN it whole (covering) for an ORDER BY."""
    db = reset_schema(fresh_database(sqlite_db, "explain_nodes"))
    # on a private Table over cars: an Index on Car's columns would join the course's models
    shadow = Table("cars", MetaData(), *(Column(c.name, c.type) for c in Car.__table__.c))
    index = Index("ix_cars_make_year", shadow.c.make, shadow.c.year)
    index.create(db.sync_engine)
    seek = explain(db, select(Car.year).where(Car.make == "Ford", Car.year > 2000))
    walk = explain(db, select(Car.make, Car.year).order_by(Car.make, Car.year))
    assert seek.node_types() == ["SEARCH"] and seek.index_names() == ["ix_cars_make_year"]
    assert seek.nodes[0].covering and not seek.nodes[0].full
    assert walk.full_index_scans() == ["SCAN cars USING COVERING INDEX ix_cars_make_year"]
    assert walk.full_scans() == []
    assert not Car.__table__.indexes  # the models are untouched


def test_misestimate() -> None:
    """actual / estimated rows, with zero rows counted as half a row on either side."""
    node = PlanNode("Seq Scan", 0, "Seq Scan on cars", estimated_rows=10, actual_rows=1000)
    assert node.misestimate == 100
    assert PlanNode("Seq Scan", 0, "x", estimated_rows=1, actual_rows=0).misestimate == 0.5
    assert PlanNode("SCAN", 0, "SCAN cars").misestimate is None


def test_plan_tree_chart_draws_a_box_per_node(any_db: Backend) -> None:
    """One labelled box per node; PostgreSQL boxes show rows and their share of the time."""
    plan = explain(any_db, select(Car).where(Car.id.in_(select(Car.id).limit(3))))
    fig = plan_tree_chart(plan, "demo")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == len(plan.nodes)
    assert fig.axes[0].get_title().startswith("demo · " + any_db.name)
    if any_db.name == "postgresql":
        assert all("est " in t and "actual " in t and "% of the time" in t for t in texts)


def test_pause_autovacuum_and_analyze(
    any_db: Backend, fresh_database: Callable[[Backend, str], Backend]
) -> None:
    """autovacuum is switched off for one table on PostgreSQL only; ANALYZE fills the stats."""
    db = reset_schema(fresh_database(any_db, "explain_stats"))
    assert pause_autovacuum(db, "posts") is (db.name == "postgresql")
    analyze(db)
    if db.name == "postgresql":
        with db.Session() as session:
            options = session.scalar(
                text("SELECT reloptions FROM pg_class WHERE relname = 'posts'")
            )
        assert options == ["autovacuum_enabled=false"]


def test_sqlite_automatic_index_is_an_index_node() -> None:
    """SQLite's per-statement automatic index has no name: it is reported as one, seeking."""
    node = _sqlite_node("SEARCH posts USING AUTOMATIC COVERING INDEX (author_id=?)", 1)
    assert (node.node_type, node.relation, node.index) == ("SEARCH", "posts", AUTOMATIC_INDEX)
    assert node.covering and not node.full
    named = _sqlite_node("SEARCH cars USING INDEX ix_cars_make_year (make=? AND year>?)", 0)
    assert named.index == "ix_cars_make_year" and not named.covering


def test_sqlite_nodes_carry_the_search_condition() -> None:
    """SQLite's parenthesised search condition is the node's index_cond (SEARCH only)."""
    seek = _sqlite_node(
        "SEARCH cars USING INDEX ix_cars_created_at (created_at>? AND created_at<?)", 0
    )
    assert seek.index_cond == "created_at>? AND created_at<?"
    expression = _sqlite_node("SEARCH cars USING INDEX ix_day (<expr>=?)", 0)
    assert expression.index_cond == "<expr>=?"
    joined = _sqlite_node(
        "SEARCH posts_1 USING AUTOMATIC COVERING INDEX (author_id=?) LEFT-JOIN", 1
    )
    assert joined.index_cond == "author_id=?"
    assert (
        _sqlite_node("SEARCH cars USING INTEGER PRIMARY KEY (rowid=?)", 0).index_cond == "rowid=?"
    )
    assert _sqlite_node("SCAN cars USING COVERING INDEX ix_cars_price", 0).index_cond is None


# ---------------------------------------------------------------------- parallel plans


def _json(
    node_type: str, ms: float, loops: int, rows: float, *plans: dict, **extra: object
) -> dict:
    return {
        "Node Type": node_type,
        "Plan Rows": rows,
        "Actual Rows": rows,
        "Actual Total Time": ms,
        "Actual Loops": loops,
        "Plans": list(plans),
        **extra,
    }


def test_parallel_nodes_report_wall_time_not_time_times_loops() -> None:
    """Under a Gather each process's run is a loop: times are per process, side by side."""
    scan = _json("Seq Scan", 5.0, 3, 100, **{"Parallel Aware": True, "Relation Name": "cars"})
    partial = _json("Aggregate", 6.0, 3, 1, scan, Strategy="Plain", **{"Partial Mode": "Partial"})
    gather = _json("Gather", 9.9, 1, 3, partial, **{"Workers Launched": 2})
    top = _json("Aggregate", 10.0, 1, 1, gather, Strategy="Plain")
    plan = plan_from_rows("postgresql", [("Finalize Aggregate",)], [{"Plan": top}], True)
    assert plan.node_types() == ["Aggregate", "Gather", "Aggregate", "Parallel Seq Scan"]
    assert [n.parallel for n in plan.nodes] == [False, False, True, True]
    assert [n.actual_total_ms for n in plan.nodes] == pytest.approx([10.0, 9.9, 6.0, 5.0])
    assert [n.exclusive_ms for n in plan.nodes] == pytest.approx([0.1, 3.9, 1.0, 5.0])
    assert sum(n.exclusive_ms for n in plan.nodes) == pytest.approx(plan.nodes[0].actual_total_ms)
    assert plan.nodes[-1].total_rows == 300  # 100 per process, three processes
    fig = plan_tree_chart(plan, "parallel")
    shares = [t.get_text().splitlines()[-1] for t in fig.axes[0].texts]
    assert shares == ["1% of the time", "39% of the time", "10% of the time", "50% of the time"]


def test_loops_outside_a_parallel_plan_still_multiply() -> None:
    """A Nested Loop's inner side: time and rows per loop, times the loops."""
    inner = _json(
        "Index Scan", 0.01, 20, 1, **{"Index Name": "posts_pkey", "Index Cond": "(id = x)"}
    )
    outer = _json("Seq Scan", 0.1, 1, 20, **{"Relation Name": "comments"})
    top = _json("Nested Loop", 0.5, 1, 20, outer, inner)
    plan = plan_from_rows("postgresql", [("Nested Loop",)], [{"Plan": top}], True)
    join, scan, seek = plan.nodes
    assert seek.actual_total_ms == pytest.approx(0.2) and seek.total_rows == 20
    assert join.exclusive_ms == pytest.approx(0.2)
    assert not any(n.parallel or n.under_limit for n in plan.nodes)
    assert seek.index_cond == "(id = x)" and not seek.full and scan.full


def test_parallel_plan_on_postgresql(pg_db: Backend) -> None:
    """A real parallel plan (made cheap on a tiny table): wall times, rows x loops."""
    settings = {
        "max_parallel_workers_per_gather": "2",
        "parallel_setup_cost": "0",
        "parallel_tuple_cost": "0",
        "min_parallel_table_scan_size": "0",
    }
    stmt = select(func.count(), func.sum(Car.price)).where(Car.price > 0)
    with pg_db.sync_engine.connect() as conn:
        conn.begin()
        for name, value in settings.items():
            conn.execute(select(func.set_config(name, value, True)))
        plan = explain(conn, stmt)
        conn.rollback()
    (gather,) = plan.find("Gather")
    (scan,) = plan.find("Parallel Seq Scan")
    processes = gather.children[0].loops
    assert scan.parallel and not gather.parallel and scan.loops == processes
    assert scan.total_rows == _count(pg_db, Car)
    raw = plan.tree["Plan"]
    while raw["Node Type"] != "Seq Scan":
        raw = raw["Plans"][0]
    assert scan.actual_total_ms == pytest.approx(raw["Actual Total Time"])  # not x loops
    root = plan.nodes[0].actual_total_ms
    assert all(n.actual_total_ms <= root * 1.001 for n in plan.nodes)


# ------------------------------------------------------------------- LIMIT and order


def test_an_index_walked_under_a_limit_stops_early(pg_db: Backend) -> None:
    """An index scan with no condition is 'full' (full_index_scans keeps its meaning); under
    a Limit that takes its rows as they come it stops: under_limit, and total_rows says where."""
    with pg_db.sync_engine.connect() as conn:
        conn.begin()
        conn.execute(select(func.set_config("enable_seqscan", "off", True)))
        walk = explain(conn, select(Car.id).order_by(Car.id).limit(5))
        conn.rollback()
    (scan,) = walk.find("Index Only Scan")
    assert scan.full and scan.under_limit and scan.total_rows == 5
    assert walk.full_index_scans() == ["Index Only Scan using cars_pkey on cars"]
    sorted_first = explain(pg_db, select(Car.id, Car.year).order_by(Car.year).limit(5))
    assert sorted_first.node_types() == ["Limit", "Sort", "Seq Scan"]
    assert [n.under_limit for n in sorted_first.nodes] == [False, True, False]  # Sort reads all
    assert sorted_first.nodes[-1].total_rows == _count(pg_db, Car)


def test_filter_and_removed_rows_on_postgresql(pg_db: Backend) -> None:
    """A Filter's condition and the rows it threw away, over all loops."""
    plan = explain(pg_db, select(Car.id).where(Car.price < 5000))
    (scan,) = plan.nodes
    kept = _count_where(pg_db, Car.price < 5000)
    assert scan.filter is not None and "price" in scan.filter
    assert scan.total_rows == kept and scan.removed_rows == _count(pg_db, Car) - kept


def _count_where(db: Backend, condition: object) -> int:
    with db.Session() as session:
        return session.scalar(select(func.count()).select_from(Car).where(condition))


# ------------------------------------------------------------------- plans from rows


def test_plan_from_rows_is_what_explain_reads(any_db: Backend) -> None:
    """The parser explain() uses, on EXPLAIN rows a caller ran itself."""
    stmt = select(Car.id).where(Car.id.in_(select(Car.id).where(Car.price < 9000)))
    expected = explain(any_db, stmt, analyze=False)
    with any_db.sync_engine.connect() as conn:
        if any_db.name == "sqlite":
            compiled = stmt.compile(conn)
            rows = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + str(compiled), tuple(compiled.params.values())
            ).all()
            plan = plan_from_rows("sqlite", rows)
        else:
            compiled = stmt.compile(conn)
            sql, params = str(compiled), compiled.params
            rows = conn.exec_driver_sql("EXPLAIN " + sql, params).all()
            raw = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql, params).scalar_one()
            plan = plan_from_rows("postgresql", rows, raw)
            assert plan.tree is not None
    assert plan.lines == expected.lines
    assert plan.node_types() == expected.node_types() and not plan.analyzed
    with pytest.raises(ValueError, match="not mysql"):
        plan_from_rows("mysql", [])


# ---------------------------------------------------------------- statements as sent


def test_sent_statements_keep_sql_and_parameters(any_db: Backend) -> None:
    """What the driver received: its own placeholders, the values apart, rows or not."""
    stmt = select(Car.id).where(Car.price < 4_999)
    with sent_statements(any_db) as sent, any_db.Session() as session:
        session.execute(stmt).all()
        session.execute(text("/* mine */ SELECT id FROM cars WHERE price < :p"), {"p": 4_999})
        picked = "WITH picked AS (SELECT id FROM cars WHERE id = :i) SELECT id FROM picked"
        session.execute(text(picked), {"i": 3}).all()
        session.execute(update(Car).where(Car.id == 1).values(price=Car.price + 1))
        session.rollback()
    assert [s.returns_rows for s in sent] == [True, True, True, False]
    assert not any(s.via_async or s.many for s in sent)
    first = sent[0]
    assert "4999" not in first.sql
    values = first.params.values() if isinstance(first.params, dict) else first.params
    assert 4_999 in values
    plan = explain_sent(any_db, first)
    assert plan.node_types() == explain(any_db, stmt).node_types()
    assert plan.analyzed is (any_db.name == "postgresql")
    commented = explain_sent(any_db, sent[1], analyze=False)
    assert commented.full_scans() and not commented.analyzed


def test_explain_sent_of_dml_leaves_the_rows(any_db: Backend) -> None:
    """An UPDATE as sent, explained (ANALYZEd on PostgreSQL): rolled back, like explain()."""
    before = _price(any_db, 1)
    with sent_statements(any_db) as sent, any_db.Session() as session:
        session.execute(update(Car).where(Car.id == 1).values(price=Car.price + 1))
        session.rollback()
    (one,) = sent
    plan = explain_sent(any_db, one)
    if any_db.name == "postgresql":
        assert plan.node_types()[0] == "Update" and plan.analyzed
    else:
        assert plan.scans() == ["SEARCH cars USING INTEGER PRIMARY KEY (rowid=?)"]
    assert _price(any_db, 1) == before


def test_explain_sent_settings_hold_for_its_transaction_only(pg_db: Backend) -> None:
    with sent_statements(pg_db) as sent, pg_db.Session() as session:
        session.execute(select(Car.id, Car.make).where(Car.id == 3)).all()
    forced = explain_sent(pg_db, sent[0], settings={"enable_seqscan": "off"})
    assert forced.index_names() == ["cars_pkey"]
    with pg_db.sync_engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW enable_seqscan").scalar() == "on"


def test_aexplain_sent_of_an_async_statement(async_db: Backend) -> None:
    """asyncpg's $1 statement is explained through the async engine, with its values."""
    stmt = select(Car.id).where(Car.id == 3)

    async def plan_it() -> tuple[Sent, Plan]:
        with sent_statements(async_db) as sent:
            async with async_db.AsyncSession() as session:
                (await session.execute(stmt)).all()
        (one,) = sent
        return one, await aexplain_sent(async_db, one)

    one, plan = async_db.run(plan_it)
    assert one.via_async and one.returns_rows
    assert plan.node_types() == explain(async_db, stmt).node_types()
    assert explain_sent(async_db, one).node_types() == plan.node_types()  # sync entry too
    async_db.sync_engine.dispose()


def test_executemany_is_recorded_and_its_first_set_explained(
    any_db: Backend, fresh_database: Callable[[Backend, str], Backend]
) -> None:
    db = reset_schema(fresh_database(any_db, "explain_many"))
    with sent_statements(db) as sent, db.sync_engine.connect() as conn:
        conn.execute(insert(Tag), [{"name": "a"}, {"name": "b"}])
        conn.rollback()
    many = [s for s in sent if s.many]
    if many:  # psycopg may send insertmanyvalues batches (one execute) instead
        assert len(many[0].params) == 2
        plan = explain_sent(db, many[0])  # SQLite plans an INSERT ... VALUES as no rows
        assert plan.node_types()[:1] == (["Insert"] if db.name == "postgresql" else [])
    assert _count(db, Tag) == 0


# ------------------------------------------------------------------- ANALYZE one table


def test_analyze_one_table_only(
    any_db: Backend, fresh_database: Callable[[Backend, str], Backend]
) -> None:
    """analyze(db, table) gathers statistics for that table alone (its name quoted)."""
    db = reset_schema(fresh_database(any_db, "explain_one"))
    odd = Table("odd name", MetaData(), Column("id", Integer, primary_key=True))
    Index("ix_odd", odd.c.id)
    odd.create(db.sync_engine)
    with db.sync_engine.begin() as conn:
        conn.execute(insert(Tag), [{"name": f"t{i}"} for i in range(5)])
        conn.execute(insert(odd), [{"id": i} for i in range(5)])
    analyze(db, "odd name")
    assert _analyzed_tables(db) == ["odd name"]
    analyze(db, "tags")
    assert _analyzed_tables(db) == ["odd name", "tags"]


def _analyzed_tables(db: Backend) -> list[str]:
    with db.sync_engine.connect() as conn:
        if db.name == "sqlite":
            sql = "SELECT DISTINCT tbl FROM sqlite_stat1 ORDER BY tbl"
        else:
            sql = "SELECT DISTINCT tablename FROM pg_stats WHERE schemaname = 'public' ORDER BY 1"
        return list(conn.exec_driver_sql(sql).scalars())


def test_module_doctests(sqlite_db: Backend) -> None:
    """The examples in course_lib.explain's docstrings run (on the tiny SQLite dataset)."""
    import doctest
    import importlib

    module = importlib.import_module("course_lib.explain")  # cl.explain is the function
    assert doctest.testmod(module).failed == 0
