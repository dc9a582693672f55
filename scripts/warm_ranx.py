"""Compile ranx's numba kernels once, at install time (``make test`` runs this after installing the
test extras). ranx caches them on disk (``cache=True``), but a fresh environment compiles each on
first use (~2 minutes of a 2-core machine's test run), which would otherwise land inside the first test
that calls ranx. Runs the calls the tests make (the IR metrics, the Fisher randomization test).

    python scripts/warm_ranx.py
"""
import time

import numpy as np
from ranx import Qrels, Run, evaluate
from ranx.statistical_tests.fisher_randomization_test import fisher_randomization_test

from fastembed_tune.evaluation.metrics import ir_metrics

METRICS = list(ir_metrics({"q": ["a"]}, {"q": {"a": 1}}))  # ours, named as ranx names them (tests check both)


def main() -> None:
    t0 = time.perf_counter()
    # numba compiles one version per input type, and ranx turns document ids into fixed-width unicode
    # arrays: one version per id width (in the qrels, int grades; in the run, float scores)
    for width in range(1, 6):  # the tests use ids of 2 to 4 characters
        ids = [f"{i:0{width}d}"[-width:] for i in range(12)] if width > 1 else list("abcdefghijkl")
        qrels = {"q0": {ids[0]: 2, ids[1]: 1}, "q1": {ids[2]: 3}, "q2": {ids[3]: 1}}
        run = {"q0": {d: float(12 - i) for i, d in enumerate(ids)}, "q1": {ids[5]: 1.0}, "q2": {}}
        for metrics in (METRICS, "ndcg@10"):
            evaluate(Qrels(qrels), Run(run), metrics, make_comparable=True)
    a = np.random.default_rng(0).random(20)
    fisher_randomization_test(a, a[::-1].copy(), n_permutations=100, max_p=0.05, random_seed=0)
    print(f"ranx kernels compiled (or read from numba's cache) in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
