"""A sweep's report.md and plots, drawn with Optuna's own matplotlib visualizations.

    plots/optimization_history.png   every trial's score and the best so far
    plots/param_importances.png      which fields mattered (fANOVA; needs 2+ complete trials)
    plots/parallel_coordinate.png    each trial as a line through its values
    plots/slice.png                  score against each field
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from sentune import rundir, tasks

PLOTS = ("optimization_history", "param_importances", "parallel_coordinate", "slice")


def write_plots(sweep_dir: Path, study) -> dict[str, str]:
    """{plot: file or the reason it was skipped}: too few trials is a reason, not an error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    out: dict[str, str] = {}
    for name in PLOTS:
        path = sweep_dir / "plots" / f"{name}.png"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                drawn = getattr(vis, f"plot_{name}")(study)
            fig = _figure_of(drawn)
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 5))
            fig.savefig(path, dpi=100)
            plt.close(fig)
            out[name] = f"plots/{path.name}"
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as e:
            plt.close("all")
            out[name] = f"skipped: {e}"
    return out


def _figure_of(drawn):
    first = drawn.flat[0] if hasattr(drawn, "flat") else drawn
    return first.get_figure()


def write_sweep_report(sweep_dir: Path, study, final: dict | None) -> Path:
    rows = rundir.read_jsonl(sweep_dir / "trials.jsonl")
    plots = write_plots(sweep_dir, study)
    saved = rundir.read_json(sweep_dir / "sweep.json")
    metric = saved["config"]["train"]["select_metric"]
    states = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "failed")}
    lines = [f"# Sweep {sweep_dir.name}", "",
             f"{len(rows)} trials: {states['complete']} complete, {states['pruned']} pruned, "
             f"{states['failed']} failed; selected on validation {metric}; test evaluated once, for the chosen "
             "trial.", ""]
    lines += _best_section(final, metric)
    lines += ["## Trials", "", "| trial | state | score | epochs | best epoch | seconds | cache | params |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        score = f"{r['value']:.4f}" if r["value"] is not None else "–"
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in r["params"].items())
        note = f" ({r['error']})" if r.get("error") else ""
        lines.append(f"| {r['number']} | {r['state']}{note} | {score} | {len(r['epochs'])} | {r['best_epoch']} | "
                     f"{r['seconds']} | {r['cache']} | {params} |")
    lines += ["", "## Plots", ""]
    for name, where in plots.items():
        title = name.replace("_", " ")
        lines.append(f"![{title}]({where})" if where.startswith("plots/") else f"- {title}: {where}")
        lines.append("")
    lines += ["## Search", "", "```json", json.dumps({"space": saved["space"], "options": saved["options"]},
                                                      indent=2), "```", ""]
    path = sweep_dir / "report.md"
    rundir.atomic_write_text(path, "\n".join(lines))
    return path


def _best_section(final: dict | None, metric: str) -> list[str]:
    if not final:
        return []
    lines = [f"## Chosen trial: {final['trial']}", "",
             f"Validation {metric}: {final['validation'][metric]:.4f}. Parameters: "
             + ", ".join(f"`{k}={_fmt(v)}`" for k, v in final["params"].items()) + ".", ""]
    test = final.get("test")
    if test:
        lines += [f"Test (once): {tasks.task_of_metrics(test).headline(test)}. Weights: `best/`.", ""]
    return lines


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
