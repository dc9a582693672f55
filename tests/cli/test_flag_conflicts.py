"""Flags that cannot act, or contradict each other, are refused before any work: one ``error:`` line naming
the flag, exit 2 (never silently ignored)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def cli(*args: str) -> tuple[int, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "fastembed_tune", *map(str, args)], capture_output=True, text=True,
                       env=env, timeout=120)
    return r.returncode, r.stderr


@pytest.fixture
def pairs(tmp_path):
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps({"query": f"q{i}", "positive": f"d{i}"}) + "\n" for i in range(4)))
    return p


@pytest.mark.parametrize("args,flag", [
    (["train", "--pairs", "{pairs}", "-o", "{out}", "--seed", "-1"], "--seed"),
    (["train", "--pairs", "{pairs}", "-o", "{out}", "--replay", "{pairs}"], "--replay-ratio"),
    (["eval", "--data", "{pairs}", "--model", "{pairs}", "--model", "{pairs}"], "--model"),
    (["export", "-o", "{out}", "--allow-fp32-int8"], "--allow-fp32-int8"),
    (["serve", "--model", "{out}", "--int8", "--precision", "bf16"], "--int8"),
    (["serve", "--model", "{out}", "--name", ""], "--name"),
    (["adapt", "--pairs", "{pairs}", "--embeddings", "builtin", "--kind", "linear", "--rank", "8", "-o", "{out}"],
     "--rank"),
    (["adapt", "--pairs", "{pairs}", "--embeddings", "builtin", "--api-dimensions", "16", "-o", "{out}"],
     "--api-dimensions"),
])
def test_a_flag_that_cannot_act_is_refused(tmp_path, pairs, args, flag):
    out = tmp_path / "out"
    rc, err = cli(*[a.format(pairs=pairs, out=out) for a in args])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], err
    assert "Traceback" not in err and not out.exists()
