"""Faults: kills and failures during saves, a full disk, non-finite losses, out of memory, unsafe loading.

Each test injects the fault for real where it can (a subprocess killed inside save_pretrained, a file-size
limit that makes the kernel refuse writes) and checks the outcome a user sees: one clear error, and the
previous best/ and checkpoint still loadable.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import without_root_overrides
from safetensors.torch import load_file
from test_resume import ENV, cli_args, fit_one_thread, flags

from sentune import atomic, config, rundir
from sentune.errors import OutOfMemory, SentuneError, WriteError
from sentune.training import checkpoint, guards

SRC = Path(__file__).resolve().parents[1] / "src" / "sentune"


@pytest.fixture(scope="module")
def files(module_toy_files):
    return module_toy_files


def assert_loads_with_transformers(folder: Path) -> None:
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(folder), device="cpu")
    assert clf("good great film")[0]["label"] in {"neg", "pos"}


def leftovers(run: Path) -> list[str]:
    return sorted(f.name for f in run.iterdir() if f.name.startswith("."))


# ---- atomic folders -------------------------------------------------------------------------------------
def write_files(content: str):
    return lambda d: (d / "a.txt").write_text(content)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_atomic_dir_replaces_whole_folders(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "best"
    atomic.atomic_dir(target, write_files("one"))
    atomic.atomic_dir(target, write_files("two"))
    assert (target / "a.txt").read_text() == "two" and leftovers(tmp_path) == []


@pytest.mark.parametrize("fault", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("Error while serializing: I/O error: No space left (os error 28)")])
def test_failed_folder_write_is_one_error_and_keeps_the_old_folder(tmp_path, fault):
    target = tmp_path / "best"
    atomic.atomic_dir(target, write_files("old"))

    def fail(d):
        (d / "a.txt").write_text("half")
        raise fault

    with pytest.raises(WriteError, match=r"cannot write .*best.*previous copy is unchanged"):
        atomic.atomic_dir(target, fail)
    assert (target / "a.txt").read_text() == "old" and leftovers(tmp_path) == []


def test_interrupt_or_bug_during_write_keeps_the_old_folder_and_propagates(tmp_path):
    target = tmp_path / "best"
    atomic.atomic_dir(target, write_files("old"))
    for error in (KeyboardInterrupt, ValueError):
        def fail(d, error=error):
            (d / "a.txt").write_text("half")
            raise error

        with pytest.raises(error):
            atomic.atomic_dir(target, fail)
        assert (target / "a.txt").read_text() == "old" and leftovers(tmp_path) == []


def test_recover_puts_back_a_folder_left_aside_by_a_kill(tmp_path):
    # Without renameat2, a kill between the two renames leaves the old folder as .best.old and no best/.
    aside = tmp_path / ".best.old"
    aside.mkdir()
    (aside / "a.txt").write_text("old")
    (tmp_path / ".best.x1.tmp").mkdir()  # a killed write's temporary folder
    atomic.recover(tmp_path / "best")
    assert (tmp_path / "best" / "a.txt").read_text() == "old" and leftovers(tmp_path) == []


def test_failed_file_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    rundir.append_jsonl(path, {"epoch": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError, match="No space left"):
        rundir.append_jsonl(path, {"epoch": 2})
    assert rundir.read_jsonl(path) == [{"epoch": 1}] and leftovers(tmp_path) == []


# ---- a kill inside save_pretrained ----------------------------------------------------------------------
KILLED_IN_SAVE = """
import os, sys
from transformers import PreTrainedModel
from sentune.training import loop as train
real_select, real_save = train.select, PreTrainedModel.save_pretrained
saves = []

def select(state, row, on):  # every epoch counts as an improvement, so best/ is rewritten each epoch
    real_select(state, row, on)
    return True

def save_pretrained(self, folder, *args, **kwargs):
    real_save(self, folder, *args, **kwargs)
    saves.append(folder)
    if len(saves) == 2:  # the second best/: weights written, tokenizer not yet
        os._exit(17)

