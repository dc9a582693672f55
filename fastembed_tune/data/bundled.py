"""The data sets that ship inside the package: the built-in sample and the forgetting guard.

Both are small, carry their licence (``sample_data/README.md``, ``guard_data/README.md``) and are rebuilt
by ``scripts/make_sample.py`` and ``scripts/make_guard.py``.
"""
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
SAMPLE_DIR = PACKAGE_DIR / "sample_data"
GUARD_DIR = PACKAGE_DIR / "guard_data"


def sample_paths() -> dict[str, str]:
    """Paths of the built-in sample (FOLDOC computing jargon: term -> masked definition).

    >>> sorted(sample_paths())
    ['corpus', 'test', 'train']
    """
    return {name: str(SAMPLE_DIR / f"{name}.jsonl") for name in ("train", "test", "corpus")}


def guard_paths() -> dict[str, str]:
    """The forgetting guard: general-English word -> definition retrieval from WordNet, a source and
    domain the sample does not use (see ``guard_data/README.md``).

    >>> sorted(guard_paths())
    ['corpus', 'test']
    """
    return {name: str(GUARD_DIR / f"{name}.jsonl") for name in ("test", "corpus")}
