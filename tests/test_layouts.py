"""Layout recognition: FF++ official, Celeb-DF v2, DFDC, per-method and real/fake folders."""
import json
import shutil

import pytest

from dfcl.data.layouts import LayoutError, assign_splits, cap_per_class, recognise
from tests.conftest import shared_data


def touch(root, *paths):
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_bytes(b"x")


def no_group_straddles_splits(files):
    split = assign_splits(files, 0.3, 0)
    per_group = files.assign(split=split).groupby("group").split.nunique()
    return (per_group == 1).all()


def test_ffpp_official_videos_one_dataset_per_method_with_links():
    found = recognise(shared_data("ffpp-videos"), ["youtube"], "ffpp-videos")
    f = found.files
    assert found.layout == "FaceForensics++ official (c23)"
    assert found.methods == ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]
    assert set(f.kind) == {"video"}
    fake = f[f.label == 1].set_index("video")
    assert fake.loc["519_515", "original"] == "original_sequences/youtube/c23/videos/519.mp4"
    assert fake.loc["750_743", "original"] == "", "750's original is absent from the sample"
    # FF++ uses the same pristine videos as the real class of every method
    for method in found.methods:
        assert sorted(f[(f.experience == method) & (f.label == 0)].video) == ["004", "519", "634"]
    # a fake and its original are one group, so they always land on the same side
    assert fake.loc["519_515", "group"] == f[f.video == "519"].group.iloc[0]
    assert no_group_straddles_splits(f)


def test_ffpp_official_split_lists_win(tmp_path):
    touch(tmp_path, "original_sequences/youtube/c23/videos/519.mp4", "original_sequences/youtube/c23/videos/004.mp4",
          "manipulated_sequences/Deepfakes/c23/videos/519_515.mp4", "manipulated_sequences/Deepfakes/c23/videos/004_982.mp4",
          "manipulated_sequences/Deepfakes/masks/videos/519_515.mp4")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "test.json").write_text(json.dumps([["519", "515"]]))
    (tmp_path / "splits" / "train.json").write_text(json.dumps([["004", "982"]]))
    found = recognise(tmp_path, ["youtube"], "x")
    split = found.files.set_index("video").split.to_dict()
    assert split == {"519_515": "test", "004_982": "train", "519": "test", "004": "train"}
    assert found.files.set_index("video").loc["519_515", "mask"] == "manipulated_sequences/Deepfakes/masks/videos/519_515.mp4"
    assert {"splits/test.json", "splits/train.json", "manipulated_sequences/Deepfakes/masks/videos/519_515.mp4"} <= set(found.all_paths())


def test_celeb_df_layout_with_its_test_list(tmp_path):
    touch(tmp_path, "Celeb-real/id0_0000.mp4", "Celeb-real/id1_0001.mp4", "YouTube-real/00001.mp4",
          "Celeb-synthesis/id0_id1_0000.mp4", "Celeb-synthesis/id1_id0_0001.mp4")
    (tmp_path / "List_of_testing_videos.txt").write_text("1 YouTube-real/00001.mp4\n0 Celeb-synthesis/id1_id0_0001.mp4\n")
    found = recognise(tmp_path, ["real"], "celeb-df")
    f = found.files.set_index("path")
    assert found.layout == "Celeb-DF v2" and found.methods == ["celeb-df"]
    assert f.loc["Celeb-synthesis/id0_id1_0000.mp4", "original"] == "Celeb-real/id0_0000.mp4"
    assert f.loc["Celeb-synthesis/id0_id1_0000.mp4", "group"] == f.loc["Celeb-real/id0_0000.mp4", "group"]
    assert f.split.to_dict() == {"Celeb-real/id0_0000.mp4": "train", "Celeb-real/id1_0001.mp4": "train",
                                 "YouTube-real/00001.mp4": "test", "Celeb-synthesis/id0_id1_0000.mp4": "train",
                                 "Celeb-synthesis/id1_id0_0001.mp4": "test"}


def test_dfdc_layout_groups_a_fake_with_its_original(tmp_path):
    touch(tmp_path, "part0/aaa.mp4", "part0/bbb.mp4", "part0/ccc.mp4")
    (tmp_path / "part0" / "metadata.json").write_text(json.dumps({
        "aaa.mp4": {"label": "REAL", "split": "train"}, "bbb.mp4": {"label": "FAKE", "original": "aaa.mp4"},
        "ccc.mp4": {"label": "FAKE", "original": "aaa.mp4"}, "gone.mp4": {"label": "FAKE", "original": "aaa.mp4"}}))
    found = recognise(tmp_path, ["real"], "dfdc")
    f = found.files.set_index("video")
    assert found.layout == "DFDC" and found.methods == ["dfdc"]
    assert f.label.to_dict() == {"aaa": 0, "bbb": 1, "ccc": 1}
    assert set(f.group) == {"aaa"} and f.loc["bbb", "original"] == "part0/aaa.mp4"
    assert any("gone.mp4" in n for n in found.notes), "a listed but absent video must be reported"


