"""Catching forgeries before they are learned: self-blended training, measured on sets never trained on.

Each row is one continual training (params' strategy, Replay by default) over the FF++ sequence
Deepfakes -> Face2Face -> FaceSwap -> NeuralTextures, optionally after a self-blended experience
of FF++'s real training faces (`sbi_first`: what a new workspace learns before any forgery data,
`dfcl retrain REAL_FOLDER --method self-blended`). After EVERY experience the model is scored
(ROC AUC) on:

  * every FF++ method's test split, learned or not: the upper triangle of that matrix is forward
    transfer (a method's AUC just before it is learned; NeuralTextures' is the left-out number);
  * sets it never trains on: dfdc-crops (test split), flux-faces (test split: diffusion faces of
    an identity training never shows), stylegan-faces (val_images, all of it).

Faces are extracted as ingest does (re-framed by MTCNN at `faces.margin`, dlib landmarks), once
per setting, into --workspace. Rows already in the results JSON are kept (resumable: run the
same command again after a stop, or --rows to add some); each row is written as it lands.

    python benchmarks/generalization.py [--rows a,b] [--suffix _seed1 -S train.seed=1] [--tag cpu]

Writes benchmarks/results/generalization_<tag>.{md,json,png}.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # run as a script: the repo and sibling modules
from common import (  # noqa: E402
    auc_on,
    checked_rows,
    extract_once,
    gather_reals,
    made_folders,
    resumed_report,
)
from common import spec as common_spec  # noqa: E402

FFPP = ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]
UNSEEN = {"dfdc": ("dfdc-crops", ("test",)), "flux": ("flux-faces", ("test",)),  # name: (folder, splits scored)
          "stylegan": ("stylegan-faces/val_images", ("train", "val", "test"))}

# name -> (what it is, -S overrides on top of the command's, self-blended experience first?)
ROWS = {
    "reframed": ("Lite0 160 px on re-framed faces (margin 0.7, MTCNN on every image), no SBI", [], False),
    "sbi_first": ("a self-blended experience of FF++'s real training faces (sbi.epochs as params.yaml: 0 before 2026-12-05, 12 since), then the FF++ sequence", [], True),
    "sbi_every": ("SBI fakes (0.5 per real) added to every FF++ experience", ["sbi.enabled=true"], False),
    "sbi_first_every": ("both: the self-blended experience first, and SBI fakes in every experience",
                        ["sbi.enabled=true"], True),
    "sbi_long": ("the self-blended experience first (pairs, seams inside the crop), 12 epochs, the best validation "
                 "epoch kept; then the FF++ sequence", ["sbi.epochs=12", "train.early_stopping_patience=3"], True),
    "sbi_multi": ("the self-blended experience of real faces of several cameras (--sbi-reals), 3 epochs, the best "
                  "validation epoch kept; then the FF++ sequence", ["sbi.epochs=3", "train.early_stopping_patience=2"], True),
    "sbi_pretrained": ("the FF++ sequence from a self-blended model trained apart (-S model.weights=<benchmarks/gpu_sbi.py's "
                       "kept weights>), no self-blended experience in the sequence", [], False),
    "sbi_first_mask": ("the self-blended experience first, with the forgery-mask head (model.mask_head)",
                       ["model.mask_head=true"], True),
}


def faces(data: Path, work: Path, params: dict, unseen_cap: int, real_sets: list[str] = (), sbi_cap: int = 0) -> dict:
    """{set name: (face paths, splits scored)} of everything a row is scored on, and the FF++
    experiences and the self-blended one to train on."""
    from dfcl.config import apply_overrides

    ffpp = extract_once(data / "ffpp-crops", work, params)
    small = apply_overrides(params, [f"data.max_per_class={unseen_cap}"])
    scored = {m: (ffpp[m], ("test",)) for m in FFPP}
    for key, (folder, splits) in UNSEEN.items():
        scored[key] = (next(iter(extract_once(data / folder, work, small).values())), splits)
    # Every real training face of FF++ (the paper's setting): the ffpp experiences' cap does not apply.
    whole = apply_overrides(params, [f"data.max_per_class={sbi_cap}"])
    name = params.sbi.method
    sbi = {"": extract_once(data / "ffpp-crops", work, whole, name=name)[name]}
    if real_sets:  # FF++'s reals and those of other cameras, as `sbi.real_sets` gives the flow
        cap = {f: int(n) for f, n in (s.split(":") for s in real_sets)}  # folder (under --data): files
        if len(set(cap.values())) > 1:
            raise SystemExit("--sbi-reals: one count for every folder (sbi.max_per_set)")
        gather = apply_overrides(whole, [f"sbi.max_per_set={next(iter(cap.values()))}"])
        folder = gather_reals([data / "ffpp-crops"] + [data / f for f in cap],
                              work / ("reals-" + "-".join(real_sets).replace("/", "_")), gather)
        sbi["+".join(real_sets)] = extract_once(folder, work, whole, name=name)[name]
    return {"ffpp": ffpp, "sbi": sbi, "scored": scored}


def spec(key: str, paths: dict):
    return common_spec(key, paths, "generalization")


def run_row(name: str, params: dict, sets: dict, first: bool, work: Path, reals: str = "") -> dict:
    """One continual training, scored on every set after every experience."""
    from dfcl.learning.learner import train_sequence

    sequence = ([spec("ffpp-crops/" + params.sbi.method, sets["sbi"][reals])] if first else []) + \
        [spec(f"ffpp-crops/{m}", sets["ffpp"][m]) for m in FFPP]
    after: list[dict] = []

    def score(step, results, learner):
        model, device = learner.strategy.model, learner.strategy.device
        if first and step == 0:  # the self-blended model alone, kept for benchmarks/shortcuts.py
            learner.save()
            shutil.rmtree(work / "learners" / f"{name}-sbi-alone", ignore_errors=True)
            shutil.copytree(learner.folder, work / "learners" / f"{name}-sbi-alone")
        after.append({k: auc_on(model, device, paths, splits) for k, (paths, splits) in sets["scored"].items()})
        print(f"  {name} after {sequence[step].method}: " + ", ".join(f"{k} {v:.3f}" for k, v in after[-1].items()),
              flush=True)

    start = time.perf_counter()
    learner, report = train_sequence(sequence, params, work / "learners" / name, Path("/"), on_experience=score)
    last, offset = after[-1], 1 if first else 0
    # Forward transfer: each FF++ method's AUC just before it was learned (the first one's only
    # when a self-blended experience came before it).
    before = {m: after[offset + i - 1][m] for i, m in enumerate(FFPP) if offset + i - 1 >= 0}
    results = learner.last_results()
    return {"learned_auc": {m: last[m] for m in FFPP}, "learned_mean_auc": float(np.mean([last[m] for m in FFPP])),
            "auc_forgetting": report["auc_forgetting"],
            "forward_auc": before, "forward_mean_auc": float(np.mean(list(before.values()))),
            "unseen_auc": {k: last[k] for k in UNSEEN}, "after_each": after,
            "sbi_alone": after[0] if first else None,
            "sbi_test_auc": results["auc"].get(sequence[0].key) if first else None,
            "experiences": [s.method for s in sequence], "train_seconds": round(report["train_seconds"], 1),
            "wall_s": round(time.perf_counter() - start, 1)}


def markdown(report: dict) -> str:
    lines = [f"# Generalisation to unseen forgeries ({report['tag']})", "",
             f"Machine: {report['machine']}. Dates: {', '.join(report['dates'])}.", "",
             "Commands (each run adds the rows it lacks):", "", *[f"    {c}" for c in report["commands"]], "",
             "One continual training per row (Replay 2000, 2 epochs an experience unless the command says otherwise) "
             "over DF -> F2F -> FS -> NT, faces re-framed at margin 0.7. *learned*: mean test AUC over the four "
             "after the sequence; *forward*: mean AUC of F2F, FS, NT (and DF after a self-blended experience) "
             "just before each is learned; *NT before*: NeuralTextures after DF, F2F, FS (the left-out number). "
             "Unseen sets, after the whole sequence: dfdc-crops test, flux-faces test, stylegan-faces val_images.", "",
             "| row | change | learned mean AUC | AUC forgetting | forward transfer | NT before | DFDC | FLUX | StyleGAN | train s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in report["rows"].items():
        if "error" in r:
            lines.append(f"| {name} | {r['change']} | failed: {r['error']} | | | | | | | |")
            continue
        u = r["unseen_auc"]
        lines.append(f"| {name} | {r['change']} | {r['learned_mean_auc']:.3f} | {r['auc_forgetting']:.3f} | "
                     f"{r['forward_mean_auc']:.3f} | {r['forward_auc']['NeuralTextures']:.3f} | {u['dfdc']:.3f} | "
                     f"{u['flux']:.3f} | {u['stylegan']:.3f} | {r['train_seconds']:.0f} |")
    lines += seed_summary(report)
    alone = {n: r for n, r in report["rows"].items() if r.get("sbi_alone")}
    if alone:
        lines += ["", "The self-blended experience alone (real faces only, before any forgery data): AUC on every set, "
                  "and on its own held-back SBI test faces:", "",
                  "| row | SBI test | " + " | ".join(FFPP + list(UNSEEN)) + " |", "| --- |" + " --- |" * (len(FFPP) + len(UNSEEN) + 1)]
        for n, r in alone.items():
            lines.append(f"| {n} | {r['sbi_test_auc']:.3f} | " + " | ".join(f"{r['sbi_alone'][k]:.3f}" for k in FFPP + list(UNSEEN)) + " |")
    lines += ["", "Per-method AUC after the sequence / just before learning it:", "",
              "| row | " + " | ".join(FFPP) + " |", "| --- |" + " --- |" * len(FFPP)]
    for n, r in report["rows"].items():
        if "error" not in r:
            lines.append(f"| {n} | " + " | ".join(
                f"{r['learned_auc'][m]:.3f} / " + (f"{r['forward_auc'][m]:.3f}" if m in r["forward_auc"] else "-")
                for m in FFPP) + " |")
    if report.get("videos"):
        lines += ["", "FF++ videos (7: 3 originals, 4 fakes; 16 frames each), the row's final model, faces cut at its "
                  "own margin and at 1.3 (the detection margin before re-framing). Seven videos say little; the "
                  "frame level pools 100-odd faces:", "", "| row | faces cut at | frame AUC | video AUC |", "| --- | --- | --- | --- |"]
        for n, by_margin in report["videos"].items():
            for m, r in by_margin.items():
                lines.append(f"| {n} | {m} | {r['auc']:.3f} | " + (f"{r['video_auc']:.3f}" if r.get("video_auc") is not None else "-") + " |")
    lines += ["", f"Plot: `generalization_{report['tag']}.png` (AUC on each set after each experience)."]
    return "\n".join(lines) + "\n"


SUMMARISED = {"learned mean AUC": ("learned_mean_auc",), "AUC forgetting": ("auc_forgetting",),
              "forward transfer": ("forward_mean_auc",), "DFDC": ("unseen_auc", "dfdc"),
              "FLUX": ("unseen_auc", "flux"), "StyleGAN": ("unseen_auc", "stylegan")}


def seed_summary(report: dict) -> list[str]:
    """Mean ± standard deviation over the seeds of each row (`row`, `row_seed1`, ...), where a
    row ran with more than one seed."""
    import re

    groups: dict[str, list[dict]] = {}
    for name, r in report["rows"].items():
        if "error" not in r:
            groups.setdefault(re.sub(r"_seed\d+$", "", name), []).append(r)
    groups = {k: v for k, v in groups.items() if len(v) > 1}
    if not groups:
        return []

    def value(r, path):
        for k in path:
            r = r[k]
        return r

    lines = ["", "Over seeds (`-S train.seed=N`, rows `_seedN`): mean ± standard deviation:", "",
             "| row | seeds | " + " | ".join(SUMMARISED) + " |", "| --- | --- |" + " --- |" * len(SUMMARISED)]
    for name, rows in groups.items():
        cells = [np.array([value(r, path) for r in rows], float) for path in SUMMARISED.values()]
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(f"{c.mean():.3f} ± {c.std(ddof=1):.3f}" for c in cells) + " |")
    return lines


def video_level(name: str, params: dict, data: Path, work: Path) -> dict:
    """A row's final model on FF++'s videos (16 frames each, detection as `dfcl detect` does it):
    frame- and video-level AUC with faces cut at the model's own margin, and at 1.3, the margin
    detection used before faces were re-framed (a mismatch with the training faces)."""
    from dfcl.serving.detector import load_detector
    from dfcl.serving.evaluate import evaluate

    detector = load_detector(str(work / "learners" / name), params, Path("/"))
    out = {}
    for margin in (params.faces.margin, 1.3):
        detector.info["framing"] = {"margin": margin, "images": "reframed"}
        overall = evaluate(detector, str(data / "ffpp-videos"), params)["overall"]
        out[f"margin {margin}"] = {k: overall.get(k) for k in ("auc", "video_auc", "faces", "videos")}
    return out


HAND_WRITTEN = "## What the numbers say (hand-written)"


def plot(report: dict, path: Path) -> None:
    from dfcl.measure.plots import plt

    rows = {n: r for n, r in report["rows"].items() if "error" not in r}
    if not rows:
        return
    keys = FFPP + list(UNSEEN)
    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.6), squeeze=False, sharey=True)
    for ax, (n, r) in zip(axes[0], rows.items()):
        steps = np.arange(len(r["after_each"]))
        for k in keys:
            ax.plot(steps, [a[k] for a in r["after_each"]], marker="o", ms=3, label=k,
                    ls="-" if k in FFPP else "--")
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xticks(steps, [e[:6] for e in r["experiences"]], rotation=30, fontsize=7)
        ax.set(title=n, ylim=(0.0, 1.0), xlabel="after learning")
    axes[0][0].set_ylabel("ROC AUC (dashed: never trained on)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("-S", "--set", action="append", default=[], help="overrides for every row")
    parser.add_argument("--suffix", default="", help="added to the row names (e.g. _seed1 with -S train.seed=1)")
    parser.add_argument("--unseen-cap", type=int, default=200, help="faces per class and split of the unseen sets")
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--workspace", default=str(REPO / "benchmarks" / ".work" / "generalization"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--extract-only", action="store_true", help="extract the faces and stop")
    parser.add_argument("--sbi-cap", type=int, default=0, help="real faces per split of the self-blended experience "
                        "(0: all, the paper's setting; a smoke test caps it)")
    parser.add_argument("--sbi-reals", default="", help="comma-separated FOLDER:N: up to N real files of each folder "
                        "of --data join FF++'s in the self-blended experience of rows that have one")
    args = parser.parse_args()
    checked_rows(parser, args.rows, ROWS)
    from dfcl.config import load_params
    work, out = made_folders(args.workspace, args.out)
    stem = out / f"generalization_{args.tag}"
    base = load_params(REPO / "params.yaml", args.set)
    real_sets = [r for r in args.sbi_reals.split(",") if r]
    sets = faces(Path(args.data), work, base, args.unseen_cap, real_sets, args.sbi_cap)
    if args.extract_only:
        return
    report = resumed_report(stem, args.tag, "rows")
    for name in args.rows.split(","):
        key = name + args.suffix
        if key in report["rows"] and "error" not in report["rows"][key]:
            print(f"== {key}: in the results already", flush=True)
            continue
        change, overrides, first = ROWS[name]
        params = load_params(REPO / "params.yaml", args.set + overrides)
        print(f"== {key}: {change}", flush=True)
        try:
            row = run_row(key, params, sets, first, work, "+".join(real_sets))
        except Exception as e:  # one broken row must not lose the others' numbers
            row = {"error": f"{type(e).__name__}: {e}"}
        report["rows"][key] = {"change": change, "overrides": args.set + overrides, **row}
        if "error" not in row and (Path(args.data) / "ffpp-videos").is_dir():
            report.setdefault("videos", {})[key] = video_level(key, params, Path(args.data), work)
        stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
        md = stem.with_suffix(".md")
        notes = md.read_text()[md.read_text().index(HAND_WRITTEN):] if md.exists() and HAND_WRITTEN in md.read_text() else ""
        md.write_text(markdown(report) + ("\n" + notes if notes else ""))
        plot(report, stem.with_suffix(".png"))
    print(markdown(report))


if __name__ == "__main__":
    main()
