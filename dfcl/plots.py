"""Plots people look at: the accuracy matrix heatmap and per-method forgetting curves."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def matrix_frame(matrix: list[list[float]], methods: list[str]) -> pd.DataFrame:
    """Row i = evaluation after experience i on methods 0..i (later cells empty)."""
    n = len(methods)
    full = [[row[j] if j < len(row) else math.nan for j in range(n)] for row in matrix]
    return pd.DataFrame(full, index=[f"after {m}" for m in methods[: len(matrix)]], columns=methods)


def heatmap(frame: pd.DataFrame, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(1.4 + 1.1 * frame.shape[1], 1.2 + 0.8 * frame.shape[0]))
    image = ax.imshow(frame.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(frame.shape[1]), frame.columns, rotation=30, ha="right")
    ax.set_yticks(range(frame.shape[0]), frame.index)
    for (i, j), v in np.ndenumerate(frame.to_numpy(dtype=float)):
        if not math.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k")
    ax.set_xlabel("evaluated on")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def forgetting_curves(frames: dict[str, pd.DataFrame], path: Path,
                      spread: dict[str, pd.DataFrame] | None = None) -> Path:
    """Accuracy of each method over the experiences that followed it, one panel per strategy;
    with `spread` (standard deviations over seeds), a band of ± one around each curve."""
    fig, axes = plt.subplots(1, len(frames), figsize=(4.2 * len(frames), 3.4), squeeze=False, sharey=True)
    for ax, (name, frame) in zip(axes[0], frames.items()):
        x = np.arange(len(frame))
        for method in frame.columns:
            mean = frame[method].to_numpy(dtype=float)
            line, = ax.plot(x, mean, marker="o", label=method)
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


def strategy_plots(entry: dict, methods: list[str], folder: Path, name: str) -> None:
    """Accuracy and AUC heatmaps (means over seeds) and forgetting curves (with their spread over
    seeds, when there are several) of one strategy's entry in a compare report."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = matrix_frame(entry["accuracy_matrix"], methods)
    seeds = len(entry.get("runs", {}))
    title = f" ({name}, mean of {seeds} seeds)" if seeds > 1 else f" ({name})"
    heatmap(frame, folder / f"{name}_accuracy_matrix.png", "accuracy" + title)
    heatmap(matrix_frame(entry["auc_matrix"], methods), folder / f"{name}_auc_matrix.png", "AUC" + title)
    spread = {name: matrix_frame(entry["std"]["accuracy_matrix"], methods)} if seeds > 1 else None
    forgetting_curves({name: frame}, folder / f"{name}_forgetting.png", spread)
