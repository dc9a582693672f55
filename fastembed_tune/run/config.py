"""The settings of one ``run`` (:class:`RunConfig`) and its clock by stage (:class:`StageClock`)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

__all__ = ["RunConfig", "StageClock"]


@dataclass
class RunConfig:
    """The settings of one ``run`` (see :func:`~fastembed_tune.run.pipeline.run_pipeline`; the CLI flags
    of ``fastembed-tune run``).

    >>> RunConfig("runs/x").num_negatives, RunConfig("runs/x").max_ratio
    (1, 0.95)
    """
    output_dir: str
    model: Optional[str] = None
    train_path: Optional[str] = None
    test_path: Optional[str] = None
    corpus_path: Optional[str] = None
    epochs: int = 1
    max_steps: Optional[int] = None
    batch_size: int = 32
    lr: float = 2e-4
    num_negatives: int = 1
    max_ratio: Optional[float] = 0.95
    skip_top: int = 0
    max_seq_length: Optional[int] = 128
    train_max_seq_length: Optional[int] = 64
    symmetric: bool = False
    seed: int = 42
    distill: bool = True
    distill_layers: Optional[str] = None
    distill_epochs: int = 1
    distill_lr: float = 1e-3
    distill_kl_weight: float = 0.0
    export: bool = True
    openvino_int8: Optional[bool] = None  # also the NNCF int8 OpenVINO IR; None: where it pays (openvino_int8_pays)
    bf16: Optional[bool] = None
    show_progress_bar: bool = True
    gate: bool = True  # raise NoSignificantGain (exit 3) unless fine-tuned beats base significantly
    validation_share: float = 0.1
    eval_every: Optional[int] = None
    patience: Optional[int] = 2
    guard: bool = True  # report base vs fine-tuned on the general-domain guard set
    max_forgetting: Optional[float] = 0.03  # relative guard loss allowed; else interpolate with the base (None: off)


class StageClock:
    """Wall seconds by stage, in the order the stages first ran (a stage timed twice adds up).

    >>> clock = StageClock()
    >>> with clock("mining"):
    ...     pass
    >>> list(clock.seconds), clock.line().startswith("- time by stage: mining 0 s")
    (['mining'], True)
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0

    def line(self) -> str:
        """The report's line: every stage and its seconds."""
        return "- time by stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items())
