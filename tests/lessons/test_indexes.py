"""Tests for course_lib.lessons.indexes: DDL, plan facts, costs, the scratch copy, the check.

Most tests work on the cars of the ``small`` scale's first dealership (2,000 cars: enough
for PostgreSQL's planner to use an index, so plan facts are asserted on every backend), in
a database beside the fixture's whose name is unique to this run (``fresh_database``).
The speedup the check requires is tested on the first five dealerships (10,000 cars).
"""

from __future__ import annotations

import doctest
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import cache
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import (
    Connection,
    Index,
    MetaData,
    delete,
    false,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError, InternalError

from course_lib.backends import Backend
from course_lib.course import Course
from course_lib.data import generate, reset_schema
from course_lib.explain import pause_autovacuum
from course_lib.lessons import indexes as lesson
from course_lib.models import Car, Dealership, Post, User
from course_lib.settings import lookup_scale

SMALL = lookup_scale("small")
TINY = lookup_scale("tiny")
DAY = datetime(2025, 1, 1)


@cache
def _car_rows(dealerships: int) -> dict[str, list[dict[str, Any]]]:
    """The small scale's dealerships and cars, of the first ``dealerships`` only."""
    rows: dict[str, list[dict[str, Any]]] = {"dealerships": [], "cars": []}
    for name, chunk in generate(SMALL):
        if name == "dealerships":
            rows[name] += [row for row in chunk if row["id"] <= dealerships]
        elif name == "cars":
            rows[name] += [row for row in chunk if row["dealership_id"] <= dealerships]
    return rows


def _cars_db(db: Backend, dealerships: int) -> Backend:
    """``db`` (empty course tables) with the cars of the first ``dealerships``, analyzed."""
    rows = _car_rows(dealerships)
    with db.sync_engine.begin() as conn:
        conn.execute(insert(Dealership), rows["dealerships"])
        conn.execute(insert(Car), rows["cars"])
    lesson.vacuum(db, analyze=True)
    return db


@pytest.fixture(scope="module", params=["sqlite_db", "pg_service", "pg_embedded"])
def cars(request: pytest.FixtureRequest, fresh_database: Any) -> Iterator[Backend]:
    """2,000 cars (the small scale's first dealership), in a database unique to this run."""
    db = reset_schema(fresh_database(request.getfixturevalue(request.param), "indexes"))
    yield _cars_db(db, 1)
    db.sync_engine.dispose()


@pytest.fixture(scope="module", params=["sqlite_db", "pg_service"])
def many_cars(request: pytest.FixtureRequest, fresh_database: Any) -> Iterator[Backend]:
    """10,000 cars (the small scale's first five dealerships): the check times its query."""
    db = reset_schema(fresh_database(request.getfixturevalue(request.param), "indexes_many"))
    yield _cars_db(db, 5)
    db.sync_engine.dispose()


@pytest.fixture
def bare(cars: Backend) -> Iterator[Backend]:
    """The cars database with no lesson index, before and after the test."""
    lesson.reset_indexes(cars)
    yield cars
    lesson.reset_indexes(cars)


# ------------------------------------------------------------------------------- the DDL


def test_copy_of_leaves_the_models_untouched() -> None:
    cars = lesson.copy_of(Car)
    Index("ix_test_make", cars.c.make)
    assert cars is not Car.__table__ and len(cars.indexes) == 1
    assert not Car.__table__.indexes
    renamed = lesson.copy_of(Car, MetaData(), name="cars_copy")
    assert renamed.name == "cars_copy" and not Car.__table__.indexes


def test_postgresql_only_options_are_dropped_on_sqlite() -> None:
    cars = lesson.copy_of(Car)
    unsold = cars.c.is_sold == false()
    partial = Index("ix_p", cars.c.price, postgresql_where=unsold)
    both = Index("ix_b", cars.c.price, sqlite_where=unsold, postgresql_where=unsold)
    covering = Index("ix_c", cars.c.make, postgresql_include=["model"])
    concurrent = Index("ix_d", cars.c.dealership_id, postgresql_concurrently=True)
    assert lesson.ddl(partial, "sqlite") == "CREATE INDEX ix_p ON cars (price)"
    assert lesson.ddl(partial, "postgresql").endswith("WHERE is_sold = false")
    assert lesson.ddl(both, "sqlite") == "CREATE INDEX ix_b ON cars (price) WHERE is_sold = 0"
    assert lesson.ddl(covering, "sqlite") == "CREATE INDEX ix_c ON cars (make)"
    assert lesson.ddl(covering, "postgresql") == "CREATE INDEX ix_c ON cars (make) INCLUDE (model)"
    assert lesson.ddl(concurrent, "sqlite") == "CREATE INDEX ix_d ON cars (dealership_id)"
    assert lesson.ddl(concurrent, "postgresql").startswith("CREATE INDEX CONCURRENTLY ix_d")


def test_create_index_returns_the_ddl_and_reset_drops_lesson_indexes(bare: Backend) -> None:
    cars = lesson.copy_of(Car)
    made = lesson.create_index(bare, Index("ix_cars_lower_model", func.lower(cars.c.model)))
    assert made == "CREATE INDEX ix_cars_lower_model ON cars (lower(model))"
    found = {ix.name: ix for ix in lesson.indexes(bare)}
    assert found["ix_cars_lower_model"].keys == (None,)  # an expression, seen on SQLite too
    assert "lower" in found["ix_cars_lower_model"].expressions[0]
    lesson.reset_indexes(bare)
    assert not [name for name in lesson.index_names(bare) if name.startswith("ix_")]
    assert any(name for name in lesson.index_names(bare))  # primary keys and constraints stay


# --------------------------------------------------------------------------- plan facts


def test_facts_of_a_composite_index_and_its_prefix(bare: Backend) -> None:
    cars = lesson.copy_of(Car)
    both = select(*lesson.SHOWN).where(Car.make == "Kia", Car.year == 2015)
    assert lesson.facts(bare, both).full_tables == ("cars",)
    lesson.create_index(bare, Index("ix_cars_make_year", cars.c.make, cars.c.year))
    assert lesson.facts(bare, both).seeks_on("ix_cars_make_year")
    assert lesson.facts(bare, select(*lesson.SHOWN).where(Car.make == "Kia")).seeks_on(
        "ix_cars_make_year"
    )
    year_only = lesson.facts(bare, select(*lesson.SHOWN).where(Car.year == 2015))
    assert "ix_cars_make_year" not in year_only.seeks
    assert str(year_only).startswith(("full scan", "skip scan"))


def test_facts_see_a_sort_an_index_only_read_and_a_partial_index(bare: Backend) -> None:
    cars = lesson.copy_of(Car)
    ordered = select(Car.id, Car.price).where(Car.model == "Golf").order_by(Car.price, Car.id)
    found = lesson.facts(bare, ordered.limit(5))
    assert found.full_tables and found.sorts
    lesson.create_index(
        bare, Index("ix_cars_model_price_id", cars.c.model, cars.c.price, cars.c.id)
    )
    found = lesson.facts(bare, ordered.limit(5))
    assert found.seeks_on("ix_cars_model_price_id") and not found.sorts
    assert "ix_cars_model_price_id" in found.index_only  # id and price are in the index
    unsold = cars.c.is_sold == false()
    lesson.create_index(
        bare,
        Index("ix_cars_unsold_price", cars.c.price, sqlite_where=unsold, postgresql_where=unsold),
    )
    cheap = select(*lesson.SHOWN).where(Car.price <= 4_500)
    assert lesson.facts(bare, cheap.where(Car.is_sold == false())).seeks_on("ix_cars_unsold_price")
    assert "ix_cars_unsold_price" not in lesson.facts(bare, cheap).indexes


def test_expects_index_from_plan_rows_on_postgresql(cars: Backend) -> None:
    assert lesson.expects_index(cars, lesson.PLAN_ROWS)
    assert lesson.expects_index(cars, 10) == (cars.name == "sqlite")


# ---------------------------------------------------------------------- the exercise check


def _index(*columns: str) -> Callable[[Connection], None]:
    def add_index(conn: Connection) -> None:
        cars = lesson.copy_of(Car)
        Index("ix_attempt", *(cars.c[name] for name in columns)).create(conn)

    return add_index


def _descending(conn: Connection) -> None:
    cars = lesson.copy_of(Car)
    Index("ix_attempt", cars.c.model, cars.c.price.desc(), cars.c.id.desc()).create(conn)


def _stub(conn: Connection) -> None:
    raise NotImplementedError("your turn")


def _two_indexes(conn: Connection) -> None:
    cars = lesson.copy_of(Car)
    Index("ix_attempt_model", cars.c.model).create(conn)
    Index("ix_attempt_price", cars.c.price, cars.c.id).create(conn)


def _primary_key_again(conn: Connection) -> None:
    cars = lesson.copy_of(Car)
    Index("ix_cars_id", cars.c.id).create(conn)  # `index=True` on the primary key


def _lower_model(conn: Connection) -> None:
    cars = lesson.copy_of(Car)
    Index("ix_attempt", func.lower(cars.c.model), cars.c.price, cars.c.id).create(conn)


def _on_the_model_itself(conn: Connection) -> None:
    Index("ix_attempt", Car.model, Car.price, Car.id).create(conn)  # attaches to Car.__table__


def _other_table(conn: Connection) -> None:
    Index("ix_attempt", lesson.copy_of(User).c.email).create(conn)


def _nothing(conn: Connection) -> None:
    conn.execute(select(1))


def _concurrently(conn: Connection) -> None:
    cars = lesson.copy_of(Car)
    Index("ix_attempt", cars.c.model, postgresql_concurrently=True).create(conn)


NAIVE = {
    "wrong column order": (_index("price", "id", "model"), "wrong column order", "first column"),
    "the wrong column": (_index("make", "price"), "index not used", "must start with model"),
    "a single column that leaves a sort": (_index("model"), "leaves a sort", "sorts"),
    "two indexes": (_two_indexes, "too many indexes", "needs one"),
    "a copy of the primary key": (_primary_key_again, "index not used", "primary key"),
    "an expression the query does not compute": (_lower_model, "index not used", "expression"),
    "an index on another table": (_other_table, "index not used", "on users"),
    "no index at all": (_nothing, "no index", "No new index"),
}


@pytest.mark.parametrize("naive", list(NAIVE), ids=list(NAIVE))
def test_check_rejects_each_naive_answer_and_says_why(bare: Backend, naive: str) -> None:
    attempt, status, reason = NAIVE[naive]
    verdict = lesson.check_index(attempt, bare)
    assert verdict.status == status, verdict
    assert reason in verdict.message, verdict.message
    assert not verdict.passed


def test_check_accepts_the_solution_and_leaves_the_schema(bare: Backend) -> None:
    before = lesson.index_names(bare)
    verdict = lesson.check_index(_index("model", "price", "id"), bare)
    assert verdict.passed, verdict
    assert verdict.index == "ix_attempt" and "seek on ix_attempt" in verdict.reads
    assert verdict.speedup is None  # 2,000 cars: below TIMING_ROWS, no timing is required
    assert lesson.index_names(bare) == before  # the learner's index is dropped again
    assert lesson.check_index(_descending, bare).passed  # read backwards: the same order


def test_model_then_price_passes_on_sqlite_only(bare: Backend) -> None:
    verdict = lesson.check_index(_index("model", "price"), bare)
    if bare.name == "sqlite":  # its index entries end with the rowid: (model, price, id)
        assert verdict.passed, verdict
    else:
        assert verdict.status == "leaves a sort" and "Add id as the last column" in verdict.message


def test_check_says_not_attempted_for_the_stub(bare: Backend) -> None:
    verdict = lesson.check_index(_stub, bare)
    assert verdict.status == "not attempted"
    assert repr(verdict).startswith("⏳ Not attempted yet")


def test_check_rejects_and_detaches_an_index_declared_on_the_models(bare: Backend) -> None:
    verdict = lesson.check_index(_on_the_model_itself, bare)
    assert verdict.status == "declared on the model" and "copy_of(Car)" in verdict.message
    assert not Car.__table__.indexes  # later builds of the dataset stay minimal
    declared_before = Index("ix_attempt", Car.model, Car.price, Car.id)  # at module level

    def create_it(conn: Connection) -> None:
        declared_before.create(conn)

    verdict = lesson.check_index(create_it, bare)
    assert verdict.status == "declared on the model", verdict
    assert not Car.__table__.indexes and "ix_attempt" not in lesson.index_names(bare)


def _partial(model: str) -> Callable[[Connection], None]:
    def add_index(conn: Connection) -> None:
        cars = lesson.copy_of(Car)
        pinned = cars.c.model == model
        Index(
            "ix_attempt", cars.c.price, cars.c.id, sqlite_where=pinned, postgresql_where=pinned
        ).create(conn)

    return add_index


def _drops_the_author_index(conn: Connection) -> None:
    conn.exec_driver_sql("DROP INDEX ix_posts_author_id")
    _index("model", "price", "id")(conn)


def _drops_the_primary_key(conn: Connection) -> None:
    conn.exec_driver_sql("ALTER TABLE cars DROP CONSTRAINT cars_pkey CASCADE")
    _index("model", "price", "id")(conn)


def _unique_constraint(conn: Connection) -> None:
    conn.exec_driver_sql("ALTER TABLE cars ADD CONSTRAINT uq_attempt UNIQUE (model, price, id)")


def _switches_the_planner(conn: Connection) -> None:
    conn.exec_driver_sql("SET enable_seqscan = off")  # a session setting, past the COMMIT
    conn.exec_driver_sql("SET enable_sort = off")
    _index("price", "id", "model")(conn)


def _model_of_the_exercise(db: Backend) -> str:
    with db.sync_engine.connect() as conn:
        return str(conn.execute(lesson.exercise_statement(db)).first().model)


def test_check_rejects_a_partial_index_for_the_checked_model(bare: Backend) -> None:
    verdict = lesson.check_index(_partial(_model_of_the_exercise(bare)), bare)
    assert verdict.status == "partial index" and "parameter" in verdict.message, verdict


def test_check_remakes_what_add_index_dropped(bare: Backend) -> None:
    lesson.create_author_index(bare)
    before = lesson.index_names(bare)
    verdict = lesson.check_index(_drops_the_author_index, bare)
    assert verdict.status == "dropped an index" and "ix_posts_author_id" in verdict.message
    assert lesson.index_names(bare) == before
    if bare.name == "postgresql":
        verdict = lesson.check_index(_drops_the_primary_key, bare)
        assert verdict.status == "dropped an index" and "cars_pkey" in verdict.message
        assert lesson.index_names(bare) == before


def test_check_drops_a_constraint_and_session_settings_on_postgresql(bare: Backend) -> None:
    if bare.name != "postgresql":
        pytest.skip("ALTER TABLE ... ADD CONSTRAINT and SET are PostgreSQL's here")
    before = lesson.index_names(bare)
    assert lesson.check_index(_unique_constraint, bare).passed  # a unique B-tree serves too
    assert lesson.index_names(bare) == before  # dropped with DROP CONSTRAINT
    verdict = lesson.check_index(_switches_the_planner, bare)
    assert verdict.status == "wrong column order", verdict
    with bare.sync_engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW enable_seqscan").scalar() == "on"


def test_check_messages_keep_directions_and_hint_the_fix(bare: Backend) -> None:
    def mixed(conn: Connection) -> None:
        cars = lesson.copy_of(Car)
        Index("ix_attempt", cars.c.model, cars.c.price.desc(), cars.c.id).create(conn)

    verdict = lesson.check_index(mixed, bare)
    assert verdict.status == "leaves a sort" and "price DESC" in verdict.message, verdict
    if bare.name == "postgresql":
        verdict = lesson.check_index(_concurrently, bare)
        assert "autocommit" in verdict.message


def test_check_reports_what_raised(bare: Backend) -> None:
    if bare.name != "postgresql":
        pytest.skip("CONCURRENTLY is a PostgreSQL option; SQLite ignores it")
    verdict = lesson.check_index(_concurrently, bare)
    assert verdict.status == "raised" and "InternalError" in verdict.message
    assert "ix_attempt" not in lesson.index_names(bare)


def test_check_requires_and_reports_a_speedup_from_timing_rows(many_cars: Backend) -> None:
    assert lesson.rows_in(many_cars, "cars") >= lesson.TIMING_ROWS
    lesson.reset_indexes(many_cars)
    verdict = lesson.check_index(_index("model", "price", "id"), many_cars)
    assert verdict.passed, verdict
    assert verdict.speedup is not None and verdict.speedup >= 2
    assert "x faster" in verdict.message
    assert lesson.check_index(_index("model"), many_cars).status == "leaves a sort"


def test_exercise_statement_is_a_page_of_the_most_common_model(cars: Backend) -> None:
    stmt = lesson.exercise_statement(cars)
    with cars.sync_engine.connect() as conn:
        rows = conn.execute(stmt).all()
        most = conn.execute(
            select(Car.model).group_by(Car.model).order_by(func.count().desc(), Car.model)
        ).scalar()
    assert len(rows) == lesson.PAGE and {row.model for row in rows} == {most}
    assert [(row.price, row.id) for row in rows] == sorted((row.price, row.id) for row in rows)


# ---------------------------------------------------------------------------- write costs


def test_insert_tables_carry_0_1_3_and_6_indexes(cars: Backend) -> None:
    tables = lesson.insert_tables(cars)
    try:
        counts = {
            k: len([ix for ix in lesson.indexes(cars, [t.name]) if ix.name.startswith("ix_")])
            for k, t in tables.items()
        }
        assert counts == {0: 0, 1: 1, 3: 3, 6: 6}
    finally:
        lesson.drop_insert_tables(cars)
    assert not lesson.indexes(cars, ["cars_6_indexes"])


def test_insert_strategies_roll_back_and_throughput_is_computed(cars: Backend) -> None:
    strategies = lesson.insert_strategies([cars], 50)
    try:
        for run in strategies:
            run(cars, 50)
        with cars.sync_engine.connect() as conn:
            left = conn.scalar(text("SELECT count(*) FROM cars_6_indexes"))
        assert left == 0  # every call rolled back
    finally:
        lesson.drop_insert_tables(cars)
    assert [run.__doc__ for run in strategies[:4]] == [
        "executemany: 0 indexes",
        "executemany: 1 index",
        "executemany: 3 indexes",
        "executemany: 6 indexes",
    ]
    assert strategies[-1].__doc__ == "INSERT ... SELECT: 6 indexes"
    frame = pd.DataFrame(
        {
            "strategy": ["executemany: 0 indexes", "executemany: 6 indexes"] * 2,
            "backend": ["sqlite"] * 2 + ["postgresql"] * 2,
            "median_ms": [10.0, 20.0, 4.0, 5.0],
            "q1_ms": [9.0, 19.0, 3.0, 4.0],
            "q3_ms": [11.0, 21.0, 5.0, 6.0],
        }
    )
    out = lesson.insert_throughput(frame, 1_000).set_index(["backend", "indexes"])
    assert out.loc[("sqlite", 6), "rows_per_s"] == 50_000
    assert out["time_vs_no_index"].to_dict() == {
        ("postgresql", 0): 1.0,
        ("postgresql", 6): 1.25,
        ("sqlite", 0): 1.0,
        ("sqlite", 6): 2.0,
    }
    assert (
        lesson.insert_chart(out.reset_index()).axes[0].get_xlabel()
        == "indexes on the table besides the primary key"
    )


def test_partial_index_is_smaller_than_the_full_one(bare: Backend) -> None:
    cars = lesson.copy_of(Car)
    unsold = cars.c.is_sold == false()
    lesson.create_index(bare, Index("ix_cars_price", cars.c.price))
    lesson.create_index(
        bare,
        Index("ix_cars_unsold_price", cars.c.price, sqlite_where=unsold, postgresql_where=unsold),
    )
    lesson.create_index(bare, Index("ix_cars_price_pg", cars.c.price, postgresql_where=unsold))
    sizes = lesson.index_sizes(bare, ["ix_cars_price", "ix_cars_unsold_price", "ix_cars_price_pg"])
    pages = sizes.set_index("index")["pages"]
    assert pages["ix_cars_unsold_price"] < pages["ix_cars_price"]
    if bare.name == "sqlite":  # postgresql_where alone: a full index on SQLite
        assert pages["ix_cars_price_pg"] == pages["ix_cars_price"]
    else:
        assert pages["ix_cars_price_pg"] == pages["ix_cars_unsold_price"]


def test_forced_strategies_return_the_same_rows(bare: Backend) -> None:
    cars = lesson.copy_of(Car)
    lesson.create_index(bare, Index("ix_cars_is_sold", cars.c.is_sold))
    stmt = select(func.count(), func.sum(Car.price)).where(Car.is_sold == false())
    scan = lesson.forced(stmt, "ix_cars_is_sold", use_index=False, label="scan")
    index = lesson.forced(stmt, "ix_cars_is_sold", use_index=True, label="index")
    assert scan(bare, 1) == index(bare, 1)
    assert scan.__doc__ == "scan"
    assert lesson.forced_facts(bare, scan).full_tables == ("cars",)
    assert "ix_cars_is_sold" in lesson.forced_facts(bare, index).indexes


# ------------------------------------------------------------------ foreign keys and deletes


def test_foreign_keys_show_what_an_index_serves(bare: Backend) -> None:
    keys = lesson.foreign_keys(bare).set_index(["table", "column"])["indexed"]
    assert keys[("post_tags", "post_id")] and not keys[("posts", "author_id")]
    lesson.create_fk_indexes(bare)
    keys = lesson.foreign_keys(bare).set_index(["table", "column"])["indexed"]
    assert keys[("posts", "author_id")] and keys[("comments", "user_id")]
    assert not keys[("cars", "dealership_id")]


def test_deleting_users_checks_each_foreign_key(bare: Backend) -> None:
    with bare.Session.begin() as session:
        session.add_all(
            [User(name="Gone", email=f"gone{i}@example.com", created_at=DAY) for i in range(3)]
        )
    ids = lesson.signup_ids(bare, 3)
    assert len(ids) == 3
    stmt = delete(User).where(User.id.in_(ids))
    found = lesson.facts(bare, stmt)
    check = lesson.facts(bare, lesson.fk_check(Post.author_id, ids[0]))
    assert check.full_tables == ("posts",)
    if bare.name == "postgresql":
        assert lesson.triggers(found.plan) == [
            ("comments_user_id_fkey", 3),
            ("posts_author_id_fkey", 3),
        ]
    else:
        assert {"posts", "comments"} <= set(found.full_tables)
    lesson.create_fk_indexes(bare)
    if bare.name == "sqlite":  # PostgreSQL rightly reads an empty posts table whole
        assert lesson.facts(bare, lesson.fk_check(Post.author_id, ids[0])).seeks_on(
            "ix_posts_author_id"
        )
    lesson.delete_strategy(ids, "delete")(bare, 1)
    assert lesson.signup_ids(bare, 3) == ids  # rolled back


# --------------------------------------------------------------- PostgreSQL: usage, production


def test_duplicates_and_unused_indexes_on_postgresql(bare: Backend) -> None:
    if bare.name != "postgresql":
        pytest.skip("pg_stat_user_indexes and pg_index are PostgreSQL's")
    cars = lesson.copy_of(Car)
    lesson.create_index(bare, Index("ix_cars_make_year", cars.c.make, cars.c.year))
    lesson.create_index(bare, Index("ix_cars_is_sold", cars.c.is_sold))
    lesson.create_index(bare, Index("ix_cars_id", cars.c.id))
    assert ("cars_pkey", "ix_cars_id") in lesson.duplicate_indexes(bare)
    lesson.run_workload(bare, [select(*lesson.SHOWN).where(Car.make == "Kia", Car.year == 2015)])
    usage = lesson.index_usage(bare).set_index("index")
    assert usage.loc["ix_cars_make_year", "scans"] >= 1
    assert usage.loc["ix_cars_is_sold", "scans"] == 0 and usage.loc["ix_cars_id", "scans"] == 0
    assert usage.loc["cars_pkey", "constraint"] and not usage.loc["ix_cars_id", "constraint"]


def test_concurrently_needs_autocommit(bare: Backend) -> None:
    if bare.name != "postgresql":
        pytest.skip("CREATE INDEX CONCURRENTLY is PostgreSQL's")
    cars = lesson.copy_of(Car)
    concurrent = Index("ix_cars_dealership_id", cars.c.dealership_id, postgresql_concurrently=True)
    inside = pytest.raises(InternalError, match="cannot run inside a transaction block")
    with inside, bare.sync_engine.begin() as conn:
        concurrent.create(conn)
    with lesson.autocommit(bare) as conn:
        concurrent.create(conn)
    assert lesson.index_valid(bare, "ix_cars_dealership_id")


def test_rewritten_rows_need_vacuum_for_an_index_only_scan(bare: Backend) -> None:
    if bare.name != "postgresql":
        pytest.skip("the visibility map is PostgreSQL's")
    cars = lesson.copy_of(Car)
    lesson.create_index(
        bare,
        Index(
            "ix_cars_listing", cars.c.make, cars.c.year, postgresql_include=["model", "price", "id"]
        ),
    )
    pause_autovacuum(bare, "cars")  # so that only the test's VACUUM sets the visibility map
    lesson.vacuum(bare, "cars")
    listing = select(*lesson.LISTING).where(Car.make == "Kia", Car.year == 2015)
    assert lesson.facts(bare, listing).heap_fetches == 0
    assert lesson.rewrite_rows(bare, (Car.make == "Kia") & (Car.year == 2015)) > 0
    assert lesson.facts(bare, listing).heap_fetches > 0
    lesson.vacuum(bare, "cars")
    assert lesson.facts(bare, listing).heap_fetches == 0


# --------------------------------------------------------------------- the scratch copy


@pytest.fixture(scope="module", params=["sqlite_db", "pg_service"])
def tiny_scratch(request: pytest.FixtureRequest) -> Backend:
    """The notebook's scratch copy, at the tiny scale."""
    course = Course(TINY, [request.getfixturevalue(request.param)])
    return lesson.indexes_scratch(course, "indexes_test").backends[0]


def test_scratch_has_sign_ups_and_no_unique_email(tiny_scratch: Backend) -> None:
    assert lesson.rows_in(tiny_scratch, "users") == TINY.cars  # as many accounts as cars
    assert lesson.rows_in(tiny_scratch, "posts") == TINY.posts
    assert len(lesson.signup_ids(tiny_scratch, 1_000)) == TINY.cars - TINY.users
    assert not [
        ix for ix in lesson.indexes(tiny_scratch, ["users"]) if ix.unique and "email" in ix.keys
    ]
    email = lesson.parameters(tiny_scratch).email
    with tiny_scratch.Session() as session:  # no constraint: a second account is accepted
        session.add(User(name="Twin", email=email, created_at=DAY))
        session.flush()
        session.rollback()


def test_scratch_still_enforces_foreign_keys(tiny_scratch: Backend) -> None:
    with pytest.raises(IntegrityError), tiny_scratch.sync_engine.begin() as conn:
        conn.execute(
            insert(Post), [{"author_id": 10**9, "title": "x", "body": "x", "created_at": DAY}]
        )


def test_parameters_come_from_the_data(tiny_scratch: Backend) -> None:
    p = lesson.parameters(tiny_scratch)
    with tiny_scratch.sync_engine.connect() as conn:
        assert conn.scalar(select(func.count()).where(User.email == p.email)) == 1
        assert (
            conn.scalar(select(func.count()).where(func.lower(User.email) == p.typed_email.lower()))
            == 1
        )
        assert conn.scalar(select(func.count()).where(Car.make == p.make, Car.year == p.year)) >= 1
        assert conn.scalar(select(func.count()).where(Car.id == int(p.car_id))) == 1
        assert conn.scalar(select(func.count()).where(Post.author_id == p.author_id)) >= 1
    assert p.typed_email != p.email and p.typed_email.lower() == p.email


# -------------------------------------------------------------------------- before / after


def _frame(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"strategy": s, "backend": b, "n": 1, "median_ms": m} for s, b, m in rows])


