"""Where a champion's evidence lives: its AUC on every set when part of each face is hidden, or
when every face is changed the same way, real and fake alike.

Issue 35's champion is inverted on StyleGAN and FLUX (AUC 0.2-0.3: their real photos look more
forged to it than their fakes). shortcuts.py asks whether it reads sharpness, the camera or the
border; this asks which part of the face and which kind of content carries the answer, per set:

  * regions: the face with its outer ring greyed (the centre half kept), the ring alone (the
    centre half greyed), the top half alone, the bottom half alone;
  * content: grayscale, down-and-up resampling by 1.5, 2 and 3, a Gaussian blur (sigma 1 px at
    the model's size), JPEG quality 50, sharpening, a shift by 8 px and a zoom to the inner 80%;
  * statistics: the faces as they are, scored by a copy of the model whose batch-norm statistics
    are those of the set's own faces, both classes, labels unused (AdaBN, Li et al. 2016): how much
    of a set's inversion is a shift of the whole set's statistics rather than of one class.

A probe that brings an inverted set towards 0.5 or above while the learned sets keep theirs says
where the inverted evidence is. Nothing is fit but the statistics probe's batch-norm averages.

    python benchmarks/evidence_regions.py --learner DIR [--root WS] [-S key=value ...] \\
        --unseen NAME=FACES[:split,...] ... [--cap 400] [--tag cpu_seed1]

DIR, --root, -S and --unseen as benchmarks/trust.py takes them: the learned sets are the test
faces of every experience the learner learned, the unseen ones the folders named. Up to --cap
faces per class and set, a seeded draw. Writes benchmarks/results/evidence_regions_<tag>.{md,json,png};
probes already in that file are kept (a run adds the ones it lacks).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import learner_arguments, machine, save_results  # noqa: E402
from benchmarks.trust import faces_of, unseen_images  # noqa: E402

GREY = 128


def _grey_outside(f: np.ndarray, keep: np.ndarray) -> np.ndarray:
    g = f.copy()
    g[~keep] = GREY
    return g


def _centre(n: int) -> np.ndarray:
    keep = np.zeros((n, n), bool)
    keep[n // 4:n - n // 4, n // 4:n - n // 4] = True
    return keep


def _rows(n: int, top: bool) -> np.ndarray:
    keep = np.zeros((n, n), bool)
    keep[:n // 2] = top
    keep[n // 2:] = not top
    return keep


def _down_up(f: np.ndarray, factor: float) -> np.ndarray:
    import cv2

    n, m = f.shape[0], round(f.shape[0] / factor)
    return cv2.resize(cv2.resize(f, (m, m), interpolation=cv2.INTER_AREA), (n, n), interpolation=cv2.INTER_LINEAR)


def _jpeg(f: np.ndarray, quality: int) -> np.ndarray:
    import cv2

    return cv2.imdecode(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_UNCHANGED)


def probes() -> dict:
    """name -> (group, one face (H, W, 3) uint8 RGB -> the changed face; None: the faces as they
    are, scored by a model adapted to them, `adapted`)."""
    import cv2

    sharpen = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32)
    return {
        "whole face": ("", lambda f: f),
        "centre half only": ("region", lambda f: _grey_outside(f, _centre(f.shape[0]))),
        "outer ring only": ("region", lambda f: _grey_outside(f, ~_centre(f.shape[0]))),
        "top half only": ("region", lambda f: _grey_outside(f, _rows(f.shape[0], True))),
        "bottom half only": ("region", lambda f: _grey_outside(f, _rows(f.shape[0], False))),
        "grayscale": ("content", lambda f: np.repeat(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)[..., None], 3, 2)),
        "down-up x1.5": ("content", lambda f: _down_up(f, 1.5)),
        "down-up x2": ("content", lambda f: _down_up(f, 2)),
        "down-up x3": ("content", lambda f: _down_up(f, 3)),
        "blur sigma 1": ("content", lambda f: cv2.GaussianBlur(f, (0, 0), 1.0)),
        "JPEG q50": ("content", lambda f: _jpeg(f, 50)),
        "sharpened": ("content", lambda f: np.clip(cv2.filter2D(f.astype(np.float32), -1, sharpen), 0, 255).astype(np.uint8)),
        "shifted 8 px": ("geometry", lambda f: np.roll(f, 8, axis=1)),
        "inner 80% zoomed": ("geometry", lambda f: cv2.resize(f[f.shape[0] // 10:-(f.shape[0] // 10), f.shape[1] // 10:-(f.shape[1] // 10)],
                                                               f.shape[:2][::-1], interpolation=cv2.INTER_LINEAR)),
        "set's own BN statistics": ("statistics", None),
    }


def adapted(model, x: np.ndarray, batch_size: int = 64):
    """A copy of `model` whose batch-norm running statistics are the plain averages over the faces
    `x` (AdaBN), fed as fake_probabilities feeds them; weights unchanged, labels never read."""
    import copy

    import torch

    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over every batch
    model.train()
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            faces = torch.from_numpy(np.array(x[start:start + batch_size])).permute(0, 3, 1, 2).float().div_(255)
            model(faces.contiguous(memory_format=torch.channels_last))
    return model.eval()


def drawn(x: np.ndarray, y: np.ndarray, cap: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `cap` faces of each class, a seeded draw, in their order."""
    rng = np.random.default_rng(seed)
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:cap] for c in (0, 1)]))
    return np.asarray(x[keep]), y[keep]


