"""Command line: argument parsing and nothing else. Each subcommand calls one stage function.

A user mistake (``UserError``) prints one line ``error: ...`` and exits with code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import nullcontext
from typing import Optional, Sequence

from fastembed_tune.core.atomic import check_output, output_lock
from fastembed_tune.core.errors import EXIT_NO_GAIN, NoSignificantGain, UserError


def _cmd_mine(a: argparse.Namespace) -> int:
    from fastembed_tune.core.distributed import init_from_env, launch_rank
    from fastembed_tune.data.readers import read_corpus, read_pairs
    from fastembed_tune.embed.model import EmbeddingModel
    from fastembed_tune.mining.common import format_summary
    from fastembed_tune.mining.exact import mine_to_file, negatives_warning

    check_output(a.output, "file")
    if a.summary:
        check_output(a.summary, "file", "--summary")
    if a.stream:
        summary = _mine_streamed(a)
    else:
        with output_lock(a.output) if launch_rank() == 0 else nullcontext():
            pairs = read_pairs(a.pairs)
            corpus = list(read_corpus(a.corpus).values()) if a.corpus else None
            model = EmbeddingModel.load(a.model)
            init_from_env()
            summary = mine_to_file(pairs, a.output, model, corpus, summary_path=a.summary,
                                   num_negatives=a.num_negatives, skip_top=a.skip_top, max_ratio=a.max_ratio,
                                   batch_size=a.batch_size, threads=a.threads, show_progress_bar=not a.quiet,
                                   scan=a.scan)
        if summary is None:  # another rank of a torchrun job: rank 0 reports
            return 0
    print(format_summary(summary))
    warning = negatives_warning(summary)
    if warning:
        print(warning, file=sys.stderr)
    print(f"wrote {summary['pairs']} rows to {a.output}")
    return 0


def _mine_streamed(a: argparse.Namespace) -> dict:
    """``mine --stream``: :func:`~fastembed_tune.mining.stream.mine_stream`; returns its summary."""
    from fastembed_tune.core.atomic import write_json
    from fastembed_tune.embed.model import EmbeddingModel
    from fastembed_tune.mining.stream import mine_stream

    with output_lock(a.output):
        summary = mine_stream(a.pairs, a.output, EmbeddingModel.load(a.model), a.corpus,
                              num_negatives=a.num_negatives, skip_top=a.skip_top, max_ratio=a.max_ratio,
                              batch_size=a.batch_size, threads=a.threads, window=a.stream_window, scan=a.scan,
                              show_progress_bar=not a.quiet)
        if a.summary:
            write_json(a.summary, summary)
    return summary


def _relaunch_with_torchrun(argv: Sequence[str], nproc: int) -> int:
    """``--nproc N``: run this same command under PyTorch's launcher (torchrun), N processes."""
    import subprocess

    rest = []
    skip = False
    for i, x in enumerate(argv):
        if skip:
            skip = False
            continue
        if x == "--nproc":
            skip = True
            continue
        if x.startswith("--nproc="):
            continue
        rest.append(x)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "fastembed_tune", *rest]
    return subprocess.call(cmd)


def _cmd_train(a: argparse.Namespace) -> int:
    from fastembed_tune.data.readers import read_pairs
    from fastembed_tune.training.train import TrainConfig, train

    check_output(a.output, "dir")
    if a.stream:
        from fastembed_tune.data.stream import PairStream

        pairs = PairStream(a.pairs, window=a.stream_window, validation_share=a.validation_share, seed=a.seed,
                           show_progress_bar=not a.quiet)
    else:
        pairs = read_pairs(a.pairs)
    cfg = TrainConfig(output_dir=a.output, model=a.model, epochs=a.epochs, max_steps=a.max_steps,
                      batch_size=a.batch_size, lr=a.lr, warmup_ratio=a.warmup_ratio, seed=a.seed, loss=a.loss,
                      scale=a.scale, symmetric=a.symmetric, mini_batch_size=a.mini_batch_size, num_negatives=a.num_negatives,
                      checkpoint_every=a.checkpoint_every, keep_checkpoints=a.keep_checkpoints, resume=a.resume,
                      replay=a.replay, replay_ratio=a.replay_ratio, max_seq_length=a.max_seq_length,
                      bf16=PRECISIONS[a.precision], show_progress_bar=not a.quiet,
                      validation_share=a.validation_share, eval_every=a.eval_every, patience=a.patience)
    summary = train(pairs, cfg)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from fastembed_tune.data.readers import load_eval
    from fastembed_tune.embed.loader import load_embedder

    if a.output:
        check_output(a.output, "dir")
    evalset = load_eval(a.data, a.corpus)
    models = [load_embedder(path, precision=a.precision) for path in a.model or [None]]  # all checked before any work
    for m in models:
        if getattr(m, "choice", None) is not None:
            print(f"{m.choice.file}: {m.choice.description}")
    with output_lock(a.output) if a.output else nullcontext():
        return _eval_locked(a, evalset, models)