def test_per_method_images_deal_reals_without_overlap():
    root = shared_data("ffpp-crops")
    found = recognise(root, ["youtube"], "ffpp-crops", methods=["Deepfakes", "Face2Face"])
    f = found.files
    assert found.layout == "per-method" and found.methods == ["Deepfakes", "Face2Face"]
    for (exp, split), group in f.groupby(["experience", "split"]):
        assert set(group.label) == {0, 1}, f"{exp}/{split} lacks a class"
    reals = f[f.label == 0]
    assert not reals.path.duplicated().any(), "a real image is in two experiences"
    assert len(reals[reals.split == "train"]) == len(list((root / "train" / "youtube").glob("*.jpg")))


# Two people of ffpp-crops' training split, each in two crops of their video and one Face2Face
# fake (checked by eye: same person, same studio), which no file name links.
PEOPLE = {"A": ["youtube/roi_999.jpg", "youtube/roi_1000.jpg", "Face2Face/roi_518.jpg"],
          "B": ["youtube/roi_1003.jpg", "youtube/roi_1004.jpg", "Face2Face/roi_520.jpg"]}


def test_unlinked_images_of_one_person_share_a_split_group_in_the_methods_and_the_self_blended_listing(tmp_path):
    """ffpp-crops links no fake to its original: without faces' identities a person's crops and
    fakes were split file by file, and validation faces' people trained."""
    from dfcl.data.extraction import list_files
    from tests.conftest import small_params

    source = shared_data("ffpp-crops")
    root = tmp_path / "ffpp"
    others = ([f"youtube/roi_{i}.jpg" for i in range(10, 18)] + [f"Face2Face/roi_{i}.jpg" for i in range(10, 16)])
    for rel in [p for person in PEOPLE.values() for p in person] + others:
        (root / "train" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / "train" / rel, root / "train" / rel)
    for rel in ["youtube/roi_2.jpg", "youtube/roi_3.jpg", "Face2Face/roi_2.jpg", "Face2Face/roi_3.jpg"]:
        (root / "test" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / "test" / rel, root / "test" / rel)
    params = small_params("data.max_per_class=0", "data.identity_distance=0.45", "data.val_fraction=0.5")
    _, files = list_files(root, params, "ffpp", cache_dir=tmp_path / "cache")
    row = files.set_index("path")
    groups = {name: set(row.group[[f"train/{p}" for p in person]]) for name, person in PEOPLE.items()}
    assert all(len(g) == 1 for g in groups.values()) and groups["A"] != groups["B"], groups
    assert files.groupby("group").split.nunique().max() == 1, "a person's images on two sides"
    assert set(row.split[[f"train/{p}" for p in others]]) <= {"train", "val"}
    assert (row.split[row.index.str.startswith("test/")] == "test").all(), "the official test split moved"
    # The self-blended experience of the same dataset lists its reals alone: same groups, same splits.
    reals = recognise(root, ["youtube"], "self-blended", real_only=True, splits=(0.2, 0, 0.5),
                      identity_distance=0.45, cache_dir=tmp_path / "cache").files.set_index("path")
    assert reals.split.equals(row.split[reals.index]) and reals.group.equals(row.group[reals.index])
    # A folder without a split of its own (real/ + fake/): its test split is drawn by person too.
    flat = tmp_path / "flat"
    for rel in [p for person in PEOPLE.values() for p in person] + others:
        (flat / ("real" if "youtube" in rel else "fake")).mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "train" / rel, flat / ("real" if "youtube" in rel else "fake") / rel.replace("/", "_"))
    def flat_split(seed):
        return list_files(flat, small_params("data.max_per_class=0", "data.identity_distance=0.45", f"data.seed={seed}",
                                             "data.test_fraction=0.5", "data.val_fraction=0"), "flat",
                          cache_dir=tmp_path / "cache")[1]

    drawn = flat_split(3)
    assert drawn.groupby("group").split.nunique().max() == 1 and drawn.group.nunique() < len(drawn)
    assert drawn.groupby("split").label.nunique().to_dict() == {"train": 2, "test": 2}
    # With so few people, seed 0's draw by person leaves a split without fakes: file by file instead.
    fallback = flat_split(0)
    assert (fallback.group == fallback.path).all() and fallback.groupby("split").label.nunique().min() == 2
    # Off, the same images are split file by file again.
    _, plain = list_files(root, small_params("data.max_per_class=0", "data.identity_distance=0",
                                             "data.val_fraction=0.5"), "ffpp")
    assert (plain.group == plain.path).all()


