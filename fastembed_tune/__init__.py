"""fastembed-tune: fine-tune, distil and ship text-embedding models for one domain.

The public API, loaded lazily (``import fastembed_tune`` imports neither torch nor onnxruntime;
the first use of a name imports the module that defines it):

>>> import fastembed_tune as ft
>>> ft.topk_cosine.__module__
'fastembed_tune.kernels'
>>> sorted(ft.__all__)[:3]
['Adapter', 'DistillConfig', 'EmbeddingModel']
"""
from __future__ import annotations

from fastembed_tune.core.lazy import lazy_exports

_WHERE = {
    "topk_cosine": "fastembed_tune.kernels",
    "topk_cosine_lowp": "fastembed_tune.kernels",
    "contrastive": "fastembed_tune.kernels",
    "UserError": "fastembed_tune.core.errors",
    "read_pairs": "fastembed_tune.data.readers",
    "evaluate": "fastembed_tune.evaluation.metrics",
    "EmbeddingModel": "fastembed_tune.embed.model",
    "OnnxEmbedder": "fastembed_tune.embed.onnx_embedder",
    "load_embedder": "fastembed_tune.embed.loader",
    "mine_hard_negatives": "fastembed_tune.mining.exact",
    "FusedMNRLoss": "fastembed_tune.training.losses",
    "TrainConfig": "fastembed_tune.training.train",
    "train": "fastembed_tune.training.train",
    "DistillConfig": "fastembed_tune.training.distill",
    "distill": "fastembed_tune.training.distill",
    "export_onnx": "fastembed_tune.export.onnx",
    "Adapter": "fastembed_tune.adapt.adapter",
    "run_pipeline": "fastembed_tune.run.pipeline",
}
__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_exports("fastembed_tune", _WHERE, globals())
