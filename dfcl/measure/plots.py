"""Plots people look at: the per-method matrices as heatmaps and per-method forgetting curves."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from dfcl.measure.metrics import MATRICES  # noqa: E402


def matrix_frame(matrix: list[list[float]], methods: list[str]) -> pd.DataFrame:
    """Row i = evaluation after experience i on methods 0..i, and on later methods where they were
    evaluated before being learned (the upper triangle; NaN where a method was not known yet)."""
    n = len(methods)
    full = [[row[j] if j < len(row) else math.nan for j in range(n)] for row in matrix]
    return pd.DataFrame(full, index=[f"after {m}" for m in methods[: len(matrix)]], columns=methods)


def heatmap(frame: pd.DataFrame, path: Path, title: str) -> Path:
    """The matrix in colour. Cells above the diagonal (a method evaluated before it was learned:
    forward transfer) are hatched, below a staircase line, and the title says so."""
    fig, ax = plt.subplots(figsize=(1.4 + 1.1 * frame.shape[1], 1.4 + 0.8 * frame.shape[0]))
    values = frame.to_numpy(dtype=float)
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis")
    upper = [(i, j) for (i, j), v in np.ndenumerate(values) if j > i and not math.isnan(v)]
    if upper:
        for i, j in upper:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", edgecolor="w", lw=0, alpha=0.6))
        rows = values.shape[0]  # the staircase between each row's learned methods and the ones to come
        xs = [x for i in range(rows) for x in (i + 0.5, i + 0.5)]
        ys = [y for i in range(rows) for y in (i - 0.5, i + 0.5)]
        ax.plot(xs, ys, color="w", lw=2, scalex=False, scaley=False)
        title += "\nhatched: not learned yet (forward transfer)"
    ax.set_xticks(range(frame.shape[1]), frame.columns, rotation=30, ha="right")
    ax.set_yticks(range(frame.shape[0]), frame.index)
    for (i, j), v in np.ndenumerate(frame.to_numpy(dtype=float)):
        if not math.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k")
    ax.set_xlabel("evaluated on")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def forgetting_curves(frames: dict[str, pd.DataFrame], path: Path,
                      spread: dict[str, pd.DataFrame] | None = None) -> Path:
    """Accuracy of each method over the experiences that followed it, one panel per strategy
    (dotted before it: the method not learned yet, where it was evaluated); with `spread`
    (standard deviations over seeds), a band of ± one around each curve."""
    fig, axes = plt.subplots(1, len(frames), figsize=(4.2 * len(frames), 3.4), squeeze=False, sharey=True)
    for ax, (name, frame) in zip(axes[0], frames.items()):
        x = np.arange(len(frame))
        for j, method in enumerate(frame.columns):  # method j is learned at experience j
            mean = frame[method].to_numpy(dtype=float)
            line, = ax.plot(x, np.where(x >= j, mean, np.nan), marker="o", label=method)
            ax.plot(x, np.where(x <= j, mean, np.nan), ls=":", color=line.get_color())
            if spread is not None:
                sd = spread[name][method].to_numpy(dtype=float)
                ax.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.2)
        ax.set_xticks(x, x)
        ax.set_xlabel("after experience")
        ax.set_title(name)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("accuracy" + (" (mean ± std over seeds)" if spread is not None else ""))
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def matrix_heatmaps(matrices: dict, methods: list[str], folder: Path, title: str,
                    prefix: str = "") -> dict[str, pd.DataFrame]:
    """A heatmap per per-method metric (dfcl.measure.metrics.MATRICES) of `matrices` {history key:
    matrix} with a measured cell, as <prefix><history key>.png in `folder`, titled with the
    metric and `title`; returns the frames by history key."""
    frames = {}
    for metric in MATRICES:
        matrix = matrices.get(metric.history) or []
        if all(math.isnan(v) for row in matrix for v in row):  # e.g. video AUC with one face per video
            continue
        frames[metric.history] = matrix_frame(matrix, methods)
        heatmap(frames[metric.history], folder / f"{prefix}{metric.history}.png", metric.label + title)
    return frames


def strategy_plots(entry: dict, methods: list[str], folder: Path, name: str) -> None:
    """Heatmaps of the strategy's matrices (means over seeds) and forgetting curves (with their
    spread over seeds, when there are several) of one strategy's entry in a compare report."""
    folder.mkdir(parents=True, exist_ok=True)
    seeds = len(entry.get("runs", {}))
    matrix_heatmaps(entry, methods, folder, f" ({name}, mean of {seeds} seeds)" if seeds > 1 else f" ({name})",
                    prefix=f"{name}_")
    spread = {name: matrix_frame(entry["std"]["accuracy_matrix"], methods)} if seeds > 1 else None
    forgetting_curves({name: matrix_frame(entry["accuracy_matrix"], methods)}, folder / f"{name}_forgetting.png", spread)
