"""Tests for course_lib.plots: what the two charts draw from a handmade frame (no timings)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer

from course_lib.explain import plan_from_rows
from course_lib.plots import bar_chart, fitted_slopes, plan_tree_chart, scaling_chart

STRATEGIES = ["lazy loop", "selectinload", "joinedload"]
BACKENDS = ["sqlite", "postgresql"]


def _frame(
    ns: list[int], backends: list[str] = BACKENDS, scales: list[str] | None = None
) -> pd.DataFrame:
    """One row per strategy, backend and n, with made-up medians."""
    rows = [
        {
            "strategy": strategy,
            "backend": backend,
            "n": n,
            "median_ms": (s + 1) * (b + 1) * n / 10,
            # a skewed spread: Q1 far below the median would give a negative half-IQR bar
            "q1_ms": (s + 1) * (b + 1) * n / 10 * 0.2,
            "q3_ms": (s + 1) * (b + 1) * n / 10 * 1.1,
        }
        for b, backend in enumerate(backends)
        for n in ns
        for s, strategy in enumerate(STRATEGIES)
    ]
    frame = pd.DataFrame(rows)
    frame.attrs.update(unit="ms", title="Loading posts", scales=scales or ["tiny"])
    return frame


def test_bar_chart_draws_one_bar_per_strategy_and_backend() -> None:
    """strategies × backends bars, with the medians as widths."""
    frame = _frame([100])
    fig = bar_chart(frame)
    (ax,) = fig.axes
    assert len(ax.patches) == len(STRATEGIES) * len(BACKENDS)
    widths = sorted(round(p.get_width(), 6) for p in ax.patches)
    assert widths == sorted(round(m, 6) for m in frame["median_ms"])
    assert [t.get_text() for t in ax.get_yticklabels()] == STRATEGIES


def test_bar_chart_title_names_backends_and_scale() -> None:
    """The title carries the frame's title, the backends and the scale."""
    ax = bar_chart(_frame([100])).axes[0]
    assert ax.get_title() == "Loading posts · sqlite vs postgresql · scale tiny"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == BACKENDS


def test_bar_chart_explicit_title_and_single_backend() -> None:
    """An explicit title wins; one backend draws no legend."""
    ax = bar_chart(_frame([10], backends=["sqlite"]), "Mine").axes[0]
    assert ax.get_title() == "Mine · sqlite · scale tiny"
    assert len(ax.patches) == len(STRATEGIES)
    assert ax.get_legend() is None


def test_bar_chart_without_attrs() -> None:
    """A bare frame falls back to 'Timing' and names no scale."""
    frame = pd.DataFrame(_frame([10], backends=["sqlite"]).to_dict("list"))
    assert frame.attrs == {}
    assert bar_chart(frame).axes[0].get_title() == "Timing · sqlite"


def test_scaling_chart_is_log_log_with_a_line_per_strategy_and_backend() -> None:
    """Log axes, one errorbar line per strategy × backend, each with every n."""
    ns = [10, 100, 1000]
    ax = scaling_chart(_frame(ns, scales=["small"])).axes[0]
    assert ax.get_xscale() == "log"
    assert ax.get_yscale() == "log"
    containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(containers) == len(STRATEGIES) * len(BACKENDS)
    for container in containers:
        assert list(container.lines[0].get_xdata()) == ns
    labels = ax.get_legend_handles_labels()[1]
    # made-up medians grow linearly with n: every fitted slope is 1.00
    assert labels == [f"{s} ({b}), slope 1.00" for s in STRATEGIES for b in BACKENDS]
    assert ax.get_title() == "Loading posts · sqlite vs postgresql · scale small"


def test_scaling_chart_single_backend_labels_are_strategies() -> None:
    """With one backend, the legend shows strategy names alone."""
    ax = scaling_chart(_frame([1, 10], backends=["postgresql"])).axes[0]
    assert ax.get_legend_handles_labels()[1] == [f"{s}, slope 1.00" for s in STRATEGIES]


def test_simulated_backend_is_in_the_title() -> None:
    """A simulated round trip shows in both charts' titles."""
    label = "sqlite + simulated 1 ms/round trip"
    titles = [
        bar_chart(_frame([10], backends=[label])).axes[0].get_title(),
        scaling_chart(_frame([10, 100], backends=[label])).axes[0].get_title(),
    ]
    for title in titles:
        assert "simulated" in title
        assert title == ("Loading posts · sqlite · with simulated 1 ms/round trip · scale tiny")


