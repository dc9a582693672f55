"""`fastembed-tune run` end to end on a tiny model and tiny data (the real sample is `make run`)."""
import json

import numpy as np
import pytest

from fastembed_tune.cli.app import main
from fastembed_tune.embed.model import EmbeddingModel


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_run_writes_report_and_model(tmp_path, tiny_model_dir, capsys, monkeypatch):
    terms = [f"term{i}" for i in range(40)]
    train = [{"query": t, "positive": f"definition of {t} number {i}"} for i, t in enumerate(terms[:30])]
    test = [{"query": t, "positive": f"definition of {t} number {i + 30}"} for i, t in enumerate(terms[30:])]
    corpus = [{"id": f"d{i}", "text": r["positive"]} for i, r in enumerate(train + test)]
    corpus += [{"id": f"x{i}", "text": f"unrelated text {i}"} for i in range(20)]
    for name, rows in (("train", train), ("test", test), ("corpus", corpus)):
        write_jsonl(tmp_path / f"{name}.jsonl", rows)
    out = tmp_path / "run"
    from fastembed_tune.run import artifacts

    distilled, real_distill = [], artifacts.distill
    monkeypatch.setattr(artifacts, "distill", lambda teacher, texts, *a, **kw: distilled.extend(texts) or
                        real_distill(teacher, texts, *a, **kw))
    rc = main(["run", "--model", tiny_model_dir, "--train", str(tmp_path / "train.jsonl"), "--test",
               str(tmp_path / "test.jsonl"), "--corpus", str(tmp_path / "corpus.jsonl"), "-o", str(out),
               "--max-steps", "3", "--batch-size", "8", "--quiet", "--allow-no-gain"])
    assert rc == 0
    # the student learns every corpus document (test ones too: unlabeled), never a test or validation query
    assert {r["text"] for r in corpus} <= set(distilled) and not {r["query"] for r in test} & set(distilled)
    held = {r["query"] for r in train} - set(distilled)
    assert held and len(held) == round(0.1 * len(train))  # the validation queries
    for f in ("report.md", "metrics.json", "metrics.png", "mined.jsonl", "train/model/modules.json",
              "student/model/modules.json", "onnx/model.onnx", "onnx/model_int8.onnx",
              "student/onnx/model.onnx", "student/onnx/model_int8.onnx"):
        assert (out / f).exists(), f
    metrics = json.loads((out / "metrics.json").read_text())
    # the fine-tuned model's fp32 graph is the model (parity-gated): not evaluated twice
    assert list(metrics["metrics"]) == ["base", "fine-tuned", "fine-tuned, ONNX int8",
                                        "student (1 layer), ONNX fp32", "student (1 layer), ONNX int8"]
    # the ONNX fp32 graph is the student: same retrieval, same metrics as the PyTorch student
    from fastembed_tune.data.readers import load_eval
    from fastembed_tune.evaluation.metrics import evaluate

    student = EmbeddingModel.load(str(out / "student" / "model"))
    assert student.max_seq_length == EmbeddingModel.load(tiny_model_dir).max_seq_length  # the teacher's own
    torch_metrics = evaluate(student, load_eval(str(tmp_path / "test.jsonl"), str(tmp_path / "corpus.jsonl")))
    assert metrics["metrics"]["student (1 layer), ONNX fp32"] == pytest.approx(torch_metrics["metrics"], abs=1e-3)
    report = (out / "report.md").read_text()
    assert "vs the fine-tuned model (PyTorch)" in report and "**ship: " in report
    # the report opens with the verdict: what ships (or that nothing should), its gain, what was not shipped
    verdict = report.split("| model |")[0]
    assert report.startswith("# fastembed-tune: base vs fine-tuned\n\n## Verdict\n")
    ship = metrics["ship"]
    assert f"**{ship['artifact']}** (`{ship['path']}`)" in verdict and "nDCG@10 on the 10 test queries" in verdict
    assert "- not shipped:" in verdict and "student (1 layer), ONNX int8" in verdict
    from PIL import Image

    with Image.open(out / "metrics.png") as png:  # one model per line, readable at its own size
        assert png.size[0] <= 1600 and png.size[1] >= 100 * len(metrics["metrics"])
    # every row has its 95% bootstrap interval (the chart's error bars) around its own nDCG@10
    assert set(metrics["intervals"]) == set(metrics["metrics"])
    for label, ci in metrics["intervals"].items():
        lo, hi = ci["ndcg@10"]
        assert lo - 1e-9 <= metrics["metrics"][label]["ndcg@10"] <= hi + 1e-9, label
    # base and fine-tuned nDCG@10 recomputed independently: numpy cosine ranking, ranx's nDCG
    from ranx import Qrels, Run
    from ranx import evaluate as ranx_evaluate

    corpus_rows = [json.loads(x) for x in (tmp_path / "corpus.jsonl").read_text().splitlines()]
    qrels = {f"q{i}": {f"d{30 + i}": 1} for i in range(10)}  # test positive i is corpus doc d{30+i}
    from fastembed_tune.training.loop import use_bf16

    for label, path in (("base", tiny_model_dir), ("fine-tuned", str(out / "train" / "model"))):
        m = EmbeddingModel.load(path)
        m.bf16 = use_bf16("cpu")  # run embeds its PyTorch models as it trains them (bf16 where native)
        c = m.encode([r["text"] for r in corpus_rows])
        q = m.encode([r["query"] for r in test])
        s = q @ c.T
        run = {f"q{i}": {corpus_rows[j]["id"]: float(s[i, j]) for j in np.argsort(-s[i])[:100]} for i in range(10)}
        want = ranx_evaluate(Qrels(qrels), Run(run), "ndcg@10")
        assert metrics["metrics"][label]["ndcg@10"] == pytest.approx(want, abs=1e-4), label
    mined = [json.loads(l) for l in (out / "mined.jsonl").read_text().splitlines()]
    assert len(mined) == 30
    test_texts = {r["positive"] for r in test}
    assert all(not set(m["negatives"]) & test_texts for m in mined)  # no test document leaks into training
    assert "nDCG@10 on 10 held-out queries" in capsys.readouterr().out


