"""topk_cosine against a plain numpy float64 argsort reference, on every SIMD path and on the
plain C++ reference path (simd="reference", csrc/topk_reference.cpp); every SIMD path is also
compared to that reference path."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fastembed_tune import kernels
from fastembed_tune._torch_ref import topk_cosine_torch

PATHS = kernels.available_simd()  # the SIMD paths this CPU runs (scalar included)
ALL = PATHS + ["reference"]       # ... and the plain C++ reference loops


def unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def reference(q, x, k, exclude=None, skip_top=0, upper=None):
    """argsort of float64 scores, ties by smaller id, filters applied before ranking."""
    s = q.astype(np.float64) @ x.astype(np.float64).T
    Q, N = s.shape
    out_s = np.full((Q, k), -np.inf)
    out_i = np.full((Q, k), -1, dtype=np.int64)
    for i in range(Q):
        keep = np.ones(N, bool)
        if exclude is not None:
            keep[list(exclude[i])] = False
        if upper is not None:
            keep &= s[i] <= upper[i]
        cand = np.nonzero(keep)[0]
        order = cand[np.lexsort((cand, -s[i, cand]))][skip_top:skip_top + k]
        out_s[i, :len(order)] = s[i, order]
        out_i[i, :len(order)] = order
    return out_s, out_i, s


def assert_matches(got_s, got_i, ref_s, ref_i, full, tol=1e-5):
    assert got_s.shape == ref_s.shape and got_i.shape == ref_i.shape
    np.testing.assert_allclose(got_s, ref_s, atol=tol, rtol=0)
    # ids: exact wherever the reference has no near-tie at that rank; in a near-tie (gap below
    # float32 rounding), the returned id must still carry the reference's score.
    for i in range(ref_i.shape[0]):
        for j in range(ref_i.shape[1]):
            if got_i[i, j] == ref_i[i, j]:
                continue
            assert ref_i[i, j] >= 0 and got_i[i, j] >= 0, (i, j)
            assert abs(full[i, got_i[i, j]] - ref_s[i, j]) < tol, (i, j)
            assert got_i[i, j] not in got_i[i, :j]


def gap_bounds(full, rng, min_gap=1e-4):
    """A max_ratio bound per query (as positive_scores with max_ratio=1) in the middle of a gap of
    at least min_gap between its float64 scores, so float32 rounding cannot move a document
    across it on any path; +inf where the row has no such gap."""
    out = np.full(full.shape[0], np.inf)
    for i, row in enumerate(full):
        s = np.sort(row)
        gaps = np.nonzero(np.diff(s) >= min_gap)[0]
        if gaps.size:
            g = gaps[rng.integers(gaps.size)]
            out[i] = (s[g] + s[g + 1]) / 2
    return out


dims = st.sampled_from([1, 2, 3, 17, 384, 768, 1024])


@pytest.mark.parametrize("simd", ALL)
@given(Q=st.integers(1, 40), N=st.integers(1, 700), d=dims, kfrac=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_matches_numpy_argsort(simd, Q, N, d, kfrac, seed):
    rng = np.random.default_rng(seed)
    q, x = unit(rng, Q, d), unit(rng, N, d)
    k = max(1, min(N, int(round(kfrac * N))))
    s, i = kernels.topk_cosine(q, x, k, simd=simd)
    rs, ri, full = reference(q, x, k)
    assert_matches(s, i, rs, ri, full)


@pytest.mark.parametrize("simd", ALL)
@given(Q=st.integers(1, 30), N=st.integers(1, 600), d=st.integers(1, 40), seed=st.integers(0, 2**31),
       data=st.data())
def test_exact_ties_break_by_smaller_id(simd, Q, N, d, seed, data):
    # Small integer vectors: every dot product is exact in float32, so ties are real and
    # the ids must equal the reference's exactly, on every path. max_ratio bounds are integers
    # (a document scoring exactly the bound passes) or integers + 0.5.
    rng = np.random.default_rng(seed)
    q = rng.integers(-2, 3, (Q, d)).astype(np.float32)
    x = rng.integers(-2, 3, (N, d)).astype(np.float32)
    k = data.draw(st.integers(1, N))
    skip = data.draw(st.integers(0, 3))
    excl = [sorted(set(rng.integers(0, N, rng.integers(0, 4)).tolist())) for _ in range(Q)]
    upper = rng.integers(-d, d + 1, Q) + rng.choice([0.0, 0.5], Q) if data.draw(st.booleans()) else None
    kw = dict(max_ratio=1.0, positive_scores=upper) if upper is not None else {}
    s, i = kernels.topk_cosine(q, x, k, exclude=excl, skip_top=skip, normalized=False, simd=simd, **kw)
    rs, ri, _ = reference(q, x, k, exclude=excl, skip_top=skip, upper=upper)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(s, rs.astype(np.float32))
    if simd != "reference":
        r = kernels.topk_cosine(q, x, k, exclude=excl, skip_top=skip, normalized=False, simd="reference", **kw)
        np.testing.assert_array_equal(i, r[1])
        np.testing.assert_array_equal(s, r[0])


@pytest.mark.parametrize("simd", ALL)
@given(Q=st.integers(1, 30), N=st.integers(1, 700), d=dims, kfrac=st.floats(0, 1), skip=st.integers(0, 5),
       n_excl=st.integers(0, 6), bounded=st.booleans(), threads=st.integers(0, 3), seed=st.integers(0, 2**31))
def test_filters_match_numpy_and_the_reference_path(simd, Q, N, d, kfrac, skip, n_excl, bounded, threads, seed):
    # Every filter on random shapes: each path (the reference path included) against numpy, and
    # each SIMD path against the plain C++ reference path.
    rng = np.random.default_rng(seed)
    q, x = unit(rng, Q, d), unit(rng, N, d)
    k = max(1, min(N, int(round(kfrac * N))))
    excl = [rng.choice(N, min(N, n_excl), replace=False).tolist() for _ in range(Q)]
    full = q.astype(np.float64) @ x.astype(np.float64).T
    upper = gap_bounds(full, rng) if bounded else None
    kw = dict(exclude=excl, skip_top=skip, threads=threads)
    if upper is not None:
        kw.update(max_ratio=1.0, positive_scores=np.minimum(upper, 1e30))
    s, i = kernels.topk_cosine(q, x, k, simd=simd, **kw)
    rs, ri, _ = reference(q, x, k, exclude=excl, skip_top=skip, upper=upper)
    assert_matches(s, i, rs, ri, full)
    if simd != "reference":
        ps, pi = kernels.topk_cosine(q, x, k, simd="reference", **kw)
        assert_matches(s, i, ps, pi, full)


@pytest.mark.parametrize("simd", ALL)
def test_k_equals_n_and_k_one(simd):
    rng = np.random.default_rng(1)
    q, x = unit(rng, 13, 384), unit(rng, 257, 384)
    for k in (1, 257):
        s, i = kernels.topk_cosine(q, x, k, simd=simd)
        rs, ri, full = reference(q, x, k)
        assert_matches(s, i, rs, ri, full)


@pytest.mark.parametrize("simd", ALL)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_filters_and_thread_layouts(simd, threads):
    # Q from 1 (corpus split across threads) to 200 (query chunks), with every filter.
    rng = np.random.default_rng(2)
    x = unit(rng, 3001, 64)
    for Q in (1, 5, 200):
        q = unit(rng, Q, 64)
        excl = [rng.choice(3001, 5, replace=False).tolist() for _ in range(Q)]
        pos = (q.astype(np.float64) * x[[e[0] for e in excl]]).sum(1)
        upper = kernels.ratio_bound(0.5, pos)
        s, i = kernels.topk_cosine(q, x, 20, exclude=excl, skip_top=3, max_ratio=0.5,
                                   positive_scores=pos, threads=threads, simd=simd)
        rs, ri, full = reference(q, x, 20, exclude=excl, skip_top=3, upper=upper)
        assert_matches(s, i, rs, ri, full)
        assert all(not set(i[r].tolist()) & set(excl[r]) for r in range(Q))


def test_filters_act_inside_the_scan():
    # Every one of the 10 most similar documents is filtered: the k returned are the next
    # best ones, never fewer (a short list filtered afterwards would return nothing).
    rng = np.random.default_rng(3)
    q = unit(rng, 1, 32)
    near = q + 0.01 * rng.standard_normal((10, 32)).astype(np.float32)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    x = np.concatenate([near, unit(rng, 500, 32)]).astype(np.float32)
    s, i = kernels.topk_cosine(q, x, 5, exclude=[list(range(10))])
    assert (i >= 10).all() and (i >= 0).all()
    rs, ri, full = reference(q, x, 5, exclude=[list(range(10))])
    assert_matches(s, i, rs, ri, full)


def test_max_ratio_default_uses_lowest_positive_score():
    rng = np.random.default_rng(4)
    q, x = unit(rng, 4, 16), unit(rng, 300, 16)
    excl = [[0, 1], [2], [3, 4, 5], [6]]
    full = q.astype(np.float64) @ x.astype(np.float64).T
    pos = np.array([full[r, e].min() for r, e in enumerate(excl)])
    a = kernels.topk_cosine(q, x, 10, exclude=excl, max_ratio=0.9)
    b = kernels.topk_cosine(q, x, 10, exclude=excl, max_ratio=0.9, positive_scores=pos)
    rs, ri, _ = reference(q, x, 10, exclude=excl, upper=kernels.ratio_bound(0.9, pos))
    assert (ri >= 0).sum() >= 4, "the case must return candidates, else it proves nothing"
    for s, i in (a, b):
        assert_matches(s, i, rs, ri, full)


def test_fewer_than_k_pass_pads_with_minus_one():
    x = np.eye(4, dtype=np.float32)
    s, i = kernels.topk_cosine(x[:1], x, 4, exclude=[[0, 1]])
    assert i.tolist() == [[2, 3, -1, -1]]
    assert np.isneginf(s[0, 2:]).all()


def test_zero_copy_inputs_memmap_torch_and_strided(tmp_path):
    rng = np.random.default_rng(5)
    q, x = unit(rng, 9, 48), unit(rng, 500, 48)
    ref = kernels.topk_cosine(q, x, 7)
    rs, ri, full = reference(q, x, 7)
    assert_matches(ref[0], ref[1], rs, ri, full)
    mm = np.memmap(tmp_path / "x.f32", dtype=np.float32, mode="w+", shape=x.shape)
    mm[:] = x
    mm.flush()
    ro = np.memmap(tmp_path / "x.f32", dtype=np.float32, mode="r", shape=x.shape)
    got = kernels.topk_cosine(q, ro, 7)
    np.testing.assert_array_equal(got[1], ref[1])
    ts, ti = kernels.topk_cosine(torch.from_numpy(q).requires_grad_(), torch.from_numpy(x), 7)
    assert isinstance(ti, torch.Tensor)
    np.testing.assert_array_equal(ti.numpy(), ref[1])
    wide = np.zeros((500, 96), np.float32)
    wide[:, ::2] = x  # a strided view: copied once (documented), same answer
    got = kernels.topk_cosine(q, wide[:, ::2], 7)
    np.testing.assert_array_equal(got[1], ref[1])


def test_torch_fallback_matches_native():
    rng = np.random.default_rng(6)
    q, x = unit(rng, 11, 40), unit(rng, 800, 40)
    excl = [[j, j + 1] for j in range(11)]
    a = kernels.topk_cosine(q, x, 9, exclude=excl, skip_top=2, max_ratio=0.8)
    b = topk_cosine_torch(torch.from_numpy(q), torch.from_numpy(x), 9, exclude=excl, skip_top=2,
                          max_ratio=0.8, block=4)
    full = q.astype(np.float64) @ x.astype(np.float64).T
    pos = np.array([full[r, e].min() for r, e in enumerate(excl)])
    rs, ri, _ = reference(q, x, 9, exclude=excl, skip_top=2, upper=kernels.ratio_bound(0.8, pos))
    assert (ri >= 0).sum() >= 50  # a query whose positive scores far below 0 has few candidates under its bound
    assert_matches(a[0], a[1], rs, ri, full)
    assert_matches(b[0].numpy(), b[1].numpy(), rs, ri, full)


def test_simd_override_env_and_argument(monkeypatch):
    monkeypatch.setenv("FASTEMBED_TUNE_SIMD", "scalar")
    assert kernels.simd_name("auto") == "scalar"
    monkeypatch.setenv("FASTEMBED_TUNE_SIMD", "reference")
    assert kernels.simd_name("auto") == "reference"
    rng = np.random.default_rng(7)
    q, x = unit(rng, 3, 8), unit(rng, 50, 8)
    via_env = kernels.topk_cosine(q, x, 5)
    monkeypatch.delenv("FASTEMBED_TUNE_SIMD")
    assert kernels.simd_name("auto") == PATHS[0]
    assert kernels.simd_name("reference") == "reference"
    assert "reference" not in PATHS and PATHS[-1] == "scalar"
    via_arg = kernels.topk_cosine(q, x, 5, simd="reference")
    np.testing.assert_array_equal(via_env[1], via_arg[1])
    np.testing.assert_array_equal(via_env[0], via_arg[0])
    with pytest.raises(ValueError, match="unknown SIMD path 'sse9'; choose one of auto, scalar, avx2, avx512, reference"):
        kernels.simd_name("sse9")
