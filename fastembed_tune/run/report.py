"""What ``run`` writes into report.md besides the table: the verdict it opens with (what ships,
its gain over the base, what was not shipped and why) and the "Run" and "Data" sections.
"""
from __future__ import annotations

import json
import time
from typing import Optional

from fastembed_tune.evaluation.gate import significant_gain, verdict
from fastembed_tune.run.config import RunConfig
from fastembed_tune.run.guard import Forgetting
from fastembed_tune.run.ship import SHIP_RATIO, IrCheck, ShipChoice

__all__ = ["verdict_md", "shipped_row", "run_md", "validation_lines"]


def shipped_row(ship: Optional[ShipChoice], rows: list[str]) -> str:
    """The report row that stands for what ships: its own, or the fine-tuned model's for the fine-tuned
    model itself and its fp32 graph (the same model, parity-gated).

    >>> shipped_row(None, ["base", "fine-tuned"]), shipped_row(ShipChoice("fine-tuned, ONNX fp32", "", "", ""), [])
    ('fine-tuned', 'fine-tuned')
    """
    return ship.artifact if ship is not None and ship.artifact in rows else "fine-tuned"


def verdict_md(c: RunConfig, comparisons: dict, ndcg: dict, ship: Optional[ShipChoice], ir: Optional[IrCheck],
               forgetting: Optional[Forgetting], tuned_dir: str) -> str:
    """report.md's opening section: what ships and where (or, past the gate, that nothing should),
    its test nDCG@10 against the base with the fine-tuned model's 95% interval (``comparisons``;
    ``ndcg``: each row's test nDCG@10), and what was not shipped and why.

    >>> cmp = {"fine-tuned vs base": {"diff": 0.1, "ci_low": 0.05, "ci_high": 0.15, "p_value": 0.001, "n": 50}}
    >>> print(verdict_md(RunConfig("o"), cmp, {"base": 0.3, "fine-tuned": 0.4}, None, None, None,
    ...                  "o/train/model"))  # doctest: +NORMALIZE_WHITESPACE
    ## Verdict
    <BLANKLINE>
    **Ship the fine-tuned model** (`o/train/model`): no export or student was made.
    <BLANKLINE>
    - nDCG@10 on the 50 test queries: base 0.3000 -> the fine-tuned model 0.4000 (+0.1000); the fine-tuned model
      over the base +0.1000 (95% CI +0.0500 to +0.1500, p = 0.0010): a significant gain
    """
    gain = comparisons["fine-tuned vs base"]
    ship = ship or ShipChoice("fine-tuned", tuned_dir, "no export or student was made", "")
    row = shipped_row(ship, list(ndcg))
    name = "the fine-tuned model" if ship.artifact == "fine-tuned" else ship.artifact
    why = "no validation split to compare on, so not a student" if ship.scores is None and ship.order else ship.why
    ci = f"95% CI {gain['ci_low']:+.4f} to {gain['ci_high']:+.4f}, p = {gain['p_value']:.4f}"
    if significant_gain(gain):
        lines = ["## Verdict", "", f"**Ship {name}** (`{ship.path}`): {why}.", ""]
    else:
        exits = "`run` exits 3 (--allow-no-gain: 0)" if c.gate else "--allow-no-gain: `run` exits 0 all the same"
        lines = ["## Verdict", "", f"**Do not ship: the fine-tuned model is {verdict(gain)} over the base** (nDCG@10 "
                 f"{gain['diff']:+.4f} on the {gain['n']} test queries, {ci}); {exits}.", "",
                 f"- the choice on validation, were it to ship: **{name}** (`{ship.path}`): {why}"]
    shown = name if row == ship.artifact or ship.artifact == "fine-tuned" else f"{name} (its row: {row})"
    line = (f"- nDCG@10 on the {gain['n']} test queries: base {ndcg['base']:.4f} -> {shown} {ndcg[row]:.4f} "
            f"({ndcg[row] - ndcg['base']:+.4f}); the fine-tuned model over the base {gain['diff']:+.4f} ({ci}): "
            f"{verdict(gain)}")
    if row != "fine-tuned":
        vs = comparisons[f"{row} vs fine-tuned"]
        line += (f"; {row} vs the fine-tuned model {vs['diff']:+.4f} (95% CI {vs['ci_low']:+.4f} to "
                 f"{vs['ci_high']:+.4f})")
    lines.append(line)
    reasons = _not_shipped(ship, ir, forgetting)
    if reasons:
        lines += ["- not shipped:", *(f"  - {r}" for r in reasons)]
    kept = [label for label, k in (ir.kept if ir else {}).items() if k["kept"]]
    if kept:
        lines.append(f"- kept beside it: {'; '.join(kept)} (`serve --precision auto` may run it where it measures "
                     f"fastest)")
    return "\n".join(lines)


