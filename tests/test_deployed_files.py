"""Issue 23, the files sentune writes and reads where it is deployed: permissions and durability, bad input
(decompression bombs, `$` in label names, formula cells, card paths, push links, export --overwrite)."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl

from sentune import atomic
from sentune.errors import ConfigError, DataError


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# ---- 11. durability and permissions ---------------------------------------------------------------------
def test_atomic_files_and_folders_honour_the_umask(tmp_path, umask_022):
    atomic.atomic_write_text(tmp_path / "a.txt", "x")
    atomic.atomic_dir(tmp_path / "model", lambda d: (d / "config.json").write_text("{}"))
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644  # mkstemp alone gives 0600
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755  # mkdtemp alone gives 0700
    os.umask(0o077)  # a private umask stays private
    atomic.atomic_write_text(tmp_path / "b.txt", "x")
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600


def test_renames_are_followed_by_an_fsync_of_the_folder(tmp_path, monkeypatch):
    synced_dirs = []
    real_fsync = os.fsync

    def fsync(fd):
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if path.is_dir():
            synced_dirs.append(path)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic.atomic_write_text(tmp_path / "sub" / "a.txt", "x")
    assert tmp_path / "sub" in synced_dirs
    synced_dirs.clear()
    for _ in range(2):  # a new folder, then a replaced one (the exchange path)
        atomic.atomic_dir(tmp_path / "model", lambda d: (d / "config.json").write_text("{}"))
        assert tmp_path in synced_dirs
        synced_dirs.clear()


# ---- 12. bad input ----------------------------------------------------------------------------------------
def test_gzip_that_decompresses_to_one_huge_line_is_refused_naming_the_line(tmp_path):
    from sentune.data import limits
    from sentune.data.readers import read_labelled_file, read_texts

    path = tmp_path / "bomb.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "fine", "label": "pos"}) + "\n")
        f.write('{"text": "' + "a" * (limits.MAX_LINE_CHARS + 10) + '", "label": "neg"}\n')
    assert path.stat().st_size < 100_000
    for read in (lambda: read_labelled_file(path), lambda: list(read_texts(str(path)))):
        with pytest.raises(DataError, match=r"bomb\.jsonl\.gz line 2: longer than 10,000,000 characters"):
            read()


def test_gzip_past_its_expansion_cap_is_refused(tmp_path, monkeypatch):
    from sentune.data import limits
    from sentune.data.readers import read_labelled_file

    rows = [{"text": f"text number {i} " * 20, "label": "pos" if i % 2 else "neg"} for i in range(2000)]
    path = tmp_path / "big.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    assert len(read_labelled_file(path).texts) == 2000  # under the cap: read as always
    monkeypatch.setattr(limits, "MIN_DECOMPRESSED", 0)
    monkeypatch.setattr(limits, "MAX_EXPANSION", 2)
    with pytest.raises(DataError, match=r"big\.jsonl\.gz line \d+: decompresses to more than [\d,]+ bytes"):
        read_labelled_file(path)


def test_dollar_in_a_label_name_does_not_break_the_confusion_plot(tmp_path):
    from sentune.evaluation.plots import plot_confusion

    path = plot_confusion([[3, 1], [0, 4]], ["price $x^{$", "cost $5"], tmp_path / "cm.png")
    assert path.stat().st_size > 0


def test_csv_predictions_escape_formula_cells():
    from sentune.inference.files import CsvWriter

    out = io.StringIO()
    writer = CsvWriter(out, ["=HYPERLINK(1)", "pos"])
    writer.write({"text": "=cmd|' /C calc'!A0", "@note": "-2+3", "id": 0, "label": "=HYPERLINK(1)", "score": -0.5,
                  "probs": {"=HYPERLINK(1)": 0.6, "pos": 0.4}})
    header, row = out.getvalue().splitlines()
    assert header == "text,'@note,id,label,score,prob_=HYPERLINK(1),prob_pos"
    assert row == "'=cmd|' /C calc'!A0,'-2+3,0,'=HYPERLINK(1),-0.5,0.6,0.4"  # numbers stay numbers


def card_run(root: Path, labels: list[str]) -> Path:
    """The files a card is made from, as a finished run leaves them (no training needed)."""
    import yaml

    from sentune import config

    run = root / "run"
    (run / "best").mkdir(parents=True)
    cfg = config.to_dict(config.Config())
    cfg["model"]["model"] = str(root / "home" / "alice" / "models" / "base-model")
    cfg["data"]["dataset"], cfg["data"]["train_file"] = None, str(root / "home" / "alice" / "secret" / "train.csv")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    source = {"source": cfg["data"]["train_file"], "rows": 10, "fingerprint": "ab" * 8,
              "label_counts": {label: 5 for label in labels}}
    (run / "manifest.json").write_text(json.dumps({"label_names": labels, "data": {"train": source,
                                                                                   "test": source}}))
    (run / "final_metrics.json").write_text(json.dumps({"accuracy": 0.5, "macro_f1": 0.5}))
    (run / "best" / "config.json").write_text(json.dumps({"id2label": dict(enumerate(labels))}))
    return run


def test_card_has_no_local_paths_and_escapes_label_names(tmp_path):
    from sentune.card import build_card

    run = card_run(tmp_path, ["<img src=x onerror=alert(1)>", "a|b", "[click](http://evil.example)"])
    text = str(build_card(run))
    assert str(tmp_path) not in text and "alice" not in text
    assert "train.csv" in text and "base-model" in text
    assert not re.search(r"(?<!\\)<img", text) and not re.search(r"(?<!\\)\[click\]", text)
    assert "\\<img src=x onerror=alert\\(1\\)\\>" in text and "a\\|b" in text


def test_push_refuses_a_link_out_of_the_folder(tmp_path):
    from sentune.push import plan_upload

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "README.md").write_text("# card\n")
    (tmp_path / "id_rsa").write_text("PRIVATE KEY")
    (model / "extra.txt").symlink_to(tmp_path / "id_rsa")
    with pytest.raises(ConfigError, match=r"extra\.txt links to .*id_rsa, outside"):
        plan_upload(model, "me/model")
    (model / "extra.txt").unlink()
    (model / "inside.json").symlink_to(model / "config.json")  # a link that stays inside is fine
    assert set(plan_upload(model, "me/model").files) == {"config.json", "README.md", "inside.json"}


def test_export_overwrite_never_deletes_a_folder_that_is_not_an_export(tiny_bert_dir, tmp_path):
    from sentune.inference.export import export

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="is not a sentune export .*nothing was deleted"):
        export(tiny_bert_dir, precious, overwrite=True)
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_a_jsonl_file_with_ordinary_lines_still_reads(tmp_path):
    from sentune.data.readers import read_texts

    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": "b"}])
    assert [r["text"] for r in read_texts(str(path))] == ["a", "b"]


# ---- 7. a database password on disk -----------------------------------------------------------------------
SECRET_URL = "postgresql+psycopg2://alice:S3cretPassw0rd@db.example/sweeps"


def test_sweep_json_and_report_never_hold_the_storage_password(tmp_path, monkeypatch):
    from sentune import config
    from sentune.training.sweep import SweepOptions, read_sweep, write_sweep

    sweep_dir = tmp_path / "sweep"
    write_sweep(sweep_dir, config.Config(), {"lr_head": [0.001, 0.01]}, SweepOptions(storage=SECRET_URL))
    saved = (sweep_dir / "sweep.json").read_text()
    assert "S3cretPassw0rd" not in saved and "postgresql+psycopg2://alice:***@db.example/sweeps" in saved
    monkeypatch.delenv("SENTUNE_STORAGE", raising=False)
    with pytest.raises(ConfigError, match=r"needs its password.*--storage URL or in \$SENTUNE_STORAGE"):
        read_sweep(str(sweep_dir), None, None)
    assert read_sweep(str(sweep_dir), None, None, storage=SECRET_URL)[2].storage == SECRET_URL
    with pytest.raises(ConfigError, match="is not the sweep's storage"):
        read_sweep(str(sweep_dir), None, None, storage=SECRET_URL.replace("sweeps", "other"))
    monkeypatch.setenv("SENTUNE_STORAGE", SECRET_URL)
    assert read_sweep(str(sweep_dir), None, None)[2].storage == SECRET_URL


@pytest.mark.parametrize("url", [SECRET_URL.replace("psycopg2", "nosuchdriver"),
                                 "postgresql+psycopg2://alice:S3cretPassw0rd@127.0.0.1:1/sweeps"])
def test_storage_errors_never_print_the_password(url, tmp_path, monkeypatch):
    from sentune.errors import SentuneError
    from sentune.training import study
    from sentune.training.sweep import SweepOptions

    monkeypatch.setattr(study.time, "sleep", lambda s: None)  # the retries of a refused connection
    with pytest.raises(SentuneError) as info:
        study.open_study(tmp_path, SweepOptions(storage=url), [], seed=0, epochs=1)
    assert "S3cretPassw0rd" not in str(info.value) and "alice:***@" in str(info.value)


# ---- 8. remote code only from a flag given on the command ----------------------------------------------------
def test_trust_remote_code_in_a_config_file_is_ignored_with_a_note(tmp_path, capsys):
    from sentune import config

    path = tmp_path / "cfg.yaml"
    path.write_text("model:\n  trust_remote_code: true\n")
    assert config.resolve(None, str(path), {}).model.trust_remote_code is False
    assert "trust_remote_code: True ignored" in capsys.readouterr().err
    assert config.resolve(None, str(path), {"trust_remote_code": True}).model.trust_remote_code is True


def test_resume_takes_trust_remote_code_only_from_the_flag(tmp_path):
    from sentune import config
    from sentune.training.checkpoint import resume_config

    run = tmp_path / "downloaded-run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "state.json").write_text("{}")
    cfg = config.Config()
    cfg.model.trust_remote_code = True  # what a run started with the flag (or a tampered file) says
    config.save(cfg, run / "config.yaml")
    assert resume_config(run, {}).model.trust_remote_code is False
    assert resume_config(run, {"trust_remote_code": True}).model.trust_remote_code is True


def test_sweep_resume_takes_trust_remote_code_only_from_the_flag(tmp_path):
    from sentune import config
    from sentune.training.sweep import SweepOptions, read_sweep, write_sweep

    cfg = config.Config()
    cfg.model.trust_remote_code = True
    write_sweep(tmp_path / "sweep", cfg, {"lr_head": [0.001, 0.01]}, SweepOptions())
    assert read_sweep(str(tmp_path / "sweep"), None, None)[0].model.trust_remote_code is False


# ---- 9. run directories ----------------------------------------------------------------------------------
def test_default_run_names_made_in_the_same_second_do_not_collide(tmp_path):
    from sentune import rundir

    name = tmp_path / "runs" / "demo-20260101-120000"
    first = rundir.open_run(name, new_name=True)
    second = rundir.open_run(name, new_name=True)  # the same second: the name is taken
    assert first.path == name and second.path == tmp_path / "runs" / "demo-20260101-120000-2"
    assert rundir.new_dir(name) == tmp_path / "runs" / "demo-20260101-120000-3"  # sweeps' default names too
    first.release()
    second.release()


def test_a_non_empty_run_directory_needs_resume_or_overwrite(tiny_bert_dir, module_toy_files, tmp_path):
    from test_resume import flags

    from sentune import config
    from sentune.training.loop import fit

    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"run is not empty \(notes.txt\).*--resume.*--overwrite"):
        fit(config.resolve(None, None, flags(tiny_bert_dir, module_toy_files, out, epochs=1)))
    with pytest.raises(ConfigError, match="is not a run directory .*nothing was deleted"):
        fit(config.resolve(None, None, flags(tiny_bert_dir, module_toy_files, out, epochs=1, overwrite=True)))
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    fit(config.resolve(None, None, flags(tiny_bert_dir, module_toy_files, out, epochs=1)))
    (out / "stale.txt").write_text("from the earlier run")
    fit(config.resolve(None, None, flags(tiny_bert_dir, module_toy_files, out, epochs=1, overwrite=True)))
    assert not (out / "stale.txt").exists() and (out / "best" / "config.json").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # replaced, not appended to


def test_a_run_holds_its_directory_and_a_second_resume_is_refused(tiny_bert_dir, module_toy_files, tmp_path,
                                                                  monkeypatch):
    from test_resume import flags

    from sentune import config, rundir
    from sentune.training import checkpoint
    from sentune.training.loop import fit

    out = tmp_path / "run"
    seen = []
    real_save = checkpoint.save

    def save_and_probe(p, state):  # while the run is alive, at its epoch ends: another process's view
        real_save(p, state)
        with pytest.raises(ConfigError, match=r"run is in use by a running sentune \(process \d+ on "):
            checkpoint.resume_config(out, {})
        with pytest.raises(ConfigError, match="is in use"):  # what a second train into it does first
            rundir.open_run(out, overwrite=True)
        if not seen:  # and the real thing, once: another process's `sentune train --resume`
            second = subprocess.run([sys.executable, "-m", "sentune", "train", "--resume", str(out)],
                                    capture_output=True, text=True, timeout=300,
                                    env={**os.environ, "HF_HUB_OFFLINE": "1"})
            assert second.returncode == 2 and "is in use by a running sentune" in second.stderr, second.stderr
            assert "Traceback" not in second.stderr
        seen.append(state.epoch)

    monkeypatch.setattr(checkpoint, "save", save_and_probe)
    fit(config.resolve(None, None, flags(tiny_bert_dir, module_toy_files, out, epochs=2)))
    assert seen == [1, 2]
    rundir.check_unlocked(out)  # released at the end
    assert checkpoint.resume_config(out, {"epochs": 3}).train.epochs == 3


# ---- 10. the frozen-layer cache is checked, keyed on the numerics, cleaned and bounded ----------------------
from test_cache import MAX_LEN, PrefixCounter, feeds_for, tiny  # noqa: E402


@pytest.fixture(scope="module")
def tokens():
    """The toy split of test_cache.py, tokenized by the tiny BERT's tokenizer (as feeds_for wants it)."""
    from conftest import build_tokenizer, sentiment_rows

    tok, rows = build_tokenizer("bert"), sentiment_rows(40, seed=5)
    ids = tok([r["text"] for r in rows], truncation=True, max_length=MAX_LEN)["input_ids"]
    return {"bert": (ids, [int(r["label"] == "pos") for r in rows], tok.pad_token_id, len(tok))}


