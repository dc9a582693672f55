"""pytest-benchmark suite for topk_cosine on each SIMD path (not part of the test run).

    pytest benchmarks/test_bench_topk.py --benchmark-only
"""
import numpy as np
import pytest

from fastembed_tune.kernels import available_simd, topk_cosine


def unit(rng, n, d):
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return unit(rng, 1024, 384), unit(rng, 20_000, 384)


@pytest.mark.parametrize("simd", available_simd())
def test_topk_1024x20000(benchmark, data, simd):
    q, x = data
    benchmark.extra_info["gflops_per_call"] = 2 * q.shape[0] * x.shape[0] * q.shape[1] / 1e9
    benchmark(topk_cosine, q, x, 32, simd=simd)


@pytest.mark.parametrize("Q", [1, 16])
def test_topk_few_queries(benchmark, data, Q):
    q, x = data
    benchmark(topk_cosine, q[:Q], x, 32)


def test_topk_with_filters(benchmark, data):
    q, x = data
    excl = [[i] for i in range(q.shape[0])]
    benchmark(topk_cosine, q, x, 32, exclude=excl, skip_top=3, max_ratio=0.95)