def measure(model, sets: dict[str, tuple[np.ndarray, np.ndarray]], done: dict) -> tuple[dict, dict]:
    """{probe: {set: AUC}} of `model` on every set under every probe not `done` already (those are
    kept), and {set: [median P(fake) of its reals, of its fakes]} of the whole faces (raw,
    uncalibrated): an inverted AUC says the classes swapped places, the medians say which moved."""
    from sklearn.metrics import roc_auc_score

    from dfcl.measure.trust import scores_and_features

    out, medians = {}, {}
    for name, (_, change) in probes().items():
        if name in done.get("auc", {}):
            out[name] = done["auc"][name]
            continue
        start, row = time.perf_counter(), {}
        for set_name, (x, y) in sets.items():
            if change is None:
                p = scores_and_features(adapted(model, x), x, "cpu")[0]
            else:
                p = scores_and_features(model, np.stack([change(np.ascontiguousarray(f)) for f in x]), "cpu")[0]
            row[set_name] = round(float(roc_auc_score(y, p)), 3)
            if name == "whole face":
                medians[set_name] = [round(float(np.median(p[y == c])), 3) for c in (0, 1)]
        out[name] = row
        print(f"{name}: {row} ({time.perf_counter() - start:.0f} s)", flush=True)
    return out, medians or done["median_p_fake"]


def markdown(report: dict) -> str:
    sets = list(next(iter(report["auc"].values())))
    lines = [f"# Where the champion's evidence lives ({report['tag']})", "",
             f"Machine: {report['machine']}. Date: {report['date']}.", "", "Command:", "",
             *(f"    {command}" for command in report["command"].split("; ")), "",
             f"Learner: {report['learner']} (learned: {', '.join(report['methods_learned'])}). Up to {report['cap']} faces "
             "per class and set. AUC of the same model when every face, real and fake alike, is changed as the row says "
             "(regions: the rest greyed).", "",
             "| probe | " + " | ".join(sets) + " |", "| --- |" + " --- |" * len(sets)]
    lines += [f"| {probe} | " + " | ".join(f"{v:.3f}" for v in row.values()) + " |" for probe, row in report["auc"].items()]
    lines += ["", "Median P(fake) of the whole faces, raw (before calibration), reals / fakes:", "",
              "| | " + " | ".join(sets) + " |", "| --- |" + " --- |" * len(sets),
              "| reals | " + " | ".join(f"{report['median_p_fake'][s][0]:.2f}" for s in sets) + " |",
              "| fakes | " + " | ".join(f"{report['median_p_fake'][s][1]:.2f}" for s in sets) + " |"]
    lines += ["", "Faces per set (real / fake): " + ", ".join(f"{k} {v[0]} / {v[1]}" for k, v in report["faces"].items()), ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probes_, sets = list(report["auc"]), list(next(iter(report["auc"].values())))
    grid = np.array([[report["auc"][p][s] for s in sets] for p in probes_])
    fig, ax = plt.subplots(figsize=(1.2 * len(sets) + 3, 0.42 * len(probes_) + 1.5))
    image = ax.imshow(grid, cmap="RdBu", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(sets)), sets, rotation=30, ha="right")
    ax.set_yticks(range(len(probes_)), probes_)
    for i in range(len(probes_)):
        for j in range(len(sets)):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, label="AUC (0.5: chance; below: inverted)")
    ax.set_title(f"AUC per set when every face is changed alike ({report['tag']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    learner_arguments(ap)
    ap.add_argument("--cap", type=int, default=400, help="faces per class and set at most")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--tag", default="cpu")
    args = ap.parse_args(argv)

    from dfcl.config import load_params
    from dfcl.data.arrays import beside
    from dfcl.learning.learner import Learner

    params = load_params(REPO / "params.yaml", args.overrides)
    learner = Learner.load(args.learner.resolve(), params, args.root.resolve())
    model = learner.strategy.model.to("cpu").eval()
    seed = params.train.seed
    sets = {}
    for method, splits in learner.trust_splits(learner.history.experiences):
        if "test" in splits:
            x, y = splits["test"]
            sets[method.split("/")[-1]] = drawn(np.load(x, mmap_mode="r"), np.load(y), args.cap, seed)
    for name, images in map(unseen_images, args.unseen):
        y = np.concatenate([np.load(beside(p, "y")) for p in images])
        sets[name] = drawn(faces_of(images), y, args.cap, seed)

    report = {"tag": args.tag, "learner": str(args.learner), "methods_learned": [e.key for e in learner.history.experiences],
              "cap": args.cap, "faces": {k: [int((y == 0).sum()), int((y == 1).sum())] for k, (_, y) in sets.items()},
              "groups": {k: g for k, (g, _) in probes().items()}, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "command": "python benchmarks/evidence_regions.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    stem = f"evidence_regions_{args.tag}"
    earlier = args.out / f"{stem}.json"
    done = json.loads(earlier.read_text()) if earlier.exists() else {}
    if done and (done["faces"] != report["faces"] or done["learner"] != report["learner"]):
        done = {}  # other faces or another model: nothing earlier is kept
    if done:
        report["command"] = "; ".join(dict.fromkeys([*done["command"].split("; "), report["command"]]))
        report["date"] = ", ".join(dict.fromkeys([*done["date"].split(", "), report["date"]]))
    report["auc"], report["median_p_fake"] = measure(model, sets, done)
    save_results(args.out, stem, report, markdown(report))
    plot(report, args.out / f"{stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