def disk_cache(model, tmp_path, tokens, k: int = 2):
    from sentune.training import cache as cache_lib

    lines: list[str] = []
    feeds = cache_lib.cache_feeds(model, k, feeds_for(tokens, "bert"), mode="disk", cache_dir=str(tmp_path),
                                  fingerprint_parts={"model": "tiny"}, device="cpu", log=lines.append)
    return feeds, lines[-1]


def test_a_corrupted_cache_file_is_rebuilt_never_used(tokens, tmp_path, monkeypatch):
    model = tiny(tokens, "bert")
    first, _ = disk_cache(model, tmp_path, tokens)
    expected = next(first["test"].batches(0))["hidden"].clone()
    del first
    for data in tmp_path.glob("prefix-*.bin"):  # bit rot: one byte in the middle of the hidden states
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    counter = PrefixCounter(monkeypatch)
    with pytest.warns(UserWarning, match="does not match its recorded hash"):
        again, line = disk_cache(model, tmp_path, tokens)
    assert counter.calls > 0 and "built train+test" in line
    assert torch.equal(next(again["test"].batches(0))["hidden"], expected)
    counter.calls = 0
    disk_cache(model, tmp_path, tokens)  # the rebuilt files are whole again: reused
    assert counter.calls == 0


@pytest.mark.parametrize("change", ["hidden_act", "layer_norm_eps", "transformers"])
def test_cache_key_follows_config_numerics_and_library_versions(change, tokens, tmp_path, monkeypatch):
    import transformers

    model = tiny(tokens, "bert")
    disk_cache(model, tmp_path, tokens)
    counter = PrefixCounter(monkeypatch)
    if change == "hidden_act":
        model.config.hidden_act = "relu"
    elif change == "layer_norm_eps":
        model.config.layer_norm_eps = 1e-5
    else:
        monkeypatch.setattr(transformers, "__version__", "99.0.0")
    _, line = disk_cache(model, tmp_path, tokens)
    assert counter.calls > 0 and "built train+test" in line


