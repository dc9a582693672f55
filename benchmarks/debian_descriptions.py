"""Extra distillation text from a source that is neither the sample's (dict-foldoc) nor the
guard's (WordNet): Debian package descriptions, for ``distill_student.py --extra-texts``.

    nice -n 10 .venv/bin/python benchmarks/debian_descriptions.py --out runs/debian_descriptions.txt

Reads an apt ``Packages`` index (``.lz4``, ``.gz``, ``.xz`` or plain; default: bookworm main amd64
from /var/lib/apt/lists), takes each stanza's ``Description`` (the short line and, where the index
carries it, the long text: continuation lines joined, the " ." paragraph markers dropped), keeps the
distinct ones of ``--min-words``..``--max-words`` words, drops any that spells a query of the
built-in sample (training, hence validation, or test; compared case-folded), and writes a seeded
sample of ``--n`` of them, one a line (UTF-8), to ``--out``. Bookworm's index holds only the short
lines (the long texts live in Translation-en): ~63k stanzas, ~49k distinct lines of 5+ words.
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT = "/var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4"


def read_index(path: str) -> str:
    """The index's text, decompressed by its extension (lz4: the ``lz4`` module, else ``lz4cat``)."""
    if path.endswith(".lz4"):
        try:
            import lz4.frame

            with lz4.frame.open(path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except ImportError:
            return subprocess.run(["lz4cat", path], check=True, capture_output=True).stdout.decode("utf-8", "replace")
    if path.endswith(".gz"):
        import gzip

        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            return f.read()
    if path.endswith(".xz"):
        import lzma

        with lzma.open(path, "rt", encoding="utf-8", errors="replace") as f:
            return f.read()
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def descriptions(text: str) -> list[str]:
    """Every stanza's description, short line then long text as one whitespace-normalised string.

    >>> descriptions("Package: a\\nDescription: A tool\\n Does things.\\n .\\n More.\\nSection: x\\n\\n"
    ...              "Package: b\\nDescription: Another tool\\n")
    ['A tool Does things. More.', 'Another tool']
    """
    out, cur = [], None
    for line in text.splitlines():
        if cur is not None and line[:1] in (" ", "\t"):
            if line.strip() != ".":  # a paragraph marker
                cur.append(line.strip())
            continue
        if cur is not None:
            out.append(" ".join(" ".join(cur).split()))
            cur = None
        if line.startswith("Description:"):
            cur = [line[len("Description:"):].strip()]
    if cur is not None:
        out.append(" ".join(" ".join(cur).split()))
    return [d for d in out if d]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packages", default=DEFAULT, help="apt Packages index")
    ap.add_argument("--out", default="runs/debian_descriptions.txt")
    ap.add_argument("--n", type=int, default=20000, help="texts to sample (all when fewer)")
    ap.add_argument("--min-words", type=int, default=5)
    ap.add_argument("--max-words", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    from fastembed_tune.data.bundled import sample_paths
    from fastembed_tune.data.readers import load_eval, read_pairs

    p = sample_paths()
    queries = {q.casefold().strip() for q in load_eval(p["test"], p["corpus"]).queries.values()}
    queries |= {x.query.casefold().strip() for x in read_pairs(p["train"])}
    found = descriptions(read_index(a.packages))
    distinct = list(dict.fromkeys(found))
    fit = [d for d in distinct if a.min_words <= len(d.split()) <= a.max_words]
    kept = [d for d in fit if d.casefold().strip() not in queries]
    picked = random.Random(a.seed).sample(kept, min(a.n, len(kept)))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        f.writelines(d.replace("\n", " ") + "\n" for d in picked)
    words = sorted(len(d.split()) for d in picked)
    print(f"{a.packages}: {len(found)} descriptions, {len(distinct)} distinct, {len(fit)} of "
          f"{a.min_words}-{a.max_words} words, {len(fit) - len(kept)} spelling a sample query dropped; "
          f"wrote {len(picked)} (seed {a.seed}; median {words[len(words) // 2] if words else 0} words) to {a.out}")


if __name__ == "__main__":
    main()
