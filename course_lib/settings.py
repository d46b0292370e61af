"""Where the course keeps its files, which scale and backends a learner chose, and the one error.

Choices come, in order, from environment variables (``COURSE_SCALE``,
``COURSE_BACKENDS``), then from ``.course/settings.json`` (written by the picker in
notebook 00), then from the defaults in ``data/scales.toml``.

>>> choose_scale("small").name
'small'
"""

from __future__ import annotations

import json
import os
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


def data_dir() -> Path:
    """The git-ignored folder holding databases, embedded servers and settings.

    ``COURSE_DATA_DIR`` overrides it; the default is ``.course/`` at the repository root.
    """
    path = Path(os.environ.get("COURSE_DATA_DIR") or REPO_ROOT / ".course")
    path.mkdir(parents=True, exist_ok=True)
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


def _saved() -> dict:
    path = data_dir() / "settings.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def save_choice(*, scale: str | None = None, backends: list[str] | None = None) -> Path:
    """Remember a learner's scale and backends for every notebook (environment variables win)."""
    saved = _saved()
    if scale is not None:
        saved["scale"] = choose_scale(scale).name
    if backends is not None:
        saved["backends"] = choose_backends(backends)
    path = data_dir() / "settings.json"
    path.write_text(json.dumps(saved, indent=2))
    return path


def choose_scale(name: str | None = None) -> Scale:
    """The scale named, or ``COURSE_SCALE``, or the saved choice, or the default."""
    source = "scale"
    if name is None and os.environ.get("COURSE_SCALE"):
        name, source = os.environ["COURSE_SCALE"], "COURSE_SCALE"
    if name is None:
        name = _saved().get("scale") or _scales_file()["default"]
    known = scales()
    if name not in known:
        raise CourseConfigError(
            f"Unknown {source} {name!r}: choose one of {', '.join(known)} (see data/scales.toml)."
        )
    return known[name]


def choose_backends(names: list[str] | str | None = None) -> list[str]:
    """The backends named, or ``COURSE_BACKENDS`` (comma-separated), or saved, or both."""
    source = "backends"
    if names is None and os.environ.get("COURSE_BACKENDS"):
        names, source = os.environ["COURSE_BACKENDS"], "COURSE_BACKENDS"
    if names is None:
        names = _saved().get("backends") or list(BACKEND_NAMES)
    if isinstance(names, str):
        names = [part.strip() for part in names.split(",") if part.strip()]
    unknown = [n for n in names if n not in BACKEND_NAMES]
    if unknown or not names:
        raise CourseConfigError(
            f"Unknown {source} {unknown or names!r}: use a comma-separated subset of "
            f"{', '.join(BACKEND_NAMES)}, e.g. COURSE_BACKENDS=sqlite."
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
