"""Tables and plots people read: what ops decide on (the promotion decision table and its plot),
a retraining run's outcome in a few lines, and what researchers compare (the strategy table,
mean and spread over seeds)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dfcl.data.arrays import ExperienceSpec
from dfcl.measure.metrics import MATRICES, SUMMARIES

WHY = {"worse": "worse beyond the allowed drop, with confidence: rejected",
       "better": "better, with confidence",
       "cannot tell": "the difference is within noise: ops decide",
       "too far below": "within noise, but below beyond gate.max_point_drop: rejected"}


def _pm(r: dict) -> str:
    return f"{r['difference']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]"


def decision_table(version: str, challenger: dict, verdict: dict, experiences: list[ExperienceSpec]) -> str:
    """Markdown for ops: per method, champion vs challenger AUC and balanced accuracy with the
    bootstrap interval of the difference, the verdict and why, and the dataset (DVC version)."""
    champion, metric = verdict["champion"], verdict["metric"]
    data = {e.key: (e.dataset, e.version) for e in experiences}
    if champion is None:
        lines = [f"## Challenger v{version} vs champion (none yet)", "",
                 "| method | AUC | balanced accuracy | dataset | DVC version |", "| --- | --- | --- | --- | --- |"]
        for key in challenger["methods"]:
            dataset, dvc = data.get(key, ("?", "?"))
            lines.append(f"| {key} | {challenger['auc'][key]:.3f} | "
                         f"{challenger.get('balanced_accuracy', {}).get(key, float('nan')):.3f} | {dataset} | `{dvc[:12]}` |")
    else:
        lines = [f"## Challenger v{version} vs champion v{champion['version']}", "",
                 f"Same test faces for both; difference = challenger - champion with its paired bootstrap interval "
                 f"(gate metric: **{metric}**).", "",
                 "| method | champion AUC | challenger AUC | AUC difference | champion bal. acc | challenger bal. acc "
                 "| bal. acc difference | verdict | why | dataset | DVC version |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for key, r in champion["methods"].items():
            dataset, dvc = data.get(key, ("?", "?"))
            why = WHY[r["verdict"]]
            if key not in champion.get("methods_learned", []):
                why += " (the champion never learned it)"
            if not r.get("challenger_learned", True):
                why += " (the challenger never learned it)"
            auc, bal = r["auc"], r["balanced_accuracy"]
            lines.append(f"| {key} | {auc['old']:.3f} | {auc['new']:.3f} | {_pm(auc)} | {bal['old']:.3f} | {bal['new']:.3f} "
                         f"| {_pm(bal)} | **{r['verdict']}** | {why} | {dataset} | `{dvc[:12]}` |")
        for key, why in champion.get("unscored", {}).items():
            dataset, dvc = data.get(key, ("?", "?"))
            lines.append(f"| {key} | | | | | | | **no score** | {why}: rejected | {dataset} | `{dvc[:12]}` |")
        avg = champion["average"]
        if avg is not None:
            lines.append(f"| **average** | | | {_pm(avg['auc'])} | | | {_pm(avg['balanced_accuracy'])} | "
                         f"**{avg['verdict']}** | {WHY[avg['verdict']]} | | |")
    video = challenger.get("video_auc", {})
    if video:  # methods with several faces per video
        lines += ["", "Challenger video-level AUC (mean P(fake) of a video's faces): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in video.items()) + "."]
    lines += ["", f"Challenger average AUC {challenger['avg_auc']:.3f}, forgetting ({metric}) "
                  f"{verdict['forgetting']:.3f}; accuracy forgetting {challenger['forgetting']:.3f}, BWT {challenger['bwt']:.3f}.",
              f"Gate: {'passed' if verdict['passed'] else 'failed: ' + '; '.join(verdict['reasons'])}."]
    return "\n".join(lines)


def decision_plot(verdict: dict, path: Path) -> Path | None:
    """Per method: champion and challenger AUC, and the difference with its interval."""
    from dfcl.measure.plots import plt

    champion = verdict["champion"]
    if champion is None or not champion["methods"]:
        return None
    keys = list(champion["methods"])
    rows = [champion["methods"][k]["auc"] for k in keys]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.6 * len(keys) + 1.8), sharey=True)
    y = np.arange(len(keys))
    left.barh(y - 0.2, [r["old"] for r in rows], 0.4, label=f"champion v{champion['version']}", color="grey")
    left.barh(y + 0.2, [r["new"] for r in rows], 0.4, label="challenger", color="tab:blue")
    left.axvline(0.5, color="k", ls=":", lw=1)
    left.set(xlim=(0, 1), xlabel="test AUC", yticks=y, yticklabels=keys)
    left.legend(fontsize=8, loc="lower right")
    colours = {"worse": "tab:red", "too far below": "tab:red", "better": "tab:green", "cannot tell": "tab:orange"}
    for i, k in enumerate(keys):
        r = champion["methods"][k]["auc"]
        right.errorbar(r["difference"], i, xerr=[[r["difference"] - r["low"]], [r["high"] - r["difference"]]],
                       fmt="o", color=colours[champion["methods"][k]["verdict"]], capsize=4)
    right.axvline(0, color="k", lw=1)
    right.set(xlabel="AUC difference, challenger - champion (bootstrap interval)")
    right.set_title("red: worse, green: better, orange: cannot tell", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# Figures of one training (dfcl.measure.metrics.strategy_report) that a sweep averages over seeds.
FIGURES = tuple(m.history for m in MATRICES) + tuple(s.name for s in SUMMARIES)


def over_seeds(runs: dict[int, dict]) -> dict:
    """One strategy's trainings {seed: report} as one entry: each figure's mean over the seeds,
    `std` with each figure's standard deviation (0 with one seed), and the `runs` themselves."""
    entry = {"std": {}, "runs": {str(seed): r for seed, r in runs.items()}}
    for key in FIGURES:
        values = [r.get(key) for r in runs.values()]
        if any(v is None for v in values):
            continue
        if isinstance(values[0], list):  # a matrix: row lengths grow, so average row by row
            rows = [np.array([v[i] for v in values], dtype=float) for i in range(len(values[0]))]
            entry[key] = [row.mean(axis=0).tolist() for row in rows]
            entry["std"][key] = [row.std(axis=0).tolist() for row in rows]
        else:
            entry[key], entry["std"][key] = float(np.mean(values)), float(np.std(values))
    return entry


