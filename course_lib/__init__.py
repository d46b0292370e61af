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

from .claims import ClaimFailed, claim
from .course import Course, setup, short_errors
from .environment import environment_report, servers_ready
from .exercises import CheckResult, acheck, check, objects_built
from .explain import Plan, PlanNode, aexplain, analyze, explain, pause_autovacuum
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
from .navigation import course_map_table
from .plots import bar_chart, fitted_slopes, plan_tree_chart, scaling_chart
from .reading import source
from .references import check_comments_written
from .settings import CourseConfigError, scales_table
from .widgets import settings_picker

__all__ = [
    "CheckResult",
    "ClaimFailed",
    "Course",
    "CourseConfigError",
    "Plan",
    "PlanNode",
    "RoundTrip",
    "StatementLog",
    "Timing",
    "abenchmark",
    "acheck",
    "acompare",
    "added_latency",
    "aexplain",
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
    "fitted_slopes",
    "label_of",
    "objects_built",
    "pause_autovacuum",
    "peak_memory",
    "plan_tree_chart",
    "quartiles",
    "round_trip_ms",
    "scales_table",
    "scaling",
    "scaling_chart",
    "servers_ready",
    "settings_picker",
    "setup",
    "short_errors",
    "simulate_round_trip",
    "source",
    "speedup",
    "table",
]
