"""One call that gives a notebook its data: ``course = setup()``.

>>> course = setup(scale="tiny", backends="sqlite")
>>> course.sqlite.name
'sqlite'

``setup`` picks the scale and backends (arguments, else ``COURSE_SCALE`` /
``COURSE_BACKENDS``, else the choice saved in notebook 00, else small on both), makes sure
each backend holds that scale's dataset (building it only when missing), and returns a
:class:`Course`. In IPython it also makes :class:`CourseConfigError` show as one line.
"""

from __future__ import annotations

import re
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy.exc import StatementError

from . import needs
from .backends import Backend, scratch_sibling
from .data import build, dataset, expected_rows, reset_schema, row_counts
from .settings import CourseConfigError, Scale, choose_backends, choose_scale, seed


@dataclass
class Course:
    """The backends a notebook works with, all holding the same dataset."""

    scale: Scale
    backends: list[Backend]

    def __getitem__(self, name: str) -> Backend:
        for db in self.backends:
            if db.name == name:
                return db
        raise CourseConfigError(
            f"Backend {name!r} is not in use here: run setup(backends='sqlite,postgresql') "
            "or set COURSE_BACKENDS."
        )

    @property
    def sqlite(self) -> Backend:
        """The SQLite backend."""
        return self["sqlite"]

    @property
    def postgres(self) -> Backend:
        """The PostgreSQL backend."""
        return self["postgresql"]

    @property
    def names(self) -> list[str]:
        """Backend names in use, SQLite first."""
        return [db.name for db in self.backends]

    def rebuild(self, *, progress: bool = True) -> pd.DataFrame:
        """Rebuild the dataset on every backend, with a progress bar; one row each.

        Another kernel reading the dataset meanwhile sees the old rows or the new ones,
        never a half-built dataset (see :mod:`course_lib.data`).
        """
        reports = [build(db, self.scale, force=True, progress=progress) for db in self.backends]
        return pd.DataFrame(
            [
                {
                    "backend": r.backend,
                    "database": r.database,
                    "rows": sum(r.rows.values()),
                    "seconds": round(r.seconds, 2),
                }
                for r in reports
            ]
        )

    def scratch(self, name: str, *, filled: bool = False) -> Course:
        """Course tables in scratch databases named after ``name``, on the same backends.

        Notebooks that write (bulk inserts, upserts, deletes, new indexes) work there, so the
        shared dataset stays exactly as built. Each call starts afresh: empty tables, or with
        ``filled=True`` a copy of this scale's dataset (for changing the schema of real data).
        The databases are this kernel's own (``scratch_<name>_<scale>_<checkout>_p<pid>``),
        so other kernels and other checkouts on a shared server never meet them, and they
        are dropped when the kernel exits.
        """
        dbs = []
        for db in self.backends:
            copy = scratch_sibling(db, name, self.scale.name)
            if filled:
                build(copy, self.scale, force=True, progress=False)
            else:
                reset_schema(copy)
            dbs.append(copy)
        return Course(self.scale, dbs)

    def row_counts(self) -> pd.DataFrame:
        """Rows per table on each backend, counted now, and whether all backends agree."""
        frame = pd.DataFrame({db.name: row_counts(db) for db in self.backends})
        frame["expected"] = pd.Series(expected_rows(self.scale))
        frame["all equal"] = frame.nunique(axis=1).eq(1)
        return frame

    def describe(self) -> pd.DataFrame:
        """Where each backend's data lives (varies by machine: not for checked output)."""
        return pd.DataFrame(
            [
                {
                    "backend": db.name,
                    "database": db.database,
                    "source": db.source,
                    "async driver": db.async_url.get_driver_name(),
                    "sync driver": db.sync_url.get_driver_name(),
                }
                for db in self.backends
            ]
        )

    def __repr__(self) -> str:
        rows = expected_rows(self.scale)
        counts = ", ".join(f"{n:,} {table}" for table, n in rows.items() if table != "post_tags")
        return (
            f"Scale {self.scale.name!r} (seed {seed()}): {counts}\n"
            f"Backends: {', '.join(self.names)}"
        )


