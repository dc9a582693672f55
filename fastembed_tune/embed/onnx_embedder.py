"""ONNX inference: the Rust tokenizer + one onnxruntime graph, no PyTorch at run time.

``OnnxEmbedder(path)`` reads a directory written by :func:`fastembed_tune.export.onnx.export_onnx`
(``model.onnx`` / ``model_int8.onnx``, ``tokenizer.json``, ``fastembed_tune_onnx.json``) and embeds
texts as float32 ``[n, dim]``. The graph already pools and (when the model does) L2-normalises, so the
ONNX output *is* the sentence embedding.

Tokenisation never trusts the truncation/padding settings stored inside ``tokenizer.json`` (many hub
files carry ``truncation: 128`` and ``padding: Fixed 128``): truncation is set to the model's
``max_seq_length``. Batches are cut by length BUCKETS (``pad_multiple``, 4 tokens by default): every
text is padded to the next multiple of 4 and a batch holds texts of one bucket only, so no batch
carries more than 3 padding tokens a text (length-sorted batches of 64 padded to their longest carry
far more), and a text is run at the same padded length whatever its neighbours. On a CPU, padding
costs more than small batches save: narrow buckets beat batches padded to their longest text on
onnxruntime and on OpenVINO alike, and 4 does well on both (OpenVINO, whose shapes are compiled,
loses with narrower ones; see docs/benchmarks.md).

Batches run ``streams`` at a time (2 by default where 2 or more threads are given), each on its
share of the threads, instead of one batch at a time on all of them: a small encoder's GEMMs split
poorly over threads, every operator ends on a barrier that waits for the slowest thread, and a
shared machine stalls one thread often; concurrent batches spend less time waiting (see
docs/benchmarks.md). A text's vector does not depend on its stream. ``streams=1`` is the latency
choice: one batch on every thread (``serve`` runs so).

On OpenVINO with AMX, short batches (padded to at most :data:`UNFUSED_ATTENTION_MAX` tokens) run on
a second compiled model whose attention is not fused (made at the first such batch): OpenVINO's
fused attention kernel is the faster one only for long texts on that CPU. A text's padded length,
so its model, does not depend on its batch neighbours.

At load time the graph and the tokenizer are checked against each other (expected inputs, token ids
that fit the graph's embedding matrix, the embedding size) so that a mismatch is one clear
``UserError`` instead of an index error deep inside onnxruntime or, worse, silent garbage.
"""
from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from fastembed_tune.core.cpu import cpu_features, int8_pairs_saturate
from fastembed_tune.core.errors import UserError, check_finite_rows
from fastembed_tune.embed.int8_weights import INT8_WEIGHT_OPS, unsigned_weights
from fastembed_tune.embed.layout import METADATA_FILE, MODEL_FILE

PAD_MULTIPLE = 4  # batches are padded to a multiple of this many tokens, one length bucket a batch
STREAMS = 2  # batches run at once by default (where there are 2+ threads), each on its share of them
ENGINES = ("onnxruntime", "openvino")
# OpenVINO on a CPU with AMX: batches padded to at most this many tokens run with its fused attention
# subgraph (snippets) switched off (SNIPPETS_MODE=DISABLE: the attention MatMuls go to oneDNN's AMX
# brgemm, the softmax runs on its own); longer ones keep it. On an Intel Xeon with AMX the unfused
# model is the faster one for short batches and the fused one for long texts, the NNCF int8 IR alike;
# this bound is where they cross (see docs/benchmarks.md).
UNFUSED_ATTENTION_MAX = 96
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_PASS_THROUGH = ("Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten")


