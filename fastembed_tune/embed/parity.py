"""Parity of an exported graph with its PyTorch model: the texts, the cosine check, pass or refuse.

Every export is checked against the PyTorch model (``EmbeddingModel.encode``) through the very path
users take (the Rust tokenizer written beside the graph + onnxruntime): a batch of 33 mixing a 1-token
text, typical sentences and a text of >= 512 tokens (truncated to max_seq_length), padded, and the
1-token, a typical and the long text alone (unpadded, batch 1). A user's own parity texts take the
place of the typical sentences (the first 31) and any beyond those form one more case.

The figure that decides is the minimum cosine over every text of every case. NaN/Inf anywhere in a
graph's output makes that figure NaN, and NaN never passes: :func:`passes` is a refusal for it.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fastembed_tune.core.errors import UserError

PARITY_BATCH = 33  # the padded batch: 1-token text, 31 typical texts, the long text
LONG_TEXT_TOKENS = 520
ONE_TOKEN_TEXT = "hello"
TYPICAL_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password?",
    "A tuple is a data object containing two or more components.",
    "Gradient descent updates parameters against the gradient of the loss.",
    "Paris is the capital and most populous city of France.",
    "Which file formats does the importer accept?",
    "TCP guarantees in-order delivery; UDP does not.",
    "She sells sea shells by the sea shore.",
    "A hash table maps keys to values with expected constant-time lookups, at the cost of extra memory.",
    "What is the difference between a process and a thread?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "ok",
    "The meeting was moved to Thursday at 3 pm because the room was double-booked.",
    "Embeddings map texts to vectors so that similar meanings end up close together.",
    "Error 404: the requested resource could not be found on this server.",
    "In functional languages, a list is a sequence of elements of the same type, "
    "built from an empty list and a cons cell that prepends one element.",
    "Compilers translate source code into machine code in several passes.",
    "Why is the sky blue?",
    "The mitochondria is the powerhouse of the cell.",
    "Shipping is free for orders over fifty dollars within the continental United States.",
    "Recursion: a function that calls itself on a smaller instance of the same problem.",
    "déjà vu, naïve café — accents and punctuation!",
    "Version 2.3.1 fixes a memory leak in the tokenizer and speeds up batching by 20%.",
    "A binary search halves the search interval at every step.",
    "Bring an umbrella; rain is expected this afternoon.",
    "SELECT name FROM users WHERE age > 30 ORDER BY name;",
    "The committee will publish its findings after reviewing all of the submitted evidence, "
    "including the testimony of several independent experts and the minutes of earlier meetings.",
    "Cats sleep for most of the day.",
    "Garbage collection reclaims memory occupied by objects that are no longer reachable.",
    "How many legs does a spider have?",
    "An operating system manages hardware resources and provides services to programs.",
]
assert len(TYPICAL_TEXTS) == PARITY_BATCH - 2

Case = Tuple[str, List[int], int]  # (name, indices into the texts, batch size to embed them with)
Embed = Callable[[List[str], int], np.ndarray]  # (texts, batch_size) -> float32 [n, dim], unchecked


class ParityError(UserError):
    """The exported graph does not reproduce the PyTorch model closely enough; nothing was written.

    >>> isinstance(ParityError("fp32 min cosine 0.9 < 0.9999"), UserError)
    True
    """


def parity_texts(tokenizer: Callable, user_texts: Optional[Sequence[str]] = None) -> Tuple[List[str], List[Case]]:
    """The texts to check parity on and the cases (batches) to run them in.

    ``tokenizer`` is the model's Hugging Face tokenizer (it measures the long text). The first 33
    texts are the padded batch (1-token, 31 typical, >= ``LONG_TEXT_TOKENS`` tokens); ``user_texts``
    replace the typical ones first and any beyond 31 are one more case, ``parity_texts``.

    >>> from transformers import AutoTokenizer
    >>> from fastembed_tune.embed.model import default_model_path
    >>> texts, cases = parity_texts(AutoTokenizer.from_pretrained(default_model_path()))
    >>> len(texts), [name for name, _, _ in cases]
    (33, ['batch33_padded', 'batch1_one_token', 'batch1_sentence', 'batch1_long'])
    """
    user = list(user_texts or [])
    if any(not isinstance(t, str) or not t.strip() for t in user):
        raise UserError("parity_texts must be non-empty strings")
    typical = (user + [t for t in TYPICAL_TEXTS if t not in user])[:PARITY_BATCH - 2]
    long_text, i = "", 0
    while len(tokenizer(long_text, truncation=False)["input_ids"]) < LONG_TEXT_TOKENS:
        long_text += TYPICAL_TEXTS[i % len(TYPICAL_TEXTS)] + " "
        i += 1
    texts = [ONE_TOKEN_TEXT] + typical + [long_text.strip()]
    cases = [("batch33_padded", list(range(PARITY_BATCH)), PARITY_BATCH),
             ("batch1_one_token", [0], 1),
             ("batch1_sentence", [1], 1),
             ("batch1_long", [PARITY_BATCH - 1], 1)]
    if len(user) > PARITY_BATCH - 2:
        texts += user[PARITY_BATCH - 2:]
        cases.append(("parity_texts", list(range(PARITY_BATCH, len(texts))), 64))
    return texts, cases


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two ``[n, d]`` matrices (a zero row gives 0, NaN stays NaN).

    >>> cosines(np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[2.0, 0.0], [1.0, 0.0]])).tolist()
    [1.0, 0.0]
    """
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(1)


