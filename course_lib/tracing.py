"""OpenTelemetry traces of SQLAlchemy statements, kept in memory and drawn as a waterfall.

>>> from sqlalchemy import text
>>> from course_lib.backends import sqlite
>>> db = sqlite("course_tiny")
>>> with tracing(db.sync_engine) as traces:
...     with traces.request("GET /users"), db.Session() as session:
...         _ = session.scalar(text("SELECT count(*) FROM users"))
>>> traces.frame()[["depth", "name"]].values.tolist()
[[0, 'GET /users'], [1, 'connect'], [1, 'SELECT course_tiny.sqlite']]

:func:`tracing` runs the maintained instrumentation,
``SQLAlchemyInstrumentor().instrument(engine=..., tracer_provider=...)``: one CLIENT span
per statement (``before_cursor_execute`` to ``after_cursor_execute``, with the SQL in
``db.statement``), and a ``connect`` span per ``Engine.connect()``. Spans go to an
``InMemorySpanExporter`` of a ``TracerProvider`` of its own (the process-wide provider is
left alone). The instrumentor is a process-wide singleton that also patches
``create_engine``, and it refuses to instrument twice: a second ``instrument()`` call
while instrumented only logs "Attempting to instrument while already instrumented", so
the first call's listeners keep sending spans to the first call's provider, and the
second call's exporter stays empty. :func:`tracing` therefore undoes any earlier
instrumentation first (a block an interrupted cell left open) and always uninstruments on
exit, so a re-run cell gets its own spans.

Version 0.66b2 declares ``sqlalchemy < 2.1`` and, on 2.1, instruments nothing (it logs
why: :func:`dependency_conflict`) unless asked with ``skip_dep_check=True``, which
:func:`tracing` passes; the course's tests check the spans it then produces.

In production, a ``BatchSpanProcessor(OTLPSpanExporter(...))`` replaces the in-memory
exporter and sends spans to an OpenTelemetry Collector, which forwards them to a tracing
backend (Jaeger, Tempo, ...); the instrumentation is the same.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from opentelemetry.instrumentation.dependencies import get_dependency_conflicts
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Tracer
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from .backends import Backend
from .measure import sync_engines

__all__ = ["Traces", "dependency_conflict", "span_frame", "tracing", "waterfall_chart"]

Target = Backend | Engine | AsyncEngine


@dataclass
class Traces:
    """What :func:`tracing` yields: a tracer for the application's own spans, and the spans."""

    provider: TracerProvider
    exporter: InMemorySpanExporter
    tracer: Tracer

    @contextmanager
    def request(self, name: str, **attributes: Any) -> Iterator[Any]:
        """A SERVER span around one request: the statements inside become its children."""
        with self.tracer.start_as_current_span(
            name, kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            yield span

    def spans(self) -> Sequence[ReadableSpan]:
        """Every finished span so far, in the order they ended."""
        return self.exporter.get_finished_spans()

    def frame(self) -> pd.DataFrame:
        """The finished spans as a frame: see :func:`span_frame`."""
        return span_frame(self.spans())

    def clear(self) -> None:
        """Forget the spans recorded so far."""
        self.exporter.clear()


def span_frame(spans: Sequence[ReadableSpan]) -> pd.DataFrame:
    """One row per span, in start order within each trace.

    Columns: ``trace`` (1, 2, ... in the order the traces started), ``request`` (the root
    span's name), ``depth`` (0 for the root), ``name``, ``kind``, ``start_ms`` (since the
    trace's root span started), ``duration_ms`` and ``statement`` (``db.statement``).
    """
    columns = ["trace", "request", "depth", "name", "kind", "start_ms", "duration_ms"]
    if not spans:
        return pd.DataFrame(columns=[*columns, "statement"])
    by_id = {span.context.span_id: span for span in spans}

    def depth(span: ReadableSpan) -> int:
        level = 0
        while span.parent is not None and span.parent.span_id in by_id:
            span, level = by_id[span.parent.span_id], level + 1
        return level

    def root(span: ReadableSpan) -> ReadableSpan:
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
        return span

    roots = sorted({id(root(s)): root(s) for s in spans}.values(), key=lambda s: s.start_time)
    number = {id(r): i for i, r in enumerate(roots, 1)}
    rows = []
    for span in sorted(spans, key=lambda s: s.start_time):
        top = root(span)
        attributes = span.attributes or {}
        rows.append(
            {
                "trace": number[id(top)],
                "request": top.name,
                "depth": depth(span),
                "name": _without_paths(span.name) if span.kind is SpanKind.CLIENT else span.name,
                "kind": span.kind.name,
                "start_ms": (span.start_time - top.start_time) / 1e6,
                "duration_ms": (span.end_time - span.start_time) / 1e6,
                "statement": attributes.get("db.statement", attributes.get("db.query.text", "")),
            }
        )
    frame = pd.DataFrame(rows)
    return frame.sort_values(["trace", "start_ms"], kind="stable").reset_index(drop=True)


def _without_paths(name: str) -> str:
    """A span name with file paths cut to the file name: on SQLite the instrumentation names
    statement spans after the database, which is the full path of its file."""
    return " ".join(
        Path(word).name if "/" in word or "\\" in word else word for word in name.split()
    )


@contextmanager
def tracing(target: Target) -> Iterator[Traces]:
    """Trace every statement ``target`` sends while the block runs (see the module docstring)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = SQLAlchemyInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:  # a block left open by an interrupted cell
        instrumentor.uninstrument()
    # skip_dep_check: the package declares "sqlalchemy < 2.1" (see dependency_conflict)
    engines = sync_engines(target)
    instrumentor.instrument(engines=engines, tracer_provider=provider, skip_dep_check=True)
    try:
        yield Traces(provider, exporter, provider.get_tracer("course_lib.tracing"))
    finally:
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
        provider.shutdown()


def dependency_conflict() -> str | None:
    """Why ``SQLAlchemyInstrumentor().instrument()`` refuses this SQLAlchemy, or None.

    The instrumentation declares the SQLAlchemy versions it was released for; outside
    them, ``instrument()`` logs this message and instruments nothing, unless called with
    ``skip_dep_check=True`` (which :func:`tracing` does: its spans are checked by tests).
    """
    wanted = SQLAlchemyInstrumentor().instrumentation_dependencies()
    conflict = get_dependency_conflicts(wanted)
    return None if conflict is None else str(conflict)


def waterfall_chart(frame: pd.DataFrame, title: str, *, ax: Any = None) -> Figure:
    """One horizontal bar per span on a time axis (ms since the request began), per trace.

    ``frame`` is :func:`span_frame`'s output for one or more traces; each trace gets its own
    panel, side by side, sharing the time axis so their lengths compare at a glance.
    """
    traces = list(dict.fromkeys(frame["trace"]))
    if ax is None:
        fig, axes = plt.subplots(
            1, len(traces), figsize=(5.5 * len(traces), 3.5), sharex=True, squeeze=False
        )
        axes = list(axes[0])
    else:
        fig, axes = ax.figure, [ax]
    colours = {"SERVER": "#4c72b0", "CLIENT": "#dd8452", "INTERNAL": "#55a868"}
    for axis, trace in zip(axes, traces, strict=False):
        spans = frame[frame["trace"] == trace].reset_index(drop=True)
        for row in spans.itertuples():
            axis.barh(
                row.Index,
                max(row.duration_ms, 0.01),
                left=row.start_ms,
                color=colours.get(row.kind, "grey"),
                edgecolor="black",
                linewidth=0.3,
            )
        labels = ["  " * d + n for d, n in zip(spans["depth"], spans["name"], strict=True)]
        axis.set_yticks(range(len(spans)), labels, fontsize=7)
        axis.invert_yaxis()
        axis.set_xlabel("ms since the request began")
        axis.set_title(f"{spans['request'].iloc[0]}: {len(spans)} spans", fontsize=9)
        axis.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig
