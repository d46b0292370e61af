"""Tests for course_lib.budgets and its pytest plugin: budgets, shapes, the N+1 detector."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.orm import Session, selectinload

from course_lib import budgets
from course_lib.backends import Backend
from course_lib.budgets import (
    DEFAULT_THRESHOLD,
    BudgetError,
    NPlusOneDetected,
    StatementBudgetExceeded,
    _outside_in_lists,
    find_n_plus_one,
    no_n_plus_one,
    statement_budget,
    statement_shape,
    watch_statements,
)
from course_lib.models import Post, User
from course_lib.query_log import normalize_sql

HERE = "test_budgets.py:"  # where a report points: this file (relative to the working folder)


@pytest.fixture(params=["sqlite_db", "pg_service"])
def db(request: pytest.FixtureRequest) -> Backend:
    """The tiny dataset on SQLite and on the PostgreSQL service."""
    return request.getfixturevalue(request.param)


def _lazy_page(session: Session, n: int) -> list[int]:
    counts = []
    for user in session.scalars(select(User).order_by(User.id).limit(n)).all():
        counts.append(len(user.posts))  # the N+1: one lazy load per user
    return counts


# ---------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("sql", "shape"),
    [
        ("SELECT a FROM t WHERE id = ?", "SELECT a FROM t WHERE id = ?"),
        ("SELECT a FROM t WHERE id = $1::INTEGER", "SELECT a FROM t WHERE id = ?"),
        ("SELECT a FROM t WHERE id = %(id_1)s::INTEGER", "SELECT a FROM t WHERE id = ?"),
        ("SELECT a FROM t WHERE id = %(id_1)s", "SELECT a FROM t WHERE id = ?"),
        ("SELECT a FROM t WHERE id = :id", "SELECT a FROM t WHERE id = ?"),
        ("select a\n  from t where id = 42", "select a from t where id = ?"),
        ("SELECT a FROM t WHERE name = 'o''brien'", "SELECT a FROM t WHERE name = ?"),
        ("SELECT a FROM t WHERE id IN (?, ?, ?)", "SELECT a FROM t WHERE id IN (...)"),
        (
            "SELECT a FROM t WHERE id IN ($1::INTEGER, $2::INTEGER)",
            "SELECT a FROM t WHERE id IN (...)",
        ),
        ("INSERT INTO t (a, b) VALUES (?, ?), (?, ?)", "INSERT INTO t (a, b) VALUES (?, ?), ..."),
        ("SELECT a FROM t /*function='f'*/", "SELECT a FROM t"),
        ("SELECT users_1.id FROM users AS users_1", "SELECT users_1.id FROM users AS users_1"),
        ("SELECT x::TEXT FROM t", "SELECT x::TEXT FROM t"),
    ],
)
def test_statement_shape_replaces_values_only(sql: str, shape: str) -> None:
    assert statement_shape(sql) == shape == normalize_sql(sql)  # the course's one normaliser


# ---------------------------------------------------------------------------- budgets


def test_budget_passes_within_and_reports_over(db: Backend) -> None:
    with statement_budget(db.sync_engine, max_statements=11) as sent, db.Session() as session:
        _lazy_page(session, 10)
    assert sent.count == 11
    with (
        pytest.raises(StatementBudgetExceeded) as raised,
        statement_budget(db.sync_engine, max_statements=2),
        db.Session() as session,
    ):
        _lazy_page(session, 10)
    error = raised.value
    assert isinstance(error, AssertionError) and isinstance(error, BudgetError)
    lines = str(error).splitlines()
    assert lines[0] == "11 statements, over the budget of 2:"
    assert lines[1].startswith("  1 × SELECT users.id, … FROM users ORDER BY users.id LIMIT ?")
    assert lines[2].startswith("  10 × SELECT posts.id, … FROM posts WHERE ? = posts.author_id")
    assert HERE in lines[2] and lines[2].endswith("in _lazy_page()")


def test_budget_never_hides_an_error_raised_inside(db: Backend) -> None:
    with (
        pytest.raises(ZeroDivisionError),
        statement_budget(db.sync_engine, max_statements=0),
        db.Session() as session,
    ):
        session.scalar(text("SELECT 1"))
        1 / 0  # noqa: B018


def test_budget_counts_async_statements_through_the_sync_engine(db: Backend) -> None:
    async def page() -> None:
        async with db.AsyncSession() as session:
            users = (await session.scalars(select(User).order_by(User.id).limit(4))).all()
            for user in users:
                await user.awaitable_attrs.posts

    over = pytest.raises(StatementBudgetExceeded, match="5 statements, over the budget of 2")
    with over, statement_budget(db.engine, max_statements=2):
        db.run(page)
    with statement_budget(db, max_statements=6) as sent:  # a Backend: both engines
        db.run(page)
        with db.Session() as session:
            session.scalar(text("SELECT 1"))
    assert sent.count == 6


def test_listeners_are_removed_after_the_block(sqlite_db: Backend) -> None:
    engine = sqlite_db.sync_engine
    before = {
        name: len(getattr(engine.dispatch, name)) for name in ("before_cursor_execute", "begin")
    }
    with watch_statements(engine) as watch:
        assert len(engine.dispatch.before_cursor_execute) == before["before_cursor_execute"] + 1
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert watch.count == 0
    assert {name: len(getattr(engine.dispatch, name)) for name in before} == before


def test_budget_rejects_an_unknown_target() -> None:
    refused = pytest.raises(TypeError, match="Engine, an AsyncEngine or a Backend")
    with refused, statement_budget("sqlite://"):  # type: ignore[arg-type]
        pass


# ---------------------------------------------------------------------- the detector


def test_detector_reports_the_sync_n_plus_one_with_an_example(db: Backend) -> None:
    with find_n_plus_one(db) as found, db.Session() as session:
        _lazy_page(session, 10)
    assert len(found.findings) == 1
    finding = found.findings[0]
    assert finding.count == 10
    assert finding.shape.endswith("FROM posts WHERE ? = posts.author_id")
    assert "posts.author_id" in finding.example
    assert finding.parameters in ((1,), {"param_1": 1})  # the first user's key
    assert HERE in finding.where and finding.where.endswith("in _lazy_page()")
    described = finding.describe().splitlines()
    assert described[0].startswith("10 × SELECT posts.id, … FROM posts")
    assert described[2] == f"    first sent from {finding.where}"


def test_detector_finds_the_async_n_plus_one_and_its_line(db: Backend) -> None:
    async def page() -> None:
        async with db.AsyncSession() as session:
            users = (await session.scalars(select(User).order_by(User.id).limit(5))).all()
            for user in users:
                await user.awaitable_attrs.posts

    with find_n_plus_one(db.engine) as found:
        db.run(page)
    assert [f.count for f in found.findings] == [5]
    # the lazy load runs in a greenlet with only SQLAlchemy frames: its spawner is searched
    assert HERE in found.findings[0].where and found.findings[0].where.endswith("in page()")


def test_detector_sees_core_text_loops(db: Backend) -> None:
    with find_n_plus_one(db) as found, db.sync_engine.connect() as conn:
        for i in range(1, 6):
            conn.scalar(text("SELECT count(*) FROM posts WHERE author_id = :a"), {"a": i})
    assert [f.count for f in found.findings] == [5]


def test_detector_ignores_eager_loads_and_selectin_batches(db: Backend) -> None:
    with find_n_plus_one(db) as found, db.Session() as session:
        stmt = select(User).order_by(User.id).limit(10)
        session.scalars(stmt.options(selectinload(User.posts))).all()
        session.expunge_all()
        # 2.1's chunksize: four IN statements of one shape, but each carries a batch of keys
        session.scalars(stmt.options(selectinload(User.posts, chunksize=3))).all()
    assert found.findings == []
    assert found.count == 2 + 1 + 4


def test_threshold_means_at_least(db: Backend) -> None:
    def lookups(session: Session, n: int) -> None:
        for i in range(1, n + 1):
            session.get(User, i)

    with find_n_plus_one(db, threshold=4) as found, db.Session() as session:
        lookups(session, 3)  # below the threshold
    assert found.findings == []
    with find_n_plus_one(db, threshold=4) as found, db.Session() as session:
        lookups(session, 4)  # at the threshold: reported, as queryspy does
    assert [f.count for f in found.findings] == [4]
    with find_n_plus_one(db) as found, db.Session() as session:
        lookups(session, DEFAULT_THRESHOLD)
    assert [f.count for f in found.findings] == [DEFAULT_THRESHOLD]


def test_the_block_is_the_unit_of_work(db: Backend) -> None:
    with find_n_plus_one(db) as found, db.Session() as session:
        for user in session.scalars(select(User).order_by(User.id).limit(5)).all():
            len(user.posts)
            session.commit()  # a batch job's commit per item: still one N+1
    assert [f.count for f in found.findings] == [5]
    with find_n_plus_one(db) as found:
        for i in range(1, 6):  # one Session per id: still one N+1
            with db.Session() as session:
                session.get(User, i)
    assert [f.count for f in found.findings] == [5] and found.count == 5


def test_per_transaction_units_tell_transactions_apart(db: Backend) -> None:
    with find_n_plus_one(db, per="transaction") as found:
        for i in range(1, 6):  # one lookup per transaction: separate units of work
            with db.Session() as session:
                session.get(User, i)
    assert found.findings == [] and found.count == 5
    with find_n_plus_one(db, per="transaction") as found, db.Session() as session:
        for i in range(1, 5):  # a commit ends a unit of work; the next statement begins one
            session.get(User, i)
            session.commit()
    assert found.findings == []
    with find_n_plus_one(db, per="transaction") as found, db.Session() as session:
        _lazy_page(session, 4)  # within one transaction: found either way
    assert [f.count for f in found.findings] == [4]
    assert "in one transaction:" in found.n_plus_one_report()
    with pytest.raises(ValueError, match="block"), find_n_plus_one(db, per="session"):  # type: ignore[arg-type]
        pass


def test_an_in_list_exempts_only_when_it_carries_the_looped_key(db: Backend) -> None:
    with find_n_plus_one(db) as found, db.Session() as session:
        for i in range(1, 6):  # the key is outside the IN list, which is a constant
            stmt = select(func.count()).select_from(Post)
            session.scalar(stmt.where(Post.author_id == i, Post.id.not_in([0, -1])))
    assert [f.count for f in found.findings] == [5]
    with find_n_plus_one(db) as found, db.Session() as session:
        for first in range(1, 9, 2):  # hand-made batches: the keys are in the IN list
            session.scalars(select(Post.id).where(Post.author_id.in_([first, first + 1]))).all()
    assert found.findings == [] and found.count == 4
    with find_n_plus_one(db) as found, db.sync_engine.connect() as conn:
        for i in range(1, 5):  # the same, in text(), with literal values outside the list
            conn.execute(text(f"SELECT count(*) FROM posts WHERE id IN (1, 2) AND author_id = {i}"))
    assert [f.count for f in found.findings] == [4]


def test_an_in_list_of_one_key_is_no_batch(db: Backend) -> None:
    with find_n_plus_one(db) as found, db.Session() as session:
        for i in range(1, 5):
            session.scalars(select(Post.id).where(Post.author_id.in_([i]))).all()
    assert [f.count for f in found.findings] == [4]


@pytest.mark.parametrize(
    ("sql", "outside", "references"),
    [
        (
            "SELECT a FROM t WHERE b = ? AND c IN (?, ?) AND d = ?",
            "SELECT a FROM t WHERE b = ? AND c IN () AND d = ?",
            (0, 3),
        ),
        (
            "SELECT a FROM t WHERE b = $3::INTEGER AND c IN ($1::INTEGER, $2::INTEGER)",
            "SELECT a FROM t WHERE b = $3::INTEGER AND c IN ()",
            (2,),
        ),
        (
            "SELECT a FROM t WHERE b = %(b_1)s AND c IN (%(c_1)s, %(c_2)s)",
            "SELECT a FROM t WHERE b = %(b_1)s AND c IN ()",
            ("b_1",),
        ),
        (
            "SELECT a FROM t WHERE b = ':x' AND c IN (:c1, :c2) AND d = :d",
            "SELECT a FROM t WHERE b = ':x' AND c IN () AND d = :d",
            ("d",),
        ),
        (
            "SELECT a FROM t WHERE c IN (SELECT x FROM u WHERE y = ?)",
            "SELECT a FROM t WHERE c IN (SELECT x FROM u WHERE y = ?)",
            (0,),
        ),
    ],
)
def test_what_a_statement_binds_outside_its_in_lists(
    sql: str, outside: str, references: tuple[Any, ...]
) -> None:
    assert _outside_in_lists(sql) == (outside, references)


def test_reports_can_leave_line_numbers_out(db: Backend) -> None:
    with find_n_plus_one(db, lines=False) as found, db.Session() as session:
        _lazy_page(session, 3)
    where = found.findings[0].where
    assert where.endswith("test_budgets.py in _lazy_page()") and ":" not in where
    with (
        pytest.raises(StatementBudgetExceeded) as raised,
        statement_budget(db, max_statements=1, lines=False),
        db.Session() as session,
    ):
        _lazy_page(session, 3)
    assert str(raised.value).splitlines()[2].endswith("test_budgets.py in _lazy_page()")


def test_a_session_per_statement_takes_the_caller_once_per_shape(
    db: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = []
    original = budgets._origin

    def counting(skip: int = 1) -> Any:
        taken.append(1)
        return original(skip + 1)

    monkeypatch.setattr(budgets, "_origin", counting)
    for per in ("block", "transaction"):
        taken.clear()
        with find_n_plus_one(db, per=per) as found:  # type: ignore[arg-type]
            for i in range(1, 21):
                with db.Session() as session:
                    session.get(User, i % 3 + 1)
        assert found.count == 20 and len(taken) == 1, per
        assert len(found.sent) == (1 if per == "block" else 20)
        where = found.shapes()[0].where
        assert where.endswith("in test_a_session_per_statement_takes_the_caller_once_per_shape()")


def test_no_n_plus_one_raises_with_a_readable_report(db: Backend) -> None:
    with (
        pytest.raises(NPlusOneDetected) as raised,
        no_n_plus_one(db.sync_engine),
        db.Session() as session,
    ):
        _lazy_page(session, 4)
    lines = str(raised.value).splitlines()
    assert lines[0] == ("1 N+1 pattern(s): the same statement 3 or more times in the block:")
    assert lines[1].startswith("  4 × SELECT posts.id, … FROM posts WHERE ? = posts.author_id")
    assert lines[2].startswith("    example: SELECT posts.id, … FROM posts WHERE ")
    assert lines[3].startswith("    first sent from ") and HERE in lines[3]
    with no_n_plus_one(db.sync_engine), db.Session() as session:
        session.scalars(select(User).options(selectinload(User.posts))).all()


def test_hidden_parameters_stay_hidden(sqlite_db: Backend) -> None:
    engine = create_engine(sqlite_db.sync_url, hide_parameters=True)
    try:
        with find_n_plus_one(engine) as found, engine.connect() as conn:
            for i in range(3):
                conn.scalar(text("SELECT :secret"), {"secret": f"token-{i}"})
        assert found.findings[0].parameters == "[hidden]"
        assert "token" not in found.n_plus_one_report()
    finally:
        engine.dispose()


def test_statements_from_other_threads_are_counted(db: Backend) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def lookup(i: int) -> None:
        with db.Session() as session:
            session.get(User, i)

    with statement_budget(db, max_statements=10) as sent, ThreadPoolExecutor(4) as pool:
        list(pool.map(lookup, range(1, 9)))
    assert sent.count == 8


def test_the_watch_does_not_change_what_is_sent(sqlite_db: Backend) -> None:
    seen: list[str] = []

    def record(_c: Any, _cur: Any, sql: str, *_rest: Any) -> None:
        seen.append(sql)

    event.listen(sqlite_db.sync_engine, "before_cursor_execute", record)
    try:
        with find_n_plus_one(sqlite_db), sqlite_db.Session() as session:
            session.scalar(text("SELECT 1"))
    finally:
        event.remove(sqlite_db.sync_engine, "before_cursor_execute", record)
    assert seen == ["SELECT 1"]


# -------------------------------------------------------------------- the pytest plugin

_TEST = """
from sqlalchemy import select, text
from course_lib.backends import sqlite
from course_lib.models import User

