"""Loss modules: GradCache equals the plain loss, and the fused loss trains the real MiniLM
inside sentence-transformers' own trainer."""
import numpy as np
import pytest
import torch

from fastembed_tune.embed.model import EmbeddingModel, default_model_path
from fastembed_tune.training.losses import CachedFusedMNRLoss, FusedMNRLoss, MSELoss, TripletLoss

QUERIES = ["thunk", "ACID", "COBOL", "regex", "stack", "heap", "mutex", "kernel"]
DOCS = ["a delayed computation", "atomicity consistency isolation durability", "a business language",
        "a pattern that matches strings", "last in first out", "a priority tree", "a lock", "the OS core"]


@pytest.fixture(scope="module")
def model():
    return EmbeddingModel.load()


def grads(model, loss_fn, feats):
    model.zero_grad()
    torch.manual_seed(0)
    loss = loss_fn(feats, None)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_cached_equals_fused_gradients(model):
    model.eval()  # no dropout: the two computations see the same network
    feats = [model.tokenize(QUERIES), model.tokenize(DOCS), model.tokenize(DOCS[::-1])]
    l1, g1 = grads(model, FusedMNRLoss(model), feats)
    l2, g2 = grads(model, CachedFusedMNRLoss(model, mini_batch_size=3), feats)
    assert abs(l1 - l2) < 1e-5
    assert g1.keys() == g2.keys() and len(g1) > 50
    for n in g1:
        torch.testing.assert_close(g2[n], g1[n], rtol=1e-5, atol=1e-5 * max(1e-3, g1[n].abs().max().item()))


def test_fused_equals_eager_formula(model):
    model.eval()
    feats = [model.tokenize(QUERIES), model.tokenize(DOCS)]
    with torch.no_grad():
        q = model(feats[0])["sentence_embedding"].double()
        d = model(feats[1])["sentence_embedding"].double()
        ref = torch.nn.functional.cross_entropy(q @ d.T * 20.0, torch.arange(len(QUERIES))).item()
        got = FusedMNRLoss(model)(feats, None).item()
    assert abs(got - ref) < 1e-5 * max(1, ref)


def test_duplicate_docs_in_batch_are_masked(model):
    model.eval()
    feats = [model.tokenize(QUERIES[:2]), model.tokenize([DOCS[0], DOCS[0]])]
    with torch.no_grad():
        masked = FusedMNRLoss(model)(feats, None).item()
        unmasked = FusedMNRLoss(model, mask_duplicates=False)(feats, None).item()
    assert unmasked - masked > 0.5  # ln 2 when the copies were counted as negatives


def test_triplet_and_mse(model):
    a, p, n = model.tokenize(QUERIES[:3]), model.tokenize(DOCS[:3]), model.tokenize(DOCS[3:6])
    with torch.no_grad():
        ea = torch.nn.functional.normalize(model(a)["sentence_embedding"], dim=1)
        ep = torch.nn.functional.normalize(model(p)["sentence_embedding"], dim=1)
        en = torch.nn.functional.normalize(model(n)["sentence_embedding"], dim=1)
        ref = torch.relu((1 - (ea * ep).sum(1)) - (1 - (ea * en).sum(1)) + 0.25).mean().item()
        got = TripletLoss(model, margin=0.25)([a, p, n], None).item()
        assert abs(got - ref) < 1e-6
        target = torch.zeros(3, 384)
        assert abs(MSELoss(model)([a], target).item() - (ea ** 2).mean().item()) < 1e-6


def test_fused_loss_trains_minilm_in_sentence_transformers_trainer(tmp_path):
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    st = SentenceTransformer(default_model_path(), device="cpu")
    ds = Dataset.from_dict({"anchor": QUERIES * 2, "positive": DOCS * 2})
    loss = FusedMNRLoss(st)
    losses = []

    from transformers import TrainerCallback

    class Rec(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    with torch.no_grad():
        feats = [st.tokenize(QUERIES), st.tokenize(DOCS)]
        before = loss(feats, None).item()
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=8, learning_rate=1e-4,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, warmup_ratio=0.0)
    SentenceTransformerTrainer(model=st, args=args, train_dataset=ds, loss=loss, callbacks=[Rec()]).train()
    with torch.no_grad():
        after = loss(feats, None).item()
    assert len(losses) >= 4
    assert after < before
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
