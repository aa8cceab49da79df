"""The Optuna side of a sweep: storage, sampler, pruner, one trial at a time, faults, trials.jsonl.

Everything several processes must agree on lives in the study's RDB storage (the trials, their states,
per-epoch values and user attributes), so any process can rewrite `trials.jsonl` from it at any time.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Literal

import optuna
from optuna.trial import TrialState

from sentune import rundir
from sentune.errors import ConfigError, SentuneError

HEARTBEAT_SECONDS = 10  # a running trial's process writes a heartbeat this often ...
GRACE_SECONDS = 60  # ... and a trial without one for this long (its machine died) is failed and retried
MAX_RETRIES = 3
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class Surplus(Exception):
    """Two processes asked for a trial at the same moment and N were already finished or running."""


def open_study(sweep_dir: Path, opts, params: list, seed: int, epochs: int,
               direction: Literal["maximize", "minimize"] = "maximize") -> optuna.Study:
    """The sweep's study; `direction`: the selection metric's (minimize for errors such as RMSE)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own line per trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    url = opts.storage or f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(5):  # processes starting together race to create the tables and the study
        try:
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRIES))
            return optuna.create_study(storage=storage, study_name=opts.study_name or sweep_dir.name,
                                       direction=direction, load_if_exists=True,
                                       sampler=make_sampler(opts, params, seed), pruner=make_pruner(opts, epochs))
        except (ImportError, ValueError) as e:  # no driver for the URL's database, or a malformed URL
            hint = ("; for PostgreSQL: pip install psycopg2-binary and write postgresql+psycopg2://..."
                    if "postgres" in url else "")
            raise ConfigError(f"--storage {url}: {str(e).strip()}{hint}") from None
        except Exception as e:  # sqlalchemy's OperationalError and friends
            if attempt == 4:
                raise SentuneError(f"cannot open the study in {url}: {str(e).splitlines()[0]}") from None
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def make_sampler(opts, params: list, seed: int):
    if opts.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if opts.sampler == "grid":
        return optuna.samplers.GridSampler({p.name: p.grid() for p in params}, seed=seed)
    # half the trials (at most 10) explore at random before TPE models the good region
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, min(10, opts.n_trials // 2)))


def make_pruner(opts, epochs: int):
    if opts.pruner == "median":  # stop a trial whose epoch score is below the median of earlier trials' there
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if opts.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def count(study) -> tuple[int, int]:
    """(finished: complete or pruned, running) trials of the whole study, every process's."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running


def run_one(study, objective, n_trials: int, say=print) -> None:
    """One trial through Optuna's own loop (heartbeat, stale-trial check, failures recorded), then its line."""
    def guarded(trial):
        ahead = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        if sum(t.number < trial.number for t in ahead) >= n_trials:
            trial.set_user_attr("surplus", True)
            raise Surplus
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        return objective(trial)

    before = {t.number for t in study.get_trials(deepcopy=False)}
    study.optimize(guarded, n_trials=1, catch=(Exception,), gc_after_trial=True)
    for t in study.get_trials(deepcopy=False):
        if t.number not in before and not t.user_attrs.get("surplus") and t.user_attrs.get("pid") == os.getpid():
            say(trial_line(t))


def stop_if_failing(study, n_trials: int) -> None:
    """A mistake every trial repeats (bad data, out of memory at any value) must not loop forever."""
    failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
              if t.user_attrs.get("error") and not t.user_attrs.get("surplus")]
    if len(failed) >= max(3, n_trials):
        raise SentuneError(f"{len(failed)} trials failed, the last with: {failed[-1].user_attrs['error']}; "
                           "see trials.jsonl")


def report_epoch(trial, row: dict, key: str) -> None:
    """The pruner's view of a trial: the selection score after every epoch."""
    score = row.get(key)
    if score is None:
        raise SentuneError(f"a sweep needs a validation score every epoch ({key}); give validation data")
    trial.report(score, row["epoch"])
    if trial.should_prune():
        raise optuna.TrialPruned(f"pruned after epoch {row['epoch']} ({key} {score:.4f})")


def fail_orphans(study) -> None:
    """Fail (and queue again) running trials whose process on this host is gone: kill -9, then --resume.
    Trials of other machines are left to the heartbeat."""
    optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRIES)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or pid is None or pid_alive(pid):
            continue
        try:
            study._storage.set_trial_user_attr(t._trial_id, "error", f"its process ({pid}) died mid-trial")
            if study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                retry(study, study._storage.get_trial(t._trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process got there first


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def best_trial(study):
    try:
        return study.best_trial
    except ValueError:
        raise SentuneError("no trial completed (see trials.jsonl for each trial's error); nothing to select") from None


def best_text(study, metric: str) -> str:
    try:
        return f"best {metric} {study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        return ""


def prune_weights(study, keep_all: bool) -> None:
    """Only the best trial so far keeps best/ (needed to write the sweep's best/); running trials are left."""
    if keep_all:
        return
    try:
        best = study.best_trial.number
    except ValueError:  # no complete trial yet
        best = None
    for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.FAIL)):
        run_dir = t.user_attrs.get("run_dir")
        if run_dir and t.number != best:
            shutil.rmtree(Path(run_dir) / "best", ignore_errors=True)


def trial_row(t) -> dict:
    cache = t.user_attrs.get("cache") or []
    return {
        "number": t.number, "state": {"COMPLETE": "complete", "PRUNED": "pruned"}.get(t.state.name, "failed"),
        "params": t.params, "value": t.value,
        "epochs": [{"epoch": e, "score": v} for e, v in sorted(t.intermediate_values.items())],
        "best_epoch": t.user_attrs.get("best_epoch"), "seconds": t.user_attrs.get("seconds"),
        "cache": "reused" if cache and all(c["status"] == "reused" for c in cache) else
                 ("+".join(sorted({c["status"] for c in cache})) or "off"),
        "cache_detail": cache, "error": t.user_attrs.get("error"),
        "retry_of": t.system_attrs.get("failed_trial"), "host": t.user_attrs.get("host"),
        "run_dir": t.user_attrs.get("run_dir"),
    }


def write_trials_jsonl(study, sweep_dir: Path) -> None:
    """The whole study as one JSON line per trial (running and never-run surplus trials left out)."""
    import json

    rows = [trial_row(t) for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.FAIL))
            if not t.user_attrs.get("surplus")]
    rundir.atomic_write_text(sweep_dir / "trials.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in rows))


def trial_line(t) -> str:
    row = trial_row(t)
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["params"].items())
    score = f"{row['value']:.4f}" if row["value"] is not None else "-"
    tail = f"; {row['error']}" if row["error"] else ""
    return (f"trial {t.number} {row['state']}: score {score} after {len(row['epochs'])} epoch(s), "
            f"{row['seconds']} s, cache {row['cache']}; {params}{tail}")
