"""Bad input to topk_cosine: a ValueError naming the problem, never a crash."""
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fastembed_tune import kernels

X = np.eye(8, dtype=np.float32)
Q = X[:3]


@pytest.mark.parametrize("k", [0, -1, 9, 100])
def test_k_out_of_range(k):
    with pytest.raises(ValueError, match="k must be between 1 and the corpus size N=8"):
        kernels.topk_cosine(Q, X, k)


def test_k_not_integer():
    with pytest.raises(ValueError, match="k must be an integer"):
        kernels.topk_cosine(Q, X, 2.0)


def test_dimension_mismatch():
    with pytest.raises(ValueError, match="dimension 8 but corpus has dimension 4"):
        kernels.topk_cosine(Q, np.eye(4, dtype=np.float32), 1)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32])
def test_non_float32(dtype):
    with pytest.raises(ValueError, match="corpus must be float32"):
        kernels.topk_cosine(Q, X.astype(dtype), 1)


def test_torch_non_float32():
    with pytest.raises(ValueError, match="queries must be float32"):
        kernels.topk_cosine(torch.eye(8, dtype=torch.float64), X, 1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf(bad):
    x = X.copy()
    x[5, 2] = bad
    with pytest.raises(ValueError, match="corpus row 5 column 2 is .*must be finite"):
        kernels.topk_cosine(Q, x, 1)
    q = Q.copy()
    q[1, 0] = bad
    with pytest.raises(ValueError, match="queries row 1 column 0"):
        kernels.topk_cosine(q, X, 1)


@pytest.mark.parametrize("shape", [(0, 8), (3, 0)])
def test_empty(shape):
    with pytest.raises(ValueError, match="is empty"):
        kernels.topk_cosine(np.zeros(shape, np.float32), X, 1)
    with pytest.raises(ValueError, match="is empty"):
        kernels.topk_cosine(Q, np.zeros(shape, np.float32), 1)


def test_wrong_rank_and_type():
    with pytest.raises(ValueError, match="must be 2-D"):
        kernels.topk_cosine(X[0], X, 1)
    with pytest.raises(ValueError, match="numpy array, np.memmap or torch tensor, got list"):
        kernels.topk_cosine(Q.tolist(), X, 1)


def test_not_normalized():
    with pytest.raises(ValueError, match="row 0 has L2 norm 2, not 1"):
        kernels.topk_cosine(Q, 2 * X, 1)
    # a raw inner-product search is allowed: query i scores 2 on document i, 0 elsewhere
    s, i = kernels.topk_cosine(Q, 2 * X, 2, normalized=False)
    assert i.tolist() == [[0, 1], [1, 0], [2, 0]]
    assert s.tolist() == [[2, 0], [2, 0], [2, 0]]


@pytest.mark.parametrize("excl,msg", [
    ([[0], [8], []], r"exclude\[1\] contains id 8, outside the corpus ids \[0, 8\)"),
    ([[0], [-3], []], r"exclude\[1\] contains id -3"),
    ([[0], [1]], "exclude has 2 entries but there are 3 queries"),
    ([[0.5], [1], [2]], r"exclude\[0\] must hold integer corpus ids"),
    (np.array([[0, -1], [9, -1], [1, 2]]), r"exclude\[1\] contains id 9"),
])
def test_exclude_out_of_range(excl, msg):
    with pytest.raises(ValueError, match=msg):
        kernels.topk_cosine(Q, X, 1, exclude=excl)


def test_bad_filters():
    with pytest.raises(ValueError, match="skip_top must be an integer >= 0"):
        kernels.topk_cosine(Q, X, 1, skip_top=-1)
    with pytest.raises(ValueError, match="max_ratio must be a finite number > 0"):
        kernels.topk_cosine(Q, X, 1, max_ratio=0, positive_scores=[1, 1, 1])
    with pytest.raises(ValueError, match="max_ratio needs each query's positive score"):
        kernels.topk_cosine(Q, X, 1, max_ratio=0.9)
    with pytest.raises(ValueError, match="positive_scores has 2 entries"):
        kernels.topk_cosine(Q, X, 1, max_ratio=0.9, positive_scores=[1, 1])
    with pytest.raises(ValueError, match="max_ratio must be a finite number > 0"):
        kernels.topk_cosine(Q, X, 1, max_ratio=float("nan"), positive_scores=[1, 1, 1])
    with pytest.raises(ValueError, match="positive_scores must be finite"):
        kernels.topk_cosine(Q, X, 1, max_ratio=0.9, positive_scores=[1, np.nan, 1])
    with pytest.raises(ValueError, match="unknown SIMD path 'mmx'"):
        kernels.topk_cosine(Q, X, 1, simd="mmx")


@pytest.mark.parametrize("simd", kernels.available_simd() + ["reference"])
def test_native_layer_rejects_what_python_would(simd):
    # C++ never trusts its caller: the raw binding checks again, whichever path would run.
    from fastembed_tune import _native

    def call(*a, **kw):
        return _native.topk_cosine(*a, simd=simd, **kw)

    with pytest.raises(ValueError, match=r"k must be in \[1, N\]"):
        call(Q, X, 9)
    with pytest.raises(ValueError, match="queries has the wrong dtype"):
        call(Q.astype(np.float64), X, 1)
    with pytest.raises(ValueError, match="queries must be C-contiguous"):
        call(np.asfortranarray(np.ones((3, 8), np.float32)), X, 1)
    with pytest.raises(ValueError, match="queries and corpus dimensions differ"):
        call(Q, np.eye(4, dtype=np.float32), 1)
    with pytest.raises(ValueError, match="exclude id out of range"):
        call(Q, X, 1, np.array([0, 1, 1, 1]), np.array([99]))
    with pytest.raises(ValueError, match="exclude ids must be sorted per query"):
        call(Q, X, 1, np.array([0, 2, 2, 2]), np.array([3, 1]))
    with pytest.raises(ValueError, match=r"exclude offsets must have Q \+ 1 entries"):
        call(Q, X, 1, np.array([0, 1]), np.array([1]))
    with pytest.raises(ValueError, match="upper bounds must not be NaN"):
        call(Q, X, 1, upper=np.array([1, np.nan, 1], np.float32))
    with pytest.raises(ValueError, match="bad skip_top"):
        call(Q, X, 1, skip_top=-1)
    # and what it accepts, it computes: query i's best match is document i
    s, i = call(Q, X, 1)
    assert i.ravel().tolist() == [0, 1, 2] and s.ravel().tolist() == [1, 1, 1]


@given(q=st.integers(1, 5), n=st.integers(1, 5), d1=st.integers(1, 4), d2=st.integers(1, 4),
       k=st.integers(-2, 7), junk=st.sampled_from([None, np.nan, np.inf, -np.inf, 3.0]),
       simd=st.sampled_from(kernels.available_simd() + ["reference"]))
def test_random_bad_shapes_never_crash(q, n, d1, d2, k, junk, simd):
    # Each input has exactly one expected outcome: the first rule it breaks, by its message, or,
    # when it breaks none, the right answer. Nothing passes on silence.
    a = np.ones((q, d1), np.float32) / np.sqrt(np.float32(d1))
    b = np.ones((n, d2), np.float32) / np.sqrt(np.float32(d2))
    if junk is not None:
        b[0, 0] = junk
    if d1 != d2:
        expect = re.escape(f"queries have dimension {d1} but corpus has dimension {d2}")
    elif not 1 <= k <= n:
        expect = re.escape(f"k must be between 1 and the corpus size N={n}, got k={k}")
    elif junk is not None and not np.isfinite(junk):
        expect = re.escape(f"corpus row 0 column 0 is {b[0, 0]}; embeddings must be finite")
    elif junk is not None:
        expect = r"corpus row 0 has L2 norm [0-9.]+, not 1"
    else:
        expect = None
    if expect is not None:
        with pytest.raises(ValueError, match=expect):
            kernels.topk_cosine(a, b, k, simd=simd)
        return
    s, i = kernels.topk_cosine(a, b, k, simd=simd)
    # every document is the same unit vector as every query: all score 1, ties by smaller id
    assert i.tolist() == [list(range(k))] * q
    np.testing.assert_allclose(s, np.ones((q, k)), atol=1e-6)
