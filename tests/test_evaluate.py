"""`dfcl evaluate`: any model on any labelled folder, with accuracy, AUC, AP, EER and a ROC plot."""
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    roc_auc_score,
)

from dfcl.learning.learner import Learner
from dfcl.measure.scoring import (
    balanced_accuracy,
    calibrate_threshold,
    fake_probabilities,
)
from dfcl.serving.detector import (
    Detector,
    UntrustedModel,
    load_detector,
    load_mlflow_detector,
)
from dfcl.serving.evaluate import evaluate, scores
from models.pyfunc import WEIGHTS_FORMAT, save_weights
from models.registry import _MODELS, register_model
from tests.conftest import REPO, small_params
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

    torch.save(detector.model, tmp_path / "model.pt")  # a pickled module: code, not just weights
    with pytest.raises(UntrustedModel, match="pickled torch object.*--trust-pickle"):
        load_detector(str(tmp_path / "model.pt"), params, workspace.root)
    again = load_detector(str(tmp_path / "model.pt"), params, workspace.root, trust_pickle=True)
    assert again.threshold == 0.5, "a bare torch file carries no threshold"
    torch.save(detector.model.state_dict(), tmp_path / "state.pt")  # tensors only: the configured model's
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(load_detector(str(tmp_path / "state.pt"), params, workspace.root).model(x), again.model(x), atol=1e-6)
    save_weights(detector.model, tmp_path / "model.safetensors", detector.model.created_as)
    assert torch.allclose(load_detector(str(tmp_path / "model.safetensors"), params, workspace.root).model(x), again.model(x), atol=1e-6)
    assert detector.trust is not None and report["calibrated"], "the learner's calibration travels"
    assert {"ece", "ece_raw", "coverage", "answered_accuracy"} <= set(r)
    assert (tmp_path / "roc.reliability.png").stat().st_size > 1000
    same = Detector(again.model, again.image_size, detector.threshold, trust=detector.trust)
    assert evaluate(same, str(demo_data / "BlendSwap"), params)["overall"] == report["overall"]
    raw = evaluate(Detector(again.model, again.image_size, detector.threshold), str(demo_data / "BlendSwap"), params)
    assert not raw["calibrated"] and "ece" not in raw["overall"]
    # calibration is monotone: the ranking, so the AUC, and every answer at the threshold are kept
    assert raw["overall"]["auc"] == pytest.approx(report["overall"]["auc"], abs=1e-4)
    assert raw["overall"]["accuracy"] == pytest.approx(report["overall"]["accuracy"], abs=1e-6)
    with pytest.raises(ValueError, match="not an MLflow URI"):
        load_detector(str(tmp_path / "nothing-here"), params, workspace.root)


@pytest.fixture
def masked_model():
    """A registered architecture with an extra head and an extra constructor argument, as a
    model with a mask head is: registered for this test only."""
    class Masked(torch.nn.Module):
        def __init__(self, width, mask_head):
            super().__init__()
            self.features = torch.nn.Conv2d(3, width, 3, padding=1)
            self.head = torch.nn.Linear(width, 2)
            self.mask = torch.nn.Conv2d(width, 1, 1) if mask_head else None

        def forward(self, x):
            return self.head(self.features(x).mean((2, 3)))

    @register_model
    def test_masked(num_classes=2, width=4, mask_head=False, weights=None):
        return Masked(width, mask_head)

    yield "test_masked"
    _MODELS.pop("test_masked")


