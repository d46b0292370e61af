"""The course's two charts, drawn from the DataFrames that :mod:`course_lib.measure` returns.

>>> import pandas as pd
>>> frame = pd.DataFrame({"strategy": ["a", "b"], "backend": ["sqlite"] * 2, "n": [10, 10],
...                       "median": [2.0, 1.0], "spread": [0.1, 0.1]})
>>> fig = bar_chart(frame, "demo")
>>> fig.axes[0].get_title()
'demo · sqlite'

One style everywhere; titles carry the backend(s), the scale and "simulated" when a
simulated round trip was in force. Figures are closed after drawing, so a cell that ends
with the call shows each chart exactly once.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

STYLE: dict[str, Any] = {
    "figure.figsize": (8, 4.2),
    "figure.dpi": 100,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titleweight": "bold",
    "font.size": 10,
}
_LINESTYLES = ["-", "--", ":", "-."]
AXIS_LABELS = {
    "median": "median time per run (ms, bars show the IQR)",
    "peak_kib": "peak memory allocated (KiB, tracemalloc)",
}


def _errors(part: pd.DataFrame, y: str) -> Any:
    """Half the IQR either side of a median; no error bars for other measures."""
    return part["spread"] / 2 if y == "median" and "spread" in part else None


@contextmanager
def _style() -> Any:
    with plt.rc_context(STYLE):
        yield


def _title(frame: pd.DataFrame, title: str | None) -> str:
    parts = [title or frame.attrs.get("title") or "Timing"]
    labels = list(dict.fromkeys(frame["backend"]))
    parts.append(" vs ".join(dict.fromkeys(label.split(" + ")[0] for label in labels)))
    simulated = sorted({label.split(" + ", 1)[1] for label in labels if " + " in label})
    if simulated:
        every = all(" + " in label for label in labels)
        parts.append("with " + ", ".join(simulated) + ("" if every else " in some runs"))
    scales = frame.attrs.get("scales")
    if scales:
        parts.append("scale " + ", ".join(scales))
    return " · ".join(parts)


def bar_chart(frame: pd.DataFrame, title: str | None = None, y: str = "median") -> Figure:
    """Median time per strategy (bars grouped by backend) with the IQR as error bars.

    ``y="peak_kib"`` draws peak memory instead (from ``compare(..., memory=True)``).
    """
    if "n" in frame and frame["n"].nunique() > 1:
        raise ValueError(
            "bar_chart draws one n; pick one (frame[frame['n'] == ...]) or use scaling_chart"
        )
    with _style():
        fig, ax = plt.subplots()
        strategies = list(dict.fromkeys(frame["strategy"]))
        backends = list(dict.fromkeys(frame["backend"]))
        width = 0.8 / len(backends)
        for i, backend in enumerate(backends):
            part = frame[frame["backend"] == backend].set_index("strategy").reindex(strategies)
            xs = [k + i * width - 0.4 + width / 2 for k in range(len(strategies))]
            ax.barh(xs, part[y], height=width, xerr=_errors(part, y), label=backend, capsize=3)
        ax.set_yticks(range(len(strategies)), strategies)
        ax.invert_yaxis()
        ax.set_xlabel(AXIS_LABELS.get(y, y))
        ax.set_title(_title(frame, title))
        if len(backends) > 1:
            ax.legend()
        fig.tight_layout()
    plt.close(fig)
    return fig


def scaling_chart(frame: pd.DataFrame, title: str | None = None, y: str = "median") -> Figure:
    """Median time against n, log-log: a colour per strategy, a line style per backend."""
    with _style():
        fig, ax = plt.subplots()
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        strategies = list(dict.fromkeys(frame["strategy"]))
        backends = list(dict.fromkeys(frame["backend"]))
        for s, strategy in enumerate(strategies):
            for b, backend in enumerate(backends):
                part = frame[(frame["strategy"] == strategy) & (frame["backend"] == backend)]
                if part.empty:
                    continue
                part = part.sort_values("n")
                label = strategy if len(backends) == 1 else f"{strategy} ({backend})"
                ax.errorbar(
                    part["n"],
                    part[y],
                    yerr=_errors(part, y),
                    marker="o",
                    color=colours[s % len(colours)],
                    linestyle=_LINESTYLES[b % len(_LINESTYLES)],
                    label=label,
                    capsize=2,
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n")
        ax.set_ylabel(AXIS_LABELS.get(y, y))
        ax.set_title(_title(frame, title))
        ax.legend(fontsize=8)
        fig.tight_layout()
    plt.close(fig)
    return fig