def check_parity(embed: Embed, texts: List[str], cases: List[Case], ref: np.ndarray) -> Dict:
    """Min cosine of ``embed``'s output to the reference ``ref`` (PyTorch, one row per text), per case.

    Returns ``{"min_cosine", "cases": {name: min cosine}, "worst_text"}``; a NaN/Inf output makes
    ``min_cosine`` NaN, which :func:`passes` refuses.

    >>> ref = np.eye(3, dtype=np.float32); texts = ["a", "b", "c"]
    >>> same = lambda batch, bs: ref[[texts.index(t) for t in batch]]
    >>> check_parity(same, texts, [("all", [0, 1, 2], 3)], ref)["min_cosine"]
    1.0
    """
    per_case, worst, worst_text = {}, 1.0, ""
    for name, idx, bs in cases:
        got = embed([texts[i] for i in idx], bs)
        c = cosines(got, ref[idx])
        c = np.where(np.isfinite(c), c, -np.inf)
        per_case[name] = round(float(c.min()), 6)
        if c.min() < worst:
            worst, worst_text = float(c.min()), texts[idx[int(c.argmin())]]
    if not np.isfinite(worst):  # NaN/Inf in the graph's output: a refusal, never a pass
        worst = float("nan")
    return {"min_cosine": round(worst, 6), "cases": per_case, "worst_text": worst_text[:60]}


def batch_invariance(embed: Embed, texts: List[str]) -> float:
    """Min cosine, over ``texts``, of each text embedded in one batch with all the others vs alone
    (batch 1): 1.0 for a graph whose answer for a text does not depend on its batch neighbours. NaN
    when any output is NaN/Inf.

    >>> table = {"a": [1.0, 0.0], "b": [0.0, 1.0]}
    >>> batch_invariance(lambda batch, bs: np.array([table[t] for t in batch]), ["a", "b"])
    1.0
    """
    together = embed(list(texts), len(texts))
    alone = np.concatenate([embed([t], 1) for t in texts])
    c = cosines(together, alone)
    return round(float(c.min()), 7) if np.isfinite(c).all() else float("nan")


def passes(parity: Optional[Dict], threshold: float) -> bool:
    """True only for a finite min cosine >= threshold (NaN compares false: refused).

    >>> passes({"min_cosine": 0.99995}, 0.9999), passes({"min_cosine": float("nan")}, -1.0), passes(None, 0.0)
    (True, False, False)
    """
    return parity is not None and bool(parity["min_cosine"] >= threshold)
