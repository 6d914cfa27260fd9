"""A self-blended experience: real faces alone, learned against SBI fakes of them (before any
forgery dataset exists), on the synthetic demo faces."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dfcl.layouts import LayoutError, recognise
from tests.conftest import small_params


def test_any_dataset_s_real_files_make_one_self_blended_experience(demo_data, tmp_path):
    params = small_params()
    name = params["sbi"]["method"]
    found = recognise(demo_data / "BlendSwap", ["real"], name, real_only=True)
    reals = sorted(p.relative_to(demo_data / "BlendSwap").as_posix() for p in (demo_data / "BlendSwap").rglob("real/*"))
    assert found.methods == [name] and set(found.files.label) == {0}
    assert sorted(found.files.path) == reals, "each real file once, no fake"
    # a plain folder of face images is real faces too
    flat = tmp_path / "faces"
    flat.mkdir()
    for p in sorted((demo_data / "BlendSwap" / "train" / "real").iterdir())[:5]:
        shutil.copy(p, flat / p.name)
    assert len(recognise(flat, ["real"], name, real_only=True).files) == 5
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="no real images"):
        recognise(tmp_path / "empty", ["real"], name, real_only=True)
    # without the self-blended name, a folder of reals alone is still refused
    with pytest.raises(LayoutError):
        recognise(flat, ["real"], "other")


def test_self_blended_experience_has_fixed_sbi_test_fakes_and_learns_fresh_ones(demo_data, tmp_path):
    from dfcl.arrays import beside, face_arrays
    from dfcl.experience import ExperienceSpec
    from dfcl.extraction import extract_dataset
    from dfcl.learner import train_sequence

    params = small_params("data.test_fraction=0.3", "data.val_fraction=0.2")
    name = params["sbi"]["method"]
    out = tmp_path / "faces"
    extract_dataset(demo_data / "BlendSwap", out, params, name, cache_dir=tmp_path / "cache")
    info = json.loads((out / "experiences.json").read_text())["experiences"][name]
    assert info["learnable"] and info["self_blended"] and info["train"]["fake"] == 0
    for split in ("val", "test"):
        assert info[split]["fake"] == info[split]["real"] > 0, "one fixed SBI fake of each held-back real"
        y = np.load(out / name / f"{split}-y.npy")
        masks = np.load(beside(out / name / f"{split}-x.npy", "mask"))
        assert masks[y == 0].max() == 0 and (masks[y == 1].reshape((y == 1).sum(), -1).max(1) > 0).all()
    again = tmp_path / "again"
    extract_dataset(demo_data / "BlendSwap", again, params, name, cache_dir=tmp_path / "cache")
    assert np.array_equal(np.load(out / name / "test-x.npy"), np.load(again / name / "test-x.npy")), "seeded"

    paths = {k: str(v) for k, v in face_arrays(out / name).items()}
    spec = ExperienceSpec(key=f"demo/{name}", dataset="demo", method=name, version="t", **paths)
    learner, report = train_sequence([spec], params, tmp_path / "learner", Path("/"))
    train = learner._dataset(learner.history.experiences[0].train_x, learner.history.experiences[0].train_y, True)
    n_real = info["train"]["real"]
    assert len(train) == n_real + round(params["sbi"]["experience_per_real"] * n_real)
    assert sorted(set(train.targets)) == [0, 1], "trained against blended fakes"
    results = learner.last_results()
    assert 0.0 <= results["auc"][spec.key] <= 1.0, "scored on its held-back SBI fakes"


def test_retrain_on_real_faces_alone_promotes_a_first_detector(workspace, demo_data):
    """`dfcl retrain REAL_FOLDER --method self-blended`: a new workspace, no forgery data yet."""
    from flows.retrain import retrain_detector

    params = small_params()
    name = params["sbi"]["method"]
    outcome = retrain_detector(str(demo_data / "BlendSwap"), params, method=name, auto_approve=True)
    assert outcome["outcome"] == "promoted"
    assert outcome["results"]["methods"] == [name]
    raw = workspace.root / "data" / "raw" / name
    copied = sorted(p.name for p in raw.rglob("*") if p.is_file())
    assert copied and not list(raw.rglob("BlendSwap/*")), "only the real files are copied and versioned"
    assert 0.0 <= outcome["results"]["auc"][name] <= 1.0


def test_with_sbi_first_a_new_workspace_learns_the_self_blended_experience_before_the_methods(workspace, demo_data):
    """sbi.first: the first retraining of a workspace learns its dataset's real faces against
    blended fakes, then the dataset's methods; the next retraining goes straight to its methods."""
    from flows.retrain import retrain_detector

    params = small_params("sbi.first=true", "gate.max_drop_self_blended=1", "gate.max_drop_per_method=1",
                          "gate.max_drop_average=1", "gate.max_forgetting=1")
    name = params["sbi"]["method"]
    first = retrain_detector(str(demo_data / "BlendSwap"), params, auto_approve=True)
    assert first["results"]["methods"] == [name, "BlendSwap"], first["results"]["methods"]
    assert (workspace.root / "data" / "processed" / name).is_dir() and (workspace.root / "data" / "raw" / name).is_dir()
    second = retrain_detector(str(demo_data / "GANUpsample"), params, auto_approve=True)
    assert second["results"]["methods"] == [name, "BlendSwap", "GANUpsample"]
