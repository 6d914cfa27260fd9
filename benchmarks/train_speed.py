"""Training speed as ratios to a bare PyTorch loop measured in the same run (issue 40).

Absolute images/s move 2-3x between machines of the same kind; a ratio to the bare model, timed
minutes apart on the same machine, says how much the pipeline itself costs.

1. **The step.** images/s of the learner's training (the Avalanche strategy and its plugins) on one
   FF++ method, next to a bare loop on the same model, optimizer, batch, faces and epochs
   (benchmarks/continual.py's `bare_loop`), and the learner with `train.frozen_stages` 1 and 3.
2. **The default retraining.** `dfcl retrain <ffpp-crops> --auto-approve` in a scratch workspace
   (the self-blended experience, then FF++ x4; faces capped by --per-class), its wall clock split
   into training and evaluation per experience (the learner's speed/* metrics in MLflow) and the
   rest (ingest, face extraction, DVC, registration, the gate), against the bare loop's seconds for
   the same images and epochs.

    python benchmarks/train_speed.py [--data ../shared/data] [--per-class 100] [--tag cpu]

Writes benchmarks/results/train_speed_<tag>.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # run as a script: the repo and sibling modules
from common import (  # noqa: E402
    extract_once,
    machine,
    made_folders,
    save_results,
    scratch_workspace,
    spec,
)
from continual import bare_loop, pipeline_loop  # noqa: E402

FROZEN = (1, 3)
# What follows each experience's training (Learner.learn's speed/*): the threshold, the trust fit, the evaluation.
EVAL_PARTS = ("calibrate_seconds", "trust_seconds", "evaluate_seconds")


def step_speed(params, data: Path, work: Path, frozen: tuple[int, ...] = FROZEN) -> dict:
    """images/s of the bare loop, the learner, and the learner with frozen stages, on Deepfakes."""
    import numpy as np

    from dfcl.config import apply_overrides

    # Like for like: the bare loop has no validation, early stopping or schedule, nor does this.
    params = apply_overrides(params, ["train.early_stopping_patience=0", "train.schedule=constant",
                                      "train.warmup_epochs=0", "train.eval_upcoming=false"])
    paths = extract_once(data / "ffpp-crops", work, params)["Deepfakes"]
    deepfakes = spec("ffpp-crops/Deepfakes", paths, "train_speed")
    bare_loop(params, deepfakes, Path("/"))  # warm-up: first-call allocations, kernel selection
    bare = bare_loop(params, deepfakes, Path("/"))
    rows = {"bare loop": bare, "bare loop, faces not augmented": bare_loop(params, deepfakes, Path("/"), augment=False)}
    rows["learner"], _ = pipeline_loop(params, [deepfakes], Path("/"), work / "speed-learner")
    for n in frozen:
        settings = apply_overrides(params, [f"train.frozen_stages={n}"])
        rows[f"learner, frozen_stages={n}"], _ = pipeline_loop(settings, [deepfakes], Path("/"), work / f"speed-frozen{n}")
    return {"images": len(np.load(paths["train_y"])) * params.train.epochs,
            "images_per_s": {k: round(v, 2) for k, v in rows.items()},
            "over_bare": {k: round(v / bare, 3) for k, v in rows.items()}}


def retraining(data: Path, overrides: list[str], bare_images_per_s: float, keep: Path | None = None) -> dict:
    """The default retraining's wall clock, its parts, and the bare loop's seconds for its images.
    `keep`: a new folder for the workspace, kept (its champion can then be scored)."""
    import mlflow

    with scratch_workspace("dfcl-train-speed-", overrides, keep) as (ws, params):
        command = [str(Path(sys.executable).parent / "dfcl"), "retrain", str(data / "ffpp-crops"), "--auto-approve"]
        command += [a for o in overrides for a in ("-S", o)]
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=ws, env=os.environ | {"PYTHONUNBUFFERED": "1"})
        wall = time.perf_counter() - start
        client = mlflow.MlflowClient()
        experiment = client.get_experiment_by_name(params.mlflow.experiment)
        run, = client.search_runs([experiment.experiment_id], "metrics.`speed/train_seconds` >= 0", max_results=1)
        parts = {k: [m.value for m in sorted(client.get_metric_history(run.info.run_id, f"speed/{k}"),
                                              key=lambda m: m.step)]
                 for k in ("train_seconds", "train_images", "new_images", "eval_seconds", *EVAL_PARTS)}
    train, evaluation, images = (sum(parts[k]) for k in ("train_seconds", "eval_seconds", "train_images"))
    # Every image a step trained on, Replay's memory samples included: the bare loop's time for them.
    bare = images / bare_images_per_s
    return {"wall_seconds": round(wall, 1), "train_seconds": round(train, 1), "eval_seconds": round(evaluation, 1),
            "rest_seconds": round(wall - train - evaluation, 1), "train_images": int(images),
            "new_images": int(sum(parts["new_images"])),
            "eval_parts_seconds": {k: round(sum(parts[k]), 1) for k in EVAL_PARTS},
            "bare_seconds": round(bare, 1), "wall_over_bare": round(wall / bare, 2),
            "train_over_bare": round(train / bare, 2), "train_and_eval_over_bare": round((train + evaluation) / bare, 2),
            "per_experience": {k: [round(v, 1) for v in vs] for k, vs in parts.items()}}


def report_text(report: dict) -> str:
    step, retrain = report["step"], report["retraining"]
    lines = [f"# Training speed as ratios to a bare loop ({report['tag']})", "",
             f"Measured {', '.join(report['dates'])} with `{report['commands'][-1]}` on {report['machine']['platform']}, "
             f"{report['machine']['cpu_cores']} cores, torch {report['machine']['torch']} "
             f"({report['machine']['torch_threads']} threads); settings: {', '.join(report['overrides'])}.", "",
             "## The step: one FF++ method (Deepfakes), same model, optimizer, batch, faces and epochs",
             f"{step['images']} images per run.", "",
             "| loop | images/s | over the bare loop |", "|---|---:|---:|"]
    lines += [f"| {k} | {v} | {step['over_bare'][k]} |" for k, v in step["images_per_s"].items()]
    lines += ["", "## The default retraining (`dfcl retrain ffpp-crops --auto-approve`: self-blended + FF++ x4)", "",
              "| | seconds | over the bare loop's seconds for the same images and epochs |", "|---|---:|---:|",
              f"| bare loop, {retrain['train_images']} images ({retrain['new_images']} of the new experiences, the rest "
              f"Replay's memory) at the step's bare images/s | {retrain['bare_seconds']} | 1 |",
              f"| the learner's training (5 experiences) | {retrain['train_seconds']} | {retrain['train_over_bare']} |",
              f"| evaluation and calibration after each experience, trust after the last | {retrain['eval_seconds']} | |",
              *[f"| - {k.removesuffix('_seconds')} | {v} | |" for k, v in retrain.get("eval_parts_seconds", {}).items() if v],
              f"| training + evaluation | {retrain['train_seconds'] + retrain['eval_seconds']:.1f} | "
              f"{retrain['train_and_eval_over_bare']} |",
              f"| the rest: ingest, face extraction, DVC, registration, gate | {retrain['rest_seconds']} | |",
              f"| the whole command | {retrain['wall_seconds']} | {retrain['wall_over_bare']} |", "",
              "Per experience (train seconds, images trained on, of which new, eval seconds): "
              + "; ".join(f"{s} s / {int(i)} / {int(n)} / {e} s" for s, i, n, e in zip(
                  *(retrain["per_experience"][k] for k in ("train_seconds", "train_images", "new_images", "eval_seconds")))),
              ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--per-class", type=int, default=100, help="data.max_per_class of both parts")
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--frozen", default=",".join(map(str, FROZEN)),
                        help="train.frozen_stages values timed beside the learner ('' for none)")
    parser.add_argument("--work", default=str(REPO / "benchmarks" / ".work" / "train_speed"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--keep", type=Path, help="a new folder for the retraining's workspace, kept afterwards")
    args = parser.parse_args()
    data = Path(args.data).resolve()
    work, out = made_folders(args.work, args.out)
    overrides = [f"data.max_per_class={args.per_class}"]

    from dfcl.config import load_params

    report = {"tag": args.tag, "machine": machine(), "overrides": overrides, "dates": [time.strftime("%Y-%m-%d")],
              "commands": [f"python benchmarks/train_speed.py {' '.join(sys.argv[1:])}"]}
    frozen = tuple(int(n) for n in args.frozen.split(",") if n)
    report["step"] = step_speed(load_params(REPO / "params.yaml", overrides), data, work, frozen)
    report["retraining"] = retraining(data, overrides, report["step"]["images_per_s"]["bare loop"],
                                      args.keep.resolve() if args.keep else None)
    save_results(out, f"train_speed_{args.tag}", report, report_text(report))


if __name__ == "__main__":
    main()
