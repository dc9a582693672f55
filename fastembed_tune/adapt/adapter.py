"""Adapters on frozen embeddings: adapt a model whose weights you do not own (a hosted API).

The embedding model stays frozen; a small network learns, from (query, relevant document) pairs, to
move its vectors so that a query lands nearer its documents. By default only the query side is
adapted, so a corpus already embedded (and indexed) needs no re-embedding.

- **Sources** (:func:`open_source`): an OpenAI-compatible endpoint
  (:class:`~fastembed_tune.adapt.api_client.ApiEmbedder`), a local sentence-transformers or ONNX model, or
  precomputed vectors (:class:`PrecomputedVectors`). Model and API vectors go through the
  :class:`~fastembed_tune.embed.store.StoredEncoder`: each distinct text is embedded once, ever, and every
  epoch, run and stage reads it from disk.
- **Kinds** (:class:`AdapterNet`): ``linear`` (``x (I + D) + b``, identity-initialised), ``lowrank``
  (``x + x A B + b``, B zero-initialised), ``mlp`` (residual ``x + relu(x W1 + b1) W2 + b2``, W2
  zero-initialised). Inputs are L2-normalised first, outputs after. ``sides="both"`` learns a second
  adapter of the same kind for the documents.
- **Training** (:func:`train_adapter`): the native fused contrastive loss
  (:func:`~fastembed_tune.kernels.contrastive`) over in-batch negatives plus hard negatives mined
  from the cached document vectors with :func:`~fastembed_tune.kernels.topk_cosine` (re-mined with
  the adapter every ``remine_every`` epochs); the epoch that ships is chosen on a validation split of
  the training queries (:class:`~fastembed_tune.training.validation.BestTracker`).
- **Output** (:meth:`Adapter.save`): ``adapter.safetensors`` + ``adapter_config.json`` and a tiny ONNX
  graph per side (``adapter.onnx``, ``adapter_document.onnx``); :class:`Adapter` loads it and
  :meth:`Adapter.apply` maps vectors with numpy alone (what ``embed --adapter`` and a server call).
- :func:`adapt` chains it all and writes the same before/after report as ``run`` (frozen vs adapted,
  with the gate's paired confidence interval).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from fastembed_tune.core.errors import NoSignificantGain, UserError

PathLike = Union[str, "os.PathLike[str]"]
KINDS = ("linear", "lowrank", "mlp")
SIDES = ("query", "both")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
ONNX_FILES = {"query": "adapter.onnx", "document": "adapter_document.onnx"}
EPS = 1e-12
PARAMS = {"linear": ("delta", "bias"), "lowrank": ("a", "b", "bias"), "mlp": ("w1", "b1", "w2", "bias")}


def default_store_dir() -> Path:
    """Where the embedding store lives unless ``--store`` says otherwise: ``$FASTEMBED_TUNE_STORE``,
    else ``~/.cache/fastembed-tune/store``.

    >>> default_store_dir().name
    'store'
    """
    env = os.environ.get("FASTEMBED_TUNE_STORE")
    return Path(env) if env else Path.home() / ".cache" / "fastembed-tune" / "store"


# ================================================================================================
# sources of frozen vectors


class PrecomputedVectors:
    """Vectors computed elsewhere, looked up by text: a ``.parquet`` file with ``text`` and
    ``embedding`` columns, or a ``.npy`` matrix beside a texts file of the same name
    (``vectors.npy`` + ``vectors.jsonl``/``.txt``/``.csv``/``.tsv``/``.parquet``, one row per text).

    >>> import tempfile; d = tempfile.mkdtemp()
    >>> np.save(f"{d}/v.npy", np.eye(2, dtype=np.float32)); _ = open(f"{d}/v.txt", "w").write("a\\nb\\n")
    >>> PrecomputedVectors(f"{d}/v.npy").encode(["b", "a"]).tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """

    TEXT_EXTS = (".jsonl", ".json", ".txt", ".csv", ".tsv", ".parquet")

    def __init__(self, path: PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"--embeddings {self.path}: file not found")
        if self.path.suffix == ".parquet":
            texts, rows = self._parquet()
        elif self.path.suffix == ".npy":
            texts, rows = self._npy()
        else:
            raise UserError(f"--embeddings {self.path}: vectors must be a .npy (beside a texts file) or a "
                            f".parquet file with 'text' and 'embedding' columns")
        if rows.ndim != 2 or rows.shape[1] < 1:
            raise UserError(f"{self.path}: expected a [texts, dim] matrix, got shape {tuple(rows.shape)}")
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            raise UserError(f"{self.path} row {int(np.argmax(bad)) + 1}: NaN or Inf in the vector")
        self.rows = np.ascontiguousarray(rows, dtype=np.float32)
        self.index: dict[str, int] = {}
        for i, t in enumerate(texts):
            self.index.setdefault(t, i)
        self.dim = int(self.rows.shape[1])
        self.fingerprint = "vectors|" + hashlib.blake2b(self.rows.tobytes(), digest_size=16).hexdigest()
        self.embedded, self.served = 0, 0

    def _parquet(self) -> tuple[list[str], np.ndarray]:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(self.path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise UserError(f"{self.path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
        for col in ("text", "embedding"):
            if col not in table.column_names:
                raise UserError(f"{self.path}: column '{col}' is missing (columns: {', '.join(table.column_names)})")
        texts = table.column("text").to_pylist()
        emb = table.column("embedding").to_pylist()
        for i, (t, e) in enumerate(zip(texts, emb), 1):
            if not isinstance(t, str) or not t:
                raise UserError(f"{self.path} row {i}: field 'text' must be a non-empty string")
            if e is None or len(e) != len(emb[0] or ()):
                raise UserError(f"{self.path} row {i}: field 'embedding' must be a list of {len(emb[0] or ())} numbers")
        return texts, np.asarray(emb, dtype=np.float32)

    def _npy(self) -> tuple[list[str], np.ndarray]:
        from fastembed_tune.data.readers import read_texts

        siblings = [self.path.with_suffix(e) for e in self.TEXT_EXTS if self.path.with_suffix(e).is_file()]
        if len(siblings) != 1:
            raise UserError(f"--embeddings {self.path}: needs exactly one texts file beside it with the same name "
                            f"({', '.join(self.path.stem + e for e in self.TEXT_EXTS)}), found "
                            f"{len(siblings) or 'none'}")
        try:
            rows = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise UserError(f"{self.path}: not a readable .npy matrix ({e})") from None
        texts = list(read_texts(siblings[0]).values())
        if len(texts) != rows.shape[0]:
            raise UserError(f"{self.path}: {rows.shape[0]} vectors but {siblings[0]} holds {len(texts)} texts")
        return texts, np.asarray(rows, dtype=np.float32)

    def describe(self) -> str:
        return f"precomputed vectors {self.path}"

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress_bar: bool = False,
               desc: str = "") -> np.ndarray:
        """float32 rows of ``texts``; a :class:`UserError` naming how many texts have no vector."""
        texts = list(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self.index]
        if missing:
            raise UserError(f"{self.path}: no vector for {len(missing)} of the texts the run needs (first: "
                            f"{missing[0][:60]!r}); embed the pairs' queries and documents, the corpus and the test "
                            f"set with the same model")
        self.served += len(texts)
        return self.rows[[self.index[t] for t in texts]] if texts else np.empty((0, self.dim), np.float32)


class Source:
    """Frozen vectors by text: ``encoder`` (anything with ``encode`` and ``dim``), how reports name
    it, and what the adapter records about it (kind, fingerprint, dim; never a key).

    >>> class E: dim = 2
    >>> Source(E(), "vectors", "v.npy", "f").info()["dim"]
    2
    """

    def __init__(self, encoder: Any, kind: str, description: str, fingerprint: str):
        self.encoder, self.kind, self.description, self.fingerprint = encoder, kind, description, fingerprint

    @property
    def dim(self) -> int:
        return int(self.encoder.dim)

    def info(self) -> dict:
        return {"kind": self.kind, "description": self.description, "fingerprint": self.fingerprint, "dim": self.dim}

    def encode(self, texts: Sequence[str], show_progress_bar: bool = False) -> np.ndarray:
        return np.asarray(self.encoder.encode(list(texts), batch_size=64, show_progress_bar=show_progress_bar,
                                              desc="embed"), dtype=np.float32)


class _LazyApiStore:
    """The API's :class:`~fastembed_tune.embed.store.StoredEncoder`, opened at the first ``encode`` (whose
    first text, if the endpoint's dimension is not known yet, is the one that reveals it)."""

    def __init__(self, api: Any, root: Path):
        self.api, self.root, self.enc = api, root, None

    @property
    def embedded(self) -> int:
        return self.enc.embedded if self.enc is not None else 0

    @property
    def dim(self) -> int:
        return self.enc.dim if self.enc is not None else self.api.dim

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress_bar: bool = False,
               desc: str = "embed (API)") -> np.ndarray:
        from fastembed_tune.adapt.api_client import stored_api_encoder

        texts = list(texts)
        if self.enc is None:
            if not texts:
                return np.empty((0, self.api.dimensions or 0), np.float32)
            self.enc = stored_api_encoder(self.api, self.root, texts[0])
        return self.enc.encode(texts, batch_size=batch_size, show_progress_bar=show_progress_bar, desc=desc)


