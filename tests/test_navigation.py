"""Tests for course_lib.navigation, on throwaway course roots and on the real repository."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from course_lib.navigation import (
    NAV_TAG,
    REPO_ROOT,
    NotebookEntry,
    course_map,
    course_map_table,
    is_navigation_cell,
    main,
    nav_line,
    notebook_title,
    render_index,
    update_notebooks,
)

MAP_TOML = """
[[notebook]]
number = "00"
slug = "00_start_here"
title = "Start here"
summary = "Course map and setup"
minutes = 30

[[notebook]]
number = "01"
slug = "01_n_plus_one"
title = "N+1 and eager loading"
summary = "Count statements | pick a loader"
minutes = 60

[[notebook]]
number = "02"
slug = "02_load_less"
title = "Load only what you need"
summary = "Trim columns"
minutes = 45

[[notebook]]
number = "03"
slug = "03_bulk_writes"
title = "Bulk writes"
summary = "Insert many rows"
minutes = 50
"""


def _notebook(title: str) -> nbformat.NotebookNode:
    """A small executed notebook: title cell, a code cell with output, a prose cell."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# {title}\n\nObjectives, prerequisites, 30 minutes."),
        nbformat.v4.new_code_cell(
            "print(6 * 7)",
            execution_count=1,
            outputs=[nbformat.v4.new_output("stream", name="stdout", text="42\n")],
        ),
        nbformat.v4.new_code_cell(
            "6 * 7",
            execution_count=2,
            outputs=[
                nbformat.v4.new_output(
                    "execute_result", data={"text/plain": "42"}, execution_count=2
                )
            ],
        ),
        nbformat.v4.new_markdown_cell("## Key takeaways\n\n- measure first"),
    ]
    return nb


