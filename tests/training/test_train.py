"""The trainer: batch sampler, kill-and-resume equality, warm start + replay, learning, saving.

Everything runs on a tiny random BERT (2 layers, hidden 32) with the MiniLM tokenizer.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

from fastembed_tune.core.errors import UserError
from fastembed_tune.data.readers import Pair
from fastembed_tune.embed.model import EmbeddingModel
from fastembed_tune.training.train import (
    TrainConfig,
    batch_columns,
    epoch_batches,
    list_checkpoints,
    mix_replay,
    no_duplicate_batches,
    train,
)

WORDS = ["apple", "river", "engine", "violin", "planet", "bread", "tiger", "castle", "rocket", "garden",
         "pencil", "ocean", "candle", "mirror", "forest", "silver", "window", "dragon", "coffee", "saddle"]


def _pairs(n: int = 16, negatives: int = 0) -> list[Pair]:
    out = []
    for i in range(n):
        w = WORDS[i % len(WORDS)]
        negs = [f"a note on {WORDS[(i + k + 1) % len(WORDS)]}" for k in range(negatives)]
        out.append(Pair(f"{w} {i // len(WORDS)}", f"a text about {w} {i // len(WORDS)} and more {w}", negs,
                        f"t:{i}"))
    return out


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models here: see conftest.one_torch_thread."""


def _weights(model_dir) -> dict:
    return load_file(os.path.join(model_dir, "model.safetensors"))


def _cfg(out, model, **kw) -> TrainConfig:
    base = dict(output_dir=str(out), model=model, batch_size=4, lr=1e-3, logging_steps=1,
                show_progress_bar=False, device="cpu", bf16=False)
    base.update(kw)
    return TrainConfig(**base)


# ---- (a) the batch sampler ------------------------------------------------------------------

_texts = st.sampled_from(["a", "b", "c", "d", "e", "f", "g"])
_pair = st.builds(Pair, _texts, _texts, st.lists(_texts, max_size=3))


@given(st.lists(_pair, min_size=0, max_size=40), st.integers(1, 6), st.integers(0, 2), st.integers(0, 3),
       st.integers(0, 2))
def test_batches_never_repeat_a_text(pairs, batch_size, num_negatives, seed, window):
    texts = [{p.query, p.positive, *p.negatives[:num_negatives]} for p in pairs]
    # the raw cutting covers every pair exactly once, and never repeats a text in a batch
    raw = no_duplicate_batches(np.random.default_rng(seed).permutation(len(pairs)).tolist(), texts, batch_size)
    assert sorted(i for b in raw for i in b) == list(range(len(pairs)))
    batches = epoch_batches(pairs, batch_size, seed, 0, num_negatives, window)
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))
    for b in raw + batches:
        assert 1 <= len(b) <= batch_size
        seen: set = set()
        for i in b:
            assert seen.isdisjoint(texts[i]), (b, [pairs[j] for j in b])
            seen |= texts[i]
    # only batches of a single pair are dropped (and only when a batch could hold more)
    assert all(len(b) >= 2 or batch_size == 1 for b in batches)
    n_dropped = len(pairs) - len(flat)
    assert n_dropped == sum(1 for b in no_duplicate_batches(
        _epoch_order(pairs, batch_size, seed, window), texts, batch_size) if len(b) == 1 and batch_size > 1)
    assert batches == epoch_batches(pairs, batch_size, seed, 0, num_negatives, window)


def _epoch_order(pairs, batch_size, seed, window):
    order = np.random.default_rng([seed, 0]).permutation(len(pairs)).tolist()
    if window:
        key = [len(p.query) + len(p.positive) for p in pairs]
        w = window * batch_size
        order = [i for s in range(0, len(order), w) for i in sorted(order[s:s + w], key=key.__getitem__)]
    return order


def test_batches_cover_everything_when_possible():
    # distinct texts: every pair once per epoch (n % batch_size != 1)
    ps = _pairs(22)
    for epoch in range(3):
        bs = epoch_batches(ps, 4, 7, epoch)
        assert sorted(i for b in bs for i in b) == list(range(22))
    # 4 queries x 5 positives each: every batch holds one pair of each query, all 20 covered
    ps = [Pair(f"q{i % 4}", f"doc {i}") for i in range(20)]
    bs = epoch_batches(ps, 4, 0, 0)
    assert len(bs) == 5 and all(len({ps[i].query for i in b}) == 4 for b in bs)
    assert sorted(i for b in bs for i in b) == list(range(20))