def test_identity_groups_join_reals_and_attach_each_fake_to_its_nearest_real():
    import numpy as np

    from dfcl.data.leaks import identity_groups

    # Reals r1-r2 one person, r3 another; fake f1 near r2, f2 near nobody, one face undescribed.
    vectors = np.array([[0, 0], [0.3, 0], [5, 5], [0.35, 0.1], [9, -9], [np.nan, np.nan]], dtype=np.float32)
    paths, labels = ["r1", "r2", "r3", "f1", "f2", "r4"], np.array([0, 0, 0, 1, 1, 0])
    assert identity_groups(paths, labels, vectors, 0.45) == ["r1", "r1", "r3", "r1", "f2", "r4"]
    # Reals alone name the groups: listing the fakes or not changes no real's group.
    assert identity_groups(paths[:3], labels[:3], vectors[:3], 0.45) == ["r1", "r1", "r3"]


def test_real_fake_folders_split_by_original_when_metadata_says():
    found = recognise(shared_data("dfdc-crops"), ["real"], "dfdc-crops")
    assert found.layout == "real-fake" and found.methods == ["dfdc-crops"]
    assert found.extra == ["metadata.csv"]
    assert no_group_straddles_splits(found.files)
    fakes = found.files[found.files.label == 1]
    reals = set(found.files[found.files.label == 0].group)
    assert fakes.group.isin(reals).mean() > 0.99, "fakes are not grouped with their original"


def test_splits_are_deterministic_and_about_the_asked_fraction():
    files = recognise(shared_data("stylegan-faces") / "images", ["real"], "stylegan-faces").files
    a, b = assign_splits(files, 0.2, 0), assign_splits(files.sample(frac=1, random_state=1).sort_index(), 0.2, 0)
    assert a.equals(b)
    assert 0.15 < (a == "test").mean() < 0.25
    assert set(files[a == "test"].label) == {0, 1}


def test_cap_per_class_is_stable_and_bounded():
    files = recognise(shared_data("ffpp-crops"), ["youtube"], "x", methods=["Deepfakes"]).files
    a, b = cap_per_class(files, 10, 0), cap_per_class(files, 10, 0)
    assert a.equals(b)
    assert a.groupby(["split", "label"]).size().tolist() == [10, 10, 10, 10]


def test_unknown_layout_names_the_known_ones(tmp_path):
    (tmp_path / "videos").mkdir()
    with pytest.raises(LayoutError, match="Known layouts: FaceForensics"):
        recognise(tmp_path, ["real"], "x")


def test_a_folder_of_real_photos_alone_is_real_faces_with_nothing_to_learn(tmp_path):
    """LFW's layout (real/ only): its real files, each in a split, a note saying what they serve;
    no fake folder is not mistaken for a forgery method, and a folder of something else stays unknown."""
    touch(tmp_path, *(f"lfw/real/Person_{i}_0001.jpg" for i in range(30)))
    found = recognise(tmp_path / "lfw", ["real", "youtube"], "lfw")
    assert found.layout == "real faces" and found.methods == ["lfw"]
    assert set(found.files.label) == {0} and len(found.files) == 30 and set(found.files.split) >= {"train", "test"}
    assert "trust.foreign_reals" in found.notes[0]
    touch(tmp_path, "other/images/a.jpg")
    with pytest.raises(LayoutError, match="unknown dataset layout"):
        recognise(tmp_path / "other", ["real"], "other")


