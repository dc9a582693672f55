"""Faults a reliability engineer tries: SIGKILL during export and while pruning checkpoints, a
second command on a locked output, a resumed log that must read as one run, the umask."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from fastembed_tune.core.atomic import output_lock
from fastembed_tune.training.train import list_checkpoints

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _hidden_leftovers(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith(".") and
                  any(m in n for m in (".tmp", ".old", ".trash", ".lock")))


def _pairs_file(path, n=16):
    path.write_text("".join(json.dumps({"query": f"query {i} about topic {i % 5}",
                                        "positive": f"document {i} explains topic {i % 5} in words"}) + "\n"
                            for i in range(n)))
    return path


def test_sigkill_during_export_is_cleaned_by_the_next_export(tmp_path, tiny_model_dir):
    out = tmp_path / "onnx"
    cmd = [sys.executable, "-m", "fastembed_tune", "export", "--model", tiny_model_dir, "-o", str(out),
           "--quantize", "int8"]
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    tmp = None
    while tmp is None:  # wait until the export is writing its graph into the hidden temp folder
        assert p.poll() is None, p.communicate()
        assert time.time() < deadline, "the export never wrote model.onnx"
        tmp = next((tmp_path / n for n in os.listdir(tmp_path) if n.startswith(".onnx.tmp")
                    and (tmp_path / n / "model.onnx").exists()), None)
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    assert not out.exists()
    assert tmp.exists()  # what SIGKILL leaves: a hidden temp folder, never a half `onnx/`
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (out / "model.onnx").is_file() and (out / "model_int8.onnx").is_file()
    assert _hidden_leftovers(tmp_path) == []


PRUNE_KILLER = textwrap.dedent("""
    import os, shutil, signal, sys
    import fastembed_tune.core.atomic as atomic
    real = shutil.rmtree
    def rmtree(path, *a, **k):
        # die half-way through deleting an old checkpoint: one file gone, the rest still there
        if ".trash" in os.path.basename(str(path)):
            os.unlink(os.path.join(path, "trainer_state.json"))
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, *a, **k)
    atomic.shutil.rmtree = rmtree
    from fastembed_tune.cli.app import main
    sys.exit(main(sys.argv[1:]))
