"""Reading and validating every input format into one record type, :class:`Pair`.

Formats (see docs/design.md, "Formats"):

- training pairs: ``.jsonl``/``.json`` (one JSON object a line, or one JSON array of objects),
  ``.csv``/``.tsv`` with a header row, ``.parquet``, or a BEIR folder;
- a corpus: ``.jsonl``/``.json``, ``.txt`` (one document a line), ``.csv``/``.tsv``, ``.parquet``;
- IR evaluation data (:class:`EvalSet`): a BEIR folder, or a pairs file plus an optional corpus.

Every mistake in the input raises :class:`~fastembed_tune.core.errors.UserError` with one sentence naming
the file, the line (1-based; ``row`` for Parquet, the first data row being row 1: a Parquet file has
no header line) and the field. Text must be valid Unicode: a lone surrogate (``"\\ud800"`` in JSON)
is refused where it is read, naming its field, rather than failing later in a tokenizer. Line-oriented files are read as bytes and decoded line by line, so a bad byte reports
its own line. Text is never altered: whitespace-only text counts as empty, but is not stripped.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Union

from fastembed_tune.core.errors import UserError

PathLike = Union[str, "os.PathLike[str]"]

QUERY_KEYS = ("query", "anchor", "input")
POSITIVE_KEYS = ("positive", "output")
_NEG_N = re.compile(r"negative_(\d+)$")
BOM = b"\xef\xbb\xbf"
_PAIR_EXTS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
_CORPUS_EXTS = (".jsonl", ".json", ".txt", ".csv", ".tsv", ".parquet")


@dataclass
class Pair:
    """One training example: a query, a relevant text, optional hard negatives.

    >>> Pair("what is a tuple", "an ordered list of values", ["a set"], "train.jsonl:1").negatives
    ['a set']
    """

    query: str
    positive: str
    negatives: list[str] = field(default_factory=list)
    source: str = ""  # "file:line" where the row came from


def pair_digest_line(p: Pair) -> bytes:
    """What a pair adds to a digest of training data (the same for a list and a stream of pairs).

    >>> pair_digest_line(Pair("q", "d", ["n"]))
    b'["q", "d", ["n"]]\\n'
    """
    return json.dumps([p.query, p.positive, p.negatives]).encode() + b"\n"


@dataclass
class EvalSet:
    """IR evaluation data: queries, a corpus, and the relevant documents of each query.

    >>> e = EvalSet({"q0": "cat"}, {"d0": "a feline"}, {"q0": {"d0": 1}})
    >>> e.qrels["q0"]
    {'d0': 1}
    """

    queries: dict[str, str]  # qid -> text
    corpus: dict[str, str]  # doc id -> text (insertion-ordered)
    qrels: dict[str, dict[str, int]]  # qid -> {doc id: relevance > 0}


# ----------------------------------------------------------------------------------------------
# low-level readers: each yields (where, source, row dict)


def _typename(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _ext(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def _read_bytes(path: str) -> bytes:
    if not os.path.exists(path):
        raise UserError(f"{path}: file not found")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, expected a file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror})") from None
    return data[3:] if data.startswith(BOM) else data


_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def require_regular_file(path: PathLike, flag: str = "", why: str = "it is read more than once",
                         fix: str = "write it to a file first") -> None:
    """Refuse an input that cannot be read twice (a FIFO, a device, a socket), naming it and ``flag``;
    checked with ``stat``, before opening it (opening a FIFO waits for a writer). A missing path or
    a folder passes: the reader reports those.

    >>> import tempfile; d = tempfile.mkdtemp(); p = os.path.join(d, "pipe.jsonl"); os.mkfifo(p)
    >>> require_regular_file(p, "--pairs", "--stream reads it twice")
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: --pairs .../pipe.jsonl: is a FIFO (named pipe), not a regular file; --stream reads it twice: write it to a file first
    """
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    for test, kind in _NOT_REGULAR:
        if test(mode):
            raise UserError(f"{flag + ' ' if flag else ''}{path}: is {kind}, not a regular file; {why}: {fix}")


def _utf8_error(path: str, data: bytes, e: UnicodeDecodeError, line: Optional[int] = None) -> UserError:
    """A decode error in ``data`` as one sentence; ``line`` given means data is that single line."""
    if line is None:
        line = data.count(b"\n", 0, e.start) + 1
        pos = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    else:
        pos = e.start + 1
    return UserError(f"{path} line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at position {pos})")


def decode_line(path: str, raw: bytes, i: int) -> str:
    """Line ``i`` (its bytes, without the newline) as text, a trailing ``\\r`` dropped; bad UTF-8 is
    the one-sentence error naming the line."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _utf8_error(path, raw, e, line=i) from None