def _eval_locked(a: argparse.Namespace, evalset, models) -> int:
    from fastembed_tune.evaluation.metrics import evaluate, format_table, write_report

    rows = []
    for path, m in zip(a.model or [None], models):
        res = evaluate(m, evalset, batch_size=a.batch_size, show_progress_bar=not a.quiet)
        rows.append((path or "built-in all-MiniLM-L6-v2", res["metrics"]))
    print(format_table(rows))
    if a.output:
        write_report(a.output, rows, "fastembed-tune evaluation")
        print(f"report: {os.path.join(a.output, 'report.md')}")
    return 0


def _cmd_run(a: argparse.Namespace) -> int:
    from fastembed_tune.run.pipeline import run_pipeline

    run_pipeline(a.output, model=a.model, train_path=a.train, test_path=a.test, corpus_path=a.corpus,
                 epochs=a.epochs, max_steps=a.max_steps, batch_size=a.batch_size, lr=a.lr,
                 num_negatives=a.num_negatives, max_ratio=a.max_ratio, seed=a.seed,
                 max_seq_length=a.max_seq_length, train_max_seq_length=a.train_max_seq_length,
                 symmetric=a.symmetric, distill=not a.no_distill, distill_layers=a.distill_layers,
                 distill_epochs=a.distill_epochs, distill_lr=a.distill_lr, distill_kl_weight=a.distill_kl_weight,
                 export=not a.no_export, openvino_int8=False if a.no_openvino_int8 else None,
                 bf16=PRECISIONS[a.precision], show_progress_bar=not a.quiet,
                 gate=not a.allow_no_gain, validation_share=a.validation_share, eval_every=a.eval_every,
                 patience=a.patience, guard=not a.no_guard, max_forgetting=a.max_forgetting)
    return 0


