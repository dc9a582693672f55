"""``train --resume`` continues one run, never a mix of two: every setting that changes the run's
result (the model, the loss and its knobs, the batches, the optimizer and schedule, the sequence
length, the precision, the validation) is recorded with the checkpoint and compared at resume. A
changed one is refused with one ``error:`` line naming the flag, the checkpoint's value and the new
one, exit 2, the checkpoints untouched. Settings that only change how the run is watched or saved
(``--quiet``, ``--checkpoint-every``, ``--keep-checkpoints``) may differ.

Everything runs through ``python -m fastembed_tune train`` on the 2-layer tiny BERT: one first run of
4 steps with a checkpoint at every step, cut back to its checkpoints 1 and 2 (what a run killed
after step 2 leaves), then ``--resume`` with changed or equal settings.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BASE = ["--batch-size", "4", "--max-steps", "4", "--lr", "0.001", "--checkpoint-every", "1",
        "--keep-checkpoints", "10", "--validation-share", "0", "--precision", "fp32", "--quiet"]


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "fastembed_tune", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _replace(args: list[str], flag: str, value) -> list[str]:
    """``args`` with ``flag`` set to ``value`` (None: removed; True: a switch added)."""
    out, i = [], 0
    while i < len(args):
        if args[i] == flag:
            i += 1 if args[i] in ("--quiet", "--symmetric") else 2
            continue
        out.append(args[i])
        i += 1
    if value is True:
        return out + [flag]
    return out if value is None else out + [flag, str(value)]


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path, Path]:
    """(pairs file, model, output folder of a finished 4-step run with checkpoints 1..4)."""
    root = tmp_path_factory.mktemp("resume")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"question number {i}", "positive": f"answer text {i}",
                                         "negatives": [f"unrelated passage {i}"]}) + "\n" for i in range(16)))
    out = root / "first"
    r = _cli("train", "--pairs", str(pairs), "--model", tiny_model_dir, "-o", str(out), *BASE)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{i}" for i in range(1, 5)]
    return pairs, Path(tiny_model_dir), out


@pytest.fixture()
def stopped(first_run, tmp_path) -> tuple[Path, Path, Path]:
    """(pairs, model, output) where the output is what a run killed after step 2 leaves."""
    pairs, model, first = first_run
    out = tmp_path / "run"
    shutil.copytree(first, out)
    for name in ("checkpoint-3", "checkpoint-4", "model"):
        shutil.rmtree(out / name)
    (out / "train_summary.json").unlink()
    return pairs, model, out


def _resume(stopped, args: list[str], capsys=None) -> tuple[subprocess.CompletedProcess, dict, dict]:
    """Resume ``stopped`` with ``args``: in a subprocess, or in this process (``capsys`` given:
    ``fastembed_tune.cli.app.main``, the same code path without a fresh torch import each time)."""
    pairs, model, out = stopped
    before = _tree_digest(out)
    argv = ["train", "--pairs", str(pairs), "-o", str(out), "--resume", *args]
    if capsys is None:
        r = _cli(*argv)
    else:
        from fastembed_tune.cli.app import main

        capsys.readouterr()
        code = main(argv)
        captured = capsys.readouterr()
        r = subprocess.CompletedProcess(argv, code, captured.out, captured.err)
    return r, before, _tree_digest(out)


def _assert_refused(r: subprocess.CompletedProcess, before: dict, after: dict, *words: str) -> str:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), r.stderr
    assert all(line.startswith("warning: ") for line in lines[:-1]), r.stderr
    for w in words:
        assert w in lines[-1], (w, lines[-1])
    assert "checkpoint-2" in lines[-1]
    assert after == before  # checkpoints, log and everything else untouched; no model/ written
    return lines[-1]


def test_resume_refuses_a_changed_lr(stopped):
    r, before, after = _resume(stopped, ["--model", str(stopped[1]), *_replace(BASE, "--lr", "0.01")])
    line = _assert_refused(r, before, after, "--lr", "0.001", "0.01")
    assert "--max-seq-length" not in line


def test_resume_refuses_a_changed_max_seq_length(stopped):
    r, before, after = _resume(stopped, ["--model", str(stopped[1]), *BASE, "--max-seq-length", "16"])
    _assert_refused(r, before, after, "--max-seq-length", "64", "16")


def test_resume_with_the_same_settings_continues(stopped):
    # how the run is watched and saved may change: the progress bar, the checkpoint cadence
    args = _replace(_replace(BASE, "--quiet", None), "--checkpoint-every", 2)
    r, _, _ = _resume(stopped, ["--model", str(stopped[1]), *args, "--max-seq-length", "64"])
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["resumed_from"] == 2 and summary["steps"] == 4 and summary["steps_this_run"] == 2
    assert (stopped[2] / "model" / "modules.json").is_file()


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> str:
    from conftest import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("other") / "model", dropout=0.0)


@pytest.mark.parametrize("flag, value, words", [
    ("--loss", "cached_mnrl", ["--loss", "mnrl", "cached_mnrl"]),
    ("--batch-size", "2", ["--batch-size", "4", "2"]),
    ("--num-negatives", "0", ["--num-negatives", "1", "0"]),
    ("--seed", "7", ["--seed", "42", "7"]),
    ("--symmetric", True, ["--symmetric"]),
    ("--precision", "bf16", ["--precision", "fp32", "bf16"]),
    ("--max-steps", "6", ["--max-steps", "4", "6"]),
    ("--warmup-ratio", "0.5", ["--warmup-ratio", "0.1", "0.5"]),
    ("--scale", "10", ["--scale", "20", "10"]),
])
def test_resume_refuses_each_setting_that_changes_the_run(stopped, flag, value, words, capsys, one_torch_thread):
    r, before, after = _resume(stopped, ["--model", str(stopped[1]), *_replace(BASE, flag, value)], capsys)
    _assert_refused(r, before, after, *words)


def test_resume_refuses_another_model(stopped, other_model, capsys, one_torch_thread):
    r, before, after = _resume(stopped, ["--model", other_model, *BASE], capsys)
    _assert_refused(r, before, after, "--model", str(stopped[1]), other_model)


def test_a_checkpoint_without_a_settings_record_is_compared_on_its_config(stopped, capsys, one_torch_thread):
    """Checkpoints written before the settings record: their saved config still catches a changed lr,
    and the same settings still resume."""
    state = stopped[2] / "checkpoint-2" / "trainer_state.json"
    position = json.loads(state.read_text())
    del position["settings"]
    state.write_text(json.dumps(position))
    r, before, after = _resume(stopped, ["--model", str(stopped[1]), *_replace(BASE, "--lr", "0.01")], capsys)
    _assert_refused(r, before, after, "--lr", "0.001", "0.01")
    r, _, _ = _resume(stopped, ["--model", str(stopped[1]), *BASE], capsys)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout[r.stdout.index("{"):])["resumed_from"] == 2
