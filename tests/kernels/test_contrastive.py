"""The fused contrastive kernel against a float64 torch reference, on every SIMD path and on the
plain C++ reference path (simd="reference", csrc/contrastive_reference.cpp); every SIMD path is
also compared to that reference path."""
import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastembed_tune import _native, kernels
from fastembed_tune._torch_ref import contrastive_torch

PATHS = kernels.available_simd()  # the SIMD paths this CPU runs (scalar included)
ALL = PATHS + ["reference"]       # ... and the plain C++ reference loops


def reference(q, docs, pos, scale, keys=None, symmetric=False):
    """cross_entropy(q @ docs.T * scale) in float64, with key masking and the symmetric term."""
    q = q.detach().double().requires_grad_()
    d = docs.detach().double().requires_grad_()

    def ce(a, b, p, k):
        s = a @ b.T * scale
        if k is not None:
            m = k[None, :] == k[p][:, None]
            m[torch.arange(len(p)), p] = False
            s = s.masked_fill(m, float("-inf"))
        return torch.nn.functional.cross_entropy(s, p)

    loss = ce(q, d, pos, keys)
    if symmetric:
        loss = (loss + ce(d[pos], q, torch.arange(len(pos)), keys[pos] if keys is not None else None)) / 2
    loss.backward()
    return loss.item(), q.grad, d.grad


def run(q, docs, pos, scale, keys=None, symmetric=False, simd="auto", fn=None):
    q = q.clone().requires_grad_()
    d = docs.clone().requires_grad_()
    if fn is None:
        loss = kernels.contrastive(q, d, pos, scale, doc_keys=keys, symmetric=symmetric, simd=simd)
    else:
        loss = fn(q, d, pos, scale, doc_keys=keys, symmetric=symmetric)
    loss.backward()
    return loss.item(), q.grad, d.grad


def close(got, ref, rtol=1e-5, scale=1.0):
    """Loss and gradients equal to ``rtol``. A gradient entry is a sum of terms as large as ``scale``
    (the logit scale) that may cancel to about 0 (d = 1: every vector is +-1), so float32 rounding is
    bounded by the terms' size, not by the result's: the tolerance grows with ``scale``."""
    (l, gq, gd), (rl, rq, rd) = got, ref
    assert abs(l - rl) <= rtol * max(1.0, abs(rl))
    for g, r in ((gq, rq), (gd, rd)):
        r = r.float()
        assert torch.isfinite(g).all()
        tol = rtol * max(1.0, scale, r.abs().max().item()) + 1e-7
        assert (g - r).abs().max().item() <= tol, (g - r).abs().max().item()


def unit(n, d, gen):
    return torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=1)