DB = sqlite("course_tiny")


def test_within_budget(statement_budget):
    with statement_budget(DB.sync_engine, max_statements=1), DB.Session() as session:
        session.scalar(text("SELECT 1"))


def test_over_budget(statement_budget):
    with statement_budget(DB.sync_engine, max_statements=1), DB.Session() as session:
        for i in range(3):
            session.get(User, i + 1)


def test_n_plus_one(no_n_plus_one):
    with no_n_plus_one(DB.sync_engine), DB.Session() as session:
        for user in session.scalars(select(User).limit(4)):
            user.posts
"""


def _pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("route", ["-p", "conftest"])
def test_the_plugin_gives_tests_both_fixtures(tmp_path: Path, route: str, sqlite_db: Any) -> None:
    (tmp_path / "test_plugin.py").write_text(textwrap.dedent(_TEST))
    if route == "conftest":
        (tmp_path / "conftest.py").write_text('pytest_plugins = ["course_lib.pytest_budgets"]\n')
        done = _pytest(tmp_path)
    else:
        done = _pytest(tmp_path, "-p", "course_lib.pytest_budgets")
    out = done.stdout
    assert "2 failed, 1 passed" in out, out
    assert "StatementBudgetExceeded: 3 statements, over the budget of 1:" in out
    assert "test_plugin.py:17 in test_over_budget()" in out
    assert "NPlusOneDetected: 1 N+1 pattern(s)" in out
