"""The file names of an export directory (``fastembed-tune export``), read by every loader.

An export directory holds the fused graph (:data:`MODEL_FILE`), its int8 twin (:data:`INT8_FILE`), the
standard-operator graph in sentence-transformers' ``backend="onnx"`` layout (:data:`PORTABLE_FILE`), the
NNCF int8 OpenVINO IR (:data:`OV_INT8_FILE`), ``tokenizer.json`` and the metadata (:data:`METADATA_FILE`).
"""
METADATA_FILE = "fastembed_tune_onnx.json"
MODEL_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
PORTABLE_FILE = "onnx/model.onnx"  # standard operators only: sentence-transformers' backend="onnx" layout
OV_INT8_FILE = "openvino/openvino_model_qint8_quantized.xml"
OUTPUT_SUFFIXES = (".npy", ".jsonl")  # what ``embed`` writes
