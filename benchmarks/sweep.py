"""Strategy sweep speed: the same compare (strategies x seeds on FF++ crops at a small setting)
one training after the other in this process, then on a LocalCluster of single-threaded Dask
workers (compare.runner=dask), through the same flow (flows/compare.py).

    python benchmarks/sweep.py [--strategies naive,replay,gem,lwf] [--seeds 0,1] [--workers 2] [-S key=value ...]

Reports the wall-clock ratio sequential / Dask, the most it could be on this machine (training
steps of the model, timed with all cores in one process against one-thread processes side by side),
Dask's per-task overhead (a no-op Prefect task on
the same kind of cluster, against the same task run locally), the peak memory of each worker
process, and whether both runs gave the same numbers. Writes benchmarks/results/sweep_<tag>.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # run as a script: the repo and sibling modules
from common import machine, save_results  # noqa: E402

FFPP = ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]
SMALL = ["data.max_per_class=100", "train.epochs=1"]


class PeakMemory(threading.Thread):
    """Peak resident memory of each Dask worker process (children of this one), sampled."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_mb: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self):
        import psutil

        while not self.stop.is_set():
            for child in psutil.Process().children(recursive=True):
                try:
                    if "spawn_main" in " ".join(child.cmdline()) and "resource_tracker" not in " ".join(child.cmdline()):
                        mb = child.memory_info().rss / 2**20
                        self.peak_mb[child.pid] = max(self.peak_mb.get(child.pid, 0.0), mb)
                except psutil.Error:
                    pass
            time.sleep(0.5)


def task_overhead(params: dict, n: int = 16) -> dict:
    """Seconds per no-op Prefect task: on the local runner, and on a fresh Dask LocalCluster
    (cluster start-up reported apart)."""
    from prefect import flow, task

    from dfcl.config import apply_overrides
    from dfcl.ops.runners import sweep_task_runner

    @task
    def noop(i: int) -> int:
        return i

    def timed(runner) -> tuple[float, float]:
        @flow(task_runner=runner)
        def many() -> tuple[float, float]:
            start = time.perf_counter()
            noop.submit(-1).result()  # the first task waits for the workers to be up
            warm = time.perf_counter()
            [f.result() for f in [noop.submit(i) for i in range(n)]]
            return warm - start, (time.perf_counter() - warm) / n
        return many()  # (seconds to the first answer, seconds per task after it)

    _, local = timed(sweep_task_runner(params.compare))
    start = time.perf_counter()
    _, dask = timed(sweep_task_runner(apply_overrides(params, ["compare.runner=dask"]).compare))
    # Start-up: the flow run, the cluster and its workers, up to the first task's answer.
    return {"local_s_per_task": round(local, 4), "dask_s_per_task": round(dask, 4),
            "dask_overhead_s_per_task": round(dask - local, 4),
            "dask_cluster_start_s": round(time.perf_counter() - start - n * dask, 1)}


def step_seconds(params: dict, threads: int, steps: int = 6) -> float:
    """Seconds per training step (forward, backward, optimiser) of the params' model on random
    faces of its size and batch, with `threads` torch threads."""
    import torch

    from dfcl.learning.memory import apply_heap_allocations
    from dfcl.learning.strategies import make_model

    torch.set_num_threads(threads)
    apply_heap_allocations(params.train)  # as the pipeline does (dfcl.learning.strategies.build_strategy)
    model, size, batch = make_model(params.model), params.data.image_size, params.train.batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.rand(batch, 3, size, size), torch.randint(0, 2, (batch,))
    for i in range(steps + 1):
        if i == 1:  # the first step allocates; time the rest
            start = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def compute_ceiling(settings: list[str], workers: int) -> dict:
    """The speed-up the cluster could reach on compute alone: one process with all cores against
    `workers` one-thread processes at the same time (they share the cores and memory bandwidth)."""
    import subprocess

    def timed(threads: int, n: int) -> list[float]:
        command = [sys.executable, __file__, "--step-seconds", str(threads)] + [a for s in settings for a in ("-S", s)]
        procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(n)]
        return [float(p.communicate()[0].split()[-1]) for p in procs]

    [sequential] = timed(os.cpu_count(), 1)
    side_by_side = timed(1, workers)
    return {"step_s_all_cores": round(sequential, 3), "step_s_one_thread_side_by_side": [round(t, 3) for t in side_by_side],
            "ceiling": round(workers * sequential / max(side_by_side), 3)}


def same_numbers(a: dict, b: dict) -> float:
    """Largest difference between the two sweeps' per-training figures."""
    import numpy as np

    def flat(v):
        return [x for item in v for x in flat(item)] if isinstance(v, list) else [v]

    worst = 0.0
    for name, entry in a["strategies"].items():
        for seed, run in entry["runs"].items():
            for key, value in run.items():
                if key in ("train_seconds", "state_mb") or value is None:
                    continue
                x, y = np.array(flat(value), float), np.array(flat(b["strategies"][name]["runs"][seed][key]), float)
                worst = max(worst, float(np.nanmax(np.abs(x - y))) if x.size else 0.0)
    return worst


