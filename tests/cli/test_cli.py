"""User mistakes on the command line: one clear line, exit code 2, no traceback."""
import json
import subprocess
import sys

import pytest

from fastembed_tune.cli.app import main


def test_bad_pairs_file_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"query": "a", "positive": "b"}\n{"query": "c"}\n')
    r = subprocess.run([sys.executable, "-m", "fastembed_tune", "mine", "--pairs", str(bad), "-o",
                        str(tmp_path / "o.jsonl")], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert "pairs.jsonl line 2" in r.stderr and "positive" in r.stderr
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("content,needle", [
    ('{"query": "a", "positive": ""}\n', "empty"),
    ('{"query": "a", "positive": "b"\n', "malformed JSON"),
    (b'{"query": "a\xff", "positive": "b"}\n', "UTF-8"),
])
def test_bad_input_cases(tmp_path, capsys, content, needle):
    p = tmp_path / "p.jsonl"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["train", "--pairs", str(p), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert needle in err and "p.jsonl line 1" in err


def test_missing_model_dir(tmp_path, capsys):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"query": "a", "positive": "b"}) + "\n")
    assert main(["mine", "--pairs", str(p), "--model", str(tmp_path / "nope"), "-o", str(tmp_path / "o")]) == 2
    assert "model directory not found" in capsys.readouterr().err


def test_bad_numbers_are_usage_errors(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["mine", "--pairs", "x", "-o", "y", "--num-negatives", "0"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["mine", "--pairs", "x", "-o", "y", "--max-ratio", "nan"])
    assert e.value.code == 2


def test_export_calibrates_on_the_users_texts(tmp_path, tiny_model_dir, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"a domain sentence number {i} about widgets\n" for i in range(40)))
    out = tmp_path / "onnx"
    assert main(["export", "--model", tiny_model_dir, "-o", str(out), "--quantize", "int8",
                 "--calibration-texts", str(texts)]) == 0
    meta = json.loads((out / "fastembed_tune_onnx.json").read_text())
    assert meta["int8"]["calibration"] == {"source": "calibration_texts", "texts": 40}
    assert main(["export", "--model", tiny_model_dir, "-o", str(tmp_path / "x"),
                 "--calibration-texts", str(texts)]) == 2  # calibration without int8 is refused
    assert "int8" in capsys.readouterr().err.splitlines()[-1]


def test_eval_scores_an_onnx_export_like_its_model(tmp_path, tiny_model_dir):
    """A user evaluates exactly what they deploy: the ONNX export (fp32, and its int8 file) reads
    the same nDCG@10 as the PyTorch model it came from."""
    rows = [{"query": f"term {i}", "positive": f"the definition of term {i}, with words {i * 7}"} for i in range(30)]
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["export", "--model", tiny_model_dir, "-o", str(tmp_path / "onnx"), "--quantize", "int8"]) == 0
    assert main(["eval", "--data", str(data), "--model", tiny_model_dir, "--model", str(tmp_path / "onnx"),
                 "--model", str(tmp_path / "onnx" / "model_int8.onnx"), "-o", str(tmp_path / "rep"), "--quiet",
                 "--precision", "fp32"]) == 0
    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())["metrics"]
    torch_ndcg, fp32, int8 = (v["ndcg@10"] for v in m.values())
    assert fp32 == pytest.approx(torch_ndcg, abs=1e-3) and int8 == pytest.approx(torch_ndcg, abs=0.05)