def _cmd_distill(a: argparse.Namespace) -> int:
    from fastembed_tune.data.readers import read_corpus, read_pairs
    from fastembed_tune.training.distill import distill

    check_output(a.output, "dir")
    texts: list[str] = []
    for path in a.pairs or []:
        for p in read_pairs(path):
            texts += [p.query, p.positive, *p.negatives]
    for path in a.corpus or []:
        texts += list(read_corpus(path).values())
    if not texts:
        raise UserError("give the texts to distil on: --pairs FILE and/or --corpus FILE")
    summary = distill(a.teacher, texts, a.output, student_dir=a.student, layers=a.layers, epochs=a.epochs,
                      batch_size=a.batch_size, lr=a.lr, kl_weight=a.kl_weight, hidden_weight=a.hidden_weight,
                      seed=a.seed, max_seq_length=a.max_seq_length, bf16=PRECISIONS[a.precision],
                      show_progress_bar=not a.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from fastembed_tune.data.readers import read_texts
    from fastembed_tune.embed.model import default_model_path
    from fastembed_tune.export.onnx import export_onnx

    check_output(a.output, "dir")
    calibration = list(read_texts(a.calibration_texts).values()) if a.calibration_texts else None
    info = export_onnx(a.model or default_model_path(), a.output, quantize=a.quantize, opset=a.opset,
                       optimize=not a.no_optimize, allow_fp32_int8=a.allow_fp32_int8, calibration_texts=calibration,
                       openvino_int8=a.openvino_int8)
    par = info["parity"]
    line = f"fp32 min cosine {par['fp32']['min_cosine']:.5f}"
    if "int8" in par:
        line += f", int8 min cosine {par['int8']['min_cosine']:.5f}"
    print(f"wrote {info['out_dir']} ({line})")
    return 0


def _cmd_embed(a: argparse.Namespace) -> int:
    from fastembed_tune.data.readers import read_texts
    from fastembed_tune.data.stream import CorpusStream
    from fastembed_tune.embed.layout import OUTPUT_SUFFIXES
    from fastembed_tune.embed.loader import load_embedder
    from fastembed_tune.embed.writers import embed_stream_to_file, write_embeddings

    check_output(a.output, "file")
    if os.path.splitext(a.output)[1] not in OUTPUT_SUFFIXES:
        raise UserError(f"--output {a.output}: must end in {' or '.join(OUTPUT_SUFFIXES)}")
    docs = CorpusStream(a.input, window=a.stream_window, show_progress_bar=not a.quiet) if a.stream \
        else read_texts(a.input)
    adapter = None
    if a.adapter:
        from fastembed_tune.adapt.adapter import Adapter

        adapter = Adapter(a.adapter)  # checked before any embedding
    if a.stream:
        with output_lock(a.output):
            model = load_embedder(a.model, a.precision, int8=a.int8, threads=a.threads, log=print)
            n, dim = embed_stream_to_file(model, docs.windows(), len(docs), a.output, batch_size=a.batch_size,
                                          transform=(lambda e: adapter.apply(e, a.adapter_side)) if adapter else None,
                                          show_progress_bar=not a.quiet)
        print(f"wrote {n} x {dim} embeddings to {a.output}")
        return 0
    with output_lock(a.output):
        model = load_embedder(a.model, a.precision, int8=a.int8, threads=a.threads, log=print)
        emb = model.encode(list(docs.values()), batch_size=a.batch_size, show_progress_bar=not a.quiet)
        if adapter is not None:
            emb = adapter.apply(emb, a.adapter_side)
        write_embeddings(a.output, list(docs), emb)
    print(f"wrote {emb.shape[0]} x {emb.shape[1]} embeddings to {a.output}")
    return 0


def _cmd_adapt(a: argparse.Namespace) -> int:
    from fastembed_tune.adapt.adapter import AdapterConfig, adapt, open_source

    check_output(a.output, "dir")
    source = open_source(a.embeddings, api_base=a.api_base, api_model=a.api_model, api_dimensions=a.api_dimensions,
                         api_batch_size=a.api_batch_size, api_concurrency=a.api_concurrency,
                         api_max_retries=a.api_max_retries, api_tpm=a.api_tpm, store_dir=a.store,
                         max_seq_length=a.max_seq_length)
    cfg = AdapterConfig(kind=a.kind, sides=a.sides, rank=a.rank, hidden=a.hidden, epochs=a.epochs,
                        batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay, num_negatives=a.num_negatives,
                        max_ratio=a.max_ratio, remine_every=a.remine_every, scale=a.scale,
                        validation_share=a.validation_share, patience=a.patience, seed=a.seed,
                        average=not a.no_average)
    adapt(a.output, a.pairs, source, corpus_path=a.corpus, test_path=a.test, cfg=cfg, gate=not a.allow_no_gain,
          show_progress_bar=not a.quiet)
    return 0


def _cmd_serve(a: argparse.Namespace) -> int:
    from fastembed_tune.serve.app import serve

    return serve(a.model, int8=a.int8, host=a.host, port=a.port, name=a.name, threads=a.threads or None,
                 max_batch_tokens=a.max_batch_tokens, max_batch_size=a.max_batch_size, max_queue=a.max_queue,
                 max_window_tokens=a.max_window_tokens,
                 drain_timeout=a.drain_timeout, cache_dir=a.cache_dir, adapter=a.adapter, adapter_side=a.adapter_side,
                 precision=a.precision)


PRECISIONS = {"auto": None, "fp32": False, "bf16": True}  # --precision -> the bf16 setting (None = auto)


def add_precision_arg(p: argparse.ArgumentParser) -> None:
    """``--precision auto|fp32|bf16``; :data:`PRECISIONS` maps it to the trainer's and distiller's ``bf16``.

    >>> p = argparse.ArgumentParser(); add_precision_arg(p)
    >>> PRECISIONS[p.parse_args(["--precision", "fp32"]).precision], PRECISIONS[p.parse_args([]).precision]
    (False, None)
    """
    p.add_argument("--precision", choices=list(PRECISIONS), default="auto",
                   help="auto: bf16 autocast where the hardware has it (CUDA, AVX512-BF16/AMX CPUs), else fp32; "
                        "for the training steps and for the PyTorch models' embeddings (validation, and run's "
                        "evaluations); ONNX graphs always run as exported")


def add_export_precision_arg(p: argparse.ArgumentParser) -> None:
    """``--precision auto|fp32|int8|bf16`` for what runs an ONNX export (``embed``, ``eval``, ``serve``).

    >>> p = argparse.ArgumentParser(); add_export_precision_arg(p); p.parse_args([]).precision
    'auto'
    """
    p.add_argument("--precision", choices=["auto", "fp32", "int8", "bf16"], default="auto",
                   help="an ONNX export directory runs at: auto (the fastest that passes its parity gate on this "
                        "CPU, measured once and cached; the choice is printed), fp32 (model.onnx, or "
                        "onnx/model.onnx on OpenVINO where that is faster and the CPU has no bf16), int8 "
                        "(model_int8.onnx) or bf16 (onnx/model.onnx on OpenVINO; AMX/AVX512-BF16 CPUs, the "
                        "openvino extra); a PyTorch model directory ignores auto")


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _ratio(s: str) -> float:
    v = float(s)
    if not (v > 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {s}")
    return v


def _share(s: str) -> float:
    v = float(s)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {s}")
    return v


def _forgetting(s: str) -> Optional[float]:
    if s.strip().lower() in ("off", "none"):
        return None
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1) or 'off', got {s}") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1) or 'off', got {s}")
    return v