def test_length_grouping_makes_batches_of_similar_length():
    ps = [Pair(f"q{i:03d}", "x" * (1 + i)) for i in range(64)]  # length rank == index
    bs = epoch_batches(ps, 8, 3, 0, length_window=100)  # one window: batches are runs of the sorted order
    for b in bs:
        assert max(b) - min(b) == 7
    assert [min(b) for b in bs] != sorted(min(b) for b in bs)  # the batch order is shuffled
    no_group = epoch_batches(ps, 8, 3, 0, length_window=0)
    assert np.mean([max(b) - min(b) for b in no_group]) > 20


def test_batch_columns_use_the_fewest_negatives():
    ps = [Pair("q1", "d1", ["n1", "m1"]), Pair("q2", "d2", ["n2", "m2", "o2"])]
    assert batch_columns(ps, 5) == [["q1", "q2"], ["d1", "d2"], ["n1", "n2"], ["m1", "m2"]]
    assert batch_columns(ps, 1)[2:] == [["n1", "n2"]]
    assert batch_columns(ps + [Pair("q3", "d3")], 2) == [["q1", "q2", "q3"], ["d1", "d2", "d3"]]


def test_mix_replay_is_seeded_and_sized():
    new, old = _pairs(10), [Pair(f"old {i}", f"old doc {i}") for i in range(50)]
    a = mix_replay(new, old, 0.4, seed=1, epoch=0)
    assert len(a) == 14 and a[:10] == new and all(p.query.startswith("old") for p in a[10:])
    assert len({p.query for p in a[10:]}) == 4  # without replacement
    assert a == mix_replay(new, old, 0.4, seed=1, epoch=0) != mix_replay(new, old, 0.4, seed=1, epoch=1)
    assert len(mix_replay(new, old[:2], 0.5, 0, 0)) == 15  # with replacement when replay is small
    assert mix_replay(new, old, 0.0, 0, 0) == new


# ---- (b) SIGKILL and resume -----------------------------------------------------------------

_RUNNER = textwrap.dedent("""
    import json, os, sys, time
    from fastembed_tune.training import losses
    from fastembed_tune.data.readers import Pair
    from fastembed_tune.training.train import TrainConfig, train
    args = json.loads(sys.argv[1])
    if args["sleep"]:
        orig = losses.FusedMNRLoss.forward
        def slow(self, feats, labels=None):
            time.sleep(args["sleep"])
            return orig(self, feats, labels)
        losses.FusedMNRLoss.forward = slow
    print(json.dumps(train([Pair(**p) for p in args["pairs"]], TrainConfig(**args["config"]))))
""")


