"""``metrics.png``: one model per line, readable at its own size.

The main panel holds the headline metric (nDCG@10 where it was measured) of every model as a
horizontal bar with its 95% interval as an error bar, the base's value as a dashed line and the model
that ships in its own colour; the other metrics follow in small panels below, the same models in
the same order. The figure is at most :data:`WIDTH_IN` inches wide at :data:`DPI` (1200 pixels) and
no text is smaller than :data:`MIN_FONT` points, however many models there are.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

from fastembed_tune.evaluation.names import metric_label

__all__ = ["metrics_chart", "WIDTH_IN", "DPI", "MIN_FONT"]

WIDTH_IN = 12.0
DPI = 100
MIN_FONT = 9
PANELS_PER_LINE = 3  # small panels side by side below the main one
BASE, OTHER, SHIPPED = "#9e9e9e", "#4c72b0", "#2ca02c"

Rows = Sequence[tuple[str, Mapping[str, float]]]
Intervals = Mapping[str, Mapping[str, Sequence[float]]]


def metrics_chart(f: Any, rows: Rows, cols: Sequence[str], title: str, intervals: Optional[Intervals] = None,
                  shipped: Optional[str] = None) -> None:
    """Draw the chart of ``rows`` (``[(label, {metric: value})]``, the base first) over the metrics
    ``cols`` and write it to the binary file ``f`` as PNG. ``intervals`` (``{label: {metric: (low,
    high)}}``) become error bars; ``shipped`` names the row drawn as the one that ships.

    >>> import io
    >>> buf = io.BytesIO()
    >>> metrics_chart(buf, [("base", {"ndcg@10": 0.3, "recall@1": 0.2}), ("tuned", {"ndcg@10": 0.4})],
    ...               ["ndcg@10", "recall@1"], "demo", {"tuned": {"ndcg@10": (0.35, 0.45)}}, shipped="tuned")
    >>> buf.getvalue()[:4]
    b'\\x89PNG'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    head = "ndcg@10" if "ndcg@10" in cols else (cols[0] if cols else None)
    others = [c for c in cols if c != head]
    per_line = max(1, min(PANELS_PER_LINE, len(others)))
    lines = math.ceil(len(others) / per_line)
    main_h, small_h = 1.3 + 0.38 * len(rows), 0.9 + 0.24 * len(rows)
    fig = Figure(figsize=(WIDTH_IN, main_h + lines * small_h + 0.4), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1 + lines, per_line, height_ratios=[main_h] + [small_h] * lines)
    fig.suptitle(title, fontsize=MIN_FONT + 4)
    labels = [label for label, _ in rows]
    colors = [SHIPPED if label == shipped else BASE if i == 0 else OTHER for i, label in enumerate(labels)]
    ax = fig.add_subplot(grid[0, :])
    if head is None:
        ax.text(0.5, 0.5, "no metric measured", ha="center", va="center", fontsize=MIN_FONT + 1)
        ax.set_axis_off()
    else:
        _main_panel(ax, rows, head, colors, intervals or {}, shipped)
    first = None
    for n, metric in enumerate(others):
        ax = fig.add_subplot(grid[1 + n // per_line, n % per_line], sharey=first)
        first = first or ax
        _bars(ax, labels, [m.get(metric) for _, m in rows], colors, None, MIN_FONT)
        ax.set_title(metric_label(metric), fontsize=MIN_FONT + 1)
        ax.tick_params(labelleft=n % per_line == 0, labelsize=MIN_FONT)
    fig.savefig(f, format="png")


def _main_panel(ax: Any, rows: Rows, head: str, colors: list[str], intervals: Intervals,
                shipped: Optional[str]) -> None:
    """The headline metric of every row, its interval, the base's value and the row that ships."""
    values = [m.get(head) for _, m in rows]
    errors = [intervals.get(label, {}).get(head) for label, _ in rows]
    _bars(ax, [label for label, _ in rows], values, colors, errors, MIN_FONT + 1)
    base = values[0]
    if base is not None:
        ax.axvline(base, color=BASE, linestyle="--", linewidth=1)
    names = [label + ("  (ships)" if label == shipped else "") for label, _ in rows]
    ax.set_yticks(range(len(rows)), names)
    for tick, label in zip(ax.get_yticklabels(), [label for label, _ in rows]):
        if label == shipped:
            tick.set_fontweight("bold")
            tick.set_color(SHIPPED)
    what = "error bars: 95% bootstrap interval over the test queries" if any(errors) else "test queries"
    ax.set_title(f"{metric_label(head)} ({what}; dashed: the base)", fontsize=MIN_FONT + 2)
    ax.tick_params(labelsize=MIN_FONT + 1)


def _bars(ax: Any, labels: list[str], values: list[Optional[float]], colors: list[str],
          errors: Optional[list[Optional[Sequence[float]]]], fontsize: int) -> None:
    """One horizontal bar per label, top to bottom, its value printed past the bar (and its error
    bar); a missing value leaves an empty line marked "not measured"."""
    ys = list(range(len(labels)))
    shown = [v if v is not None else 0.0 for v in values]
    ax.barh(ys, shown, color=colors, height=0.7)
    ends = list(shown)
    for y, v, e in zip(ys, shown, errors or [None] * len(ys)):
        if e is not None:
            lo, hi = float(e[0]), float(e[1])
            ax.errorbar([v], [y], xerr=[[max(0.0, v - lo)], [max(0.0, hi - v)]], fmt="none", ecolor="black",
                        capsize=3, elinewidth=1)
            ends[y] = max(v, hi)
    top = max(ends + [0.05])
    for y, v, end in zip(ys, values, ends):
        ax.text(end + 0.01 * top, y, f"{v:.4f}" if v is not None else "not measured", va="center",
                fontsize=fontsize)
    ax.set_xlim(0, top * 1.2)
    ax.set_yticks(ys, labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # the first row (the base) on top
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(labelsize=fontsize)
