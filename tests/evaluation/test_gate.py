"""The gate's statistics against independent computations: exact sign-flip enumeration, ranx's
Fisher randomization test, a plain numpy bootstrap, and nDCG per query against ranx."""
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastembed_tune.evaluation.gate import bootstrap_ci, compare, randomization_p, significant_gain


def exact_p(a, b):
    d = np.asarray(b, float) - np.asarray(a, float)
    obs = abs(d.mean())
    flips = np.array(list(itertools.product([-1, 1], repeat=len(d))))
    return float((np.abs((flips * d).mean(1)) >= obs - 1e-12).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_randomization_p_matches_exact_enumeration(seed):
    rng = np.random.default_rng(seed)
    a = rng.random(12)
    b = a + rng.normal(0.08 * seed, 0.1, 12)
    want = exact_p(a, b)  # all 4096 sign patterns
    got = randomization_p(a, b, n_resamples=20000, seed=seed)
    assert got == pytest.approx(want, abs=0.01)


def test_randomization_p_matches_ranx_fisher():
    from ranx.statistical_tests.fisher_randomization_test import fisher_randomization_test

    rng = np.random.default_rng(7)
    a = rng.random(200)
    for shift in (0.0, 0.02, 0.05):
        b = np.clip(a + rng.normal(shift, 0.15, 200), 0, 1)
        theirs, _ = fisher_randomization_test(a, b, n_permutations=20000, max_p=0.05, random_seed=3)
        ours = randomization_p(a, b, n_resamples=20000, seed=3)
        # two independent Monte Carlo estimates (ranx's numba RNG is its own): 4 standard errors apart at most
        se = np.sqrt(2 * max(theirs * (1 - theirs), 1e-4) / 20000)
        assert ours == pytest.approx(theirs, abs=4 * se + 1e-3), shift


def test_bootstrap_ci_matches_plain_numpy():
    rng = np.random.default_rng(4)
    a, b = rng.random(300), rng.random(300) + 0.05
    d = b - a
    boot = np.random.default_rng(11)
    means = np.array([d[boot.integers(0, 300, 300)].mean() for _ in range(4000)])
    lo, hi = np.quantile(means, [0.025, 0.975])
    got_lo, got_hi = bootstrap_ci(a, b, n_resamples=4000, seed=5)
    se = d.std() / np.sqrt(300)
    assert got_lo == pytest.approx(lo, abs=0.2 * se) and got_hi == pytest.approx(hi, abs=0.2 * se)
    assert got_lo < d.mean() < got_hi


@given(st.lists(st.floats(0, 1), min_size=1, max_size=30), st.floats(-0.5, 0.5))
def test_compare_counts_and_gate(scores, shift):
    a = np.array(scores)
    b = np.clip(a + shift, 0, 1)
    c = compare(a, b, n_resamples=500)
    assert c["wins"] + c["ties"] + c["losses"] == len(a)
    assert c["diff"] == pytest.approx(float((b - a).mean()), abs=1e-9)
    assert c["ci_low"] <= c["diff"] + 1e-9 and c["diff"] - 1e-9 <= c["ci_high"]
    assert 0 < c["p_value"] <= 1
    if c["diff"] <= 0:
        assert not significant_gain(c)  # never a regression labelled a gain


def test_nan_scores_are_refused():
    with pytest.raises(ValueError, match="finite"):
        compare([0.1, float("nan")], [0.2, 0.3])
    with pytest.raises(ValueError, match="one length"):
        compare([0.1], [0.2, 0.3])


def test_per_query_ndcg_matches_ranx():
    from ranx import Qrels, Run
    from ranx import evaluate as ranx_evaluate

    from fastembed_tune.evaluation.metrics import ir_metrics

    rng = np.random.default_rng(0)
    qrels = {f"q{i:02d}": {f"d{j}": int(rng.integers(1, 3)) for j in rng.choice(30, 3, replace=False)} for i in range(40)}
    run = {q: [f"d{j}" for j in rng.permutation(30)[:20]] for q in qrels}
    pq = ir_metrics(run, qrels, per_query=True)
    ranx_run = Run({q: {d: float(20 - r) for r, d in enumerate(docs)} for q, docs in run.items()})
    theirs = ranx_evaluate(Qrels(qrels), ranx_run, "ndcg@10", return_mean=False)  # qids sorted: q00..q39
    np.testing.assert_allclose(pq["ndcg@10"], theirs, atol=1e-6)
    assert pq["qids"] == list(qrels)