def _spawn(tmp_path, out, model, replay, sleep=0.0, resume=False):
    ps = _pairs(12, negatives=1)
    ps[3].negatives = []  # a batch with this pair trains without a negative column
    cfg = dict(output_dir=str(out), model=model, batch_size=4, lr=1e-3, max_steps=6, checkpoint_every=2,
               keep_checkpoints=2, replay=str(replay), replay_ratio=0.5, logging_steps=1,
               show_progress_bar=False, device="cpu", resume=resume)
    arg = json.dumps({"pairs": [p.__dict__ for p in ps], "config": cfg, "sleep": sleep})
    # one thread each: the two runs overlap on a small machine (both sides of the comparison match)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", _RUNNER, arg], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_sigkill_and_resume_gives_the_same_weights(tmp_path, tiny_model_dir):
    replay = tmp_path / "old.jsonl"
    replay.write_text("".join(json.dumps({"query": f"old {w}", "positive": f"old text {w}"}) + "\n"
                              for w in WORDS))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    p_straight = _spawn(tmp_path, straight, tiny_model_dir, replay)
    p_killed = _spawn(tmp_path, killed, tiny_model_dir, replay, sleep=0.4)
    deadline = time.time() + 60
    while not (killed / "checkpoint-4").is_dir():
        assert p_killed.poll() is None, p_killed.communicate()
        assert time.time() < deadline, "checkpoint-4 never appeared"
        time.sleep(0.01)
    os.kill(p_killed.pid, signal.SIGKILL)
    p_killed.communicate()
    assert p_killed.returncode == -signal.SIGKILL
    assert not (killed / "model").exists()
    out, err = p_straight.communicate(timeout=120)
    assert p_straight.returncode == 0, err

    p_resumed = _spawn(tmp_path, killed, tiny_model_dir, replay, resume=True)
    out2, err2 = p_resumed.communicate(timeout=120)
    assert p_resumed.returncode == 0, err2
    summary = json.loads(out2.strip().splitlines()[-1])
    assert summary["resumed_from"] == 4 and summary["steps"] == 6 and summary["replay_pairs_per_epoch"] == 6

    a, b = _weights(straight / "model"), _weights(killed / "model")
    base = _weights(tiny_model_dir)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert max(float((a[k] - base[k]).abs().max()) for k in a) > 1e-4  # it did train
    steps = [json.loads(l)["step"] for l in (killed / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [c.name for c in list_checkpoints(killed)] == ["checkpoint-4", "checkpoint-6"]
    assert not [p for p in os.listdir(killed) if p.startswith(".tmp")]


def test_fresh_run_refuses_to_overwrite_checkpoints(tmp_path, tiny_model_dir):
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(UserError, match="resume"):
        train(_pairs(8), _cfg(tmp_path, tiny_model_dir, max_steps=1))


# ---- (c) warm start and replay ----------------------------------------------------------------

def test_warm_start_loads_the_previous_model_and_replays(tmp_path, tiny_model_dir):
    old = _pairs(20)
    first = train(old[:12], _cfg(tmp_path / "v1", tiny_model_dir, max_steps=3))
    v1 = _weights(first["output"])
    assert max(float((v1[k] - _weights(tiny_model_dir)[k]).abs().max()) for k in v1) > 1e-4
    replay = tmp_path / "v1_pairs.jsonl"
    replay.write_text("".join(json.dumps({"query": p.query, "positive": p.positive}) + "\n" for p in old[:12]))
    # lr 0: the run leaves the weights where it found them, so the output shows what it started from
    second = train(old[12:], _cfg(tmp_path / "v2", first["output"], lr=0.0, replay=str(replay),
                                  replay_ratio=0.5))
    assert second["replay_pairs_per_epoch"] == 4
    assert second["steps"] == 3  # (8 new + 4 replayed) / 4
    v2 = _weights(second["output"])
    assert all(torch.equal(v1[k], v2[k]) for k in v1)


# ---- (d) it learns; (e) the saved model is a sentence-transformers model ------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir) -> dict:
    out = tmp_path_factory.mktemp("learn")
    return train(_pairs(16), _cfg(out, tiny_model_dir, batch_size=8, max_steps=20, warmup_ratio=0.0,
                                  show_progress_bar=True))


def test_loss_decreases(trained):
    losses = [json.loads(l)["loss"] for l in Path(trained["log_file"]).read_text().splitlines()]
    assert len(losses) == 20
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4]), losses
    assert trained["steps"] == 20 and trained["pairs_per_s"] > 0
    assert json.loads((Path(trained["output"]).parent / "train_summary.json").read_text())["steps"] == 20
    rec = json.loads(Path(trained["log_file"]).read_text().splitlines()[-1])
    assert set(rec) == {"step", "epoch", "loss", "lr", "pairs_per_s", "elapsed"}


def test_saved_model_loads_in_sentence_transformers(trained):
    from sentence_transformers import SentenceTransformer

    texts = ["apple 0", "a text about rockets", "something else entirely, longer than the others"]
    ours = EmbeddingModel.load(trained["output"]).encode(texts)
    st_model = SentenceTransformer(trained["output"], device="cpu")
    theirs = st_model.encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


# ---- (f) the other losses ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory) -> str:
    from conftest import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("nodrop") / "model", dropout=0.0)


@pytest.mark.parametrize("loss", ["mnrl", "cached_mnrl", "triplet"])
def test_each_loss_logs_the_value_torch_computes(tmp_path, no_dropout_model, loss):
    """The first step's logged loss equals the loss computed here in plain torch from the model's own
    embeddings (one batch holding every pair; lr 0, no dropout, so the step changes nothing)."""
    pairs = [Pair(f"{w} query", f"a text about {w}", [f"a note {i} one", f"a note {i} two"], f"t:{i}")
             for i, w in enumerate(WORDS[:8])]
    out = train(pairs, _cfg(tmp_path, no_dropout_model, loss=loss, max_steps=1, batch_size=8, lr=0.0,
                            num_negatives=2, mini_batch_size=3))
    logged = json.loads(open(out["log_file"]).readline())["loss"]
    m = EmbeddingModel.load(no_dropout_model)
    q, p = (torch.from_numpy(m.encode([getattr(x, f) for x in pairs])) for f in ("query", "positive"))
    n1, n2 = (torch.from_numpy(m.encode([x.negatives[j] for x in pairs])) for j in (0, 1))
    if loss == "triplet":
        d_ap, d_an = 1 - (q * p).sum(1), 1 - (q * n1).sum(1)
        want = torch.relu(d_ap - d_an + 0.25).mean()
    else:  # InfoNCE over positives and both negative columns, scale 20
        logits = 20.0 * q @ torch.cat([p, n1, n2]).T
        want = torch.nn.functional.cross_entropy(logits, torch.arange(8))
    assert logged == pytest.approx(float(want), abs=2e-4)


