"""How metric keys (``ndcg@10``, ``recall@1``, ...) are shown in tables and on the chart."""
from __future__ import annotations

__all__ = ["METRIC_NAMES", "metric_label"]

# How each metric key is shown in tables and on the chart.
METRIC_NAMES = {"ndcg": "nDCG", "recall": "Recall", "mrr": "MRR", "map": "MAP", "precision": "P"}


def metric_label(metric: str) -> str:
    """The display name of a metric key; unknown names pass through.

    >>> metric_label("ndcg@10"), metric_label("map@100"), metric_label("latency")
    ('nDCG@10', 'MAP@100', 'latency')
    """
    name, _, k = metric.partition("@")
    return f"{METRIC_NAMES.get(name, name)}@{k}" if k else METRIC_NAMES.get(name, name)