def _onnx_fingerprint(emb: Any) -> str:
    h = hashlib.blake2b(digest_size=20)
    for f in (emb.model_file, emb.dir / "tokenizer.json"):
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    h.update(f"max_seq_length={emb.max_seq_length}".encode())
    return h.hexdigest()


def open_source(embeddings: Optional[str] = None, *, api_base: Optional[str] = None, api_model: Optional[str] = None,
                api_dimensions: Optional[int] = None, api_batch_size: int = 128, api_concurrency: int = 4,
                api_max_retries: int = 6, api_tpm: Optional[float] = None, store_dir: Optional[PathLike] = None,
                max_seq_length: Optional[int] = 128) -> Source:
    """The source of frozen vectors ``adapt`` learns on: ``embeddings`` is ``"api"`` (or None with
    ``api_base``) for an OpenAI-compatible endpoint, ``"builtin"`` or a directory for a local
    sentence-transformers / ONNX model (embedding at ``min(its own, max_seq_length)`` tokens), or a
    ``.npy`` / ``.parquet`` file of precomputed vectors. API and model vectors are cached in the
    store (``store_dir``, default :func:`default_store_dir`).

    >>> import tempfile; d = tempfile.mkdtemp()
    >>> np.save(f"{d}/v.npy", np.eye(2, dtype=np.float32)); _ = open(f"{d}/v.txt", "w").write("a\\nb\\n")
    >>> s = open_source(f"{d}/v.npy"); s.kind, s.dim
    ('vectors', 2)
    """
    from fastembed_tune.embed.store import StoredEncoder, model_fingerprint

    root = Path(store_dir) if store_dir else default_store_dir()
    if api_base or api_model or embeddings == "api":
        if embeddings not in (None, "api"):
            raise UserError(f"--embeddings {embeddings} and --api-base/--api-model name two sources; give one")
        if not api_base or not api_model:
            raise UserError("the API source needs both --api-base URL and --api-model NAME")
        from fastembed_tune.adapt.api_client import ApiEmbedder

        api = ApiEmbedder(api_base, api_model, dimensions=api_dimensions, batch_size=api_batch_size,
                          concurrency=api_concurrency, max_retries=api_max_retries, tokens_per_minute=api_tpm)
        api.client()  # the key is checked before any work
        return Source(_LazyApiStore(api, root), "api", api.describe(), api.fingerprint)
    if embeddings is None:
        raise UserError("give the embeddings to adapt: --api-base URL --api-model NAME (an OpenAI-compatible "
                        "endpoint), --embeddings DIR|builtin (a local model) or --embeddings FILE.npy|FILE.parquet")
    p = Path(embeddings)
    if embeddings != "builtin" and p.is_file() and p.suffix in (".npy", ".parquet"):
        v = PrecomputedVectors(p)
        return Source(v, "vectors", v.describe(), v.fingerprint)
    if embeddings != "builtin" and not p.is_dir():
        raise UserError(f"--embeddings {embeddings}: not a model directory, 'builtin', 'api', or a .npy/.parquet "
                        f"file of vectors")
    from fastembed_tune.embed.loader import load_embedder
    from fastembed_tune.embed.onnx_embedder import OnnxEmbedder

    model = load_embedder(None if embeddings == "builtin" else p, precision=None)
    if isinstance(model, OnnxEmbedder):
        fp, dim = _onnx_fingerprint(model), model.dim
        if not dim:
            raise UserError(f"--embeddings {embeddings}: the ONNX graph does not declare its embedding size")
    else:
        if max_seq_length:
            model.max_seq_length = min(model.max_seq_length, max_seq_length)
        fp, dim = model_fingerprint(model), model.dim
    name = "built-in all-MiniLM-L6-v2" if embeddings == "builtin" else str(p)
    return Source(StoredEncoder(model, root, fingerprint=fp), "model", f"local model {name}", fp)