def markdown(report: dict, command: str, tag: str) -> str:
    r, o, c = report, report["overhead"], report["ceiling"]
    lines = [f"# Strategy sweep: sequential vs Dask LocalCluster ({tag})", "",
             f"Machine: {r['machine']}. Date: {r['date']}.", "", "Command:", "", f"    {command}", "",
             f"Sweep: strategies {', '.join(r['strategies'])} x seeds {r['seeds']} = {r['trainings']} trainings over "
             f"FF++ {' -> '.join(FFPP)}, settings `{' '.join(r['settings'])}` (everything else: params.yaml).", "",
             "| run | wall clock s | trainings' own seconds (sum) |", "| --- | --- | --- |",
             f"| sequential, one process, {r['sequential_threads']} torch threads | {r['sequential_s']:.0f} | {r['sequential_train_s']:.0f} |",
             f"| Dask LocalCluster, {r['workers']} workers x 1 thread | {r['dask_s']:.0f} | {r['dask_train_s']:.0f} |", "",
             f"**Speed-up sequential / Dask: {r['speedup']:.2f}x** (target >= 1.7x).", "",
             f"Ceiling on compute alone: a training step of the model took {c['step_s_all_cores']:.2f} s with all "
             f"{r['machine']['cpu_cores']} cores in one process, and "
             + ", ".join(f"{t:.2f}" for t in c["step_s_one_thread_side_by_side"])
             + f" s in {r['workers']} one-thread processes side by side: at most **{c['ceiling']:.2f}x** from running "
             "trainings side by side, before any Dask or Prefect overhead.", "",
             f"Dask's per-task overhead (a no-op Prefect task): {o['dask_s_per_task'] * 1000:.0f} ms on the cluster against "
             f"{o['local_s_per_task'] * 1000:.0f} ms locally, i.e. {o['dask_overhead_s_per_task'] * 1000:.0f} ms per task; "
             f"starting the cluster took {o['dask_cluster_start_s']:.1f} s.", "",
             "Peak memory per worker process: " + ", ".join(f"{mb:.0f} MB" for mb in r["worker_peak_mb"]) + ".", "",
             f"Same numbers both ways: the largest difference between any figure of the two sweeps is "
             f"{r['max_difference']:.2g}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", default="naive,replay,gem,lwf")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("-S", "--set", action="append", default=[])
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--workspace", default=str(REPO / "benchmarks" / ".work" / "sweep"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--step-seconds", type=int, help=argparse.SUPPRESS)  # compute_ceiling's child processes
    args = parser.parse_args()
    if args.step_seconds:
        from dfcl.config import load_params

        print(step_seconds(load_params(REPO / "params.yaml", SMALL + args.set), args.step_seconds))
        return
    work, out = Path(args.workspace).resolve(), Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    os.environ["DFCL_WORKSPACE"] = str(work)
    from dfcl.config import apply_overrides, load_params
    from dfcl.workspace import Workspace, configure_environment

    configure_environment(Workspace(work))
    import torch

    from flows.compare import compare

    settings = SMALL + args.set
    params = load_params(REPO / "params.yaml", settings + [f"compare.dask_workers={args.workers}",
                                                           f"compare.worker_data={work / 'worker-data'}"])
    strategies, seeds = args.strategies.split(","), [int(s) for s in args.seeds.split(",")]
    data = str(Path(args.data).resolve() / "ffpp-crops")
    compare(data, params, strategies=strategies[:1], seeds=seeds[:1], methods=FFPP[:1])  # ingest once, warm caches

    start = time.perf_counter()
    sequential = compare(data, params, strategies=strategies, seeds=seeds, methods=FFPP)
    sequential_s = time.perf_counter() - start
    memory = PeakMemory()
    memory.start()
    start = time.perf_counter()
    dask = compare(data, apply_overrides(params, ["compare.runner=dask"]), strategies=strategies, seeds=seeds, methods=FFPP)
    dask_s = time.perf_counter() - start
    memory.stop.set()

    def trained(report):
        return sum(run["train_seconds"] for e in report["strategies"].values() for run in e["runs"].values())

    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "strategies": strategies, "seeds": seeds,
              "trainings": len(strategies) * len(seeds), "workers": args.workers, "settings": settings,
              "sequential_threads": torch.get_num_threads(), "sequential_s": round(sequential_s, 1),
              "dask_s": round(dask_s, 1), "speedup": round(sequential_s / dask_s, 3),
              "sequential_train_s": round(trained(sequential), 1), "dask_train_s": round(trained(dask), 1),
              "worker_peak_mb": sorted(round(mb) for mb in memory.peak_mb.values()),
              "max_difference": same_numbers(sequential, dask), "overhead": task_overhead(params),
              "ceiling": compute_ceiling(settings, args.workers)}
    command = "python benchmarks/sweep.py " + " ".join(sys.argv[1:])
    save_results(out, f"sweep_{args.tag}", report, markdown(report, command, args.tag))


if __name__ == "__main__":
    main()
