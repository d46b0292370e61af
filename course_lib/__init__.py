"""course_lib: the shared machinery of the SQLAlchemy Performance Workbook.

A notebook's setup is one call, and every measurement is one more::

    import course_lib as cl
    course = cl.setup()
    with cl.count_statements(course.sqlite) as log:
        ...
    cl.bar_chart(cl.compare([lazy, eager], course.backends, n=200))
"""

from .course import Course, setup, short_errors
from .exercises import CheckResult, acheck, check
from .explain import Plan, aexplain, explain
from .measure import (
    StatementLog,
    Timing,
    abenchmark,
    acompare,
    apeak_memory,
    ascaling,
    benchmark,
    compare,
    count_statements,
    peak_memory,
    round_trip_ms,
    scaling,
    simulate_round_trip,
    speedup,
)
from .plots import bar_chart, scaling_chart
from .settings import CourseConfigError

__all__ = [
    "CheckResult",
    "Course",
    "CourseConfigError",
    "Plan",
    "StatementLog",
    "Timing",
    "abenchmark",
    "acheck",
    "acompare",
    "aexplain",
    "apeak_memory",
    "ascaling",
    "bar_chart",
    "benchmark",
    "check",
    "compare",
    "count_statements",
    "explain",
    "peak_memory",
    "round_trip_ms",
    "scaling",
    "scaling_chart",
    "setup",
    "short_errors",
    "simulate_round_trip",
    "speedup",
]
