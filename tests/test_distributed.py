"""Data-parallel training: `torchrun --nproc_per_node 2` on CPU (gloo) against one process with the same global batch.

Two processes with --batch-size 8 take an optimizer step on 2 x 8 examples, batches dealt round-robin (rank 0
gets batches 0, 2, 4, ..., rank 1 gets 1, 3, 5, ...), gradients averaged by DDP. One process with
--batch-size 8 --grad-accum 2 steps on the same pairs of batches with the same averaged gradient. Dropout is
off in this model, so the two runs compute the same thing; they differ only in float rounding (an all-reduce
sums in another order than accumulation does), which is why weights are compared to 1e-5, not bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_resume import ENV, TIMING, cli_args, fit_one_thread, flags

from sentune import config, rundir

# Runs inside each torchrun worker: records what that rank did, then runs the real CLI.
WORKER = """
import hashlib, json, os, sys
from pathlib import Path
from sentune.training import cache
from sentune.training import loop as train
log, rank = Path(sys.argv[1]), os.environ["RANK"]
real_build, real_fit, real_step = cache._build, train.fit, train.train_step
seen = {}

def _build(*args, **kwargs):  # each prefix pass over a split, i.e. the cache work
    with open(log / f"builds-{rank}", "a") as f:
        f.write("built\\n")
    return real_build(*args, **kwargs)

def train_step(p, batch, sync, epoch, step):
    seen.setdefault(epoch, []).extend(batch["index"].tolist())
    return real_step(p, batch, sync, epoch, step)

def fit(cfg):
    p, state = real_fit(cfg)
    weights = b"".join(q.detach().numpy().tobytes() for q in p.model.parameters())
    (log / f"rank-{rank}.json").write_text(json.dumps({
        "epoch": state.epoch, "best_epoch": state.best_epoch, "seen": seen,
        "weights": hashlib.sha256(weights).hexdigest()}))
    return p, state