def _text_lines(path: str, data: bytes) -> Iterator[tuple[int, str]]:
    """Non-blank lines of ``data`` as (1-based line number, text), decoded one by one."""
    for i, raw in enumerate(data.split(b"\n"), 1):
        line = decode_line(path, raw, i)
        if line.strip():
            yield i, line


def _json_rows(path: str) -> Iterator[tuple[str, str, dict]]:
    data = _read_bytes(path)
    if data.lstrip().startswith(b"["):  # one JSON array of objects
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _utf8_error(path, data, e) from None
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        for i, obj in enumerate(items, 1):
            where = f"{path} item {i}"
            if not isinstance(obj, dict):
                raise UserError(f"{where}: expected a JSON object, got {_typename(obj)}")
            yield where, f"{path}:item{i}", obj
        return
    for i, line in _text_lines(path, data):
        yield f"{path} line {i}", f"{path}:{i}", json_line(path, i, line)


def json_line(path: str, i: int, line: str) -> dict:
    """Line ``i`` of a JSONL file as its object, or the one-sentence error naming the line."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} line {i}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} line {i}: expected a JSON object, got {_typename(obj)}")
    return obj


def _csv_rows(path: str) -> Iterator[tuple[str, str, dict]]:
    """Rows of a CSV/TSV file with a header; the whole file is decoded at once (fields may hold newlines)."""
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _utf8_error(path, data, e) from None
    delim = "\t" if _ext(path) == ".tsv" else ","
    old_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # documents can be long
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
        header: Optional[list[str]] = None
        prev = 0
        while True:
            start = prev + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise UserError(f"{path} line {reader.line_num}: malformed CSV ({e})") from None
            prev = reader.line_num
            if not any(c.strip() for c in row):
                continue  # blank line
            if header is None:
                header = [c.strip() for c in row]
                for j, name in enumerate(header):
                    if name in header[:j]:
                        raise UserError(f"{path} line {start}: column '{name}' appears twice in the header")
                yield f"{path} line {start}", "", {"__header__": header}
                continue
            if len(row) != len(header):
                raise UserError(f"{path} line {start}: the row has {len(row)} fields but the header has "
                                f"{len(header)}")
            yield f"{path} line {start}", f"{path}:{start}", dict(zip(header, row))
    finally:
        csv.field_size_limit(old_limit)


def _parquet_rows(path: str) -> Iterator[tuple[str, str, dict]]:
    if not os.path.exists(path):
        raise UserError(f"{path}: file not found")
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise UserError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        msg = " ".join(str(e).split())
        raise UserError(f"{path}: not a readable Parquet file ({msg})") from None
    yield f"{path}", "", {"__header__": list(table.column_names)}
    for i, row in enumerate(table.to_pylist(), 1):
        yield f"{path} row {i}", f"{path}:{i}", row


def _rows(path: str, exts: tuple[str, ...], what: str) -> tuple[bool, Iterator[tuple[str, str, dict]]]:
    """(tabular?, rows) for ``path``; tabular formats first yield a ``__header__`` row."""
    ext = _ext(path)
    if ext not in exts:
        if not os.path.exists(path):
            raise UserError(f"{path}: file not found")
        shown = ", ".join(exts[:-1]) + " or " + exts[-1]
        raise UserError(f"{path}: unsupported file extension '{ext or '(none)'}' for {what} (expected {shown})")
    if ext in (".jsonl", ".json"):
        return False, _json_rows(path)
    if ext in (".csv", ".tsv"):
        return True, _csv_rows(path)
    if ext == ".parquet":
        return True, _parquet_rows(path)
    raise AssertionError(ext)  # pragma: no cover


# ----------------------------------------------------------------------------------------------
# field checks


def _unicode(v: str, name: str, where: str) -> str:
    """``v`` unchanged, or a UserError when it holds a lone surrogate (not encodable as UTF-8)."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"{where}: field '{name}' holds a lone surrogate (U+{ord(v[e.start]):04X} at position "
                        f"{e.start + 1}), which is not valid Unicode text") from None
    return v