def test_run_no_distill(tmp_path, tiny_model_dir):
    rows = [{"query": f"t{i}", "positive": f"def {i}"} for i in range(12)]
    write_jsonl(tmp_path / "p.jsonl", rows)
    write_jsonl(tmp_path / "c.jsonl", [{"id": str(i), "text": r["positive"]} for i, r in enumerate(rows)])
    out = tmp_path / "run"
    assert main(["run", "--model", tiny_model_dir, "--train", str(tmp_path / "p.jsonl"), "--test",
                 str(tmp_path / "p.jsonl"), "--corpus", str(tmp_path / "c.jsonl"), "-o", str(out),
                 "--max-steps", "1", "--batch-size", "4", "--quiet", "--no-distill", "--no-export",
                 "--allow-no-gain"]) == 0
    assert set(json.loads((out / "metrics.json").read_text())["metrics"]) == {"base", "fine-tuned"}
    assert not (out / "student").exists() and not (out / "onnx").exists()


def test_run_needs_both_train_and_test(tmp_path, capsys):
    assert main(["run", "--train", "x.jsonl", "-o", str(tmp_path)]) == 2
    assert "give both --train and --test" in capsys.readouterr().err


def test_run_with_duplicate_corpus_texts_mines_aligned_negatives(tmp_path, tiny_model_dir):
    """Real corpora hold the same text under several ids: every mined negative must be the text
    whose embedding scored, never a query's own positive (numpy recomputation of the top-1)."""

    train = [{"query": f"term {i}", "positive": f"definition {i}: words about term {i}"} for i in range(24)]
    test = [{"query": f"held out {i}", "positive": f"held out definition {i}"} for i in range(6)]
    texts = [r["positive"] for r in train + test] + [f"distractor text number {i}" for i in range(12)]
    corpus, n = [], 0
    for i, t in enumerate(texts):  # every third text appears twice, under two ids, interleaved
        corpus.append({"id": f"d{n}", "text": t})
        n += 1
        if i % 3 == 0:
            corpus.insert(max(0, len(corpus) - 4), {"id": f"d{n}", "text": t})
            n += 1
    for name, rows in (("train", train), ("test", test), ("corpus", corpus)):
        write_jsonl(tmp_path / f"{name}.jsonl", rows)
    out = tmp_path / "run"
    assert main(["run", "--model", tiny_model_dir, "--train", str(tmp_path / "train.jsonl"), "--test",
                 str(tmp_path / "test.jsonl"), "--corpus", str(tmp_path / "corpus.jsonl"), "-o", str(out),
                 "--max-steps", "1", "--batch-size", "8", "--quiet", "--no-distill", "--allow-no-gain"]) == 0
    mined = [json.loads(x) for x in (out / "mined.jsonl").read_text().splitlines()]
    model = EmbeddingModel.load(tiny_model_dir)
    model.max_seq_length = min(model.max_seq_length, 128)
    test_texts = {r["positive"] for r in test}
    cand = list(dict.fromkeys(t for t in texts if t not in test_texts))
    c = model.encode(cand)
    assert sum(bool(m["negatives"]) for m in mined) >= len(mined) // 2
    for m in mined:
        assert m["positive"] not in m["negatives"]
        q = model.encode([m["query"]])[0]
        s = c @ q
        pos = float(s[cand.index(m["positive"])])
        ok = [j for j, t in enumerate(cand) if t != m["positive"] and s[j] <= 0.95 * pos - 1e-6]
        if not m["negatives"]:  # the max_ratio filter (0.95 x the positive's score) left no candidate
            assert not ok
            continue
        best = max(float(s[j]) for j in ok)
        got = float(s[cand.index(m["negatives"][0])])
        assert got == pytest.approx(best, abs=1e-5), (m["query"], m["negatives"][0])
        assert not set(m["negatives"]) & test_texts


