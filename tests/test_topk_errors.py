"""Bad input to topk_cosine: a ValueError naming the problem, never a crash."""
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
    kernels.topk_cosine(Q, 2 * X, 1, normalized=False)  # a raw inner-product search is allowed


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
    with pytest.raises(ValueError, match="SIMD path"):
        kernels.topk_cosine(Q, X, 1, simd="mmx")


def test_native_layer_rejects_what_python_would():
    # C++ never trusts its caller: the raw binding checks again.
    from fastembed_tune import _native
    with pytest.raises(ValueError):
        _native.topk_cosine(Q, X, 9)
    with pytest.raises(ValueError):
        _native.topk_cosine(Q.astype(np.float64), X, 1)
    with pytest.raises(ValueError):
        _native.topk_cosine(np.asfortranarray(np.ones((3, 8), np.float32)), X, 1)
    with pytest.raises(ValueError):
        _native.topk_cosine(Q, X, 1, np.array([0, 1, 1, 1]), np.array([99]))


@given(q=st.integers(1, 5), n=st.integers(1, 5), d1=st.integers(1, 4), d2=st.integers(1, 4),
       k=st.integers(-2, 7), junk=st.sampled_from([0.0, np.nan, np.inf, 3.0]))
def test_random_bad_shapes_never_crash(q, n, d1, d2, k, junk):
    a = np.ones((q, d1), np.float32) / np.sqrt(d1)
    b = np.ones((n, d2), np.float32) / np.sqrt(d2)
    b[0, 0] = junk if junk else b[0, 0]
    try:
        s, i = kernels.topk_cosine(a, b, k)
    except ValueError as e:
        assert str(e)
    else:
        assert d1 == d2 and 1 <= k <= n and s.shape == (q, k)