def _text(v: Any, name: str, where: str) -> str:
    if not isinstance(v, str):
        raise UserError(f"{where}: field '{name}' must be a string, got {_typename(v)}")
    if not v.strip():
        raise UserError(f"{where}: field '{name}' is empty" + (" (only whitespace)" if v else ""))
    return _unicode(v, name, where)


def _absent(v: Any, tabular: bool) -> bool:
    """An optional field that is not there: null, or an empty cell in a CSV/Parquet table."""
    return v is None or (tabular and isinstance(v, str) and not v.strip())


def _pick(row: dict, keys: tuple[str, ...], name: str, where: str) -> tuple[str, Any]:
    for k in keys:
        if k in row:
            return k, row[k]
    also = " or ".join(f"'{k}'" for k in keys if k != name)
    raise UserError(f"{where}: field '{name}' is missing" + (f" (also accepted: {also})" if also else ""))


def _negatives(row: dict, where: str, tabular: bool) -> list[str]:
    out: list[str] = []
    if "negative" in row and not _absent(row["negative"], tabular):
        out.append(_text(row["negative"], "negative", where))
    if "negatives" in row and not _absent(row["negatives"], tabular):
        v = row["negatives"]
        if tabular and isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                raise UserError(f"{where}: field 'negatives' must be a JSON list of strings") from None
        if not isinstance(v, (list, tuple)):
            raise UserError(f"{where}: field 'negatives' must be a list of strings, got {_typename(v)}")
        for j, s in enumerate(v, 1):
            if not isinstance(s, str):
                raise UserError(f"{where}: field 'negatives' must be a list of strings "
                                f"(item {j} is {_typename(s)})")
            if not s.strip():
                raise UserError(f"{where}: field 'negatives' item {j} is empty")
            out.append(_unicode(s, "negatives", where))
    numbered = sorted((int(m.group(1)), k) for k in row if isinstance(k, str) and (m := _NEG_N.match(k)))
    for _, k in numbered:
        if not _absent(row[k], tabular):
            out.append(_text(row[k], k, where))
    return out


def check_header(header: list[str], where: str, need: list[tuple[tuple[str, ...], str]]) -> None:
    for keys, name in need:
        if not any(k in header for k in keys):
            also = " or ".join(f"'{k}'" for k in keys if k != name)
            found = ", ".join(f"'{h}'" for h in header) or "none"
            raise UserError(f"{where}: column '{name}' is missing (also accepted: {also}; found {found})"
                            if also else f"{where}: column '{name}' is missing (found {found})")


def parse_pair(row: dict, where: str, source: str, tabular: bool) -> Pair:
    qk, q = _pick(row, QUERY_KEYS, "query", where)
    pk, p = _pick(row, POSITIVE_KEYS, "positive", where)
    return Pair(_text(q, qk, where), _text(p, pk, where), _negatives(row, where, tabular), source)