def test_triplet_needs_negatives(tmp_path, tiny_model_dir):
    with pytest.raises(UserError, match="negative"):
        train(_pairs(8), _cfg(tmp_path, tiny_model_dir, loss="triplet"))


# ---- (g) bf16 autocast on CPU -------------------------------------------------------------------

def test_bf16_autocast_learns_like_fp32(tmp_path, tiny_model_dir):
    """bf16 autocast (the default where the CPU has native bf16) learns as fp32 does, to bf16 precision;
    the weights and the saved model stay float32."""
    from fastembed_tune.training.loop import use_bf16

    assert use_bf16("cpu", True) and not use_bf16("cpu", False)
    runs = {}
    for bf16 in (False, True):
        runs[bf16] = train(_pairs(16), _cfg(tmp_path / str(bf16), tiny_model_dir, batch_size=8, max_steps=6,
                                            warmup_ratio=0.0, bf16=bf16))
        assert runs[bf16]["bf16"] is bf16
    a, b = _weights(runs[False]["output"]), _weights(runs[True]["output"])
    assert all(v.dtype == torch.float32 for v in b.values())
    start = _weights(os.path.join(tiny_model_dir))
    moved = sum(float((a[k] - start[k]).abs().sum()) for k in a)
    diff = sum(float((a[k] - b[k]).abs().sum()) for k in a)
    assert diff < 0.1 * moved, (diff, moved)  # same direction, bf16-sized differences


# ---- (h) validation inside the training data ----------------------------------------------------

@given(st.lists(st.tuples(st.integers(0, 15), st.integers(0, 40)), min_size=2, max_size=60),
       st.floats(0.0, 0.9), st.integers(0, 3), st.sets(st.integers(0, 15), max_size=5))
def test_validation_split_holds_out_whole_queries_never_avoided_ones(rows, share, seed, avoid):
    from fastembed_tune.training.validation import split_validation

    pairs = [Pair(f"q{q}", f"d{d}") for q, d in rows]
    avoid = [f"q{a}" for a in avoid]
    tr, va = split_validation(pairs, share, 500, seed, avoid)
    assert sorted(map(id, tr + va)) == sorted(map(id, pairs))  # every pair on exactly one side
    assert not {p.query for p in tr} & {p.query for p in va}
    assert not {p.query for p in va} & set(avoid)
    assert tr == [p for p in pairs if p in tr]  # order kept
    if va:
        assert len(tr) >= 2


def _scripted_scores(monkeypatch, curve):
    from fastembed_tune.training import validation

    scores = iter(curve)
    monkeypatch.setattr(validation.Validation, "score", lambda self, model, batch_size=64: next(scores))


def test_the_best_validated_step_ships(tmp_path, tiny_model_dir, monkeypatch):
    """A planted curve peaks at step 2 of 4: model/ holds the weights of step 2 (checkpoint-2's)."""
    _scripted_scores(monkeypatch, [0.10, 0.50, 0.20, 0.30])
    out = train(_pairs(32), _cfg(tmp_path, tiny_model_dir, max_steps=4, checkpoint_every=1, keep_checkpoints=4,
                                 validation_share=0.25, eval_every=1, patience=None))
    v = out["validation"]
    assert v["best_step"] == 2 and v["best_ndcg@10"] == 0.5 and not v["stopped_early"] and out["steps"] == 4
    assert [p["step"] for p in v["curve"]] == [1, 2, 3, 4] and v["queries"] == 8
    at2 = torch.load(tmp_path / "checkpoint-2" / "training_state.pt", weights_only=False)["model"]
    at4 = torch.load(tmp_path / "checkpoint-4" / "training_state.pt", weights_only=False)["model"]
    shipped = _weights(out["output"])
    key = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(shipped[key], at2["transformer." + key])
    assert not torch.equal(shipped[key], at4["transformer." + key])
    assert not (tmp_path / "best").exists()


def test_validation_stops_early(tmp_path, tiny_model_dir, monkeypatch):
    _scripted_scores(monkeypatch, [0.4, 0.3, 0.2, 0.1, 0.0, 0.0])
    out = train(_pairs(32), _cfg(tmp_path, tiny_model_dir, max_steps=6, validation_share=0.25, eval_every=1,
                                 patience=2))
    assert out["steps"] == 3 and out["validation"]["stopped_early"] and out["validation"]["best_step"] == 1
    log = [json.loads(x) for x in open(out["log_file"])]
    assert [x["val_ndcg@10"] for x in log if "val_ndcg@10" in x] == [0.4, 0.3, 0.2]
