"""Strategy benchmark on real forgeries.

The FF++ sequence Deepfakes -> Face2Face -> FaceSwap -> NeuralTextures (../shared/data/ffpp-crops),
then stylegan-faces and dfdc-crops as the fifth and sixth methods; every strategy from scratch
with fixed seeds, through the same flow as `dfcl compare` (so MLflow gets one run per strategy
in experiment deepfake-cl-compare). Then the speed of the training loop: images/s of the
pipeline (Avalanche strategy + plugins) next to a bare PyTorch loop on the same model, batch
and data, and GEM's extra time per step.

    python benchmarks/continual.py [--strategies naive,...] [-S key=value ...] [--tag cpu] [--direct]
    python benchmarks/continual.py --log-mlflow benchmarks/results/continual_<tag>.json

--direct runs without Prefect, DVC or MLflow (faces extracted straight from the folders, each
strategy driven by the learner): for a bare GPU machine that has only torch, timm and Avalanche.
Its results are logged to MLflow afterwards, where MLflow is, with --log-mlflow.

Writes benchmarks/results/continual_<tag>.{json,md} and continual_<tag>/ (accuracy and AUC
heatmaps and forgetting curves per strategy, all strategies' forgetting curves side by side).
The workspace (ingested data, MLflow db) is benchmarks/.work/ unless --workspace says otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from avalanche.core import SupervisedPlugin

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # run as a script: the repo and sibling modules
from common import extract_once, machine, save_results  # noqa: E402

DATA = REPO.parent / "shared" / "data"
FFPP = ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]


class StepTimer(SupervisedPlugin):
    """Seconds spent per training iteration (forward, backward, step and the other plugins'
    hooks, so GEM's memory gradients and projection are inside), as an Avalanche plugin. It must
    be the strategy's first plugin: hooks run in list order, and GEM computes its memory's
    gradients in its own before_training_iteration."""

    def __init__(self):
        super().__init__()
        self.seconds, self.steps, self._t = 0.0, 0, 0.0

    def before_training_iteration(self, strategy, **kw):
        self._t = time.perf_counter()

    def after_training_iteration(self, strategy, **kw):
        if strategy.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - self._t
        self.steps += 1


def bare_loop(params: dict, spec, root: Path, augment: bool = True) -> float:
    """images/s of a plain PyTorch training loop: same model, optimizer, batch, data, epochs
    (without `augment`: the faces as stored, what the data path costs)."""
    from torch.utils.data import DataLoader

    from dfcl.data.datasets import FaceArrayDataset
    from dfcl.learning.memory import apply_heap_allocations
    from dfcl.learning.strategies import make_model, make_optimizer, pick_device

    tp = params.train
    torch.manual_seed(tp.seed)
    apply_heap_allocations(tp)  # as the pipeline does (dfcl.learning.strategies.build_strategy)
    device = pick_device(tp.device)
    model = make_model(params.model).to(device, memory_format=torch.channels_last)
    cuda = device.type == "cuda"
    opt = make_optimizer(model, tp)
    data = FaceArrayDataset(root / spec.train_x, root / spec.train_y, augment=params.augment if augment else None)
    workers = tp.num_workers
    loader = DataLoader(data, batch_size=tp.batch_size, shuffle=True, num_workers=workers,
                        pin_memory=cuda, persistent_workers=workers > 0)
    loss_fn, seen = torch.nn.CrossEntropyLoss(), 0
    model.train()
    start = time.perf_counter()
    for _ in range(tp.epochs):
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = loss_fn(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
    if cuda:
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def pipeline_loop(params: dict, specs: list, root: Path, tmp: Path) -> tuple[float, float]:
    """images/s of the strategy's training on the last of `specs` (after learning the others),
    and its seconds per training step."""
    from dfcl.learning.learner import Learner

    learner = Learner(tmp, params, root)
    bench = learner.benchmark(specs)
    workers = params.train.num_workers
    loader_args = dict(num_workers=workers, persistent_workers=workers > 0)
    for i in range(len(specs) - 1):
        learner.strategy.train(bench.train_stream[i], **loader_args)
    timer = StepTimer()
    learner.strategy.plugins.insert(0, timer)
    start = time.perf_counter()
    learner.strategy.train(bench.train_stream[len(specs) - 1], **loader_args)
    seconds = time.perf_counter() - start
    images = len(bench.train_stream[len(specs) - 1].dataset) * params.train.epochs
    return images / seconds, timer.seconds / max(timer.steps, 1)


def speed(params: dict, specs: list, root: Path, work: Path) -> dict:
    from dfcl.config import apply_overrides

    # Like for like: the bare loop has no validation, early stopping or schedule, nor does this.
    params = apply_overrides(params, ["train.early_stopping_patience=0", "train.schedule=constant"])

    bare_loop(params, specs[0], root)  # warm-up: first-call allocations, kernel selection
    bare = bare_loop(params, specs[0], root)
    naive_params, gem_params = (apply_overrides(params, [f"strategy.name={n}"]) for n in ("naive", "gem"))
    naive, _ = pipeline_loop(naive_params, specs[:1], root, work / "speed-naive")
    _, naive_step = pipeline_loop(naive_params, specs[:2], root, work / "speed-naive2")
    _, gem_step = pipeline_loop(gem_params, specs[:2], root, work / "speed-gem")
    return {"bare_images_per_s": round(bare, 1), "pipeline_images_per_s": round(naive, 1),
            "pipeline_over_bare": round(naive / bare, 3), "naive_ms_per_step": round(1000 * naive_step, 2),
            "gem_ms_per_step": round(1000 * gem_step, 2), "gem_overhead_ms_per_step": round(1000 * (gem_step - naive_step), 2),
            "measured_on": specs[0].key, "gem_measured_on": specs[1].key}


def variant_params(params: dict, name: str, seed: int) -> dict:
    """A strategy's params; `name` may be a variant, strategy+key=value+... (the ablation's rows)."""
    from dfcl.config import apply_overrides

    strategy, *settings = name.split("+")
    return apply_overrides(params, [f"strategy.name={strategy}", f"train.seed={seed}"]
                           + [f"strategy.{strategy}.{s}" for s in settings])


def step_times(params: dict, names: list[str], specs: list, root: Path, work: Path) -> dict[str, float]:
    """ms per training step of each strategy on the second method after learning the first, one
    after the other on an otherwise idle machine (the sweep's own timings share the CPU)."""
    from dfcl.config import apply_overrides

    params = apply_overrides(params, ["train.epochs=1"])  # a step costs the same in any epoch
    return {name: round(1000 * pipeline_loop(variant_params(params, name, 0), specs[:2], root,
                                             work / f"step-{name}")[1], 1) for name in names}


def run_direct(folders: list[Path], params: dict, strategies: list[str], seeds: list[int], work: Path,
               plots: Path, finished_only: bool = False) -> dict:
    """What flows.compare does, without Prefect, DVC or MLflow: the same trainings
    (dfcl.learning.learner.train_sequence) and the same report (mean and spread over seeds). With
    `finished_only`, nothing is trained: the report holds the (strategy, seed) runs already done."""
    from dataclasses import asdict

    from dfcl.data.arrays import ExperienceSpec
    from dfcl.data.layouts import dataset_name
    from dfcl.learning.learner import train_sequence
    from dfcl.measure.plots import strategy_plots
    from dfcl.measure.tables import over_seeds

    specs = []
    for i, folder in enumerate(folders):
        methods = extract_once(folder, work, params)
        name = dataset_name(folder)
        for m in (FFPP if i == 0 else methods):
            key = name if m == name else f"{name}/{m}"
            specs.append(ExperienceSpec(key=key, dataset=name, method=m, version="direct", **methods[m]))
    keys = [s.key for s in specs]
    report = {"methods": keys, "experiences": [asdict(s) for s in specs], "seeds": seeds, "strategies": {}}
    for name in strategies:
        runs = {}
        for seed in seeds:
            def progress(step, results, learner):
                print(f"{name} seed {seed}: after {keys[step]}: avg acc {results['avg_accuracy']:.3f}, "
                      f"avg AUC {results['avg_auc']:.3f}", flush=True)

            run_params = variant_params(params, name, seed)
            # Resumable: a finished (strategy, seed) with the same params and sequence is not trained again.
            done = work / "direct" / f"{name}-seed{seed}.json"
            key = json.dumps([run_params, keys], sort_keys=True, default=str)
            if done.is_file() and json.loads(done.read_text())["key"] == key:
                runs[seed] = json.loads(done.read_text())["report"]
                continue
            if finished_only:
                continue
            timer = StepTimer()
            _, runs[seed] = train_sequence(specs, run_params, work / "direct" / f"{name}-seed{seed}", Path("/"),
                                           on_experience=progress, plugins=[timer])
            runs[seed]["ms_per_step"] = 1000 * timer.seconds / max(timer.steps, 1)
            done.write_text(json.dumps({"key": key, "report": runs[seed]}, default=float))
        if not runs:
            continue
        report["strategies"][name] = over_seeds(runs)
        report["strategies"][name]["ms_per_step"] = float(np.mean([r["ms_per_step"] for r in runs.values()]))
        strategy_plots(report["strategies"][name], keys, plots, name)
    return report


def log_to_mlflow(path: Path, experiment: str) -> None:
    """One MLflow run per strategy of a --direct run, as `dfcl compare` would have logged it."""
    import mlflow
    import pandas as pd

    from dfcl.config import flatten
    from dfcl.measure.plots import matrix_frame

    report = json.loads(path.read_text())
    mlflow.set_experiment(experiment)
    tag = path.stem.removeprefix("continual_")
    for name, r in report["strategies"].items():
        with mlflow.start_run(run_name=f"benchmark {name} ({tag})"):
            mlflow.set_tags({"benchmark": tag, "machine": json.dumps(report["machine"])})
            mlflow.log_params(flatten({**report["params"], "strategy": {**report["params"]["strategy"], "name": name}}))
            for step, (acc, auc) in enumerate(zip(r["accuracy_matrix"], r["auc_matrix"])):
                acc, auc = acc[:step + 1], auc[:step + 1]  # the learned methods (later cells: not learned yet)
                mlflow.log_metrics({"avg_accuracy": sum(acc) / len(acc), "avg_auc": sum(auc) / len(auc)}, step=step)
            mlflow.log_metrics({k: r[k] for k in ("forgetting", "auc_forgetting", "bwt", "auc_forward_transfer", "forward_transfer",
                                                  "train_seconds", "avg_balanced_accuracy")
                                if r.get(k) is not None and not math.isnan(r[k])})
            for kind in ("accuracy", "auc"):
                frame: pd.DataFrame = matrix_frame(r[f"{kind}_matrix"], report["methods"])
                mlflow.log_text(frame.to_csv(), f"evaluation/{kind}_matrix.csv")
    with mlflow.start_run(run_name=f"benchmark speed ({tag})"):
        mlflow.log_metrics({k: v for k, v in report["speed"].items() if isinstance(v, (int, float))})
    print(f"logged {len(report['strategies'])} strategies of {path} to MLflow experiment {experiment!r}")


def markdown(report: dict, command: str, tag: str) -> str:
    methods = report["methods"]
    ffpp = [i for i, m in enumerate(methods) if m.split("/")[-1] in FFPP]
    lines = [f"# Continual strategies on real forgeries ({tag})", "",
             f"Machine: {report['machine']}. Date: {report['date']}. Wall clock: {report['wall_s'] / 60:.1f} min.", "",
             "Command:", "", f"    {command}", "",
             f"Sequence: {' -> '.join(methods)}. Parameters: `{json.dumps(report['params'])}`.", "",
             f"Seeds: {report.get('seeds', [0])}" + (" (each figure: mean ± standard deviation over them)." if len(report.get('seeds', [0])) > 1 else "."), "",
             "*Forward transfer (AUC)*: each method's AUC just before it was learned (the AUC matrix's upper "
             "triangle), averaged over the methods after the first; *(acc.)*: Avalanche's, accuracy then "
             "minus the untrained model's.", "",
             "| strategy | seeds | final avg acc | final avg balanced acc | final mean AUC (FF++ 4) | final mean AUC (all) | forgetting | AUC forgetting | BWT "
             "| forward transfer (AUC) | forward transfer (acc.) | train s | state MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def pm(values: list[float], digits: int = 3) -> str:  # mean ± std over the seeds' runs
        values = [v for v in values if v is not None and not math.isnan(v)]
        if not values:
            return "n/a"
        text = f"{np.mean(values):.{digits}f}"
        return text + (f" ± {np.std(values):.{digits}f}" if len(values) > 1 else "")

    for name, entry in report["strategies"].items():
        runs = list(entry.get("runs", {"0": entry}).values())
        last = [r["auc_matrix"][-1] for r in runs]
        ff = [float(np.nanmean([a[i] for i in ffpp])) for a in last]
        allauc = [float(np.nanmean(a)) for a in last]
        lines.append(f"| {name} | {len(runs)} | {pm([r['avg_accuracy'] for r in runs])} | {pm([r.get('avg_balanced_accuracy') for r in runs])} "
                     f"| {pm(ff)} | {pm(allauc)} | {pm([r['forgetting'] for r in runs])} "
                     f"| {pm([r['auc_forgetting'] for r in runs])} | {pm([r['bwt'] for r in runs])} "
                     f"| {pm([r.get('auc_forward_transfer') for r in runs])} | {pm([r.get('forward_transfer') for r in runs])} "
                     f"| {pm([r['train_seconds'] for r in runs], 0)} | {pm([r.get('state_mb') for r in runs], 1)} |")
    s = report["speed"]
    quiet = report.get("step_ms")
    steps = quiet or {n: e["ms_per_step"] for n, e in report["strategies"].items() if e.get("ms_per_step")}
    if steps:
        base = steps.get("replay")
        where = (f"measured apart on {report['methods'][1]} after learning {report['methods'][0]}, one strategy "
                 "at a time" if quiet else "averaged over the sweep's trainings, which shared the CPU")
        lines += ["", f"Time per training step (forward, backward, update and every plugin's hooks; a replay "
                      f"step carries a memory batch beside the new one; {where}):", "",
                  "| strategy | ms/step | x Replay |", "| --- | --- | --- |"]
        lines += [f"| {n} | {v:.0f} | {v / base:.2f} |" if base else f"| {n} | {v:.0f} | n/a |" for n, v in steps.items()]
    if not s:
        return "\n".join(lines + _per_method(report, methods, tag)) + "\n"
    lines += ["", "Training speed (first experience, same model, batch, data and epochs):", "",
              "| loop | images/s |", "| --- | --- |",
              f"| bare PyTorch | {s['bare_images_per_s']} |", f"| pipeline (Avalanche Naive + plugins) | {s['pipeline_images_per_s']} |",
              "", f"Ratio pipeline / bare: **{s['pipeline_over_bare']}**. GEM: {s['gem_ms_per_step']} ms per step against "
                  f"Naive's {s['naive_ms_per_step']} ms on {s['gem_measured_on']} (overhead {s['gem_overhead_ms_per_step']} ms/step).",
              ]
    return "\n".join(lines + _per_method(report, methods, tag)) + "\n"


def _per_method(report: dict, methods: list[str], tag: str) -> list[str]:
    lines = ["", "Final accuracy / AUC per method (row = strategy):", "",
             "| strategy | " + " | ".join(methods) + " |", "| --- |" + " --- |" * len(methods)]
    for name, r in report["strategies"].items():
        cells = [f"{a:.2f} / {u:.2f}" for a, u in zip(r["accuracy_matrix"][-1], r["auc_matrix"][-1])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + ["", f"Plots: `continual_{tag}/` (per strategy: accuracy and AUC heatmaps, the upper triangle hatched: "
                        "methods not learned yet; forgetting curves, dotted before the method was learned; "
                        "`forgetting_all.png` side by side)."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", help="comma-separated (default: every strategy)")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds; figures are mean ± std over them")
    parser.add_argument("-S", "--set", action="append", default=[])
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--workspace", default=str(REPO / "benchmarks" / ".work"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--data", default=str(DATA), help="the folder holding ffpp-crops, stylegan-faces, dfdc-crops")
    parser.add_argument("--direct", action="store_true", help="no Prefect, DVC or MLflow (see above)")
    parser.add_argument("--skip-speed", action="store_true", help="no bare-loop / GEM speed section")
    parser.add_argument("--step-times", metavar="STRATEGIES",
                        help="comma-separated: time each one's training step apart (pipeline_loop), for the report")
    parser.add_argument("--finished-only", action="store_true",
                        help="with --direct: train nothing, report the (strategy, seed) runs already finished")
    parser.add_argument("--log-mlflow", metavar="JSON", help="log a --direct run's results to MLflow, then exit")
    args = parser.parse_args()
    if args.log_mlflow:
        from dfcl.config import load_params
        from dfcl.workspace import Workspace, configure_environment

        configure_environment(Workspace(REPO))
        log_to_mlflow(Path(args.log_mlflow).resolve(), load_params(REPO / "params.yaml").mlflow.compare_experiment)
        return

    work, out = Path(args.workspace).resolve(), Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    os.environ["DFCL_WORKSPACE"] = str(work)
    from dfcl.config import load_params
    from dfcl.learning.strategies import STRATEGIES
    from dfcl.measure.plots import forgetting_curves, matrix_frame

    params = load_params(REPO / "params.yaml", args.set)
    strategies = args.strategies.split(",") if args.strategies else list(STRATEGIES)
    seeds = [int(s) for s in args.seeds.split(",")]
    data = Path(args.data).resolve()
    folders = [data / "ffpp-crops", data / "stylegan-faces" / "images", data / "dfdc-crops", data / "flux-faces"]
    plots = out / f"continual_{args.tag}"
    start = time.perf_counter()
    if args.direct:
        report = run_direct(folders, params, strategies, seeds, work, plots, args.finished_only)
    else:
        from dfcl.workspace import Workspace, configure_environment

        configure_environment(Workspace(work))
        from flows.compare import compare

        report = compare([str(f) for f in folders], params, strategies=strategies, seeds=seeds, methods=FFPP,
                         artifacts_dir=str(plots))
    wall = time.perf_counter() - start
    frames = {n: matrix_frame(r["accuracy_matrix"], report["methods"]) for n, r in report["strategies"].items()}
    spread = {n: matrix_frame(r["std"]["accuracy_matrix"], report["methods"]) for n, r in report["strategies"].items()}
    forgetting_curves(frames, plots / "forgetting_all.png", spread if len(seeds) > 1 else None)

    from dfcl.data.arrays import ExperienceSpec

    specs = [ExperienceSpec(**e) for e in report["experiences"]]
    if args.step_times:
        report["step_ms"] = step_times(params, args.step_times.split(","), specs, Path("/") if args.direct else work,
                                       work / "data" / "speed")
    report["speed"] = {} if args.skip_speed else speed(params, specs, Path("/") if args.direct else work,
                                                       work / "data" / "speed")
    report.update(machine=machine(), date=time.strftime("%Y-%m-%d"), wall_s=round(wall, 1),
                  params=params.model_dump(include={"data", "model", "train", "strategy", "augment", "sbi"}))
    if not args.direct:
        import mlflow

        with mlflow.start_run(run_name=f"benchmark speed ({args.tag})"):
            mlflow.log_metrics({k: v for k, v in report["speed"].items() if isinstance(v, (int, float))})
    command = "python benchmarks/continual.py " + " ".join(sys.argv[1:])
    save_results(out, f"continual_{args.tag}", report, markdown(report, command, args.tag))


if __name__ == "__main__":
    main()
