"""How far the champion's verdicts can be trusted, measured as a selective classifier: on the
learned methods' test faces and on every set never trained on, the share answered, the accuracy
of those answers, the share of real faces answered "fake", risk-coverage curves, calibration,
and novelty separately on the unseen sets' real and fake faces; with and without test-time flip
averaging; and which calibration map gets nearest the ECE a perfectly calibrated model would show.

    python benchmarks/trust.py --learner DIR [-S key=value ...] --unseen NAME=FACES[:split,...] ...
        [--foreign NAME=FACES[:split,...] ...] [--tag cpu]

DIR is a learner folder (data/learner of a workspace, or a benchmark's); -S are the params it
was trained with. FACES is a folder of extracted faces (<split>-x.npy, <split>-y.npy), scored on
the splits named (default test). Each face is scored once as it is and once mirrored; the trust
state is then fit exactly as the learner fits it after an experience (dfcl.measure.trust.fit_scored, this
checkout's `trust:` settings), on the learned experiences' training and validation faces only:
no unseen face is used to fit anything. A face whose box is cut off by its picture's edge more than the
learned training faces' were (its manifest's `inside` below `trust.min_inside`, fit by the learner's
rule, dfcl.measure.trust.fit_min_inside) is withheld as "cut off", and a face cut from fewer picture
pixels across than the model's input is answered by the band of its size fit with each variant's
trust (`trust.size_bands`, fit_size_bands), or withheld as "too small" below `trust.min_side`, as
`dfcl detect` answers them (benchmarks/face_size_floor.py measures those bands on test faces).
`--foreign`: real photos of a kind never trained on, as `trust.foreign_reals` gives them to the
product; a seeded half of their real faces is the rule's reference, the other half is measured as a
set never trained on ("NAME (held out)"), and `trust.foreign_keep` is swept (1.0: no such rule).
Scores are cached in benchmarks/.work/trust/ (--rescore).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import learner_arguments, machine, save_results  # noqa: E402

WORK = Path(__file__).parent / ".work" / "trust"
KEEP_SWEEP = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
FOREIGN_SWEEP = (0.6, 0.7, 0.8, 0.9, 1.0)
SHARP_SWEEP = (0.8, 0.9, 0.95, 0.98, 1.0)
VIEWS_SWEEP = (0.0, 0.05, 0.1, 0.2)


def ways(mirrored: bool):
    """A score function: (N, W) P(fake) and (N, W, D) features, each face as it is (and mirrored)."""
    from dfcl.measure.trust import scores_and_features

    def score(model, x, device="cpu"):
        p, f, _ = scores_and_features(model, x, device)
        if not mirrored:
            return p[:, None], f[:, None]
        p2, f2, _ = scores_and_features(model, np.ascontiguousarray(np.asarray(x)[:, :, ::-1]), device)
        return np.stack([p, p2], 1), np.stack([f, f2], 1)
    return score


def oriented(a, flip: bool):
    """One orientation of the arrays `ways` scores: the face as it is, or the mean with its mirror."""
    return None if a is None else a.mean(1) if flip else a[:, 0]


def variant(sets, flip: bool):
    """The sets as the product scores them with `trust.flip` on or off: with flip, the mean of the
    two views and how far they disagree (the views rule), as scores_and_features gives them."""
    from dfcl.measure.trust import Scored, views_spread

    return [Scored(s.name, s.y, oriented(s.p, flip), oriented(s.features, flip),
                   views_spread(s.p[:, 0], s.p[:, 1]) if flip else None, s.sharp) for s in sets]


def unseen_images(item: str) -> tuple[str, list[Path]]:
    """`--unseen NAME=FACES[:split,...]` -> (NAME, the <split>-x.npy of each split named; test by default)."""
    name, rest = item.split("=", 1)
    folder, _, splits = rest.partition(":")
    return name, [Path(folder) / f"{split}-x.npy" for split in (splits.split(",") if splits else ["test"])]


def faces_of(images: list[Path]) -> np.ndarray:
    return np.concatenate([np.load(p, mmap_mode="r") for p in images])


def scored_sets(model, specs: list[str], mirrored: bool, cache: Path, rescore: bool) -> list:
    """Each `NAME=FACES[:split,...]` scored (each way): [Scored], from the cache when there."""
    from dfcl.data.arrays import beside
    from dfcl.measure.trust import Scored, sharpness

    if cache.is_file() and not rescore:
        z = np.load(cache)
        if list(z["names"]) == [unseen_images(spec)[0] for spec in specs]:
            return [Scored(n, z[f"{i}_y"], z[f"{i}_p"], z[f"{i}_f"], sharp=sharpness(faces_of(images)))
                    for i, (n, (_, images)) in enumerate(zip(z["names"], map(unseen_images, specs)))]
    out = []
    for name, images in map(unseen_images, specs):
        x = faces_of(images)
        y = np.concatenate([np.load(beside(p, "y")) for p in images])
        out.append(Scored(name, y, *ways(mirrored)(model(), x), sharp=sharpness(x)))
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, names=np.array([s.name for s in out]),
             **{f"{i}_{k}": getattr(s, a) for i, s in enumerate(out) for k, a in (("y", "y"), ("p", "p"), ("f", "features"))})
    return out


def foreign_halves(sets: list, seed: int) -> tuple[list, list]:
    """The real faces of each foreign set split in two seeded halves: (the rule's reference, held out)."""
    from dfcl.measure.trust import Scored

    reference, held_out = [], []
    for s in sets:
        reals = np.flatnonzero(s.y == 0)
        order = np.random.default_rng(seed).permutation(reals)
        for into, idx, name in ((reference, np.sort(order[: len(order) // 2]), s.name),
                                (held_out, np.sort(order[len(order) // 2:]), f"{s.name} (held out)")):
            into.append(Scored(name, s.y[idx], s.p[idx], s.features[idx], sharp=None if s.sharp is None else s.sharp[idx]))
    return reference, held_out


def scored_faces(learner, unseen: list[str], cache: Path, rescore: bool, mirrored: bool):
    """(fit features, fit labels, val, test, unseen) scored (each way), from the cache when there."""
    from dfcl.data.arrays import beside
    from dfcl.measure.trust import Scored, score_experiences, sharpness

    if cache.is_file() and not rescore:
        z = np.load(cache)
        # each face's sharpness is read again from its images (cheap): caches written before the rule stay valid
        splits = learner.trust_splits(learner.history.experiences)
        images = {"val": [s["val"][0] for _, s in splits if "val" in s], "test": [s["test"][0] for _, s in splits if "test" in s],
                  "unseen": [unseen_images(spec)[1] for spec in unseen]}
        sets = {k: [Scored(n, z[f"{k}{i}_y"], z[f"{k}{i}_p"], z[f"{k}{i}_f"],
                           sharp=sharpness(faces_of(images[k][i]) if k == "unseen" else np.load(images[k][i], mmap_mode="r")))
                    for i, n in enumerate(z[f"{k}_names"])]
                for k in ("val", "test", "unseen")}
        return z["fit_f"], z["fit_l"], sets["val"], sets["test"], sets["unseen"]
    model = learner.strategy.model.to("cpu").eval()
    fit_f, fit_l, val, test = score_experiences(model, learner.trust_splits(learner.history.experiences),
                                                learner.params.trust, "cpu", learner.params.train.seed,
                                                score=ways(mirrored))
    out = []
    for name, images in map(unseen_images, unseen):
        x = faces_of(images)
        y = np.concatenate([np.load(beside(p, "y")) for p in images])
        out.append(Scored(name, y, *ways(mirrored)(model, x), sharp=sharpness(x)))
    arrays = {"fit_f": fit_f, "fit_l": fit_l}
    for k, sets in (("val", val), ("test", test), ("unseen", out)):
        arrays[f"{k}_names"] = np.array([s.name for s in sets])
        for i, s in enumerate(sets):
            arrays |= {f"{k}{i}_y": s.y, f"{k}{i}_p": s.p, f"{k}{i}_f": s.features}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **arrays)
    return fit_f, fit_l, val, test, out


def unfamiliarity(trust, s) -> tuple[np.ndarray, np.ndarray]:
    """(novelty, distance to the learned faces of the class the face is answered as a share of
    that class's cut: above 1 withheld) of each face; the second NaN where the learned training
    faces hold one class only (a self-blended experience alone: its fakes are made while training)."""
    q = trust.calibration(s.p)
    novelty, by_class = trust.space.familiarity(s.features)
    if by_class is None:
        return novelty, np.full(len(q), np.nan)
    c = (q >= trust.threshold).astype(int)
    return novelty, by_class[np.arange(len(c)), c] / np.asarray(trust.unfamiliar)[c]


def face_place(images, margin: float) -> np.ndarray | None:
    """(N, 2): each face's share of its box inside its picture and the side of its crop in picture
    pixels (the manifest's box x `margin`, as dfcl.data.faces.square_of cuts it; its clamp to the
    picture's shorter side is unknown here and matters only far above any size floor); NaN where
    unknown. None for faces without a manifest."""
    import pandas as pd

    from dfcl.data.arrays import face_inside, manifest_column

    share = face_inside(images)
    if share is None:
        return None
    x1, y1, x2, y2 = (pd.to_numeric(manifest_column(images, c), errors="coerce").to_numpy(float)
                      for c in ("x1", "y1", "x2", "y2"))
    return np.stack([share, np.round(np.maximum(x2 - x1, y2 - y1) * margin)], 1)


def judged_as_product(trust, s, place: np.ndarray | None) -> list[dict]:
    """Each face of `s` judged as `dfcl detect` judges it: the trust rules with the band of the size
    its crop was cut from (NaN: no box, the full-size band), then "cut off" where less of its box is
    inside its picture than `trust.min_inside` (`place`: face_place's columns)."""
    from dfcl.measure.trust import CUT_OFF, withhold

    judged = trust.judge(s.p, s.features, s.spread, s.sharp, sides=None if place is None else place[:, 1])
    if place is not None:
        for j, share in zip(judged, place[:, 0]):
            if share < trust.min_inside:  # NaN (picture size unknown) is never cut off, as in detect
                withhold(j, CUT_OFF)
    return judged


def ece_floor(q: np.ndarray, draws: int = 100, seed: int = 0) -> float:
    """The ECE a PERFECTLY calibrated model would show on these faces: the mean ECE of labels drawn
    as Bernoulli(q) from the calibrated scores themselves. ECE on a few hundred faces is biased
    upward by sampling alone (equal-width bins of a dozen faces each); a measured ECE is read
    against this, not against zero."""
    from dfcl.measure.trust import ece

    rng = np.random.default_rng(seed)
    return float(np.mean([ece((rng.random(len(q)) < q).astype(int), q) for _ in range(draws)]))


def measure(trust, s, place=None, learned=None, floor: bool = False) -> dict:
    """One set's figures under `trust`: AUC, calibration (with `floor`, the ECE a perfectly
    calibrated model would show here), the band alone and the band with the abstention on the
    unfamiliar (and the cut-off rule), novelty; with `learned` (the learned test faces'
    unfamiliarity), the AUROC of telling this set's real faces, and its fakes, from those by each
    score."""
    from sklearn.metrics import roc_auc_score

    from dfcl.measure.trust import (
        CUT_OFF,
        ELSEWHERE,
        SHARPER,
        VIEWS,
        answer,
        coverage,
        ece,
    )

    judged = judged_as_product(trust, s, place)
    q = np.array([j["p_fake"] for j in judged])
    verdicts = [j["verdict"] for j in judged]
    withheld = np.array([bool(j.get("why")) for j in judged])
    row = {"faces": int(len(s.y)), "fake": int(s.y.sum()),
           "auc": float(roc_auc_score(s.y, s.p)) if 0 < s.y.sum() < len(s.y) else None,
           "ece_raw": ece(s.y, s.p), "ece": ece(s.y, q),
           **{f"band_{k}": v for k, v in coverage(s.y, [answer(v, trust.band) for v in q]).items()},
           **coverage(s.y, verdicts), "withheld_unfamiliar": float(withheld.mean()),
           "withheld_views": float(np.mean([VIEWS in j.get("why", "") for j in judged])),
           "withheld_cut_off": float(np.mean([CUT_OFF in j.get("why", "") for j in judged])),
           "withheld_small": float(np.mean(["face too small" in j.get("why", "") for j in judged])),
           "withheld_elsewhere": float(np.mean([ELSEWHERE.split("(")[0] in j.get("why", "") for j in judged])),
           "withheld_sharper": float(np.mean([SHARPER in j.get("why", "") for j in judged])),
           "novel_share": float(np.mean([j["novel"] for j in judged]))}
    if floor:
        row["ece_floor"] = ece_floor(q)
    mine = unfamiliarity(trust, s)
    for c, name in ((0, "real"), (1, "fake")):
        if (s.y == c).any():
            row[f"withheld_{name}s"] = float(withheld[s.y == c].mean())
            if learned is not None:
                for score, theirs, ours in zip(("novelty", "class_distance"), learned, mine):
                    both = np.r_[theirs, ours[s.y == c]]
                    if np.isnan(both).any():
                        continue
                    row[f"{score}_auroc_{name}s"] = float(roc_auc_score(np.r_[np.zeros(len(theirs)),
                                                                              np.ones((s.y == c).sum())], both))
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}


def calibration_maps(val: list, test: list) -> dict:
    """ECE on the learned test faces (pooled, and per set) of maps from raw P(fake) to a probability,
    each fit on the pooled validation faces as the product fits Platt's: what the calibration target
    is limited by. `platt` is the product's (dfcl.measure.trust.fit_calibration); `temperature` its
    slope alone; `beta` (Kull et al. 2017: a logistic regression on ln p and -ln(1 - p)); `isotonic`
    (sklearn, on the logit); `platt on test` is fit on the very faces it is measured on: the least
    ECE a Platt map can reach here, a bound, not a choice. Each with the ECE a perfectly calibrated
    model would show on as many faces (the floor)."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    from dfcl.measure.trust import ece, fit_calibration, logit

    def beta_terms(p):
        p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
        return np.c_[np.log(p), -np.log(1 - p)]

    def temperature(y, p):
        a = LogisticRegression(C=1e4, fit_intercept=False).fit(logit(p)[:, None], y).coef_[0, 0]
        return lambda q: 1 / (1 + np.exp(-a * logit(q)))

    def beta(y, p):
        fit = LogisticRegression(C=1e4).fit(beta_terms(p), y)
        return lambda q: fit.predict_proba(beta_terms(q))[:, 1]

    def isotonic(y, p):
        fit = IsotonicRegression(out_of_bounds="clip", y_min=1e-3, y_max=1 - 1e-3).fit(logit(p), y)
        return lambda q: fit.predict(logit(q))

    vy, vp = np.concatenate([s.y for s in val]), np.concatenate([s.p for s in val])
    ty, tp = np.concatenate([s.y for s in test]), np.concatenate([s.p for s in test])
    out = {}
    for name, fit, (y, p) in (("raw", None, (vy, vp)), ("platt (the product)", fit_calibration, (vy, vp)),
                              ("temperature", temperature, (vy, vp)), ("beta", beta, (vy, vp)),
                              ("isotonic", isotonic, (vy, vp)), ("platt on test (a bound)", fit_calibration, (ty, tp))):
        cal = (lambda q: np.asarray(q, dtype=np.float64)) if fit is None else fit(y, p)
        q = cal(tp)
        out[name] = {"ece": ece(ty, q), "floor": ece_floor(q), **{s.name: ece(s.y, cal(s.p)) for s in test}}
    return out


def curves(trust, s, place=None) -> dict:
    """Risk-coverage curves of one set: faces answered by calibrated P(fake) >= 0.5, the surest
    first (max(P, 1 - P), the softmax response of Geifman & El-Yaniv 2017), and the same with the
    faces the abstention withholds as unfamiliar answered last."""
    from dfcl.measure.trust import risk_coverage

    judged = judged_as_product(trust, s, place)
    q = np.array([j["p_fake"] for j in judged])
    sure = np.maximum(q, 1 - q)
    withheld = np.array([bool(j.get("why")) for j in judged])
    pred = (q >= 0.5).astype(float)
    out = {}
    for name, order in (("P(fake)", -sure), ("P(fake) + familiarity", -sure + 10 * withheld)):
        c, a = risk_coverage(s.y, pred, order)
        out[name] = (c.tolist(), a.tolist())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    learner_arguments(ap)
    ap.add_argument("--foreign", action="append", default=[],
                    help="NAME=FACES[:split,...]: real photos of a kind never trained on (trust.foreign_reals)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--tag", default="cpu")
    ap.add_argument("--rescore", action="store_true", help="score the faces again instead of reading the cache")
    ap.add_argument("--no-flip", dest="flip", action="store_false", help="skip the flip-averaged variant (half the time)")
    args = ap.parse_args(argv)

    from dfcl.config import load_params
    from dfcl.data.arrays import beside
    from dfcl.learning.learner import Learner
    from dfcl.measure.trust import Scored, fit_min_inside, fit_scored

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml", args.overrides)
    learner = Learner.load(args.learner.resolve(), params, args.root.resolve())
    methods = [e.key for e in learner.history.experiences]
    start = time.perf_counter()
    cache = WORK / f"scores-{args.tag}-{'mirrored' if args.flip else 'plain'}.npz"
    fit_f, fit_l, val, test, unseen = scored_faces(learner, args.unseen, cache, args.rescore, args.flip)
    foreign = scored_sets(lambda: learner.strategy.model.to("cpu").eval(), args.foreign, args.flip,
                          cache.with_name(cache.stem + "-foreign.npz"), args.rescore)
    reference, held_out = foreign_halves(foreign, params.train.seed)
    unseen = [*unseen, *held_out]
    score_s = time.perf_counter() - start
    print(f"scored in {score_s:.0f} s", flush=True)

    report = {"learner": str(args.learner), "overrides": args.overrides, "methods_learned": methods,
              "settings": params.trust.model_dump(), "variants": {}, "sweep": {}, "machine": machine(),
              "command": "python benchmarks/trust.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "score_seconds": round(score_s, 1)}
    # The cut-off rule, fit as the learner fits it, and each scored face's place in its picture
    # (share of its box inside, side of its crop): what the cut-off and face-size rules read.
    splits = learner.trust_splits(learner.history.experiences)
    min_inside, fitted = fit_min_inside([s["train"][0] for _, s in splits if "train" in s], params.trust.edge_quantile)
    margin = params.faces.margin
    place = {m: face_place(s["test"][0], margin) for m, s in splits if "test" in s}
    place["learned (all test faces)"] = (None if any(v is None for v in place.values())
                                         else np.concatenate([place[m] for m in methods if m in place]))
    for name, images in map(unseen_images, args.unseen):
        places = [face_place(p, margin) for p in images]
        place[name] = None if any(v is None for v in places) else np.concatenate(places)
    for name, images in map(unseen_images, args.foreign):  # the held-out half's places
        places = [face_place(p, margin) for p in images]
        if all(v is not None for v in places):
            y = np.concatenate([np.load(beside(p, "y")) for p in images])
            order = np.random.default_rng(params.train.seed).permutation(np.flatnonzero(y == 0))
            place[f"{name} (held out)"] = np.concatenate(places)[np.sort(order[len(order) // 2:])]
    report["cut_off"] = {"min_inside": min_inside, **fitted}
    plotted = {}
    report["sweep"] = {"plain": {}, "flip": {}}
    for flip in (False, True) if args.flip else (False,):
        settings = params.trust.model_copy(update={"flip": flip})
        v_val, v_test, v_unseen = variant(val, flip), variant(test, flip), variant(unseen, flip)
        v_reference = variant(reference, flip)
        trust = fit_scored(oriented(fit_f, flip), fit_l, methods, v_val, v_test, learner.history.threshold,
                           settings, params.train.seed, foreign=v_reference)
        trust.min_inside = min_inside
        fit_sizes(learner, params, trust)  # with this variant's rules, as the learner fits them
        pooled = Scored("learned (all test faces)", np.concatenate([s.y for s in v_test]),
                        np.concatenate([s.p for s in v_test]), np.concatenate([s.features for s in v_test]),
                        np.concatenate([s.spread for s in v_test]) if flip else None,
                        np.concatenate([s.sharp for s in v_test]))
        name = "flip" if flip else "plain"
        learned = unfamiliarity(trust, pooled)
        report["variants"][name] = {"trust": trust.summary(),
                                    "learned": {s.name: measure(trust, s, place.get(s.name), floor=True) for s in [pooled, *v_test]},
                                    "unseen": {s.name: measure(trust, s, place.get(s.name), learned, floor=True)
                                               for s in v_unseen}}
        plotted[name] = {s.name: curves(trust, s, place.get(s.name)) for s in [pooled, *v_unseen]}
        # each rule's one knob: how much of the learned validation answers it may withhold
        knobs = [("views_cost", VIEWS_SWEEP, name)] if flip else [("keep", KEEP_SWEEP, name)]
        if reference and not flip:
            knobs.append(("foreign_keep", FOREIGN_SWEEP, "foreign"))
        if not flip:
            knobs.append(("sharp_keep", SHARP_SWEEP, "sharper"))
        for knob, values, sweep in knobs:
            report["sweep"].setdefault(sweep, {})
            for value in values:
                t = fit_scored(oriented(fit_f, flip), fit_l, methods, v_val, [], learner.history.threshold,
                               settings.model_copy(update={knob: value}), params.train.seed, foreign=v_reference)
                t = replace(t, report={}, min_inside=min_inside)
                fit_sizes(learner, params, t)  # refit: the bands move with the rules
                report["sweep"][sweep][str(value)] = {s.name: {k: measure(t, s, place.get(s.name))[k] for k in
                                                              ("coverage", "answered_accuracy", "real_called_fake")}
                                                     for s in [pooled, *v_unseen]}
    report["calibration_maps"] = calibration_maps(variant(val, False), variant(test, False))
    save_results(args.out, f"trust_{args.tag}", report, markdown(report))  # makes args.out
    plot(plotted, report, args.out / f"trust_{args.tag}.png")
    return 0


# The validation faces scored at each size once per run (fit_size_bands' `scores`): the sweeps
# refit the bands with each trust, and only the answers depend on it.
SIZE_SCORES: dict = {}


def fit_sizes(learner, params, trust) -> None:
    """fit_size_bands on a sample of the learned experiences' validation faces, as the learner
    fits it: `trust`'s size_bands and min_side set."""
    from dfcl.measure.trust import _sample, fit_size_bands

    faces = [(np.load(s["val"][0], mmap_mode="r"), np.load(s["val"][1]))
             for _, s in learner.trust_splits(learner.history.experiences) if "val" in s]
    x, y = np.concatenate([f[0] for f in faces]), np.concatenate([f[1] for f in faces])
    keep = _sample(len(y), params.trust.small_face_faces, params.train.seed)
    trust.size_bands, trust.min_side, _ = fit_size_bands(trust, learner.strategy.model.to("cpu").eval(),
                                                         np.asarray(x[keep]), y[keep], params.trust.size_min_answers,
                                                         scores=SIZE_SCORES)


def plot(plotted: dict, report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(plotted["plain"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        for variant, style in (("plain", "-"), ("flip", ":"))[:len(plotted)]:
            for curve, colour in (("P(fake)", "tab:grey"), ("P(fake) + familiarity", "tab:blue")):
                c, a = plotted[variant][name][curve]
                ax.plot(c, a, style, color=colour, label=f"{curve} ({variant})")
            rows = report["variants"][variant]["learned" if name.startswith("learned") else "unseen"][name]
            if rows["answered_accuracy"] is not None:
                ax.plot(rows["coverage"], rows["answered_accuracy"], "o" if variant == "plain" else "s",
                        color="tab:red", label=f"the product's answers ({variant})")
        ax.axhline(0.95 if name.startswith("learned") else 0.80, color="k", lw=0.6, ls="--")
        ax.set(title=name, xlabel="coverage (share answered)", xlim=(0, 1), ylim=(0, 1.01))
    axes[0][0].set_ylabel("accuracy of the answered")
    axes[0][-1].legend(fontsize=6, loc="lower left")
    fig.suptitle("Risk-coverage: faces answered surest first (calibrated P(fake)); dots: the product's answers; "
                 "dashed: the target", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(r: dict) -> str:
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"# How sure the champion's verdicts are ({r['date']})", "",
             f"Machine: {r['machine']['platform']}, {r['machine']['cpu_cores']} cores, torch {r['machine']['torch']}.",
             f"Command: `{r['command']}`", "",
             f"Learner: {', '.join(r['methods_learned'])}. Trust settings {r['settings']}.",
             "Fit on the learned experiences' training and validation faces only; every figure below is on test "
             "faces (learned) or on sets never trained on. `band`: the calibrated band alone (before this change); "
             "`answered`: with the abstention on the unfamiliar and everything else the product does.", "",
             "![risk-coverage](trust_" + r["command"].split("--tag ")[-1].split()[0] + ".png)"
             if "--tag " in r["command"] else "", ""]
    cut = r.get("cut_off")
    if cut:
        lines += [f"Cut off: a face with less than {cut['min_inside']} of its box inside its picture is withheld "
                  f"(`trust.edge_quantile` {r['settings']['edge_quantile']} of {cut.get('inside_faces')} learned training "
                  f"faces' shares, median {cut.get('inside_median', '-')}).", ""]
    for name, v in r["variants"].items():
        t = v["trust"]
        lines += [f"## {'With test-time flip averaging' if name == 'flip' else 'Without flip averaging'}", "",
                  f"Band: real below {t['band'][0]:.3f}, fake at or above {t['band'][1]:.3f}; cuts on the unfamiliar "
                  f"(real, fake) {t['unfamiliar']} at level {t.get('unfamiliar_level')}"
                  + (f"; a \"fake\" answer more like the real photos of {', '.join(t['foreign'])} ({t.get('foreign_faces')} "
                     f"faces) than the learned forgeries beyond {t['elsewhere']} is withheld" if t.get("foreign") else "")
                  + (f"; a \"fake\" answer on a face sharper than {t['sharper']} (log Laplacian variance) is withheld"
                     if t.get("sharper") is not None else "")
                  + f"; a face cut from fewer than {t.get('min_side', 0)} px across is too small.", "",
                  "| set | faces (fake) | AUC | ECE raw | ECE (perfect: floor) | band: answered | band: accuracy | band: reals called fake "
                  "| answered | accuracy answered | reals called fake | withheld reals | withheld fakes | withheld: views disagree "
                  "| withheld: cut off | withheld: too small | withheld: like real photos from elsewhere | withheld: sharper |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for group in ("learned", "unseen"):
            for k, m in v[group].items():
                lines.append(f"| {k}{' (never trained on)' if group == 'unseen' else ''} | {m['faces']} ({m['fake']}) | "
                             f"{f(m['auc'])} | {f(m['ece_raw'])} | {f(m['ece'])} ({f(m.get('ece_floor'))}) | {f(m['band_coverage'])} | "
                             f"{f(m['band_answered_accuracy'])} | {f(m['band_real_called_fake'])} | **{f(m['coverage'])}** | "
                             f"**{f(m['answered_accuracy'])}** | **{f(m['real_called_fake'])}** | "
                             f"{f(m.get('withheld_reals'))} | {f(m.get('withheld_fakes'))} | "
                             f"{f(m.get('withheld_views')) if name == 'flip' else '-'} | {f(m.get('withheld_cut_off'))} | "
                             f"{f(m.get('withheld_small'))} | "
                             f"{f(m.get('withheld_elsewhere'))} | {f(m.get('withheld_sharper'))} |")
        lines += ["", "Novelty on the sets never trained on, their real and their fake faces apart: AUROC of telling "
                  "them from the learned methods' test faces, by the k-NN novelty to every learned face (the `novel` "
                  "flag) and by the distance to the learned faces of the class each is answered (the rule):", "",
                  "| set | novelty: reals | novelty: fakes | class distance: reals | class distance: fakes |",
                  "| --- | --- | --- | --- | --- |"]
        for k, m in v["unseen"].items():
            lines.append(f"| {k} | {f(m.get('novelty_auroc_reals'))} | {f(m.get('novelty_auroc_fakes'))} | "
                         f"{f(m.get('class_distance_auroc_reals'))} | {f(m.get('class_distance_auroc_fakes'))} |")
        lines.append("")
    maps = r.get("calibration_maps")
    if maps:
        sets = [k for k in next(iter(maps.values())) if k not in ("ece", "floor")]
        lines += ["## Calibration: which map (no flip)", "",
                  "ECE on the learned test faces of maps from raw P(fake) fit on the pooled validation faces (the "
                  "product fits Platt's); `platt on test` is fit on the test faces themselves: the least a Platt map "
                  "reaches here. The floor: what a perfectly calibrated model would show on as many faces.", "",
                  "| map | learned (all test faces): ECE (floor) | " + " | ".join(sets) + " |",
                  "| --- | --- |" + " --- |" * len(sets)]
        for name, m in maps.items():
            lines.append(f"| {name} | {f(m['ece'])} ({f(m['floor'])}) | " + " | ".join(f(m[k]) for k in sets) + " |")
        lines.append("")
    for name, knob, what in (("plain", "trust.keep", "share of the band's answers on learned validation faces kept "
                              "by the rule on the unfamiliar; no flip"),
                             ("flip", "trust.views_cost", "share of the band's answers on learned validation faces "
                              "the views rule may withhold; with flip, `trust.keep` as set"),
                             ("foreign", "trust.foreign_keep", "share of the band's \"fake\" answers on learned validation "
                              "faces kept by the rule on real photos from elsewhere (1.0: no such rule); no flip, "
                              "`trust.keep` as set"),
                             ("sharper", "trust.sharp_keep", "share of the band's \"fake\" answers on learned validation "
                              "faces kept by the rule on faces sharper than those (1.0: no such rule); no flip, the other "
                              "rules as set")):
        sweep = r["sweep"].get(name)
        if not sweep:
            continue
        first = next(iter(sweep.values()))
        lines += [f"## The rule's knob: `{knob}` ({what})", "",
                  "answered / accuracy of the answered / reals answered fake, per set (the bands per face size refit at each value, as the learner would fit it):", "",
                  f"| {knob} | " + " | ".join(first) + " |", "| --- |" + " --- |" * len(first)]
        for value, sets in sweep.items():
            lines.append(f"| {value} | " + " | ".join(f"{f(m['coverage'])} / {f(m['answered_accuracy'])} / "
                                                       f"{f(m['real_called_fake'])}" for m in sets.values()) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
