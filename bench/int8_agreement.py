"""Which int8 recipe keeps an exported classifier's labels: dynamic and static (calibrated) ONNX Runtime
quantisation against the fp32 ONNX graph, label agreement and probability error on held-out texts.

    sentune export RUN/best --output /tmp/model-onnx          # the fp32 graph (passes the parity gate)
    python bench/int8_agreement.py /tmp/model-onnx --texts ../shared/data/imdb/test_dev.jsonl.gz \
        --calibration ../shared/data/imdb/train.jsonl.gz --n 500 --calibration-n 100 --max-length 256

Issue 24 asks for a quantised backend that passes the export gate (agreement >= 0.99). Every text runs alone
(batch 1), so dynamic quantisation's per-tensor activation scales see one text, as in serving one request;
static calibration feeds texts padded to --max-length (the histogram methods need one shape). Texts are drawn
with a fixed seed; calibration texts come from another file than the scored ones. A table of agreement, not of
speed; asserts nothing.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from transformers import AutoTokenizer


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx_dir", help="a `sentune export` folder (fp32, no --quantize)")
    ap.add_argument("--texts", required=True, help="JSONL(.gz) with a text field: the scored texts")
    ap.add_argument("--calibration", required=True, help="JSONL(.gz): texts for static calibration")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--calibration-n", type=int, default=100)
    ap.add_argument("--max-length", type=int, default=256)
    return ap.parse_args(argv)


def sample(path: str, n: int, seed: int) -> list[str]:
    with (gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")) as f:
        texts = [json.loads(line)["text"] for line in f]
    random.Random(seed).shuffle(texts)
    return texts[:n]


class Inputs:
    def __init__(self, onnx_dir: str, max_length: int):
        self.tok, self.max_length = AutoTokenizer.from_pretrained(onnx_dir), max_length

    def __call__(self, text: str, names: set[str], pad: bool = False) -> dict:
        enc = self.tok(text, truncation=True, max_length=self.max_length, return_tensors="np",
                       padding="max_length" if pad else False)
        return {k: v.astype(np.int64) for k, v in enc.items() if k in names}


def logits(path: str, texts: list[str], inputs: Inputs) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return np.array([session.run(None, inputs(t, names))[0][0] for t in texts])


class Calibration(CalibrationDataReader):
    def __init__(self, texts: list[str], inputs: Inputs, names: set[str]):
        self.rows = (inputs(t, names, pad=True) for t in texts)

    def get_next(self):
        return next(self.rows, None)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    inputs = Inputs(args.onnx_dir, args.max_length)
    texts, calib = sample(args.texts, args.n, 1), sample(args.calibration, args.calibration_n, 3)
    fp32 = str(Path(args.onnx_dir) / "model.onnx")
    ref = logits(fp32, texts, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        pre = f"{tmp}/pre.onnx"
        quant_pre_process(fp32, pre, skip_symbolic_shape=True)
        names = {i.name for i in ort.InferenceSession(pre, providers=["CPUExecutionProvider"]).get_inputs()}
        recipes = {
            "dynamic, per-channel 7-bit (sentune export --quantize int8)":
                lambda out: quantize_dynamic(fp32, out, weight_type=QuantType.QInt8, per_channel=True,
                                             reduce_range=True),
            "dynamic, per-channel 8-bit": lambda out: quantize_dynamic(fp32, out, weight_type=QuantType.QInt8,
                                                                       per_channel=True),
        }
        for label, method, extra in (("MinMax", CalibrationMethod.MinMax, {}),
                                     ("Percentile 99.999", CalibrationMethod.Percentile, {"CalibPercentile": 99.999})):
            recipes[f"static QDQ MatMul, {label}, {len(calib)} calibration texts"] = (
                lambda out, m=method, e=extra: quantize_static(
                    pre, out, Calibration(calib, inputs, names), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True, op_types_to_quantize=["MatMul"], calibrate_method=m, extra_options=e))
        print(f"{args.onnx_dir}: {len(texts)} texts of {Path(args.texts).name}, batch 1, length {args.max_length}")
        print("| int8 recipe | label agreement | max prob diff | mean prob diff |")
        print("|---|---|---|---|")
        for i, (label, build) in enumerate(recipes.items()):
            out = f"{tmp}/q{i}.onnx"
            build(out)
            got = logits(out, texts, inputs)
            diff = np.abs(softmax(ref) - softmax(got)).max(1)
            print(f"| {label} | {(ref.argmax(1) == got.argmax(1)).mean():.4f} | {diff.max():.4f} | {diff.mean():.4f} |",
                  flush=True)


if __name__ == "__main__":
    main()
