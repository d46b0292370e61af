"""Claims a notebook's text makes about measurements, asserted where they are measured.

>>> claim("two is more than one", 2 > 1)
True

``claim(text, held)`` asserts ``held`` (a bool, or a pandas Series/array that must hold
everywhere, e.g. one value per backend) and names the claim when it fails. The
rank-stability benchmark (``make bench``, ``scripts/rank_stability.py``) executes each
notebook several times with ``COURSE_CLAIMS_LOG`` set: every claim is then appended to that
file (one JSON line each) and, with ``COURSE_CLAIMS_RECORD_ONLY=1``, a claim that does not
hold is recorded instead of raising, so one run reports every claim.

Only timing claims (rankings, ratios with margins) go through :func:`claim`; counts,
SQL and results are exact and use plain ``assert``.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["ClaimFailed", "claim"]


class ClaimFailed(AssertionError):
    """A claim the notebook's text makes did not hold in this run."""


def _all(held: Any) -> bool:
    """True when ``held`` holds everywhere: a bool, or every cell of a Series or DataFrame."""
    if hasattr(held, "to_numpy"):
        return bool(held.to_numpy().all())
    if hasattr(held, "all"):
        return bool(held.all())
    return bool(held)


#: Below this many rows, fixed costs hide most effects: no timing ranking is claimed.
MIN_ROWS = 1_000


def claim(
    text: str,
    held: Any,
    *,
    detail: Any = None,
    rows: int | None = None,
    min_rows: int = MIN_ROWS,
) -> bool | None:
    """Assert that ``held`` is true everywhere; ``text`` is the claim as the prose states it.

    ``detail`` (for example the ratios per backend) is shown when the claim fails. With
    ``rows`` (how many rows the measurement moved), a claim on fewer than ``min_rows`` is
    not made: one line says so and ``None`` is returned, so a notebook never asserts at the
    ``tiny`` scale what only holds with real amounts of data.

    >>> claim("more rows take longer", True, rows=60)
    Not claimed with 60 rows (timing claims need at least 1,000): more rows take longer
    """
    if rows is not None and rows < min_rows:
        print(f"Not claimed with {rows:,} rows (timing claims need at least {min_rows:,}): {text}")
        return None
    ok = _all(held)
    log = os.environ.get("COURSE_CLAIMS_LOG")
    if log:
        record = {
            "notebook": os.environ.get("COURSE_CLAIMS_NOTEBOOK", ""),
            "claim": text,
            "held": ok,
        }
        with open(log, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
        if os.environ.get("COURSE_CLAIMS_RECORD_ONLY") == "1":
            return ok
    if not ok:
        shown = held if detail is None else detail
        raise ClaimFailed(f"{text}: did not hold in this run ({shown!r})")
    return ok
