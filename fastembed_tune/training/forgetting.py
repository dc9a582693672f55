"""Keep what fine-tuning costs elsewhere within a bound: weight-space interpolation (WiSE-FT).

Fine-tuning on one domain can cost retrieval quality on others. Interpolating every weight between
the base and the fine-tuned model, ``(1 - alpha) * base + alpha * fine-tuned`` (Wortsman et al.,
"Robust fine-tuning of zero-shot models", 2022), keeps most of the in-domain gain at a fraction of
the loss elsewhere. :func:`choose_alpha` picks the ratio: the forgetting measured on a general-domain
guard set must stay within ``max_forgetting`` (relative), and among the ratios that keep it, the one
with the best score on the validation split (held-out *training* queries, never the test set) wins.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence, Union

import torch

from fastembed_tune.core.errors import UserError

ALPHAS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)  # tried in this order, largest first


def interpolate(base: torch.nn.Module, tuned: torch.nn.Module, alpha: float) -> torch.nn.Module:
    """A copy of ``tuned`` whose floating-point weights are ``(1 - alpha) * base + alpha * tuned``
    (integer buffers such as position ids are the tuned model's). The models must share the
    architecture: same weight names and shapes.

    >>> a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    >>> _ = a.weight.data.fill_(0.0), b.weight.data.fill_(1.0)
    >>> interpolate(a, b, 0.25).weight.tolist()
    [[0.25, 0.25]]
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    sb, st = base.state_dict(), tuned.state_dict()
    if sb.keys() != st.keys() or any(sb[k].shape != st[k].shape for k in st):
        differ = sorted((sb.keys() ^ st.keys()) | {k for k in sb.keys() & st.keys() if sb[k].shape != st[k].shape})
        raise UserError(f"cannot interpolate the base and the fine-tuned model: their weights differ "
                        f"({', '.join(differ[:3])}{', ...' if len(differ) > 3 else ''}); --max-forgetting needs "
                        f"the fine-tuned model to share the base model's architecture")
    merged = copy.deepcopy(tuned)
    with torch.no_grad():
        state = {k: (torch.lerp(sb[k].to(v.dtype), v, alpha) if v.is_floating_point() else v.clone())
                 for k, v in st.items()}
    merged.load_state_dict(state)
    return merged


def relative_forgetting(before: float, after: float) -> float:
    """How much of the guard's score was lost, relative (0.1 = 10% lower; negative: it improved).

    >>> round(relative_forgetting(0.40, 0.36), 6), relative_forgetting(0.0, 0.1)
    (0.1, 0.0)
    """
    return (before - after) / before if before > 0 else 0.0


def choose_alpha(base: Union[torch.nn.Module, Callable[[], torch.nn.Module]], tuned: torch.nn.Module, guard_score: Callable[[torch.nn.Module], float],
                 validation_score: Callable[[torch.nn.Module], float], guard_before: float,
                 guard_tuned: float, max_forgetting: float, alphas: Sequence[float] = ALPHAS,
                 after_first: int = 1) -> dict:
    """The interpolation ratio that keeps the guard's forgetting within ``max_forgetting`` with the
    best validation score.

    ``guard_before`` / ``guard_tuned`` are the guard scores of the base and the fine-tuned model
    (alpha 1); ``base`` may be a function that loads the base model (called only when needed). When the fine-tuned model already forgets no more than allowed, alpha is 1 and
    nothing else is evaluated. Otherwise ratios are tried from the largest down; each costs one
    guard evaluation, and the feasible ones a validation evaluation. The scan stops ``after_first``
    ratios after the first feasible one (forgetting shrinks as alpha does; in-domain quality mostly
    too), and the feasible ratio with the best validation score wins, the larger on a tie. When no
    ratio tried keeps the bound, the one that forgets least is returned with ``met=False``.

    Returns ``{"alpha", "met", "guard", "forgetting", "validation", "tried": [{alpha, guard,
    forgetting, validation}], "model"}`` (``model``: the interpolated module, ``tuned`` for alpha 1).

    >>> a, b = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    >>> _ = a.weight.data.fill_(0.0), b.weight.data.fill_(1.0)
    >>> score = lambda m: 1.0 - float(m.weight)  # the guard loses as the weight leaves the base
    >>> r = choose_alpha(a, b, score, lambda m: float(m.weight), 1.0, 0.0, max_forgetting=0.65)
    >>> r["alpha"], [t["alpha"] for t in r["tried"]]
    (0.6, [1.0, 0.9, 0.8, 0.7, 0.6, 0.5])
    """
    if not 0.0 <= max_forgetting:
        raise ValueError(f"max_forgetting must be >= 0, got {max_forgetting!r}")
    tried = [{"alpha": 1.0, "guard": guard_tuned, "forgetting": relative_forgetting(guard_before, guard_tuned),
              "validation": None}]
    if tried[0]["forgetting"] <= max_forgetting:
        return {**tried[0], "met": True, "tried": tried, "model": tuned}
    if not isinstance(base, torch.nn.Module):
        base = base()
    models = {}
    left = None  # ratios still to try once a feasible one is found
    for alpha in alphas:
        if left is not None:
            if left == 0:
                break
            left -= 1
        model = interpolate(base, tuned, alpha)
        g = float(guard_score(model))
        point = {"alpha": alpha, "guard": g, "forgetting": relative_forgetting(guard_before, g), "validation": None}
        if point["forgetting"] <= max_forgetting:
            point["validation"] = float(validation_score(model))
            models[alpha] = model
            if left is None:
                left = after_first
        tried.append(point)
    feasible = [t for t in tried if t["validation"] is not None]
    if feasible:
        best = max(feasible, key=lambda t: (t["validation"], t["alpha"]))
        return {**best, "met": True, "tried": tried, "model": models[best["alpha"]]}
    least = min(tried[1:] or tried, key=lambda t: (t["forgetting"], -t["alpha"]))
    model = tuned if least["alpha"] == 1.0 else interpolate(base, tuned, least["alpha"])
    return {**least, "met": False, "tried": tried, "model": model}