def _add_training_args(p: argparse.ArgumentParser, lr: float, num_negatives: Optional[int]) -> None:
    """The training flags ``train`` and ``run`` share (``lr`` and ``num_negatives``: the command's defaults)."""
    p.add_argument("--epochs", type=_positive_int, default=1)
    p.add_argument("--max-steps", type=_positive_int, default=None, help="overrides --epochs")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--num-negatives", type=_nonneg_int, default=num_negatives,
                   help="hard-negative columns used per pair" + (
                       " (default: 1 where the pairs have negatives; asking for more than they have warns)"
                       if num_negatives is None else ""))
    p.add_argument("--symmetric", action="store_true", help="add the document->query direction (CLIP/GTE)")
    p.add_argument("--validation-share", type=_share, default=0.1,
                   help="share of the training queries held out to pick the best model and stop early "
                        "(at most 500 queries; 0 = no validation, train on everything)")
    p.add_argument("--eval-every", type=_positive_int, default=None, help="steps between validations (default: 4 a run)")
    p.add_argument("--patience", type=_positive_int, default=2,
                   help="stop after this many validations without gain")
    add_precision_arg(p)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--quiet", action="store_true")


def _mine_parser(sub) -> None:
    """The ``mine`` subcommand's flags."""
    m = sub.add_parser("mine", help="mine hard negatives for (query, positive) pairs")
    m.add_argument("--pairs", required=True, help="training pairs: JSONL/CSV/Parquet/OpenAI JSONL or a BEIR folder")
    m.add_argument("--corpus", help="candidate documents (JSONL id/text, TXT, CSV, Parquet); default: all positives")
    m.add_argument("--model", help="sentence-transformers model directory (default: built-in all-MiniLM-L6-v2)")
    m.add_argument("--output", "-o", required=True, help="output JSONL with a 'negatives' list per row")
    m.add_argument("--num-negatives", type=_positive_int, default=5)
    m.add_argument("--skip-top", type=_nonneg_int, default=0, help="skip the closest N candidates")
    m.add_argument("--max-ratio", type=_ratio, default=None,
                   help="drop candidates scoring above RATIO x the positive's score (e.g. 0.95)")
    m.add_argument("--batch-size", type=_positive_int, default=64)
    m.add_argument("--threads", type=_nonneg_int, default=0)
    m.add_argument("--scan", choices=["auto", "fp32", "int8"], default="auto",
                   help="the top-k scan: int8 candidates + exact fp32 rescoring (the same negatives, faster on "
                        "VNNI/AVX2 CPUs), fp32, or auto (int8 on VNNI or AVX2 CPUs from 20,000 corpus rows)")
    m.add_argument("--stream", action="store_true",
                   help="read --pairs (.jsonl/.parquet) and --corpus (.jsonl/.txt/.parquet) window by window, "
                        "never as lists in memory; candidates are embedded into OUTPUT.work/ (memory-mapped; a "
                        "killed run resumes there) and the same negatives are mined")
    m.add_argument("--stream-window", type=_positive_int, default=100_000,
                   help="pairs (and texts embedded) per window with --stream")
    m.add_argument("--summary", help="also write the summary as JSON to this path")
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    m.add_argument("--nproc", type=_positive_int, default=None, help="shortcut: run under torchrun with N processes")
    m.set_defaults(func=_cmd_mine)


