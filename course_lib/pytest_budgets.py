"""pytest fixtures for statement budgets and N+1 checks (see :mod:`course_lib.budgets`).

Enable the plugin in one of two ways (no install step, no entry point):

- on the command line: ``pytest -p course_lib.pytest_budgets``;
- or in your top-level ``conftest.py``: ``pytest_plugins = ["course_lib.pytest_budgets"]``.

Then ask for the fixtures in a test, as pytest-django's ``django_assert_max_num_queries``::

    def test_users_page(engine, statement_budget):
        with statement_budget(engine, max_statements=2):
            users_page(engine)

    def test_report_has_no_n_plus_one(engine, no_n_plus_one):
        with no_n_plus_one(engine, threshold=2):
            dealership_report(engine)

Both fail the test with an ``AssertionError`` whose message lists each statement shape,
its count and the line of your code that sent it. ``engine`` is an ``Engine``, an
``AsyncEngine`` (watched through ``.sync_engine``) or a course ``Backend``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from . import budgets

__all__ = ["find_n_plus_one", "no_n_plus_one", "statement_budget"]


@pytest.fixture
def statement_budget() -> Callable[..., Any]:
    """``with statement_budget(engine, max_statements=3): ...`` fails when it sends more."""
    return budgets.statement_budget


@pytest.fixture
def no_n_plus_one() -> Callable[..., Any]:
    """``with no_n_plus_one(engine, threshold=2): ...`` fails on a repeated statement shape."""
    return budgets.no_n_plus_one


@pytest.fixture
def find_n_plus_one() -> Callable[..., Any]:
    """``with find_n_plus_one(engine) as found: ...``, then assert on ``found.findings``."""
    return budgets.find_n_plus_one
