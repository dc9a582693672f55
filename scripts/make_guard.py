#!/usr/bin/env python3
"""Build fastembed_tune's forgetting-guard set: general-English word -> definition retrieval from WordNet.

The guard measures what fine-tuning on one domain costs elsewhere. Its source is not the built-in
sample's (FOLDOC, computing): Debian's ``wordnet-base`` package (WordNet 3.0, Princeton University;
the WordNet 3.0 license, a BSD-style permissive licence, copied to ``guard_data/LICENSE``). Get it
without root::

    mkdir -p /tmp/wn && cd /tmp/wn && apt-get download wordnet-base && dpkg -x wordnet-base_*_all.deb x
    python3 scripts/make_guard.py --wordnet /tmp/wn/x/usr/share/wordnet --out fastembed_tune/guard_data --seed 0

Pipeline (deterministic for a given input and ``--seed``): every noun synset of ``data.noun`` whose
first lemma is one plain word (letters only, 3-20 characters); its definition (the gloss without
the quoted usage examples) of 30-300 characters that does not contain the lemma is the document,
as it is (no ``[TERM]`` masking: the guard must not share the sample's format); one synset per
lemma (the first); shuffled with ``random.Random(seed)``; the first
``N_QUERIES`` become (query = lemma, positive = masked gloss) test pairs, the next ``N_DISTRACTORS``
glosses are distractors. Outputs: ``test.jsonl`` ({"query", "positive"}) and ``corpus.jsonl``
({"id", "text"}: every positive plus the distractors, shuffled). Standard library only.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re

N_QUERIES = 300
N_DISTRACTORS = 1200


def synsets(data_noun: str):
    """(lemma, gloss) of each noun synset in WordNet's ``data.noun``."""
    with open(data_noun, encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):  # the licence header
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            if len(fields) < 5:
                continue
            yield fields[4], " ".join(gloss.split())


def definition(gloss: str) -> str:
    """The gloss without its quoted usage examples ('a cover; "he opened his umbrella"' -> 'a cover')."""
    return gloss.split('; "')[0].split(' "')[0].strip().rstrip(";").strip()


def candidates(wordnet_dir: str) -> list[tuple[str, str]]:
    """(lemma, definition) of every noun synset the guard may use, in ``data.noun`` order: the first
    synset of each one-word lemma whose definition is 30-300 characters, 5+ words, without the lemma."""
    seen, items = set(), []
    for lemma, gloss in synsets(os.path.join(wordnet_dir, "data.noun")):
        if not re.fullmatch(r"[a-z]{3,20}", lemma) or lemma in seen:
            continue
        seen.add(lemma)
        doc = definition(gloss)
        if 30 <= len(doc) <= 300 and len(doc.split()) >= 5 and not re.search(rf"\b{lemma}", doc, re.IGNORECASE):
            items.append((lemma, doc))
    return items


def build(wordnet_dir: str, seed: int) -> tuple[list[dict], list[dict]]:
    items = candidates(wordnet_dir)
    rng = random.Random(seed)
    rng.shuffle(items)
    docs = list(dict.fromkeys(d for _, d in items))
    pairs = [{"query": q, "positive": d} for q, d in items[:N_QUERIES]]
    positives = {p["positive"] for p in pairs}
    distractors = [d for d in docs if d not in positives][:N_DISTRACTORS]
    corpus = [p["positive"] for p in pairs] + distractors
    rng.shuffle(corpus)
    return pairs, [{"id": f"g{i}", "text": t} for i, t in enumerate(corpus)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wordnet", required=True, help="folder holding WordNet's data.noun")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    pairs, corpus = build(a.wordnet, a.seed)
    os.makedirs(a.out, exist_ok=True)
    for name, rows in (("test.jsonl", pairs), ("corpus.jsonl", corpus)):
        with open(os.path.join(a.out, name), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    print(f"{len(pairs)} queries, {len(corpus)} documents -> {a.out}")


if __name__ == "__main__":
    main()
