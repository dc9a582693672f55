"""The adapter: a small network that moves a frozen model's vectors, and its saved form.

- **Kinds** (:class:`AdapterNet`): ``linear`` (``x (I + D) + b``, identity-initialised), ``lowrank``
  (``x + x A B + b``, B zero-initialised), ``mlp`` (residual ``x + relu(x W1 + b1) W2 + b2``, W2
  zero-initialised). Inputs are L2-normalised first, outputs after. ``sides="both"`` learns a second
  adapter of the same kind for the documents.
- The same maths three ways: torch for training (:class:`AdapterNet`), numpy for applying
  (:func:`apply_params`), ONNX for shipping (:func:`onnx_graph`).
- **Output** (:meth:`Adapter.save`): ``adapter.safetensors`` + ``adapter_config.json`` and a tiny ONNX
  graph per side (``adapter.onnx``, ``adapter_document.onnx``); :class:`Adapter` loads it and
  :meth:`Adapter.apply` maps vectors with numpy alone (what ``embed --adapter`` and a server call).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from fastembed_tune.core.atomic import PathLike
from fastembed_tune.core.errors import UserError

KINDS = ("linear", "lowrank", "mlp")
SIDES = ("query", "both")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
ONNX_FILES = {"query": "adapter.onnx", "document": "adapter_document.onnx"}
EPS = 1e-12
PARAMS = {"linear": ("delta", "bias"), "lowrank": ("a", "b", "bias"), "mlp": ("w1", "b1", "w2", "bias")}


def unit(x: np.ndarray) -> np.ndarray:
    """``x`` divided by its rows' L2 norms (never by less than ``EPS``), as float32: every row is
    divided, so the adapter's numpy, torch and ONNX forms normalise alike.

    >>> unit(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
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
    x = unit(np.asarray(x, np.float32))
    if kind == "linear":
        y = x + x @ p["delta"]
    elif kind == "lowrank":
        y = x + (x @ p["a"]) @ p["b"]
    else:
        y = x + np.maximum(x @ p["w1"] + p["b1"], 0) @ p["w2"]
    return unit(y + p["bias"])


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
            """The side's parameters as float32 numpy copies (what an :class:`Adapter` holds)."""
            return {k: v.detach().cpu().numpy().astype(np.float32).copy() for k, v in self.p.items()}

    return AdapterNet


def AdapterNet(kind: str, params: dict[str, np.ndarray]) -> Any:
    """A torch module computing one adapter side (identity at :func:`init_params`).

    >>> import torch
    >>> net = AdapterNet("mlp", init_params("mlp", 4, hidden=8)); x = torch.randn(3, 4)
    >>> bool(torch.allclose(net(x), torch.nn.functional.normalize(x, dim=1)))
    True
    """
    return _torch_net()(kind, params)


def onnx_graph(kind: str, p: dict[str, np.ndarray], dim: int, opset: int = 17) -> Any:
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
            return unit(x)
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


__all__ = ["Adapter", "AdapterNet", "apply_params", "init_params", "onnx_graph", "unit"]
