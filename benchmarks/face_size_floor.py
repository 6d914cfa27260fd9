"""How small a face the champion's answers hold down to: its registered trust's answers on the
learned methods' validation and test faces, as if each face were cut from fewer picture pixels,
with two ways to read them.

The product's floor (`trust.min_side`, fit_min_side) is the last size whose answered accuracy's
95% Wilson lower end stays within `trust.small_face_drop` of full size's accuracy. The other way
is paired: a bootstrap of the difference between a size's answered accuracy and full size's on
the same faces (resampled together, stratified by class, dfcl.measure.bootstrap.group_weights),
its 5th percentile against the same drop. The question: does the 160-px floor of some seeds, which
withholds every face of a 480p video, come from too weak a test or from answers that degrade?

    python benchmarks/face_size_floor.py --learner DIR [--root WS] [-S key=value ...] [--tag cpu_seed1]

Writes benchmarks/results/face_size_floor_<tag>.{md,json,png}.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import learner_arguments, machine, save_results  # noqa: E402

BOOTSTRAP = 2000


def scan(trust, model, x: np.ndarray, y: np.ndarray, drop: float, seed: int) -> dict:
    """Per size: answered faces, answered accuracy, its Wilson lower end, and the paired
    difference's 5th percentile; the floor each rule gives."""
    from scipy.stats import binomtest

    from dfcl.measure.bootstrap import group_weights
    from dfcl.measure.trust import SIDE_SHARES, scores_and_features, sharpness, shrunk

    full = x.shape[1]
    sides = [full, *sorted({max(8, round(full * s)) for s in SIDE_SHARES}, reverse=True)]
    answered, right = {}, {}
    for side in sides:
        faces = x if side == full else shrunk(x, side)
        verdicts = np.array([j["verdict"] for j in trust.judge(*scores_and_features(model, faces, "cpu"),
                                                                 sharpness(faces))])
        answered[side], right[side] = verdicts != "uncertain", (verdicts == "fake") == (y == 1)
    w = group_weights(y, None, BOOTSTRAP, np.random.default_rng(seed))

    def accuracy(side, weights):
        return (weights * (answered[side] & right[side])).sum(-1) / np.maximum((weights * answered[side]).sum(-1), 1e-9)

    rows, floors, stopped = [], {"wilson": full, "paired": full}, {"wilson": False, "paired": False}
    if not answered[full].any():  # nothing answered at full size: no floor to measure (fit_min_side's 0)
        floors, stopped = {"wilson": 0, "paired": 0}, {"wilson": True, "paired": True}
    for side in sides:
        k, n = int((answered[side] & right[side]).sum()), int(answered[side].sum())
        acc = k / n if n else None
        low = float(binomtest(k, n).proportion_ci(0.95, "wilson").low) if n else None
        diff = float(np.quantile(accuracy(side, w) - accuracy(full, w), 0.05)) if n else None
        rows.append({"side": side, "answered": n, "accuracy": acc, "wilson_low": low, "paired_diff_p5": diff})
        for rule, holds in (("wilson", low is not None and low >= rows[0]["accuracy"] - drop),
                            ("paired", diff is not None and diff >= -drop and k < n)):  # all right: no measurement
            if side != full and not stopped[rule]:
                if holds:
                    floors[rule] = side
                else:
                    stopped[rule] = True
    return {"faces": int(len(y)), "rows": rows, "floor": floors}


def markdown(report: dict) -> str:
    lines = [f"# Face-size floor: the Wilson rule and a paired bootstrap ({report['date']})", "",
             f"Machine: {report['machine']['platform']}, {report['machine']['cpu_cores']} cores.",
             f"Command: `{report['command']}`", "",
             f"Learner: {', '.join(report['methods_learned'])}; its registered trust (floor {report['min_side']} px); "
             f"drop allowed {report['drop']}. Answered accuracy of the learned methods' faces as if cut from "
             "each size; `Wilson low`: the product's test (its lower end against full size's accuracy minus the "
             f"drop); `paired p5`: 5th percentile of that size's accuracy minus full size's over {BOOTSTRAP} "
             "resamples of the same faces (a perfect score on the answered faces is no measurement).", "",
             "![accuracy by size](" + f"face_size_floor_{report['tag']}.png)", ""]
    for split, s in report["splits"].items():
        lines += [f"## {split} faces ({s['faces']}): floor by Wilson {s['floor']['wilson']} px, "
                  f"paired {s['floor']['paired']} px", "",
                  "| size (px) | answered | accuracy | Wilson low | paired p5 |", "| --- | --- | --- | --- | --- |"]
        for r in s["rows"]:
            cells = [("-" if r[k] is None else f"{r[k]:+.3f}" if k == "paired_diff_p5" else f"{r[k]:.3f}")
                     for k in ("accuracy", "wilson_low", "paired_diff_p5")]
            lines.append(f"| {r['side']} | {r['answered']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for split, s in report["splits"].items():
        rows = [r for r in s["rows"] if r["accuracy"] is not None]
        sides = [r["side"] for r in rows]
        acc = np.array([r["accuracy"] for r in rows])
        low = np.array([r["wilson_low"] for r in rows])
        ax.errorbar(sides, acc, yerr=[acc - low, np.zeros_like(acc)], marker="o", capsize=3,
                    label=f"{split} ({s['faces']} faces)")
    full = report["splits"]["val"]["rows"][0]["accuracy"]
    ax.axhline(full - report["drop"], color="grey", linestyle=":", label="val full size - drop")
    ax.axvline(report["min_side"], color="red", linestyle="--", label=f"registered floor {report['min_side']} px")
    ax.set(xlabel="face cut from (px across)", ylabel="answered accuracy (Wilson 95% lower end)",
           title=f"Answers by face size: {report['tag']}")
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    learner_arguments(ap)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--tag", default="cpu")
    args = ap.parse_args(argv)

    from dfcl.config import load_params
    from dfcl.learning.learner import Learner
    from dfcl.measure.trust import _sample

    params = load_params(REPO / "params.yaml", args.overrides)
    learner = Learner.load(args.learner.resolve(), params, args.root.resolve())
    if learner.trust is None:
        ap.error(f"{args.learner} holds no fitted trust")
    model = learner.strategy.model.to("cpu").eval()
    report = {"learner": str(args.learner), "tag": args.tag, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "command": "python benchmarks/face_size_floor.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "methods_learned": [e.key for e in learner.history.experiences], "min_side": learner.trust.min_side,
              "drop": params.trust.small_face_drop, "splits": {}}
    for split in ("val", "test"):
        faces = [(np.load(s[split][0], mmap_mode="r"), np.load(s[split][1]))
                 for _, s in learner.trust_splits(learner.history.experiences) if split in s]
        x, y = np.concatenate([f[0] for f in faces]), np.concatenate([f[1] for f in faces])
        keep = _sample(len(y), params.trust.small_face_faces, params.train.seed)  # as the learner fits it
        report["splits"][split] = scan(learner.trust, model, np.asarray(x[keep]), y[keep],
                                       params.trust.small_face_drop, params.train.seed)
    save_results(args.out, f"face_size_floor_{args.tag}", report, markdown(report))
    plot(report, args.out / f"face_size_floor_{args.tag}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
