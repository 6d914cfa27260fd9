"""`dfcl evaluate`: any model on any labelled folder, with accuracy, AUC, AP, EER and a ROC plot."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from dfcl.evaluate import evaluate, fake_probabilities, load_detector, scores
from dfcl.learner import Learner
from tests.conftest import small_params
from tests.test_learner import specs_for


def test_scores_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1)
    s = scores(y, p)
    assert s["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-4)
    assert s["ap"] == pytest.approx(average_precision_score(y, p), abs=1e-4)
    assert 0 < s["eer"] < 0.5 and s["accuracy"] == pytest.approx(((p >= 0.5) == y).mean())
    assert np.isnan(scores(np.zeros(5, int), np.zeros(5))["auc"]), "AUC of one class is undefined, not 0"


def test_evaluate_a_learner_and_a_torch_file_on_a_folder(workspace, demo_data, tmp_path):
    params = small_params()
    specs = specs_for(demo_data, workspace.root, ["BlendSwap"])
    learner = Learner(workspace.learner, params, workspace.root)
    learner.learn(specs[0])
    learner.save()

    model, size = load_detector(str(workspace.learner), params, workspace.root)
    report = evaluate(model, size, str(demo_data / "BlendSwap"), params, roc_png=tmp_path / "roc.png")
    r = report["methods"]["BlendSwap"]
    assert r["faces"] == 72 and r["real"] == 36 and r["fake"] == 36  # train + test: all of the folder
    x = np.concatenate([np.load(workspace.root / s) for s in (specs[0].train_x, specs[0].test_x)])
    y = np.concatenate([np.load(workspace.root / s) for s in (specs[0].train_y, specs[0].test_y)])
    assert r["auc"] == pytest.approx(roc_auc_score(y, fake_probabilities(model, x)), abs=1e-4)
    assert report["overall"]["faces"] == 72
    assert (tmp_path / "roc.png").stat().st_size > 1000

    torch.save(model, tmp_path / "model.pt")
    again, _ = load_detector(str(tmp_path / "model.pt"), params, workspace.root)
    assert evaluate(again, size, str(demo_data / "BlendSwap"), params)["overall"] == report["overall"]
    with pytest.raises(ValueError, match="not an MLflow URI"):
        load_detector(str(tmp_path / "nothing-here"), params, workspace.root)
