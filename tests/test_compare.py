import contextlib
import json
import shutil
import threading
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest
import torch

from dfcl.config import apply_overrides
from flows.compare import compare, compare_strategies
from tests.conftest import small_params

THREADS = torch.get_num_threads()


@pytest.fixture
def two_methods(workspace, demo_data):
    """One dataset folder holding two methods, as `dfcl compare --data` receives it."""
    data = workspace.root / "incoming" / "two-methods"
    for method in ("BlendSwap", "MouthWarp"):
        for split in ("train", "test"):
            shutil.copytree(demo_data / method / split / method, data / split / method)
    for split in ("train", "test"):
        shutil.copytree(demo_data / "BlendSwap" / split / "real", data / split / "real")
    return data


def test_compare_trains_each_strategy_on_the_same_sequence(workspace, two_methods):
    out = workspace.root / "report.json"

    report = compare_strategies(str(two_methods), small_params(), ["naive", "replay"], json_out=str(out))

    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["methods"] == ["two-methods/BlendSwap", "two-methods/MouthWarp"] and report["seeds"] == [0]
    for name in ("naive", "replay"):
        r = report["strategies"][name]
        # Row 0 also holds MouthWarp, tested before it was learned (the upper triangle).
        assert [len(row) for row in r["accuracy_matrix"]] == [2, 2]
        assert [len(row) for row in r["auc_matrix"]] == [2, 2]
        assert r["auc_forward_transfer"] == pytest.approx(r["auc_matrix"][0][1])
        assert r["std"]["auc_forward_transfer"] == 0 and -1 <= r["forward_transfer"] <= 1
        assert r["avg_accuracy"] == pytest.approx(sum(r["accuracy_matrix"][-1]) / 2)
        assert r["forgetting"] == pytest.approx(r["accuracy_matrix"][0][0] - r["accuracy_matrix"][1][0], abs=1e-6)
        assert r["bwt"] == pytest.approx(-r["forgetting"], abs=1e-6)
        assert r["train_seconds"] > 0 and r["std"]["avg_auc"] == 0  # one seed: no spread
        assert list(r["runs"]) == ["0"]

    runs = mlflow.search_runs(experiment_names=["deepfake-cl-compare"], output_format="list")
    parent = next(r for r in runs if r.info.run_name == "compare two-methods")
    children = sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
    assert children == ["compare naive seed 0", "compare replay seed 0"]
    # Each training logs every section it reads, and names the sweep's flow run, as the sweep does.
    child = next(r for r in runs if r.info.run_name == "compare replay seed 0")
    assert child.data.params["augment.jpeg_quality_min"] == "60" and child.data.params["strategy.name"] == "replay"
    assert parent.data.params["compare.runner"] == "local" and "compare.seeds" not in parent.data.params
    assert child.data.tags["prefect.flow_run_id"] == parent.data.tags["prefect.flow_run_id"]
    assert parent.data.metrics["replay/avg_auc"] == pytest.approx(report["strategies"]["replay"]["avg_auc"])
    assert parent.data.metrics["replay/auc_forward_transfer"] == pytest.approx(
        report["strategies"]["replay"]["auc_forward_transfer"])


def test_seeds_give_every_figure_a_mean_and_a_spread(workspace, two_methods, tmp_path):
    report = compare_strategies(str(two_methods), small_params(), ["naive"], seeds=[0, 1],
                                artifacts_dir=str(tmp_path / "plots"))

    r = report["strategies"]["naive"]
    seeds = [r["runs"]["0"], r["runs"]["1"]]
    assert seeds[0]["auc_matrix"] != seeds[1]["auc_matrix"], "another seed trains another model"
    for key in ("avg_auc", "forgetting", "avg_accuracy", "auc_forward_transfer"):
        values = [s[key] for s in seeds]
        assert r[key] == pytest.approx(sum(values) / 2)
        assert r["std"][key] == pytest.approx(abs(values[0] - values[1]) / 2)
    assert r["auc_matrix"][1][0] == pytest.approx((seeds[0]["auc_matrix"][1][0] + seeds[1]["auc_matrix"][1][0]) / 2)
    sweep = mlflow.search_runs(experiment_names=["deepfake-cl-compare"], output_format="list",
                               filter_string="attributes.run_name = 'compare two-methods'")[0]
    table = Path(mlflow.artifacts.download_artifacts(run_id=sweep.info.run_id, artifact_path="comparison.txt",
                                                     dst_path=str(tmp_path))).read_text()
    assert f"{r['avg_auc']:.3f} ± {r['std']['avg_auc']:.3f}" in table
    assert "fwd AUC" in table and f"{r['auc_forward_transfer']:.3f} ± {r['std']['auc_forward_transfer']:.3f}" in table
    assert sweep.data.metrics["naive/avg_auc_std"] == pytest.approx(r["std"]["avg_auc"])
    assert (tmp_path / "plots" / "naive_forgetting.png").stat().st_size > 0


