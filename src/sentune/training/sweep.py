"""`sentune sweep`: an Optuna search in which every trial is a suffix-only run over shared frozen-layer caches.

    fixed config + space -> data loaded once (test split held back) -> Optuna study (RDB storage) ->
    trials in this process: `train` with the trial's values, caches kept in memory across trials, the
    validation score reported every epoch (the pruner may stop a trial) -> when all N trials are done:
    the best trial's weights become best/, the test split is evaluated once -> report.md and plots.

The study lives in an RDB storage (SQLite inside the sweep directory by default): several processes (one
per GPU) or machines (a PostgreSQL/MySQL URL) given the same --storage and --study-name share its trials.
A trial killed with its process (kill -9, a lost machine) is failed and its parameters queued again, on
--resume at once for a dead process of this host, by Optuna's heartbeat for other machines.

    <sweep>/sweep.json  fixed config, space, options (read back by --resume)
    <sweep>/study.db    the Optuna study (default storage)
    <sweep>/trials.jsonl, <sweep>/trials/trial-NNNN/ (metrics, no weights unless --keep-trial-weights)
    <sweep>/best/, final_metrics.json, report.md, plots/
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sentune import config as config_lib
from sentune import model as model_lib
from sentune import rundir, tasks
from sentune.config import Config
from sentune.errors import ConfigError, WriteError
from sentune.evaluation.metrics import selection_key
from sentune.training import space as space_lib
from sentune.training import study as study_lib
from sentune.training.prepare import settle_task

POLL_SECONDS = 2.0  # how often a process waiting for other processes' trials looks at the study again


@dataclass
class SweepOptions:
    n_trials: int = 20
    timeout: float | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    storage: str | None = None  # default: sqlite:///<sweep>/study.db
    study_name: str | None = None  # default: the sweep directory's name
    keep_trial_weights: bool = False


@dataclass
class SweepResult:
    study: Any  # optuna.Study
    best_trial: Any  # optuna.trial.FrozenTrial
    sweep_dir: Path
    best_dir: Path | None  # None where another machine ran the best trial and holds its weights
    final_metrics: dict | None


@dataclass
class Trials:
    """What this process keeps across its trials."""

    cfg: Config
    params: list
    sweep_dir: Path
    splits: Any
    options: SweepOptions
    store: Any = None


def sweep(cfg: Config | None, space: dict | str | None = None, n_trials: int | None = None, *,
          resume: str | None = None, trust_remote_code: bool = False, **options) -> SweepResult:
    """Run (or continue) a sweep; returns the study and the chosen run. `space`: a mapping, a YAML file or
    a packaged space name (None: the default space); `options`: the other `SweepOptions` fields. With
    `resume` (a sweep directory) its own config, space and options are used; n_trials/timeout may change,
    the storage's password and trust_remote_code (never saved) are given again."""
    if resume:
        cfg, raw_space, opts = read_sweep(resume, n_trials, options.pop("timeout", None), options.pop("storage", None))
        cfg.model.trust_remote_code = trust_remote_code
        if options:
            raise ConfigError(f"--resume continues a sweep with its own settings; drop {', '.join(options)}")
    else:
        if cfg is None:
            raise ConfigError("give a config (or resume a sweep directory)")
        raw_space = space if isinstance(space, dict) else space_lib.read_space(space)
        opts = SweepOptions(n_trials=20 if n_trials is None else n_trials, **options)
        opts.storage = study_lib.given_storage(opts.storage)
    params = check(cfg, raw_space, opts)
    splits = load_trial_splits(cfg)
    print(settle_task(cfg, splits[0]))  # the task and its selection metric, decided once for every trial
    # --output-dir may be shared on purpose (several processes, one study); a default name never is
    sweep_dir = Path(cfg.run.output_dir or rundir.new_dir(rundir.default_dir(f"sweep-{cfg.run.preset or 'run'}")))
    write_sweep(sweep_dir, cfg, raw_space, opts)
    study = study_lib.open_study(sweep_dir, opts, params, cfg.train.seed, cfg.train.epochs,
                                 "maximize" if tasks.sign(cfg.train.select_metric) > 0 else "minimize")
    study_lib.fail_orphans(study)
    trials = Trials(cfg, params, sweep_dir, splits, opts, new_store())
    run_trials(study, trials)
    return finalize(study, trials)


def check(cfg: Config, raw_space: dict, opts: SweepOptions) -> list:
    """Every mistake that can be caught before any work: space, options, the model's depth."""
    params = space_lib.parse_space(raw_space)
    if cfg.train.select_on != "validation":
        raise ConfigError("a sweep selects on validation (the test split is evaluated once, at the end); "
                          "drop --select-on test")
    if opts.n_trials < 1:
        raise ConfigError("--n-trials must be >= 1")
    if opts.sampler not in ("tpe", "random", "grid") or opts.pruner not in ("median", "hyperband", "none"):
        raise ConfigError("--sampler must be tpe|random|grid and --pruner median|hyperband|none")
    space_lib.check_against(params, model_lib.model_depth(cfg.model))
    for values in sample_corners(params):  # each field's own checks (validate) on the range's ends
        trial_cfg = copy.deepcopy(cfg)
        config_lib.validate(config_lib.apply(trial_cfg, space_lib.overrides(params, values), "search space"))
    return params


