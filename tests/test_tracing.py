"""Tests for course_lib.tracing: OpenTelemetry spans in memory, a frame, a waterfall."""

from __future__ import annotations

import pytest
import sqlalchemy
from matplotlib.figure import Figure
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from packaging.version import Version
from sqlalchemy import create_engine, select, text

from course_lib.backends import Backend
from course_lib.models import User
from course_lib.tracing import dependency_conflict, span_frame, tracing, waterfall_chart


@pytest.fixture(params=["sqlite_db", "pg_service"])
def db(request: pytest.FixtureRequest) -> Backend:
    """The tiny dataset on SQLite and on the PostgreSQL service."""
    return request.getfixturevalue(request.param)


def test_sync_statements_are_children_of_the_request(db: Backend) -> None:
    with (
        tracing(db.sync_engine) as traces,
        traces.request("GET /users", route="/users"),
        db.Session() as session,
    ):
        session.scalars(select(User).limit(3)).all()
        session.scalar(text("SELECT 1"))
    frame = traces.frame()
    assert frame["depth"].tolist() == [0, 1, 1, 1]
    assert frame["name"].tolist()[:2] == ["GET /users", "connect"]
    assert frame["kind"].tolist() == ["SERVER", "CLIENT", "CLIENT", "CLIENT"]
    statements = frame[frame["name"] != "connect"]["statement"].tolist()[1:]
    assert statements[0].startswith("SELECT users.id") and statements[1] == "SELECT 1"
    assert (frame["start_ms"] >= 0).all() and (frame["duration_ms"] >= 0).all()
    assert not any("/" in name for name in frame["name"].iloc[1:])  # no database file path


def test_async_statements_are_children_too(db: Backend) -> None:
    async def page() -> None:
        async with db.AsyncSession() as session:
            users = (await session.scalars(select(User).order_by(User.id).limit(3))).all()
            for user in users:
                await user.awaitable_attrs.posts

    async def traced() -> None:
        with traces.request("GET /users"):
            await page()

    with tracing(db.engine) as traces:
        db.run(traced)
    frame = traces.frame()
    assert len(frame) == 1 + 1 + 1 + 3  # request, connect, the users, one per user
    assert set(frame["trace"]) == {1} and (frame["depth"].iloc[1:] == 1).all()


def test_a_second_instrument_call_is_refused(
    sqlite_db: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """Why tracing() uninstruments: without it, a re-run's spans go to the first exporter."""
    engine = create_engine(sqlite_db.sync_url)
    exporters = []
    try:
        for _ in range(2):  # a cell run twice, instrumenting without uninstrumenting
            exporter = InMemorySpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            SQLAlchemyInstrumentor().instrument(
                engines=[engine], tracer_provider=provider, skip_dep_check=True
            )
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            exporters.append(exporter)
        assert "Attempting to instrument while already instrumented" in caplog.text
        assert len(engine.dispatch.before_cursor_execute) == 1  # nothing stacked
        first, second = (len(e.get_finished_spans()) for e in exporters)
        assert (first, second) == (4, 0)  # both runs' connect + statement, in the first
    finally:
        SQLAlchemyInstrumentor().uninstrument()
        engine.dispose()


def test_rerunning_gets_its_own_spans(sqlite_db: Backend) -> None:
    counts = []
    for _ in range(2):
        with (
            tracing(sqlite_db.sync_engine) as traces,
            traces.request("r"),
            sqlite_db.Session() as session,
        ):
            session.scalar(text("SELECT 1"))
        counts.append(len(traces.spans()))
    assert counts == [3, 3]
    assert not SQLAlchemyInstrumentor().is_instrumented_by_opentelemetry
    SQLAlchemyInstrumentor().instrument(skip_dep_check=True)  # left on by an interrupted cell
    with (
        tracing(sqlite_db.sync_engine) as traces,
        traces.request("r"),
        sqlite_db.Session() as session,
    ):
        session.scalar(text("SELECT 1"))
    assert len(traces.spans()) == 3
    assert not SQLAlchemyInstrumentor().is_instrumented_by_opentelemetry


def test_nothing_is_traced_after_the_block(sqlite_db: Backend) -> None:
    with tracing(sqlite_db.sync_engine) as traces:
        pass
    with sqlite_db.Session() as session:
        session.scalar(text("SELECT 1"))
    assert traces.spans() == ()


def test_the_declared_sqlalchemy_range_is_reported() -> None:
    message = dependency_conflict()
    if Version(sqlalchemy.__version__) >= Version("2.1"):
        # 0.66b2 declares "sqlalchemy < 2.1": if a release widens it, this test says so
        assert message is not None and "sqlalchemy" in message
    else:
        assert message is None


def test_frames_of_several_traces_and_the_waterfall(sqlite_db: Backend) -> None:
    with tracing(sqlite_db.sync_engine) as traces:
        for route in ("first", "second"):
            with traces.request(route), sqlite_db.Session() as session:
                session.scalar(text("SELECT 1"))
    frame = span_frame(traces.spans())
    assert frame.groupby("trace")["request"].first().tolist() == ["first", "second"]
    figure = waterfall_chart(frame, "two requests")
    assert isinstance(figure, Figure)
    axes = [ax for ax in figure.axes if ax.patches]
    assert [len(ax.patches) for ax in axes] == [3, 3]
    traces.clear()
    assert span_frame(traces.spans()).empty
