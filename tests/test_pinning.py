"""A learned experience never changes under the learner (issue: a dataset that gains a method
re-deals its real faces and used to rewrite what the replay buffer indexes)."""
import shutil

import cv2
import numpy as np
import pytest

from dfcl.learning.learner import Learner
from dfcl.learning.pinning import PinnedDataError
from flows.retrain import retrain_detector
from tests.conftest import shared_data, small_params

PER_CLASS = 40


@pytest.fixture(scope="module")
def ffpp_small(tmp_path_factory):
    """40 FF++ crops per class and split: youtube (real), Deepfakes, Face2Face."""
    source = shared_data("ffpp-crops")
    out = tmp_path_factory.mktemp("data") / "ffpp-small"
    for split in ("train", "test"):
        for cls in ("youtube", "Deepfakes", "Face2Face"):
            (out / split / cls).mkdir(parents=True)
            for f in sorted((source / split / cls).iterdir())[:PER_CLASS]:
                shutil.copy2(f, out / split / cls / f.name)
    return out


def outcome_version_prefix(run) -> str:
    """The processed data's DVC version the run logged as a parameter, as a dataset digest."""
    return run.data.params["data.edited.version"].removesuffix(".dir")[:36]


def buffer_faces(learner: Learner) -> list[bytes]:
    """Every face (and label) in the Replay buffer of the first experience, as bytes."""
    replay = next(p for p in learner.strategy.plugins if hasattr(p, "storage_policy"))
    group = replay.storage_policy.buffer_groups[0].buffer
    return sorted(x.numpy().tobytes() + bytes([y]) for x, y, *_ in (group[i] for i in range(len(group))))


def test_pinned_faces_are_checked_on_load(workspace, ffpp_small):
    params = small_params("augment.enabled=false")
    retrain_detector(str(ffpp_small), params, methods=["Deepfakes"], auto_approve=True)
    spec = Learner.load(workspace.learner, params, workspace.root).history.experiences[0]
    assert spec.digest and spec.faces["test"] > 0 and "experiences" in spec.test_x
    test_y = workspace.root / spec.test_y
    np.save(test_y.with_suffix(".tmp.npy"), np.load(test_y)[:-3])
    test_y.with_suffix(".tmp.npy").replace(test_y)
    with pytest.raises(PinnedDataError, match=r"ffpp-small/Deepfakes: .* holds \d+ test faces, the learner learned"):
        Learner.load(workspace.learner, params, workspace.root)


def test_pinned_faces_are_read_only_and_an_edit_in_place_is_caught_on_load(workspace, demo_data):
    import stat

    from tests.test_learner import specs_for

    spec = specs_for(demo_data, workspace.root, ["BlendSwap"])[0]
    params = small_params()
    learner = Learner(workspace.learner, params, workspace.root)
    learner.learn(spec)
    learner.save()
    pinned = learner.history.experiences[0]
    processed = workspace.root / spec.test_x
    for path in (workspace.root / pinned.test_x, workspace.root / pinned.train_y, processed):
        assert stat.S_IMODE(path.stat().st_mode) & 0o222 == 0, f"{path} is writable"
    # An edit in place of data/processed (root ignores the mode): the same file, other bytes.
    with open(processed, "r+b") as f:
        f.seek(-16, 2)
        tail = f.read()
        f.seek(-16, 2)
        f.write(bytes(255 - b for b in tail))
    with pytest.raises(PinnedDataError, match="BlendSwap: its pinned faces changed since it was learned"):
        Learner.load(workspace.learner, params, workspace.root)


@pytest.mark.parametrize("strategy", ["replay", "gem", "cumulative"])
def test_a_dataset_that_gains_a_method_leaves_the_learned_one_untouched(workspace, ffpp_small, strategy):
    params = small_params(f"strategy.name={strategy}", "augment.enabled=false")
    first = retrain_detector(str(ffpp_small), params, methods=["Deepfakes"], auto_approve=True)
    assert first["outcome"] == "promoted"
    learned = Learner.load(workspace.learner, params, workspace.root)
    spec = learned.history.experiences[0]
    test_faces = np.load(workspace.root / spec.test_x).copy()
    buffer = buffer_faces(learned) if strategy == "replay" else None
    processed = workspace.root / "data" / "processed" / "ffpp-small" / "Deepfakes" / "train-y.npy"
    before = len(np.load(processed))

    second = retrain_detector(str(ffpp_small), params, methods=["Deepfakes", "Face2Face"], auto_approve=True)
    assert second["results"]["methods"] == ["ffpp-small/Deepfakes", "ffpp-small/Face2Face"]
    assert len(np.load(processed)) < before, "the test needs the re-ingest to re-deal Deepfakes' real faces"
    again = Learner.load(workspace.learner, params, workspace.root)
    assert again.history.experiences[0] == spec, "the learned experience still points at its pinned faces"
    assert np.array_equal(np.load(workspace.root / spec.test_x), test_faces)
    # Its cell unchanged; Face2Face's beside it, measured before it was learned (evaluate_unlearned).
    assert again.history.auc_matrix[0][:1] == learned.history.auc_matrix[0]
    assert len(again.history.auc_matrix[0]) == 2 and "ffpp-small/Face2Face" in second["results"]["auc_before"]
    if strategy == "replay":
        # The buffer's share for Deepfakes shrank to make room for Face2Face, but every face it
        # holds is byte for byte one it held after the first run.
        assert set(buffer_faces(again)) <= set(buffer), "the replay buffer points at other faces"
        assert len(buffer_faces(again)) > 0


def test_an_edited_file_of_a_learned_method_is_said_and_learned_as_a_new_version(workspace, ffpp_small, tmp_path):
    data = tmp_path / "edited"
    shutil.copytree(ffpp_small, data)
    # The gate promotes whatever these tiny models score: a rejected version would be learned again
    # from the champion's state (issue 39), and this test is about pinning, not the gate.
    params = small_params("augment.enabled=false", "gate.max_drop_per_method=1", "gate.max_drop_average=1",
                          "gate.max_forgetting=1", "gate.max_point_drop=1")
    retrain_detector(str(data), params, methods=["Deepfakes"], auto_approve=True)
    fake = sorted((data / "train" / "Deepfakes").iterdir())[0]
    cv2.imwrite(str(fake), 255 - cv2.imread(str(fake)))  # the same file, other content
    outcome = retrain_detector(str(data), params, methods=["Deepfakes"], auto_approve=True)
    methods = outcome["results"]["methods"]
    assert methods[0] == "edited/Deepfakes" and methods[1].startswith("edited/Deepfakes:"), methods
    import mlflow

    tag = mlflow.get_run(outcome["run_id"]).data.tags["data.edited/Deepfakes.changed"]
    assert "1 file(s) edited" in tag and fake.name in tag
    # The run's datasets are MLflow dataset inputs (the UI's Dataset column), digest = DVC version.
    run = mlflow.get_run(outcome["run_id"])
    inputs = {(d.dataset.name, next(t.value for t in d.tags if t.key == "mlflow.data.context"))
              for d in run.inputs.dataset_inputs}
    assert inputs == {("edited/Deepfakes", "evaluation"), (methods[1], "training")}
    assert {d.dataset.digest for d in run.inputs.dataset_inputs} >= {outcome_version_prefix(run)}
    assert mlflow.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    # Re-running the edited data again learns nothing new.
    assert retrain_detector(str(data), params, methods=["Deepfakes"], auto_approve=True)["outcome"] == "nothing new"
