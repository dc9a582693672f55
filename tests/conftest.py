import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# serve's exports and the precision measured per export: a fresh cache per test session, not ~/.cache
os.environ.setdefault("FASTEMBED_TUNE_CACHE", tempfile.mkdtemp(prefix="fastembed-tune-cache-"))

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=25, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _run_writes_no_openvino_int8_by_default(monkeypatch):
    """Whether `run` writes the OpenVINO int8 IR depends on the CPU (VNNI/AMX) and on nncf being
    installed: off in every test, so a test's outputs do not depend on the machine. The IR's own
    tests (test_openvino_int8.py) ask for it."""
    monkeypatch.setattr("fastembed_tune.run.pipeline.openvino_int8_pays", lambda: False)


@pytest.fixture(scope="session")
def minilm_export(tmp_path_factory):
    """The built-in MiniLM exported once per test session (fp32 + int8 + portable): (folder, info).
    Read-only: a test that writes next to it copies it first."""
    from fastembed_tune.embed.model import default_model_path
    from fastembed_tune.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "minilm"
    return out, export_onnx(default_model_path(), out, quantize="int8")


def make_tiny_model(path, dropout: float = 0.1) -> str:
    """A 2-layer, 32-wide BERT with the MiniLM tokenizer, saved as a sentence-transformers dir."""
    import torch
    import transformers

    from fastembed_tune.embed.model import EmbeddingModel, default_model_path

    tok = transformers.AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                                  hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    EmbeddingModel(transformers.BertModel(cfg), tok, "mean", True, 64).save(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and spinning threads crawl on a busy 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
