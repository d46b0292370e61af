"""The course's two charts, drawn from the DataFrames that :mod:`course_lib.measure` returns.

>>> import pandas as pd
>>> frame = pd.DataFrame({"strategy": ["a", "b"], "backend": ["sqlite"] * 2, "n": [10, 10],
...                       "median_ms": [2.0, 1.0], "q1_ms": [1.9, 0.9], "q3_ms": [2.2, 1.1]})
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
import numpy as np
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
    "median_ms": "median time per call (ms; error bars: first to third quartile)",
    "peak_kib": "peak memory allocated (KiB, tracemalloc)",
}


def _errors(part: pd.DataFrame, y: str) -> Any:
    """Asymmetric error bars from Q1 to Q3 around the median: never below zero.

    Only for ``median_ms`` (the quartiles are of the same samples); none for other measures.
    """
    if y != "median_ms" or "q1_ms" not in part or "q3_ms" not in part:
        return None
    lower = (part[y] - part["q1_ms"]).clip(lower=0)
    upper = (part["q3_ms"] - part[y]).clip(lower=0)
    return [lower.to_numpy(), upper.to_numpy()]


def _legend_outside(ax: Any) -> None:
    """The legend beside the axes, never over the data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def fitted_slopes(frame: pd.DataFrame, y: str = "median_ms") -> pd.DataFrame:
    """The slope of log(y) against log(n) per strategy and backend (1.0: linear growth).

    >>> frame = pd.DataFrame({"strategy": ["a"] * 3, "backend": ["x"] * 3,
    ...                       "n": [10, 100, 1000], "median_ms": [1.0, 10.0, 100.0]})
    >>> fitted_slopes(frame).to_dict("records")
    [{'strategy': 'a', 'backend': 'x', 'slope': 1.0, 'decades': 2.0}]
    """
    rows = []
    for (strategy, backend), part in frame.groupby(["strategy", "backend"], sort=False):
        part = part[(part["n"] > 0) & (part[y] > 0)]
        if part["n"].nunique() < 2:
            continue
        xs, ys = np.log10(part["n"].to_numpy(float)), np.log10(part[y].to_numpy(float))
        slope = float(np.polyfit(xs, ys, 1)[0])
        rows.append(
            {
                "strategy": strategy,
                "backend": backend,
                "slope": round(slope, 2),
                "decades": round(float(xs.max() - xs.min()), 2),
            }
        )
    return pd.DataFrame(rows, columns=["strategy", "backend", "slope", "decades"])


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


def bar_chart(frame: pd.DataFrame, title: str | None = None, y: str = "median_ms") -> Figure:
    """Median time per strategy (bars grouped by backend), error bars from Q1 to Q3.

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
            _legend_outside(ax)
        fig.tight_layout()
    plt.close(fig)
    return fig


def scaling_chart(frame: pd.DataFrame, title: str | None = None, y: str = "median_ms") -> Figure:
    """Median time against n, log-log: a colour per strategy, a line style per backend.

    Each legend entry carries the fitted log-log slope (see :func:`fitted_slopes`), so
    "grows linearly" (slope ≈ 1) or "stays flat" (≈ 0) can be read off, not guessed.
    """
    slopes = {(r.strategy, r.backend): r.slope for r in fitted_slopes(frame, y).itertuples()}
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
                if (strategy, backend) in slopes:
                    label += f", slope {slopes[strategy, backend]:.2f}"
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
        _legend_outside(ax)
        fig.tight_layout()
    plt.close(fig)
    return fig


def _tree_layout(roots: list[Any]) -> dict[int, tuple[float, float]]:
    """x, y for every node: leaves side by side, each parent centred over its children."""
    where: dict[int, tuple[float, float]] = {}
    next_leaf = [0.0]

    def place(node: Any, depth: int) -> float:
        if node.children:
            xs = [place(child, depth + 1) for child in node.children]
            x = sum(xs) / len(xs)
        else:
            x = next_leaf[0]
            next_leaf[0] += 1.0
        where[id(node)] = (x, -float(depth))
        return x

    for root in roots:
        place(root, 0)
    return where


def _node_label(node: Any, total_ms: float | None) -> str:
    """A plan node's box text: what it does, the rows (estimated against actual), its time."""
    lines = [node.detail if len(node.detail) <= 38 else node.detail[:36] + "…"]
    if node.estimated_rows is not None and node.actual_rows is not None:
        loops = f" × {node.loops} loops" if node.loops and node.loops > 1 else ""
        loops += " (parallel)" if loops and node.parallel else ""
        lines.append(f"est {node.estimated_rows:,.0f} · actual {node.actual_rows:,.0f}{loops}")
    elif node.estimated_rows is not None:
        lines.append(f"est {node.estimated_rows:,.0f} rows")
    if total_ms and node.exclusive_ms is not None:
        lines.append(f"{100 * node.exclusive_ms / total_ms:.0f}% of the time")
    return "\n".join(lines)


def plan_tree_chart(plan: Any, title: str | None = None) -> Figure:
    """A query plan drawn as a tree, each node shaded by its share of the actual time.

    PostgreSQL plans (EXPLAIN ANALYZE, from FORMAT JSON) show estimated and actual rows and
    each node's own time (``PlanNode.exclusive_ms``, wall time: processes of a parallel
    plan run side by side) as a share of the root's, so the shares add up to about 100%.
    They are the JSON run's figures, not those of the text plan printed beside it (two
    executions). SQLite plans (no timings) shade full scans red and index searches green.
    """
    roots = [n for n in plan.nodes if n.depth == 0]
    where = _tree_layout(roots)
    total = sum(n.actual_total_ms or 0.0 for n in roots) or None
    width = max(x for x, _ in where.values()) + 1
    height = -min(y for _, y in where.values()) + 1
    with _style():
        fig, ax = plt.subplots(figsize=(max(6.0, 3.1 * width), max(2.2, 1.25 * height)))
        cmap = plt.get_cmap("Oranges")
        for node in plan.nodes:
            x, y = where[id(node)]
            for child in node.children:
                cx, cy = where[id(child)]
                ax.plot([x, cx], [y, cy], color="0.6", lw=1, zorder=1)
            if total and node.exclusive_ms is not None:
                face = cmap(0.1 + 0.8 * min(node.exclusive_ms / total, 1.0))
            elif node.full and node.relation:
                face = "#f4b6b6"
            elif node.index or "PRIMARY KEY" in node.detail:
                face = "#b9e4c0"
            else:
                face = "0.92"
            ax.text(
                x,
                y,
                _node_label(node, total),
                ha="center",
                va="center",
                fontsize=8,
                zorder=2,
                bbox={"boxstyle": "round,pad=0.4", "fc": face, "ec": "0.4"},
            )
        ax.set_xlim(-0.6, width - 0.4)
        ax.set_ylim(-height + 0.5, 0.5)
        ax.axis("off")
        shade = "share of actual time" if total else "red: full scan, green: index"
        ax.set_title(f"{title or 'Plan'} · {plan.backend} ({shade})")
        fig.tight_layout()
        plt.close(fig)
    return fig
