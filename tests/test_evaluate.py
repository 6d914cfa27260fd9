"""`dfcl evaluate`: any model on any labelled folder, with accuracy, AUC, AP, EER and a ROC plot."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score

from dfcl.evaluate import Detector, evaluate, load_detector, scores
from dfcl.learner import Learner
from dfcl.metrics import balanced_accuracy, calibrate_threshold, fake_probabilities
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
    assert s["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p >= 0.5))
    assert scores(y, p, 0.7)["accuracy"] == pytest.approx(((p >= 0.7) == y).mean())


def test_threshold_calibration_maximises_balanced_accuracy():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(300, int), np.ones(100, int)]
    p = np.clip(0.6 + 0.25 * y + rng.normal(0, 0.1, 400), 0, 1)  # every face scores above 0.5: 0.5 is a bad cut
    t = calibrate_threshold(torch.from_numpy(y), torch.from_numpy(p))
    best = max(balanced_accuracy_score(y, p >= c) for c in np.unique(p))
    assert balanced_accuracy(torch.from_numpy(y), torch.from_numpy(p), t) == pytest.approx(best, abs=1e-6)
    assert balanced_accuracy_score(y, p >= t) > balanced_accuracy_score(y, p >= 0.5) + 0.3
    assert calibrate_threshold(torch.zeros(4), torch.rand(4)) == 0.5, "one class: no basis to move the cut"


def test_evaluate_a_learner_and_a_torch_file_on_a_folder(workspace, demo_data, tmp_path):
    params = small_params()
    specs = specs_for(demo_data, workspace.root, ["BlendSwap"])
    learner = Learner(workspace.learner, params, workspace.root)
    learner.learn(specs[0])
    learner.save()

    detector = load_detector(str(workspace.learner), params, workspace.root)
    assert detector.threshold == learner.history.threshold, "the learner's calibrated threshold travels"
    report = evaluate(detector, str(demo_data / "BlendSwap"), params, roc_png=tmp_path / "roc.png")
    r = report["methods"]["BlendSwap"]
    assert r["faces"] == 72 and r["real"] == 36 and r["fake"] == 36  # train + val + test: all of the folder
    spec = specs[0]
    x = np.concatenate([np.load(workspace.root / s) for s in (spec.train_x, spec.val_x, spec.test_x)])
    y = np.concatenate([np.load(workspace.root / s) for s in (spec.train_y, spec.val_y, spec.test_y)])
    p = fake_probabilities(detector.model, x).numpy()
    assert r["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-4)
    assert r["accuracy"] == pytest.approx(((p >= detector.threshold) == y).mean(), abs=1e-6)
    assert report["overall"]["faces"] == 72
    assert (tmp_path / "roc.png").stat().st_size > 1000

    torch.save(detector.model, tmp_path / "model.pt")
    again = load_detector(str(tmp_path / "model.pt"), params, workspace.root)
    assert again.threshold == 0.5, "a bare torch file carries no threshold"
    again = Detector(again.model, again.image_size, detector.threshold)
    assert evaluate(again, str(demo_data / "BlendSwap"), params)["overall"] == report["overall"]
    with pytest.raises(ValueError, match="not an MLflow URI"):
        load_detector(str(tmp_path / "nothing-here"), params, workspace.root)
