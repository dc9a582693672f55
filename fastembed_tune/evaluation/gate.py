"""Is a gain more than noise? Paired comparisons of two models on the same queries.

For per-query scores ``a`` (e.g. the base model's nDCG@10) and ``b`` (the fine-tuned model's) on the
same queries, :func:`compare` gives

- the mean difference ``b - a`` and its paired bootstrap 95% confidence interval (queries resampled
  with replacement, the percentile interval of the mean difference; Efron & Tibshirani 1993);
- the two-sided p-value of a paired randomization test (Fisher's, as in Smucker, Allan & Carterette,
  CIKM 2007, and ranx's ``fisher`` test): under the null hypothesis the two systems are exchangeable
  on each query, so each query's difference keeps or flips its sign at random; p is the share of
  ``n_resamples`` sign patterns whose mean difference is at least as far from 0 as the observed one,
  counting the observed pattern itself ((count + 1) / (n + 1), never 0);
- per-query wins / ties / losses of ``b`` against ``a``.

:func:`significant_gain` is the gate ``run`` applies: the whole interval above 0 and p < alpha.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

TIE = 1e-9


def _paired(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired scores must be two non-empty 1-D sequences of one length; got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired scores must be finite (NaN/Inf found)")
    return b - a


def bootstrap_ci(a: Sequence[float], b: Sequence[float], n_resamples: int = 10000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap ``1 - alpha`` interval of ``mean(b - a)``, queries resampled in pairs.

    >>> lo, hi = bootstrap_ci([0.1, 0.2, 0.3, 0.4], [0.3, 0.4, 0.5, 0.6])
    >>> round(lo, 6), round(hi, 6)
    (0.2, 0.2)
    """
    d = _paired(a, b)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for s in range(0, n_resamples, 1000):  # bounded memory: 1000 resamples x n queries at a time
        m = min(1000, n_resamples - s)
        means[s:s + m] = d[rng.integers(0, len(d), size=(m, len(d)))].mean(1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def mean_ci(values: Sequence[float], n_resamples: int = 10000, alpha: float = 0.05,
            seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap ``1 - alpha`` interval of ``mean(values)`` (one model's per-query scores;
    the error bar of its chart column).

    >>> mean_ci([0.5] * 10)
    (0.5, 0.5)
    """
    return bootstrap_ci(np.zeros(len(values)), values, n_resamples, alpha, seed)


def randomization_p(a: Sequence[float], b: Sequence[float], n_resamples: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value of the paired randomization (sign-flip) test of ``mean(b - a) == 0``.

    >>> randomization_p([0.0] * 20, [1.0] * 20) < 0.001, randomization_p([0.5, 0.2], [0.5, 0.2])
    (True, 1.0)
    """
    d = _paired(a, b)
    observed = abs(d.mean())
    rng = np.random.default_rng(seed)
    count = 0
    for s in range(0, n_resamples, 1000):
        m = min(1000, n_resamples - s)
        signs = rng.integers(0, 2, size=(m, len(d)), dtype=np.int8) * 2 - 1
        count += int((np.abs((signs * d).mean(1)) >= observed - 1e-12).sum())
    return (count + 1) / (n_resamples + 1)


def compare(a: Sequence[float], b: Sequence[float], n_resamples: int = 10000, alpha: float = 0.05,
            seed: int = 0) -> dict:
    """Everything the report says about ``b`` against ``a`` on paired per-query scores.

    >>> r = compare([0.2, 0.5, 0.1, 0.0], [0.4, 0.5, 0.3, 0.2])
    >>> r["diff"], (r["wins"], r["ties"], r["losses"]), r["n"]
    (0.15, (3, 1, 0), 4)
    """
    d = _paired(a, b)
    lo, hi = bootstrap_ci(a, b, n_resamples, alpha, seed)
    return {"mean_a": float(np.mean(a)), "mean_b": float(np.mean(b)), "diff": round(float(d.mean()), 12),
            "ci_low": lo, "ci_high": hi, "confidence": 1 - alpha,
            "p_value": randomization_p(a, b, n_resamples, seed),
            "wins": int((d > TIE).sum()), "ties": int((np.abs(d) <= TIE).sum()), "losses": int((d < -TIE).sum()),
            "n": int(len(d))}


def significant_gain(comparison: dict, alpha: float = 0.05) -> bool:
    """The gate: ``b`` beats ``a`` when the whole confidence interval lies above 0 and p < alpha.

    >>> significant_gain({"ci_low": 0.01, "ci_high": 0.05, "p_value": 0.001})
    True
    >>> significant_gain({"ci_low": -0.01, "ci_high": 0.05, "p_value": 0.2})
    False
    """
    return comparison["ci_low"] > 0 and comparison["p_value"] < alpha


def describe(comparison: dict, what: str = "nDCG@10") -> str:
    """One report line: the difference, its interval, the p-value, win/tie/loss.

    >>> describe({"diff": 0.07, "ci_low": 0.05, "ci_high": 0.09, "confidence": 0.95, "p_value": 0.0001,
    ...           "wins": 300, "ties": 250, "losses": 50, "n": 600})
    '+0.0700 nDCG@10 (95% CI +0.0500 to +0.0900, paired randomization p = 0.0001; per query 300 wins, 250 ties, 50 losses of 600)'
    """
    c = comparison
    return (f"{c['diff']:+.4f} {what} ({round(100 * c['confidence'])}% CI {c['ci_low']:+.4f} to {c['ci_high']:+.4f}, "
            f"paired randomization p = {c['p_value']:.4f}; per query {c['wins']} wins, {c['ties']} ties, "
            f"{c['losses']} losses of {c['n']})")


def verdict(comparison: dict) -> str:
    """The gate's word for a comparison: a significant gain, a regression, or neither.

    >>> verdict({"diff": 0.02, "ci_low": 0.01, "ci_high": 0.03, "p_value": 0.001})
    'a significant gain'
    >>> verdict({"diff": -0.01, "ci_low": -0.02, "ci_high": 0.001, "p_value": 0.2})
    'a regression'
    """
    if significant_gain(comparison):
        return "a significant gain"
    return "a regression" if comparison["diff"] < 0 else "not a significant gain"


def enforce_gain(comparison: dict, what: str, over: str, report: str) -> None:
    """Raise :class:`~fastembed_tune.core.errors.NoSignificantGain` unless ``comparison`` (``over`` vs
    ``what``, nDCG@10 on the test queries) is a significant gain; the message names ``report``.

    >>> enforce_gain({"diff": 0.02, "ci_low": 0.01, "ci_high": 0.03, "p_value": 0.001, "n": 9}, "x", "y", "r.md")
    >>> enforce_gain({"diff": 0.0, "ci_low": -0.01, "ci_high": 0.01, "p_value": 0.9, "n": 9}, "the adapter",
    ...              "the frozen vectors", "r.md")
    Traceback (most recent call last):
    fastembed_tune.core.errors.NoSignificantGain: the adapter is not a significant gain over the frozen vectors on the 9 test queries (nDCG@10 +0.0000, 95% CI -0.0100 to +0.0100, p = 0.9000); do not ship it. Everything is in r.md (--allow-no-gain exits 0)
    """
    from fastembed_tune.core.errors import NoSignificantGain

    c = comparison
    if not significant_gain(c):
        raise NoSignificantGain(f"{what} is {verdict(c)} over {over} on the {c['n']} test queries (nDCG@10 "
                                f"{c['diff']:+.4f}, 95% CI {c['ci_low']:+.4f} to {c['ci_high']:+.4f}, p = "
                                f"{c['p_value']:.4f}); do not ship it. Everything is in {report} "
                                f"(--allow-no-gain exits 0)")
