"""course_lib: the shared machinery of the SQLAlchemy Performance Workbook.

Notebooks reach the foundation in one way, ``cl.<name>``, and their own lesson module as
``lesson.<name>``::

    import course_lib as cl
    from course_lib.lessons import loading as lesson

    course = cl.setup()
    with cl.count_statements(course.sqlite) as log:
        ...
    cl.bar_chart(cl.compare([lazy, eager], course.backends, n=200))

Model classes are imported from :mod:`course_lib.models` (they are the schema, not calls).
A cell whose first line is ``# needs: postgresql`` runs only when PostgreSQL is in use, and
prints one line saying how to turn it on otherwise. Cells meant to raise wrap the raising
code in ``with cl.short_errors():``.
"""

from .budgets import (
    BudgetError,
    NPlusOneDetected,
    StatementBudgetExceeded,
    find_n_plus_one,
    no_n_plus_one,
    statement_budget,
    statement_shape,
)
from .claims import ClaimFailed, claim
from .course import Course, setup, short_errors
from .environment import environment_report, servers_ready
from .exercises import CheckResult, acheck, check, objects_built
from .explain import (
    Explain,
    Plan,
    PlanNode,
    Sent,
    aexplain,
    aexplain_sent,
    analyze,
    explain,
    explain_sent,
    pause_autovacuum,
    plan_from_rows,
    sent_statements,
)
from .measure import (
    RoundTrip,
    StatementLog,
    Timing,
    abenchmark,
    acompare,
    added_latency,
    apeak_memory,
    ascaling,
    benchmark,
    compare,
    count_statements,
    label_of,
    peak_memory,
    quartiles,
    round_trip_ms,
    scaling,
    simulate_round_trip,
    speedup,
    table,
)
from .metrics import EngineMetrics, histogram_quantile, instrument, statement_kind
from .navigation import course_map_table
from .plots import bar_chart, fitted_slopes, plan_tree_chart, scaling_chart
from .query_log import log_slow_queries, normalize_sql, tag_origin, top_statements
from .reading import source
from .references import check_comments_written
from .settings import CourseConfigError, scales_table
from .tracing import Traces, span_frame, tracing, waterfall_chart
from .widgets import settings_picker

__all__ = [
    "BudgetError",
    "CheckResult",
    "ClaimFailed",
    "Course",
    "CourseConfigError",
    "EngineMetrics",
    "Explain",
    "NPlusOneDetected",
    "Plan",
    "PlanNode",
    "RoundTrip",
    "Sent",
    "StatementBudgetExceeded",
    "StatementLog",
    "Timing",
    "Traces",
    "abenchmark",
    "acheck",
    "acompare",
    "added_latency",
    "aexplain",
    "aexplain_sent",
    "analyze",
    "apeak_memory",
    "ascaling",
    "bar_chart",
    "benchmark",
    "check",
    "check_comments_written",
    "claim",
    "compare",
    "count_statements",
    "course_map_table",
    "environment_report",
    "explain",
    "explain_sent",
    "find_n_plus_one",
    "fitted_slopes",
    "histogram_quantile",
    "instrument",
    "label_of",
    "log_slow_queries",
    "no_n_plus_one",
    "normalize_sql",
    "objects_built",
    "pause_autovacuum",
    "peak_memory",
    "plan_from_rows",
    "plan_tree_chart",
    "quartiles",
    "round_trip_ms",
    "scales_table",
    "scaling",
    "scaling_chart",
    "sent_statements",
    "servers_ready",
    "settings_picker",
    "setup",
    "short_errors",
    "simulate_round_trip",
    "source",
    "span_frame",
    "speedup",
    "statement_budget",
    "statement_kind",
    "statement_shape",
    "table",
    "tag_origin",
    "top_statements",
    "tracing",
    "waterfall_chart",
]
