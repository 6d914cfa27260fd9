"""Shortcut diagnostics: does a detector see the blend, or the camera, the sharpness, the border?

For each model (a learner folder, e.g. a generalisation row's final or self-blended-only model):

  * sharpness: Spearman correlation of the model's logit with log Laplacian variance of the face,
    per set and class. Within one class a detector of forgery should not care how sharp a face is
    (|rho| <= 0.2); a strong positive rho is "sharper = fake".
  * seam vs global: AUC on self-blended fakes of held-out real faces (the seam test) against AUC on
    the control fakes `self_blend(..., whole=True)`: the same colour and sharpness change over the
    whole crop, no blending boundary. A detector of seams scores the control clearly lower.
  * camera: real-vs-real AUC, FF++ test reals (as "real") against the reals of each set never
    trained on (as "fake"): near 0.5 = it does not tell cameras apart, far from it = a camera
    detector that calls other cameras' photos forged.
  * border: AUC on every set with the outer 12% band of each face replaced by its mean colour: a
    detector that looks at the face loses little.

Faces come from the generalisation benchmark's workspace (extracted there if missing, with the
same settings), so the sets are those it scores.

    python benchmarks/shortcuts.py --learner NAME=FOLDER [--learner ...] [--tag cpu] [-S ...]

Writes benchmarks/results/shortcuts_<tag>.{md,json,png}; rows already there are kept.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # run as a script: the repo and sibling modules
from common import made_folders, resumed_report  # noqa: E402
from generalization import FFPP, UNSEEN, faces  # noqa: E402

BAND = 0.12


def _load(paths: dict, splits) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([np.load(paths[f"{s}_x"], mmap_mode="r") for s in splits])
    y = np.concatenate([np.load(paths[f"{s}_y"]) for s in splits])
    return x, y


def logits(model, x: np.ndarray) -> np.ndarray:
    from dfcl.measure.scoring import fake_probabilities

    p = fake_probabilities(model, x).double().clamp(1e-7, 1 - 1e-7).numpy()
    return np.log(p / (1 - p))


def auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else float("nan")


def band_masked(x: np.ndarray, band: float = BAND) -> np.ndarray:
    """Each face with its outer band (a share of the side) set to the face's mean colour."""
    out = np.array(x)
    b = max(1, round(band * x.shape[1]))
    mean = out.reshape(len(out), -1, 3).mean(1).round().astype(np.uint8)[:, None, None, :]
    for sl in (np.s_[:, :b], np.s_[:, -b:], np.s_[:, :, :b], np.s_[:, :, -b:]):
        out[sl] = np.broadcast_to(mean, out[sl].shape)
    return out


def blends(reals: np.ndarray, points, whole: bool, seed: int) -> np.ndarray:
    from dfcl.data.sbi import self_blend

    rng = np.random.default_rng(seed)
    return np.stack([self_blend(np.array(f), rng, None if points is None else points[i], whole=whole)[0]
                     for i, f in enumerate(reals)])


def diagnose(model, sets: dict, sbi_test: dict) -> dict:
    from scipy.stats import spearmanr

    from dfcl.data.arrays import beside
    from dfcl.measure.trust import sharpness

    out = {"spearman": {}, "auc": {}, "auc_band_masked": {}, "real_vs_real": {}}
    reals_of = {}
    for name, (paths, splits) in sets.items():
        x, y = _load(paths, splits)
        z, sharp = logits(model, x), sharpness(x)
        for label, cls in ((0, "real"), (1, "fake")):
            pick = y == label
            if pick.sum() > 2:
                out["spearman"][f"{name} {cls}"] = float(spearmanr(z[pick], sharp[pick]).statistic)
        out["auc"][name] = auc(y, z)
        out["auc_band_masked"][name] = auc(y, logits(model, band_masked(x)))
        reals_of[name] = z[y == 0]
    ffpp_reals = np.concatenate([reals_of[m] for m in FFPP])
    for name in UNSEEN:
        score = np.concatenate([ffpp_reals, reals_of[name]])
        out["real_vs_real"][name] = auc(np.r_[np.zeros(len(ffpp_reals)), np.ones(len(reals_of[name]))], score)
    # Seam vs global on the self-blended experience's held-out reals (none of them trained).
    x, y = _load(sbi_test, ("test",))
    reals = x[y == 0]
    points_file = beside(sbi_test["test_x"], "landmarks")
    points = np.load(points_file)[y == 0] if points_file.is_file() else None
    z_real = logits(model, reals)
    for kind, whole in (("seam", False), ("global_only", True)):
        z_fake = logits(model, blends(reals, points, whole, seed=1))
        out[f"sbi_{kind}_auc"] = auc(np.r_[np.zeros(len(reals)), np.ones(len(reals))], np.r_[z_real, z_fake])
    return out


