"""How far the champion's verdicts can be trusted: calibration, the "uncertain" band, novelty
and attribution (dfcl.trust), measured on a trained learner and on sets it never trained on.

    python benchmarks/trust.py --workspace WS [--unseen NAME=FOLDER ...] [--out benchmarks/results]

WS is a workspace whose learner (data/learner) has learned the FF++ sequence (`dfcl retrain`).
The trust state is fit exactly as the learner fits it after an experience (Learner.fit_trust,
this checkout's params.yaml `trust:` settings), then measured on each learned method's test
faces (calibration error before and after, coverage and accuracy of the answered at the band,
top-1 attribution of the fakes) and on each unseen folder (extracted at the model's framing:
the share flagged novel, and the AUROC of the novelty score at telling learned-method test
faces from them). Beside the product's k-NN score, the Mahalanobis distance to the nearest
class mean (the attribution's space) is measured on the same faces as a novelty score: why the
product uses k-NN for novelty.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import extract_once, machine, save_results  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", required=True, type=Path)
    ap.add_argument("--unseen", action="append", default=[], help="NAME=FOLDER of a labelled set never trained on")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--tag", default="cpu")
    args = ap.parse_args(argv)

    from sklearn.metrics import roc_auc_score

    from dfcl.config import load_params
    from dfcl.learner import Learner
    from dfcl.trust import coverage, ece, scores_and_features

    ws = args.workspace.resolve()
    params = load_params(None)
    learner = Learner.load(ws / "data" / "learner", params, ws)
    model = learner.strategy.model.to("cpu").eval()
    start = time.perf_counter()
    trust = learner.fit_trust(learner.history.experiences)
    fit_s = time.perf_counter() - start
    print(f"trust fit in {fit_s:.0f} s: band {trust.band}, threshold {trust.threshold:.3f}, "
          f"calibration a={trust.calibration.a:.3f} b={trust.calibration.b:.3f}", flush=True)

    # Learned methods' test faces, per method; fit features for the k-NN alternative.
    per_method, learned_f, learned_nov = {}, [], []
    for i, e in enumerate(learner.history.experiences):
        x, y = np.load(ws / e.test_x, mmap_mode="r"), np.load(ws / e.test_y)
        p, f = scores_and_features(model, x)
        judged = trust.judge(p, f)
        q = np.array([j["p_fake"] for j in judged])
        row = {"faces": int(len(y)), "fake": int(y.sum()), "auc": float(roc_auc_score(y, p)),
               "ece_raw": ece(y, p), "ece": ece(y, q), **coverage(y, q, trust.band),
               "novel_share": float(np.mean([j["novel"] for j in judged]))}
        fakes = [j for j, t in zip(judged, y) if t == 1]
        if e.key in trust.space.classes and fakes:
            row["attribution_top1"] = float(np.mean([j["resembles"]["method"] == e.key for j in fakes]))
        per_method[e.key] = row
        learned_f.append(f)
        learned_nov.append(np.array([j["novelty"] for j in judged]))
        print(f"  {e.key}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)), flush=True)
    learned_f, learned_nov = np.concatenate(learned_f), np.concatenate(learned_nov)
    learned_maha = trust.space.distances(learned_f).min(1)

    framing = {"faces.margin": params["faces"]["margin"], "detect_in_images": params["faces"]["detect_in_images"]}
    work = Path(__file__).parent / ".work" / "trust"
    unseen = {}
    for item in args.unseen:
        name, folder = item.split("=", 1)
        sets = extract_once(Path(folder), work, params, name)
        x = np.concatenate([np.load(paths[f"{s}_x"], mmap_mode="r") for paths in sets.values() for s in ("train", "val", "test")])
        y = np.concatenate([np.load(paths[f"{s}_y"]) for paths in sets.values() for s in ("train", "val", "test")])
        p, f = scores_and_features(model, x)
        judged = trust.judge(p, f)
        nov = np.array([j["novelty"] for j in judged])
        both = np.r_[np.zeros(len(learned_nov)), np.ones(len(nov))]
        q = np.array([j["p_fake"] for j in judged])
        unseen[name] = {"faces": int(len(y)), "fake": int(y.sum()), "auc": float(roc_auc_score(y, p)),
                        "novel_share": float(np.mean([j["novel"] for j in judged])),
                        "novelty_auroc": float(roc_auc_score(both, np.r_[learned_nov, nov])),
                        "mahalanobis_novelty_auroc": float(roc_auc_score(both, np.r_[learned_maha,
                                                                                     trust.space.distances(f).min(1)])),
                        **coverage(y, q, trust.band), "ece": ece(y, q)}
        print(f"  unseen {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in unseen[name].items() if isinstance(v, float)),
              flush=True)

    learned_y = np.concatenate([np.load(ws / e.test_y) for e in learner.history.experiences])
    learned_p = np.concatenate([scores_and_features(model, np.load(ws / e.test_x, mmap_mode="r"))[0]
                                for e in learner.history.experiences])
    learned_q = trust.calibration(learned_p)
    ffpp = [k for k in per_method if "attribution_top1" in per_method[k] and not k.endswith("self-blended")]
    overall = {"ece_raw": ece(learned_y, learned_p), "ece": ece(learned_y, learned_q),
               **coverage(learned_y, learned_q, trust.band),
               "precision_fake": float(learned_y[learned_q >= trust.band[1]].mean()),
               "precision_real": float(1 - learned_y[learned_q < trust.band[0]].mean()),
               "attribution_top1_ffpp": float(np.average([per_method[k]["attribution_top1"] for k in ffpp],
                                                         weights=[per_method[k]["fake"] for k in ffpp])) if ffpp else None}
    if unseen:
        overall["novelty_auroc_all_unseen"] = float(np.mean([u["novelty_auroc"] for u in unseen.values()]))
    report = {"workspace": str(ws), "methods_learned": [e.key for e in learner.history.experiences],
              "settings": params["trust"], "framing": framing, "trust": trust.summary(), "fit_seconds": round(fit_s, 1),
              "learned": per_method, "overall_learned": overall, "unseen": unseen, "machine": machine(),
              "command": "python benchmarks/trust.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d")}
    save_results(args.out, f"trust_{args.tag}", report, markdown(report))
    return 0


def markdown(r: dict) -> str:
    t, o = r["trust"], r["overall_learned"]
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"# How sure the champion's verdicts are ({r['date']})", "",
             f"Machine: {r['machine']['platform']}, {r['machine']['cpu_cores']} cores, torch {r['machine']['torch']}.",
             f"Command: `{r['command']}`", "",
             f"Learner: {', '.join(r['methods_learned'])}. Trust fit in {r['fit_seconds']} s with {r['settings']}.",
             f"Band on calibrated P(fake): real below {t['band'][0]:.3f}, fake at or above {t['band'][1]:.3f}; "
             f"threshold {t['threshold']:.3f}; Platt a={t['calibration']['a']:.3f} b={t['calibration']['b']:.3f}.", "",
             "## Learned methods (test faces)", "",
             "| method | faces (fake) | AUC | ECE raw | ECE calibrated | answered | accuracy answered | novel | attribution top-1 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k, v in r["learned"].items():
        lines.append(f"| {k} | {v['faces']} ({v['fake']}) | {v['auc']:.3f} | {v['ece_raw']:.3f} | {v['ece']:.3f} | "
                     f"{v['coverage']:.3f} | {f(v['answered_accuracy'])} | {v['novel_share']:.3f} | {f(v.get('attribution_top1'))} |")
    lines += ["", f"All learned test faces: ECE {o['ece_raw']:.3f} raw -> **{o['ece']:.3f}** calibrated; answered "
              f"**{o['coverage']:.3f}**, accuracy of the answered {f(o['answered_accuracy'])} (precision of 'fake' "
              f"{f(o['precision_fake'])}, of 'real' {f(o['precision_real'])}); attribution top-1 over the FF++ "
              f"methods **{f(o['attribution_top1_ffpp'])}**.", ""]
    if r["unseen"]:
        lines += ["## Sets never trained on (all their faces)", "",
                  "| set | faces (fake) | AUC | novel | novelty AUROC (k-NN, the product's) | novelty AUROC (Mahalanobis) | answered | accuracy answered | ECE |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for k, v in r["unseen"].items():
            lines.append(f"| {k} | {v['faces']} ({v['fake']}) | {v['auc']:.3f} | {v['novel_share']:.3f} | "
                         f"{v['novelty_auroc']:.3f} | {v['mahalanobis_novelty_auroc']:.3f} | {v['coverage']:.3f} | "
                         f"{f(v['answered_accuracy'])} | {v['ece']:.3f} |")
        lines += ["", f"Mean novelty AUROC over the unseen sets: **{o['novelty_auroc_all_unseen']:.3f}**.", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