# ================================================================================================
# the adapter: torch for training, numpy for applying, ONNX for shipping


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPS)).astype(np.float32)


def init_params(kind: str, dim: int, rank: int = 64, hidden: int = 1024, seed: int = 0) -> dict[str, np.ndarray]:
    """An adapter side's parameters at the identity map (what training starts from).

    >>> sorted(init_params("lowrank", 4, rank=2)), bool(init_params("linear", 3)["delta"].any())
    (['a', 'b', 'bias'], False)
    """
    rng = np.random.default_rng([seed, 11])
    z = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    if kind == "linear":
        return {"delta": z(dim, dim), "bias": z(dim)}
    if kind == "lowrank":
        return {"a": (rng.standard_normal((dim, rank)) / np.sqrt(dim)).astype(np.float32), "b": z(rank, dim),
                "bias": z(dim)}
    if kind == "mlp":
        return {"w1": (rng.standard_normal((dim, hidden)) * np.sqrt(2.0 / dim)).astype(np.float32), "b1": z(hidden),
                "w2": z(hidden, dim), "bias": z(dim)}
    raise UserError(f"--kind {kind!r}: choose one of {', '.join(KINDS)}")


def apply_params(kind: str, p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """One adapter side on rows ``x`` with numpy: normalise, add the kind's residual, normalise.

    >>> apply_params("linear", init_params("linear", 2), np.array([[3.0, 4.0]], np.float32)).tolist()
    [[0.6000000238418579, 0.800000011920929]]
    """
    x = _unit(np.asarray(x, np.float32))
    if kind == "linear":
        y = x + x @ p["delta"]
    elif kind == "lowrank":
        y = x + (x @ p["a"]) @ p["b"]
    else:
        y = x + np.maximum(x @ p["w1"] + p["b1"], 0) @ p["w2"]
    return _unit(y + p["bias"])


def _torch_net():
    import torch

    class AdapterNet(torch.nn.Module):
        """One adapter side in torch (the same maths as :func:`apply_params`)."""

        def __init__(self, kind: str, params: dict[str, np.ndarray]):
            super().__init__()
            self.kind = kind
            self.p = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.from_numpy(v.copy()))
                                             for k, v in params.items()})

        def forward(self, x):
            import torch.nn.functional as F

            x = F.normalize(x, dim=1, eps=EPS)
            p = self.p
            if self.kind == "linear":
                y = x + x @ p["delta"]
            elif self.kind == "lowrank":
                y = x + (x @ p["a"]) @ p["b"]
            else:
                y = x + torch.relu(x @ p["w1"] + p["b1"]) @ p["w2"]
            return F.normalize(y + p["bias"], dim=1, eps=EPS)

        def numpy_params(self) -> dict[str, np.ndarray]:
            return {k: v.detach().cpu().numpy().astype(np.float32).copy() for k, v in self.p.items()}

    return AdapterNet