def batch(B, extra, d, dup, seed):
    """q [B, d], docs [B + extra, d], pos, and (dup) keys with duplicated keys as duplicated texts."""
    g = torch.Generator().manual_seed(seed)
    M = B + extra
    q, docs = unit(B, d, g), unit(M, d, g)
    pos = torch.randperm(M, generator=g)[:B] if M >= B else torch.randint(0, M, (B,), generator=g)
    keys = torch.randint(0, max(1, M // 3), (M,), generator=g) if dup else None
    if dup:  # make duplicated keys real duplicated texts, as a trainer would
        docs = docs[torch.unique(keys, return_inverse=True)[1] % M]
    return q, docs, pos, keys


shapes = dict(B=st.integers(1, 70), extra=st.integers(0, 140), d=st.sampled_from([1, 2, 7, 64, 384]),
              dup=st.booleans(), symmetric=st.booleans(), scale=st.sampled_from([1.0, 20.0, 50.0]),
              seed=st.integers(0, 2**31))


@pytest.mark.parametrize("simd", ALL)
@given(**shapes)
def test_matches_float64_reference(simd, B, extra, d, dup, symmetric, scale, seed):
    q, docs, pos, keys = batch(B, extra, d, dup, seed)
    close(run(q, docs, pos, scale, keys, symmetric, simd), reference(q, docs, pos, scale, keys, symmetric),
          scale=scale)


test_matches_float64_reference = settings(max_examples=60)(test_matches_float64_reference)


@pytest.mark.parametrize("simd", PATHS)
@given(**shapes)
def test_every_simd_path_matches_the_reference_path(simd, B, extra, d, dup, symmetric, scale, seed):
    q, docs, pos, keys = batch(B, extra, d, dup, seed)
    close(run(q, docs, pos, scale, keys, symmetric, simd), run(q, docs, pos, scale, keys, symmetric, "reference"),
          scale=scale)
    # The row statistics: the same log-sum-exp, and either path's (max, sum) drive either backward.
    qn, dn, pn = q.numpy(), docs.numpy(), pos.numpy()
    kn = keys.numpy() if keys is not None else None
    loss, m, s = _native.contrastive_forward(qn, dn, pn, scale, kn, 0, simd)
    rloss, rm, rs = _native.contrastive_forward(qn, dn, pn, scale, kn, 0, "reference")
    lse, rlse = m.astype(np.float64) + np.log(s), rm.astype(np.float64) + np.log(rs)
    np.testing.assert_allclose(lse, rlse, rtol=1e-5, atol=1e-5)
    assert abs(loss - rloss) <= 1e-5 * max(1.0, abs(rloss))
    want = _native.contrastive_backward(qn, dn, pn, scale, kn, rm, rs, 0.5, 0, "reference")
    for path in (simd, "reference"):
        for stats in ((m, s), (rm, rs)):
            got = _native.contrastive_backward(qn, dn, pn, scale, kn, *stats, 0.5, 0, path)
            for g, r in zip(got, want):
                np.testing.assert_allclose(g, r, rtol=0, atol=1e-5 * max(1.0, scale, np.abs(r).max()) + 1e-7)


test_every_simd_path_matches_the_reference_path = settings(max_examples=30)(example(
    B=1, extra=128, d=1, dup=True, symmetric=False, scale=50.0, seed=177)(  # gradients that cancel to ~0
    test_every_simd_path_matches_the_reference_path))


@pytest.mark.parametrize("simd", ALL)
@pytest.mark.parametrize("B,M", [(1, 1), (8, 8), (95, 190), (257, 513), (300, 300)])
def test_tile_boundaries(simd, B, M):
    g = torch.Generator().manual_seed(B * M)
    q, docs = unit(B, 384, g), unit(M, 384, g)
    pos = torch.arange(B) % M
    close(run(q, docs, pos, 20.0, simd=simd), reference(q, docs, pos, 20.0))


def test_torch_path_matches_reference():
    g = torch.Generator().manual_seed(3)
    q, docs = unit(40, 16, g), unit(90, 16, g)
    pos = torch.arange(40)
    keys = torch.arange(90) % 30
    close(run(q, docs, pos, 20.0, keys, True, fn=lambda *a, **k: contrastive_torch(*a, block=7, **k)),
          reference(q, docs, pos, 20.0, keys, True))


@pytest.mark.parametrize("simd", ALL)
def test_duplicate_positive_text_is_not_a_negative(simd):
    # docs 0 and 1 are the same text (same key): for query 0 the copy must not count as a negative
    q = torch.tensor([[1.0, 0.0]])
    docs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    masked = kernels.contrastive(q, docs, torch.tensor([0]), 20.0, doc_keys=torch.tensor([5, 5, 6]), simd=simd)
    unmasked = kernels.contrastive(q, docs, torch.tensor([0]), 20.0, simd=simd)
    # logits 20, 20, 0 with the positive first: -log softmax_0
    assert abs(masked.item() - np.log(1 + np.exp(-20.0))) < 1e-6
    assert abs(unmasked.item() - np.log(2 + np.exp(-20.0))) < 1e-6


def test_gradcheck_small():
    g = torch.Generator().manual_seed(0)
    q = unit(3, 4, g).requires_grad_()
    d = unit(5, 4, g).requires_grad_()
    pos = torch.tensor([0, 2, 4])
    keys = torch.tensor([0, 1, 0, 2, 3])
    for sym in (False, True):
        assert torch.autograd.gradcheck(
            lambda a, b: kernels.contrastive(a, b, pos, 2.0, doc_keys=keys, symmetric=sym),
            (q, d), eps=1e-3, atol=2e-3, rtol=1e-2, nondet_tol=1e-6, fast_mode=False)


def test_large_batch_memory_is_not_b_by_m():
    # B = 4096, M = 8192: a B x M float32 matrix alone is 128 MiB; the kernel allocates none.
    import psutil
    g = torch.Generator().manual_seed(1)
    q, docs = unit(4096, 64, g), unit(8192, 64, g)
    proc = psutil.Process()
    before = proc.memory_info().rss
    loss = kernels.contrastive(q.requires_grad_(), docs.requires_grad_(), torch.arange(4096), 20.0)
    loss.backward()
    grew = proc.memory_info().rss - before
    assert grew < 96 * 2**20, grew / 2**20


@pytest.mark.parametrize("kw,msg", [
    (dict(docs=torch.zeros(5, 3)), "q has dimension 4 but docs has dimension 3"),
    (dict(pos=torch.tensor([0, 9])), r"pos\[1\] = 9 is outside the docs rows \[0, 6\)"),
    (dict(pos=torch.tensor([0, -1])), r"pos\[1\] = -1"),
    (dict(pos=torch.tensor([0])), "pos must be an integer tensor of shape \\(2,\\)"),
    (dict(pos=torch.tensor([0.0, 1.0])), "pos must be an integer tensor"),
    (dict(q=torch.tensor([[float("nan")] * 4, [0.0] * 4])), "q row 0 holds NaN or Inf"),
    (dict(docs=torch.full((6, 4), float("inf"))), "docs row 0 holds NaN or Inf"),
    (dict(q=torch.zeros(2, 4, dtype=torch.float64)), "q must be float32"),
    (dict(scale=0.0), "scale must be a finite number > 0"),
    (dict(scale=-1.0), "scale must be a finite number > 0"),
    (dict(scale=float("inf")), "scale must be a finite number > 0"),
    (dict(q=torch.zeros(0, 4)), "q must be a non-empty 2-D tensor"),
    (dict(doc_keys=torch.zeros(3, dtype=torch.int64)), r"doc_keys must be an integer tensor of shape \(6,\)"),
    (dict(q=np.zeros((2, 4), np.float32)), "q must be a torch tensor"),
])
def test_bad_input(kw, msg):
    args = dict(q=torch.zeros(2, 4), docs=torch.zeros(6, 4), pos=torch.tensor([0, 1]), scale=20.0, doc_keys=None)
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        kernels.contrastive(args["q"], args["docs"], args["pos"], args["scale"], doc_keys=args["doc_keys"])


@pytest.mark.parametrize("simd", ALL)
def test_native_binding_checks_again(simd):
    q, d3 = np.zeros((2, 4), np.float32), np.zeros((3, 4), np.float32)
    ok = np.array([0, 1])
    with pytest.raises(ValueError, match="pos index out of range"):
        _native.contrastive_forward(q, d3, np.array([0, 7]), 20.0, simd=simd)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        _native.contrastive_forward(q, d3, ok, -1.0, simd=simd)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        _native.contrastive_forward(q, d3, ok, float("nan"), simd=simd)
    with pytest.raises(ValueError, match="q and docs dimensions differ"):
        _native.contrastive_forward(q, np.zeros((3, 5), np.float32), ok, 20.0, simd=simd)
    with pytest.raises(ValueError, match="doc_keys must have one entry per doc"):
        _native.contrastive_forward(q, d3, ok, 20.0, np.array([1, 2]), simd=simd)
    with pytest.raises(ValueError, match="q has the wrong dtype"):
        _native.contrastive_forward(q.astype(np.float64), d3, ok, 20.0, simd=simd)
    loss, m, s = _native.contrastive_forward(q, d3, ok, 20.0, simd=simd)
    assert abs(loss - np.log(3)) < 1e-6  # all logits 0: three equal docs
    with pytest.raises(ValueError, match="row statistics are not from a forward pass"):
        _native.contrastive_backward(q, d3, ok, 20.0, None, m, np.zeros(2, np.float32), 1.0, simd=simd)
    with pytest.raises(ValueError, match="row statistics must have B entries"):
        _native.contrastive_backward(q, d3, ok, 20.0, None, m[:1], s[:1], 1.0, simd=simd)
