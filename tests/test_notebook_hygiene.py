"""Structural hygiene checks for every committed notebook in ``notebooks/``.

Each check is a small function that takes a notebook and returns a list of problems
(``"cell 4: ..."``); an empty list means the notebook passes. The parametrized test runs
every check on every notebook, and the helpers are tested on deliberately bad notebooks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest

from course_lib.navigation import REPO_ROOT, is_navigation_cell, markdown_headings

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
FILENAME = re.compile(r"^\d\d_[a-z0-9_]+\.ipynb$")
ABSOLUTE_PATH = re.compile(
    r"(?<![\w.-])(?:/work/|/root/|/home/[^/\s]+/|/tmp/[^/\s]+/|/Users/[^/\s]+/|/private/var/)"
    r"|(?i:\b[a-z]:(?:\\{1,2}|/)users\b)"
)
BINARY_MIMETYPES = ("image/png", "image/jpeg", "image/gif", "application/pdf")
VOLATILE_CODE = re.compile(r"perf_counter|\b(?:bar_chart|scaling_chart)\(")
REQUIRED_HEADINGS = ("Setup", "What popular guides get wrong", "Exercise", "Key takeaways")
CODE_ONLY_TAGS = ("nbval-ignore-output", "raises-exception")

Problems = list[str]


def _tags(cell: dict[str, Any]) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def check_filename(name: str) -> Problems:
    """File names are ``NN_lower_snake.ipynb``.

    >>> check_filename("01_Bad-Name.ipynb") != []
    True
    """
    return [] if FILENAME.match(name) else [f"file name {name!r} does not match {FILENAME.pattern}"]


def check_kernelspec(nb: dict[str, Any]) -> Problems:
    """The kernelspec is the plain ``python3`` kernel, not a machine-specific one.

    >>> check_kernelspec({"metadata": {"kernelspec": {"name": "python3"}}})
    []
    """
    name = nb.get("metadata", {}).get("kernelspec", {}).get("name")
    return [] if name == "python3" else [f"kernelspec name is {name!r}, expected 'python3'"]


def check_execution_order(nb: dict[str, Any]) -> Problems:
    """Code cells were run once, top to bottom: execution counts are exactly 1..n.

    >>> cell = {"cell_type": "code", "source": "1", "execution_count": 2}
    >>> check_execution_order({"cells": [cell]})
    ['cell 0: execution_count 2, expected 1']
    """
    problems: Problems = []
    expected = 0
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        expected += 1
        count = cell.get("execution_count")
        if count is None and not _source(cell).strip():
            problems.append(f"cell {index}: empty code cell (never executed); delete it")
        elif count != expected:
            problems.append(f"cell {index}: execution_count {count}, expected {expected}")
    return problems


def _output_texts(output: dict[str, Any]) -> list[str]:
    """All human-readable text of one output (binary image data is skipped)."""
    texts: list[str] = []
    if "text" in output:
        texts.append(_source({"source": output["text"]}))
    for mimetype, value in output.get("data", {}).items():
        if mimetype in BINARY_MIMETYPES:
            continue
        if isinstance(value, str | list) and all(isinstance(v, str) for v in value):
            texts.append(_source({"source": value}))
        else:
            texts.append(json.dumps(value))
    if output.get("output_type") == "error":
        texts += [output.get("ename", ""), output.get("evalue", "")]
        texts += list(output.get("traceback", []))
    return texts


def check_no_absolute_paths(nb: dict[str, Any]) -> Problems:
    """Outputs never show machine paths (/work/, /home/<user>/, C:\\Users, ...).

    >>> cell = {"cell_type": "code", "outputs": [{"output_type": "stream", "text": "/root/x"}]}
    >>> check_no_absolute_paths({"cells": [cell]})
    ["cell 0, output 0: absolute path '/root/'"]
    """
    problems: Problems = []
    for index, cell in enumerate(nb.get("cells", [])):
        for number, output in enumerate(cell.get("outputs", [])):
            for text in _output_texts(output):
                match = ABSOLUTE_PATH.search(text)
                if match:
                    problems.append(
                        f"cell {index}, output {number}: absolute path {match.group(0)!r}"
                    )
                    break
    return problems


def check_error_outputs(nb: dict[str, Any]) -> Problems:
    """Error outputs only appear in cells tagged ``raises-exception``.

    >>> error = {"output_type": "error", "ename": "ValueError", "evalue": "", "traceback": []}
    >>> check_error_outputs({"cells": [{"cell_type": "code", "outputs": [error]}]})
    ['cell 0: ValueError error output but the cell is not tagged raises-exception']
    """
    problems: Problems = []
    for index, cell in enumerate(nb.get("cells", [])):
        if "raises-exception" in _tags(cell):
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                problems.append(
                    f"cell {index}: {output.get('ename')} error output"
                    " but the cell is not tagged raises-exception"
                )
    return problems


def check_skeleton(nb: dict[str, Any]) -> Problems:
    """Navigation at both ends, an intro cell, and the course's required ``##`` sections.

    >>> any("## Setup" in p for p in check_skeleton({"cells": []}))
    True
    """
    cells = nb.get("cells", [])
    problems: Problems = []
    if not cells or not is_navigation_cell(cells[0]):
        problems.append("cell 0: first cell is not the generated navigation cell")
    if len(cells) < 2 or not is_navigation_cell(cells[-1]):
        problems.append(f"cell {len(cells) - 1}: last cell is not the generated navigation cell")

    intro = next(
        (
            (index, cell)
            for index, cell in enumerate(cells)
            if cell.get("cell_type") == "markdown" and not is_navigation_cell(cell)
        ),
        None,
    )
    if intro is None:
        problems.append("no markdown intro cell")
    else:
        index, cell = intro
        text = _source(cell)
        if not markdown_headings(text, level=1):
            problems.append(f"cell {index}: intro cell has no '# ' title")
        for word in ("Objectives", "Prerequisites", "minutes"):
            if word.lower() not in text.lower():
                problems.append(f"cell {index}: intro cell does not mention {word!r}")

    headings = [
        heading.lower()
        for cell in cells
        if cell.get("cell_type") == "markdown"
        for heading in markdown_headings(_source(cell), level=2)
    ]
    for required in REQUIRED_HEADINGS:
        if not any(heading.startswith(required.lower()) for heading in headings):
            problems.append(f"missing markdown heading '## {required}'")
    return problems


def check_tags(nb: dict[str, Any]) -> Problems:
    """Output-related tags sit on code cells, and timing/chart cells ignore their output.

    >>> cell = {"cell_type": "code", "source": "t0 = time.perf_counter()", "metadata": {}}
    >>> check_tags({"cells": [cell]})
    ['cell 0: uses timing or a chart but is not tagged nbval-ignore-output']
    """
    problems: Problems = []
    for index, cell in enumerate(nb.get("cells", [])):
        tags = _tags(cell)
        if cell.get("cell_type") != "code":
            problems += [
                f"cell {index}: tag {tag!r} on a {cell.get('cell_type')} cell"
                for tag in CODE_ONLY_TAGS
                if tag in tags
            ]
        elif VOLATILE_CODE.search(_source(cell)) and "nbval-ignore-output" not in tags:
            problems.append(
                f"cell {index}: uses timing or a chart but is not tagged nbval-ignore-output"
            )
    return problems


#: What a notebook's code must not contain, with the convention that replaces it.
FORBIDDEN_CODE = [
    (
        re.compile(r"\bcl\.(measure|course|plots|exercises|explain|settings|environment)\."),
        "reach the foundation as cl.<name>",
    ),
    (
        re.compile(
            r"from course_lib\.(loading|columns|bulk|pagination)\b|"
            r"from course_lib import (loading|columns|bulk|pagination)\b"
        ),
        "import the lesson module as `from course_lib.lessons import <module> as lesson`",
    ),
    (re.compile(r"%xmode"), "wrap raising code in `with cl.short_errors():`"),
]
#: Code that uses one backend specifically: its cell must start with ``# needs: <backend>``.
ONE_BACKEND = {
    "postgresql": re.compile(r"course\.postgres\b|\[[\"']postgresql[\"']\]"),
    "sqlite": re.compile(r"course\.sqlite\b|\[[\"']sqlite[\"']\]"),
}
NEEDS_LINE = re.compile(r"^\s*#\s*needs:\s*(?P<names>[a-z, ]+?)\s*$")


def check_conventions(nb: dict[str, Any]) -> Problems:
    """One way to call the library, one way to raise, and every one-backend cell marked.

    >>> cell = {"cell_type": "code", "source": "course.postgres.engine", "metadata": {}}
    >>> check_conventions({"cells": [cell]})
    ['cell 0: uses postgresql alone but does not start with `# needs: postgresql`']
    >>> cell["source"] = "# needs: postgresql\\ncourse.postgres.engine"
    >>> check_conventions({"cells": [cell]})
    []
    """
    problems: Problems = []
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        source = _source(cell)
        for pattern, fix in FORBIDDEN_CODE:
            if pattern.search(source):
                problems.append(f"cell {index}: {pattern.search(source).group(0)!r}: {fix}")
        first = source.lstrip("\n").splitlines()[0] if source.strip() else ""
        match = NEEDS_LINE.match(first)
        marked = {n.strip() for n in match["names"].split(",")} if match else set()
        for backend, pattern in ONE_BACKEND.items():
            if pattern.search(source) and backend not in marked:
                problems.append(
                    f"cell {index}: uses {backend} alone but does not start with "
                    f"`# needs: {backend}`"
                )
    return problems


NOTEBOOK_CHECKS: dict[str, Callable[[dict[str, Any]], Problems]] = {
    "kernelspec": check_kernelspec,
    "execution_order": check_execution_order,
    "no_absolute_paths": check_no_absolute_paths,
    "error_outputs": check_error_outputs,
    "skeleton": check_skeleton,
    "tags": check_tags,
    "conventions": check_conventions,
}


def _params() -> list[Any]:
    notebooks = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    if not notebooks:
        skip = pytest.mark.skip(reason="notebooks/ has no .ipynb files yet")
        return [pytest.param(None, None, marks=skip, id="no-notebooks")]
    checks = ["filename", *NOTEBOOK_CHECKS]
    return [
        pytest.param(path, check, id=f"{path.name}-{check}")
        for path in notebooks
        for check in checks
    ]


@pytest.mark.parametrize(("path", "check"), _params())
def test_notebook_hygiene(path: Path, check: str) -> None:
    if check == "filename":
        problems = check_filename(path.name)
    else:
        problems = NOTEBOOK_CHECKS[check](nbformat.read(str(path), as_version=4))
    assert not problems, f"{path.name} [{check}]:\n  " + "\n  ".join(problems)


# --- the checks themselves, on in-memory notebooks -------------------------------------------


def _nav() -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell("[Contents](index.md)", metadata={"tags": ["navigation"]})


def _code(
    source: str, count: int | None, outputs: list[Any] | None = None, tags: list[str] | None = None
) -> nbformat.NotebookNode:
    metadata = {"tags": tags} if tags else {}
    return nbformat.v4.new_code_cell(
        source, execution_count=count, outputs=outputs or [], metadata=metadata
    )


def _good_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    md = nbformat.v4.new_markdown_cell
    nb.cells = [
        _nav(),
        md("# Pagination\n\n**Objectives:** keyset.\n**Prerequisites:** 01.\n~40 minutes."),
        md("## Setup"),
        _code("x = 1", 1),
        _code(
            "t0 = perf_counter()",
            2,
            [nbformat.v4.new_output("stream", name="stdout", text="0.12 s\n")],
            tags=["nbval-ignore-output"],
        ),
        md("## What popular guides get wrong\n\n```python\n# not a title\n```"),
        _code(
            "raise ValueError",
            3,
            [nbformat.v4.new_output("error", ename="ValueError", evalue="", traceback=[])],
            tags=["raises-exception"],
        ),
        md("## Exercise: page deeper"),
        _code(
            "print('https://example.com/home/docs/')",
            4,
            [
                nbformat.v4.new_output(
                    "display_data", data={"image/png": "iVBOR/tmp/abc/w0", "text/plain": "<Fig>"}
                )
            ],
        ),
        md("## Key takeaways"),
        _nav(),
    ]
    return nb


def _all_problems(nb: dict[str, Any]) -> Problems:
    return [problem for check in NOTEBOOK_CHECKS.values() for problem in check(nb)]


def test_good_notebook_passes_every_check() -> None:
    nb = _good_notebook()
    nbformat.validate(nb)
    assert _all_problems(nb) == []


@pytest.mark.parametrize(
    "name", ["01_n_plus_one.ipynb", "13_capstone_dealership.ipynb", "00_a1.ipynb"]
)
def test_filename_accepts_course_names(name: str) -> None:
    assert check_filename(name) == []


@pytest.mark.parametrize(
    "name",
    ["1_intro.ipynb", "01-intro.ipynb", "01_Intro.ipynb", "01_intro copy.ipynb", "intro.ipynb"],
)
def test_filename_rejects_bad_names(name: str) -> None:
    assert check_filename(name)


def test_kernelspec_rejects_custom_kernel() -> None:
    nb = _good_notebook()
    nb.metadata["kernelspec"]["name"] = ".venv-course"
    assert check_kernelspec(nb) == ["kernelspec name is '.venv-course', expected 'python3'"]
    del nb.metadata["kernelspec"]
    assert check_kernelspec(nb)


def test_execution_order_rejects_gaps_and_unexecuted_cells() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [_code("a = 1", 1), _code("b = 2", 3)]
    assert check_execution_order(nb) == ["cell 1: execution_count 3, expected 2"]
    nb.cells = [_code("a = 1", 1), nbformat.v4.new_markdown_cell("text"), _code("b = 2", None)]
    assert check_execution_order(nb) == ["cell 2: execution_count None, expected 2"]
    nb.cells = [_code("a = 1", 2), _code("b = 2", 1)]
    assert len(check_execution_order(nb)) == 2
    nb.cells = [_code("a = 1", 1), _code("", None)]
    assert check_execution_order(nb) == ["cell 1: empty code cell (never executed); delete it"]


@pytest.mark.parametrize(
    "text",
    [
        "/work/main/data/cars.db",
        "File /root/.cache/x.py, line 3",
        "'/home/alice/course/db.sqlite'",
        "sqlite:////tmp/tmpab12cd/db.sqlite",
        "/Users/bob/projects/x",
        "/private/var/folders/x",
        "C:\\Users\\carol\\course",
        "'C:\\\\Users\\\\carol'",
    ],
)
def test_absolute_paths_are_caught(text: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        _code("x", 1, [nbformat.v4.new_output("stream", name="stdout", text="ok\n")]),
        _code("y", 2, [nbformat.v4.new_output("execute_result", data={"text/plain": text})]),
    ]
    problems = check_no_absolute_paths(nb)
    assert len(problems) == 1
    assert problems[0].startswith("cell 1, output 0: absolute path")


@pytest.mark.parametrize(
    "text", ["data/cars.db", "https://docs.example.com/home/guide/", "/tmp", "~ 40 minutes"]
)
def test_relative_paths_and_urls_are_allowed(text: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [_code("x", 1, [nbformat.v4.new_output("stream", name="stdout", text=text)])]
    assert check_no_absolute_paths(nb) == []


def test_absolute_path_in_traceback_is_caught() -> None:
    error = nbformat.v4.new_output(
        "error", ename="OSError", evalue="x", traceback=['File "/home/dan/x.py", line 1']
    )
    nb = nbformat.v4.new_notebook()
    nb.cells = [_code("boom()", 1, [error], tags=["raises-exception"])]
    assert check_no_absolute_paths(nb) == ["cell 0, output 0: absolute path '/home/dan/'"]


def test_untagged_error_output_is_rejected() -> None:
    nb = _good_notebook()
    raising = next(i for i, c in enumerate(nb.cells) if "raises-exception" in _tags(c))
    nb.cells[raising].metadata = {}
    assert check_error_outputs(nb) == [
        f"cell {raising}: ValueError error output but the cell is not tagged raises-exception"
    ]


def test_skeleton_requires_navigation_intro_and_sections() -> None:
    nb = _good_notebook()
    nb.cells = nb.cells[1:-1]  # no navigation cells
    nb.cells[0].source = "# Pagination\n\nObjectives only."
    nb.cells = [c for c in nb.cells if "Exercise" not in c.source]
    problems = check_skeleton(nb)
    assert "cell 0: first cell is not the generated navigation cell" in problems
    assert any("last cell is not the generated navigation cell" in p for p in problems)
    assert "cell 0: intro cell does not mention 'Prerequisites'" in problems
    assert "cell 0: intro cell does not mention 'minutes'" in problems
    assert "missing markdown heading '## Exercise'" in problems
    assert not any("Setup" in p or "Key takeaways" in p for p in problems)


def test_skeleton_ignores_hash_lines_inside_code_fences() -> None:
    nb = _good_notebook()
    nb.cells[1].source = "```python\n# Pagination\n```\nObjectives, prerequisites, minutes."
    assert check_skeleton(nb) == ["cell 1: intro cell has no '# ' title"]


def test_tags_require_ignore_output_on_timing_and_charts() -> None:
    nb = _good_notebook()
    nb.cells[3].source = "bar_chart(results)"
    nb.cells.insert(4, _code("charts.scaling_chart(df)", None))
    nb.cells[5].metadata = {}  # the perf_counter cell loses its tag
    assert check_tags(nb) == [
        "cell 3: uses timing or a chart but is not tagged nbval-ignore-output",
        "cell 4: uses timing or a chart but is not tagged nbval-ignore-output",
        "cell 5: uses timing or a chart but is not tagged nbval-ignore-output",
    ]


def test_tags_reject_code_only_tags_on_markdown() -> None:
    nb = _good_notebook()
    nb.cells[2].metadata["tags"] = ["nbval-ignore-output", "raises-exception"]
    assert check_tags(nb) == [
        "cell 2: tag 'nbval-ignore-output' on a markdown cell",
        "cell 2: tag 'raises-exception' on a markdown cell",
    ]


def test_conventions_reject_old_calls_and_unmarked_backend_cells() -> None:
    """cl.measure.x, old lesson imports, %xmode and unmarked one-backend cells are caught."""
    cells = [
        _code("x = cl.measure.label_of(f)", 1),
        _code("from course_lib import bulk", 2),
        _code("%xmode Minimal", 3),
        _code("plans['postgresql'].text", 4),
        _code("# needs: sqlite\nplans['postgresql']", 5),
        _code("# needs: postgresql\nplans['postgresql']", 6),
        _code("for db in course.backends:\n    pass", 7),
    ]
    problems = check_conventions({"cells": cells})
    assert [p.split(":")[0] for p in problems] == [
        "cell 0",
        "cell 1",
        "cell 2",
        "cell 3",
        "cell 4",
    ]