def parse_doc(row: dict, where: str, tabular: bool, with_title: bool = True) -> tuple[str, str]:
    """(id, text) of a corpus or queries row; BEIR style: title + " " + text when title non-empty."""
    ik, i = _pick(row, ("_id", "id"), "id", where)
    if isinstance(i, int) and not isinstance(i, bool):
        i = str(i)
    i = _text(i, ik, where)
    if "text" not in row:
        raise UserError(f"{where}: field 'text' is missing")
    text = row["text"]
    if not isinstance(text, str):
        raise UserError(f"{where}: field 'text' must be a string, got {_typename(text)}")
    title = row.get("title") if with_title else None
    if not _absent(title, tabular):
        if not isinstance(title, str):
            raise UserError(f"{where}: field 'title' must be a string, got {_typename(title)}")
        _unicode(title, "title", where)
        if title.strip():
            text = f"{title} {text}" if text.strip() else title
    return i, _text(text, "text", where)


def _read_docs(path: str, rows: Iterator[tuple[str, str, dict]], tabular: bool, with_title: bool,
               empty_what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    first_seen: dict[str, str] = {}
    for where, _src, row in rows:
        if "__header__" in row:
            check_header(row["__header__"], where, [(("id", "_id"), "id"), (("text",), "text")])
            continue
        i, text = parse_doc(row, where, tabular, with_title)
        if i in out:
            raise UserError(f"{where}: duplicate id '{i}' (first seen at {first_seen[i][len(path) + 1:]})")
        out[i] = text
        first_seen[i] = where
    if not out:
        raise UserError(f"{path}: empty file (no {empty_what})")
    return out


# ----------------------------------------------------------------------------------------------
# public API


def read_pairs(path: PathLike) -> list[Pair]:
    """Read training pairs from a ``.jsonl``/``.json``/``.csv``/``.tsv``/``.parquet`` file or a BEIR folder.

    Columns: ``query`` (aliases ``anchor``, ``input``), ``positive`` (alias ``output``), optional
    ``negative`` (str), ``negatives`` (list; a JSON list string in CSV) and ``negative_1``, ``negative_2``...,
    merged in that order into ``Pair.negatives``. A folder is read with :func:`pairs_from_beir` (split "train").

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "pairs.jsonl")
    >>> _ = open(p, "w").write('{"query": "cat", "positive": "a feline", "negative": "a dog"}\\n')
    >>> [(x.query, x.positive, x.negatives) for x in read_pairs(p)]
    [('cat', 'a feline', ['a dog'])]
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return pairs_from_beir(path, "train")
    tabular, rows = _rows(path, _PAIR_EXTS, "pairs")
    out: list[Pair] = []
    for where, source, row in rows:
        if "__header__" in row:
            check_header(row["__header__"], where, [(QUERY_KEYS, "query"), (POSITIVE_KEYS, "positive")])
            continue
        out.append(parse_pair(row, where, source, tabular))
    if not out:
        raise UserError(f"{path}: empty file (no pairs)")
    return out


def read_corpus(path: PathLike) -> dict[str, str]:
    """Read a corpus as ``{doc id: text}`` (file order); duplicate ids are an error.

    ``.jsonl``/``.json``: ``{"_id" or "id", "text", "title"?}`` (title + " " + text when the title is
    non-empty); ``.txt``: one document a line, id = 0-based line number (blank lines skipped, numbers
    kept); ``.csv``/``.tsv``/``.parquet``: ``id``, ``text`` and optional ``title`` columns. A folder
    means its ``corpus.jsonl`` (BEIR).

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "corpus.txt")
    >>> _ = open(p, "w").write("a feline\\na dog\\n")
    >>> read_corpus(p)
    {'0': 'a feline', '1': 'a dog'}
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "corpus.jsonl")
    if _ext(path) == ".txt":
        return _txt_docs(path, _read_bytes(path))
    tabular, rows = _rows(path, _CORPUS_EXTS, "a corpus")
    return _read_docs(path, rows, tabular, True, "documents")


