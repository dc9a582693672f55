"""Which artifact ``run`` ships, decided on the validation split (never the test set): the smallest
and fastest that keeps :data:`SHIP_RATIO` of the fine-tuned model's validation nDCG@10; and whether
an OpenVINO int8 IR stays beside it (the same bar, or its files are removed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fastembed_tune.export.onnx import remove_openvino_int8
from fastembed_tune.training.validation import Validation

__all__ = ["SHIP_RATIO", "OV_INT8_LABEL", "ShipChoice", "IrCheck", "choose", "check_openvino_int8"]

OV_INT8_LABEL = "OpenVINO int8"
SHIP_RATIO = 0.95  # an export ships when it keeps this share of the fine-tuned model's validation nDCG@10


@dataclass
class ShipChoice:
    """The artifact to ship (its label, ``"fine-tuned"`` for the fine-tuned model itself, and path),
    why, the validation nDCG@10 of every candidate tried in order (None: no validation split), the
    fine-tuned model's, the candidates in the order they were considered, and the report's line."""
    artifact: str
    path: str
    why: str
    line: str
    scores: Optional[dict] = None
    teacher: Optional[float] = None
    order: list = field(default_factory=list)

    @property
    def fell_back(self) -> bool:
        """No export kept the bar: the fine-tuned model itself ships."""
        return self.scores is not None and self.artifact == "fine-tuned"

    def record(self) -> dict:
        """metrics.json's ``ship``.

        >>> ShipChoice("x", "/p", "no validation split", "").record()
        {'artifact': 'x', 'path': '/p', 'why': 'no validation split'}
        """
        if self.scores is None:
            return {"artifact": self.artifact, "path": self.path, "why": self.why}
        if self.fell_back:
            return {"artifact": self.artifact, "path": self.path, "validation": self.scores,
                    "validation_fine_tuned": self.teacher, "why": self.why}
        return {"artifact": self.artifact, "path": self.path, "why": self.why, "validation": self.scores,
                "validation_fine_tuned": self.teacher}


@dataclass
class IrCheck:
    """OpenVINO int8 IRs checked on validation: ``{label: {"validation": score, "kept": bool}}`` and
    the report's lines."""
    kept: dict = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


def choose(artifacts: dict, tuned: Any, tuned_dir: str, validation: Optional[Validation]) -> ShipChoice:
    """The artifact to ship among ``artifacts`` (``{label: (embedder, path)}``): tried in order student
    int8, student fp32, fine-tuned int8, fine-tuned fp32, the first that keeps >= SHIP_RATIO of the
    fine-tuned model's (``tuned``) validation nDCG@10; else the fine-tuned model itself (``tuned_dir``).
    Without a validation split, a fine-tuned export (never a student).

    >>> class Same:
    ...     def score(self, model): return 0.5
    >>> choose({"fine-tuned, ONNX int8": (None, "/o/int8")}, None, "/t", Same()).artifact
    'fine-tuned, ONNX int8'
    """
    order = sorted(artifacts, key=lambda label: (not label.startswith("student"), "int8" not in label))
    if validation is None:
        pick = next((a for a in order if a.startswith("fine-tuned")), order[-1])
        return ShipChoice(pick, str(artifacts[pick][1]), "no validation split",
                          f"- **ship: {pick}** (`{artifacts[pick][1]}`): no validation split to compare on, so not a "
                          f"student", order=order)
    teacher = validation.score(tuned)
    scores = {}
    for label in order:
        scores[label] = validation.score(artifacts[label][0])
        if teacher <= 0 or scores[label] >= SHIP_RATIO * teacher:
            why = f"validation nDCG@10 {scores[label]:.4f} = {scores[label] / max(teacher, 1e-12):.2f}x the " \
                  f"fine-tuned model's {teacher:.4f} (>= {SHIP_RATIO}x)"
            return ShipChoice(label, str(artifacts[label][1]), why,
                              f"- **ship: {label}** (`{artifacts[label][1]}`): {why}; smaller or faster ones kept less",
                              scores, teacher, order)
    line = (f"- **ship: the fine-tuned model** (`{tuned_dir}`): no export kept {SHIP_RATIO}x its validation "
            f"nDCG@10 {teacher:.4f} (" + ", ".join(f"{k} {x:.4f}" for k, x in scores.items()) + ")")
    return ShipChoice("fine-tuned", tuned_dir, "no export kept the gain on validation", line, scores, teacher, order)


def check_openvino_int8(irs: dict, tuned: Any, validation: Optional[Validation],
                        teacher: Optional[float] = None) -> IrCheck:
    """Keep an OpenVINO int8 IR (``{label: (embedder, path)}``) only where it keeps >= SHIP_RATIO of
    the fine-tuned model's validation nDCG@10 (``teacher``, scored here when None; the IR passed
    cosine gates at export, this is the retrieval check): otherwise its files are removed, so that
    ``serve --precision auto`` cannot pick it.

    >>> check_openvino_int8({}, None, None).lines
    []
    """
    check = IrCheck()
    if not irs or validation is None:
        return check
    teacher = validation.score(tuned) if teacher is None else teacher
    for label, (embedder, path) in irs.items():
        score = validation.score(embedder)
        keep = teacher <= 0 or score >= SHIP_RATIO * teacher
        check.kept[label] = {"validation": score, "kept": keep}
        if keep:
            check.lines.append(f"- {label} (`{path}`) kept: validation nDCG@10 {score:.4f} = "
                               f"{score / max(teacher, 1e-12):.2f}x the fine-tuned model's; `serve --precision auto` "
                               f"may run it where it measures fastest")
        else:
            remove_openvino_int8(Path(path).parent.parent,
                                 f"validation nDCG@10 {score:.4f} < {SHIP_RATIO}x the fine-tuned model's {teacher:.4f}")
            check.lines.append(f"- {label} removed: validation nDCG@10 {score:.4f} < {SHIP_RATIO}x the fine-tuned "
                               f"model's {teacher:.4f}")
    return check