def _mean_sd(value: float | None, spread: float | None, seeds: int) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.3f}" + (f" ± {spread:.3f}" if seeds > 1 else "")


def compare_table(report: dict) -> str:
    """The strategies side by side: final means (± standard deviation over seeds). "fwd AUC" is
    forward transfer: the mean AUC of each method just before it was learned."""
    seeds = len(report["seeds"])
    columns = [(s.label, s.name) for s in SUMMARIES if s.table]
    width = 16 if seeds > 1 else 10
    lines = [f"{'strategy':<10} " + " ".join(f"{title:>{width}}" for title, _ in columns)
             + (f"   ({seeds} seeds: mean ± std)" if seeds > 1 else "")]
    for name, r in report["strategies"].items():
        lines.append(f"{name:<10} " + " ".join(f"{_mean_sd(r.get(k), r['std'].get(k), seeds):>{width}}" for _, k in columns))
    return "\n".join(lines)


def outcome_summary(outcome: dict) -> str:
    """A retraining run's outcome (flows.retrain.retrain_detector) as text for the console."""
    if "results" not in outcome:
        return f"outcome: {outcome['outcome']}"
    r = outcome["results"]
    bal = r.get("balanced_accuracy", {})
    return "\n".join([
        f"\noutcome: {outcome['outcome']} (model version {outcome['version']}, MLflow run {outcome['run_id']})",
        *(f"  {key:<40} accuracy {r['accuracy'][key]:.3f}  balanced {bal.get(key, float('nan')):.3f}  "
          f"AUC {r['auc'][key]:.3f}" for key in r["methods"]),
        f"  average accuracy {r['avg_accuracy']:.3f}, balanced {r.get('avg_balanced_accuracy', float('nan')):.3f} "
        f"(threshold {r.get('threshold', 0.5):.3f}), average AUC {r['avg_auc']:.3f}, "
        f"forgetting {r['forgetting']:.3f} (AUC {r.get('auc_forgetting', float('nan')):.3f}), BWT {r['bwt']:.3f}",
        mlflow_hint(outcome["mlflow_url"])])


def mlflow_hint(url: str) -> str:
    """Where the run is in the MLflow UI (its "Model training" view), and with local tracking how
    to start that UI first."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    served = uri.startswith(("http://", "https://"))
    return f"MLflow run: {url}" + ("" if served else f"\n  (start the UI first: mlflow ui --backend-store-uri {uri})")
