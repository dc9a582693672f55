"""``fastembed-tune export``: a model to ONNX (fp32, optionally int8), parity-checked against PyTorch."""
from __future__ import annotations

import argparse

from fastembed_tune.cli.common import positive_int
from fastembed_tune.core.atomic import check_inputs_kept, check_output
from fastembed_tune.core.errors import UserError


def add_parser(sub) -> None:
    """The ``export`` subcommand's flags.

    >>> p = argparse.ArgumentParser(); add_parser(p.add_subparsers())
    >>> a = p.parse_args(["export", "-o", "onnx", "--quantize", "int8"]); a.quantize, a.opset
    ('int8', 17)
    """
    x = sub.add_parser("export", help="export a model to ONNX (fp32, optionally int8) with a parity check")
    x.add_argument("--model", help="sentence-transformers directory (default: built-in all-MiniLM-L6-v2)")
    x.add_argument("--output", "-o", required=True, help="output directory (model.onnx + tokenizer files)")
    x.add_argument("--quantize", choices=["int8"], default=None, help="also write model_int8.onnx")
    x.add_argument("--opset", type=positive_int, default=17)
    x.add_argument("--no-optimize", action="store_true", help="skip onnxruntime graph optimisation")
    x.add_argument("--calibration-texts", help="int8: calibrate on these texts (any corpus format; the texts you "
                                                "will embed, e.g. your corpus); default: the bundled sample")
    x.add_argument("--allow-fp32-int8", action="store_true",
                   help="write model_int8.onnx even when no weight node could be quantised within the parity bound")
    x.add_argument("--openvino-int8", action="store_true",
                   help="also write the NNCF static int8 OpenVINO IR (openvino/openvino_model_qint8_quantized.xml; "
                        "fastest on VNNI/AMX CPUs; needs pip install 'fastembed-tune[openvino]')")
    x.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export ``--model`` into ``--output`` and print the parity (min cosine) of each graph written.

    >>> p = argparse.ArgumentParser(); add_parser(p.add_subparsers())
    >>> run(p.parse_args(["export", "-o", ""]))
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: --output is empty; give a path
    """
    from fastembed_tune.data.readers import read_texts
    from fastembed_tune.embed.model import default_model_path
    from fastembed_tune.export.onnx import export_onnx

    if args.allow_fp32_int8 and args.quantize != "int8":
        raise UserError("--allow-fp32-int8 applies only with --quantize int8; add it or drop the flag")
    check_output(args.output, "dir")
    check_inputs_kept([("--model", args.model), ("--calibration-texts", args.calibration_texts)],
                      [("--output", args.output, [])])  # the folder is replaced as a whole
    calibration = list(read_texts(args.calibration_texts).values()) if args.calibration_texts else None
    info = export_onnx(args.model or default_model_path(), args.output, quantize=args.quantize, opset=args.opset,
                       optimize=not args.no_optimize, allow_fp32_int8=args.allow_fp32_int8,
                       calibration_texts=calibration, openvino_int8=args.openvino_int8)
    par = info["parity"]
    line = f"fp32 min cosine {par['fp32']['min_cosine']:.5f}"
    if "int8" in par:
        line += f", int8 min cosine {par['int8']['min_cosine']:.5f}"
    print(f"wrote {info['out_dir']} ({line})")
    return 0
