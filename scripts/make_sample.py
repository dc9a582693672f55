#!/usr/bin/env python3
"""Build fastembed_tune's built-in sample retrieval data set from FOLDOC.

Source: Debian's ``dict-foldoc`` package (FOLDOC, the Free On-line Dictionary
of Computing, GFDL).  Get it without root::

    mkdir -p /tmp/foldoc && cd /tmp/foldoc
    apt-get update && apt-get download dict-foldoc
    dpkg -x dict-foldoc_*_all.deb x
    python3 scripts/make_sample.py \\
        --foldoc /tmp/foldoc/x/usr/share/dictd/foldoc.dict.dz \\
        --out fastembed_tune/sample_data --seed 0

The package ships a dictd data file ``foldoc.dict.dz`` (gzip compatible) and
``foldoc.index`` (``headword<TAB>b64offset<TAB>b64length`` per line).  When the
index sits next to the data file it is used to locate entries; otherwise the
data file is split on its own layout (headword at column 0, indented body).

Pipeline (deterministic for a given input file and ``--seed``):

1. Parse entries: headword -> raw body.  Aliases pointing to the same body are
   collapsed to the entry's own headword (the first line of the body).
2. Clean the body: drop ``<domain>``/``<email>`` tags, leading ``/pronunciation/``,
   ``(YYYY-MM-DD)`` dates, ``[{Jargon File}]``-style source notes, unwrap
   ``{link text (url)}`` -> ``link text`` and ``__emph__`` -> ``emph``, collapse
   whitespace.
3. Filter: cleaned body >= 60 chars, not a bare redirect ("See ...",
   "Compare ...", "Synonym for ..."), jargon-looking headword (1-3 words, <= 30
   chars, starts with an alphanumeric, contains a letter, not a date/number).
4. Build the positive: truncate to <= 600 chars at a sentence boundary (else a
   word boundary) and replace every case-insensitive whole-word occurrence of
   the headword (plus plural -s/-es) with ``[TERM]``.  Drop if the masked text
   is < 60 chars or has fewer than 8 words.
5. Deduplicate headwords (case-insensitively) and positives.
6. Shuffle with ``random.Random(seed)``; first N_PAIRS entries become
   (query, positive) pairs, split by query into train/test; the next
   N_DISTRACTORS entries contribute their (identically processed) definitions
   as corpus distractors.  The corpus holds every positive plus the distractors,
   shuffled, with ids ``d0``, ``d1``, ...

Outputs in ``--out``: ``train.jsonl`` / ``test.jsonl`` (``{"query", "positive"}``)
and ``corpus.jsonl`` (``{"id", "text"}``).  Standard library only.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import sys

N_TRAIN = 2400
N_TEST = 600
N_DISTRACTORS = 2000
MIN_CHARS = 60
MIN_WORDS = 8
MAX_CHARS = 600
MASK = "[TERM]"

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64_decode(s: str) -> int:
    """Decode dictd's base64 number encoding (most significant digit first)."""
    n = 0
    for ch in s:
        n = n * 64 + _B64.index(ch)
    return n


def read_dict(path: str) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        return f.read()


