import shutil

import numpy as np
import pytest

from dfcl.data import LayoutError, cap_per_class, decode_images, discover
from tests.conftest import shared_data


def test_per_method_layout_on_ffpp_crops():
    root = shared_data("ffpp-crops")
    found = discover(root, ["youtube"], methods=["Deepfakes", "Face2Face"])
    m = found.manifest
    assert found.layout == "per-method" and found.methods == ["Deepfakes", "Face2Face"]
    assert set(m.experience) == {"Deepfakes", "Face2Face"}
    for (exp, split), group in m.groupby(["experience", "split"]):
        assert set(group.label) == {0, 1}, f"{exp}/{split} lacks a class"
    reals = m[m.label == 0]
    assert not reals.path.duplicated().any(), "a real image is in two experiences"
    # every real training image of the dataset is used exactly once
    assert len(reals[reals.split == "train"]) == len(list((root / "train" / "youtube").glob("*.jpg")))


def test_real_fake_layout_splits_deterministically():
    root = shared_data("stylegan-faces") / "images"
    a = discover(root, ["real"], test_fraction=0.2, seed=0)
    b = discover(root, ["real"], test_fraction=0.2, seed=0)
    assert a.layout == "real-fake" and a.methods == ["stylegan-faces"]
    assert a.manifest.equals(b.manifest)
    test_share = (a.manifest.split == "test").mean()
    assert 0.15 < test_share < 0.25
    assert not set(a.manifest[a.manifest.split == "test"].path) & set(a.manifest[a.manifest.split == "train"].path)


def test_unknown_layout_names_the_known_ones(tmp_path):
    (tmp_path / "videos").mkdir()
    with pytest.raises(LayoutError, match="Known layouts: per-method"):
        discover(tmp_path, ["real"])


def test_empty_class_is_a_clear_error(demo_data, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(demo_data / "BlendSwap", root)
    for f in (root / "test" / "BlendSwap").iterdir():
        f.unlink()
    with pytest.raises(LayoutError, match="test/BlendSwap is empty"):
        discover(root, ["real"])


def test_unknown_method_is_a_clear_error(demo_data):
    with pytest.raises(LayoutError, match=r"no method folder named \['Nope'\]"):
        discover(demo_data / "BlendSwap", ["real"], methods=["Nope"])


def test_corrupt_and_empty_images_are_skipped_with_a_reason(demo_data, tmp_path):
    good = sorted((demo_data / "BlendSwap" / "train" / "real").glob("*.jpg"))[:3]
    for f in good:
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    names = [f.name for f in good] + ["corrupt.jpg", "empty.jpg"]
    images, ok, reasons = decode_images(tmp_path, names, 16)
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    assert ok.tolist() == [True, True, True, False, False]
    assert "unreadable" in reasons["corrupt.jpg"] and "empty" in reasons["empty.jpg"]


def test_cap_per_class_is_stable_and_bounded():
    found = discover(shared_data("ffpp-crops"), ["youtube"], methods=["Deepfakes"])
    a, b = cap_per_class(found.manifest, 10, 0), cap_per_class(found.manifest, 10, 0)
    assert a.equals(b)
    assert a.groupby(["split", "label"]).size().max() == 10
