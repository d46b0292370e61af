"""Where the course keeps its files, which scale and backends a learner chose, and the one error.

Choices come, in order, from environment variables (``COURSE_SCALE``,
``COURSE_BACKENDS``), then from ``.course/settings.json`` (written by the picker in
notebook 00), then from the defaults in ``data/scales.toml``.

>>> choose_scale("small").name
'small'
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
BACKEND_NAMES = ("sqlite", "postgresql")


class CourseConfigError(RuntimeError):
    """A configuration problem, explained in one line that names the fix.

    Notebooks show only this line, not a traceback (see :func:`course_lib.course.setup`).
    """


_writable: set[Path] = set()


def data_dir() -> Path:
    """The git-ignored folder holding databases, embedded servers and settings.

    ``COURSE_DATA_DIR`` overrides it; the default is ``.course/`` at the repository root.
    A folder that cannot be created or written raises :class:`CourseConfigError` (one line).
    """
    raw = os.environ.get("COURSE_DATA_DIR")
    path = Path(raw) if raw else REPO_ROOT / ".course"
    if path not in _writable or not path.is_dir():
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):  # a folder can exist and still refuse files
                pass
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
            if exc.errno == errno.EEXIST or (path.exists() and not path.is_dir()):
                reason = "it is a file, not a folder"
            if raw:
                raise CourseConfigError(
                    f"COURSE_DATA_DIR={raw} cannot hold the course's files ({reason}): set "
                    "COURSE_DATA_DIR to a folder you can write, or unset it to use .course/."
                ) from None
            raise CourseConfigError(
                f"The course's data folder .course/ cannot be written ({reason}): make the "
                "repository folder writable, or set COURSE_DATA_DIR to a folder you can write."
            ) from None
        _writable.add(path)
    return path


def display_path(path: Path) -> str:
    """A path as a learner should see it: relative to the repository, never absolute.

    >>> display_path(REPO_ROOT / ".course" / "x.sqlite")
    '.course/x.sqlite'
    """
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return f"$COURSE_DATA_DIR/{path.name}" if path.parent == data_dir() else path.name


@dataclass(frozen=True)
class Scale:
    """How many rows of each kind a dataset has."""

    name: str
    users: int
    posts_per_user: int
    comments_per_post: int
    tags: int
    tags_per_post: int
    dealerships: int
    cars_per_dealership: int
    body_chars: int

    @property
    def posts(self) -> int:
        """Total posts."""
        return self.users * self.posts_per_user

    @property
    def comments(self) -> int:
        """Total comments."""
        return self.posts * self.comments_per_post

    @property
    def cars(self) -> int:
        """Total cars."""
        return self.dealerships * self.cars_per_dealership


@cache
def _scales_file() -> dict:
    with open(REPO_ROOT / "data" / "scales.toml", "rb") as fh:
        return tomllib.load(fh)


def scales() -> dict[str, Scale]:
    """Every named scale, smallest first."""
    return {name: Scale(name=name, **spec) for name, spec in _scales_file()["scales"].items()}


def seed() -> int:
    """The generator seed every backend uses."""
    return int(_scales_file()["seed"])


def settings_file() -> Path:
    """Where notebook 00's picker saves the learner's choice."""
    return data_dir() / "settings.json"


def _reset_hint() -> str:
    return f"delete {display_path(settings_file())} or pick again in notebook 00"


def _saved(*, strict: bool = True) -> dict:
    """The saved choice; a broken file raises, naming the file and how to reset it.

    ``strict=False`` (used when saving a new choice over it) reads a broken file as empty.
    """
    path = settings_file()
    try:
        saved = json.loads(path.read_text())
        problem = None if isinstance(saved, dict) else f"holds a JSON {type(saved).__name__}"
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        saved, problem = {}, f"is not valid JSON (line {exc.lineno})"
    except (OSError, UnicodeDecodeError) as exc:
        saved, problem = {}, f"cannot be read ({type(exc).__name__})"
    if problem is None:
        return saved
    if not strict:
        return {}
    raise CourseConfigError(
        f"The saved settings file {display_path(path)} {problem}, not an object like "
        f'{{"scale": "small"}}: {_reset_hint()}.'
    )


def save_choice(*, scale: str | None = None, backends: list[str] | None = None) -> Path:
    """Remember a learner's scale and backends for every notebook (environment variables win).

    A broken settings file is replaced, so picking again in notebook 00 repairs it.
    """
    saved = _saved(strict=False)
    if scale is not None:
        saved["scale"] = lookup_scale(scale).name
    if backends is not None:
        saved["backends"] = choose_backends(backends)
    path = settings_file()
    path.write_text(json.dumps(saved, indent=2))
    return path


def lookup_scale(name: str, source: str = "scale", *, saved: bool = False) -> Scale:
    """The scale called ``name`` in data/scales.toml (no environment, no saved choice)."""
    known = scales()
    if not isinstance(name, str) or name not in known:
        where, fix = (
            (f" saved in {display_path(settings_file())}", f"; or {_reset_hint()}")
            if saved
            else ("", "")
        )
        raise CourseConfigError(
            f"Unknown {source} {name!r}{where}: choose one of {', '.join(known)} "
            f"(see data/scales.toml){fix}."
        )
    return known[name]


def choose_scale(name: str | None = None) -> Scale:
    """The scale named, or ``COURSE_SCALE``, or the saved choice, or the default.

    Call it once, where configuration enters (``setup``, a command line); pass the
    :class:`Scale` it returns down from there.
    """
    if name is not None:
        return lookup_scale(name)
    if os.environ.get("COURSE_SCALE"):
        return lookup_scale(os.environ["COURSE_SCALE"], "COURSE_SCALE")
    saved = _saved().get("scale")
    if saved is not None:
        return lookup_scale(saved, saved=True)
    return lookup_scale(_scales_file()["default"])


def choose_backends(names: list[str] | str | None = None) -> list[str]:
    """The backends named, or ``COURSE_BACKENDS`` (comma-separated), or saved, or both."""
    source, where, fix = "backends", "", ""
    if names is None and os.environ.get("COURSE_BACKENDS"):
        names, source = os.environ["COURSE_BACKENDS"], "COURSE_BACKENDS"
    if names is None:
        names = _saved().get("backends")
        if names is None:
            names = list(BACKEND_NAMES)
        else:
            where = f" saved in {display_path(settings_file())}"
            fix = f"; or {_reset_hint()}"
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                names = [repr(names)]
    if isinstance(names, str):
        names = [part.strip() for part in names.split(",") if part.strip()]
    unknown = [n for n in names if n not in BACKEND_NAMES]
    if unknown or not names:
        raise CourseConfigError(
            f"Unknown {source} {unknown or names!r}{where}: use a comma-separated subset of "
            f"{', '.join(BACKEND_NAMES)}, e.g. COURSE_BACKENDS=sqlite{fix}."
        )
    return [n for n in BACKEND_NAMES if n in names]


def scales_table() -> pd.DataFrame:
    """One row per scale: how many rows of each kind it builds."""

    return pd.DataFrame(
        [
            {
                "scale": s.name,
                "users": s.users,
                "posts": s.posts,
                "comments": s.comments,
                "tags": s.tags,
                "dealerships": s.dealerships,
                "cars": s.cars,
                "body chars": s.body_chars,
            }
            for s in scales().values()
        ]
    ).set_index("scale")
