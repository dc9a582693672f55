"""The before/after report of an output folder, and its terminal table.

- :func:`write_report`: ``metrics.json``, ``report.md`` and ``metrics.png``
  (:func:`~fastembed_tune.evaluation.chart.metrics_chart`), each written to a temporary name and
  renamed into place.
- :func:`format_table`: the same rows as a fixed-width table for the terminal.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from fastembed_tune.core.atomic import atomic_write
from fastembed_tune.evaluation.chart import metrics_chart
from fastembed_tune.evaluation.names import metric_label

__all__ = ["write_report", "format_table"]


def _metrics_of(m: Mapping[str, Any]) -> dict[str, float]:
    """The numeric metrics of a metrics dict, or of an :func:`~fastembed_tune.evaluation.metrics.evaluate` result."""
    if isinstance(m.get("metrics"), Mapping):
        m = m["metrics"]
    return {str(k): float(v) for k, v in m.items()
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}


def _columns(rows: Sequence[tuple[str, dict[str, float]]]) -> list[str]:
    cols: list[str] = []
    for _, m in rows:
        cols += [c for c in m if c not in cols]
    return cols


def _gain(v: Optional[float], b: Optional[float]) -> Optional[float]:
    if v is None or b is None or b == 0 or not math.isfinite(b) or not math.isfinite(v):
        return None
    return (v - b) / b


def _check_rows(rows: Any) -> list[tuple[str, dict[str, float]]]:
    if not rows:
        raise ValueError("rows is empty: pass [(label, metrics), ...], e.g. [('base', m0), ('fine-tuned', m1)]")
    out = []
    for r in rows:
        if not (isinstance(r, (tuple, list)) and len(r) == 2 and isinstance(r[1], Mapping)):
            raise ValueError(f"each row must be a (label, metrics dict) pair, got {r!r:.80}")
        out.append((str(r[0]), _metrics_of(r[1])))
    labels = [l for l, _ in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"row labels must be distinct, got {labels}")
    return out


def format_table(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """A fixed-width text table for the terminal: one line per model, 4 decimals.

    >>> print(format_table([("base", {"ndcg@10": 0.31}), ("tuned", {"ndcg@10": 0.4321})]))
    model  nDCG@10
    -----  -------
    base    0.3100
    tuned   0.4321
    """
    rows_ = _check_rows(rows)
    cols = _columns(rows_)
    table = [["model", *[metric_label(c) for c in cols]]]
    for label, m in rows_:
        table.append([label, *[f"{m[c]:.4f}" if c in m else "-" for c in cols]])
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = []
    for n, r in enumerate(table):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _gain_line(metric: str, b: Optional[float], v: Optional[float], label: str, base: str) -> str:
    head, tail = f"{metric_label(metric)}: ", f" — {label} vs {base}"
    if b is None or v is None:
        return head + "not measured for both" + tail
    g = _gain(v, b)
    if g is None:
        return head + f"{b:.4f} → {v:.4f} (base is 0: no relative gain)" + tail
    return head + f"{b:.4f} → {v:.4f} ({g * 100:+.1f}%, {v / b:.2f}x)" + tail


def write_report(out_dir: Union[str, "os.PathLike[str]"], rows: Sequence[tuple[str, Mapping[str, Any]]],
                 title: str, extra_md: str = "", comparisons: Optional[Mapping[str, dict]] = None,
                 intervals: Optional[Mapping[str, Mapping[str, tuple[float, float]]]] = None,
                 extra: Optional[Mapping[str, Any]] = None, *, verdict_md: str = "",
                 shipped: Optional[str] = None) -> dict:
    """Write ``metrics.json``, ``report.md`` and ``metrics.png`` into ``out_dir``; return the JSON.

    ``rows`` is ``[(label, metrics), ...]``, the first row being the base everything is compared
    with; a metrics dict may also be a whole :func:`~fastembed_tune.evaluation.metrics.evaluate`
    result. Each file is written to a temporary name in ``out_dir`` and renamed into place
    (``metrics.json`` last).

    ``metrics.json``: ``{"title", "base": first label, "metrics": {label: {metric: value}},
    "gain": {label: {metric: (value - base) / base, or null where the base is 0}}}`` for every row
    after the first; with ``comparisons`` (e.g. ``{"B vs A": gate.compare(...)}``) also
    ``"comparisons"`` (report.md shows what ``extra_md`` says of them); ``intervals``
    (``{label: {metric: (low, high)}}``, e.g. 95% bootstrap intervals) become the chart's error bars
    and ``"intervals"`` in metrics.json; ``extra`` adds its (JSON-able) keys to metrics.json as they are.

    ``report.md`` opens with ``verdict_md`` (what to do with the result, before any detail), then the
    table, the gains, the chart and ``extra_md``. ``shipped`` (a row label) is the model the chart marks
    as the one that ships.

    >>> import json, os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> r = write_report(d, [("base", {"ndcg@10": 0.25}), ("tuned", {"ndcg@10": 0.5})], "demo", shipped="tuned")
    >>> r["gain"]["tuned"]["ndcg@10"], sorted(os.listdir(d))
    (1.0, ['metrics.json', 'metrics.png', 'report.md'])
    """
    rows_ = _check_rows(rows)
    if shipped is not None and shipped not in dict(rows_):
        raise ValueError(f"shipped must be one of the row labels {[label for label, _ in rows_]}, got {shipped!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cols = _columns(rows_)
    base_label, base = rows_[0]
    result = {
        "title": title,
        "base": base_label,
        "metrics": {label: dict(m) for label, m in rows_},
        "gain": {label: {c: _gain(m.get(c), base.get(c)) for c in cols} for label, m in rows_[1:]},
    }
    if comparisons:
        result["comparisons"] = dict(comparisons)
    if intervals:
        result["intervals"] = {label: {m: list(v) for m, v in ci.items()} for label, ci in intervals.items()}
    for key, value in (extra or {}).items():
        if key in result:
            raise ValueError(f"extra key {key!r} would replace metrics.json's own")
        result[key] = value
    md = _markdown(rows_, cols, title, extra_md, verdict_md)
    atomic_write(out / "metrics.png", lambda f: metrics_chart(f, rows_, cols, title, intervals, shipped), binary=True)
    atomic_write(out / "report.md", lambda f: f.write("\n".join(md)), binary=False)
    atomic_write(out / "metrics.json",
                 lambda f: f.write(json.dumps(result, indent=2, ensure_ascii=False) + "\n"), binary=False)
    return result


def _markdown(rows: list[tuple[str, dict[str, float]]], cols: list[str], title: str, extra_md: str,
              verdict_md: str) -> list[str]:
    """report.md's lines: the title, the verdict, the table, the gains over the first row, the chart,
    then ``extra_md``."""
    base_label, base = rows[0]
    headline = "ndcg@10" if "ndcg@10" in cols else (cols[0] if cols else None)
    md = [f"# {title}", ""]
    if verdict_md:
        md += [verdict_md.rstrip("\n"), ""]
    if cols:
        md.append("| model | " + " | ".join(metric_label(c) for c in cols) + " |")
        md.append("|---|" + "---:|" * len(cols))
        for label, m in rows:
            md.append(f"| {label} | " + " | ".join(f"{m[c]:.4f}" if c in m else "—" for c in cols) + " |")
        md.append("")
    if headline is not None and len(rows) > 1:
        md += [f"**Gain vs {base_label}**", ""]
        for label, m in rows[1:]:
            md.append("- " + _gain_line(headline, base.get(headline), m.get(headline), label, base_label))
        md.append("")
    md += ["![metrics](metrics.png)", ""]
    if extra_md:
        md += [extra_md.rstrip("\n"), ""]
    return md
