"""topk_cosine_lowp (int8 candidate scan + exact fp32 rescoring) must return exactly what
topk_cosine returns, ids AND scores, on every int8 scan path and the plain reference loops; the
int8 dot products of every SIMD scan path must equal numpy's on the same codes."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastembed_tune import kernels

SCANS = kernels.available_lowp() + ["reference"]  # e.g. avx512vnni, avx2, scalar + the plain loops
SIMD = kernels.available_simd()[0]                # the fp32 path that rescoring must reproduce


def unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def same(q, x, k, scan, simd=SIMD, **kw):
    s, i = kernels.topk_cosine_lowp(q, x, k, scan=scan, simd=simd, **kw)
    kw.pop("quantized", None)
    rs, ri = kernels.topk_cosine(q, x, k, simd=simd, **kw)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(s, rs)
    return s, i


@pytest.mark.parametrize("scan", SCANS)
@settings(max_examples=25, deadline=None)
@given(Q=st.integers(1, 20), N=st.integers(1, 400), d=st.sampled_from([1, 2, 3, 17, 64, 384]),
       kfrac=st.floats(0, 1), skip=st.integers(0, 4), n_excl=st.integers(0, 5), bounded=st.booleans(),
       threads=st.integers(0, 3), seed=st.integers(0, 2**31))
def test_equals_fp32_topk_with_filters(scan, Q, N, d, kfrac, skip, n_excl, bounded, threads, seed):
    rng = np.random.default_rng(seed)
    q, x = unit(rng, Q, d), unit(rng, N, d)
    k = max(1, min(N, int(round(kfrac * N))))
    kw = dict(skip_top=skip, threads=threads)
    if n_excl:
        kw["exclude"] = [rng.choice(N, min(N, n_excl), replace=False).tolist() for _ in range(Q)]
    if bounded:  # max_ratio bounds anywhere, ties with a score included: the fp32 scores decide
        full = q @ x.T
        kw.update(max_ratio=1.0, positive_scores=full[np.arange(Q), rng.integers(0, N, Q)])
    same(q, x, k, scan, **kw)


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("simd", ["reference", "scalar"])
def test_rescoring_reproduces_every_fp32_path(scan, simd):
    rng = np.random.default_rng(3)
    q, x = unit(rng, 9, 300), unit(rng, 700, 300)  # d = 300 > scalar kc (256): two depth chunks
    same(q, x, 15, scan, simd=simd, skip_top=2)


def near_tie_corpus(rng, d, n_base=40, n_twins=60):
    """Rows within ~1e-6 of each other: a base row, its copies with the last bits of a few
    components moved (nextafter), exact duplicates, and sign-flipped twins; shuffled."""
    base = unit(rng, n_base, d)
    rows = [base]
    for _ in range(n_twins // 20):
        t = np.repeat(base[:1], 20, axis=0)
        cols = rng.integers(0, d, (20, 3))
        for r in range(20):
            for c in cols[r]:
                t[r, c] = np.nextafter(t[r, c], np.float32(np.inf) if rng.random() < .5 else np.float32(-np.inf))
        rows.append(t)
    rows.append(np.repeat(base[1:3], 10, axis=0))   # exact duplicates: ties broken by smaller id
    jit = base[:1] + rng.standard_normal((30, d)).astype(np.float32) * 3e-7
    rows.append((jit / np.linalg.norm(jit, axis=1, keepdims=True)).astype(np.float32))
    x = np.concatenate(rows)
    return np.ascontiguousarray(x[rng.permutation(len(x))]), base[0]


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("d", [8, 384])
def test_adversarial_near_ties(scan, d):
    rng = np.random.default_rng(d)
    x, b0 = near_tie_corpus(rng, d)
    full = x.astype(np.float64) @ b0.astype(np.float64)
    assert np.sum(np.abs(full - full.max()) < 1e-6) > 20  # the near-ties are real
    q = np.concatenate([b0[None], x[:4], unit(rng, 3, d)])
    for k in (1, 5, 10, 37):
        same(q, x, k, scan)
        same(q, x, k, scan, skip_top=3, exclude=[[i] for i in range(len(q))])
    # a max_ratio bound sitting exactly on a tied score
    pos = (q @ x.T)[np.arange(len(q)), 0]
    same(q, x, 10, scan, max_ratio=1.0, positive_scores=pos)


@pytest.mark.parametrize("scan", kernels.available_lowp() + ["reference"])
def test_int8_dots_equal_numpy(scan):
    # every SIMD scan path computes the exact integer c_q . c_x of its quantisation
    rng = np.random.default_rng(5)
    for d, N in ((3, 17), (64, 100), (385, 70)):
        q, x = unit(rng, 11, d), unit(rng, N, d)
        qc = kernels.quantize_corpus(x)
        got = kernels.lowp_dots(q, qc, scan)
        qmax = 63 if scan == "avx2" else 127

        def codes(a, m):
            s = (np.abs(a).max(1) / np.float32(m)).astype(np.float32)
            return np.clip(np.rint(a.astype(np.float64) / s[:, None].astype(np.float64)), -m, m).astype(np.int64)

        np.testing.assert_array_equal(got, codes(q, qmax) @ codes(x, 127).T)


def test_quantized_corpus_reuse_save_load_memmap(tmp_path):
    rng = np.random.default_rng(6)
    q, x = unit(rng, 30, 64), unit(rng, 1000, 64)
    qc = kernels.quantize_corpus(x)
    qc.save(tmp_path / "qc")
    loaded = kernels.QuantizedCorpus.load(tmp_path / "qc")
    assert isinstance(loaded.codes, np.memmap)
    s, i = same(q, x, 10, "auto", quantized=loaded)
    ts, ti = kernels.topk_cosine_lowp(torch.from_numpy(q), torch.from_numpy(x), 10, quantized=qc)
    assert isinstance(ti, torch.Tensor) and np.array_equal(ti.numpy(), i) and np.array_equal(ts.numpy(), s)


@pytest.mark.parametrize("N,block", [(1000, 16), (1000, 100), (1003, 64), (17, 1 << 18), (16, 16)])
def test_quantize_to_disk_in_blocks_equals_in_memory(tmp_path, N, block):
    """A memory-mapped corpus quantised block by block into files equals the in-memory quantisation
    field by field (padding rows included), and the scan over it equals the fp32 top-k."""
    rng = np.random.default_rng(N + block)
    x = unit(rng, N, 40)
    np.save(tmp_path / "x.npy", x)
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    whole = kernels.quantize_corpus(x)
    disk = kernels.quantize_corpus(xm, out=str(tmp_path / "qc"), block_rows=block)
    assert isinstance(disk.codes, np.memmap) and (disk.N, disk.d, disk.fingerprint) == (whole.N, whole.d, whole.fingerprint)
    for f in kernels.QuantizedCorpus._FIELDS:
        np.testing.assert_array_equal(np.asarray(getattr(disk, f)), getattr(whole, f), err_msg=f)
    same(unit(rng, 7, 40), xm, min(5, N), "auto", quantized=disk)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".qcorpus-")]  # no temp folder left


def test_quantize_to_disk_refuses_bad_rows_and_leaves_nothing(tmp_path):
    x = unit(np.random.default_rng(0), 100, 8)
    x[70, 3] = np.nan
    with pytest.raises(ValueError, match="corpus row 70 column 3"):
        kernels.quantize_corpus(x, out=str(tmp_path / "qc"), block_rows=32)
    with pytest.raises(ValueError, match="block_rows"):
        kernels.quantize_corpus(unit(np.random.default_rng(0), 10, 8), out=str(tmp_path / "qc"), block_rows=8)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_layouts(threads):
    rng = np.random.default_rng(7)
    x = unit(rng, 5001, 96)
    qc = kernels.quantize_corpus(x)
    for Q in (1, 5, 300):
        q = unit(rng, Q, 96)
        excl = [rng.choice(5001, 4, replace=False).tolist() for _ in range(Q)]
        s, i, st = kernels.topk_cosine_lowp(q, x, 20, quantized=qc, exclude=excl, skip_top=2, max_ratio=0.9,
                                            threads=threads, return_stats=True)
        rs, ri = kernels.topk_cosine(q, x, 20, exclude=excl, skip_top=2, max_ratio=0.9, threads=threads)
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_array_equal(s, rs)
        assert 22 <= st["candidates_per_query"] < 5001


def test_bad_input_raises_value_error():
    rng = np.random.default_rng(8)
    q, x = unit(rng, 4, 16), unit(rng, 50, 16)
    bad = [
        dict(precision="bf16"), dict(scan="bogus"), dict(simd="bogus"), dict(k=0), dict(k=51), dict(skip_top=-1),
        dict(quantized=kernels.quantize_corpus(x[::-1].copy())), dict(quantized=object()), dict(threads=-1),
        dict(max_ratio=float("nan")), dict(exclude=[[50]] * 4),
    ]
    for kw in bad:
        args = dict(k=5)
        args.update(kw)
        k = args.pop("k")
        with pytest.raises(ValueError):
            kernels.topk_cosine_lowp(q, x, k, **args)
    with pytest.raises(ValueError):
        kernels.topk_cosine_lowp(q[:, :8].copy(), x, 5)
    nan = q.copy()
    nan[1, 2] = np.nan
    with pytest.raises(ValueError):
        kernels.topk_cosine_lowp(nan, x, 5)
    with pytest.raises(ValueError):
        kernels.topk_cosine_lowp(q * 2, x, 5)  # not unit norm
    with pytest.raises(ValueError):
        kernels.quantize_corpus(x.astype(np.float64))
    with pytest.raises(ValueError):
        kernels.QuantizedCorpus.load("/nonexistent/qc")


def test_unnormalised_and_zero_rows():
    rng = np.random.default_rng(9)
    q = rng.integers(-3, 4, (12, 20)).astype(np.float32)
    x = rng.integers(-3, 4, (300, 20)).astype(np.float32)
    x[5] = 0
    q[3] = 0
    for scan in SCANS:
        same(q, x, 7, scan, normalized=False, skip_top=1)


def test_precomputed_quantized_corpus_still_refuses_unnormalised_rows():
    """With ``quantized`` given the fp32 corpus is not read again in full: the row norms kept at
    quantisation time refuse a non-unit row under normalized=True, naming it."""
    rng = np.random.default_rng(3)
    x = unit(rng, 50, 16)
    x[17] *= 3.0
    qc = kernels.quantize_corpus(x, normalized=False)
    with pytest.raises(ValueError, match="corpus row 17 has L2 norm 3"):
        kernels.topk_cosine_lowp(unit(rng, 2, 16), x, 5, quantized=qc)
    s, i = kernels.topk_cosine_lowp(unit(rng, 2, 16), x, 5, quantized=qc, normalized=False)
    assert i.shape == (2, 5)


@pytest.mark.parametrize("forced", SCANS)
def test_scan_forced_by_environment(monkeypatch, forced):
    """FASTEMBED_TUNE_LOWP forces the int8 scan for "auto" (the reference loops included); an explicit
    ``scan=`` wins; a path this build does not know is refused naming the ones it does."""
    rng = np.random.default_rng(11)
    q, x = unit(rng, 6, 40), unit(rng, 300, 40)
    want = kernels.topk_cosine(q, x, 7, simd="reference")
    monkeypatch.setenv("FASTEMBED_TUNE_LOWP", forced)
    s, i, st = kernels.topk_cosine_lowp(q, x, 7, return_stats=True)
    assert st["scan"] == forced
    np.testing.assert_array_equal(i, want[1])
    np.testing.assert_allclose(s, want[0], rtol=0, atol=1e-6)
    assert kernels.topk_cosine_lowp(q, x, 7, scan="scalar", return_stats=True)[2]["scan"] == "scalar"
    monkeypatch.setenv("FASTEMBED_TUNE_LOWP", "sse9")
    with pytest.raises(ValueError, match="unknown .*'sse9'.*scalar"):
        kernels.topk_cosine_lowp(q, x, 7)