def _txt_docs(path: str, data: bytes) -> dict[str, str]:
    """A ``.txt`` corpus' bytes as ``{0-based line number: line}``, blank lines skipped."""
    out = {str(i - 1): line for i, line in _text_lines(path, data)}
    if not out:
        raise UserError(f"{path}: empty file (no documents)")
    return out


def read_texts(path: PathLike) -> dict[str, str]:
    """Texts to embed, one output row each, as ``{id: text}`` in file order: like
    :func:`read_corpus`, except that a ``.txt`` file's lines map 1:1 to rows, so a blank line in
    the middle is an error naming it (a trailing newline at the end of the file is fine).

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "texts.txt")
    >>> _ = open(p, "w").write("a feline\\n\\na dog\\n")
    >>> read_texts(p)
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: .../texts.txt line 2: blank line; every line is one output row, so each needs a text (remove the line, or use a .jsonl corpus with ids)
    """
    path = os.fspath(path)
    if _ext(path) == ".txt" and not os.path.isdir(path):
        data = _read_bytes(path)
        lines = data.split(b"\n")
        if lines and lines[-1] in (b"", b"\r"):
            lines = lines[:-1]  # the newline that ends the last line
        for i, raw in enumerate(lines, 1):
            if not raw.strip():
                raise UserError(f"{path} line {i}: blank line; every line is one output row, so each needs a text "
                                f"(remove the line, or use a .jsonl corpus with ids)")
        return _txt_docs(path, data)  # the bytes already read: a FIFO or stdin is read once
    return read_corpus(path)


def _beir(folder: PathLike, split: str) -> tuple[dict[str, str], dict[str, str], list[tuple[str, str, int, str]]]:
    """(queries, corpus, [(qid, doc id, score, "file:line")]) of a BEIR folder, every id checked."""
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        raise UserError(f"{folder}: file not found")
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: not a BEIR folder (expected a directory holding corpus.jsonl, "
                        f"queries.jsonl and qrels/)")
    qrels_path = os.path.join(folder, "qrels", f"{split}.tsv")
    if not os.path.isfile(qrels_path):
        qdir = os.path.join(folder, "qrels")
        have = sorted(f[:-4] for f in os.listdir(qdir) if f.endswith(".tsv")) if os.path.isdir(qdir) else []
        raise UserError(f"{qrels_path}: file not found (splits present: {', '.join(have) or 'none'})")
    corpus = read_corpus(os.path.join(folder, "corpus.jsonl"))
    qpath = os.path.join(folder, "queries.jsonl")
    queries = _read_docs(qpath, _json_rows(qpath), False, False, "queries")
    rels: list[tuple[str, str, int, str]] = []
    first = True
    for i, line in _text_lines(qrels_path, _read_bytes(qrels_path)):
        where = f"{qrels_path} line {i}"
        fields = [f.strip() for f in line.split("\t")]
        if first:
            first = False
            if len(fields) < 3 or not re.fullmatch(r"[+-]?\d+", fields[2]):
                continue  # header: query-id corpus-id score
        if len(fields) != 3:
            raise UserError(f"{where}: expected 3 tab-separated fields (query-id, corpus-id, score), "
                            f"got {len(fields)}")
        qid, did, score = fields
        if not re.fullmatch(r"[+-]?\d+", score):
            raise UserError(f"{where}: field 'score' must be an integer, got '{score}'")
        if qid not in queries:
            raise UserError(f"{where}: query-id '{qid}' is not in queries.jsonl")
        if did not in corpus:
            raise UserError(f"{where}: corpus-id '{did}' is not in corpus.jsonl")
        rels.append((qid, did, int(score), f"{qrels_path}:{i}"))
    if not any(r[2] > 0 for r in rels):
        raise UserError(f"{qrels_path}: no judgements with score > 0")
    return queries, corpus, rels