def _shell() -> Any:
    """The running IPython shell, or None outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython ships with the course
        return None
    return get_ipython()


def _one_line_errors() -> None:
    """In IPython, show CourseConfigError as its message, not a traceback."""
    shell = _shell()
    if shell is None:
        return

    def handler(
        _shell: Any, _etype: type, value: BaseException, _tb: Any, tb_offset: Any = None
    ) -> None:
        print(f"CourseConfigError: {value}", file=sys.stderr)

    shell.set_custom_exc((CourseConfigError,), handler)


def setup(scale: str | None = None, backends: str | list[str] | None = None) -> Course:
    """Backends holding ``scale``'s dataset, built if needed (see the module docstring).

    Cells that start with ``# needs: postgresql`` (or ``sqlite``, ``redis``) then run only
    when that is in use, and print one line saying how to turn it on otherwise.
    """
    _one_line_errors()
    chosen = choose_scale(scale)  # resolved once, here: everything below takes this Scale
    names = choose_backends(backends)
    course = Course(chosen, [dataset(name, chosen) for name in names])
    needs.install(names + (["redis"] if needs.redis_available() else []), _shell())
    return course


def _minimal_traceback_for_this_cell() -> None:
    """In IPython, report the current cell's error as type and message only, then restore."""
    shell = _shell()
    if shell is None:
        return
    formatter = shell.InteractiveTB
    previous = formatter.mode
    formatter.set_mode("Minimal")

    def restore(*_args: Any) -> None:
        formatter.set_mode(previous)
        shell.events.unregister("post_run_cell", restore)

    shell.events.register("post_run_cell", restore)


def free_frames(error: BaseException | None) -> None:
    """Clear the frames of an error and of every error it wraps, freeing what they hold now."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if current.__traceback__ is not None:
            traceback.clear_frames(current.__traceback__)  # skips frames still running
        orig = getattr(current, "orig", None)
        pending += [current.__cause__, current.__context__]
        if isinstance(orig, BaseException):
            pending.append(orig)


def _without_path(exc: ImportError) -> None:
    """Drop the file path Python appends to "cannot import name" (a path of this machine)."""
    cleaned = re.sub(r"\s*\([^()]*[/\\][^()]*\)$", "", str(exc))
    exc.msg = cleaned
    exc.args = (cleaned,)


@contextmanager
def short_errors(limit: int = 160) -> Iterator[None]:
    """Show an error raised in the block as one short message, and leave nothing behind.

    A statement with 30,000 bind parameters is hundreds of kilobytes of SQL, and
    SQLAlchemy's error message repeats all of it, under a long traceback through
    SQLAlchemy's internals. This trims the SQL in a ``StatementError`` to its first
    ``limit`` characters, drops the file path from an ``ImportError`` ("cannot import name
    'x' from 'y' (/path/to/y.py)": a path of this machine) and, in IPython, reports this
    cell's error as its type and message only (the traceback mode is restored after the
    cell). It also frees what the error's frames hold: when a lazy load raises
    ``MissingGreenlet`` under aiosqlite, the driver's cursor coroutine is left un-awaited in
    a frame, and Python would warn about it (with a path of this machine) when it is
    collected, cells later. The exception itself is
    re-raised unchanged otherwise.

    >>> with short_errors():
    ...     raise ValueError("boom")
    Traceback (most recent call last):
    ValueError: boom
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning
        )
        try:
            yield
        except StatementError as exc:
            if exc.statement and len(exc.statement) > limit:
                exc.statement = exc.statement[:limit] + " …"
            free_frames(exc)
            _minimal_traceback_for_this_cell()
            raise
        except ImportError as exc:
            _without_path(exc)
            free_frames(exc)
            _minimal_traceback_for_this_cell()
            raise
        except Exception as exc:
            free_frames(exc)
            _minimal_traceback_for_this_cell()
            raise
