"""A self-blended experience: real faces alone, learned against SBI fakes of them (before any
forgery dataset exists), on the synthetic demo faces."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dfcl.data.layouts import LayoutError, recognise
from tests.conftest import small_params


def test_any_dataset_s_real_files_make_one_self_blended_experience(demo_data, tmp_path):
    params = small_params()
    name = params.sbi.method
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
    from dfcl.data.arrays import ExperienceSpec, beside, face_arrays
    from dfcl.data.extraction import extract_dataset
    from dfcl.learning.learner import train_sequence

    params = small_params("data.test_fraction=0.3", "data.val_fraction=0.2")
    name = params.sbi.method
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
    assert len(train) == 2 * n_real and list(train.targets)[:4] == [0, 1, 0, 1], "each real face beside a blend of it"
    results = learner.last_results()
    assert 0.0 <= results["auc"][spec.key] <= 1.0, "scored on its held-back SBI fakes"


def test_retrain_on_real_faces_alone_promotes_a_first_detector(workspace, demo_data):
    """`dfcl retrain REAL_FOLDER --method self-blended`: a new workspace, no forgery data yet."""
    from flows.retrain import retrain_detector

    params = small_params()
    name = params.sbi.method
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
                          "gate.max_drop_average=1", "gate.max_forgetting=1", f"sbi.real_sets=[{demo_data / 'MouthWarp'}]")
    name = params.sbi.method
    first = retrain_detector(str(demo_data / "BlendSwap"), params, auto_approve=True)
    assert first["results"]["methods"] == [name, "BlendSwap"], first["results"]["methods"]
    assert (workspace.root / "data" / "processed" / name).is_dir() and (workspace.root / "data" / "raw" / name).is_dir()
    # the real faces of BlendSwap and of sbi.real_sets, each under its dataset's name, with their splits
    raw = workspace.root / "data" / "raw" / name
    assert sorted(p.name for p in raw.iterdir() if p.is_dir()) == ["BlendSwap", "MouthWarp"]
    assert (raw / "real-splits.csv").is_file()
    second = retrain_detector(str(demo_data / "GANUpsample"), params, auto_approve=True)
    assert second["results"]["methods"] == [name, "BlendSwap", "GANUpsample"]


def _folder_of(files: dict[str, Path], root: Path) -> Path:
    for rel, src in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / rel)
    return root


def test_a_self_blended_experience_keeps_the_splits_its_files_have_in_the_whole_dataset(demo_data, tmp_path):
    """The leak: the raw copy of a self-blended experience holds real files only, which no layout
    recognises; re-split by file, test reals of the dataset's methods trained. Its split list
    travels with the copy now, and a plain folder's train/ and test/ are its splits."""
    from dfcl.data.layouts import REAL_SPLITS, assign_splits, split_rule

    params = small_params()
    name = params.sbi.method
    source = demo_data / "BlendSwap"
    whole = recognise(source, ["real"], "BlendSwap").files
    as_in_whole = dict(zip(whole.path, assign_splits(whole, *split_rule(params.data))))  # what BlendSwap's experience gets
    found = recognise(source, ["real"], name, real_only=True, splits=split_rule(params.data))
    assert dict(zip(found.files.path, found.files.split)) == {p: as_in_whole[p] for p in found.files.path}
    assert {"train", "val", "test"} <= set(found.files.split)
    # the raw copy: the real files and the split list the layout wrote, nothing else
    copy = _folder_of({p: source / p for p in found.files.path}, tmp_path / "raw")
    for rel, text in found.written.items():
        (copy / rel).write_text(text)
    again = recognise(copy, ["real"], name, real_only=True)
    assert dict(zip(again.files.path, again.files.split)) == dict(zip(found.files.path, found.files.split))
    # a list that leaves the folder is refused
    (copy / REAL_SPLITS).write_text("path,split,group\n../../etc/passwd,train,x\n")
    with pytest.raises(LayoutError, match="leaves the dataset"):
        recognise(copy, ["real"], name, real_only=True)
    # a plain folder whose top folders are train/ and test/ keeps them
    plain = _folder_of({f"{split}/{p.name}": p for split in ("train", "test")
                        for p in sorted((source / split / "real").iterdir())[:6]}, tmp_path / "plain")
    listed = recognise(plain, ["real"], name, real_only=True)
    assert all(p.split("/")[0] == s or (s == "val" and p.startswith("train/")) for p, s in zip(listed.files.path, listed.files.split))


