"""Course navigation generated from ``data/course_map.toml`` and the notebooks themselves.

Every written notebook gets a markdown cell tagged ``navigation`` as its first and last
cell (previous notebook, contents, next notebook), and ``notebooks/index.md`` lists the
whole course. Regenerate both with::

    python -m course_lib.navigation          # rewrite what is stale
    python -m course_lib.navigation --check  # exit 1 and list stale files, write nothing
"""

from __future__ import annotations

import argparse
import copy
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "NAV_TAG",
    "REPO_ROOT",
    "NotebookEntry",
    "course_map",
    "course_map_table",
    "is_navigation_cell",
    "main",
    "markdown_headings",
    "nav_line",
    "notebook_title",
    "render_index",
    "update_notebooks",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
NAV_TAG = "navigation"
COURSE_TITLE = "SQLAlchemy Performance Workbook"
_MAP_FILE = Path("data") / "course_map.toml"
_NOTEBOOK_DIR = "notebooks"
_INDEX_FILE = "index.md"
_REQUIRED_KEYS = ("number", "slug", "title", "summary", "minutes")
_FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class NotebookEntry:
    """One planned notebook from the course map; ``path`` is None until it is written.

    >>> NotebookEntry("04", "04_pagination", "Pagination", "Keyset beats OFFSET", 40).path is None
    True
    """

    number: str
    slug: str
    title: str
    summary: str
    minutes: int
    path: Path | None = None

    @property
    def filename(self) -> str:
        """File name of the notebook, e.g. ``"04_pagination.ipynb"``."""
        return f"{self.slug}.ipynb"


def _root(root: Path | str | None) -> Path:
    return REPO_ROOT if root is None else Path(root)


def course_map(root: Path | str | None = None) -> list[NotebookEntry]:
    """Read ``data/course_map.toml`` under ``root`` (default: the repo) in course order.

    >>> [entry.slug for entry in course_map()][0]
    '00_start_here'
    """
    base = _root(root)
    with (base / _MAP_FILE).open("rb") as fh:
        tables = tomllib.load(fh).get("notebook", [])
    entries: list[NotebookEntry] = []
    for position, table in enumerate(tables):
        missing = [key for key in _REQUIRED_KEYS if key not in table]
        if missing:
            raise ValueError(f"{_MAP_FILE} notebook #{position}: missing keys {missing}")
        number, slug = str(table["number"]), str(table["slug"])
        if not re.fullmatch(r"\d\d", number) or not slug.startswith(f"{number}_"):
            raise ValueError(f"{_MAP_FILE}: slug {slug!r} must start with number {number!r}")
        notebook = base / _NOTEBOOK_DIR / f"{slug}.ipynb"
        entries.append(
            NotebookEntry(
                number=number,
                slug=slug,
                title=str(table["title"]),
                summary=str(table["summary"]),
                minutes=int(table["minutes"]),
                path=notebook if notebook.is_file() else None,
            )
        )
    numbers = [entry.number for entry in entries]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"{_MAP_FILE}: duplicate notebook numbers in {numbers}")
    return sorted(entries, key=lambda entry: entry.number)


def markdown_headings(source: str, level: int = 1) -> list[str]:
    """Headings of exactly ``level`` in a markdown string, ignoring fenced code blocks.

    >>> markdown_headings("# Title\\n```\\n# not a heading\\n```\\n## Setup", level=2)
    ['Setup']
    """
    prefix = "#" * level + " "
    headings: list[str] = []
    in_fence = False
    for line in source.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and line.startswith(prefix):
            headings.append(line[len(prefix) :].strip())
    return headings


def is_navigation_cell(cell: dict[str, Any]) -> bool:
    """True for a markdown cell tagged ``navigation``.

    >>> is_navigation_cell({"cell_type": "markdown", "metadata": {"tags": ["navigation"]}})
    True
    """
    tags = cell.get("metadata", {}).get("tags", [])
    return cell.get("cell_type") == "markdown" and NAV_TAG in tags