def resolve_model_file(path: Union[str, os.PathLike]) -> tuple:
    """(directory, graph file) from a directory or a path to an .onnx file (or an OpenVINO IR .xml)."""
    p = Path(path)
    if p.is_dir():
        f = p / MODEL_FILE
        if not f.is_file():
            raise UserError(f"{p}: no {MODEL_FILE} in this directory (is it an ONNX export?)")
        return p, f
    if p.is_file() and p.suffix in (".onnx", ".xml"):
        home = p.parent
        if not (home / "tokenizer.json").is_file() and (home.parent / "tokenizer.json").is_file():
            home = home.parent  # onnx/model.onnx, openvino/*.xml: sentence-transformers' layout
        return home, p
    raise UserError(f"{p}: not an ONNX export directory, .onnx file or OpenVINO .xml file")


def _text_list(texts: Sequence[str], what: str) -> List[str]:
    """``texts`` as a list of strings, or a UserError naming the first that is not one."""
    if isinstance(texts, str):
        raise UserError(f"{what}() takes a list of texts, not a single string; wrap it: [text]")
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise UserError(f"text #{bad} is a {type(texts[bad]).__name__}, not a string")
    return texts


def check_unicode(texts: Sequence[str]) -> None:
    """Refuse the first text holding a lone surrogate (not valid Unicode: no UTF-8 encodes it), by index.

    >>> try:
    ...     check_unicode(["ok", "a\\ud800"])
    ... except UserError as e:
    ...     print(e)
    text #1 holds a lone surrogate (U+D800 at position 2), which is not valid Unicode text
    """
    for i, t in enumerate(texts):
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise UserError(f"text #{i} holds a lone surrogate (U+{ord(t[e.start]):04X} at position {e.start + 1}), "
                            f"which is not valid Unicode text") from None
        except AttributeError:
            raise UserError(f"text #{i} is a {type(t).__name__}, not a string") from None


def embedding_rows(model) -> Optional[int]:
    """Rows of the word-embedding matrix that ``input_ids`` indexes, or None when not found.

    Follows ``input_ids`` through casts/reshapes to a ``Gather`` (or a fused
    ``EmbedLayerNormalization``) whose table is an initializer.

    >>> import onnx
    >>> from onnx import helper, TensorProto, numpy_helper
    >>> table = numpy_helper.from_array(np.zeros((7, 2), np.float32), "E")
    >>> g = helper.make_graph([helper.make_node("Gather", ["E", "input_ids"], ["y"])], "g",
    ...     [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 3])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 2])], [table])
    >>> embedding_rows(helper.make_model(g))
    7
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    reach = {"input_ids"}
    changed = True
    while changed:  # the small closure of pass-through ops fed by input_ids
        changed = False
        for n in graph.node:
            if n.op_type in _PASS_THROUGH and n.input and n.input[0] in reach:
                for o in n.output:
                    if o not in reach:
                        reach.add(o)
                        changed = True

    def table_rows(name: str) -> Optional[int]:
        if name in inits:
            return int(inits[name].dims[0])
        node = producers.get(name)  # e.g. a DequantizeLinear in front of a quantized table
        if node is not None and node.input and node.input[0] in inits:
            return int(inits[node.input[0]].dims[0])
        return None

    for n in graph.node:
        if n.op_type == "Gather" and len(n.input) == 2 and n.input[1] in reach:
            rows = table_rows(n.input[0])
            if rows is not None:
                return rows
        if n.op_type == "EmbedLayerNormalization" and n.input and n.input[0] in reach:
            rows = table_rows(n.input[2])
            if rows is not None:
                return rows
    return None


def check_count(name: str, value, least: int) -> None:
    """Refuse ``value`` unless it is an integer (not a bool) of at least ``least`` (0 or 1).

    >>> check_count("streams", 0, 1)
    Traceback (most recent call last):
    fastembed_tune.core.errors.UserError: streams must be a positive integer, got 0
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise UserError(f"{name} must be a {'positive' if least else 'non-negative'} integer, got {value!r}")


