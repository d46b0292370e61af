"""The picker in notebook 00: choose the scale and backends every notebook uses.

>>> picker = settings_picker()
>>> type(picker).__name__
'VBox'

The choice is saved to ``.course/settings.json``; ``COURSE_SCALE`` and ``COURSE_BACKENDS``
still win (``make test`` sets them, so the committed outputs stay at the default scale).
"""

from __future__ import annotations

import ipywidgets as widgets

from .settings import BACKEND_NAMES, CourseConfigError, choose_scale, save_choice, scales

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


def settings_picker() -> widgets.VBox:
    """Two drop-downs and a Save button."""
    sizes = scales()
    scale = widgets.Dropdown(
        options=[
            (f"{name}: {s.users:,} users, {s.cars:,} cars", name) for name, s in sizes.items()
        ],
        value=choose_scale().name,
        description="Scale",
    )
    backends = widgets.Dropdown(options=list(BACKEND_CHOICES), description="Backends")
    save = widgets.Button(description="Save", button_style="primary")
    message = widgets.Label()

    def on_save(_button: widgets.Button) -> None:
        message.value = apply_choice(scale.value, backends.value)

    save.on_click(on_save)
    return widgets.VBox([scale, backends, save, message])
