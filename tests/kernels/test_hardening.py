"""The kernels against misuse: the ``max_ratio`` bound when a positive scores below 0 (never a
candidate scoring above the positive), a bad path name in ``FASTEMBED_TUNE_SIMD`` /
``FASTEMBED_TUNE_LOWP`` (a user error naming the variable, exit 2 from the CLI), and tensors on
the meta device refused by ``contrastive``."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastembed_tune import kernels
from fastembed_tune._torch_ref import topk_cosine_torch
from fastembed_tune.core.errors import UserError
from fastembed_tune.data.readers import Pair
from fastembed_tune.mining.exact import mine_hard_negatives

SIMD = kernels.available_simd() + ["reference"]
SCANS = kernels.available_lowp() + ["reference"]
RATIOS = [0.5, 0.75, 0.9, 1.0, 1.5]


def bound(r: float, p: np.ndarray) -> np.ndarray:
    """The documented bound, written independently: the positive's score less a (1 - r) share of
    its magnitude, never above the positive itself."""
    return np.where(r >= 1, p, p - (1 - r) * np.abs(p))


def brute(q: np.ndarray, x: np.ndarray, k: int, excl, upper) -> tuple[np.ndarray, np.ndarray]:
    """float64 scores, filters first, ranked by descending score then smaller id."""
    s = q.astype(np.float64) @ x.astype(np.float64).T
    out_s, out_i = np.full((len(q), k), -np.inf), np.full((len(q), k), -1, dtype=np.int64)
    for i in range(len(q)):
        keep = (s[i] <= upper[i])
        keep[list(excl[i])] = False
        cand = np.nonzero(keep)[0]
        order = cand[np.lexsort((cand, -s[i, cand]))][:k]
        out_s[i, :len(order)], out_i[i, :len(order)] = s[i, order], order
    return out_s, out_i


def integer_case(seed: int, Q: int = 24, N: int = 90, d: int = 6):
    """Small integer vectors (every score exact in float32 and float64) with positives of both signs;
    each query excludes its positive."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-3, 4, (Q, d)).astype(np.float32)
    x = rng.integers(-3, 4, (N, d)).astype(np.float32)
    s = q.astype(np.float64) @ x.astype(np.float64).T
    pos = rng.integers(0, N, Q)
    p = s[np.arange(Q), pos]
    return q, x, pos, p, s


def test_integer_case_has_positives_of_both_signs():
    p = integer_case(0)[3]
    assert (p < 0).sum() >= 5 and (p > 0).sum() >= 5


def check(got_s, got_i, q, x, pos, p, s, r, k):
    ref_s, ref_i = brute(q, x, k, [[j] for j in pos], bound(r, p))
    np.testing.assert_array_equal(np.asarray(got_i), ref_i)
    np.testing.assert_array_equal(np.asarray(got_s), ref_s.astype(np.float32))
    for i in range(len(q)):  # never a candidate above the positive; below it when r < 1 and p != 0
        ok = np.asarray(got_i[i]) >= 0
        sc = s[i, np.asarray(got_i[i])[ok]]
        assert (sc <= p[i]).all()
        if r < 1 and p[i] != 0:
            assert (sc < p[i]).all()


@pytest.mark.parametrize("simd", SIMD)
@pytest.mark.parametrize("r", RATIOS)
def test_topk_bound_for_positives_of_both_signs(simd, r):
    for seed in range(3):
        q, x, pos, p, s = integer_case(seed)
        got = kernels.topk_cosine(q, x, 12, exclude=[[j] for j in pos], max_ratio=r, positive_scores=p,
                                  normalized=False, simd=simd)
        check(*got, q, x, pos, p, s, r, 12)
        # positive_scores omitted: the lowest score of the excluded ids, the same bound
        again = kernels.topk_cosine(q, x, 12, exclude=[[j] for j in pos], max_ratio=r, normalized=False, simd=simd)
        np.testing.assert_array_equal(again[1], got[1])


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("r", RATIOS)
def test_lowp_bound_for_positives_of_both_signs(scan, r):
    for seed in range(3):
        q, x, pos, p, s = integer_case(seed)
        got = kernels.topk_cosine_lowp(q, x, 12, exclude=[[j] for j in pos], max_ratio=r, positive_scores=p,
                                       normalized=False, scan=scan)
        check(*got, q, x, pos, p, s, r, 12)