def test_several_datasets_real_faces_make_one_self_blended_experience(demo_data):
    params = small_params()
    name = params.sbi.method
    folders = [demo_data / "BlendSwap", demo_data / "MouthWarp"]
    found = recognise(folders, ["real"], name, real_only=True)
    assert found.methods == [name] and set(found.files.label) == {0}
    assert {p.split("/")[0] for p in found.files.path} == {"BlendSwap", "MouthWarp"}
    assert found.roots == {"BlendSwap": str(folders[0].resolve()), "MouthWarp": str(folders[1].resolve())}
    for p in found.files.path:
        first, _, rest = p.partition("/")
        assert (Path(found.roots[first]) / rest).is_file()
    capped = recognise(folders, ["real"], name, real_only=True, max_per_set=5).files
    assert (capped.path.str.startswith("MouthWarp/")).sum() == 5, "an added set is capped"
    assert (capped.path.str.startswith("BlendSwap/")).sum() == found.files.path.str.startswith("BlendSwap/").sum()
    with pytest.raises(LayoutError, match="self-blended"):
        recognise(folders, ["real"], "other")


def test_a_capped_added_set_keeps_its_training_faces(demo_data, tmp_path):
    """`sbi.max_per_set` draws within each split: drawn in the order the splits are dealt, a set of
    one photo per person (each file its own group) gave the cap's every file to test, none to train."""
    name = small_params().sbi.method
    people = _folder_of({f"real/person_{i:03d}.jpg": p for i, p in
                         enumerate(sorted((demo_data / "MouthWarp").rglob("*.jpg"))[:60])}, tmp_path / "people")
    whole = recognise(people, ["real"], name, real_only=True, splits=(0.2, 0, 0.1)).files
    capped = recognise([demo_data / "BlendSwap", people], ["real"], name, real_only=True, splits=(0.2, 0, 0.1),
                       max_per_set=20).files
    capped = capped[capped.path.str.startswith("people/")]
    assert len(capped) == 20
    shares = capped.split.value_counts(normalize=True)
    for split, share in whole.split.value_counts(normalize=True).items():
        assert abs(shares.get(split, 0) - share) < 0.1, (split, shares.to_dict())
    assert set(capped.path.str.removeprefix("people/")) <= set(whole.path), "each file keeps its split"
    assert (capped.merge(whole.assign(path="people/" + whole.path), on="path").pipe(
        lambda m: (m.split_x == m.split_y).all()))


def test_retraining_refuses_test_faces_that_train(tmp_path):
    """dfcl.data.leaks compares face CONTENT: a test face copied into another experience's training
    split is found whatever its file is called."""
    from dfcl.data.arrays import ExperienceSpec
    from dfcl.data.leaks import DataLeakError, check_no_leak, find_leaks

    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)

    def experience(key, train, test):
        paths = {}
        for split, rows in (("train", train), ("val", []), ("test", test)):
            x, y = tmp_path / f"{key}-{split}-x.npy", tmp_path / f"{key}-{split}-y.npy"
            np.save(x, faces[rows] if rows else np.zeros((0, 8, 8, 3), np.uint8))
            np.save(y, np.zeros(len(rows), np.int64))
            paths |= {f"{split}_x": str(x), f"{split}_y": str(y)}
        return ExperienceSpec(key=key, dataset="d", method=key, version="v", **paths)

    a, b = experience("a", [0, 1, 2, 3], [4, 5]), experience("b", [6, 7, 8], [9, 10, 11])
    assert find_leaks([a, b], Path("/")) == []
    check_no_leak([a, b], Path("/"))
    c = experience("c", [10, 11, 1], [0])  # two of b's test faces and a's training face 1 train; a's face 0 tests
    leaks = find_leaks([a, b, c], Path("/"))
    assert leaks == ["1 of the 1 test faces of c are training faces of a", "2 of the 3 test faces of b are training faces of c"]
    with pytest.raises(DataLeakError, match="test faces would train"):
        check_no_leak([a, b, c], Path("/"))


def test_a_quick_runs_self_blended_experience_takes_its_reals_as_the_quick_run_split_them(workspace, demo_data):
    """A quick run (data.max_per_class) copies only the files it uses and splits those: the
    self-blended experience takes its reals from that copy. From the original folder's splits, a
    validation face of BlendSwap trained in it, and the leak check stopped the run."""
    from flows.retrain import retrain_detector

    params = small_params("sbi.first=true", "gate.max_drop_self_blended=1", "gate.max_drop_per_method=1",
                          "gate.max_drop_average=1", "gate.max_forgetting=1", "data.max_per_class=6")
    outcome = retrain_detector(str(demo_data / "BlendSwap"), params, auto_approve=True)
    assert outcome["results"]["methods"] == [params.sbi.method, "BlendSwap"]
