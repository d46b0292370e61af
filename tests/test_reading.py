"""Tests for course_lib.reading: a function's source as one highlighted block."""

from __future__ import annotations

from course_lib.reading import source


def first(x: int) -> int:
    """Double ``x``."""
    return 2 * x


def second() -> str:
    return "two"


def test_source_shows_every_function_in_one_python_block() -> None:
    """Both functions, in order, inside a single fenced Python block."""
    text = source(first, second).data
    assert text.startswith("```python\ndef first(x: int) -> int:")
    assert text.rstrip().endswith('return "two"\n```')
    assert text.count("```") == 2
    assert text.index("def first") < text.index("def second")