def AdapterNet(kind: str, params: dict[str, np.ndarray]):
    """A torch module computing one adapter side (identity at :func:`init_params`).

    >>> import torch
    >>> net = AdapterNet("mlp", init_params("mlp", 4, hidden=8)); x = torch.randn(3, 4)
    >>> bool(torch.allclose(net(x), torch.nn.functional.normalize(x, dim=1)))
    True
    """
    return _torch_net()(kind, params)


def onnx_graph(kind: str, p: dict[str, np.ndarray], dim: int, opset: int = 17):
    """A tiny ONNX model of one adapter side: ``embeddings`` float32 [batch, dim] -> ``adapted``.

    >>> import onnxruntime as ort
    >>> m = onnx_graph("linear", init_params("linear", 2), 2)
    >>> s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    >>> s.run(None, {"embeddings": np.array([[3.0, 4.0]], np.float32)})[0].round(4)
    array([[0.6, 0.8]], dtype=float32)
    """
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.asarray([EPS], np.float32), "eps")]
    nodes = []

    def normalize(src: str, dst: str) -> None:
        nodes.extend([helper.make_node("ReduceL2", [src], [f"{dst}_norm"], axes=[1], keepdims=1),
                      helper.make_node("Max", [f"{dst}_norm", "eps"], [f"{dst}_safe"]),
                      helper.make_node("Div", [src, f"{dst}_safe"], [dst])])

    def init(name: str) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(p[name], np.float32), name))
        return name

    normalize("embeddings", "x")
    if kind == "linear":
        nodes.append(helper.make_node("MatMul", ["x", init("delta")], ["r"]))
    elif kind == "lowrank":
        nodes += [helper.make_node("MatMul", ["x", init("a")], ["xa"]),
                  helper.make_node("MatMul", ["xa", init("b")], ["r"])]
    elif kind == "mlp":
        nodes += [helper.make_node("MatMul", ["x", init("w1")], ["h0"]),
                  helper.make_node("Add", ["h0", init("b1")], ["h1"]),
                  helper.make_node("Relu", ["h1"], ["h"]),
                  helper.make_node("MatMul", ["h", init("w2")], ["r"])]
    else:
        raise ValueError(f"unknown adapter kind {kind!r}")
    nodes += [helper.make_node("Add", ["x", "r"], ["y0"]), helper.make_node("Add", ["y0", init("bias")], ["y"])]
    normalize("y", "adapted")
    graph = helper.make_graph(nodes, f"fastembed_tune_adapter_{kind}",
                              [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", dim])],
                              [helper.make_tensor_value_info("adapted", TensorProto.FLOAT, ["batch", dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="fastembed-tune")
    model.ir_version = min(model.ir_version, 8)
    return model


class Adapter:
    """A trained adapter: ``Adapter(DIR)`` loads ``adapter_config.json`` + ``adapter.safetensors``;
    :meth:`apply` maps vectors of the source model (numpy only: no torch, no onnxruntime).

    ``sides`` is ``"query"`` (documents keep their vectors: ``apply(x, "document")`` only
    normalises them) or ``"both"``.

    >>> import tempfile; d = tempfile.mkdtemp()
    >>> Adapter.identity("linear", 2).save(d); a = Adapter(d)
    >>> a.kind, a.dim, a.apply(np.array([[0.0, 2.0]], np.float32)).tolist()
    ('linear', 2, [[0.0, 1.0]])
    """

    def __init__(self, path: Optional[PathLike] = None, *, config: Optional[dict] = None,
                 params: Optional[dict[str, dict[str, np.ndarray]]] = None):
        if path is not None:
            config, params = self._load(Path(path))
        if config is None or params is None:
            raise ValueError("give an adapter directory, or config and params")
        self.config, self.params = dict(config), params
        self.kind, self.dim, self.sides = config["kind"], int(config["dim"]), config["sides"]

    @classmethod
    def identity(cls, kind: str, dim: int, sides: str = "query", rank: int = 64, hidden: int = 1024,
                 seed: int = 0) -> "Adapter":
        """An untrained adapter (the identity map up to normalisation)."""
        params = {"query": init_params(kind, dim, rank, hidden, seed)}
        if sides == "both":
            params["document"] = init_params(kind, dim, rank, hidden, seed + 1)
        return cls(config={"format": 1, "kind": kind, "dim": dim, "sides": sides, "rank": rank, "hidden": hidden},
                   params=params)

    @staticmethod
    def _load(d: Path) -> tuple[dict, dict]:
        from safetensors.numpy import load_file

        cfg_file, w_file = d / CONFIG_FILE, d / WEIGHTS_FILE
        if not d.is_dir():
            raise UserError(f"--adapter {d}: not a directory (give the folder `fastembed-tune adapt -o` wrote)")
        for f in (cfg_file, w_file):
            if not f.is_file():
                raise UserError(f"--adapter {d}: {f.name} is missing (is it an adapter folder?)")
        try:
            cfg = json.loads(cfg_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{cfg_file}: not valid JSON ({e})") from None
        if not isinstance(cfg, dict) or cfg.get("kind") not in KINDS or cfg.get("sides") not in SIDES \
                or not isinstance(cfg.get("dim"), int) or cfg["dim"] < 1:
            raise UserError(f"{cfg_file}: fields 'kind' ({'/'.join(KINDS)}), 'sides' ({'/'.join(SIDES)}) and 'dim' "
                            f"(an integer >= 1) are required")
        try:
            flat = load_file(str(w_file))
        except Exception as e:  # safetensors raises its own error type for a damaged file
            raise UserError(f"{w_file}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
        params: dict[str, dict[str, np.ndarray]] = {}
        for side in ("query", "document") if cfg["sides"] == "both" else ("query",):
            params[side] = {}
            for name in PARAMS[cfg["kind"]]:
                t = flat.get(f"{side}.{name}")
                if t is None:
                    raise UserError(f"{w_file}: tensor '{side}.{name}' is missing for a {cfg['kind']} adapter")
                if not np.isfinite(t).all():
                    raise UserError(f"{w_file}: tensor '{side}.{name}' holds NaN or Inf")
                params[side][name] = t.astype(np.float32)
            try:
                apply_params(cfg["kind"], params[side], np.ones((1, cfg["dim"]), np.float32))
            except ValueError:
                raise UserError(f"{w_file}: the {side} tensors' shapes do not fit dim {cfg['dim']}") from None
        return cfg, params

    def apply(self, vectors: Any, side: str = "query") -> np.ndarray:
        """Adapted, L2-normalised float32 rows of ``vectors`` ([n, dim]); ``side`` is ``"query"`` or
        ``"document"``."""
        if side not in ("query", "document"):
            raise ValueError(f"side must be 'query' or 'document', got {side!r}")
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise UserError(f"the adapter maps {self.dim}-d vectors of {self.config.get('source', {}).get('description', 'its source model')}"
                            f", got shape {tuple(x.shape)}; embed with the model the adapter was trained on")
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise UserError(f"vector row {int(np.argmax(bad))} holds NaN or Inf")
        if side == "document" and self.sides == "query":
            return _unit(x)
        return apply_params(self.kind, self.params[side], x)

    def save(self, directory: PathLike) -> None:
        """Write ``adapter.safetensors``, ``adapter_config.json`` and the ONNX graph(s) into ``directory``."""
        import onnx
        from safetensors.numpy import save

        from fastembed_tune.core.atomic import atomic_write

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        flat = {f"{side}.{k}": np.ascontiguousarray(v) for side, p in self.params.items() for k, v in p.items()}
        atomic_write(d / WEIGHTS_FILE, lambda f: f.write(save(flat, metadata={"format": "fastembed-tune adapter"})),
                     binary=True)
        cfg = dict(self.config, onnx={side: ONNX_FILES[side] for side in self.params})
        for side, p in self.params.items():
            model = onnx_graph(self.kind, p, self.dim)
            atomic_write(d / ONNX_FILES[side], lambda f, m=model: f.write(m.SerializeToString()), binary=True)
        onnx.checker.check_model(str(d / ONNX_FILES["query"]))
        atomic_write(d / CONFIG_FILE, lambda f: f.write(json.dumps(cfg, indent=2) + "\n"))


# ================================================================================================
# training


@dataclass
class AdapterConfig:
    """The settings of one adapter training (the ``adapt`` flags).

    >>> AdapterConfig().kind, AdapterConfig().sides
    ('linear', 'query')
    """
    kind: str = "linear"
    sides: str = "query"
    rank: int = 64
    hidden: int = 1024
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    num_negatives: int = 7
    max_ratio: Optional[float] = 0.95
    remine_every: int = 1  # epochs between re-mining with the adapter (0: mine once, frozen vectors)
    average: bool = True  # linear/mlp: validate and ship the running mean of the epochs' weights (SWA)
    scale: float = 20.0
    validation_share: float = 0.1
    patience: Optional[int] = 3
    seed: int = 42


def mine(qv: np.ndarray, cv: np.ndarray, positives: Sequence[Sequence[int]], k: int,
         max_ratio: Optional[float]) -> np.ndarray:
    """Hard negatives: for each query row of ``qv``, the ids of the ``k`` nearest rows of ``cv`` (unit
    rows) that are not among its ``positives``, above no ``max_ratio`` x its weakest positive's score;
    ``-1`` pads a query with fewer candidates.

    >>> c = np.eye(3, dtype=np.float32); q = np.array([[0.8, 0.6, 0.0]], np.float32)
    >>> mine(q, c, [[0]], 2, None).tolist()
    [[1, 2]]
    """
    from fastembed_tune.kernels import topk_cosine

    k = min(k, cv.shape[0])
    _, ids = topk_cosine(np.ascontiguousarray(qv), np.ascontiguousarray(cv), k, exclude=[list(p) for p in positives],
                         max_ratio=max_ratio)
    return ids


def train_adapter(vectors: np.ndarray, queries: np.ndarray, positives: np.ndarray, corpus: np.ndarray,
                  cfg: AdapterConfig, score: Optional[Callable[[Adapter], float]] = None,
                  given_negatives: Optional[Sequence[Sequence[int]]] = None, log: Callable = print) -> tuple[Adapter, dict]:
    """Train an adapter on cached vectors.

    Args:
        vectors: float32 [T, d], one row per distinct text.
        queries, positives: int [P], each training pair's query and positive row in ``vectors``.
        corpus: int [N], rows hard negatives are mined from (it should hold every positive).
        score: validation nDCG@10 of an :class:`Adapter` (None: no validation, the last epoch ships).
        given_negatives: per pair, rows of negatives the data brought (used before mined ones).

    Returns:
        ``(the adapter of the best validated epoch, summary)``.

    >>> rng = np.random.default_rng(0); d = rng.standard_normal((20, 8)).astype(np.float32)
    >>> q = d @ np.linalg.qr(rng.standard_normal((8, 8)))[0].astype(np.float32)  # rotated copies
    >>> v = np.concatenate([q, d]); cfg = AdapterConfig(epochs=2, batch_size=8, validation_share=0)
    >>> a, s = train_adapter(v, np.arange(20), np.arange(20, 40), np.arange(20, 40), cfg, log=lambda *_: None)
    >>> s["epochs_run"], a.apply(v[:1]).shape
    (2, (1, 8))
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and never spins against a busy machine
    try:
        return _train(vectors, queries, positives, corpus, cfg, score, given_negatives, log)
    finally:
        torch.set_num_threads(threads)


def _train(vectors, queries, positives, corpus, cfg: AdapterConfig, score, given_negatives, log) -> tuple[Adapter, dict]:
    import torch

    from fastembed_tune.kernels import contrastive
    from fastembed_tune.training.validation import BestTracker

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 12])
    V = np.ascontiguousarray(vectors, dtype=np.float32)
    Vt = torch.from_numpy(V)
    dim = V.shape[1]
    ident = Adapter.identity(cfg.kind, dim, cfg.sides, cfg.rank, cfg.hidden, cfg.seed)
    Net = _torch_net()
    nets = {side: Net(cfg.kind, p) for side, p in ident.params.items()}
    params = [p for n in nets.values() for p in n.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    P = len(queries)
    steps_per_epoch = max(1, -(-P // cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, total // 20))
                                              * max(0.0, 1 - s / total))
    # mining: per distinct query, its positives' positions in the corpus
    uq, q_of_pair = np.unique(queries, return_inverse=True)
    cpos = {int(r): i for i, r in enumerate(corpus)}
    pos_sets: list[set] = [set() for _ in uq]
    for j, p in zip(q_of_pair, positives):
        if int(p) in cpos:
            pos_sets[j].add(cpos[int(p)])
    k = cfg.num_negatives

    avg: Optional[dict] = None
    n_avg = 0
    averaging = cfg.average and cfg.kind != "lowrank"  # the mean of low-rank factors is not a mean of their products

    def current() -> Adapter:
        params = {s: n.numpy_params() for s, n in nets.items()}
        if averaging and avg is not None:
            params = {s: {k: v.copy() for k, v in p.items()} for s, p in avg.items()}
        return Adapter(config=dict(ident.config), params=params)

    def negatives(adapter: Adapter) -> np.ndarray:
        if k == 0:
            return np.full((P, 0), -1, np.int64)
        ids = mine(adapter.apply(V[uq]), adapter.apply(V[corpus], "document"), pos_sets, k, cfg.max_ratio)
        rows = np.where(ids >= 0, corpus[np.maximum(ids, 0)], -1)[q_of_pair]
        if given_negatives is not None:
            rows = np.array([[*given[:k], *r][:k] if len(given) else r
                             for given, r in zip(given_negatives, rows.tolist())], dtype=np.int64).reshape(P, -1)
        return rows

    tracker = BestTracker(patience=cfg.patience, tolerance=0.0)
    best = ident
    curve = []
    if score is not None:
        tracker.update(score(ident), 0)
        curve.append({"epoch": 0, "ndcg@10": tracker.best})
    neg = negatives(ident)
    mined_with = [0]
    step, epoch, losses = 0, 0, []
    for epoch in range(1, cfg.epochs + 1):
        if cfg.remine_every and epoch > 1 and (epoch - 1) % cfg.remine_every == 0:
            neg = negatives(current())
            mined_with.append(epoch - 1)
        perm = rng.permutation(P)
        for net in nets.values():
            net.train()
        ep_loss = []
        for s in range(0, P, cfg.batch_size):
            idx = perm[s:s + cfg.batch_size]
            n_rows = neg[idx].ravel()
            doc_rows = np.concatenate([positives[idx], n_rows[n_rows >= 0]])
            q = nets["query"](Vt[queries[idx]])
            d = Vt[doc_rows]
            if "document" in nets:
                d = nets["document"](d)
            loss = contrastive(q, d, torch.arange(len(idx)), cfg.scale, doc_keys=torch.from_numpy(doc_rows))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            ep_loss.append(float(loss.detach()))
        losses.append(float(np.mean(ep_loss)))
        if averaging:  # running mean of the end-of-epoch weights
            n_avg += 1
            now = {s: n.numpy_params() for s, n in nets.items()}
            avg = now if avg is None else {s: {k: v + (now[s][k] - v) / n_avg for k, v in p.items()}
                                           for s, p in avg.items()}
        if score is not None:
            adapter = current()
            val = score(adapter)
            curve.append({"epoch": epoch, "ndcg@10": val, "loss": losses[-1]})
            if tracker.update(val, epoch):
                best = adapter
            if tracker.should_stop:
                log(f"validation nDCG@10 has not improved for {cfg.patience} epochs: stopping after epoch {epoch}")
                break
        else:
            curve.append({"epoch": epoch, "loss": losses[-1]})
    if score is None:
        best = current()
    summary = {"pairs": P, "epochs_run": epoch, "steps": step, "seconds": time.perf_counter() - t0,
               "best_epoch": tracker.best_step if score is not None else epoch,
               "validation_best": tracker.best if score is not None else None, "curve": curve,
               "mined_at_epochs": mined_with, "negatives_per_pair": float((neg >= 0).sum(1).mean()) if k else 0.0}
    best.config["training"] = {**asdict(cfg), **summary}
    return best, summary


# ================================================================================================
# the stage: data -> cached vectors -> adapter -> report


def _mining_words(every: int) -> str:
    """How the report says when negatives were mined.

    >>> _mining_words(0), _mining_words(1), _mining_words(3)
    ('mined once, on the frozen vectors', 're-mined with the adapter every epoch', 're-mined with the adapter every 3 epochs')
    """
    if every == 0:
        return "mined once, on the frozen vectors"
    return "re-mined with the adapter every " + ("epoch" if every == 1 else f"{every} epochs")


def adapt(output_dir: PathLike, pairs_path: PathLike, source: Source, corpus_path: Optional[PathLike] = None,
          test_path: Optional[PathLike] = None, cfg: Optional[AdapterConfig] = None, gate: bool = True,
          show_progress_bar: bool = True, log: Callable = print) -> dict:
    """Learn an adapter for ``source`` on the pairs of ``pairs_path`` and write it to ``output_dir``
    (adapter files; with ``test_path`` also ``report.md`` / ``metrics.json`` / ``metrics.png``,
    frozen vs adapted). Hard negatives and validation distractors come from ``corpus_path`` minus
    every test document; every text is embedded once through the source's store. Raises
    :class:`~fastembed_tune.core.errors.NoSignificantGain` (after writing everything) when ``gate`` and
    the adapted vectors are not significantly better than the frozen ones on the test set.

    Example (embeds the built-in sample with MiniLM: a minute, so not run as a doctest):
        >>> from fastembed_tune.data.bundled import sample_paths                          # doctest: +SKIP
        >>> p = sample_paths()                                                        # doctest: +SKIP
        >>> adapt("runs/adapter", p["train"], open_source("builtin"), p["corpus"], p["test"])  # doctest: +SKIP
    """
    from fastembed_tune.core.atomic import check_output, output_lock, replace_dir, temp_dir
    from fastembed_tune.data.readers import load_eval, read_corpus, read_pairs
    from fastembed_tune.evaluation.gate import compare, describe, mean_ci, significant_gain
    from fastembed_tune.evaluation.metrics import evaluate, format_table, write_report
    from fastembed_tune.mining.exact import leakfree_corpus
    from fastembed_tune.training.validation import Validation, split_validation

    t_start = time.perf_counter()
    cfg = cfg or AdapterConfig()
    out = check_output(output_dir, "dir")
    pairs = read_pairs(pairs_path)
    evalset = load_eval(test_path, corpus_path) if test_path else None
    if evalset is not None:
        corpus_texts = leakfree_corpus(evalset)
    else:
        corpus_texts = list(read_corpus(corpus_path).values()) if corpus_path else []
    fit, val = split_validation(pairs, cfg.validation_share, 500, cfg.seed,
                                avoid=set(evalset.queries.values()) if evalset else ())
    validation = Validation(list(val), corpus_texts, seed=cfg.seed) if val else None
    texts = [t for p in pairs for t in (p.query, p.positive, *p.negatives)] + list(corpus_texts)
    if validation is not None:
        texts += list(validation.evalset.corpus.values())
    if evalset is not None:
        texts += list(evalset.queries.values()) + list(evalset.corpus.values())
    texts = list(dict.fromkeys(texts))
    with output_lock(out):
        t0 = time.perf_counter()
        before = getattr(source.encoder, "embedded", 0)
        V = source.encode(texts, show_progress_bar=show_progress_bar)
        new = getattr(source.encoder, "embedded", 0) - before
        embed_s = time.perf_counter() - t0
        log(f"vectors: {len(texts)} distinct texts from {source.description}: {new} embedded now, "
            f"{len(texts) - new} from the store ({embed_s:.1f} s)")
        if V.shape != (len(texts), source.dim) or not np.isfinite(V).all():
            raise UserError(f"{source.description}: returned vectors of shape {V.shape} (or NaN/Inf) for "
                            f"{len(texts)} texts of dim {source.dim}")
        V = _unit(V)
        row = {t: i for i, t in enumerate(texts)}
        docs = list(dict.fromkeys([*corpus_texts, *(p.positive for p in fit), *(n for p in fit for n in p.negatives)]))
        corpus_rows = np.array([row[t] for t in docs], np.int64)
        score = None
        if validation is not None:
            ve = validation.evalset
            vq, vc = V[[row[t] for t in ve.queries.values()]], V[[row[t] for t in ve.corpus.values()]]

            def score(a: Adapter) -> float:
                return evaluate(None, ve, query_embeddings=a.apply(vq), corpus_embeddings=a.apply(vc, "document"))[
                    "metrics"]["ndcg@10"]
        given = [[row[n] for n in p.negatives] for p in fit] if any(p.negatives for p in fit) else None
        adapter, tsum = train_adapter(V, np.array([row[p.query] for p in fit], np.int64),
                                      np.array([row[p.positive] for p in fit], np.int64), corpus_rows, cfg, score,
                                      given, log)
        log(f"adapter ({cfg.kind}, {cfg.sides} side{'s' if cfg.sides == 'both' else ''}): {tsum['epochs_run']} epochs, "
            f"{tsum['steps']} steps on {len(fit)} pairs in {tsum['seconds']:.1f} s; best epoch {tsum['best_epoch']}"
            + (f" (validation nDCG@10 {tsum['validation_best']:.4f})" if tsum["validation_best"] is not None else ""))
        adapter.config.update(source=source.info(), embed_seconds=embed_s)
        tmp = temp_dir(out)
        adapter.save(tmp)
        result: dict = {"train": tsum, "source": source.info(), "texts": len(texts), "embedded_now": new,
                        "output": str(out)}
        if evalset is not None:
            qv = V[[row[t] for t in evalset.queries.values()]]
            cv = V[[row[t] for t in evalset.corpus.values()]]
            m_f = evaluate(None, evalset, query_embeddings=qv, corpus_embeddings=cv)
            m_a = evaluate(None, evalset, query_embeddings=adapter.apply(qv),
                           corpus_embeddings=adapter.apply(cv, "document"))
            nd = lambda m: m["per_query"]["ndcg@10"]  # noqa: E731
            cmp = compare(nd(m_f), nd(m_a), seed=cfg.seed)
            rows = [("frozen", m_f["metrics"]), ("adapted", m_a["metrics"])]
            lines = [f"- adapted vs frozen, nDCG@10: {describe(cmp)}",
                     f"- source: {source.description} ({source.dim}-d), frozen; {len(texts)} distinct texts, "
                     f"{new} embedded by this run, the others read from the store",
                     f"- adapter: {cfg.kind}, {cfg.sides} side{'s' if cfg.sides == 'both' else ''}; {len(fit)} training "
                     f"pairs, {len(val)} held out for validation; {tsum['epochs_run']} epochs, batch {cfg.batch_size}, "
                     f"lr {cfg.lr}, {cfg.num_negatives} hard negatives a pair ({_mining_words(cfg.remine_every)})"
                     f"{', weights averaged over epochs' if cfg.average and cfg.kind != 'lowrank' else ''}, "
                     f"{tsum['seconds']:.1f} s; the adapter of epoch {tsum['best_epoch']} ships",
                     f"- total wall time: {time.perf_counter() - t_start:.0f} s"]
            result.update(frozen=m_f, adapted=m_a, comparison=cmp)
            write_report(tmp, rows, "fastembed-tune adapt: frozen vs adapted", "## Run\n\n" + "\n".join(lines),
                         comparisons={"adapted vs frozen": cmp},
                         intervals={"frozen": {"ndcg@10": mean_ci(nd(m_f), seed=cfg.seed)},
                                    "adapted": {"ndcg@10": mean_ci(nd(m_a), seed=cfg.seed)}},
                         extra={"adapter": {k: v for k, v in adapter.config.items() if k != "onnx"}})
            log(format_table(rows))
            b, a = m_f["metrics"]["ndcg@10"], m_a["metrics"]["ndcg@10"]
            log(f"nDCG@10 on {cmp['n']} test queries: frozen {b:.4f} -> adapted {a:.4f}"
                + (f" ({a / b:.2f}x)" if b > 0 else "") + f"; {describe(cmp)}")
        replace_dir(tmp, out)
        log(f"wrote the adapter to {out}" + (f"; report: {out / 'report.md'}" if evalset is not None else ""))
    result["seconds"] = time.perf_counter() - t_start
    if evalset is not None and gate and not significant_gain(result["comparison"]):
        c = result["comparison"]
        raise NoSignificantGain(f"the adapter is not a significant gain over the frozen vectors on the {c['n']} test "
                                f"queries (nDCG@10 {c['diff']:+.4f}, 95% CI {c['ci_low']:+.4f} to {c['ci_high']:+.4f}, "
                                f"p = {c['p_value']:.4f}); do not ship it. Everything is in {out / 'report.md'} "
                                f"(--allow-no-gain exits 0)")
    return result


def apply_to_file_vectors(adapter_dir: PathLike, vectors: np.ndarray, side: str = "query") -> np.ndarray:
    """What ``embed --adapter DIR`` does to the embedded rows: :meth:`Adapter.apply` of that adapter.

    >>> import tempfile; d = tempfile.mkdtemp(); Adapter.identity("mlp", 2, hidden=4).save(d)
    >>> apply_to_file_vectors(d, np.array([[0.0, 3.0]], np.float32)).tolist()
    [[0.0, 1.0]]
    """
    return Adapter(adapter_dir).apply(vectors, side)


__all__ = ["Adapter", "AdapterConfig", "AdapterNet", "PrecomputedVectors", "Source", "adapt", "apply_params",
           "init_params", "mine", "onnx_graph", "open_source", "train_adapter"]