def test_a_planted_regression_makes_run_refuse(tmp_path, tiny_model_dir, capsys):
    """A model made worse on purpose (lr 0.5 wrecks it) is never labelled a gain: exit 3, one line,
    and the report still tells the whole story (interval, p-value, per-query wins and losses)."""
    terms = [f"term{i}" for i in range(40)]
    train = [{"query": t, "positive": f"definition of {t} number {i}"} for i, t in enumerate(terms[:30])]
    test = [{"query": t, "positive": f"definition of {t} number {i + 30}"} for i, t in enumerate(terms[30:])]
    corpus = [{"id": f"d{i}", "text": r["positive"]} for i, r in enumerate(train + test)]
    for name, rows in (("train", train), ("test", test), ("corpus", corpus)):
        write_jsonl(tmp_path / f"{name}.jsonl", rows)
    out = tmp_path / "run"
    rc = main(["run", "--model", tiny_model_dir, "--train", str(tmp_path / "train.jsonl"), "--test",
               str(tmp_path / "test.jsonl"), "--corpus", str(tmp_path / "corpus.jsonl"), "-o", str(out),
               "--max-steps", "4", "--batch-size", "8", "--lr", "0.5", "--quiet", "--no-distill",
               "--validation-share", "0"])  # no validation to rescue an earlier step: the wreck ships
    err = capsys.readouterr().err.strip().splitlines()
    metrics = json.loads((out / "metrics.json").read_text())
    cmp = metrics["comparisons"]["fine-tuned vs base"]
    assert cmp["diff"] == pytest.approx(metrics["metrics"]["fine-tuned"]["ndcg@10"]
                                        - metrics["metrics"]["base"]["ndcg@10"], abs=1e-9)
    assert cmp["wins"] + cmp["ties"] + cmp["losses"] == 10
    assert rc == 3, err
    assert err[-1].startswith("error: the fine-tuned model is ") and "do not ship it" in err[-1]
    assert "is a significant gain" not in err[-1] and ("regression" in err[-1] or "not a significant" in err[-1])
    assert "paired randomization p =" in (out / "report.md").read_text()


