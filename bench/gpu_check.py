"""Helpers of bench/gpu_check.sh: toy inputs for --dry-run, and the one table + JSON from the steps' outputs.

    python bench/gpu_check.py toy-data DIR      # train/test JSONL + a tiny BERT config.json (dry run)
    python bench/gpu_check.py table OUT_DIR     # reads OUT_DIR/{cuda-tests.xml,train_speed.json,predict_speed.json}

TFLOP/s are reference-equivalent: the FLOPs the reference's compute spends per training sequence (the whole
encoder forward at the full length, plus the backward of the trained layers, ~2x their forward) times the
measured sequences per second. The fast path does less work for the same result (cache, dynamic padding),
so its figure can exceed what the card computes; the naive one is what the hardware actually sustained.
"""

from __future__ import annotations

import json
import random
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, by device-name substring.
# "NVIDIA H100 80GB HBM3" is the SXM card; the PCIe one says so in its name.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.0}
WORDS = ("good great excellent love best bad awful terrible boring worst movie film plot actor the a and "
         "was is it this of really very not").split()


def toy_data(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for name, n in (("train.jsonl", 48), ("test.jsonl", 24)):
        with open(folder / name, "w", encoding="utf-8") as f:
            for i in range(n):
                words = [rng.choice(WORDS[:5] if i % 2 else WORDS[5:10]) for _ in range(4)] + rng.sample(WORDS, 6)
                f.write(json.dumps({"text": " ".join(words), "label": "pos" if i % 2 else "neg"}) + "\n")
    tiny = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 512}
    (folder / "tiny-config.json").write_text(json.dumps(tiny))


def cuda_tests(xml_file: Path) -> dict:
    suite = ET.parse(xml_file).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def reference_flops_per_sequence(dims: dict, length: int, freeze: int) -> float:
    """Forward of every layer + backward (2x forward) of the trained ones; per layer and token
    24 h^2 (projections and feed-forward at intermediate 4h, multiply-add = 2 FLOPs) + 4 L h (attention)."""
    h, layers = dims["hidden_size"], dims["num_hidden_layers"]
    inter = dims.get("intermediate_size", 4 * h)
    per_token_layer = 2 * (4 * h * h + 2 * h * inter) + 4 * length * h
    return length * per_token_layer * (layers + 2 * (layers - freeze))


def model_dims(random_init: str) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    from train_speed import ARCHITECTURES

    return ARCHITECTURES.get(random_init) or json.loads(Path(random_init).read_text())


def peak_tflops(device_name: str) -> float | None:
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in device_name), None)


def train_rows(train: dict, device_name: str) -> list[dict]:
    args = train["args"]
    flops = reference_flops_per_sequence(model_dims(args["random_init"]), args["max_length"], args["freeze_layers"])
    peak = peak_tflops(device_name)
    rows = []
    for mode, r in train["results"].items():
        tflops = r["train_seq_s"] * flops / 1e12
        rows.append({"mode": mode, "precision": r["precision"], "train_seq_s": r["train_seq_s"],
                     "epoch1_s": r["epoch1_s"], "later_epoch_s": r["later_epoch_s"], "test_acc": r["test_acc"],
                     "tflops": tflops, "of_peak": tflops / peak if peak else None})
    return rows


def table(out: Path) -> dict:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (dry run)"
    train = json.loads((out / "train_speed.json").read_text())
    predict = json.loads((out / "predict_speed.json").read_text())
    result = {"device": device, "bf16_peak_tflops": peak_tflops(device),
              "cuda_tests": cuda_tests(out / "cuda-tests.xml"), "train": train_rows(train, device),
              "predict": predict["results"], "train_args": train["args"], "predict_args": predict["args"]}
    print(render(result))
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    return result


def render(result: dict) -> str:
    t, fmt = result["cuda_tests"], lambda v, d=1: "-" if v is None else f"{v:.{d}f}"
    lines = [f"device: {result['device']} (bf16 peak {fmt(result['bf16_peak_tflops'], 0)} TFLOP/s)", "",
             "| step | what | precision | figure |", "|---|---|---|---|",
             f"| cuda tests | {t['passed']} passed, {t['failures'] + t['errors']} failed, {t['skipped']} skipped "
             f"| - | {t['tests']} tests |"]
    for r in result["train"]:
        share = f", {100 * r['of_peak']:.1f} % of peak" if r["of_peak"] is not None else ""
        lines.append(f"| train {r['mode']} | {fmt(r['train_seq_s'])} seq/s, epoch 1 {fmt(r['epoch1_s'])} s, "
                     f"later {fmt(r['later_epoch_s'])} s, test acc {fmt(r['test_acc'], 3)} | {r['precision']} | "
                     f"{fmt(r['tflops'], 2)} TFLOP/s{share} |")
    for r in result["predict"]:
        lines.append(f"| predict {r['variant']} | {fmt(r['texts_per_s'])} texts/s, agree with torch "
                     f"{fmt(100 * r.get('agreement', 1.0))} % | {r['precision']} | - |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    command, folder = argv
    toy_data(Path(folder)) if command == "toy-data" else table(Path(folder))


if __name__ == "__main__":
    main(sys.argv[1:])