def bucket_batches(buckets: Sequence[int], lengths: Sequence[int], batch_size: int) -> List[np.ndarray]:
    """Indices cut into batches of at most ``batch_size`` texts that share one bucket (padded
    length), the longest bucket first and the longest text first within it (stable).

    >>> [b.tolist() for b in bucket_batches([8, 16, 8, 8], [5, 9, 8, 5], batch_size=2)]
    [[1], [2, 0], [3]]
    """
    order = np.lexsort((-np.asarray(lengths, dtype=np.int64), -np.asarray(buckets, dtype=np.int64)))
    b = np.asarray(buckets, dtype=np.int64)[order]
    out: List[np.ndarray] = []
    for run in np.split(order, np.flatnonzero(np.diff(b)) + 1) if len(order) else []:
        out.extend(run[s:s + batch_size] for s in range(0, len(run), batch_size))
    return out


class OnnxEmbedder:
    """Embed texts with an exported ONNX graph and its Rust tokenizer.

    ``path`` is an export directory (uses ``model.onnx``) or one ``.onnx`` file inside it (e.g.
    ``model_int8.onnx``). ``threads`` sets onnxruntime's intra-op threads (None: onnxruntime's
    default, all cores). ``providers`` defaults to ``["CPUExecutionProvider"]``.

    ``engine="openvino"`` runs the graph with the OpenVINO runtime instead (it reads the ONNX file
    itself; only graphs of standard operators, e.g. ``onnx/model.onnx``), at ``precision`` ``"bf16"``
    (native on AMX / AVX512-BF16 CPUs) or ``"f32"``; ``providers`` does not apply then.
    ``spin=False`` (onnxruntime): idle worker threads sleep at once instead of spinning after a
    run, leaving the cores to the rest of the process (a server's event loop and tokenizer).
    ``streams``: how many batches run at once, each on ``threads // streams`` threads (default: 2
    where ``threads``, or the machine's cores when None, number 2 or more; 1: one batch at a time on
    every thread, the latency choice). :meth:`run` splits one batch over the streams.
    ``pad_multiple``: every batch is padded to a multiple of this many tokens (at most
    ``max_seq_length``) and :meth:`embed` batches texts of one such bucket together (see the module
    text; 1: texts of one exact length a batch, no padding at all); 0 is what other stacks do:
    length-sorted batches of ``batch_size``, each padded to its longest text.
    ``unfused_attention_max`` (OpenVINO): batches padded to at most this many tokens run with
    OpenVINO's fused attention switched off (default: :data:`UNFUSED_ATTENTION_MAX` where the CPU has
    AMX, else 0: never).

    >>> from fastembed_tune.export.onnx import export_onnx                    # doctest: +SKIP
    >>> from fastembed_tune.embed.model import default_model_path              # doctest: +SKIP
    >>> info = export_onnx(default_model_path(), "/tmp/minilm_onnx")      # doctest: +SKIP
    >>> OnnxEmbedder("/tmp/minilm_onnx", threads=2).embed(["hello"]).shape  # doctest: +SKIP
    (1, 384)
    """

    def __init__(self, path: Union[str, os.PathLike], threads: Optional[int] = None,
                 providers: Optional[Sequence[str]] = None, engine: str = "onnxruntime",
                 precision: Optional[str] = None, spin: bool = True, pad_multiple: int = PAD_MULTIPLE,
                 streams: Optional[int] = None, unfused_attention_max: Optional[int] = None):
        self.dir, self.model_file = resolve_model_file(path)
        tok_file = self.dir / "tokenizer.json"
        if not tok_file.is_file():
            raise UserError(f"{self.dir}: tokenizer.json is missing beside {self.model_file.name}")
        self.metadata = self._read_metadata()
        self._load_tokenizer(tok_file, pad_multiple)
        if engine not in ENGINES:
            raise UserError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        self._load_graph(engine)
        self._plan_streams(threads, streams, unfused_attention_max, providers, engine)
        self.engine = engine
        self.unfused_attention_max = 0  # onnxruntime: no such thing there
        if engine == "openvino":
            self.unfused_attention_max = (unfused_attention_max if unfused_attention_max is not None
                                          else UNFUSED_ATTENTION_MAX if "amx_bf16" in cpu_features() else 0)
            self._open_openvino(threads, precision or "f32")
        else:
            self._open_onnxruntime(threads, providers, spin)

    # ---- loading ------------------------------------------------------------------------------
    def _read_metadata(self) -> Dict:
        """The export's metadata file beside the graph ({} when there is none)."""
        meta_file = self.dir / METADATA_FILE
        meta: Dict = {}
        if meta_file.is_file():
            try:
                meta = json.loads(meta_file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise UserError(f"{meta_file}: not valid JSON ({e})") from None
        return meta

    def _load_tokenizer(self, tok_file: Path, pad_multiple: int) -> None:
        """The Rust tokenizer, truncating at the model's ``max_seq_length`` and padding nothing
        itself (:meth:`feed` pads each batch to its length bucket with the padding ids kept here)."""
        from tokenizers import Tokenizer

        meta = self.metadata
        try:
            self.tokenizer = Tokenizer.from_file(str(tok_file))
        except Exception as e:  # the Rust side raises plain Exceptions
            raise UserError(f"{tok_file}: cannot read the tokenizer ({str(e).splitlines()[0]})") from None
        self.max_seq_length = int(meta.get("max_seq_length") or self._config_max_length() or 512)
        pad = self.tokenizer.padding or {}
        self.pad_id = int(pad.get("pad_id", meta.get("pad_id", 0)))
        self.pad_type_id = int(pad.get("pad_type_id", 0))
        self.tokenizer.no_padding()  # we pad per batch ourselves, by length bucket
        check_count("pad_multiple", pad_multiple, 0)
        self.pad_multiple = pad_multiple
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)

    def _load_graph(self, engine: str) -> None:
        """Read the graph's inputs and output and check them against the tokenizer (an OpenVINO IR
        through :meth:`_validate_ir`, an ONNX file through :meth:`_validate`)."""
        import onnx

        self.unsigned_weights = False  # set when the int8 weights were rewritten as uint8 for this CPU
        self._int8_weights = False
        if self.model_file.suffix == ".xml":  # an OpenVINO IR (e.g. the NNCF int8 one)
            if engine != "openvino":
                raise UserError(f"{self.model_file}: an OpenVINO IR runs on engine='openvino' only")
            self._validate_ir()
            return
        try:
            proto = onnx.load(str(self.model_file), load_external_data=False)
        except Exception as e:
            raise UserError(f"{self.model_file}: not a readable ONNX model ({str(e).splitlines()[0]})") from None
        self._validate(proto)
        self._int8_weights = any(n.op_type in INT8_WEIGHT_OPS for n in proto.graph.node)
        del proto

    def _plan_streams(self, threads: Optional[int], streams: Optional[int], unfused_attention_max: Optional[int],
                      providers: Optional[Sequence[str]], engine: str) -> None:
        """Check the count arguments and set how many batches run at once (:attr:`streams`)."""
        for name, value, least in (("threads", threads, 0), ("streams", streams, 1),
                                   ("unfused_attention_max", unfused_attention_max, 0)):
            if value is not None:
                check_count(name, value, least)
        cores = threads or os.cpu_count() or 1
        self.streams = min(streams or STREAMS, cores)
        if streams is None and engine == "onnxruntime" and list(providers or ["CPUExecutionProvider"]) != [
                "CPUExecutionProvider"]:
            self.streams = 1  # an accelerator runs one batch at a time better than halves
        self._pool: Optional[ThreadPoolExecutor] = None
        self._make_lone: Optional[Callable[[], Callable]] = None  # streams > 1: one stream on every thread
        self._lone: Optional[Callable] = None
        self._lone_lock = threading.Lock()

    def _open_onnxruntime(self, threads: Optional[int], providers: Optional[Sequence[str]], spin: bool) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = list(providers or ["CPUExecutionProvider"])
        missing = [p for p in providers if p not in available]
        if missing:
            raise UserError(f"onnxruntime provider(s) {', '.join(missing)} not available here "
                            f"(available: {', '.join(available)})")
        model = str(self.model_file)
        if self._int8_weights and providers == ["CPUExecutionProvider"] and int8_pairs_saturate():
            model = self._unsigned_int8(model)

        def session(intra: Optional[int]):
            so = ort.SessionOptions()
            so.log_severity_level = 3
            if intra:
                so.intra_op_num_threads = intra
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if not spin:  # idle workers sleep at once instead of spinning (a server between requests)
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            try:
                return ort.InferenceSession(model, so, providers=providers)
            except Exception as e:
                raise UserError(f"{self.model_file}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None

        # each stream's share of the threads (streams run concurrently: session.run is thread-safe)
        self.session = session(max(1, (threads or os.cpu_count() or 1) // self.streams)
                               if threads or self.streams > 1 else None)
        self._run_one = lambda feed: self.session.run([self.output_name], feed)[0]
        if self.streams > 1:  # one text cannot be split over streams: a session on every thread runs it
            self._make_lone = lambda: (lambda feed, s=session(threads or os.cpu_count() or 1):
                                       s.run([self.output_name], feed)[0])

    def _unsigned_int8(self, path: str) -> Union[str, bytes]:
        """The int8 graph with uint8 weights (:func:`fastembed_tune.export.quantize.unsigned_weights`), as
        bytes: this CPU's u8 x s8 GEMM saturates, its u8 x u8 one is exact. The file is not changed."""
        import onnx

        try:
            m = onnx.load(path)
            if not unsigned_weights(m):
                return path
            data = m.SerializeToString()
        except Exception:  # unreadable or over 2 GB: onnxruntime reports on the file itself
            return path
        self.unsigned_weights = True
        return data

    def _open_openvino(self, threads: Optional[int], precision: str) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise UserError("engine='openvino' needs the openvino package: pip install openvino") from None
        if precision not in ("bf16", "f32"):
            raise UserError(f"openvino precision must be 'bf16' or 'f32', got {precision!r}")
        latency = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            latency["INFERENCE_NUM_THREADS"] = threads
        try:
            core = ov.Core()
            model = self._ir if self.model_file.suffix == ".xml" else core.read_model(str(self.model_file))
            if len(model.outputs) > 1:  # only the output read: the portable graph's last_hidden_state is
                # not written out (the same vectors, for less work)
                model = ov.Model([model.output(self.output_name)], model.get_parameters(), model.friendly_name)
        except Exception as e:
            raise UserError(f"{self.model_file}: OpenVINO cannot load it ({str(e).splitlines()[0][:200]})") from None

        def compile_(config: Dict):
            try:
                return core.compile_model(model, "CPU", config)
            except Exception as e:
                raise UserError(f"{self.model_file}: OpenVINO cannot load it ({str(e).splitlines()[0][:200]})") from None

        def runner(config: Dict) -> Callable[[Dict[str, np.ndarray]], np.ndarray]:
            compiled, local, lock = compile_(config), threading.local(), threading.Lock()
            unfused: List = []  # the model without fused attention, compiled at the first short batch

            def model_for(tokens: int):
                if tokens > self.unfused_attention_max:
                    return compiled
                if not unfused:
                    with lock:
                        if not unfused:
                            unfused.append(compile_({**config, "SNIPPETS_MODE": "DISABLE"}))
                return unfused[0]

            def run_one(feed: Dict[str, np.ndarray]) -> np.ndarray:  # one infer request per calling thread
                chosen = model_for(next(iter(feed.values())).shape[1])
                requests = getattr(local, "requests", None)
                if requests is None:
                    requests = local.requests = {}
                got = requests.get(id(chosen))
                if got is None:
                    got = requests[id(chosen)] = (chosen.create_infer_request(), chosen.output(self.output_name))
                return np.array(got[0].infer(feed)[got[1]], dtype=np.float32, copy=True)

            run_one.compiled = compiled
            return run_one

        # NUM_STREAMS streams share INFERENCE_NUM_THREADS; one infer request each
        self._run_one = runner({**latency, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": self.streams}
                               if self.streams > 1 else latency)
        self.session = self._run_one.compiled
        if self.streams > 1:  # one text cannot be split over streams: one stream on every thread runs it
            self._make_lone = lambda: runner(latency)

    # ---- load-time checks -----------------------------------------------------------------
    def _config_max_length(self) -> Optional[int]:
        cfg = self.dir / "tokenizer_config.json"
        if cfg.is_file():
            try:
                v = json.loads(cfg.read_text()).get("model_max_length")
                return int(v) if v and int(v) < 100_000 else None
            except (ValueError, TypeError, json.JSONDecodeError):
                return None
        return None

    def _validate(self, proto) -> None:
        graph = proto.graph
        inits = {i.name for i in graph.initializer}
        names = [i.name for i in graph.input if i.name not in inits]
        where = self.model_file
        for need in ("input_ids", "attention_mask"):
            if need not in names:
                raise UserError(f"{where}: the graph has no '{need}' input (inputs: {', '.join(names)}); "
                                f"it does not match a tokenizer-fed embedding model")
        extra = [n for n in names if n not in KNOWN_INPUTS]
        if extra:
            raise UserError(f"{where}: the graph expects input(s) {', '.join(extra)} that the tokenizer "
                            f"does not produce (expected only {', '.join(KNOWN_INPUTS)})")
        self.input_names = names
        if len(graph.output) != 1 and "sentence_embedding" not in [o.name for o in graph.output]:
            raise UserError(f"{where}: expected one 'sentence_embedding' output, found "
                            f"{', '.join(o.name for o in graph.output)}")
        out = next((o for o in graph.output if o.name == "sentence_embedding"), graph.output[0])
        self.output_name = out.name
        dims = out.type.tensor_type.shape.dim
        if len(dims) != 2:
            raise UserError(f"{where}: output '{out.name}' has rank {len(dims)}, expected [batch, dim] "
                            f"(a pooled sentence embedding)")
        dim = dims[1].dim_value or None
        meta_dim = self.metadata.get("dim")
        if dim and meta_dim and int(meta_dim) != dim:
            raise UserError(f"{where}: the graph outputs {dim}-d embeddings but {METADATA_FILE} says {meta_dim}")
        self.dim = int(dim or meta_dim or 0) or None
        rows = embedding_rows(proto)
        vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        if rows is not None and vocab > rows:
            raise UserError(f"{where}: the tokenizer has {vocab} tokens but the graph's embedding matrix "
                            f"has {rows} rows; tokenizer.json belongs to another model")
        if rows is not None and self.pad_id >= rows:
            raise UserError(f"{where}: padding id {self.pad_id} is outside the graph's {rows}-row embedding")
        self.vocab_rows = rows

    def _validate_ir(self) -> None:
        """:meth:`_validate` for an OpenVINO IR: the inputs the tokenizer feeds and one pooled output."""
        try:
            import openvino as ov
        except ImportError:
            raise UserError(f"{self.model_file}: an OpenVINO IR needs the openvino package: "
                            f"pip install 'fastembed-tune[openvino]'") from None
        where = self.model_file
        try:
            self._ir = ov.Core().read_model(str(where))
        except Exception as e:
            raise UserError(f"{where}: OpenVINO cannot read it ({str(e).splitlines()[0][:200]})") from None
        names = [i.get_any_name() for i in self._ir.inputs]
        for need in ("input_ids", "attention_mask"):
            if need not in names:
                raise UserError(f"{where}: the graph has no '{need}' input (inputs: {', '.join(names)})")
        extra = [n for n in names if n not in KNOWN_INPUTS]
        if extra:
            raise UserError(f"{where}: the graph expects input(s) {', '.join(extra)} that the tokenizer "
                            f"does not produce (expected only {', '.join(KNOWN_INPUTS)})")
        self.input_names = names
        outs = {n: o for o in self._ir.outputs for n in o.get_names()}
        if "sentence_embedding" not in outs:
            raise UserError(f"{where}: no 'sentence_embedding' output (outputs: {', '.join(sorted(outs))})")
        self.output_name = "sentence_embedding"
        shape = outs["sentence_embedding"].get_partial_shape()
        dim = shape[1].get_length() if shape.rank.get_length() == 2 and shape[1].is_static else None
        meta_dim = self.metadata.get("dim")
        if dim and meta_dim and int(meta_dim) != dim:
            raise UserError(f"{where}: the graph outputs {dim}-d embeddings but {METADATA_FILE} says {meta_dim}")
        self.dim = int(dim or meta_dim or 0) or None
        self.vocab_rows = None

    # ---- inference ---------------------------------------------------------------------------
    def padded_length(self, tokens: int) -> int:
        """The length a batch whose longest text has ``tokens`` tokens is padded to: the next
        multiple of ``pad_multiple``, at most ``max(tokens, max_seq_length)`` (``tokens`` itself
        when ``pad_multiple`` is 0).

        >>> e = OnnxEmbedder("/tmp/minilm_onnx")                                 # doctest: +SKIP
        >>> e.padded_length(3), e.padded_length(4), e.padded_length(5), e.padded_length(255)  # doctest: +SKIP
        (4, 4, 8, 256)
        """
        m = self.pad_multiple
        return max(tokens, min(-(-tokens // m) * m, self.max_seq_length)) if m else tokens

    def feed(self, encodings: Sequence) -> Dict[str, np.ndarray]:
        """The graph's input dict for tokenizer ``encodings`` (one batch, padded with the tokenizer's
        padding id to :meth:`padded_length` of its longest; only the inputs this graph takes).

        >>> e = OnnxEmbedder("/tmp/minilm_onnx", pad_multiple=1)                 # doctest: +SKIP
        >>> e.feed(e.tokenizer.encode_batch(["a", "b c"]))["attention_mask"]     # doctest: +SKIP
        array([[1, 1, 1, 0],
               [1, 1, 1, 1]])
        """
        if not len(encodings):
            raise UserError("feed() needs at least one encoding")
        n, t = len(encodings), self.padded_length(max(len(e.ids) for e in encodings))
        ids = np.full((n, t), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, t), dtype=np.int64)
        types = np.full((n, t), self.pad_type_id, dtype=np.int64)
        for i, e in enumerate(encodings):
            k = len(e.ids)
            ids[i, :k] = e.ids
            mask[i, :k] = 1
            types[i, :k] = e.type_ids
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {k: feed[k] for k in self.input_names}

    def run(self, feed: Dict[str, np.ndarray], split: bool = True) -> np.ndarray:
        """The graph's output (float32 ``[batch, dim]``) for one input dict (:meth:`feed`,
        :meth:`tokenize`), whichever engine runs it: use this, not ``session.run``, which only
        onnxruntime has. The rows are cut over the streams (``split=False``: the whole batch on one
        stream, the calling thread's: for a caller that runs ``streams`` batches at once itself).

        >>> e = OnnxEmbedder("/tmp/minilm_onnx")                    # doctest: +SKIP
        >>> e.run(e.tokenize(["a", "b c"])).shape                   # doctest: +SKIP
        (2, 384)
        """
        n = len(next(iter(feed.values())))
        if n == 1 and split and self._make_lone is not None:
            return self._lone_runner()(feed)
        if self.streams == 1 or n < 2 or not split:
            return self._run_one(feed)
        parts = np.array_split(np.arange(n), min(self.streams, n))  # rows are independent: split the batch
        outs = list(self._streams().map(lambda rows: self._run_one({k: v[rows] for k, v in feed.items()}), parts))
        return np.concatenate(outs)

    def _lone_runner(self) -> Callable:
        """The graph on one stream of every thread, made at its first use (one text at a time: a
        server's lone query cannot be split over streams, and runs sooner on every thread than on one
        stream's share of them)."""
        with self._lone_lock:
            if self._lone is None:
                self._lone = self._make_lone()
            return self._lone

    def _streams(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="fastembed-tune-stream")
        return self._pool

    def encodings(self, texts: Sequence[str]) -> list:
        """The tokenizer's encodings of ``texts`` (special tokens added, truncated to
        ``max_seq_length``), without character offsets, which nothing here reads (``encode_batch_fast``:
        less work than ``encode_batch``, the same ids).

        >>> [len(x.ids) for x in OnnxEmbedder("/tmp/minilm_onnx").encodings(["a", "b c"])]  # doctest: +SKIP
        [3, 4]
        """
        fast = getattr(self.tokenizer, "encode_batch_fast", None)  # tokenizers >= 0.20
        texts = list(texts)
        try:
            return (fast or self.tokenizer.encode_batch)(texts, add_special_tokens=True)
        except TypeError:  # the tokenizer's words for a lone surrogate: name the text (looked for only now)
            check_unicode(texts)
            raise

    def tokenize(self, texts: Sequence[str]) -> Dict[str, np.ndarray]:
        """Tokenise ``texts`` (truncated to ``max_seq_length``) into ONE padded batch, in input order:
        the dict ``self.session.run`` takes (no length sorting, no batching; see :meth:`embed`).

        >>> OnnxEmbedder("/tmp/minilm_onnx").tokenize(["a", "b c"])["input_ids"].shape  # doctest: +SKIP
        (2, 4)
        """
        texts = _text_list(texts, "tokenize")
        if not texts:
            raise UserError("tokenize() needs at least one text")
        return self.feed(self.encodings(texts))

    def embed(self, texts: Sequence[str], batch_size: int = 64, show_progress_bar: bool = False,
              check_finite: bool = True) -> np.ndarray:
        """Embed texts as float32 ``[n, dim]`` in input order (batches of one length bucket each,
        longest first: :func:`bucket_batches`).
        A NaN/Inf row is refused with a ``UserError`` (``check_finite=False``: returned as is, for
        the export's parity check, which refuses it itself).

        >>> OnnxEmbedder("/tmp/minilm_onnx").embed(["a", "b c"], batch_size=1).dtype  # doctest: +SKIP
        dtype('float32')
        """
        texts = _text_list(texts, "embed")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not texts:
            return np.empty((0, self.dim or 0), dtype=np.float32)
        encodings = self.encodings(texts)
        lengths = [len(e.ids) for e in encodings]
        buckets = [self.padded_length(n) for n in lengths] if self.pad_multiple else [0] * len(lengths)
        batches = bucket_batches(buckets, lengths, batch_size)
        out: Optional[np.ndarray] = None
        from tqdm.auto import tqdm

        def one(idx: np.ndarray) -> np.ndarray:  # a lone batch is cut over the streams, not left on one
            feed = self.feed([encodings[i] for i in idx])
            return self.run(feed) if len(batches) == 1 and len(idx) > 1 else self._run_one(feed)

        # whole batches, `streams` at a time, in order (map yields results in submission order)
        results = map(one, batches) if self.streams == 1 or len(batches) < 2 else self._streams().map(one, batches)
        for idx, emb in tqdm(zip(batches, results), total=len(batches), desc="embed (onnx)", unit="batch",
                             disable=not show_progress_bar):
            if out is None:
                out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
            out[idx] = emb
        if check_finite:
            check_finite_rows(out, texts)
        return out

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress_bar: bool = False,
               desc: str = "embed (onnx)") -> np.ndarray:
        """sentence-transformers-style alias of :meth:`embed` (so evaluation code takes either).

        >>> OnnxEmbedder("/tmp/minilm_onnx").encode(["a"]).shape  # doctest: +SKIP
        (1, 384)
        """
        return self.embed(texts, batch_size=batch_size, show_progress_bar=show_progress_bar)

    def __repr__(self) -> str:
        return f"OnnxEmbedder({str(self.model_file)!r}, dim={self.dim}, max_seq_length={self.max_seq_length})"