def test_gain_and_speedups_read_a_with_and_without_pair() -> None:
    off = "login: full scan (index switched off)"
    pair = _frame(
        [
            (off, "sqlite", 10.0),
            ("login: with ix", "sqlite", 1.0),
            (off, "postgresql", 6.0),
            ("login: with ix", "postgresql", 3.0),
        ]
    )
    assert lesson.gain(pair).to_dict() == {"sqlite": 10.0, "postgresql": 2.0}
    table = lesson.speedups({"unique": pair})
    assert table[["kind", "backend", "speedup"]].values.tolist() == [
        ["unique", "sqlite", 10.0],
        ["unique", "postgresql", 2.0],
    ]
    assert lesson.speedup_chart(table).axes[0].get_xscale() == "log"


def test_with_and_without_times_a_full_scan_against_the_index(bare: Backend) -> None:
    cars = lesson.copy_of(Car)
    lesson.create_index(bare, Index("ix_cars_make_year", cars.c.make, cars.c.year))
    stmt = select(*lesson.SHOWN).where(Car.make == "Kia", Car.year == 2015)
    without, with_index = lesson.with_and_without(
        [bare], "make and year", stmt, "ix_cars_make_year"
    )
    assert without.__doc__ == "make and year: full scan (index switched off)"
    assert with_index.__doc__ == "make and year: with ix_cars_make_year"
    assert lesson.forced_facts(bare, without).full_tables == ("cars",)
    assert without(bare, 1) == with_index(bare, 1)


