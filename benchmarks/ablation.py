"""Detection-quality ablation on real forgeries: one row per change, same seeds, same splits.

Each row is a set of `-S` overrides on params.yaml (cumulative: a row keeps the changes of the
rows above it unless it says otherwise). For each row three trainings:

  joint       one experience holding all four FF++ methods (Deepfakes, Face2Face, FaceSwap,
              NeuralTextures) -> mean test AUC over the four, and AUC on stylegan-faces
              (a method never trained on: entire-face synthesis)
  continual   the FF++ sequence with the continual strategy (params strategy.name) -> final
              mean AUC over the four, average forgetting (accuracy, Avalanche's definition)
  left-out    joint on Deepfakes + Face2Face + FaceSwap -> AUC on NeuralTextures, never seen

A row named `dfdc_first` puts dfdc-crops in front of all three (pre-training / an earlier
experience). Balanced accuracy is at the threshold chosen on the validation split.

Every training is a Prefect task on the task runner `compare.runner` chooses, as in `dfcl
compare`: one after the other here (`local`), or side by side on Dask workers (`-S
compare.runner=dask`: a LocalCluster of `compare.dask_workers` single-threaded processes, or the
scheduler at `compare.dask_address`). The faces are extracted with dfcl.data.extraction straight from
the folders (no DVC or MLflow) into --workspace, which the workers read: on a cluster of several
machines, put it on storage they share.

    python benchmarks/ablation.py [--rows a,b] [--data DIR] [-S key=value ...] [--tag cpu]

Writes benchmarks/results/ablation_<tag>.{md,json,png}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # run as a script: the repo and sibling modules
from common import auc_on, checked_rows, machine, made_folders  # noqa: E402
from common import extract_once as extract  # noqa: E402
from common import spec as common_spec  # noqa: E402

from dfcl.workspace import Workspace, configure_environment  # noqa: E402

# Prefect reads its settings when imported: its home and temporary API go under benchmarks/.work.
configure_environment(Workspace(REPO / "benchmarks" / ".work"))
from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from dfcl.config import apply_overrides, load_params  # noqa: E402
from dfcl.data.arrays import SPLITS, face_arrays  # noqa: E402
from dfcl.data.datasets import first_of_each_face  # noqa: E402

FFPP = ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]
LEFT_OUT = "NeuralTextures"

# name -> (what changed, overrides applied on top of the previous row's; see ONE_OFF and RESTART).
# The first row is the starting point.
ROWS = {
    "baseline": ("small CNN 64 px, plain loss, constant lr, flips only",
                 ["train.class_balance=false", "train.schedule=constant", "augment.enabled=false",
                  "sbi.enabled=false", "train.early_stopping_patience=0"]),
    "balance": ("+ class-balanced loss (threshold on validation)", ["train.class_balance=true"]),
    "augment": ("+ forensic augmentation", ["augment.enabled=true"]),
    "cosine_es": ("+ cosine schedule, early stopping on val AUC", ["train.schedule=cosine", "train.early_stopping_patience=4"]),
    "sbi": ("+ self-blended fakes (0.5 per real)", ["sbi.enabled=true"]),
    "replay_mix": ("class weights count the Replay buffer's class mix (a code change; same settings)", []),
    "size128": ("+ 128 px input", ["data.image_size=128"]),
    "size96": ("+ 96 px input", ["data.image_size=96"]),
    "fft": ("+ frequency branch (RGB and log-spectrum streams)", ["model.name=small_cnn_fft"]),
    "effnet_b0": ("EfficientNet-B0 from scratch", ["model.name=efficientnet_b0"]),
    "resnet18": ("ResNet-18 from scratch", ["model.name=resnet18"]),
    "resnet50": ("ResNet-50 from scratch", ["model.name=resnet50"]),
    "xception": ("Xception from scratch", ["model.name=xception"]),
    # Run on their own after a row (its base overrides): how far the training seed alone moves it.
    "seed1": ("same settings as the row it repeats, training seed 1 (same splits)", ["train.seed=1"]),
    "seed2": ("same settings as the row it repeats, training seed 2 (same splits)", ["train.seed=2"]),
    "dfdc_first": ("the best row so far (continual mean AUC), with DFDC crops learned first", []),
    # Pretrained EfficientNet-Lite (issue 13). `lite0` starts over from params.yaml's defaults
    # (the -S base overrides still apply); the rows after it each change one thing of it.
    "lite0": ("EfficientNet-Lite0 from ImageNet, 128 px, head lr x1 / backbone x0.3, warm-up + cosine, "
              "class balance, augmentation", []),
    "lite0_scratch": ("Lite0 from scratch (model.pretrained=none)", ["model.pretrained=none"]),
    "lite0_bn_frozen": ("Lite0, batch-norm statistics frozen after the first experience",
                        ["train.batchnorm=freeze_after_first"]),
    "lite0_160": ("Lite0 at 160 px", ["data.image_size=160"]),
    "lite0_224": ("Lite0 at 224 px", ["data.image_size=224"]),
    "lite0_noaug": ("Lite0 without augmentation", ["augment.enabled=false"]),
    "lite0_sbi": ("Lite0 + self-blended fakes", ["sbi.enabled=true"]),
    "lite2": ("EfficientNet-Lite2 from ImageNet", ["model.name=efficientnet_lite2"]),
}
# Rows whose overrides hold for that row only (a variant of the row before it), not for the rows after.
ONE_OFF = {"seed1", "seed2", "lite0_scratch", "lite0_bn_frozen", "lite0_160", "lite0_224", "lite0_noaug",
           "lite0_sbi", "lite2"}
# Rows that start again from params.yaml (plus the command's -S) instead of the rows above.
RESTART = {"lite0"}


def merged(name: str, parts: list[dict], work: Path, size: int) -> dict:
    """One experience out of several: every split concatenated, identical faces kept once
    (FF++'s originals are the real class of every method)."""
    out = work / f"merged-{size}" / name
    paths = face_arrays(out)
    if not paths["test_y"].exists():
        out.mkdir(parents=True, exist_ok=True)
        for s in SPLITS:
            x = np.concatenate([np.load(p[f"{s}_x"]) for p in parts])
            y = np.concatenate([np.load(p[f"{s}_y"]) for p in parts])
            keep = first_of_each_face(x)
            np.save(paths[f"{s}_x"], x[keep])
            np.save(paths[f"{s}_y"], y[keep])
    return {k: str(v) for k, v in paths.items()}


def spec(key: str, paths: dict):
    return common_spec(key, paths, "ablation")


@task(cache_policy=NO_CACHE, retry_delay_seconds=2)  # retries: compare.retries (the flow sets them)
def train_and_score(sequence: list, params: dict, folder: str, scored: dict, threads: int | None) -> dict:
    """A new learner on `sequence` (dfcl.learning.learner.train_sequence), then the AUC of its model on each
    of `scored` ({name: (face paths, splits)}): those, its last results and its training seconds.
    `threads`: torch threads of a Dask worker (one training per worker process)."""
    from dfcl.learning.learner import train_sequence

    if threads:
        torch.set_num_threads(threads)
    learner, report = train_sequence(sequence, params, Path(folder), Path("/"))
    model, device = learner.strategy.model, learner.strategy.device
    return {"results": learner.last_results(), "seconds": report["train_seconds"],
            "auc": {name: auc_on(model, device, paths, splits) for name, (paths, splits) in scored.items()}}


def submit_row(name: str, params: dict, data: Path, work: Path, dfdc_first: bool, threads: int | None) -> dict:
    """The row's three trainings (joint, continual, left-out) submitted to the flow's task runner;
    the faces are extracted first, here."""
    size = params.data.image_size
    ffpp = extract(data / "ffpp-crops", work, params)
    stylegan = next(iter(extract(data / "stylegan-faces" / "images", work, params).values()))
    dfdc_faces = next(iter(extract(data / "dfdc-crops", work, params).values()))
    first = [spec("dfdc-crops", dfdc_faces)] if dfdc_first else []
    per_method = [spec(f"ffpp-crops/{m}", ffpp[m]) for m in FFPP]
    joint = spec("ffpp-joint", merged("joint", [ffpp[m] for m in FFPP], work, size))
    seen = [m for m in FFPP if m != LEFT_OUT]
    three = spec("ffpp-three", merged("three", [ffpp[m] for m in seen], work, size))

    naive = apply_overrides(params, ["strategy.name=naive"])
    train = train_and_score.with_options(retries=params.compare.retries)
    folder = work / "learners" / name
    # The joint model is also scored on methods it never trained on: StyleGAN (all of it) and
    # DFDC's test split (unless dfdc_first trained on it).
    joint_scored = {**{m: (ffpp[m], ("test",)) for m in FFPP},
                    "stylegan": (stylegan, ("train", "val", "test")), "dfdc": (dfdc_faces, ("test",))}
    return {"joint": train.submit(first + [joint], naive, str(folder / "joint"), joint_scored, threads),
            "continual": train.submit(first + per_method, params, str(folder / "continual"), {}, threads),
            "left_out": train.submit(first + [three], naive, str(folder / "left-out"),
                                     {LEFT_OUT: (ffpp[LEFT_OUT], ("test",))}, threads)}


def row_of(trainings: dict) -> dict:
    """A table row out of a row's three finished trainings."""
    joint, continual, left_out = (trainings[k].result() for k in ("joint", "continual", "left_out"))
    results, ff = continual["results"], [f"ffpp-crops/{m}" for m in FFPP]
    return {"joint_auc": {m: joint["auc"][m] for m in FFPP},
            "joint_mean_auc": float(np.mean([joint["auc"][m] for m in FFPP])),
            "stylegan_auc": joint["auc"]["stylegan"], "dfdc_auc": joint["auc"]["dfdc"],
            "joint_seconds": round(joint["seconds"], 1),
            "continual_auc": {k.split("/")[-1]: results["auc"][k] for k in ff},
            "continual_mean_auc": float(np.mean([results["auc"][k] for k in ff])),
            "continual_balanced_accuracy": float(np.mean([results["balanced_accuracy"][k] for k in ff])),
            "continual_accuracy": float(np.mean([results["accuracy"][k] for k in ff])),
            "continual_forgetting": results["forgetting"], "continual_seconds": round(continual["seconds"], 1),
            # Mean AUC of each method just before the sequence learned it (dfdc_first: Deepfakes after DFDC too).
            "continual_forward_transfer": results["auc_forward_transfer"],
            "left_out_auc": left_out["auc"][LEFT_OUT], "left_out_seconds": round(left_out["seconds"], 1)}


def markdown(report: dict, tag: str) -> str:
    lines = [f"# Detection-quality ablation ({tag})", "",
             f"Machine: {report['machine']}. Date: {report['date']}. Wall clock: {report['wall_s'] / 60:.1f} min.", "",
             "Commands (rows from a later command were appended to the table):", "",
             *[f"    {c}" for c in report["commands"]], "",
             f"Base parameters (before the rows' overrides): `{json.dumps(report['base'])}`.", "",
             "Rows are cumulative unless the change says otherwise. *joint*: one experience of all four FF++ "
             "methods (Naive); *continual*: the FF++ sequence with "
             f"`{report['strategy']}`; *left-out*: joint on DF+F2F+FS, tested on NeuralTextures. "
             "Balanced accuracy at the threshold chosen on validation faces. StyleGAN and DFDC (its test split): "
             "the joint model on methods it never trained on. *Forward transfer*: in the continual sequence, "
             "each method's AUC just before it was learned, averaged.", "",
             "| row | change | joint mean AUC (FF++ 4) | continual mean AUC | continual bal. acc | forgetting | "
             "forward transfer (AUC) | StyleGAN AUC | DFDC AUC | left-out NT AUC | train s (joint/cont./left-out) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in report["rows"].items():
        if "error" in r:
            lines.append(f"| {name} | {r['change']} | failed: {r['error']} | | | | | | | | |")
            continue
        dfdc = f"{r['dfdc_auc']:.3f}" if "dfdc_auc" in r else "-"  # rows from before the column
        forward = f"{r['continual_forward_transfer']:.3f}" if "continual_forward_transfer" in r else "-"  # likewise
        lines.append(f"| {name} | {r['change']} | {r['joint_mean_auc']:.3f} | {r['continual_mean_auc']:.3f} | "
                     f"{r['continual_balanced_accuracy']:.3f} | {r['continual_forgetting']:.3f} | {forward} | {r['stylegan_auc']:.3f} | "
                     f"{dfdc} | {r['left_out_auc']:.3f} | {r['joint_seconds']:.0f} / {r['continual_seconds']:.0f} / {r['left_out_seconds']:.0f} |")
    lines += ["", "Per-method test AUC (joint / continual):", "",
              "| row | " + " | ".join(FFPP) + " |", "| --- |" + " --- |" * len(FFPP)]
    for name, r in report["rows"].items():
        if "error" not in r:
            lines.append(f"| {name} | " + " | ".join(f"{r['joint_auc'][m]:.3f} / {r['continual_auc'][m]:.3f}" for m in FFPP) + " |")
    lines += ["", f"Plot: `ablation_{tag}.png`."]
    return "\n".join(lines) + "\n"


HAND_WRITTEN = "## What the numbers say (hand-written)"


def hand_written(md: Path) -> str:
    """The analysis someone wrote under the generated table: kept when rows are appended."""
    text = md.read_text() if md.exists() else ""
    return "\n" + text[text.index(HAND_WRITTEN):] if HAND_WRITTEN in text else ""


def plot(report: dict, path: Path) -> None:
    from dfcl.measure.plots import plt

    rows = {n: r for n, r in report["rows"].items() if "error" not in r}
    keys = [("joint_mean_auc", "joint FF++"), ("continual_mean_auc", "continual FF++"),
            ("stylegan_auc", "StyleGAN (unseen)"), ("left_out_auc", "NT left out")]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    width = 0.8 / len(keys)
    for i, (k, label) in enumerate(keys):
        ax.bar(np.arange(len(rows)) + i * width, [r[k] for r in rows.values()], width, label=label)
    ax.axhline(0.9, color="k", ls=":", lw=1)
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, list(rows), rotation=30, ha="right")
    ax.axhline(0.5, color="grey", ls="--", lw=1)  # chance
    ax.set(ylim=(0.0, 1.0), ylabel="ROC AUC", title="Ablation: one change per row (dotted: target 0.9)")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@flow(name="ablation", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def ablation(plan: list[dict], report: dict, data: str, work: str, out: str, tag: str, notes: str,
             threads: int | None = None) -> dict:
    """Every row's three trainings as Prefect tasks on the flow's task runner (compare.runner), all
    submitted before any is waited for; the results files are rewritten as each row lands, in order."""
    work_dir, out_dir, start, prior = Path(work), Path(out), time.perf_counter(), report.get("wall_s", 0)
    pending, ran = [], []

    def record(entry: dict, trainings: dict, submitted: float) -> None:
        try:
            row = row_of(trainings)
        except Exception as e:  # one broken row must not lose the others' numbers
            row = {"error": f"{type(e).__name__}: {e}"}
        key = entry["name"] + entry["suffix"]
        report["rows"][key] = {"change": entry["change"], "overrides": entry["overrides"], **row,
                               "wall_s": round(time.perf_counter() - submitted, 1)}
        ran.append(key)
        print(json.dumps(report["rows"][key]), flush=True)
        report["wall_s"] = round(prior + time.perf_counter() - start, 1)
        (out_dir / f"ablation_{tag}.json").write_text(json.dumps(report, indent=1) + "\n")
        (out_dir / f"ablation_{tag}.md").write_text(markdown(report, tag) + notes)
        plot(report, out_dir / f"ablation_{tag}.png")

    def record_pending() -> None:
        for item in pending:
            record(*item)
        pending.clear()

    for entry in plan:
        if entry["name"] == "dfdc_first":  # the best row's settings (continual mean AUC) so far
            record_pending()
            done = [k for k in ran if "error" not in report["rows"][k]]
            if done:
                best = max(done, key=lambda k: report["rows"][k]["continual_mean_auc"])
                entry = {**entry, "overrides": report["rows"][best]["overrides"]}
                entry["params"] = load_params(REPO / "params.yaml", entry["overrides"])
        print(f"== {entry['name']}: {entry['change']}", flush=True)
        pending.append((entry, submit_row(entry["name"] + entry["suffix"], entry["params"], Path(data), work_dir,
                                          entry["name"] == "dfdc_first", threads), time.perf_counter()))
    record_pending()
    return report


def plan_rows(names: list[str], base_overrides: list[str], suffix: str) -> list[dict]:
    """Each row's settings: params.yaml, the command's -S, then the rows' overrides (cumulative
    but for ONE_OFF rows; RESTART rows start again)."""
    plan, overrides = [], []
    for name in names:
        change, extra = ROWS[name]
        if name in RESTART:
            overrides = []
        row_overrides = overrides + extra
        if name not in ONE_OFF:
            overrides = row_overrides
        plan.append({"name": name, "suffix": suffix, "change": change, "overrides": base_overrides + row_overrides,
                     "params": load_params(REPO / "params.yaml", base_overrides + row_overrides)})
    return plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help="which rows, in order (default: all)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("-S", "--set", action="append", default=[],
                        help="base overrides for every row (compare.runner=dask: the trainings on Dask workers)")
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--workspace", default=str(REPO / "benchmarks" / ".work" / "ablation"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--append", action="store_true", help="add the rows to the existing results of --tag")
    parser.add_argument("--suffix", default="", help="added to the row names in the table (e.g. seed rows of another row)")
    args = parser.parse_args()
    from dfcl.ops.runners import sweep_task_runner

    checked_rows(parser, args.rows, ROWS)
    work, out = made_folders(args.workspace, args.out)
    base = load_params(REPO / "params.yaml", args.set)
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "strategy": base.strategy.name,
              "base": base.model_dump(include={"data", "model", "train", "strategy", "augment", "sbi"}), "rows": {}}
    earlier, notes = out / f"ablation_{args.tag}.json", ""
    if args.append and earlier.exists():  # more rows for the same table (same data and seeds)
        report = {**json.loads(earlier.read_text()), "machine": report["machine"]}
        notes = hand_written(out / f"ablation_{args.tag}.md")
    report["commands"] = report.get("commands", []) + ["python benchmarks/ablation.py " + " ".join(sys.argv[1:])]
    cp = base.compare
    runner = ablation.with_options(task_runner=sweep_task_runner(cp))
    report = runner(plan_rows(args.rows.split(","), args.set, args.suffix), report, str(Path(args.data).resolve()),
                    str(work), str(out), args.tag, notes, cp.dask_threads_per_worker if cp.runner == "dask" else None)
    print(markdown(report, args.tag))
    if any("error" in r for r in report["rows"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