def test_empty_class_is_a_clear_error(demo_data, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(demo_data / "BlendSwap", root)
    for f in (root / "test" / "BlendSwap").iterdir():
        f.unlink()
    with pytest.raises(LayoutError, match="test/BlendSwap is empty"):
        recognise(root, ["real"], "x")
    touch(tmp_path, "ff/original_sequences/youtube/c23/videos/README.txt", "ff/manipulated_sequences/Deepfakes/c23/videos/1_2.mp4")
    with pytest.raises(LayoutError, match="no original videos"):
        recognise(tmp_path / "ff", ["youtube"], "x")


def test_unknown_method_is_a_clear_error(demo_data):
    with pytest.raises(LayoutError, match=r"no method named \['Nope'\]"):
        recognise(demo_data / "BlendSwap", ["real"], "x", methods=["Nope"])


def test_method_name_on_a_dataset_of_named_methods_is_a_clear_error(demo_data):
    # `--method` would rename the dataset, and its methods would be learned again under new keys
    with pytest.raises(LayoutError, match=r"names its own methods \(per-method: BlendSwap\).*--methods"):
        recognise(demo_data / "BlendSwap", ["real"], "Renamed", method="Renamed")


def hostile_dfdc(tmp_path):
    """A DFDC folder whose metadata names files outside it, beside a secret it must not read."""
    secret = tmp_path / "secret" / "key.txt"
    touch(tmp_path, "secret/key.txt", "ds/part0/aaa.mp4", "ds/part0/bbb.mp4")
    root = tmp_path / "ds"
    (root / "part0" / "metadata.json").write_text(json.dumps({
        "aaa.mp4": {"label": "REAL"}, "bbb.mp4": {"label": "FAKE", "original": "../../secret/key.txt"},
        "../../secret/key.txt": {"label": "FAKE", "original": "aaa.mp4"},
        str(secret): {"label": "FAKE", "original": "aaa.mp4"}}))
    return root


def test_dfdc_keys_that_leave_the_dataset_are_refused_each_with_a_note(tmp_path):
    found = recognise(hostile_dfdc(tmp_path), ["real"], "dfdc")
    assert sorted(found.files.path) == ["part0/aaa.mp4", "part0/bbb.mp4"]
    assert not any("secret" in p for p in found.all_paths())
    assert found.files.set_index("video").loc["bbb", "original"] == "", "an original outside is no link"
    assert sum("parent folder" in n for n in found.notes) == 1 and sum("absolute" in n for n in found.notes) == 1


def test_symlinks_are_followed_only_inside_the_dataset(tmp_path):
    touch(tmp_path, "secret.txt", "ds/real/a.avi", "ds/real/b.avi", "ds/fake/c.avi")
    fake = tmp_path / "ds" / "fake"
    (fake / "out.avi").symlink_to(tmp_path / "secret.txt")
    (fake / "in.avi").symlink_to(tmp_path / "ds" / "real" / "b.avi")
    (fake / "loop.avi").symlink_to(fake / "loop.avi")
    (fake / "broken.avi").symlink_to(tmp_path / "nothing.avi")
    found = recognise(tmp_path / "ds", ["real"], "ds")
    assert sorted(found.files.path) == ["fake/c.avi", "fake/in.avi", "real/a.avi", "real/b.avi"]
    refused = {n.split(":")[0] for n in found.notes}
    assert refused == {"fake/out.avi", "fake/loop.avi", "fake/broken.avi"}, found.notes


def test_a_dataset_name_is_one_folder_name(tmp_path):
    from dfcl.data.layouts import dataset_name

    assert dataset_name(tmp_path / "x" / "images") == "x"
    for bad in ("../escape", "a/b", ".."):
        with pytest.raises(LayoutError, match="one folder name"):
            dataset_name(tmp_path, bad)


def test_each_refusal_is_a_line_of_the_skip_report(tmp_path):
    found = recognise(hostile_dfdc(tmp_path), ["real"], "dfdc")
    assert [p for p, _ in found.refused] == ["../../secret/key.txt", str(tmp_path / "secret" / "key.txt")]
    assert all(why.endswith("refused") or "refused (" in why for _, why in found.refused)


def test_retraining_on_real_photos_alone_says_what_they_are_for(monkeypatch):
    """`dfcl retrain lfw-faces`: nothing to learn as a method; the error says where such faces go."""
    import flows.retrain as retrain
    from flows.ingest import Ingested

    ingested = Ingested("lfw-faces", "real faces, listed splits", "r", "v", "data/raw/lfw-faces", [],
                        {"lfw-faces": "no train fake faces; no test fake faces"})
    monkeypatch.setattr(retrain, "ingest_dataset", lambda *a, **k: ingested)
    monkeypatch.setattr(retrain, "log_dataset_versions", lambda i: None)
    with pytest.raises(LayoutError, match=r"real faces only.*trust.foreign_reals \(data/processed/lfw-faces/lfw-faces\)"):
        retrain.ingest_learnable("lfw-faces", None, None, None)