def test_temporaries_of_killed_builds_are_cleaned_and_live_ones_kept(tokens, tmp_path):
    import fcntl

    dead, live, young = (tmp_path / f".prefix-{name}.bin.abc123.tmp" for name in ("dead", "live", "young"))
    for tmp in (dead, live, young):
        tmp.write_bytes(b"\0" * 1024)
    for tmp in (dead, live):  # an hour old
        os.utime(tmp, (os.path.getmtime(tmp) - 3600,) * 2)
    writer = os.open(live, os.O_RDONLY)
    fcntl.flock(writer, fcntl.LOCK_SH)  # what a live writer holds while it fills its temporary
    try:
        disk_cache(tiny(tokens, "bert"), tmp_path, tokens)
        assert not dead.exists() and live.exists() and young.exists()
    finally:
        os.close(writer)


def test_cache_list_and_prune_by_age_and_size(tokens, tmp_path):
    from click.testing import CliRunner

    from sentune.cli import main

    disk_cache(tiny(tokens, "bert"), tmp_path, tokens)
    files = sorted(tmp_path.glob("prefix-*.bin"))
    old = files[0]
    os.utime(old, (os.path.getmtime(old) - 10 * 86400,) * 2)
    listed = CliRunner().invoke(main, ["cache", "list", "--cache-dir", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    assert listed.output.count("prefix-") == 2 and "layers 0-1" in listed.output and "10.0 d" in listed.output
    assert "total for bert" in listed.output  # a model built in code has no path: its type names it
    assert "in 2 files under" in listed.output
    dry = CliRunner().invoke(main, ["cache", "prune", "--older-than", "7", "--dry-run", "--cache-dir", str(tmp_path)])
    assert "would remove" in dry.output and old.exists()
    pruned = CliRunner().invoke(main, ["cache", "prune", "--older-than", "7", "--cache-dir", str(tmp_path)])
    assert pruned.exit_code == 0 and not old.exists() and not old.with_suffix(".json").exists()
    assert files[1].exists()
    CliRunner().invoke(main, ["cache", "prune", "--max-gb", "0", "--cache-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_storage_from_the_environment_for_new_sweeps_not_for_sqlite_resumes(tmp_path, monkeypatch):
    from sentune.training import study

    monkeypatch.setenv("SENTUNE_STORAGE", SECRET_URL)
    assert study.given_storage(None) == SECRET_URL  # a new sweep: the password never on the command line
    assert study.resumed_storage(None, None) is None  # a sweep on its own study.db is not moved by the variable
