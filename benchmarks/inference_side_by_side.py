"""Inference throughput side by side, in ONE process, same texts, same batch size, same threads:
sentence-transformers encode (PyTorch fp32), the same model in bf16 (``model.to(torch.bfloat16)``),
OpenVINO reading our portable ONNX as sentence-transformers' OpenVINO backend runs it (bf16 where
the CPU does bf16 natively, else f32; per-batch padding, one batch at a time, ``last_hidden_state``
pooled outside the graph; needs the ``openvino`` package), sentence-transformers' own ONNX int8
(only where optimum is installed), our ONNX fp32 padded per batch as the peers pad (to each batch's
longest text, one stream), and as shipped (``OnnxEmbedder``'s defaults: batches of one length
bucket of 4 tokens, two batches at a time where there are 2+ threads): the same OpenVINO graph,
our ONNX fp32 and int8, the OpenVINO int8 IR where the export has one (``export --openvino-int8``)
(and, with --student DIR, that student exported to int8). The CPU's name
and features are printed above the table: a ratio holds on that CPU, no other. Below the table:
what :func:`fastembed_tune.embed.precision.choose_precision` ships on this CPU and its ratio to the best
peer row. Sentences/second (best and median of --repeats runs, rows interleaved; on a shared
machine whose load comes and goes, read both), the ratio to
sentence-transformers, and the cosine of each row's embeddings to sentence-transformers' (mean and min
over all texts; for a student of the same width this is its distance from the teacher). The last
verdict line pairs the runs: in each round, the fastest peer's time over the shipped path's time in
that round, and the median of those ratios (a spike that slows one round slows both sides of it).

    python benchmarks/inference_side_by_side.py [--n 2000] [--texts passages|queries] [--batch-size 64] [--threads 2]
                                                [--onnx-dir DIR] [--student DIR] [--repeats 8]

--onnx-dir reuses an export of the built-in model made with quantize="int8" (else one is made in a
temp dir; export time is printed but not part of the throughput figures).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


def _interleaved(rows, texts, batch_size, repeats):
    """Best-of-``repeats`` and median wall time per row, rows run round-robin so load drift on a
    shared machine hits every row alike, each round starting one row later (on the AMX Xeon, of two
    IDENTICAL OpenVINO rows run back to back, the second ran 1.16-1.21x the first, paired median of
    12 rounds: a fixed order favours whichever row follows which). Returns
    ([(label, best seconds, median seconds, embeddings)], {label: [seconds of each round]})."""
    for _, fn in rows:
        fn(texts[:batch_size], batch_size)  # warm-up: sessions, allocator, kernels
    times: dict = {label: [] for label, _ in rows}
    out = {}
    for r in range(repeats):
        for label, fn in rows[r % len(rows):] + rows[:r % len(rows)]:
            t0 = time.perf_counter()
            out[label] = fn(texts, batch_size)
            times[label].append(time.perf_counter() - t0)
    return [(label, min(times[label]), statistics.median(times[label]), out[label]) for label, _ in rows], times


class OpenVinoAsSentenceTransformers:
    """What ``SentenceTransformer(..., backend="openvino")`` does (optimum-intel's
    ``OVModelForFeatureExtraction``): the graph's ``last_hidden_state`` only, compiled with the
    LATENCY hint (one request, every thread), texts sorted longest first (characters), each batch
    tokenised by the model's own tokenizer and padded to its longest, then mean pooling and L2
    normalisation outside the graph. Run on our portable ONNX graph (no optimum here)."""

    def __init__(self, portable: str, st, threads: int, precision: str):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(portable)
        model = ov.Model([model.output("last_hidden_state")], model.get_parameters(), "peer")
        compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
                                                     "INFERENCE_PRECISION_HINT": precision})
        self.request, self.inputs = compiled.create_infer_request(), [i.get_any_name() for i in compiled.inputs]
        self.tokenizer, self.max_length = st.tokenizer, st.max_seq_length

    def embed(self, texts, batch_size):
        import numpy as np

        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = None
        for s in range(0, len(texts), batch_size):
            idx = order[s:s + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="np")
            hidden = next(iter(self.request.infer({k: enc[k] for k in self.inputs}).values()))
            mask = enc["attention_mask"][..., None].astype(np.float32)
            v = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
            v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            if out is None:
                out = np.empty((len(texts), v.shape[1]), dtype=np.float32)
            out[idx] = v
        return out


def paired_ratios(times: dict, row: str, peers: list) -> list:
    """Per round: the fastest peer's seconds over ``row``'s seconds in that same round (rows of one
    round run back to back, so a load spike that slows a whole round cancels out of its ratio).

    >>> paired_ratios({"a": [2.0, 4.0], "p": [3.0, 8.0], "q": [2.5, 9.0]}, "a", ["p", "q"])
    [1.25, 2.0]
    """
    return [min(times[p][i] for p in peers) / t for i, t in enumerate(times[row])]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--texts", choices=("passages", "queries"), default="passages",
                    help="the sample's corpus passages, or its training queries (short texts, repeated up to --n)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--onnx-dir", default=None)
    ap.add_argument("--student", default=None, help="a student model directory: exported to int8, one more row")
    ap.add_argument("--repeats", type=int, default=8, help="best and median of this many interleaved runs per row")
    a = ap.parse_args()

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from fastembed_tune.core.cpu import cpu_description, cpu_features
    from fastembed_tune.core.cpu import float_precision as run_precision
    from fastembed_tune.embed.layout import INT8_FILE, MODEL_FILE, OV_INT8_FILE, PORTABLE_FILE
    from fastembed_tune.embed.model import default_model_path
    from fastembed_tune.embed.onnx_embedder import OnnxEmbedder
    from fastembed_tune.embed.precision import choose_precision
    from fastembed_tune.export.onnx import export_onnx

    print(f"CPU: {cpu_description()}")

    torch.set_num_threads(a.threads)
    source, field = {"passages": ("corpus.jsonl", "text"), "queries": ("train.jsonl", "query")}[a.texts]
    with open(os.path.join(os.path.dirname(__file__), "..", "fastembed_tune", "sample_data", source)) as f:
        texts = [json.loads(line)[field] for line in f]
    texts = (texts * -(-a.n // len(texts)))[: a.n]

    work = tempfile.mkdtemp(prefix="bench-inference-")
    onnx_dir = a.onnx_dir
    if onnx_dir is None:
        onnx_dir = os.path.join(work, "minilm")
        t0 = time.perf_counter()
        export_onnx(default_model_path(), onnx_dir, quantize="int8")
        print(f"export (fp32 + int8 with parity checks): {time.perf_counter() - t0:.1f}s")
    student_dir = None
    if a.student:
        student_dir = os.path.join(work, "student")
        export_onnx(a.student, student_dir, quantize="int8")

    st = SentenceTransformer(default_model_path(), device="cpu")
    st16 = SentenceTransformer(default_model_path(), device="cpu").to(torch.bfloat16)
    runners = [("sentence-transformers encode (PyTorch fp32)",
                lambda t, b: st.encode(t, batch_size=b, convert_to_numpy=True)),
               ("PyTorch bf16 (model.to(torch.bfloat16))",
                lambda t, b: st16.encode(t, batch_size=b, convert_to_tensor=True).float().numpy())]
    peers = [label for label, _ in runners]
    bf16_native = bool({"amx_bf16", "avx512_bf16"} & cpu_features())
    portable = os.path.join(onnx_dir, PORTABLE_FILE)
    try:
        ov_precision = "bf16" if bf16_native else "f32"
        # a peer as sentence-transformers' OpenVINO backend runs it (see OpenVinoAsSentenceTransformers)
        ov = OpenVinoAsSentenceTransformers(portable, st, a.threads, ov_precision)
        runners.append((f"OpenVINO {ov_precision} (reads {PORTABLE_FILE})", ov.embed))
        peers.append(runners[-1][0])
        ours = OnnxEmbedder(portable, threads=a.threads, engine="openvino", precision=ov_precision)
        runners.append((f"fastembed-tune OpenVINO {ov_precision} (portable graph)", ours.embed))
    except Exception as e:  # not installed, or an export made before onnx/model.onnx existed
        print(f"(OpenVINO row skipped: {str(e).splitlines()[0][:120]})")
    try:
        st_q = SentenceTransformer(default_model_path(), device="cpu", backend="onnx",
                                   model_kwargs={"file_name": "onnx/model_qint8_avx512_vnni.onnx"})
        runners.append(("sentence-transformers ONNX qint8",
                        lambda t, b: st_q.encode(t, batch_size=b, convert_to_numpy=True)))
        peers.append(runners[-1][0])
    except Exception as e:  # needs optimum[onnxruntime] and the hub's ONNX files
        print(f"(sentence-transformers ONNX qint8 row skipped: {str(e).splitlines()[0][:120]})")
    runners.append(("fastembed-tune ONNX fp32, per-batch padding, 1 stream",
                    OnnxEmbedder(onnx_dir, threads=a.threads, pad_multiple=0, streams=1).embed))
    for label, path in (("fastembed-tune ONNX fp32", os.path.join(onnx_dir, MODEL_FILE)),
                        ("fastembed-tune ONNX int8", os.path.join(onnx_dir, INT8_FILE))):
        runners.append((label, OnnxEmbedder(path, threads=a.threads).embed))  # length buckets of 4
    ov_int8 = os.path.join(onnx_dir, OV_INT8_FILE)
    if os.path.isfile(ov_int8):  # made by export --openvino-int8
        runners.append((f"fastembed-tune OpenVINO int8 (NNCF, {run_precision()} rest)",
                        OnnxEmbedder(ov_int8, threads=a.threads, engine="openvino", precision=run_precision()).embed))
    if student_dir:
        name = os.path.basename(os.path.normpath(a.student))
        runners.append((f"student ONNX int8 ({name})",
                        OnnxEmbedder(os.path.join(student_dir, INT8_FILE), threads=a.threads).embed))
    choice = choose_precision(onnx_dir, threads=a.threads, cache=False)  # measured now, not remembered
    same = {"fp32": "fastembed-tune ONNX fp32", "int8": "fastembed-tune ONNX int8",
            "bf16": "fastembed-tune OpenVINO bf16 (portable graph)",
            "fp32-openvino": "fastembed-tune OpenVINO f32 (portable graph)",
            "int8-openvino": next((label for label, _ in runners if "OpenVINO int8" in label), None)}
    shipped = same.get(choice.candidate) if same.get(choice.candidate) in dict(runners) else None
    if shipped is None:  # the choice is none of the rows above: its own row
        shipped = f"shipped: {choice.precision} ({choice.engine}, {choice.file.relative_to(onnx_dir)})"
        runners.append((shipped, choice.load().embed))
    with torch.inference_mode():
        rows, times = _interleaved(runners, texts, a.batch_size, a.repeats)
    ref = rows[0][3]

    base = len(texts) / rows[0][1]
    print(f"\n{len(texts)} texts ({a.texts}) from sample_data/{source}, batch {a.batch_size}, {a.threads} threads, "
          f"max_seq_length {st.max_seq_length}, best and median of {a.repeats} interleaved runs")
    print(f"{'':54s} {'sent/s':>8s} {'ratio':>6s} {'median':>8s} {'ratio':>6s} {'cos mean':>9s} {'cos min':>8s}")
    med_base = len(texts) / rows[0][2]
    for label, dt, med, out in rows:
        sps, msps = len(texts) / dt, len(texts) / med
        if out.shape == ref.shape:
            c = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
            cos = f"{c.mean():9.5f} {c.min():8.5f}"
        else:
            cos = f"{'(other model)':>18s}"
        mark = "  <- shipped here" if label == shipped else ""
        print(f"{label:54s} {sps:8.1f} {sps / base:5.2f}x {msps:8.1f} {msps / med_base:5.2f}x {cos}{mark}")
    print(f"\n{choice.description}")
    note = " (the shipped path IS that peer's engine and graph)" if shipped in peers else ""
    for what, col in (("best", 1), ("median", 2)):
        speed = {row[0]: len(texts) / row[col] for row in rows}
        best_peer = max(peers, key=speed.get)
        print(f"shipped path ({what} run) {speed[shipped]:.1f} sent/s = {speed[shipped] / speed[best_peer]:.2f}x "
              f"the best peer ({best_peer}, {speed[best_peer]:.1f} sent/s){note}; target >= 1.30x")
    r = sorted(paired_ratios(times, shipped, peers))
    print(f"shipped path (paired, per round vs that round's fastest peer) median {statistics.median(r):.2f}x, "
          f"range {r[0]:.2f}x..{r[-1]:.2f}x over {len(r)} rounds; target >= 1.30x")


if __name__ == "__main__":
    main()