""")


def test_sigkill_while_pruning_checkpoints_leaves_only_whole_ones(tmp_path, tiny_model_dir):
    pairs = _pairs_file(tmp_path / "p.jsonl")
    args = ["train", "--pairs", str(pairs), "--model", tiny_model_dir, "--batch-size", "4", "--max-steps", "4",
            "--checkpoint-every", "1", "--keep-checkpoints", "1", "--precision", "fp32", "--quiet",
            "--validation-share", "0"]
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    r = subprocess.run([sys.executable, "-c", PRUNE_KILLER, *args, "-o", str(killed)], env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    # checkpoint-2 was written, then pruning checkpoint-1 was killed half-way: the real name is gone
    assert [c.name for c in list_checkpoints(killed)] == ["checkpoint-2"]
    assert any(".checkpoint-1.trash" in n for n in os.listdir(killed))
    r = subprocess.run([sys.executable, "-m", "fastembed_tune", *args, "-o", str(killed), "--resume"], env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert _hidden_leftovers(killed) == [] and _hidden_leftovers(tmp_path) == []
    assert [c.name for c in list_checkpoints(killed)] == ["checkpoint-4"]
    r = subprocess.run([sys.executable, "-m", "fastembed_tune", *args, "-o", str(straight)], env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    from safetensors.torch import load_file
    a, b = load_file(killed / "model" / "model.safetensors"), load_file(straight / "model" / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    # the resumed log reads as one run: the same steps and losses as the run never interrupted
    log = [json.loads(x) for x in (killed / "train_log.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (straight / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [x["step"] for x in ref]
    assert [x["loss"] for x in log] == pytest.approx([x["loss"] for x in ref], abs=1e-5)


def test_resumed_log_windows_match_an_uninterrupted_run(tmp_path, tiny_model_dir, one_torch_thread):
    """Checkpoints every 3 steps, logging every 2: the window open at a checkpoint is carried over."""
    from fastembed_tune.data.readers import read_pairs
    from fastembed_tune.training.train import TrainConfig, train

    pairs = read_pairs(_pairs_file(tmp_path / "p.jsonl", 24))

    def cfg(out, steps, resume=False):
        return TrainConfig(str(out), model=tiny_model_dir, batch_size=4, max_steps=steps, checkpoint_every=3,
                           logging_steps=2, resume=resume, bf16=False, show_progress_bar=False)

    train(pairs, cfg(tmp_path / "a", 6))
    # "killed" right after the checkpoint at step 3: a run of 3 steps leaves the same checkpoint
    # (the schedule depends on max_steps, so the killed run is emulated by editing its total)
    train(pairs, cfg(tmp_path / "b", 6))
    ck = tmp_path / "b" / "checkpoint-6"
    os.rename(ck, tmp_path / "b" / ".checkpoint-6.trash1")  # only checkpoint-3 is left, as after a kill
    log = (tmp_path / "b" / "train_log.jsonl")
    log.write_text("".join(x + "\n" for x in log.read_text().splitlines()[:2]))  # steps 2, 4 were logged
    train(pairs, cfg(tmp_path / "b", 6, resume=True))
    a = [json.loads(x) for x in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["step"] for x in b] == [x["step"] for x in a] == [2, 4, 6]
    assert [x["loss"] for x in b] == pytest.approx([x["loss"] for x in a], abs=1e-6)
    assert not any(n.startswith(".checkpoint-6") for n in os.listdir(tmp_path / "b"))


def test_second_command_on_a_locked_output_fails_at_once(tmp_path, tiny_model_dir):
    pairs = _pairs_file(tmp_path / "p.jsonl")
    out = tmp_path / "out"
    with output_lock(out):
        t0 = time.time()
        r = subprocess.run([sys.executable, "-m", "fastembed_tune", "train", "--pairs", str(pairs), "--model",
                            tiny_model_dir, "-o", str(out), "--max-steps", "1", "--quiet"], env=ENV,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert "another fastembed-tune command" in r.stderr and str(os.getpid()) in r.stderr
        assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
        assert time.time() - t0 < 60
        assert not (out / "model").exists()
    assert _hidden_leftovers(tmp_path) == []  # the lock file goes with the lock


def test_two_trains_into_one_folder_one_wins_one_refuses(tmp_path, tiny_model_dir):
    pairs = _pairs_file(tmp_path / "p.jsonl")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fastembed_tune", "train", "--pairs", str(pairs), "--model", tiny_model_dir,
           "-o", str(out), "--max-steps", "2", "--batch-size", "4", "--quiet"]
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(c for c, _ in results)
    # either they overlapped (one refused with 2) or the second started after the first finished and
    # found its model: never two exits 0 writing the same folder at once
    assert codes in ([0, 2], [0, 0]), results
    if codes == [0, 2]:
        assert any("another fastembed-tune command" in e for c, e in results if c == 2)
    assert (out / "model" / "model.safetensors").is_file()
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2


def test_outputs_honour_the_umask(tmp_path, tiny_model_dir, one_torch_thread):
    from fastembed_tune.cli.app import main

    pairs = _pairs_file(tmp_path / "p.jsonl")
    old = os.umask(0o022)
    try:
        assert main(["mine", "--pairs", str(pairs), "--model", tiny_model_dir, "-o", str(tmp_path / "m.jsonl"),
                     "--num-negatives", "1", "--quiet"]) == 0
        assert main(["train", "--pairs", str(pairs), "--model", tiny_model_dir, "-o", str(tmp_path / "t"),
                     "--max-steps", "1", "--batch-size", "4", "--checkpoint-every", "1", "--quiet"]) == 0
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "m.jsonl").st_mode & 0o777) == oct(0o644)
    for root, dirs, files in os.walk(tmp_path / "t"):
        for d in dirs:
            assert oct(os.stat(os.path.join(root, d)).st_mode & 0o777) == oct(0o755), (root, d)
        for f in files:
            assert oct(os.stat(os.path.join(root, f)).st_mode & 0o777) == oct(0o644), (root, f)
    # what we wrote still loads
    assert torch.load(tmp_path / "t" / "checkpoint-1" / "training_state.pt", weights_only=False)["model"]