def sample_corners(params: list) -> list[dict]:
    low = {p.name: p.choices[0] if p.kind == "choice" else p.low for p in params}
    high = {p.name: p.choices[-1] if p.kind == "choice" else p.high for p in params}
    return [low, high]


def load_trial_splits(cfg: Config):
    """The splits every trial trains and validates on, loaded once; the test split is held back."""
    from sentune.data import splits as data

    splits = data.load_splits(cfg.data, cfg.train.seed, "validation")
    sources = {k: v for k, v in splits.sources.items() if k != "test"}
    return dataclasses.replace(splits, test=None, sources=sources), splits.test  # task and label scale kept


def new_store():
    from sentune.training.cache import CacheStore

    return CacheStore()


# ---- the trials ----------------------------------------------------------------------------------------
def run_trials(study, trials: Trials) -> None:
    """Start trials while fewer than N are finished or running; then wait for other processes' trials."""
    from tqdm.auto import tqdm

    n, started = trials.options.n_trials, time.monotonic()
    bar = tqdm(total=n, desc="Trials", dynamic_ncols=True, initial=min(n, study_lib.count(study)[0]))
    try:
        while True:
            finished, running = study_lib.count(study)
            bar.update(min(n, finished) - bar.n)
            bar.set_postfix_str(study_lib.best_text(study, trials.cfg.train.select_metric))
            timed_out = trials.options.timeout is not None and time.monotonic() - started > trials.options.timeout
            if finished >= n or timed_out:
                if running == 0:
                    return
            elif finished + running < n:
                study_lib.stop_if_failing(study, n)
                study_lib.run_one(study, lambda trial: objective(trial, trials), n, say=bar.write)
                study_lib.prune_weights(study, trials.options.keep_trial_weights)
                continue
            time.sleep(POLL_SECONDS)  # another process's trials are running: wait for them (or for a failure)
            study_lib.fail_orphans(study)
    finally:
        bar.close()
        study_lib.write_trials_jsonl(study, trials.sweep_dir)


def objective(trial, trials: Trials) -> float:
    """One trial: `train` with the trial's values on the shared splits and caches; returns the best epoch's
    validation score. Raises optuna.TrialPruned when the pruner stops it."""
    from sentune.training import loop
    from sentune.training.prepare import Shared

    values = {p.name: p.suggest(trial) for p in trials.params}
    run_dir = trials.sweep_dir / "trials" / f"trial-{trial.number:04d}"
    trial.set_user_attr("run_dir", str(run_dir.resolve()))
    trial.set_user_attr("sweep_dir", str(trials.sweep_dir.resolve()))
    cfg = trial_config(trials.cfg, trials.params, values, run_dir)
    key = selection_key("validation", cfg.train.select_metric)
    shared = Shared(splits=trials.splits[0], cache_store=trials.store, checkpoints=False,
                    on_epoch=lambda row: study_lib.report_epoch(trial, row, key))
    first_event, t0 = len(trials.store.events), time.perf_counter()
    try:
        with trial_log(run_dir):
            _, state = loop.fit(cfg, shared)
        trial.set_user_attr("best_epoch", state.best_epoch)
        return tasks.sign(cfg.train.select_metric) * state.best_score  # the metric itself (study direction)
    except KeyboardInterrupt:  # Ctrl-C: the trial is failed; queue its values again for --resume
        trial.set_user_attr("error", "interrupted (Ctrl-C); its parameters are queued again")
        trial.study.enqueue_trial(values)
        raise
    except Exception as e:
        import optuna

        if not isinstance(e, optuna.TrialPruned):
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
        raise
    finally:
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
        trial.set_user_attr("cache", trials.store.events[first_event:])
        drop_weights(run_dir, keep_best=True)  # best/ stays until a better trial finishes (prune_weights)


def trial_config(base: Config, params: list, values: dict, run_dir: Path) -> Config:
    cfg = copy.deepcopy(base)
    config_lib.apply(cfg, space_lib.overrides(params, values), "trial")
    config_lib.validate(cfg)
    cfg.run.output_dir, cfg.run.resume, cfg.run.progress = str(run_dir), None, False
    return cfg