@pytest.fixture
def course_root(tmp_path: Path) -> Path:
    """A course root with a four-entry map where 00, 02 and 03 exist and 01 is planned."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "course_map.toml").write_text(MAP_TOML, encoding="utf-8")
    (tmp_path / "notebooks").mkdir()
    for slug, title in [
        ("00_start_here", "Start here"),
        ("02_load_less", "Load only what you need"),
        ("03_bulk_writes", "Bulk writes"),
    ]:
        nbformat.write(_notebook(title), str(tmp_path / "notebooks" / f"{slug}.ipynb"))
    return tmp_path


def _read(root: Path, slug: str) -> nbformat.NotebookNode:
    return nbformat.read(str(root / "notebooks" / f"{slug}.ipynb"), as_version=4)


def test_course_map_marks_written_notebooks(course_root: Path) -> None:
    entries = course_map(course_root)
    assert [e.number for e in entries] == ["00", "01", "02", "03"]
    assert [e.path is not None for e in entries] == [True, False, True, True]
    assert entries[0].path == course_root / "notebooks" / "00_start_here.ipynb"


def test_course_map_rejects_slug_without_number(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "course_map.toml").write_text(
        '[[notebook]]\nnumber = "04"\nslug = "pagination"\ntitle = "P"\nsummary = "s"\n'
        "minutes = 1\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match="must start with number"):
        course_map(tmp_path)


def test_nav_line_skips_unwritten_neighbours(course_root: Path) -> None:
    entries = course_map(course_root)
    assert nav_line(entries, 0) == (
        "[Contents](index.md) | [02 · Load only what you need](02_load_less.ipynb) >"
    )
    assert nav_line(entries, 2) == (
        "< [00 · Start here](00_start_here.ipynb) | [Contents](index.md)"
        " | [03 · Bulk writes](03_bulk_writes.ipynb) >"
    )
    assert nav_line(entries, 3) == (
        "< [02 · Load only what you need](02_load_less.ipynb) | [Contents](index.md)"
    )


def test_nav_line_with_single_notebook_links_only_contents() -> None:
    only = NotebookEntry("00", "00_a", "A", "s", 1, Path("00_a.ipynb"))
    planned = NotebookEntry("01", "01_b", "B", "s", 1)
    assert nav_line([only, planned], 0) == "[Contents](index.md)"


def test_notebook_title_reads_first_h1(course_root: Path) -> None:
    path = course_root / "notebooks" / "02_load_less.ipynb"
    assert notebook_title(path) == "Load only what you need"


def test_update_inserts_nav_cells_and_is_idempotent(course_root: Path) -> None:
    changed = update_notebooks(course_root)
    assert sorted(p.name for p in changed) == [
        "00_start_here.ipynb",
        "02_load_less.ipynb",
        "03_bulk_writes.ipynb",
    ]
    nb = _read(course_root, "02_load_less")
    expected = nav_line(course_map(course_root), 2)
    assert len(nb.cells) == 6
    for cell in (nb.cells[0], nb.cells[-1]):
        assert cell.cell_type == "markdown"
        assert cell.metadata["tags"] == [NAV_TAG]
        assert cell.source == expected
    assert nb.cells[1].source.startswith("# Load only what you need")
    nbformat.validate(nb)

    before = {p: p.read_bytes() for p in (course_root / "notebooks").glob("*.ipynb")}
    assert update_notebooks(course_root) == []
    assert {p: p.read_bytes() for p in before} == before


def test_update_preserves_outputs_and_execution_counts(course_root: Path) -> None:
    original = _read(course_root, "03_bulk_writes")
    update_notebooks(course_root)
    updated = _read(course_root, "03_bulk_writes")
    assert updated.cells[1:-1] == original.cells
    assert updated.metadata == original.metadata
    code = [c for c in updated.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == [1, 2]
    assert code[0].outputs[0].text == "42\n"
    assert code[1].outputs[0].data["text/plain"] == "42"


def test_update_replaces_stale_nav_and_drops_stray_nav_cells(course_root: Path) -> None:
    update_notebooks(course_root)
    path = course_root / "notebooks" / "00_start_here.ipynb"
    nb = _read(course_root, "00_start_here")
    nb.cells[0].source = "old navigation"
    nb.cells.append(nbformat.v4.new_markdown_cell("## Appended after the bottom nav"))
    nbformat.write(nb, str(path))

    assert update_notebooks(course_root) == [path]
    nb = _read(course_root, "00_start_here")
    nav_cells = [i for i, c in enumerate(nb.cells) if is_navigation_cell(c)]
    assert nav_cells == [0, len(nb.cells) - 1]
    assert nb.cells[0].source == nb.cells[-1].source == nav_line(course_map(course_root), 0)
    assert nb.cells[-2].source == "## Appended after the bottom nav"


def test_new_notebook_changes_neighbours_nav(course_root: Path) -> None:
    update_notebooks(course_root)
    nbformat.write(_notebook("N+1"), str(course_root / "notebooks" / "01_n_plus_one.ipynb"))
    changed = update_notebooks(course_root, check=True)
    assert sorted(p.name for p in changed) == [
        "00_start_here.ipynb",
        "01_n_plus_one.ipynb",
        "02_load_less.ipynb",
    ]


def test_check_mode_reports_stale_and_writes_nothing(course_root: Path) -> None:
    notebooks = course_root / "notebooks"
    before = {p: p.read_bytes() for p in notebooks.iterdir()}
    stale = update_notebooks(course_root, check=True)
    assert len(stale) == 3
    assert {p: p.read_bytes() for p in notebooks.iterdir()} == before


def test_main_check_fails_then_passes_after_update(
    course_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notebooks = course_root / "notebooks"
    before = {p: p.read_bytes() for p in notebooks.iterdir()}
    assert main(["--check", "--root", str(course_root)]) == 1
    assert {p: p.read_bytes() for p in notebooks.iterdir()} == before
    out = capsys.readouterr().out
    assert "notebooks/02_load_less.ipynb" in out
    assert "notebooks/index.md" in out

    assert main(["--root", str(course_root)]) == 0
    index = (notebooks / "index.md").read_text(encoding="utf-8")
    assert index == render_index(course_map(course_root))
    assert main(["--check", "--root", str(course_root)]) == 0


def test_index_lists_planned_notebooks_as_planned(course_root: Path) -> None:
    text = render_index(course_map(course_root))
    assert text.startswith("# ")
    assert "| 00 | [Start here](00_start_here.ipynb) |" in text
    assert "| 01 | N+1 and eager loading (planned) |" in text
    assert "(01_n_plus_one.ipynb)" not in text
    assert r"Count statements \| pick a loader" in text
    assert "185 minutes" in text


def test_course_map_table_status(course_root: Path) -> None:
    table = course_map_table(course_map(course_root))
    assert list(table.columns) == ["number", "title", "minutes", "status", "summary"]
    assert table.status.tolist() == ["ready", "planned", "ready", "ready"]
    assert table.minutes.sum() == 185


def test_real_course_map_is_well_formed() -> None:
    entries = course_map()
    assert [e.number for e in entries] == [f"{n:02d}" for n in range(14)]
    assert all(e.summary and e.minutes > 0 for e in entries)


def test_real_repo_navigation_is_up_to_date() -> None:
    notebooks = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
    if not notebooks:
        pytest.skip("notebooks/ has no .ipynb yet")
    entries = course_map()
    planned = {e.filename for e in entries}
    assert [p.name for p in notebooks if p.name not in planned] == [], (
        "notebooks missing from data/course_map.toml"
    )
    stale = update_notebooks(check=True)
    assert stale == [], f"stale navigation; run `python -m course_lib.navigation`: {stale}"
    index = REPO_ROOT / "notebooks" / "index.md"
    assert index.is_file(), "notebooks/index.md missing; run `python -m course_lib.navigation`"
    assert index.read_text(encoding="utf-8") == render_index(entries), (
        "notebooks/index.md is stale; run `python -m course_lib.navigation`"
    )


def test_update_keeps_old_minor_format_without_cell_ids(course_root: Path) -> None:
    path = course_root / "notebooks" / "03_bulk_writes.ipynb"
    nb = _notebook("Bulk writes")
    nb.nbformat_minor = 4
    for cell in nb.cells:
        del cell["id"]
    nbformat.write(nb, str(path))
    update_notebooks(course_root)
    updated = _read(course_root, "03_bulk_writes")
    assert updated.nbformat_minor == 4
    assert all("id" not in cell for cell in updated.cells)
    assert is_navigation_cell(updated.cells[0]) and is_navigation_cell(updated.cells[-1])
