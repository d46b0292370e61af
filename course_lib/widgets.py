"""The picker in notebook 00: choose the scale and backends every notebook uses.

>>> picker = settings_picker()
>>> type(picker).__name__
'SettingsPicker'
>>> repr(picker).startswith("Scale/backends picker: run this cell in JupyterLab to choose")
True

The choice is saved to ``.course/settings.json``; ``COURSE_SCALE`` and ``COURSE_BACKENDS``
still win (``make test`` sets them, so the committed outputs stay at the default scale).
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets

from .settings import BACKEND_NAMES, CourseConfigError, choose_backends, choose_scale, save_choice
from .settings import scales as scale_sizes

BACKEND_CHOICES = {
    "SQLite and PostgreSQL": list(BACKEND_NAMES),
    "SQLite only": ["sqlite"],
    "PostgreSQL only": ["postgresql"],
}


def apply_choice(scale: str, backends_label: str) -> str:
    """Save a choice and return the sentence the picker shows."""
    try:
        save_choice(scale=scale, backends=BACKEND_CHOICES[backends_label])
    except CourseConfigError as exc:
        return f"Not saved: {exc}"
    return (
        f"Saved: scale {scale}, {backends_label}. Restart the kernel of any open notebook "
        "(Kernel ▸ Restart) so it picks this up."
    )


def current_choice() -> str:
    """The scale and backends in force now, as the picker's plain-text form states them."""
    try:
        return f"scale={choose_scale().name}, backends={','.join(choose_backends())}"
    except CourseConfigError as exc:
        return f"none that works ({exc})"


class SettingsPicker:
    """The picker widget, with a plain-text form that makes sense where widgets do not run.

    An untrusted or not-yet-run notebook shows only an output's ``text/plain``; for a bare
    ``VBox`` that is ``VBox(children=(Dropdown(...``. This wrapper keeps the widget view
    and replaces the text with one sentence: what the cell is, and the choice that was in
    force when the output was made (a saved output is the saver's choice, not the reader's).
    """

    def __init__(self, box: widgets.VBox):
        self.box = box

    @property
    def children(self) -> tuple[widgets.Widget, ...]:
        """The scale and backends drop-downs, the Save button and the message label."""
        return tuple(self.box.children)

    def __repr__(self) -> str:
        return (
            "Scale/backends picker: run this cell in JupyterLab to choose; "
            f"choice in force when this output was made: {current_choice()}"
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = dict(self.box._repr_mimebundle_(**kwargs) or {})
        bundle["text/plain"] = repr(self)
        return bundle


def _backends_label() -> str:
    try:
        chosen = choose_backends()
    except CourseConfigError:
        return next(iter(BACKEND_CHOICES))
    return next((k for k, v in BACKEND_CHOICES.items() if v == chosen), next(iter(BACKEND_CHOICES)))


def settings_picker() -> SettingsPicker:
    """Two drop-downs (set to the choice in force) and a Save button."""
    sizes = scale_sizes()
    try:
        value = choose_scale().name
    except CourseConfigError:
        value = next(iter(sizes))
    scale = widgets.Dropdown(
        options=[
            (f"{name}: {s.users:,} users, {s.cars:,} cars", name) for name, s in sizes.items()
        ],
        value=value,
        description="Scale",
    )
    backends = widgets.Dropdown(
        options=list(BACKEND_CHOICES), value=_backends_label(), description="Backends"
    )
    save = widgets.Button(description="Save", button_style="primary")
    message = widgets.Label()

    def on_save(_button: widgets.Button) -> None:
        message.value = apply_choice(scale.value, backends.value)

    save.on_click(on_save)
    return SettingsPicker(widgets.VBox([scale, backends, save, message]))


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def strip_widget_state(notebook: dict[str, Any]) -> bool:
    """Drop saved widget state and widget views from a notebook (JSON); True if it changed.

    A stored widget view draws "model not found" or dead drop-downs in a fresh clone; its
    ``text/plain`` (one sentence, see :class:`SettingsPicker`) is what a reader should see.
    """
    changed = notebook.get("metadata", {}).pop("widgets", None) is not None
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            if WIDGET_VIEW in output.get("data", {}):
                del output["data"][WIDGET_VIEW]
                changed = True
    return changed


def main(argv: list[str] | None = None) -> int:
    """``python -m course_lib.widgets strip notebooks/*.ipynb``: run after executing them."""
    import json
    import sys
    from pathlib import Path

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "strip":
        print("usage: python -m course_lib.widgets strip NOTEBOOK...", file=sys.stderr)
        return 2
    for name in args[1:]:
        path = Path(name)
        notebook = json.loads(path.read_text(encoding="utf-8"))
        if strip_widget_state(notebook):
            text = json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
            path.write_text(text, encoding="utf-8")
            print(f"stripped widget state: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