@pytest.mark.parametrize("scores, shipped", [
    ({"teacher": 0.50, "student (3 layers), ONNX int8": 0.46, "student (3 layers), ONNX fp32": 0.48,
      "fine-tuned, ONNX int8": 0.50, "fine-tuned, ONNX fp32": 0.50}, "student (3 layers), ONNX fp32"),
    ({"teacher": 0.50, "student (3 layers), ONNX int8": 0.40, "student (3 layers), ONNX fp32": 0.41,
      "fine-tuned, ONNX int8": 0.49, "fine-tuned, ONNX fp32": 0.50}, "fine-tuned, ONNX int8"),
    ({"teacher": 0.50, "student (3 layers), ONNX int8": 0.10, "student (3 layers), ONNX fp32": 0.10,
      "fine-tuned, ONNX int8": 0.40, "fine-tuned, ONNX fp32": 0.40}, "fine-tuned"),
])
def test_the_artifact_that_ships_is_chosen_on_validation(monkeypatch, scores, shipped):
    """Smallest first; an export ships only when it keeps >= 0.95x the fine-tuned model's
    validation nDCG@10 (the test set decides nothing)."""
    from fastembed_tune.data.readers import Pair
    from fastembed_tune.run.ship import choose
    from fastembed_tune.training.validation import Validation

    class Fake:
        def __init__(self, name):
            self.name = name

    monkeypatch.setattr(Validation, "score", lambda self, model, batch_size=64: scores[model.name])
    artifacts = {label: (Fake(label), f"/x/{i}") for i, label in enumerate(
        ["fine-tuned, ONNX fp32", "fine-tuned, ONNX int8", "student (3 layers), ONNX fp32",
         "student (3 layers), ONNX int8"])}
    choice = choose(artifacts, Fake("teacher"), "/tuned", Validation([Pair("q", "d"), Pair("r", "e")], ["x"]))
    assert choice.record()["artifact"] == shipped
    assert f"ship: {'the fine-tuned model' if shipped == 'fine-tuned' else shipped}" in choice.line


def test_run_reports_the_forgetting_guard(tmp_path, tiny_model_dir):
    """The guard's base figure is the untouched base model's (evaluated before training changes it in
    place), recomputed here; the fine-tuned figure is the saved model's."""
    from fastembed_tune.data.bundled import guard_paths
    from fastembed_tune.data.readers import load_eval
    from fastembed_tune.evaluation.metrics import evaluate

    rows = [{"query": f"t{i}", "positive": f"def {i} of thing {i}"} for i in range(16)]
    write_jsonl(tmp_path / "p.jsonl", rows)
    out = tmp_path / "run"
    assert main(["run", "--model", tiny_model_dir, "--train", str(tmp_path / "p.jsonl"), "--test",
                 str(tmp_path / "p.jsonl"), "-o", str(out), "--max-steps", "4", "--batch-size", "4", "--lr", "3e-2",
                 "--quiet", "--no-distill", "--no-export", "--allow-no-gain", "--validation-share", "0",
                 "--max-forgetting", "off"]) == 0
    cmp = json.loads((out / "metrics.json").read_text())["comparisons"]["guard (WordNet): fine-tuned vs base"]
    g = load_eval(guard_paths()["test"], guard_paths()["corpus"])
    assert cmp["n"] == 300
    assert cmp["mean_a"] == pytest.approx(evaluate(EmbeddingModel.load(tiny_model_dir), g)["metrics"]["ndcg@10"], abs=1e-6)
    tuned = evaluate(EmbeddingModel.load(str(out / "train" / "model")), g)["metrics"]["ndcg@10"]
    assert cmp["mean_b"] == pytest.approx(tuned, abs=1e-3) and cmp["mean_a"] != cmp["mean_b"]
    assert "forgetting guard" in (out / "report.md").read_text()