train.select, PreTrainedModel.save_pretrained = select, save_pretrained
from sentune.cli import main
sys.argv = ["sentune", *sys.argv[1:]]
main()
"""


def test_kill_during_best_save_leaves_the_previous_best_loadable(tiny_bert_dir, files, tmp_path):
    run = tmp_path / "run"
    script = tmp_path / "killed_in_save.py"
    script.write_text(KILLED_IN_SAVE)
    result = subprocess.run([sys.executable, str(script), *cli_args(flags(tiny_bert_dir, files, run))], env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 17, result.stderr
    assert [name for name in leftovers(run) if name.startswith(".best.")]  # killed mid-write, for real
    assert_loads_with_transformers(run / "best")
    best = load_file(str(run / "best" / "model.safetensors"))
    epoch1 = load_file(str(run / "checkpoint" / "trainable.safetensors"))  # the last checkpoint: epoch 1's
    assert json.loads((run / "checkpoint" / "state.json").read_text())["state"]["epoch"] == 1
    for name, tensor in epoch1.items():
        assert torch.equal(best[name], tensor), name
    fit_one_thread(checkpoint.resume_config(run, {}))  # and the run can go on; it clears the leftovers
    assert leftovers(run) == []
    assert_loads_with_transformers(run / "best")


# ---- a full disk ----------------------------------------------------------------------------------------
def file_size_limit(nbytes: int):
    """For the child: the kernel refuses writes past `nbytes` per file (EFBIG), like a full disk would."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


def test_full_disk_is_one_clear_error_and_previous_files_stay(tiny_bert_dir, files, tmp_path):
    run = tmp_path / "run"
    fit_one_thread(config.resolve("imdb", None, flags(tiny_bert_dir, files, run, epochs=1)))
    before = {name: (run / name).read_bytes() for name in ("best/model.safetensors", "checkpoint/state.pt")}
    # 16 KB: the small JSON files still fit, the weights of epoch 2 do not.
    result = subprocess.run([sys.executable, "-m", "sentune", "train", "--resume", str(run), "--epochs", "2"],
                            env=ENV, capture_output=True, text=True, timeout=300,
                            preexec_fn=file_size_limit(16_000))
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write ") and "File too large" in last and "unchanged" in last
    assert "Traceback" not in result.stderr
    assert {name: (run / name).read_bytes() for name in before} == before
    assert_loads_with_transformers(run / "best")
    assert leftovers(run) == []
    p, state = fit_one_thread(checkpoint.resume_config(run, {"epochs": 2}))  # with room again, it goes on
    assert state.epoch == 2 and [r["epoch"] for r in rundir.read_jsonl(run / "metrics.jsonl")] == [1, 2]


def test_read_only_output_folder_is_one_clear_error(tiny_bert_dir, files, tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        command = [sys.executable, "-m", "sentune", *cli_args(flags(tiny_bert_dir, files, parent / "run", epochs=1))]
        result = subprocess.run(without_root_overrides(command), env=ENV, capture_output=True, text=True,
                                timeout=300)
    finally:
        parent.chmod(0o755)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot create the run directory")


def test_a_train_that_fails_before_its_first_write_leaves_no_run_directory(tiny_bert_dir, files, tmp_path,
                                                                           monkeypatch):
    bad = tmp_path / "unlabelled.csv"
    bad.write_text("text\ngood film\n")  # no label column: the data check fails after the run dir is chosen
    from sentune.cli import main

    monkeypatch.chdir(tmp_path)
    for out in (None, tmp_path / "out" / "run"):  # the default runs/<name>-<time>, and a given nested folder
        values = {**flags(tiny_bert_dir, files, out, epochs=1), "train_file": str(bad)}
        if out is None:
            del values["output_dir"]
        result = CliRunner().invoke(main, cli_args(values))
        assert result.exit_code == 2 and "label" in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unlabelled.csv"]


# ---- non-finite loss ------------------------------------------------------------------------------------
class NanAt(torch.nn.Module):
    """The real loss, but NaN at the `at`-th call (fault injection)."""

    def __init__(self, inner: torch.nn.Module, at: int):
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0

    def forward(self, logits, labels):
        self.calls += 1
        loss = self.inner(logits, labels)
        return loss * float("nan") if self.calls == self.at else loss


def nan_at(monkeypatch, at: int) -> None:
    from sentune.training import prepare

    real = prepare.make_loss
    monkeypatch.setattr(prepare, "make_loss", lambda cfg, splits: NanAt(real(cfg, splits), at))


def test_nan_loss_stops_naming_the_step_and_keeps_best_and_checkpoint(tiny_bert_dir, files, tmp_path,
                                                                     monkeypatch):
    nan_at(monkeypatch, 8 + 3)  # 8 batches per epoch: the 3rd batch of epoch 2 (step index 2)
    run = tmp_path / "run"
    with pytest.raises(SentuneError, match="non-finite loss at epoch 2 step 2.*--on-nan skip"):
        fit_one_thread(config.resolve("imdb", None, flags(tiny_bert_dir, files, run, epochs=3)))
    assert json.loads((run / "checkpoint" / "state.json").read_text())["state"]["epoch"] == 1
    assert_loads_with_transformers(run / "best")
    best = load_file(str(run / "best" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in best.values())


def test_nan_loss_with_skip_skips_the_step_and_finishes(tiny_bert_dir, files, tmp_path, monkeypatch, capsys):
    nan_at(monkeypatch, 3)
    p, state = fit_one_thread(config.resolve("imdb", None, flags(tiny_bert_dir, files, tmp_path / "run",
                                                                   epochs=1, on_nan="skip")))
    assert state.epoch == 1
    assert "non-finite loss at epoch 1 step 2; step skipped" in capsys.readouterr().out
    assert all(torch.isfinite(q).all() for q in p.model.parameters())


# ---- out of memory --------------------------------------------------------------------------------------
def test_out_of_memory_suggests_smaller_batches_with_grad_accum(tiny_bert_dir, files, tmp_path, monkeypatch):
    from sentune.cli import main
    from sentune.training import loop as train

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train, "train_step", oom)
    result = CliRunner().invoke(main, cli_args(flags(tiny_bert_dir, files, tmp_path / "run", epochs=1)))
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: out of memory with --batch-size 8 --grad-accum 1 --max-length 32; try --batch-size 4 "
        "--grad-accum 2 (the same 8 examples per optimizer step), or a smaller --max-length")