def _train_parser(sub) -> None:
    """The ``train`` subcommand's flags."""
    t = sub.add_parser("train", help="fine-tune a model on (query, positive[, negatives]) pairs")
    t.add_argument("--pairs", required=True, help="training pairs (JSONL/CSV/Parquet/OpenAI JSONL/BEIR folder)")
    t.add_argument("--model", help="base or previously fine-tuned model directory (warm start)")
    t.add_argument("--output", "-o", required=True, help="output folder (model in OUTPUT/model, checkpoints beside)")
    _add_training_args(t, lr=5e-5, num_negatives=None)
    t.add_argument("--warmup-ratio", type=float, default=0.1)
    t.add_argument("--loss", choices=["mnrl", "cached_mnrl", "triplet"], default="mnrl")
    t.add_argument("--scale", type=_ratio, default=20.0, help="logit scale (1 / temperature)")
    t.add_argument("--mini-batch-size", type=_positive_int, default=32, help="for cached_mnrl (GradCache)")
    t.add_argument("--checkpoint-every", type=_positive_int, default=None, help="steps between checkpoints")
    t.add_argument("--keep-checkpoints", type=_positive_int, default=2)
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUTPUT")
    t.add_argument("--replay", help="old training data mixed in so the old domain is not forgotten")
    t.add_argument("--replay-ratio", type=float, default=0.0)
    t.add_argument("--stream", action="store_true",
                   help="read --pairs (.jsonl or .parquet) window by window, never the whole file in memory: an "
                        "epoch visits the windows in a seeded order and shuffles within each; resume stays exact")
    t.add_argument("--stream-window", type=_positive_int, default=100_000,
                   help="pairs per window with --stream (in-batch negatives come from the same window)")
    t.add_argument("--max-seq-length", type=_positive_int, default=None)
    t.add_argument("--nproc", type=_positive_int, default=None, help="shortcut: run under torchrun with N processes")
    t.set_defaults(func=_cmd_train)


def _eval_parser(sub) -> None:
    """The ``eval`` subcommand's flags."""
    e = sub.add_parser("eval", help="nDCG@10, recall@k, MRR@10, MAP@100 of one or more models")
    e.add_argument("--data", required=True, help="test pairs file or BEIR folder")
    e.add_argument("--corpus", help="corpus file (for a pairs file)")
    e.add_argument("--model", action="append",
                   help="sentence-transformers directory, ONNX export directory or .onnx file (e.g. "
                        "onnx/model_int8.onnx); repeat to compare; default: the built-in MiniLM")
    e.add_argument("--output", "-o", help="write report.md, metrics.json and metrics.png here")
    e.add_argument("--batch-size", type=_positive_int, default=64)
    add_export_precision_arg(e)
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=_cmd_eval)


def _distill_parser(sub) -> None:
    """The ``distill`` subcommand's flags."""
    d = sub.add_parser("distill", help="distil a (fine-tuned) teacher into a smaller student")
    d.add_argument("--teacher", help="teacher model directory (default: built-in all-MiniLM-L6-v2)")
    d.add_argument("--student", help="student model directory (default: a layer-pruned copy of the teacher)")
    d.add_argument("--layers", help="teacher layers the student keeps, e.g. 0,2,4")
    d.add_argument("--pairs", action="append", help="pairs file whose texts are distilled on (repeatable)")
    d.add_argument("--corpus", action="append", help="corpus file whose texts are distilled on (repeatable)")
    d.add_argument("--output", "-o", required=True)
    d.add_argument("--epochs", type=_positive_int, default=2)
    d.add_argument("--batch-size", type=_positive_int, default=64)
    d.add_argument("--lr", type=float, default=5e-4)
    d.add_argument("--kl-weight", type=float, default=0.0, help="weight of the in-batch similarity KL term")
    d.add_argument("--hidden-weight", type=float, default=0.0,
                   help="weight of the layer-to-layer term (a layer-pruned student's token states against the "
                        "teacher layers it was copied from; the teacher runs beside it, ~1.4x the time)")
    d.add_argument("--max-seq-length", type=_positive_int, default=128)
    add_precision_arg(d)
    d.add_argument("--seed", type=int, default=42)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_cmd_distill)


