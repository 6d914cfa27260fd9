"""dfcl.data.augment (forensic augmentation of uint8 faces) and its use in FaceArrayDataset."""
import pickle

import numpy as np
import pytest
import torch

from dfcl.config import packaged_params
from dfcl.data.augment import Augmenter
from dfcl.data.datasets import FaceArrayDataset

DEFAULTS = packaged_params().augment.model_dump()

OPS = ["flip", "crop", "color", "jpeg", "blur", "noise", "cutout"]


def only(op: str, **strengths) -> dict:
    """Settings where `op` always runs and every other op never does."""
    return {**{f"{o}_p": 0.0 for o in OPS}, f"{op}_p": 1.0, **strengths}


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)


@pytest.fixture
def smooth():
    """A face-like smooth image (JPEG of pure noise is far from the original by nature)."""
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    rgb = np.stack([128 + 80 * np.sin(x / 9), 128 + 80 * np.cos(y / 7), 100 + (x + y)], -1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def test_settings_cover_every_op():
    assert {f"{op}_p" for op in OPS} <= set(DEFAULTS)
    with pytest.raises(ValueError, match="unknown augment settings"):
        Augmenter({"flip_probability": 1})


def test_disabled_is_identity(image):
    out = Augmenter({**DEFAULTS, "enabled": False})(image)
    assert out is image


# Strengths where the drawn range reaches ~0 (blur sigma, noise std) are raised so that a
# single draw cannot be a no-op.
@pytest.mark.parametrize("op,strengths", [
    ("flip", {}), ("crop", {}), ("color", {}), ("jpeg", {}),
    ("blur", {"blur_sigma_max": 2.0}), ("noise", {"noise_std_max": 20.0}), ("cutout", {})])
def test_each_op_changes_the_image(image, op, strengths):
    torch.manual_seed(0)
    before = image.copy()
    out = Augmenter(only(op, **strengths))(image)
    assert out.shape == image.shape and out.dtype == np.uint8 and out.flags.c_contiguous
    assert not np.array_equal(out, image)
    assert np.array_equal(image, before)  # the input is never written into


def test_jpeg_stays_close(smooth):
    torch.manual_seed(0)
    out = Augmenter(only("jpeg"))(smooth)
    diff = np.abs(out.astype(int) - smooth.astype(int))
    assert diff.max() > 0 and diff.mean() < 3


def test_flip_is_a_mirror(image):
    assert np.array_equal(Augmenter(only("flip"))(image), image[:, ::-1])


def test_reproducible_under_torch_seed(image):
    augment = Augmenter({**DEFAULTS, **{f"{op}_p": 1.0 for op in OPS}})
    torch.manual_seed(1)
    a = augment(image)
    torch.manual_seed(1)
    b = augment(image)
    torch.manual_seed(2)
    c = augment(image)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.fixture
def arrays(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(images, rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8))
    np.save(labels, np.array([0, 1, 0, 1, 0, 1]))
    return images, labels


def test_dataset_pickles_with_settings(arrays):
    settings = {**DEFAULTS, "cutout_p": 1.0}
    data = FaceArrayDataset(*arrays, augment=settings)
    blob = pickle.dumps(data)
    assert len(blob) < 2000  # file paths and settings, not the arrays
    copy = pickle.loads(blob)
    assert copy.augment == settings and copy._augmenter.settings == data._augmenter.settings
    x, y = copy[0]
    assert x.dtype == torch.float32 and x.shape == (3, 64, 64) and y == 0


def test_dataset_without_augment_is_plain(arrays):
    data = FaceArrayDataset(*arrays, augment=None)
    x, _ = data[2]
    raw = torch.from_numpy(np.load(arrays[0])[2]).permute(2, 0, 1).float() / 255
    assert torch.allclose(x, raw)  # in [0, 1]: each model normalises its own input
    assert FaceArrayDataset(*arrays, augment=False).augment is None


def test_dataset_augment_true_is_refused(arrays):
    with pytest.raises(TypeError, match="augment section"):
        FaceArrayDataset(*arrays, augment=True)
