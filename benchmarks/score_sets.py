"""One model on every set the generalisation benchmark scores, frame by frame and flip-averaged.

A learner folder (or any model `dfcl evaluate --model` takes) is scored on the FF++ methods' test
faces and on the sets never trained on (dfdc-crops test, flux-faces test, stylegan-faces
val_images), as extracted in the generalisation benchmark's workspace (extracted there if missing):
ROC AUC of P(fake), and of P(fake) averaged over the face and its mirror image (test-time flip).

    python benchmarks/score_sets.py --model NAME=REF [--model ...] [-S ...] [--tag cpu]

Writes benchmarks/results/score_sets_<tag>.{md,json}; models already there are kept.
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


def scores(model, paths: dict, splits) -> dict:
    """AUC of the frame scores and of the flip-averaged ones."""
    import torch
    from torchmetrics.functional.classification import binary_auroc

    from dfcl.measure.scoring import fake_probabilities

    x = np.concatenate([np.load(paths[f"{s}_x"], mmap_mode="r") for s in splits])
    y = torch.from_numpy(np.concatenate([np.load(paths[f"{s}_y"]) for s in splits]))
    p = fake_probabilities(model, x)
    flipped = fake_probabilities(model, np.ascontiguousarray(x[:, :, ::-1]))
    return {"auc": float(binary_auroc(p, y)), "auc_flip": float(binary_auroc((p + flipped) / 2, y)),
            "faces": int(len(y)), "fakes": int(y.sum())}


def markdown(report: dict) -> str:
    sets = FFPP + list(UNSEEN)
    lines = [f"# Every set, frame and flip-averaged AUC ({report['tag']})", "", f"Machine: {report['machine']}. "
             f"Dates: {', '.join(report['dates'])}.", "", "Commands:", "", *[f"    {c}" for c in report["commands"]], "",
             "Each cell: AUC / flip-averaged AUC. FF++: the test faces of each method (as extracted for the "
             "generalisation rows); never trained on: dfdc-crops test, flux-faces test, stylegan-faces val_images.", "",
             "| model | FF++ mean | " + " | ".join(sets) + " |", "| --- | --- |" + " --- |" * len(sets)]
    for name, r in report["models"].items():
        mean = np.mean([r[m]["auc"] for m in FFPP]), np.mean([r[m]["auc_flip"] for m in FFPP])
        lines.append(f"| {name} | {mean[0]:.3f} / {mean[1]:.3f} | "
                     + " | ".join(f"{r[s]['auc']:.3f} / {r[s]['auc_flip']:.3f}" for s in sets) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="NAME=REF: a learner folder, models:/..., ...")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("-S", "--set", action="append", default=[], help="the params of the extraction and the model")
    parser.add_argument("--unseen-cap", type=int, default=100)
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--workspace", default=str(REPO / "benchmarks" / ".work" / "generalization"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--root", default="/", help="the folder a learner folder's experience paths are relative to "
                        "(its workspace, as trust.py's --root); models:/ references need none")
    args = parser.parse_args()
    from dfcl.config import load_params
    from dfcl.serving.detector import load_detector

    work, out = made_folders(args.workspace, args.out)
    stem = out / f"score_sets_{args.tag}"
    report = resumed_report(stem, args.tag, "models")
    params = load_params(REPO / "params.yaml", args.set)
    scored = faces(Path(args.data), work, params, args.unseen_cap)["scored"]
    for item in args.model:
        name, _, ref = item.partition("=")
        model = load_detector(ref, params, Path(args.root)).model
        report["models"][name] = {"ref": ref, **{s: scores(model, paths, splits) for s, (paths, splits) in scored.items()}}
        print(f"{name}: " + ", ".join(f"{s} {v['auc']:.3f}/{v['auc_flip']:.3f}" for s, v in report["models"][name].items()
                                     if isinstance(v, dict)), flush=True)
        stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
        stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