def parse_with_index(data: bytes, index_path: str) -> list[tuple[str, str]]:
    """Return (headword, body) per distinct entry, in file order."""
    spans = set()
    with open(index_path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                continue
            spans.add((b64_decode(parts[1]), b64_decode(parts[2])))
    entries = []
    for off, length in sorted(spans):
        text = data[off : off + length].decode("utf-8", errors="replace")
        head, _, body = text.partition("\n")
        head = head.strip()
        body = strip_aliases(body)
        if head.startswith("00-database") or head.startswith("00database"):
            continue
        entries.append((head, body))
    return entries


def strip_aliases(body: str) -> str:
    """Drop alias headword lines (unindented, before the first blank line)."""
    lines = body.split("\n")
    i = 0
    while i < len(lines) and lines[i].strip() and not lines[i][0].isspace():
        i += 1
    return "\n".join(lines[i:])


def parse_plain(data: bytes) -> list[tuple[str, str]]:
    """Fallback: headword lines start at column 0, bodies are indented."""
    entries, head, body = [], None, []
    for line in data.decode("utf-8", errors="replace").splitlines():
        if line and not line[0].isspace() and head is not None and not any(body):
            continue  # alias line directly under the headword
        if line and not line[0].isspace():
            if head is not None:
                entries.append((head, "\n".join(body)))
            head, body = line.strip(), []
        elif head is not None:
            body.append(line)
    if head is not None:
        entries.append((head, "\n".join(body)))
    return [(h, b) for h, b in entries if not h.startswith("00-database")]


_RE_TAG = re.compile(r"<[^<>\n]{1,80}>")
_RE_BADTAG = re.compile(r"^<[a-z][a-z, -]*?(?:[<}>]|\s(?=[A-Z(\"]))\s*")
_RE_DATE = re.compile(r"\(\d{4}-\d{2}-\d{2}\)")
_RE_SOURCE = re.compile(r"\[\{?[^\[\]]{1,80}?\}?\]\s*$")
_RE_PRON = re.compile(r"^\s*/[^/\n]{1,60}/(?:\s*(?:,|or)?\s*/[^/\n]{1,60}/)*\s*,?\s*")
_RE_LINK_URL = re.compile(r"\{([^{}()]*?)\s*\([^(){}]*\)\}")
_RE_LINK = re.compile(r"\{([^{}]*)\}")
_RE_EMPH = re.compile(r"__([^_]+)__")
_RE_WS = re.compile(r"\s+")
_RE_REDIRECT = re.compile(
    r"^(see|see also|compare|synonym for|same as|an? (?:misspelling|abbreviation|"
    r"variant spelling|former name) (?:of|for))\b",
    re.I,
)


def clean(body: str) -> str:
    text = _RE_DATE.sub(" ", body)
    text = _RE_TAG.sub(" ", text)
    text = _RE_WS.sub(" ", text).strip()
    text = _RE_BADTAG.sub("", text)  # malformed leading domain tag, e.g. "<messaging<"
    text = _RE_PRON.sub("", text)
    # Trailing source notes such as "[{Jargon File}]", possibly repeated.
    while True:
        new = _RE_SOURCE.sub("", text).rstrip()
        if new == text:
            break
        text = new
    text = _RE_LINK_URL.sub(lambda m: m.group(1), text)
    text = _RE_LINK.sub(lambda m: m.group(1), text)
    text = _RE_EMPH.sub(lambda m: m.group(1), text)
    text = _RE_WS.sub(" ", text).strip()
    # Links that were only a URL leave "()" or empty fragments behind.
    text = re.sub(r"\(\s*\)", "", text)
    text = _RE_WS.sub(" ", text).strip()
    text = re.sub(r" +([.,;:)])", r"\1", text)
    return text


def looks_like_jargon(head: str) -> bool:
    if not head or len(head) > 30 or len(head.split()) > 3:
        return False
    if not head[0].isalnum() or not re.search(r"[A-Za-z]", head):
        return False
    if re.fullmatch(r"[\d\s.,:-]+", head):
        return False
    return len(re.sub(r"[^A-Za-z0-9]", "", head)) >= 2


def is_redirect(text: str) -> bool:
    return bool(_RE_REDIRECT.match(text)) and len(text) < 200


def truncate(text: str, limit: int = MAX_CHARS) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    # Last sentence end (". ", "! ", "? ") inside the window.
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", cut)]
    ends = [e for e in ends if e >= limit // 3]
    if ends:
        return cut[: ends[-1]].strip()
    sp = cut.rfind(" ")
    return (cut[:sp] if sp > 0 else cut).rstrip(" ,;:") + " ..."


def mask(text: str, head: str) -> str:
    pat = re.compile(r"(?<![\w])" + re.escape(head) + r"(?:e?s)?(?![\w])", re.I)
    return pat.sub(MASK, text)


def build(entries: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Return deterministic, deduplicated (headword, masked positive) list."""
    out, seen_head, seen_text = [], set(), set()
    for head, body in entries:
        if not looks_like_jargon(head):
            continue
        text = clean(body)
        if len(text) < MIN_CHARS or is_redirect(text):
            continue
        pos = mask(truncate(text), head)
        if len(pos.replace(MASK, "").strip()) < MIN_CHARS or len(pos.split()) < MIN_WORDS:
            continue
        key_h, key_t = head.casefold(), pos.casefold()
        if key_h in seen_head or key_t in seen_text:
            continue
        seen_head.add(key_h)
        seen_text.add(key_t)
        out.append((head, pos))
    return out


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--foldoc", required=True, help="path to foldoc.dict.dz (or plain foldoc dict)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    data = read_dict(args.foldoc)
    base = args.foldoc[:-3] if args.foldoc.endswith(".dz") else args.foldoc
    index_path = (base[:-5] if base.endswith(".dict") else base) + ".index"
    if os.path.exists(index_path):
        entries = parse_with_index(data, index_path)
    else:
        entries = parse_plain(data)
    pool = build(entries)
    print(f"entries parsed: {len(entries)}; usable after cleaning/dedup: {len(pool)}")

    n_pairs = N_TRAIN + N_TEST
    if len(pool) < n_pairs + N_DISTRACTORS:
        print("not enough usable entries", file=sys.stderr)
        return 1
    rng = random.Random(args.seed)
    rng.shuffle(pool)
    pairs, distract = pool[:n_pairs], pool[n_pairs : n_pairs + N_DISTRACTORS]
    train = [{"query": q, "positive": p} for q, p in pairs[:N_TRAIN]]
    test = [{"query": q, "positive": p} for q, p in pairs[N_TRAIN:]]

    docs = [p for _, p in pairs] + [p for _, p in distract]
    rng.shuffle(docs)
    corpus = [{"id": f"d{i}", "text": t} for i, t in enumerate(docs)]

    os.makedirs(args.out, exist_ok=True)
    write_jsonl(os.path.join(args.out, "train.jsonl"), train)
    write_jsonl(os.path.join(args.out, "test.jsonl"), test)
    write_jsonl(os.path.join(args.out, "corpus.jsonl"), corpus)
    print(f"train: {len(train)}  test: {len(test)}  corpus: {len(corpus)} "
          f"({len(pairs)} positives + {len(distract)} distractors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
