"""--max-forgetting: weight interpolation with the base model (WiSE-FT), its ratio chosen on validation
within the guard's bound. Checked against numpy and planted score curves."""
import json

import numpy as np
import pytest
import torch

from fastembed_tune.cli.app import main
from fastembed_tune.core.errors import UserError
from fastembed_tune.embed.model import EmbeddingModel
from fastembed_tune.run import guard as run_guard
from fastembed_tune.training import forgetting
from fastembed_tune.training.forgetting import choose_alpha, interpolate


class Net(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = torch.nn.Linear(3, 2)
        self.register_buffer("ids", torch.arange(4) + seed)  # integer: taken from the tuned model


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_interpolate_matches_numpy(alpha):
    a, b = Net(0), Net(1)
    m = interpolate(a, b, alpha)
    for name in ("weight", "bias"):
        want = (1 - alpha) * getattr(a.lin, name).detach().numpy() + alpha * getattr(b.lin, name).detach().numpy()
        np.testing.assert_allclose(getattr(m.lin, name).detach().numpy(), want, rtol=1e-6, atol=1e-7)
    assert m.ids.tolist() == b.ids.tolist()
    assert m is not b and b.lin.weight.data_ptr() != m.lin.weight.data_ptr()  # the inputs are untouched


def test_interpolate_refuses_other_architectures():
    with pytest.raises(UserError, match="weights differ"):
        interpolate(torch.nn.Linear(3, 2), torch.nn.Linear(4, 2), 0.5)
    with pytest.raises(ValueError, match="alpha"):
        interpolate(Net(0), Net(1), 1.5)


class Scalar(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([float(w)], dtype=torch.float64))


def curves(guard, val):
    """Guard and validation scores as functions of alpha (read back from the interpolated weight)."""
    calls = {"guard": [], "val": []}

    def g(m):
        a = round(m.w.item(), 6)
        calls["guard"].append(a)
        return guard(a)

    def v(m):
        a = round(m.w.item(), 6)
        calls["val"].append(a)
        return val(a)
    return g, v, calls


def test_within_the_bound_nothing_else_is_evaluated():
    g, v, calls = curves(lambda a: 0.5, lambda a: 1.0)
    loaded = []
    r = choose_alpha(lambda: loaded.append(1) or Scalar(0), Scalar(1), g, v, 0.50, 0.49, max_forgetting=0.03)
    assert r["alpha"] == 1.0 and r["met"] and calls == {"guard": [], "val": []} and not loaded


def test_picks_the_planted_validation_peak_among_feasible_ratios():
    # forgetting grows linearly with alpha (1.0 at alpha 1); the bound 0.65 admits alpha <= 0.6
    g, v, calls = curves(lambda a: 1.0 - a, lambda a: {0.6: 0.70, 0.5: 0.75, 0.4: 0.72}.get(a, 0.0))
    r = choose_alpha(Scalar(0), Scalar(1), g, v, 1.0, 0.0, max_forgetting=0.65, after_first=2)
    assert r["met"] and r["alpha"] == 0.5 and float(r["model"].w) == pytest.approx(0.5)
    assert calls["guard"] == [0.9, 0.8, 0.7, 0.6, 0.5, 0.4] and calls["val"] == [0.6, 0.5, 0.4]
    assert [t["alpha"] for t in r["tried"]] == [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]


def test_a_tie_keeps_the_larger_ratio_and_unmet_bound_keeps_least_forgetting():
    g, v, _ = curves(lambda a: 1.0 - a, lambda a: 0.5)
    assert choose_alpha(Scalar(0), Scalar(1), g, v, 1.0, 0.0, max_forgetting=0.65)["alpha"] == 0.6
    g, v, calls = curves(lambda a: 0.0, lambda a: 0.5)  # every ratio forgets everything
    r = choose_alpha(Scalar(0), Scalar(1), g, v, 1.0, 0.0, max_forgetting=0.03)
    assert not r["met"] and r["alpha"] == 0.9 and calls["val"] == []
    g, v, _ = curves(lambda a: 0.2 + 0.1 * (a == 0.3), lambda a: 0.5)
    r = choose_alpha(Scalar(0), Scalar(1), g, v, 1.0, 0.0, max_forgetting=0.03)
    assert not r["met"] and r["alpha"] == 0.3 and float(r["model"].w) == pytest.approx(0.3)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_run_ships_the_interpolated_model_when_the_guard_forgets(tmp_path, tiny_model_dir, monkeypatch):
    """A planted guard curve (the guard's score falls as the weights leave the base's) makes `run`
    interpolate; the saved model is (1 - alpha) * base + alpha * fine-tuned, and everything after
    (evaluation, export) uses it."""
    base = EmbeddingModel.load(tiny_model_dir)
    base_w = {k: v.clone() for k, v in base.transformer.state_dict().items() if v.is_floating_point()}
    real = forgetting.choose_alpha

    def planted(base_fn, tuned, guard_score, validation_score, before, after, max_forgetting):
        st = tuned.transformer.state_dict()
        full = sum(float((st[k] - base_w[k]).norm() ** 2) for k in base_w) ** 0.5

        def guard(m):  # 1 at the base, 0 at the fine-tuned model, linear in alpha between
            sm = m.transformer.state_dict()
            return 1.0 - sum(float((sm[k] - base_w[k]).norm() ** 2) for k in base_w) ** 0.5 / full
        return real(base_fn, tuned, guard, validation_score, 1.0, 0.0, max_forgetting)

    monkeypatch.setattr(run_guard, "choose_alpha", planted)
    rows = [{"query": f"t{i}", "positive": f"def {i} of thing {i}"} for i in range(16)]
    write_jsonl(tmp_path / "p.jsonl", rows)
    out = tmp_path / "run"
    assert main(["run", "--model", tiny_model_dir, "--train", str(tmp_path / "p.jsonl"), "--test",
                 str(tmp_path / "p.jsonl"), "-o", str(out), "--max-steps", "4", "--batch-size", "4", "--lr", "3e-2",
                 "--quiet", "--no-distill", "--allow-no-gain", "--max-forgetting", "0.45",
                 "--validation-share", "0"]) == 0
    merged = EmbeddingModel.load(str(out / "interpolated")).transformer.state_dict()
    tuned = EmbeddingModel.load(str(out / "train" / "model")).transformer.state_dict()
    for k, w in base_w.items():  # alpha 0.4: the largest ratio within 45%
        np.testing.assert_allclose(merged[k].numpy(), 0.6 * w.numpy() + 0.4 * tuned[k].numpy(), atol=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["metrics"])[:3] == ["base", "fine-tuned, raw (alpha 1)", "fine-tuned"]
    from fastembed_tune.data.readers import load_eval
    from fastembed_tune.evaluation.metrics import evaluate

    want = evaluate(EmbeddingModel.load(str(out / "interpolated")), load_eval(str(tmp_path / "p.jsonl")))
    assert metrics["metrics"]["fine-tuned"]["ndcg@10"] == pytest.approx(want["metrics"]["ndcg@10"], abs=1e-4)
    assert "alpha 0.4" in (out / "report.md").read_text()
    from fastembed_tune.embed.onnx_embedder import OnnxEmbedder

    texts = ["def 3 of thing 3", "t7"]
    shipped, raw = OnnxEmbedder(out / "onnx").embed(texts), EmbeddingModel.load(str(out / "train" / "model"))
    np.testing.assert_allclose(shipped, EmbeddingModel.load(str(out / "interpolated")).encode(texts), atol=1e-4)
    assert np.abs(shipped - raw.encode(texts)).max() > 1e-3  # the export is the interpolated model, not the raw one
