"""Two gloo processes on CPU (torchrun) against one process on the same global batch. Every training
job runs in ONE single process and ONE torchrun launch (a module fixture): starting Python and torch
is most of a small job's time."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fastembed_tune.embed.model import EmbeddingModel

SCRIPT = textwrap.dedent("""
    import json, os, sys, torch
    from fastembed_tune.data.readers import Pair
    from fastembed_tune.embed.model import EmbeddingModel
    from fastembed_tune.training.train import TrainConfig, train
    model_dir, jobs = sys.argv[1], json.loads(sys.argv[2])
    rank = int(os.environ.get("RANK", "0"))
    step = torch.optim.AdamW.step
    for job in jobs:  # one after another in this process: {"out", "loss", "val", "stream"}
        out, loss, val = job["out"], job["loss"], job["val"]  # val: hold out queries, validate every step
        pairs = [Pair(f"query number {i} " + "x " * (i % 5), f"document text {i} " + "y " * (i % 3),
                      [f"hard negative {i}"]) for i in range(20 if val else 16)]
        m = EmbeddingModel.load(model_dir)
        def spy(self, *a, _m=m, _out=out, **k):  # the gradients the optimizer sees (Adam is scale-invariant)
            torch.save({n: p.grad.clone() for n, p in _m.named_parameters() if p.grad is not None},
                       os.path.join(_out, f"grads-rank{rank}.pt"))
            return step(self, *a, **k)
        torch.optim.AdamW.step = spy
        cfg = TrainConfig(output_dir=out, max_steps=1, batch_size=16, lr=1e-3, warmup_ratio=0.0, logging_steps=1,
                          num_negatives=1, loss=loss, show_progress_bar=False, seed=7, max_grad_norm=None,
                          bf16=False)
        if val:
            cfg.max_steps, cfg.validation_share, cfg.eval_every, cfg.patience = 3, 0.2, 1, 5
            cfg.validation_corpus = [f"other text {i}" for i in range(30)]
        if job["stream"]:  # the same pairs, read window by window
            from fastembed_tune.data.stream import PairStream
            pairs, cfg.batch_size, cfg.max_steps = PairStream(job["stream"], window=8), 8, 2
        train(pairs, cfg, model=m)
        torch.save(m.state_dict(), os.path.join(out, f"weights-rank{rank}.pt"))
""")

JOBS = {"mnrl": ("mnrl", False, False), "triplet": ("triplet", False, False), "val": ("mnrl", True, False),
        "stream": ("mnrl", False, True)}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    from conftest import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", dropout=0.0)


def launch(root, model_dir, jobs, nproc):
    """Run ``jobs`` ([{"out", "loss", "val", "stream"}]) in one process (nproc 1) or one torchrun."""
    script = root / "job.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    if nproc == 1:
        cmd = [sys.executable, str(script)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               str(script)]
    r = subprocess.run(cmd + [model_dir, json.dumps(jobs)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def result(out, nproc):
    log = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    return ([r for r in log if "loss" in r][-1]["loss"], [torch.load(out / f"weights-rank{i}.pt") for i in range(nproc)],
            [torch.load(out / f"grads-rank{i}.pt") for i in range(nproc)])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """{job: (single-process output folder, two-rank output folder)} for every job in JOBS."""
    root = tmp_path_factory.mktemp("ddp")
    stream = root / "pairs.jsonl"
    stream.write_text("".join(json.dumps({"query": f"query number {i} " + "x " * (i % 5),
                                          "positive": f"document text {i} " + "y " * (i % 3),
                                          "negatives": [f"hard negative {i}"]}) + "\n" for i in range(16)))
    outs = {}
    for nproc, mode in ((1, "single"), (2, "ddp")):
        jobs = []
        for name, (loss, val, streamed) in JOBS.items():
            out = root / mode / name
            out.mkdir(parents=True)
            outs.setdefault(name, []).append(out)
            jobs.append({"out": str(out), "loss": loss, "val": val, "stream": str(stream) if streamed else None})
        launch(root, tiny_model_dir, jobs, nproc)
    return {k: tuple(v) for k, v in outs.items()}


@pytest.mark.parametrize("loss", ["mnrl", "triplet"])
def test_two_ranks_equal_one_process(trained, tiny_model_dir, loss):
    single, ddp = trained[loss]
    l1, (w1,), (g1,) = result(single, 1)
    l2, (wa, wb), (ga, gb) = result(ddp, 2)
    assert abs(l1 - l2) <= 1e-5 * max(1.0, abs(l1)), (l1, l2)
    assert g1.keys() == ga.keys() and len(g1) > 10
    scale = max(g.abs().max().item() for g in g1.values())
    for k in g1:  # the averaged gradient is the single-process gradient of the global batch
        torch.testing.assert_close(ga[k], g1[k], rtol=1e-5, atol=1e-5 * scale)
        torch.testing.assert_close(gb[k], ga[k], rtol=0, atol=0)
    for k in w1:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)  # both ranks identical
        torch.testing.assert_close(wa[k], w1[k], rtol=1e-5, atol=1e-5)  # and equal to one process
    assert any(not torch.equal(w1[k], EmbeddingModel.load(tiny_model_dir).state_dict()[k]) for k in w1)
    assert (ddp / "model" / "modules.json").exists()


def test_validation_under_torchrun_decides_as_one_process(trained):
    """Every rank scores the held-out queries on the same weights: the validation curve, the best step
    and the saved model are the single process's."""
    single, ddp = trained["val"]

    def curve(out):
        return [(r["step"], r["val_ndcg@10"]) for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())
                if "val_ndcg@10" in r]
    c1, c2 = curve(single), curve(ddp)
    assert [s for s, _ in c1] == [s for s, _ in c2] == [1, 2, 3]
    assert [v for _, v in c2] == pytest.approx([v for _, v in c1], abs=1e-4)
    a = EmbeddingModel.load(str(single / "model")).state_dict()
    b = EmbeddingModel.load(str(ddp / "model")).state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nccl, bf16)")
