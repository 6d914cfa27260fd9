import json

import pytest

from flows.compare import compare_strategies
from tests.conftest import small_params


def test_compare_trains_each_strategy_on_the_same_sequence(workspace, demo_data):
    # one dataset folder holding two methods, as `dfcl compare --data` receives it
    import shutil

    data = workspace.root / "incoming" / "two-methods"
    for method in ("BlendSwap", "MouthWarp"):
        for split in ("train", "test"):
            shutil.copytree(demo_data / method / split / method, data / split / method)
    shutil.copytree(demo_data / "BlendSwap" / "train" / "real", data / "train" / "real")
    shutil.copytree(demo_data / "BlendSwap" / "test" / "real", data / "test" / "real")
    out = workspace.root / "report.json"

    report = compare_strategies(str(data), small_params(), ["naive", "replay"], json_out=str(out))

    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["methods"] == ["two-methods/BlendSwap", "two-methods/MouthWarp"]
    for name in ("naive", "replay"):
        r = report["strategies"][name]
        assert [len(row) for row in r["accuracy_matrix"]] == [1, 2]
        assert [len(row) for row in r["auc_matrix"]] == [1, 2]
        assert r["avg_accuracy"] == pytest.approx(sum(r["accuracy_matrix"][-1]) / 2)
        assert r["forgetting"] == pytest.approx(r["accuracy_matrix"][0][0] - r["accuracy_matrix"][1][0], abs=1e-6)
        assert r["bwt"] == pytest.approx(-r["forgetting"], abs=1e-6)
        assert r["train_seconds"] > 0

    import mlflow

    runs = mlflow.search_runs(experiment_names=["deepfake-cl-compare"], output_format="list")
    names = sorted(r.info.run_name for r in runs)
    assert names == ["compare naive", "compare replay", "ingest two-methods"]