def _not_shipped(ship: ShipChoice, ir: Optional[IrCheck], forgetting: Optional[Forgetting]) -> list[str]:
    """Why each candidate other than the one shipped was not, one line each: it kept less on
    validation, a smaller one already kept enough, there was no validation split, its IR was removed,
    the raw fine-tuned model forgot too much of the guard.

    >>> _not_shipped(ShipChoice("b", "/b", "", "", {"a": 0.4, "b": 0.5}, 0.5, ["a", "b", "c"]), None, None)
    ["a: validation nDCG@10 0.4000 = 0.80x the fine-tuned model's (< 0.95x)", 'c: larger or slower than the one shipped']
    """
    out = []
    tried = ship.scores or {}
    for label, score in tried.items():
        if label != ship.artifact:
            out.append(f"{label}: validation nDCG@10 {score:.4f} = {score / max(ship.teacher or 0.0, 1e-12):.2f}x "
                       f"the fine-tuned model's (< {SHIP_RATIO}x)")
    for label in ship.order:
        if label not in tried and label != ship.artifact:
            unseen = ship.scores is None and label.startswith("student")  # without validation a student never ships
            out.append(f"{label}: " + ("no validation split to compare it on" if unseen else
                                       "larger or slower than the one shipped"))
    for label, k in (ir.kept if ir else {}).items():
        if not k["kept"]:
            out.append(f"{label}: removed, validation nDCG@10 {k['validation']:.4f} < {SHIP_RATIO}x the "
                       f"fine-tuned model's")
    info = forgetting.interpolation if forgetting is not None else {}
    if forgetting is not None and forgetting.merged is not None:
        out.append(f"the raw fine-tuned model (alpha 1): it forgets {info['forgetting_raw']:.1%} of the base's guard "
                   f"nDCG@10 (--max-forgetting {info['max_forgetting']:.0%}), so its weights were interpolated with "
                   f"the base's, alpha {info['alpha']:.1f}")
    return out


def run_md(c: RunConfig, train_pairs: list, evalset, mining: dict, tsum: dict, lines: list[str], drep: dict,
           t_start: float) -> str:
    """The "Run" and "Data" sections of report.md."""
    return "\n".join([
        "## Run", "", f"- base model: `{c.model or 'built-in all-MiniLM-L6-v2'}`",
        f"- training pairs: {len(train_pairs)} (`{c.train_path}`); test queries: {len(evalset.qrels)}; "
        f"corpus: {len(evalset.corpus)} documents",
        f"- hard negatives: {c.num_negatives} per pair, max_ratio {c.max_ratio}, skip_top {c.skip_top}; "
        f"{mining['candidates_dropped_as_false_negatives']} likely false negatives dropped",
        f"- training: {tsum['steps']} steps, batch {c.batch_size}, lr {c.lr}, max_seq_length "
        f"{c.train_max_seq_length}, {tsum['pairs_per_s']} pairs/s, {tsum['seconds']:.0f} s, "
        f"{'bf16 autocast' if tsum['bf16'] else 'fp32'}; evaluation max_seq_length {c.max_seq_length} "
        f"({'bf16 autocast' if tsum['bf16'] else 'fp32'} for the PyTorch models; ONNX graphs as exported)",
        *validation_lines(tsum), *lines, f"- total wall time: {time.perf_counter() - t_start:.0f} s", "",
        "## Data", "", "```", json.dumps(drep, indent=2), "```"])


def validation_lines(tsum: dict) -> list[str]:
    """What the validation split decided (best step, early stop), for the report.

    >>> validation_lines({})
    ['- validation: none (the whole training set was trained on; the last step ships)']
    """
    v = tsum.get("validation")
    if not v:
        return ["- validation: none (the whole training set was trained on; the last step ships)"]
    curve = ", ".join(f"{p['step']}: {p['ndcg@10']:.4f}" for p in v["curve"])
    return [f"- validation: {v['queries']} training queries held out ({v['docs']} documents), nDCG@10 by step "
            f"{curve}; the model of step {v['best_step']} ships"
            + (" (stopped early)" if v["stopped_early"] else "")]