def test_a_registered_detector_is_weights_only_and_rebuilt_from_the_registry(workspace, masked_model, tmp_path):
    import mlflow

    from dfcl.ops.tracking import log_detector
    from models import create_model

    model = create_model(masked_model, width=6, mask_head=True).eval()
    with mlflow.start_run():
        log_detector(model, 16, 0.3, {"methods": ["a/b"], "margin": 1.3}, "deepfake-detector")
    folder = Path(mlflow.artifacts.download_artifacts("models:/deepfake-detector/1"))
    assert not list(folder.rglob("*.pkl")) and not list(folder.rglob("*.pt")), "nothing in the registry is a pickle"
    meta = mlflow.models.get_model_info("models:/deepfake-detector/1").metadata
    assert meta["weights_format"] == WEIGHTS_FORMAT and meta["margin"] == 1.3, "callers' metadata keys travel"
    assert meta["model_arguments"] == {"num_classes": 2, "width": 6, "mask_head": True}
    detector = load_mlflow_detector("models:/deepfake-detector/1")
    x = torch.rand(2, 3, 16, 16)
    assert detector.model.mask is not None, "the extra head is built and loaded (strictly)"
    # The same tensors, exactly; the outputs to rounding (the Detector runs channels_last, as the model trained)
    assert all(torch.equal(a, b) for a, b in zip(detector.model.state_dict().values(), model.state_dict().values()))
    assert torch.allclose(detector.model(x), model(x), atol=1e-6) and detector.threshold == 0.3 and detector.image_size == 16


@pytest.mark.parametrize("calibrated", [False, True])
def test_the_pyfunc_serves_without_deepfake_cl_on_the_path(workspace, tmp_path, calibrated):
    """What `mlflow models serve` loads: the models/ folder shipped inside the logged model; with
    a trust artifact it answers calibrated P(fake)."""
    import json
    import subprocess
    import sys

    import mlflow

    from dfcl.measure.trust import Calibration, Trust
    from dfcl.ops.tracking import log_detector
    from models import create_model

    model = create_model("small_cnn", width=4).eval()
    trust = Trust(Calibration(0.5, 0.2)) if calibrated else None
    with mlflow.start_run():
        info = log_detector(model, 16, 0.5, {}, None, trust=trust)
    folder = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "logged"))
    faces = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    np.save(tmp_path / "faces.npy", faces)
    code = (f"import sys; sys.path = [p for p in sys.path if p not in ('', {str(REPO)!r})]; "
            "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
            "import json, numpy as np, mlflow.pyfunc; "
            f"m = mlflow.pyfunc.load_model({folder!r}); "
            f"print(json.dumps(m.predict(np.load({str(tmp_path / 'faces.npy')!r})).tolist())); "
            "print(sys.modules['models'].__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    p, where = out.stdout.strip().splitlines()[-2:]
    assert where.startswith(folder), "the models/ package came from the logged model, not from deepfake-cl"
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255), 1)[:, 1].numpy()
    if calibrated:
        expected = 1 / (1 + np.exp(-(0.5 * np.log(expected / (1 - expected)) + 0.2)))
    assert np.allclose(json.loads(p), expected, atol=1e-5)


def test_a_version_registered_as_a_pickle_loads_only_when_trusted(workspace):
    import mlflow

    from dfcl.serving.api import ModelHolder

    with mlflow.start_run():  # how versions were registered before weights-only registration
        info = mlflow.pytorch.log_model(torch.nn.Linear(2, 2), name="model", serialization_format="pickle",
                                        registered_model_name="deepfake-detector", pip_requirements=["torch"])
    mlflow.MlflowClient().set_registered_model_alias("deepfake-detector", "champion", info.registered_model_version)
    with pytest.raises(UntrustedModel, match="registered as a pickled torch module.*--trust-pickle"):
        load_mlflow_detector("models:/deepfake-detector@champion")
    assert isinstance(load_mlflow_detector("models:/deepfake-detector@champion", trust_pickle=True).model, torch.nn.Linear)
    params = small_params()
    with pytest.raises(UntrustedModel):
        ModelHolder(params).refresh()  # the API never unpickles what the alias points at by default
    trusted = ModelHolder(small_params("api.trust_pickle=true"))
    assert trusted.refresh() and trusted.current.detector.info["version"] == "1"