def read_beir(folder: PathLike, split: str = "test") -> EvalSet:
    """Read a BEIR folder: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/{split}.tsv``.

    Only judgements with score > 0 are kept, and only the queries that have one (in qrels order).

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); os.mkdir(os.path.join(d, "qrels"))
    >>> _ = open(os.path.join(d, "corpus.jsonl"), "w").write('{"_id": "d1", "title": "Cat", "text": "a feline"}\\n')
    >>> _ = open(os.path.join(d, "queries.jsonl"), "w").write('{"_id": "q1", "text": "cat"}\\n')
    >>> _ = open(os.path.join(d, "qrels", "test.tsv"), "w").write("query-id\\tcorpus-id\\tscore\\nq1\\td1\\t1\\n")
    >>> read_beir(d)
    EvalSet(queries={'q1': 'cat'}, corpus={'d1': 'Cat a feline'}, qrels={'q1': {'d1': 1}})
    """
    queries, corpus, rels = _beir(folder, split)
    qrels: dict[str, dict[str, int]] = {}
    for qid, did, score, _src in rels:
        if score > 0:
            qrels.setdefault(qid, {})[did] = score
    return EvalSet({q: queries[q] for q in qrels}, corpus, qrels)


def pairs_from_beir(folder: PathLike, split: str = "train") -> list[Pair]:
    """One :class:`Pair` per (query, relevant document) judged with score > 0 in ``qrels/{split}.tsv``.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); os.mkdir(os.path.join(d, "qrels"))
    >>> _ = open(os.path.join(d, "corpus.jsonl"), "w").write('{"_id": "d1", "text": "a feline"}\\n')
    >>> _ = open(os.path.join(d, "queries.jsonl"), "w").write('{"_id": "q1", "text": "cat"}\\n')
    >>> _ = open(os.path.join(d, "qrels", "train.tsv"), "w").write("query-id\\tcorpus-id\\tscore\\nq1\\td1\\t1\\n")
    >>> [(p.query, p.positive) for p in pairs_from_beir(d)]
    [('cat', 'a feline')]
    """
    queries, corpus, rels = _beir(folder, split)
    return [Pair(queries[q], corpus[d], [], src) for q, d, score, src in rels if score > 0]


def describe_source(source: str) -> str:
    """``Pair.source`` ("file:line") as the words an error uses: "file line N" ("row N" for Parquet).

    >>> describe_source("t.jsonl:4"), describe_source("t.parquet:2"), describe_source("t.json:item3")
    ('t.jsonl line 4', 't.parquet row 2', 't.json item 3')
    """
    path, _, pos = source.rpartition(":")
    if not path:
        return source
    if pos.startswith("item"):
        return f"{path} item {pos[4:]}"
    return f"{path} {'row' if _ext(path) == '.parquet' else 'line'} {pos}"