def figures(report: dict) -> dict:
    """Every number a compare reports per training, flattened, without what depends on the
    machine or the clock."""
    def flat(value):
        return [x for v in value for x in flat(v)] if isinstance(value, list) else [value]

    return {(name, seed, key): flat(value) for name, entry in report["strategies"].items()
            for seed, r in entry["runs"].items() for key, value in r.items()
            if key not in ("train_seconds", "state_mb") and value is not None}


def kill_a_worker_once_training_started(tracking_uri: str, killed: list, errors: list, stop: threading.Event):
    """SIGKILL the Dask worker process of a training under way (its MLflow child run is RUNNING
    and names its process), as a machine of a cluster would die."""
    client = mlflow.MlflowClient(tracking_uri)
    while not stop.is_set() and not killed:
        # A poll can fail while the workers write to the same SQLite file ("database is locked"),
        # or a process can end between listing and reading it: try again rather than let the
        # thread die and the test wrongly report that no training was ever seen.
        try:
            kill_a_training_worker(client, killed)
        except Exception as error:  # noqa: BLE001 - kept for the assertion's message
            errors.append(repr(error))
        stop.wait(0.1)  # a test's training is RUNNING for ~3 s


def kill_a_training_worker(client: mlflow.MlflowClient, killed: list) -> None:
    experiment = client.get_experiment_by_name("deepfake-cl-compare")
    running = experiment and client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING' "
                                                "and tags.seed = '0' and tags.pid != ''")
    workers = {c.pid for c in psutil.Process().children(recursive=True)}
    for run in running or []:
        pid = int(run.data.tags["pid"])
        if pid in workers:  # a Dask worker, not this process (the sequential run)
            worker = psutil.Process(pid)
            started = worker.children(recursive=True)  # none: it reports to the flow's Prefect API
            # The environment it was spawned with: Dask's MALLOC_TRIM_THRESHOLD_ halves torch's speed.
            trim = worker.environ().get("MALLOC_TRIM_THRESHOLD_")
            commands = [" ".join(p.cmdline()) for p in started]
            for process in [*started, worker]:  # as a whole machine would die
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
            killed.append((pid, commands, trim))
            return


def test_a_dask_cluster_gives_the_sequential_results_even_when_a_worker_dies(workspace, two_methods, monkeypatch):
    # Four epochs: each training is RUNNING ~3 s rather than ~2 s, a wider mark for the watcher.
    params = small_params(f"compare.worker_data={workspace.root / 'worker-data'}", "train.epochs=4")
    torch.set_num_threads(1)  # as each worker trains: float sums, hence weights, depend on the thread count
    try:
        sequential = compare(str(two_methods), params, strategies=["naive", "replay"], seeds=[0])
    finally:
        torch.set_num_threads(THREADS)
    # The dask sweep runs again if no training was caught under way (each is RUNNING ~3 s, the
    # watcher's poll can take longer than that on a busy machine): what is tested is the result
    # of a sweep that lost a worker, so a sweep that lost none does not count.
    killed, errors = [], []
    for _attempt in range(3):
        stop = threading.Event()
        killer = threading.Thread(target=kill_a_worker_once_training_started,
                                  args=(mlflow.get_tracking_uri(), killed, errors, stop), daemon=True)
        killer.start()
        dask = compare(str(two_methods), apply_overrides(params, ["compare.runner=dask", "compare.dask_workers=2"]),
                       strategies=["naive", "replay"], seeds=[0])
        stop.set()
        killer.join()
        if killed:
            break

    assert killed, f"no worker was seen training in three sweeps; the watcher's errors: {errors[-3:]}"
    assert not [cmd for cmd in killed[0][1] if "uvicorn" in cmd], "a worker started a Prefect API of its own"
    assert killed[0][2] is None, "the worker runs with MALLOC_TRIM_THRESHOLD_ set"
    expected, got = figures(sequential), figures(dask)
    assert got.keys() == expected.keys() and len(got) > 10
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], atol=1e-6, err_msg=str(key))
    # The workers trained on the DVC versions they checked out, not on the workspace's files.
    versions = {e["version"].removesuffix(".dir") for e in sequential["experiences"]}
    assert versions and all((workspace.root / "worker-data" / v).is_dir() for v in versions)
    # The killed training's MLflow run is closed as failed, not left running.
    runs = mlflow.search_runs(experiment_names=["deepfake-cl-compare"], output_format="list")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert len([r for r in runs if r.info.status == "FAILED" and r.data.tags.get("seed") == "0"]) >= 1