def test_out_of_memory_messages():
    assert "--batch-size 16 --grad-accum 6" in guards.out_of_memory_message(32, 3, 512)
    assert "smaller --max-length or a larger --freeze-layers" in guards.out_of_memory_message(1, 1, 512)
    for error in (torch.OutOfMemoryError("CUDA out of memory"), RuntimeError("MPS backend out of memory"),
                  RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")):
        with pytest.raises(OutOfMemory), guards.out_of_memory_hint(8, 1, 128):
            raise error
    with pytest.raises(RuntimeError, match="unrelated"), guards.out_of_memory_hint(8, 1, 128):
        raise RuntimeError("unrelated")


# ---- safe loading ---------------------------------------------------------------------------------------
def test_no_torch_load_without_weights_only_and_no_pickle_in_src():
    unsafe = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)
            if name.endswith("torch.load") and not safe or name in ("pickle.load", "pickle.loads"):
                unsafe.append(f"{path.name}:{node.lineno} {name}")
    assert unsafe == []


# transformers copies custom code into its modules cache before importing it: the marker path is absolute.
EVIL_CODE = """from pathlib import Path
Path({marker!r}).write_text("yes")
raise ImportError("evil")
"""


def evil_model_dir(tiny_bert_dir: Path, tmp_path: Path) -> Path:
    """A model folder whose config asks for custom code; running that code leaves a marker file."""
    import shutil

    folder = tmp_path / "evil"
    shutil.copytree(tiny_bert_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "evil.py").write_text(EVIL_CODE.format(marker=str(folder / "code-ran")))
    return folder


def test_model_code_runs_only_with_trust_remote_code(tiny_bert_dir, tmp_path):
    from sentune import model as model_lib
    from sentune.config import ModelConfig
    from sentune.inference.classifier import Classifier

    folder = evil_model_dir(tiny_bert_dir, tmp_path)
    model_lib.load_model(ModelConfig(model=str(folder)), ["neg", "pos"])  # the built-in BERT classes
    Classifier.load(folder, backend="torch").predict(["fine"])
    assert not (folder / "code-ran").exists()
    with pytest.raises(Exception):  # noqa: B017 - whatever the evil module raises
        model_lib.load_model(ModelConfig(model=str(folder), trust_remote_code=True), ["neg", "pos"])
    assert (folder / "code-ran").exists()  # so the check above could have failed


def test_trust_remote_code_is_an_explicit_flag_off_by_default():
    from sentune.cli import main

    assert config.Config().model.trust_remote_code is False
    assert "--trust-remote-code" in CliRunner().invoke(main, ["train", "--help"]).output
    cfg = config.resolve("imdb", None, {"trust_remote_code": True})
    assert cfg.model.trust_remote_code is True


def test_serve_binds_localhost_unless_told(tiny_bert_dir, monkeypatch):
    import uvicorn

    from sentune.cli import main

    hosts = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: hosts.append(host))
    assert CliRunner().invoke(main, ["serve", str(tiny_bert_dir)]).exit_code == 0
    result = CliRunner().invoke(main, ["serve", str(tiny_bert_dir), "--host", "0.0.0.0"])
    assert result.exit_code == 0 and hosts == ["127.0.0.1", "0.0.0.0"]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "without an API key" in warnings[0] and "0.0.0.0" in warnings[0]
    keyed = CliRunner().invoke(main, ["serve", str(tiny_bert_dir), "--host", "0.0.0.0"],
                               env={"SENTUNE_API_KEY": "k" * 24})
    assert keyed.exit_code == 0 and "warning:" not in keyed.stderr  # a key is the safe network setting