cache._build, train.train_step, train.fit = _build, train_step, fit
from sentune.cli import main
sys.argv = ["sentune", *sys.argv[2:]]
main()
"""


@pytest.fixture(scope="module")
def setup(tiny_bert_dir, tmp_path_factory):
    from conftest import sentiment_rows, write_jsonl

    root = tmp_path_factory.mktemp("ddp")
    model = root / "model"
    shutil.copytree(tiny_bert_dir, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # same math, whatever the RNG
    (model / "config.json").write_text(json.dumps(cfg))
    files = {"train": write_jsonl(root / "train.jsonl", sentiment_rows(64, seed=1)),
             "validation": write_jsonl(root / "validation.jsonl", sentiment_rows(24, seed=2)),
             "test": write_jsonl(root / "test.jsonl", sentiment_rows(24, seed=3))}
    common = {"cache": "disk", "cache_dir": str(root / "cache"), "epochs": 3, "lr_encoder": 1e-2, "lr_head": 1e-2}
    return root, model, files, common


@pytest.fixture(scope="module")
def ddp_run(setup):
    root, model, files, common = setup
    run, log = root / "ddp-run", root / "log"
    log.mkdir()
    script = root / "worker.py"
    script.write_text(WORKER)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(log), *cli_args(flags(model, files, run, **common))],
        env=ENV, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((log / f"rank-{r}.json").read_text()) for r in (0, 1)]
    return run, log, ranks, result.stdout


def test_two_processes_finish_and_write_every_file_once(ddp_run):
    run, _, _, stdout = ddp_run
    assert [r["epoch"] for r in rundir.read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
    assert stdout.count("Epoch 1 summary") == 1 and stdout.count("Run directory:") == 1  # only rank 0 prints
    assert json.loads((run / "manifest.json").read_text())["num_processes"] == 2
    assert sorted(f.name for f in (run / "checkpoint").iterdir()) == ["state.json", "state.pt",
                                                                        "trainable.safetensors"]
    rng = torch.load(run / "checkpoint" / "state.pt", weights_only=True)["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], torch.zeros_like(rng[0]["torch"]))
    assert not [f for f in run.iterdir() if f.name.startswith(".")]


def test_each_process_trains_on_its_own_shard(ddp_run):
    _, _, ranks, _ = ddp_run
    for epoch in ("1", "2", "3"):
        shard0, shard1 = (set(r["seen"][epoch]) for r in ranks)
        assert not shard0 & shard1 and shard0 | shard1 == set(range(64))
    assert ranks[0]["seen"]["1"] != ranks[0]["seen"]["2"]  # a new order every epoch


def test_ranks_agree_on_weights_and_early_stopping(ddp_run):
    _, _, ranks, _ = ddp_run
    assert ranks[0]["weights"] == ranks[1]["weights"]  # gradients really are all-reduced
    assert (ranks[0]["epoch"], ranks[0]["best_epoch"]) == (ranks[1]["epoch"], ranks[1]["best_epoch"])


def test_frozen_layer_cache_is_built_once(ddp_run, setup):
    _, log, _, _ = ddp_run
    root = setup[0]
    assert (log / "builds-0").read_text().count("built") == 3  # train, validation, test: by rank 0 only
    assert not (log / "builds-1").exists()  # rank 1 waited, then reused the files
    assert len(list((root / "cache").glob("prefix-*.bin"))) == 3


def test_matches_one_process_with_the_same_global_batch(ddp_run, setup):
    root, model, files, common = setup
    run, _, _, _ = ddp_run
    single = root / "single-run"
    fit_one_thread(config.resolve("imdb", None, flags(model, files, single, grad_accum=2, **common)))
    rows = [{k: v for k, v in r.items() if k not in TIMING} for r in rundir.read_jsonl(run / "metrics.jsonl")]
    want = [{k: v for k, v in r.items() if k not in TIMING} for r in rundir.read_jsonl(single / "metrics.jsonl")]
    for got, expected in zip(rows, want, strict=True):
        assert got["val_acc"] == expected["val_acc"] and got["train_acc"] == expected["train_acc"]
        assert got["train_loss"] == pytest.approx(expected["train_loss"], abs=1e-5)
        assert got["val_loss"] == pytest.approx(expected["val_loss"], abs=1e-5)
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["accuracy"] == json.loads((single / "final_metrics.json").read_text())["accuracy"]
    weights, expected = (load_file(str(r / "best" / "model.safetensors")) for r in (run, single))
    moved = load_file(str(Path(model) / "model.safetensors"))
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=1e-5)
    # and training did move the weights by far more than that tolerance
    assert max((expected[n] - moved[n]).abs().max().item() for n in moved if n in expected) > 1e-2


def test_sharded_predict_writes_one_output_in_input_order(setup, tmp_path):
    from click.testing import CliRunner
    from conftest import sentiment_rows, write_jsonl

    from sentune.cli import main

    root, _, _, _ = setup
    model = Path(str(setup[1]))
    rows = sentiment_rows(53, seed=7)  # odd: the processes get 27 and 26 texts
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": r["text"], "label": r["label"], "n": i}
                                                 for i, r in enumerate(rows)])
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    # fp32: in bf16 the two shards' other batch paddings would round differently (what is tested here is order)
    single = CliRunner().invoke(main, ["predict", str(model), "--input", str(source), "--output", str(one),
                                       "--precision", "fp32"])
    assert single.exit_code == 0, single.output
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "sentune", "predict", str(model), "--input", str(source), "--output", str(two),
                             "--precision", "fp32"],
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    want, got = (rundir.read_jsonl(f) for f in (one, two))
    assert [r["n"] for r in got] == list(range(53))  # input order, every row once
    assert [r["label"] for r in got] == [r["label"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert g["probs"] == pytest.approx(w["probs"], abs=1e-6)
    assert result.stderr.count("53 texts in") == 1  # one summary, from the main process


def test_sharded_predict_refuses_stdin(monkeypatch):
    from sentune.errors import ConfigError
    from sentune.inference.shard import load_for_launch

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="--input FILE"):
        load_for_launch(lambda device: None, "-")


# Under torchrun the process group is the launcher's: a second run in the same process may reuse it with the
# same settings, and other settings are one clear error rather than Accelerate's "restart your runtime".
SECOND_RUN = """
import json, os, sys
from pathlib import Path
from sentune import config
from sentune.errors import ConfigError
from sentune.training.accel import make_accelerator