def pairs_to_evalset(pairs: list[Pair], corpus: Optional[dict[str, str]] = None, corpus_name: str = "the corpus",
                     add_missing_positives: bool = False) -> EvalSet:
    """Turn pairs into an :class:`EvalSet`.

    Queries are deduplicated by text (ids ``q0``, ``q1``... in order of first appearance); each
    query's relevant documents are all its positives, relevance 1. Without ``corpus`` the corpus is
    the positives (ids ``p0``, ``p1``...). With ``corpus`` (ids kept) every positive must be in it:
    a missing one is a :class:`UserError` naming the pair's line, since retrieving from a corpus the
    positives were silently added to would overstate every metric; ``add_missing_positives=True``
    adds them instead (ids ``p0``, ``p1``... not already taken).

    >>> e = pairs_to_evalset([Pair("cat", "a feline"), Pair("cat", "a kitty"), Pair("dog", "a canine")])
    >>> e.queries, e.qrels
    ({'q0': 'cat', 'q1': 'dog'}, {'q0': {'p0': 1, 'p1': 1}, 'q1': {'p2': 1}})
    """
    if not pairs:
        raise UserError("no pairs to evaluate")
    if corpus is not None and not add_missing_positives:
        texts = set(corpus.values())
        missing = [p for p in pairs if p.positive not in texts]
        if missing:
            n_pos = len({p.positive for p in pairs})
            first = missing[0]
            raise UserError(f"{describe_source(first.source) if first.source else repr(first.query)}: the positive "
                            f"is not in the corpus {corpus_name} ({len({p.positive for p in missing})} of {n_pos} "
                            f"positives are missing); add them to the corpus, or evaluate without a corpus")
    docs = dict(corpus) if corpus else {}
    by_text: dict[str, str] = {}
    for did, text in docs.items():
        by_text.setdefault(text, did)
    qid_of: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    n_new = 0
    for p in pairs:
        qid = qid_of.get(p.query)
        if qid is None:
            qid = qid_of[p.query] = f"q{len(qid_of)}"
            queries[qid] = p.query
        did = by_text.get(p.positive)
        if did is None:
            while f"p{n_new}" in docs:
                n_new += 1
            did = f"p{n_new}"
            n_new += 1
            docs[did] = p.positive
            by_text[p.positive] = did
        qrels.setdefault(qid, {})[did] = 1
    return EvalSet(queries, docs, qrels)


def load_eval(path: PathLike, corpus_path: Optional[PathLike] = None) -> EvalSet:
    """Evaluation data from a BEIR folder (split "test") or a pairs file plus an optional corpus file
    (which must hold every positive; see :func:`pairs_to_evalset`).

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "test.jsonl")
    >>> _ = open(p, "w").write('{"query": "cat", "positive": "a feline"}\\n')
    >>> load_eval(p).corpus
    {'p0': 'a feline'}
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if corpus_path is not None:
            raise UserError(f"{path}: a BEIR folder brings its own corpus.jsonl; give no separate corpus")
        return read_beir(path, "test")
    corpus = read_corpus(corpus_path) if corpus_path is not None else None
    return pairs_to_evalset(read_pairs(path), corpus, corpus_name=os.fspath(corpus_path) if corpus_path else "")


def data_report(train: list[Pair], eval_pairs: Optional[list[Pair]] = None) -> dict:
    """Counts that reveal data problems; a plain JSON-serialisable dict.

    Keys: ``pairs``, ``unique_queries``, ``unique_positives``, ``duplicate_pairs`` (same query and
    positive as an earlier pair), ``positive_equals_query``, ``pairs_with_negatives``; with
    ``eval_pairs`` also ``eval_pairs``, ``eval_unique_queries``, ``overlapping_queries`` (query texts
    in both) and ``overlapping_query_examples`` (up to 5, in eval order).

    >>> r = data_report([Pair("a", "x"), Pair("a", "x"), Pair("b", "b")], [Pair("b", "y")])
    >>> r["duplicate_pairs"], r["positive_equals_query"], r["overlapping_queries"]
    (1, 1, 1)
    """
    seen: set[tuple[str, str]] = set()
    dup = 0
    for p in train:
        key = (p.query, p.positive)
        dup += key in seen
        seen.add(key)
    train_q = {p.query for p in train}
    report: dict[str, Any] = {
        "pairs": len(train),
        "unique_queries": len(train_q),
        "unique_positives": len({p.positive for p in train}),
        "duplicate_pairs": dup,
        "positive_equals_query": sum(p.positive == p.query for p in train),
        "pairs_with_negatives": sum(bool(p.negatives) for p in train),
    }
    if eval_pairs is not None:
        eval_q = list(dict.fromkeys(p.query for p in eval_pairs))
        both = [q for q in eval_q if q in train_q]
        report.update({
            "eval_pairs": len(eval_pairs),
            "eval_unique_queries": len(eval_q),
            "overlapping_queries": len(both),
            "overlapping_query_examples": both[:5],
        })
    return report