def _export_parser(sub) -> None:
    """The ``export`` subcommand's flags."""
    x = sub.add_parser("export", help="export a model to ONNX (fp32, optionally int8) with a parity check")
    x.add_argument("--model", help="sentence-transformers directory (default: built-in all-MiniLM-L6-v2)")
    x.add_argument("--output", "-o", required=True, help="output directory (model.onnx + tokenizer files)")
    x.add_argument("--quantize", choices=["int8"], default=None, help="also write model_int8.onnx")
    x.add_argument("--opset", type=_positive_int, default=17)
    x.add_argument("--no-optimize", action="store_true", help="skip onnxruntime graph optimisation")
    x.add_argument("--calibration-texts", help="int8: calibrate on these texts (any corpus format; the texts you "
                                                "will embed, e.g. your corpus); default: the bundled sample")
    x.add_argument("--allow-fp32-int8", action="store_true",
                   help="write model_int8.onnx even when no weight node could be quantised within the parity bound")
    x.add_argument("--openvino-int8", action="store_true",
                   help="also write the NNCF static int8 OpenVINO IR (openvino/openvino_model_qint8_quantized.xml; "
                        "fastest on VNNI/AMX CPUs; needs pip install 'fastembed-tune[openvino]')")
    x.set_defaults(func=_cmd_export)