def accelerator(precision):
    cfg = config.resolve(None, None, {"precision": precision, "device": "cpu", "output_dir": sys.argv[1]})
    return make_accelerator(cfg, lambda processes: Path(sys.argv[1]))[0]

first = accelerator("fp32").num_processes
same = accelerator("fp32").num_processes
try:
    accelerator("bf16")
    other = None
except ConfigError as e:
    other = str(e)
with open(os.path.join(sys.argv[1], "rank-" + os.environ["RANK"]), "w") as f:
    json.dump({"first": first, "same": same, "other": other}, f)
"""


def test_second_run_under_torchrun_needs_the_same_settings(tmp_path):
    script = tmp_path / "second_run.py"
    script.write_text(SECOND_RUN)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script), str(tmp_path)], env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        r = json.loads((tmp_path / f"rank-{rank}").read_text())
        assert r["first"] == r["same"] == 2
        assert "precision fp32 on CPU" in r["other"] and "precision bf16 on CPU" in r["other"]
        assert "torchrun" in r["other"]


def test_splits_smaller_than_one_batch_per_process(setup, tmp_path):
    """12 validation and 12 test rows at --eval-batch-size 64: one batch, so rank 1 evaluates nothing and must
    still join every gather (macro-recall needs every prediction, at every epoch and at the final test)."""
    from conftest import sentiment_rows, write_jsonl

    _, model, files, _ = setup
    small = {"validation": write_jsonl(tmp_path / "val.jsonl", sentiment_rows(12, seed=4)),
             "test": write_jsonl(tmp_path / "test.jsonl", sentiment_rows(12, seed=5)), "train": files["train"]}
    common = {"epochs": 2, "eval_batch_size": 64, "select_metric": "macro_recall", "lr_encoder": 1e-2,
              "lr_head": 1e-2}
    two, one = tmp_path / "two", tmp_path / "one"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "sentune", *cli_args(flags(model, small, two, **common))],
                            env=ENV, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    fit_one_thread(config.resolve("imdb", None, flags(model, small, one, grad_accum=2, **common)))
    got, want = (rundir.read_jsonl(r / "metrics.jsonl") for r in (two, one))
    assert [r["val_macro_recall"] for r in got] == [r["val_macro_recall"] for r in want]
    assert [r["val_acc"] for r in got] == [r["val_acc"] for r in want]
    final_two, final_one = (json.loads((r / "final_metrics.json").read_text()) for r in (two, one))
    assert final_two["n"] == final_one["n"] == 12
    for key in ("accuracy", "macro_recall", "macro_f1"):
        assert final_two[key] == pytest.approx(final_one[key], abs=1e-9), key


ENDS_A_WORKER = """
import sys, torch.distributed as dist
from sentune.cli import end_launched_worker
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
print("written before the end", flush=False)
end_launched_worker()
print("never printed")
sys.exit(3)
"""


@pytest.mark.parametrize("launched", [True, False])
def test_a_launched_worker_that_succeeded_ends_without_teardown_and_nothing_else_does(tmp_path, launched):
    env = {k: v for k, v in os.environ.items() if k != "TORCHELASTIC_RUN_ID"}
    if launched:
        env["TORCHELASTIC_RUN_ID"] = "test"
    done = subprocess.run([sys.executable, "-c", ENDS_A_WORKER, str(tmp_path / "store")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert "written before the end" in done.stdout  # flushed before the process ended
    if launched:
        assert done.returncode == 0 and "never printed" not in done.stdout
    else:  # outside torchrun (and in tests that call the CLI in-process) it returns and the program goes on
        assert done.returncode == 3 and "never printed" in done.stdout