@pytest.mark.parametrize("r", RATIOS)
def test_torch_reference_bound_for_positives_of_both_signs(r):
    for seed in range(3):
        q, x, pos, p, s = integer_case(seed)
        got = topk_cosine_torch(torch.from_numpy(q), torch.from_numpy(x), 12, exclude=[[j] for j in pos],
                                max_ratio=r, positive_scores=torch.from_numpy(p))
        check(got[0].numpy(), got[1].numpy(), q, x, pos, p, s, r, 12)
        omitted = topk_cosine_torch(torch.from_numpy(q), torch.from_numpy(x), 12, exclude=[[j] for j in pos],
                                    max_ratio=r)
        np.testing.assert_array_equal(omitted[1].numpy(), got[1].numpy())


def test_a_negative_positive_keeps_its_margin():
    """p = -0.3, max_ratio 0.9: the bound is -0.33, so -0.29 and -0.31 (above the positive, or within
    its margin) are never negatives; with p = +0.6 the bound is 0.54 as it always was."""
    def doc(c):
        return [c, float(np.sqrt(1 - c * c))]

    scores = [-0.29, -0.31, -0.34, -0.5, 0.5, 0.53, 0.55, 0.7]
    x = np.array([doc(c) for c in scores], dtype=np.float32)
    q = np.array([[1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    for fn in (kernels.topk_cosine, kernels.topk_cosine_lowp):
        s, i = fn(q, x, 8, max_ratio=0.9, positive_scores=[-0.3, 0.6])
        assert i[0].tolist() == [2, 3] + [-1] * 6
        assert i[1].tolist() == [5, 4, 0, 1, 2, 3, -1, -1]
    b = kernels.ratio_bound(0.9, [-0.3, 0.6, 0.0, 0.6])
    assert b.dtype == np.float32
    np.testing.assert_allclose(b, [-0.33, 0.54, 0.0, 0.54], rtol=0, atol=1e-7)
    assert (b.astype(np.float64) <= np.array([-0.3 - 0.1 * 0.3, 0.9 * 0.6, 0.0, 0.9 * 0.6])).all()
    assert kernels.ratio_bound(1.5, [-0.3]).tolist() == kernels.ratio_bound(1.0, [-0.3]).tolist()


def unit(rng, n, d):
    v = rng.standard_normal((n, d))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("scan", ["fp32", "int8"])
def test_mining_never_returns_a_negative_above_a_negative_positive(scan):
    """Random 4-d embeddings: many positives score below 0. No mined negative scores at or above its
    pair's positive, the negatives equal brute force under the documented bound, and the summary's
    dropped count is the candidates the bound removed from the unbounded search."""
    rng = np.random.default_rng(3)
    docs = [f"d{i}" for i in range(40)]
    pairs = [Pair(f"q{i}", docs[i]) for i in range(20)]
    qemb, demb = unit(rng, 20, 4), unit(rng, 40, 4)
    s = qemb.astype(np.float64) @ demb.astype(np.float64).T
    p = s[np.arange(20), np.arange(20)]
    assert (p < 0).sum() >= 5
    res = mine_hard_negatives(pairs, corpus=docs, num_negatives=5, max_ratio=0.9, embeddings=(qemb, demb),
                              show_progress_bar=False, scan=scan)
    _, want = brute(qemb, demb, 5, [[i] for i in range(20)], bound(0.9, p))
    plain = mine_hard_negatives(pairs, corpus=docs, num_negatives=5, embeddings=(qemb, demb),
                                show_progress_bar=False, scan=scan)
    dropped = 0
    for i, (got, free) in enumerate(zip(res.pairs, plain.pairs)):
        assert got.negatives == [docs[j] for j in want[i] if j >= 0]
        assert all(s[i, docs.index(n)] < p[i] for n in got.negatives)
        dropped += sum(s[i, docs.index(n)] > bound(0.9, p)[i] for n in free.negatives)
    assert res.summary["candidates_dropped_as_false_negatives"] == dropped > 0


# ------------------------------------------------------------------------------------------------
# a bad path name in the environment is the user's mistake, named as such
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("var,call", [
    ("FASTEMBED_TUNE_SIMD", lambda q, x: kernels.topk_cosine(q, x, 2)),
    ("FASTEMBED_TUNE_SIMD", lambda q, x: kernels.topk_cosine_lowp(q, x, 2)),
    ("FASTEMBED_TUNE_SIMD", lambda q, x: kernels.simd_name()),
    ("FASTEMBED_TUNE_SIMD", lambda q, x: kernels.contrastive(torch.from_numpy(q), torch.from_numpy(x),
                                                              torch.arange(len(q)))),
    ("FASTEMBED_TUNE_LOWP", lambda q, x: kernels.topk_cosine_lowp(q, x, 2)),
])
def test_bad_path_in_environment_is_a_user_error(monkeypatch, var, call):
    rng = np.random.default_rng(0)
    q, x = unit(rng, 3, 8), unit(rng, 10, 8)
    monkeypatch.setenv(var, "bogus")
    with pytest.raises(UserError, match=rf"^{var}=bogus: unknown .*path 'bogus'; choose one of auto, scalar"):
        call(q, x)


def test_bad_path_argument_stays_a_value_error(monkeypatch):
    rng = np.random.default_rng(0)
    q, x = unit(rng, 3, 8), unit(rng, 10, 8)
    monkeypatch.delenv("FASTEMBED_TUNE_SIMD", raising=False)
    monkeypatch.delenv("FASTEMBED_TUNE_LOWP", raising=False)
    for call in (lambda: kernels.topk_cosine(q, x, 2, simd="bogus"), lambda: kernels.simd_name("bogus"),
                 lambda: kernels.topk_cosine_lowp(q, x, 2, scan="bogus")):
        with pytest.raises(ValueError, match=r"^unknown .*path 'bogus'") as e:
            call()
        assert not isinstance(e.value, UserError)
    monkeypatch.setenv("FASTEMBED_TUNE_SIMD", "bogus")  # an explicit argument wins over the variable
    assert kernels.topk_cosine(q, x, 2, simd="scalar")[1].shape == (3, 2)


@pytest.mark.parametrize("var", ["FASTEMBED_TUNE_SIMD", "FASTEMBED_TUNE_LOWP"])
def test_cli_bad_path_in_environment_exits_2(tmp_path, tiny_model_dir, var):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"q {i}", "positive": f"doc {i}"}) + "\n" for i in range(4)))
    out = tmp_path / "mined.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", var: "bogus"}
    env.pop("FASTEMBED_TUNE_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "fastembed_tune", "mine", "--pairs", str(pairs), "-o", str(out),
                        "--model", tiny_model_dir, "--num-negatives", "1", "--scan", "int8", "--quiet"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {var}=bogus: unknown "), r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["pairs.jsonl"]


# ------------------------------------------------------------------------------------------------
# contrastive on the meta device
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["both", "q", "docs"])
def test_contrastive_refuses_meta_tensors(which):
    q = torch.randn(4, 8, device="meta" if which in ("both", "q") else "cpu")
    d = torch.randn(6, 8, device="meta" if which in ("both", "docs") else "cpu")
    with pytest.raises(ValueError, match=r"meta device"):
        kernels.contrastive(q, d, torch.arange(4))


def test_contrastive_refuses_meta_ids():
    q, d = torch.randn(4, 8), torch.randn(6, 8)
    with pytest.raises(ValueError, match=r"pos is on the meta device"):
        kernels.contrastive(q, d, torch.arange(4, device="meta"))
    with pytest.raises(ValueError, match=r"doc_keys is on the meta device"):
        kernels.contrastive(q, d, torch.arange(4), doc_keys=torch.arange(6, device="meta"))