@contextlib.contextmanager
def trial_log(run_dir: Path):
    """A trial's own output goes to its train.log; the terminal keeps the sweep's bar and one line per trial."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "a", encoding="utf-8", buffering=1) as log, contextlib.redirect_stdout(log):
        yield


def drop_weights(run_dir: Path, keep_best: bool) -> None:
    import shutil

    for name in ("checkpoint",) if keep_best else ("checkpoint", "best"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


# ---- the end: best/, test once, report -----------------------------------------------------------------
def finalize(study, trials: Trials) -> SweepResult:
    """Once all trials are done: best/ and final_metrics.json, written by one process only (a claim)."""
    best = study_lib.best_trial(study)
    sweep_dir = trials.sweep_dir
    source = Path(best.user_attrs.get("run_dir", "")) / "best"
    final_path = sweep_dir / "final_metrics.json"
    if best.user_attrs.get("sweep_dir") != str(sweep_dir.resolve()):
        print(f"The best trial ({best.number}) ran in {best.user_attrs.get('sweep_dir')} on "
              f"{best.user_attrs.get('host')}: its sweep directory holds best/ and final_metrics.json")
        return SweepResult(study, best, sweep_dir, None, None)
    if claim(sweep_dir):
        if source.is_dir():  # else a finisher that died after copying it already moved it
            rundir.atomic_dir(sweep_dir / "best", lambda d: copy_tree(source, d))
            if not trials.options.keep_trial_weights:
                drop_weights(source.parent, keep_best=False)
        final = test_once(sweep_dir / "best", trials.splits, best, trials.cfg)
        rundir.atomic_write_json(final_path, final)
        study_lib.write_trials_jsonl(study, sweep_dir)
        from sentune.evaluation.sweep_report import write_sweep_report

        write_sweep_report(sweep_dir, study, final)
        print(summary_line(best, final, trials.cfg.train.select_metric))
    print(f"Sweep directory: {sweep_dir}")
    kept = rundir.read_json(final_path) if final_path.exists() else None
    return SweepResult(study, best, sweep_dir, sweep_dir / "best", kept)


def claim(sweep_dir: Path) -> bool:
    """True for exactly one process: the one that creates the claim folder (atomic on a shared filesystem).
    A claim left by a dead process of this host (crashed while finishing) is taken over."""
    lock = sweep_dir / ".finalize"
    if (sweep_dir / "final_metrics.json").exists():
        return False
    try:
        lock.mkdir()
    except FileExistsError:
        owner = (lock / "owner").read_text().split() if (lock / "owner").exists() else []
        if len(owner) != 2 or owner[0] != socket.gethostname() or study_lib.pid_alive(int(owner[1])):
            return False
    (lock / "owner").write_text(f"{socket.gethostname()} {os.getpid()}")
    return True


def copy_tree(source: Path, target: Path) -> None:
    import shutil

    shutil.copytree(source, target, dirs_exist_ok=True)


def test_once(best_dir: Path, splits, best, cfg: Config) -> dict:
    """The chosen weights on the test split, the only time the sweep reads it: the task's metrics at the
    decision thresholds the trial tuned on validation, in a regression target's own units."""
    from sentune.evaluation.metrics import score
    from sentune.inference.classifier import Classifier

    trial_splits, test = splits
    out = {"trial": best.number, "params": best.params, "validation": {cfg.train.select_metric: best.value}}
    if test is None:
        return out | {"test": None, "note": "no test split was given"}
    clf = Classifier.load(best_dir, backend="torch")
    scores = clf.predict_proba(list(test["text"]), batch_size=cfg.train.eval_batch_size or 2 * cfg.train.batch_size)
    labels = tasks.unscale(list(test["label"]), trial_splits.label_scale)  # best/ answers in the data's units
    return out | {"test": score(clf.task, labels, scores, trial_splits.label_names, clf.settings.thresholds)}


def summary_line(best, final: dict, metric: str) -> str:
    test = final.get("test")
    tail = f", test {metric} {test[metric]:.4f} ({tasks.task_of_metrics(test).headline(test)})" if test else ""
    return f"Best trial {best.number}: validation {metric} {best.value:.4f}{tail}; params {best.params}"


# ---- the sweep directory's own description -------------------------------------------------------------
def write_sweep(sweep_dir: Path, cfg: Config, raw_space: dict, opts: SweepOptions) -> None:
    path = sweep_dir / "sweep.json"
    if path.exists():  # a second process or a resume: the first writer's description stands
        return
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot create the sweep directory {sweep_dir}: {e.strerror or e}") from None
    cfg = copy.deepcopy(cfg)
    cfg.run.output_dir = str(sweep_dir)
    options = asdict(opts) | {"storage": study_lib.shown_url(opts.storage)}  # a password is never saved
    rundir.atomic_write_json(path, {"config": config_lib.to_dict(cfg), "space": raw_space, "options": options})


def read_sweep(sweep_dir: str, n_trials: int | None, timeout: float | None,
               storage: str | None = None) -> tuple[Config, dict, SweepOptions]:
    path = Path(sweep_dir) / "sweep.json"
    if not path.is_file():
        raise ConfigError(f"{sweep_dir} is not a sweep directory (no sweep.json); pass the folder a sweep wrote")
    saved = rundir.read_json(path)
    opts = SweepOptions(**saved["options"])
    opts.n_trials = opts.n_trials if n_trials is None else n_trials
    opts.timeout = opts.timeout if timeout is None else timeout
    opts.storage = study_lib.resumed_storage(opts.storage, storage)
    return config_lib.from_dict(saved["config"]), saved["space"], opts