def _embed_parser(sub) -> None:
    """The ``embed`` subcommand's flags."""
    b = sub.add_parser("embed", help="embed texts with an ONNX export (or a sentence-transformers directory)")
    b.add_argument("--model", required=True, help="ONNX export directory, .onnx file, or model directory")
    b.add_argument("--input", "-i", required=True, help="texts: TXT (one a line), JSONL/CSV/TSV/Parquet id+text")
    b.add_argument("--output", "-o", required=True, help=".npy (matrix in input order) or .jsonl (id, embedding)")
    b.add_argument("--int8", action="store_true", help="use model_int8.onnx of the export directory "
                   "(the same as --precision int8)")
    add_export_precision_arg(b)
    b.add_argument("--batch-size", type=_positive_int, default=64)
    b.add_argument("--threads", type=_nonneg_int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    b.add_argument("--quiet", action="store_true")
    b.add_argument("--adapter", metavar="DIR", help="apply an adapter written by `fastembed-tune adapt` to the vectors")
    b.add_argument("--stream", action="store_true",
                   help="read --input (.jsonl, .txt or .parquet) and write --output window by window, never the "
                        "whole corpus in memory (.npy is filled memory-mapped)")
    b.add_argument("--stream-window", type=_positive_int, default=50_000, help="texts per window with --stream")
    b.add_argument("--adapter-side", choices=["query", "document"], default="query",
                   help="which side of the adapter: query (default) or document (unchanged vectors, normalised, "
                        "unless the adapter was trained with --sides both)")
    b.set_defaults(func=_cmd_embed)


def _serve_parser(sub) -> None:
    """The ``serve`` subcommand's flags."""
    from fastembed_tune.serve.batching import MAX_WINDOW_TOKENS
    s = sub.add_parser("serve", help="serve an ONNX export as an OpenAI-compatible /v1/embeddings server "
                                     "(needs the serve extra)")
    s.add_argument("--model", required=True, help="ONNX export directory (e.g. runs/sample/onnx), or a "
                   "sentence-transformers directory (exported first, parity-checked, into --cache-dir)")
    s.add_argument("--int8", action="store_true", help="serve model_int8.onnx of the export (= --precision int8)")
    add_export_precision_arg(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    s.add_argument("--port", type=_nonneg_int, default=8080, help="TCP port (0: any free port)")
    s.add_argument("--name", help="model id clients send as 'model' (default: the directory's name)")
    s.add_argument("--threads", type=_nonneg_int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    s.add_argument("--max-batch-tokens", type=_positive_int, default=1024,
                   help="padded tokens per onnxruntime batch (texts x longest); small batches are fastest on CPUs")
    s.add_argument("--max-batch-size", type=_positive_int, default=128, help="texts per onnxruntime batch")
    s.add_argument("--max-window-tokens", type=_positive_int, default=MAX_WINDOW_TOKENS,
                   help="real tokens taken from the queue at once and cut into batches of one length bucket "
                        "each (wider: fuller batches, a later start for requests that arrive meanwhile)")
    s.add_argument("--max-queue", type=_positive_int, default=4096,
                   help="texts admitted and unanswered at once; beyond it requests get 429")
    s.add_argument("--drain-timeout", type=_ratio, default=30.0,
                   help="seconds SIGTERM waits for the requests in flight")
    s.add_argument("--cache-dir", help="where sentence-transformers directories are exported "
                                       "(default: ~/.cache/fastembed-tune/onnx)")
    s.add_argument("--adapter", metavar="DIR", help="serve vectors adapted by an adapter from `fastembed-tune adapt`")
    s.add_argument("--adapter-side", choices=("query", "document"), default="query",
                   help="which side of the adapter the served vectors take (default: query)")
    s.set_defaults(func=_cmd_serve)


def _adapt_parser(sub) -> None:
    """The ``adapt`` subcommand's flags."""
    d = sub.add_parser("adapt", help="learn an adapter on frozen embeddings (an API model you cannot fine-tune)")
    d.add_argument("--pairs", required=True, help="training pairs (JSONL/CSV/Parquet/OpenAI JSONL/BEIR folder)")
    d.add_argument("--corpus", help="documents: hard negatives (and, with --test, the test's retrieval corpus)")
    d.add_argument("--test", help="held-out test pairs or BEIR folder: the frozen vs adapted report")
    d.add_argument("--output", "-o", required=True, help="output folder (adapter.safetensors, adapter_config.json, "
                                                          "adapter.onnx, report.md)")
    d.add_argument("--embeddings", metavar="SOURCE",
                   help="api (with --api-base/--api-model), builtin (MiniLM), a sentence-transformers or ONNX "
                        "directory, or FILE.npy (beside FILE.jsonl/.txt texts) / FILE.parquet (text, embedding)")
    d.add_argument("--api-base", metavar="URL", help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 "
                                                     "(key from OPENAI_API_KEY)")
    d.add_argument("--api-model", metavar="NAME", help="the endpoint's embedding model, e.g. text-embedding-3-small")
    d.add_argument("--api-dimensions", type=_positive_int, default=None, help="ask the endpoint for N dimensions")
    d.add_argument("--api-batch-size", type=_positive_int, default=128, help="texts per request")
    d.add_argument("--api-concurrency", type=_positive_int, default=4, help="requests in flight at most")
    d.add_argument("--api-max-retries", type=_nonneg_int, default=6,
                   help="retries of a request answered 429/5xx (exponential backoff, Retry-After honoured)")
    d.add_argument("--api-tpm", type=_ratio, default=None, metavar="TOKENS", help="tokens-per-minute budget")
    d.add_argument("--store", metavar="DIR", help="embedding store (default: $FASTEMBED_TUNE_STORE or "
                                                   "~/.cache/fastembed-tune/store): each text is embedded once, ever")
    d.add_argument("--max-seq-length", type=_positive_int, default=128, help="local models: tokens embedded")
    d.add_argument("--kind", choices=["linear", "lowrank", "mlp"], default="linear")
    d.add_argument("--sides", choices=["query", "both"], default="query",
                   help="query: documents keep their vectors (default); both: a document adapter too")
    d.add_argument("--rank", type=_positive_int, default=64, help="lowrank: the rank")
    d.add_argument("--hidden", type=_positive_int, default=1024, help="mlp: hidden units")
    d.add_argument("--epochs", type=_positive_int, default=10)
    d.add_argument("--batch-size", type=_positive_int, default=64)
    d.add_argument("--lr", type=_ratio, default=1e-3)
    d.add_argument("--weight-decay", type=float, default=0.01, help="pulls the adapter towards the identity")
    d.add_argument("--num-negatives", type=_nonneg_int, default=7, help="hard negatives a pair, mined by topk_cosine")
    d.add_argument("--max-ratio", type=_ratio, default=0.95,
                   help="drop candidates scoring above RATIO x the positive's score (likely false negatives)")
    d.add_argument("--remine-every", type=_nonneg_int, default=1,
                   help="epochs between re-mining negatives with the adapter (0: mine once)")
    d.add_argument("--scale", type=_ratio, default=20.0, help="logit scale (1 / temperature)")
    d.add_argument("--no-average", action="store_true",
                   help="ship one epoch's weights, not their running mean (linear and mlp average by default)")
    d.add_argument("--validation-share", type=_share, default=0.1,
                   help="share of the training queries held out to choose the epoch that ships (0: none)")
    d.add_argument("--patience", type=_positive_int, default=3, help="stop after this many epochs without gain")
    d.add_argument("--seed", type=int, default=42)
    d.add_argument("--allow-no-gain", action="store_true",
                   help=f"exit 0 even when the adapter is not significantly better than the frozen vectors on "
                        f"--test (default: exit {EXIT_NO_GAIN})")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_cmd_adapt)


def _run_parser(sub) -> None:
    """The ``run`` subcommand's flags."""
    r = sub.add_parser("run", help="base eval -> mining -> training -> eval -> report (default: built-in sample)")
    r.add_argument("--output", "-o", default="runs/sample")
    r.add_argument("--model", help="base model directory (default: built-in all-MiniLM-L6-v2)")
    r.add_argument("--train", help="training pairs (default: the built-in sample)")
    r.add_argument("--test", help="held-out test pairs or BEIR folder")
    r.add_argument("--corpus", help="corpus file")
    _add_training_args(r, lr=2e-4, num_negatives=1)
    r.add_argument("--max-ratio", type=_ratio, default=0.95)
    r.add_argument("--max-seq-length", type=_positive_int, default=128, help="for embedding (eval, mining)")
    r.add_argument("--train-max-seq-length", type=_positive_int, default=64, help="for training steps")
    r.add_argument("--distill-layers", help="teacher layers the student keeps (default: half of them, first to last: 0,2,5 of 6)")
    r.add_argument("--distill-epochs", type=_positive_int, default=1)
    r.add_argument("--distill-lr", type=float, default=1e-3)
    r.add_argument("--distill-kl-weight", type=float, default=0.0)
    r.add_argument("--no-distill", action="store_true", help="no distilled student (the fine-tuned model is still exported)")
    r.add_argument("--no-export", action="store_true", help="no ONNX export (of the fine-tuned model or the student)")
    r.add_argument("--no-openvino-int8", action="store_true",
                   help="no OpenVINO int8 IR beside the ONNX graphs (by default written where the CPU has VNNI/AMX "
                        "and openvino + nncf are installed, and kept where it keeps the gain on validation)")
    r.add_argument("--no-guard", action="store_true",
                   help="skip the general-domain forgetting guard (base vs fine-tuned on WordNet definitions)")
    r.add_argument("--max-forgetting", type=_forgetting, default=0.03, metavar="X|off",
                   help="largest relative loss of the guard's nDCG@10 allowed (default 0.03 = 3%%); beyond it the "
                        "fine-tuned weights are interpolated with the base model's (ratio chosen on the validation "
                        "split); 'off' ships the fine-tuned model as it is")
    r.add_argument("--allow-no-gain", action="store_true",
                   help=f"exit 0 even when the fine-tuned model is not significantly better than the base on the "
                        f"test set (default: exit {EXIT_NO_GAIN})")
    r.set_defaults(func=_cmd_run)


def build_parser() -> argparse.ArgumentParser:
    """The ``fastembed-tune`` parser: one subparser per stage, each built by its own function.

    >>> build_parser().parse_args(["mine", "--pairs", "p.jsonl", "-o", "m.jsonl"]).num_negatives
    5
    """
    p = argparse.ArgumentParser(prog="fastembed-tune",
                                description="Fine-tune, distill and ship text-embedding models for one domain.")
    sub = p.add_subparsers(dest="command", required=True)
    _mine_parser(sub)
    _train_parser(sub)
    _eval_parser(sub)
    _distill_parser(sub)
    _export_parser(sub)
    _embed_parser(sub)
    _serve_parser(sub)
    _run_parser(sub)
    _adapt_parser(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``fastembed-tune``; returns the exit code (2 for a user error).

    >>> main(["mine", "--pairs", "/nonexistent.jsonl", "-o", "/tmp/x.jsonl"])
    2
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if getattr(args, "nproc", None) and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _relaunch_with_torchrun(argv, args.nproc)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        return _fail(str(e), 2)
    except NoSignificantGain as e:
        return _fail(str(e), EXIT_NO_GAIN)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # the machine's fault: a full or read-only disk, a missing device
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e}", 1)
    except MemoryError:
        return _fail("out of memory; lower --batch-size (or give the machine more memory)", 1)
    except Exception as e:  # anything else is our bug: one line, the traceback on request
        if os.environ.get("FASTEMBED_TUNE_DEBUG"):
            raise
        return _fail(f"{type(e).__name__}: {e} (internal error; run with FASTEMBED_TUNE_DEBUG=1 for the "
                     f"traceback and report it)", 1)


def _fail(message: str, code: int) -> int:
    """Print ``error: message`` as one line on stderr and return the exit code."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