def markdown(report: dict) -> str:
    lines = [f"# Shortcut diagnostics ({report['tag']})", "", f"Machine: {report['machine']}. Dates: "
             f"{', '.join(report['dates'])}.", "", "Commands:", "", *[f"    {c}" for c in report["commands"]], "",
             "Targets (issue 35): |Spearman(logit, log sharpness)| <= 0.2 within every class; global-only control AUC "
             "at least 0.15 below the seam test's; real-vs-real AUC within 0.40-0.60.", "",
             "| model | seam AUC | global-only AUC | real-vs-real DFDC | FLUX | StyleGAN | max abs Spearman (where) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in report["rows"].items():
        worst = max(r["spearman"], key=lambda k: abs(r["spearman"][k]))
        rvr = r["real_vs_real"]
        lines.append(f"| {name} | {r['sbi_seam_auc']:.3f} | {r['sbi_global_only_auc']:.3f} | {rvr['dfdc']:.3f} | "
                     f"{rvr['flux']:.3f} | {rvr['stylegan']:.3f} | {r['spearman'][worst]:+.2f} ({worst}) |")
    for name, r in report["rows"].items():
        lines += ["", f"## {name} ({r['learner']})", "", "| set | AUC | AUC, outer 12% masked | Spearman real | Spearman fake |",
                  "| --- | --- | --- | --- | --- |"]
        for s in r["auc"]:
            lines.append(f"| {s} | {r['auc'][s]:.3f} | {r['auc_band_masked'][s]:.3f} | "
                         f"{r['spearman'].get(s + ' real', float('nan')):+.2f} | {r['spearman'].get(s + ' fake', float('nan')):+.2f} |")
    lines += ["", f"Plot: `shortcuts_{report['tag']}.png`."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    from dfcl.measure.plots import plt

    rows = report["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    keys = sorted({k for r in rows.values() for k in r["spearman"]})
    width = 0.8 / max(len(rows), 1)
    for i, (name, r) in enumerate(rows.items()):
        axes[0].bar(np.arange(len(keys)) + i * width, [r["spearman"].get(k, np.nan) for k in keys], width, label=name)
        sets = list(r["auc"])
        axes[1].bar(np.arange(len(sets)) + i * width, [r["auc"][s] for s in sets], width, alpha=0.5)
        axes[1].scatter(np.arange(len(sets)) + i * width, [r["auc_band_masked"][s] for s in sets], marker="_", s=200,
                        color="k")
    axes[0].axhspan(-0.2, 0.2, color="green", alpha=0.1)
    axes[0].set_xticks(np.arange(len(keys)), keys, rotation=60, fontsize=6, ha="right")
    axes[0].set(title="Spearman(logit, log sharpness) per set and class", ylim=(-1, 1))
    axes[0].legend(fontsize=7)
    sets = list(next(iter(rows.values()))["auc"])
    axes[1].set_xticks(np.arange(len(sets)), sets, rotation=60, fontsize=7, ha="right")
    axes[1].axhline(0.5, color="grey", lw=0.8, ls=":")
    axes[1].set(title="AUC (bars) and with the outer 12% masked (ticks)", ylim=(0.2, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learner", action="append", required=True, help="NAME=LEARNER_FOLDER (repeat)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("-S", "--set", action="append", default=[], help="the params the learners were trained with")
    parser.add_argument("--unseen-cap", type=int, default=100)
    parser.add_argument("--sbi-reals", default="", help="as the generalisation run's (its self-blended test faces)")
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--workspace", default=str(REPO / "benchmarks" / ".work" / "generalization"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    from dfcl.config import load_params
    from dfcl.serving.detector import load_detector

    work, out = made_folders(args.workspace, args.out)
    stem = out / f"shortcuts_{args.tag}"
    report = resumed_report(stem, args.tag, "rows")
    params = load_params(REPO / "params.yaml", args.set)
    real_sets = [r for r in args.sbi_reals.split(",") if r]
    sets = faces(Path(args.data), work, params, args.unseen_cap, real_sets)
    for item in args.learner:
        name, _, folder = item.partition("=")
        detector = load_detector(folder, params, Path("/"))
        print(f"== {name}: {folder}", flush=True)
        report["rows"][name] = {"learner": folder, **diagnose(detector.model, sets["scored"], sets["sbi"]["+".join(real_sets)])}
        stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
        stem.with_suffix(".md").write_text(markdown(report))
        plot(report, stem.with_suffix(".png"))
    print(markdown(report))


if __name__ == "__main__":
    main()