def test_module_doctests() -> None:
    assert doctest.testmod(lesson).failed == 0


TINY_NAIVE = {
    "wrong column order": _index("price", "id", "model"),
    "the wrong column": _index("make", "price"),
    "a single column that leaves a sort": _index("model"),
    "model then price": _index("model", "price"),
    "a copy of the primary key": _primary_key_again,
    "an expression the query does not compute": _lower_model,
}


@pytest.mark.parametrize("naive", list(TINY_NAIVE), ids=list(TINY_NAIVE))
def test_check_judges_the_plan_at_tiny_too(tiny_scratch: Backend, naive: str) -> None:
    lesson.reset_indexes(tiny_scratch)
    assert lesson.rows_in(tiny_scratch, "cars") < lesson.PLAN_ROWS
    verdict = lesson.check_index(TINY_NAIVE[naive], tiny_scratch)
    if naive == "model then price" and tiny_scratch.name == "sqlite":
        assert verdict.passed, verdict  # SQLite's index entries end with the rowid
    else:
        assert not verdict.passed and verdict.status != "raised", verdict


def test_check_passes_the_solution_at_tiny_and_says_how_it_judged(tiny_scratch: Backend) -> None:
    lesson.reset_indexes(tiny_scratch)
    verdict = lesson.check_index(_index("model", "price", "id"), tiny_scratch)
    assert verdict.passed and "seek on ix_attempt" in verdict.reads, verdict
    if tiny_scratch.name == "postgresql":
        assert "sequential and bitmap scans off" in verdict.message
    attempt = _partial(_model_of_the_exercise(tiny_scratch))
    assert lesson.check_index(attempt, tiny_scratch).status == "partial index"


def test_cascade_table_deletes_the_favourites_of_a_deleted_user(tiny_scratch: Backend) -> None:
    table = lesson.cascade_table(tiny_scratch)
    try:
        gone = lesson.signup_ids(tiny_scratch, 2)
        count = select(func.count()).select_from(table)
        with tiny_scratch.sync_engine.connect() as conn, conn.begin() as transaction:
            before = conn.scalar(count)
            owned = conn.scalar(count.where(table.c.user_id.in_(gone)))
            conn.execute(delete(User).where(User.id.in_(gone)))
            after = conn.scalar(count)
            transaction.rollback()
        assert before > 0 and owned > 0 and after == before - owned  # cascaded, not refused
        if tiny_scratch.name == "postgresql":
            plan = lesson.facts(tiny_scratch, delete(User).where(User.id.in_(gone))).plan
            assert ("favourites_user_id_fkey", len(gone)) in lesson.triggers(plan)
    finally:
        lesson.drop_cascade_table(tiny_scratch)
    assert not inspect(tiny_scratch.sync_engine).has_table("favourites")
