"""Any detector on any labelled folder: per-method and overall accuracy, ROC AUC, average
precision and equal error rate, plus a ROC plot. How users test a champion on a new dataset.

The folder goes through the same face extraction as training (any layout `dfcl ingest`
knows, videos included), into a temporary folder; every face of it counts (train and test
splits alike: none of it was used to train the model being evaluated)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_eer,
    binary_roc,
)

from dfcl.config import Params
from dfcl.data.arrays import SPLITS, face_arrays, face_videos
from dfcl.measure.scoring import balanced_accuracy, video_auc
from dfcl.measure.trust import coverage, ece, scores_and_features, sharpness
from dfcl.serving.detector import Detector


def scores(y: np.ndarray, p: np.ndarray, threshold: float = 0.5, videos: np.ndarray | None = None) -> dict:
    """Frame-level scores, plus `video_auc` (mean P(fake) per video) where videos have several faces."""
    yt, pt = torch.from_numpy(y).long(), torch.from_numpy(p).float()
    both = len(set(y.tolist())) == 2  # AUC, AP and EER need both classes
    out = {"faces": int(len(y)), "real": int((y == 0).sum()), "fake": int((y == 1).sum()),
            "accuracy": float(((p >= threshold) == (y == 1)).mean()) if len(y) else float("nan"),
            "balanced_accuracy": balanced_accuracy(yt, pt, threshold),
            "auc": float(binary_auroc(pt, yt)) if both else float("nan"),
            "ap": float(binary_average_precision(pt, yt)) if both else float("nan"),
            "eer": float(binary_eer(pt, yt)) if both else float("nan")}
    by_video = video_auc(y, p, videos)
    if not np.isnan(by_video):
        out["video_auc"] = by_video
        out["videos"] = int(len(set(videos)))
    return out


def trust_scores(detector: Detector, y: np.ndarray, p_raw: np.ndarray, judged: list[dict]) -> dict:
    """How sure the answers were: calibration error of the raw and the shown P(fake), the share
    answered (not "uncertain", withheld ones included) and their accuracy, the reals answered
    fake, the share flagged novel; {} for a model without trust data."""
    if detector.trust is None:
        return {}
    q = np.array([j["p_fake"] for j in judged])
    out = {"ece_raw": ece(y, p_raw), "ece": ece(y, q)} | coverage(y, [j["verdict"] for j in judged])
    if judged and "novel" in judged[0]:
        out["novel_share"] = float(np.mean([j["novel"] for j in judged]))
    return out


def evaluate(detector: Detector, data: str, params: Params, roc_png: Path | None = None) -> dict:
    from dfcl.data.extraction import extract_dataset

    size, threshold = detector.image_size, detector.shown_threshold
    params = detector.params_as_trained(params)  # faces cut as the model's training faces were
    name = Path(data).resolve().name
    with tempfile.TemporaryDirectory() as tmp:
        extract_dataset(data, Path(tmp) / name, params, name)
        per_method, ys, ps, vs, raws, judgements = {}, [], [], [], [], []
        for folder in sorted(p for p in (Path(tmp) / name).iterdir() if p.is_dir()):
            arrays = face_arrays(folder)
            x = np.concatenate([np.load(arrays[f"{s}_x"], mmap_mode="r") for s in SPLITS])
            y = np.concatenate([np.load(arrays[f"{s}_y"]) for s in SPLITS])
            v = np.concatenate([face_videos(arrays[f"{s}_x"]) for s in SPLITS])
            raw, features, spread = scores_and_features(detector.model, x,
                                                        flip=detector.trust is not None and detector.trust.flip)
            judged = detector.judge(raw, features, spread, sharpness(x))
            p = np.array([j["p_fake"] for j in judged], dtype=np.float32)
            per_method[folder.name] = scores(y, p, threshold, v) | trust_scores(detector, y, raw, judged)
            ys.append(y)
            ps.append(p)
            vs.append(v)
            raws.append(raw)
            judgements += judged
    # Real faces shared by several methods (FF++ originals) count once per method there;
    # overall pools every method's faces as they were scored.
    y, p = np.concatenate(ys), np.concatenate(ps)
    report = {"data": str(data), "image_size": size, "threshold": threshold, "calibrated": detector.trust is not None,
              "band": None if detector.trust is None else list(detector.trust.band), "methods": per_method,
              "overall": scores(y, p, threshold, np.concatenate(vs)) | trust_scores(detector, y, np.concatenate(raws), judgements)}
    if roc_png:
        plot_roc({m: (y, p) for m, y, p in zip(per_method, ys, ps)}, roc_png, report)
        if detector.trust is not None:
            report["reliability_plot"] = str(reliability_path(roc_png))
            plot_reliability(y, np.concatenate(raws), p, reliability_path(roc_png))
    return report


def table(report: dict) -> str:
    """The report as a text table: one row per method, then overall (with trust data: calibration
    error, and the share answered outside the "uncertain" band with its accuracy)."""
    trust = report.get("calibrated")
    head = f"{'method':<28} {'faces':>6} {'accuracy':>8} {'bal acc':>7} {'AUC':>6} {'AP':>6} {'EER':>6} {'video AUC':>9}"
    lines = [head + (f" {'ECE':>5} {'answered':>8} {'acc answered':>12} {'novel':>5}" if trust else "")]
    for name, r in [*report["methods"].items(), ("overall", report["overall"])]:
        video = f"{r['video_auc']:>9.3f}" if "video_auc" in r else f"{'-':>9}"  # one face per video: = AUC
        line = (f"{name:<28} {r['faces']:>6} {r['accuracy']:>8.3f} {r['balanced_accuracy']:>7.3f} "
                f"{r['auc']:>6.3f} {r['ap']:>6.3f} {r['eer']:>6.3f} {video}")
        if trust:
            line += (f" {r['ece']:>5.3f} {r['coverage']:>8.3f} {r['answered_accuracy']:>12.3f}"
                     f" {r.get('novel_share', float('nan')):>5.2f}")
        lines.append(line)
    if trust:
        lo, hi = report["band"]
        lines.append(f"answered: P(fake) below {lo:.2f} (real) or at least {min(hi, 1):.2f} (fake); between: uncertain. "
                     "ECE: calibration error of the P(fake) shown (raw in the JSON)")
    return "\n".join(lines)


def reliability_path(roc_png: Path) -> Path:
    """x.roc.png -> x.reliability.png: the reliability diagram beside the ROC plot."""
    return roc_png.with_name(roc_png.name.removesuffix(".png").removesuffix(".roc") + ".reliability.png")


def plot_reliability(y: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, path: Path, bins: int = 10) -> None:
    """Reliability diagram: the share of fakes against the mean P(fake) in each bin, raw and calibrated."""
    from dfcl.measure.plots import plt

    fig, ax = plt.subplots(figsize=(5, 5))
    edges = np.linspace(0, 1, bins + 1)
    for label, p in (("raw", raw), ("calibrated", calibrated)):
        which = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
        keep = [b for b in range(bins) if (which == b).any()]
        ax.plot([p[which == b].mean() for b in keep], [y[which == b].mean() for b in keep], "o-",
                label=f"{label} (ECE {ece(y, p):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="mean P(fake) in the bin", ylabel="share of fakes in the bin", title="reliability")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_roc(curves: dict, path: Path, report: dict) -> None:
    from dfcl.measure.plots import plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for method, (y, p) in curves.items():
        if len(set(y.tolist())) == 2:
            fpr, tpr, _ = binary_roc(torch.from_numpy(p).float(), torch.from_numpy(y).long())
            ax.plot(fpr, tpr, label=f"{method} (AUC {report['methods'][method]['auc']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate (real called fake)", ylabel="true positive rate (fake caught)",
           title=f"ROC on {Path(report['data']).name}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