def test_cuda_nccl_bf16_two_ranks(tmp_path, tiny_model_dir):
    n = min(2, torch.cuda.device_count())
    out = tmp_path / "ddp"
    out.mkdir()
    launch(tmp_path, tiny_model_dir, [{"out": str(out), "loss": "mnrl", "val": False, "stream": None}], n)
    l2, ws, _ = result(out, n)
    assert torch.isfinite(torch.tensor(l2))
    for k in ws[0]:
        torch.testing.assert_close(ws[0][k], ws[-1][k])


def test_sharded_mining_writes_the_single_process_output(tmp_path, tiny_model_dir):
    rows = [{"query": f"term {i} " + "z " * (i % 7), "positive": f"meaning number {i} " + "w " * (i % 4)}
            for i in range(37)]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"c{i}", "text": f"distractor {i} " + "v " * (i % 5)}) + "\n"
                              for i in range(50)))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    args = ["mine", "--pairs", str(pairs), "--corpus", str(corpus), "--model", tiny_model_dir,
            "--num-negatives", "4", "--max-ratio", "0.99", "--batch-size", "8", "--quiet"]
    one = subprocess.run([sys.executable, "-m", "fastembed_tune", *args, "-o", str(tmp_path / "one.jsonl"),
                          "--summary", str(tmp_path / "one.json")], capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "fastembed_tune", *args, "-o", str(tmp_path / "two.jsonl"),
                          "--summary", str(tmp_path / "two.json"), "--nproc", "2"],
                         capture_output=True, text=True, env=env, timeout=240)
    assert two.returncode == 0, two.stderr[-2000:]
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    s1, s2 = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert s1["negative_score_histogram"] == s2["negative_score_histogram"]
    assert s1["candidates_dropped_as_false_negatives"] == s2["candidates_dropped_as_false_negatives"]
    assert not (tmp_path / "two.jsonl.shards").exists()



def test_a_streamed_file_under_torchrun_trains_as_one_process(trained):
    """Every rank computes the same window order and batches (a pure function of the file) and takes
    its share of each batch: two ranks end where one process does."""
    single, ddp = trained["stream"]
    l1, (w1,), _ = result(single, 1)
    l2, (wa, wb), _ = result(ddp, 2)
    assert abs(l1 - l2) <= 1e-5 * max(1.0, abs(l1)), (l1, l2)
    summary = json.loads((ddp / "train_summary.json").read_text())
    assert summary["steps"] == 2
    for k in w1:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)
        torch.testing.assert_close(wa[k], w1[k], rtol=1e-5, atol=1e-5)
