"""How small a face the champion's answers hold down to: its trust's answers on the learned
methods' validation and test faces, as if each face were cut from fewer picture pixels, read
three ways.

Two floors under which nothing is answered, with the full-size band above them: the floor the
product fit until 2026-12-08 (the last size whose answered accuracy's 95% Wilson lower end stays
within DROP of full size's accuracy), and a paired one (a bootstrap of the difference between a
size's answered accuracy and full size's on the same faces, resampled together, stratified by
class, dfcl.measure.bootstrap.group_weights; its 5th percentile against the same drop). And the
product's rule since (`trust.size_bands`, fit_size_bands): a band per size chosen on the
validation faces shrunk to it, whose promise is then checked on the test faces shrunk alike.

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
DROP = 0.03  # the floors' allowed drop of answered accuracy (the product's trust.small_face_drop until 2026-12-08)


def sizes(full: int) -> list[int]:
    """Full size, then the sizes fit_size_bands tries, largest first."""
    from dfcl.measure.trust import SIDE_SHARES

    return [full, *sorted({max(8, round(full * s)) for s in SIDE_SHARES}, reverse=True)]


def scored_by_size(model, x: np.ndarray, flip: bool) -> dict:
    """{(size, flip): the judge's inputs (P(fake), features, views' spread, sharpness)} of the faces
    `x` as if cut from each size (fit_size_bands' `scores`): scored once, read by every rule."""
    from dfcl.measure.trust import scores_and_features, sharpness, shrunk

    out = {}
    for side in sizes(x.shape[1]):
        faces = x if side == x.shape[1] else shrunk(x, side)
        out[side, flip] = (*scores_and_features(model, faces, "cpu", flip=flip), sharpness(faces))
    return out


def one_band(trust, band):
    """`trust` answering every face with `band`, whatever its size."""
    from dataclasses import replace

    return replace(trust, band=band, size_bands={}, min_side=0)


def scan(trust, scores: dict, y: np.ndarray, drop: float, seed: int) -> dict:
    """Per size, the full-size band's answers: answered faces, answered accuracy, its Wilson lower
    end, and the paired difference's 5th percentile; the floor each rule gives."""
    from scipy.stats import binomtest

    from dfcl.measure.bootstrap import group_weights

    sides = [side for side, _ in scores]
    full = sides[0]
    answered, right = {}, {}
    for side in sides:
        verdicts = np.array([j["verdict"] for j in one_band(trust, trust.band).judge(*scores[side, trust.flip])])
        answered[side], right[side] = verdicts != "uncertain", (verdicts == "fake") == (y == 1)
    w = group_weights(y, None, BOOTSTRAP, np.random.default_rng(seed))

    def accuracy(side, weights):
        return (weights * (answered[side] & right[side])).sum(-1) / np.maximum((weights * answered[side]).sum(-1), 1e-9)

    rows, floors, stopped = [], {"wilson": full, "paired": full}, {"wilson": False, "paired": False}
    if not answered[full].any():  # nothing answered at full size: no floor to measure
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


def size_bands(trust, model, x: np.ndarray, yv: np.ndarray, val: dict, test: dict, yt: np.ndarray,
               min_answers: int) -> dict:
    """The product's rule: fit_size_bands on the validation faces `x` (scored as `val`); per size,
    its band and what it answers on validation and test faces (coverage, answered accuracy),
    beside the full-size band's test answers at that size (what a floor withholds)."""
    from dfcl.measure.trust import fit_size_bands

    bands, floor, _ = fit_size_bands(trust, model, x, yv, min_answers, scores=val)
    rows = []
    for side in (side for side, _ in val if side in bands):
        row = {"side": side, "band": [round(bands[side][0], 4), round(min(bands[side][1], 1.0), 4)]}
        for split, scores, y, t in (("val", val, yv, one_band(trust, bands[side])),
                                    ("test", test, yt, one_band(trust, bands[side])),
                                    ("test_full_band", test, yt, one_band(trust, trust.band))):
            v = np.array([j["verdict"] for j in t.judge(*scores[side, trust.flip])])
            answered, right = v != "uncertain", (v == "fake") == (y == 1)
            n = int(answered.sum())
            row[split] = {"answered": n, "coverage": round(n / len(y), 4),
                          "accuracy": round(float(right[answered].mean()), 4) if n else None}
        rows.append(row)
    return {"min_side": floor, "rows": rows}


def markdown(report: dict) -> str:
    lines = [f"# Small faces: two floors and a band per size ({report['date']})", "",
             f"Machine: {report['machine']['platform']}, {report['machine']['cpu_cores']} cores.",
             f"Command: `{report['command']}`", "",
             f"Learner: {', '.join(report['methods_learned'])}; its trust as registered: floor {report['min_side']} px"
             f"{', a band per size' if report['registered_size_bands'] else ''}. The learned methods' faces as if cut "
             "from each size.", "",
             "![answered accuracy by size](" + f"face_size_floor_{report['tag']}.png)", "",
             "## A band per size (the product's rule, `trust.size_bands`)", "",
             f"Each size's band chosen on the validation faces shrunk to it (precision {report['precision']}, the "
             "model's threshold, the other rules as fit; fit_size_bands), down to the smallest size whose band answers "
             f"at least {report['min_answers']} of them ({report['size_bands']['min_side']} px here); faces answered (share) and answered accuracy on "
             "validation and test faces, and the full-size band's test answers at that size (what a floor "
             "withholds).", "",
             "| size (px) | band | val answered | val accuracy | test answered | test accuracy | "
             "full-size band: test answered | accuracy |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]

    def cell(d):
        return f"{d['answered']} ({d['coverage']:.3f})", "-" if d["accuracy"] is None else f"{d['accuracy']:.3f}"
    for r in report["size_bands"]["rows"]:
        lines.append(f"| {r['side']} | {r['band'][0]:.3f}-{r['band'][1]:.3f} | " + " | ".join(
            " | ".join(cell(r[k])) for k in ("val", "test", "test_full_band")) + " |")
    lines += ["", "## Floors with the full-size band (the rule before, and a paired one)", "",
              f"Drop allowed {report['drop']}. `Wilson low`: the floor's test until 2026-12-08 (the lower end of "
              "a size's answered accuracy against full size's accuracy minus the drop); `paired p5`: 5th percentile "
              f"of that size's accuracy minus full size's over {BOOTSTRAP} resamples of the same faces (a perfect "
              "score on the answered faces is no measurement).", ""]
    for split, s in report["splits"].items():
        lines += [f"### {split} faces ({s['faces']}): floor by Wilson {s['floor']['wilson']} px, "
                  f"paired {s['floor']['paired']} px", "",
                  "| size (px) | answered | accuracy | Wilson low | paired p5 |", "| --- | --- | --- | --- | --- |"]
        for r in s["rows"]:
            cells = [("-" if r[k] is None else f"{r[k]:+.3f}" if k == "paired_diff_p5" else f"{r[k]:.3f}")
                     for k in ("accuracy", "wilson_low", "paired_diff_p5")]
            lines.append(f"| {r['side']} | {r['answered']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Answered accuracy (left) and coverage (right) of the test faces by size: a band per size
    against the full-size band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, cov_ax) = plt.subplots(1, 2, figsize=(10, 4))
    rows = report["size_bands"]["rows"]
    for key, label in (("test", "band per size"), ("test_full_band", "full-size band")):
        sides = [r["side"] for r in rows if r[key]["accuracy"] is not None]
        acc_ax.plot(sides, [r[key]["accuracy"] for r in rows if r[key]["accuracy"] is not None], marker="o", label=label)
        cov_ax.plot([r["side"] for r in rows], [r[key]["coverage"] for r in rows], marker="o", label=label)
    acc_ax.axhline(report["precision"], color="grey", linestyle=":", label=f"promised {report['precision']}")
    acc_ax.set(xlabel="face cut from (px across)", ylabel="answered accuracy, test faces",
               title=f"Answers by face size: {report['tag']}")
    cov_ax.set(xlabel="face cut from (px across)", ylabel="share of test faces answered")
    for ax in (acc_ax, cov_ax):
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
    trust, model = learner.trust, learner.strategy.model.to("cpu").eval()
    report = {"learner": str(args.learner), "tag": args.tag, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "command": "python benchmarks/face_size_floor.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "methods_learned": [e.key for e in learner.history.experiences], "min_side": trust.min_side,
              "registered_size_bands": bool(trust.size_bands), "drop": DROP, "precision": trust.precision,
              "min_answers": params.trust.size_min_answers,
              "splits": {}}
    faces, scores, labels = {}, {}, {}
    for split in ("val", "test"):
        arrays = [(np.load(s[split][0], mmap_mode="r"), np.load(s[split][1]))
                  for _, s in learner.trust_splits(learner.history.experiences) if split in s]
        x, y = np.concatenate([f[0] for f in arrays]), np.concatenate([f[1] for f in arrays])
        keep = _sample(len(y), params.trust.small_face_faces, params.train.seed)  # as the learner fits it
        faces[split], labels[split] = np.asarray(x[keep]), y[keep]
        scores[split] = scored_by_size(model, faces[split], trust.flip)
        report["splits"][split] = scan(trust, scores[split], labels[split], DROP, params.train.seed)
    report["size_bands"] = size_bands(trust, model, faces["val"], labels["val"], scores["val"], scores["test"],
                                      labels["test"], params.trust.size_min_answers)
    save_results(args.out, f"face_size_floor_{args.tag}", report, markdown(report))
    plot(report, args.out / f"face_size_floor_{args.tag}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