def notebook_title(path: Path | str) -> str:
    """The first ``# `` heading of the first markdown cell that has one ("" if none).

    >>> notebook_title(course_map()[0].path)  # doctest: +SKIP
    'Start here'
    """
    import nbformat  # here, not at import: it costs every notebook's setup a second

    notebook = nbformat.read(str(path), as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            headings = markdown_headings(cell.source, level=1)
            if headings:
                return headings[0]
    return ""


def _link_text(entry: NotebookEntry) -> str:
    title = entry.title.replace("[", r"\[").replace("]", r"\]")
    return f"{entry.number} · {title}"


def nav_line(entries: Sequence[NotebookEntry], index: int) -> str:
    """Markdown navigation for ``entries[index]``: nearest written neighbours and contents.

    >>> a = NotebookEntry("00", "00_a", "A", "", 1, Path("00_a.ipynb"))
    >>> b = NotebookEntry("01", "01_b", "B", "", 1)  # not written yet: skipped
    >>> c = NotebookEntry("02", "02_c", "C", "", 1, Path("02_c.ipynb"))
    >>> nav_line([a, b, c], 0)
    '[Contents](index.md) | [02 · C](02_c.ipynb) >'
    """
    previous = next((e for e in reversed(entries[:index]) if e.path is not None), None)
    following = next((e for e in entries[index + 1 :] if e.path is not None), None)
    parts: list[str] = []
    if previous is not None:
        parts.append(f"< [{_link_text(previous)}]({previous.filename})")
    parts.append(f"[Contents]({_INDEX_FILE})")
    if following is not None:
        parts.append(f"[{_link_text(following)}]({following.filename}) >")
    return " | ".join(parts)


def _new_nav_cell(notebook: Any, source: str, cell_id: str) -> Any:
    import nbformat

    cell = nbformat.v4.new_markdown_cell(source, metadata={"tags": [NAV_TAG]})
    if notebook.get("nbformat_minor", 0) < 5:
        cell.pop("id", None)  # cell ids only exist from nbformat 4.5 on
    else:
        taken = {c.get("id") for c in notebook.cells}
        cell["id"] = cell_id if cell_id not in taken else cell["id"]
    return cell


def _apply_navigation(notebook: Any, line: str) -> None:
    """Put ``line`` in navigation cells at both ends; drop stray navigation cells between."""
    cells = notebook.cells
    if cells and is_navigation_cell(cells[0]):
        cells[0].source = line
    else:
        cells.insert(0, _new_nav_cell(notebook, line, "navigation-top"))
    if len(cells) >= 2 and is_navigation_cell(cells[-1]):
        cells[-1].source = line
    else:
        cells.append(_new_nav_cell(notebook, line, "navigation-bottom"))
    notebook.cells = [cells[0], *(c for c in cells[1:-1] if not is_navigation_cell(c)), cells[-1]]


def update_notebooks(root: Path | str | None = None, check: bool = False) -> list[Path]:
    """Refresh the top and bottom navigation cells; return the notebooks that (would) change.

    Only navigation cells are touched: outputs, execution counts and metadata are kept,
    and a notebook is rewritten only when its content changes. ``check=True`` writes nothing.

    >>> update_notebooks(check=True)  # doctest: +SKIP
    []
    """
    import nbformat

    entries = course_map(root)
    changed: list[Path] = []
    for index, entry in enumerate(entries):
        if entry.path is None:
            continue
        notebook = nbformat.read(str(entry.path), as_version=4)
        before = copy.deepcopy(notebook)
        _apply_navigation(notebook, nav_line(entries, index))
        if notebook == before:
            continue
        changed.append(entry.path)
        if not check:
            nbformat.write(notebook, str(entry.path))
    return changed


def _table_cell(text: str) -> str:
    return text.replace("|", r"\|")


def render_index(entries: Sequence[NotebookEntry]) -> str:
    """Markdown for ``notebooks/index.md``: every planned notebook and the total time.

    >>> render_index([NotebookEntry("00", "00_a", "A", "First", 30)]).splitlines()[0]
    '# SQLAlchemy Performance Workbook: contents'
    """
    total = sum(entry.minutes for entry in entries)
    ready = sum(entry.path is not None for entry in entries)
    lines = [
        f"# {COURSE_TITLE}: contents",
        "",
        "<!-- Generated by `python -m course_lib.navigation` from data/course_map.toml;"
        " do not edit by hand. -->",
        "",
        f"{ready} of {len(entries)} notebooks are ready; work through them in order.",
        "",
        "| # | Notebook | Summary | Minutes |",
        "|---|---|---|---:|",
    ]
    for entry in entries:
        if entry.path is not None:
            name = f"[{_table_cell(entry.title)}]({entry.filename})"
        else:
            name = f"{_table_cell(entry.title)} (planned)"
        lines.append(
            f"| {entry.number} | {name} | {_table_cell(entry.summary)} | {entry.minutes} |"
        )
    hours, minutes = divmod(total, 60)
    lines += ["", f"**Total: {total} minutes** (about {hours} h {minutes:02d} min).", ""]
    return "\n".join(lines)


def course_map_table(entries: Sequence[NotebookEntry] | None = None) -> pd.DataFrame:
    """The course map as a DataFrame (number, title, minutes, status, summary).

    ``entries`` defaults to the repository's course map (:func:`course_map`).

    >>> course_map_table([NotebookEntry("00", "00_a", "A", "First", 30)]).status.tolist()
    ['planned']
    >>> course_map_table().number.tolist()[0]
    '00'
    """
    import pandas as pd

    if entries is None:
        entries = course_map()

    rows = [
        {
            "number": entry.number,
            "title": entry.title,
            "minutes": entry.minutes,
            "status": "ready" if entry.path is not None else "planned",
            "summary": entry.summary,
        }
        for entry in entries
    ]
    return pd.DataFrame(rows, columns=["number", "title", "minutes", "status", "summary"])


def main(argv: Sequence[str] | None = None) -> int:
    """Update notebook navigation and ``notebooks/index.md``; ``--check`` only reports.

    >>> main(["--check"])  # doctest: +SKIP
    0
    """
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.navigation",
        description="Regenerate notebook navigation cells and notebooks/index.md.",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if anything is stale"
    )
    parser.add_argument("--root", type=Path, default=None, help="repository root (default: repo)")
    args = parser.parse_args(argv)
    root = _root(args.root)

    stale = update_notebooks(root, check=args.check)
    index_path = root / _NOTEBOOK_DIR / _INDEX_FILE
    index_text = render_index(course_map(root))
    current = index_path.read_text(encoding="utf-8") if index_path.is_file() else None
    if current != index_text:
        stale.append(index_path)
        if not args.check:
            index_path.parent.mkdir(parents=True, exist_ok=True)
            index_path.write_text(index_text, encoding="utf-8", newline="\n")
    if args.check and stale:
        for path in stale:
            shown = path.relative_to(root) if path.is_relative_to(root) else path
            print(f"stale: {shown.as_posix()}")
        print("run: python -m course_lib.navigation")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