def test_figures_are_closed() -> None:
    """Charts are closed after drawing, so a notebook cell shows each once."""
    before = set(plt.get_fignums())
    bar_chart(_frame([10]))
    scaling_chart(_frame([10, 100]))
    assert set(plt.get_fignums()) == before


def test_bar_chart_refuses_several_n_with_a_clear_message() -> None:
    """A multi-n frame belongs in scaling_chart; bar_chart says so instead of a pandas error."""
    try:
        bar_chart(_frame([10, 100]))
    except ValueError as exc:
        assert "scaling_chart" in str(exc)
    else:
        raise AssertionError("bar_chart accepted a frame with several n")


def test_charts_draw_any_measure_such_as_peak_memory() -> None:
    """y='peak_kib' plots that column, labels the axis, and draws no IQR error bars."""
    frame = _frame([10, 100]).assign(peak_kib=lambda f: f["median_ms"] * 3)
    fig = scaling_chart(frame, y="peak_kib")
    ax = fig.axes[0]
    assert "peak memory" in ax.get_ylabel()
    first = ax.get_lines()[0]
    assert list(first.get_ydata()) == [3.0, 30.0]
    bars = bar_chart(frame[frame["n"] == 10], y="peak_kib").axes[0]
    assert "peak memory" in bars.get_xlabel()
    assert (
        sorted(p.get_width() for p in bars.patches)[-1] == frame["peak_kib"][frame["n"] == 10].max()
    )
    plt.close("all")


def test_error_bars_span_the_quartiles_and_never_go_below_zero() -> None:
    """Bars run from Q1 to Q3, even when the spread is skewed; nothing is drawn below zero."""
    frame = _frame([10], backends=["sqlite"])
    ax = bar_chart(frame).axes[0]
    (segments,) = [c for c in ax.collections if hasattr(c, "get_segments")]
    lows = sorted(min(seg[:, 0]) for seg in segments.get_segments())
    highs = sorted(max(seg[:, 0]) for seg in segments.get_segments())
    assert lows == pytest.approx(sorted(frame["q1_ms"]))
    assert highs == pytest.approx(sorted(frame["q3_ms"]))
    assert min(lows) >= 0
    plt.close("all")


def test_legends_sit_outside_the_axes() -> None:
    """Legends are anchored right of the plotting area, so they never cover data."""
    for fig in (bar_chart(_frame([10])), scaling_chart(_frame([10, 100]))):
        legend = fig.axes[0].get_legend()
        anchor = legend.get_bbox_to_anchor().transformed(fig.axes[0].transAxes.inverted())
        assert anchor.x0 >= 1.0


def test_fitted_slopes() -> None:
    """log-log slopes per strategy and backend, with the decades of n they cover."""
    frame = _frame([10, 100, 1000], backends=["sqlite"])
    slopes = fitted_slopes(frame)
    assert slopes["slope"].tolist() == [1.0, 1.0, 1.0]
    assert slopes["decades"].tolist() == [2.0, 2.0, 2.0]
    flat = frame.assign(median_ms=5.0)
    assert fitted_slopes(flat)["slope"].tolist() == [0.0, 0.0, 0.0]
    assert fitted_slopes(_frame([10], backends=["sqlite"])).empty


def _node(kind: str, ms: float, loops: int, rows: int, *plans: dict, **extra: object) -> dict:
    return {
        "Node Type": kind,
        "Plan Rows": rows,
        "Actual Rows": rows,
        "Actual Total Time": ms,
        "Actual Loops": loops,
        "Plans": list(plans),
        **extra,
    }


def test_plan_tree_shares_of_a_parallel_plan_add_up() -> None:
    """Workers run side by side: a node under a Gather counts its wall time, not time x loops,
    so the boxes' shares of the root's time add up to 100% (they were 181% before)."""
    scan = _node("Seq Scan", 5.0, 3, 100, **{"Parallel Aware": True, "Relation Name": "cars"})
    partial = _node("Aggregate", 6.0, 3, 1, scan, Strategy="Plain")
    gather = _node("Gather", 9.9, 1, 3, partial)
    top = _node("Aggregate", 10.0, 1, 1, gather, Strategy="Plain")
    plan = plan_from_rows("postgresql", [("Aggregate",)], [{"Plan": top}], True)
    fig = plan_tree_chart(plan, "parallel")
    labels = [t.get_text() for t in fig.axes[0].texts]
    shares = [int(label.splitlines()[-1].split("%")[0]) for label in labels]
    assert sum(shares) == 100
    assert "× 3 loops (parallel)" in labels[-1]
    assert fig.axes[0].get_title() == "parallel · postgresql (share of actual time)"
