"""Self-blended pseudo-fakes (dfcl.data.sbi) on synthetic face-like crops."""
import pickle

import cv2
import numpy as np
import pytest
import torch

from dfcl.data.sbi import SelfBlendedFakes, self_blend

S = 64
# 5 MTCNN-style points (eyes, nose, mouth corners) of the synthetic face below
LANDMARKS = np.array([[25, 28], [39, 28], [32, 36], [26, 45], [38, 45]], np.float32)


def make_face(seed: int, size: int = S) -> np.ndarray:
    """Noise background, a skin-coloured face ellipse, dark eyes and mouth."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    skin = tuple(int(v) for v in rng.integers(120, 230, 3))
    k = size / 64
    cv2.ellipse(img, (size // 2, int(34 * k)), (int(18 * k), int(23 * k)), 0, 0, 360, skin, -1)
    for x in (25, 39):
        cv2.ellipse(img, (int(x * k), int(28 * k)), (int(4 * k), int(2 * k)), 0, 0, 360, (30, 30, 30), -1)
    cv2.ellipse(img, (int(32 * k), int(45 * k)), (int(7 * k), int(2 * k)), 0, 0, 360, (120, 20, 30), -1)
    return img


def test_self_blend_blends_source_into_target_inside_mask_only():
    face = make_face(0)
    untouched_target = 0
    for seed in range(30):
        fake, mask, source, target = self_blend(face, np.random.default_rng(seed), return_parts=True)
        assert fake.shape == face.shape and fake.dtype == np.uint8
        assert mask.shape == (S, S) and mask.dtype == np.float32
        assert mask.min() >= 0 and 0.25 - 1e-6 <= mask.max() <= 1
        # the blend formula, from the parts
        expected = np.rint(mask[..., None] * source + (1 - mask[..., None]) * target)
        assert np.abs(fake.astype(np.int16) - expected).max() <= 1
        outside, inside = mask == 0, mask >= 0.9 * mask.max()
        assert outside.sum() > 0.2 * S * S and inside.sum() > 0.05 * S * S  # a face region, not the crop
        assert np.array_equal(fake[outside], np.rint(target[outside]).astype(np.uint8))
        # where the mask is set the fake differs from the target: something was pasted there
        assert np.abs(fake[inside].astype(np.int16) - np.rint(target[inside])).mean() > 0.5
        # independent of the parts: when the target copy is the untouched face, the fake
        # equals the real face outside the mask and differs from it inside
        if np.array_equal(np.rint(target).astype(np.uint8), face):
            untouched_target += 1
            assert np.array_equal(fake[outside], face[outside])
            assert np.abs(fake[inside].astype(np.int16) - face[inside]).mean() > 0.5
        # the mask is roughly centred on the face
        ys, xs = np.nonzero(mask > 0.5 * mask.max())
        assert abs(xs.mean() - S / 2) < 0.15 * S and abs(ys.mean() - 0.55 * S) < 0.15 * S
    assert 5 <= untouched_target <= 25  # the altered copy is chosen at random


def test_self_blend_is_reproducible_and_varies_with_the_seed():
    face = make_face(1)
    a = self_blend(face, np.random.default_rng(7))
    b = self_blend(face, np.random.default_rng(7))
    c = self_blend(face, np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0], face)


def test_self_blend_with_landmarks():
    face = make_face(2)
    for seed in range(10):
        fake, mask = self_blend(face, np.random.default_rng(seed), landmarks=LANDMARKS)
        assert fake.shape == face.shape and 0 <= mask.min() and 0 < mask.max() <= 1
        # the 5 points are grown to a face-sized hull: all of them lie inside the mask
        for x, y in LANDMARKS.astype(int):
            assert mask[y, x] > 0.5 * mask.max()
        assert (mask > 0).sum() > 0.15 * S * S  # more than the hull of the 5 points themselves
        assert mask[0, 0] == 0 and mask[-1, -1] == 0
    # a dense landmark set is hulled as it is
    circle = np.stack([32 + 15 * np.cos(np.linspace(0, 6.28, 20)), 34 + 18 * np.sin(np.linspace(0, 6.28, 20))], 1)
    _, mask = self_blend(face, np.random.default_rng(0), landmarks=circle)
    assert mask[34, 32] > 0 and mask[0, 0] == 0
    with pytest.raises(ValueError):
        self_blend(face, np.random.default_rng(0), landmarks=np.zeros((2, 2)))
    with pytest.raises(ValueError):
        self_blend(face[:, :40], np.random.default_rng(0))


def test_self_blend_at_128_px():
    face = make_face(3, 128)
    fake, mask = self_blend(face, np.random.default_rng(0))
    assert fake.shape == (128, 128, 3) and mask.shape == (128, 128) and mask.max() > 0


def _write_faces(tmp_path, labels, name="faces"):
    images = np.stack([make_face(10 + i) for i in range(len(labels))])
    x, y = tmp_path / f"{name}.npy", tmp_path / f"{name}-y.npy"
    np.save(x, images)
    np.save(y, np.asarray(labels, np.int64))
    return images, x, y


def test_self_blended_fakes_dataset(tmp_path):
    labels = [0, 1, 0, 0, 1, 0, 1, 0, 1, 0]  # 6 reals
    images, x, y = _write_faces(tmp_path, labels)
    reals = images[np.asarray(labels) == 0]
    assert len(SelfBlendedFakes(x, y, per_real=0.5)) == 3
    assert len(SelfBlendedFakes(x, y, per_real=2)) == 12
    ds = SelfBlendedFakes(x, y, per_real=1.0, seed=3)
    assert len(ds) == 6 and ds.targets == [1] * 6
    assert isinstance(ds.images, np.memmap)
    torch.manual_seed(0)
    items = [ds[i] for i in range(len(ds))]
    for i, (t, label) in enumerate(items):
        assert label == 1 and t.shape == (3, S, S) and t.dtype == torch.float32
        img = t.permute(1, 2, 0).numpy() * 255
        assert img.min() > -0.01 and img.max() < 255.01
        # item i is made from real face i % n_real (not from a fake, not from another real)
        errors = [np.abs(img - r).mean() for r in images]
        assert int(np.argmin(errors)) == int(np.flatnonzero(np.asarray(labels) == 0)[i])
        assert np.abs(img - reals[i]).mean() > 0.1  # yet not the real face itself
    # reproducible under torch.manual_seed, different from one epoch to the next
    torch.manual_seed(0)
    assert torch.equal(ds[0][0], items[0][0])
    assert not torch.equal(ds[0][0], items[0][0])
    with pytest.raises(IndexError):
        ds[6]

    # pickles as paths and settings only
    blob = pickle.dumps(ds)
    assert len(blob) < 1000
    back = pickle.loads(blob)
    assert len(back) == 6 and back.targets == ds.targets and back.seed == 3
    torch.manual_seed(0)
    assert torch.equal(back[0][0], items[0][0])


def test_self_blended_fakes_without_reals_is_empty(tmp_path):
    _, x, y = _write_faces(tmp_path, [1, 1, 1])
    ds = SelfBlendedFakes(x, y, per_real=2)
    assert len(ds) == 0 and ds.targets == []


def _face_points(size: int = 160) -> np.ndarray:
    """68 landmarks of a face cut as tightly as FF++'s crops: the jaw line runs off the crop's
    sides and bottom (as in 94% of the training faces measured for issue 35)."""
    t = np.linspace(np.pi * 0.95, np.pi * 0.05, 17)
    jaw = np.stack([0.5 + 0.56 * np.cos(t), 0.45 + 0.62 * np.sin(t)], 1)
    brows = np.stack([np.linspace(0.2, 0.8, 10), np.full(10, 0.3)], 1)
    nose = np.stack([np.full(9, 0.5), np.linspace(0.38, 0.62, 9)], 1)
    eyes = np.concatenate([np.stack([0.3 + 0.08 * np.cos(a), 0.4 + 0.03 * np.sin(a)], 1) for a in
                           (np.linspace(0, 2 * np.pi, 7)[:6],)] + [np.stack([0.7 + 0.08 * np.cos(a), 0.4 + 0.03 * np.sin(a)], 1)
                                                                  for a in (np.linspace(0, 2 * np.pi, 7)[:6],)])
    mouth = np.stack([0.5 + 0.15 * np.cos(np.linspace(0, 2 * np.pi, 21)[:20]), 0.75 + 0.05 * np.sin(np.linspace(0, 2 * np.pi, 21)[:20])], 1)
    return (np.concatenate([jaw, brows, nose, eyes, mouth]) * size).astype(np.float32)


def test_blend_regions_lie_inside_the_crop_and_their_variants_differ():
    from dfcl.data.sbi import EDGE, HULLS, _landmark_mask, inside_crop

    size, points = 160, _face_points()
    assert points.shape == (68, 2) and (points[:17] > size).any(), "the chin runs off the crop"
    band = int(EDGE * size) - 1
    ious = {v: [] for v in HULLS}
    for seed in range(20):
        moved = inside_crop(points, size, np.random.default_rng(seed))
        assert moved.min() >= EDGE * size - 1e-3 and moved.max() <= (1 - EDGE) * size + 1e-3
        hull = _landmark_mask(points, size, np.random.default_rng(seed), "facehull") > 0.5
        for v in HULLS:
            mask = _landmark_mask(points, size, np.random.default_rng(seed), v)
            assert mask[:band].max() == mask[-band:].max() == mask[:, :band].max() == mask[:, -band:].max() == 0, v
            ious[v].append(((mask > 0.5) & hull).sum() / ((mask > 0.5) | hull).sum())
    assert np.mean(ious["inner"]) < 0.9 and np.mean(ious["components"]) < 0.9 and np.mean(ious["extended"]) < 0.97


def test_black_padding_of_old_crops_is_never_blended():
    from dfcl.data.sbi import photo_region

    face = make_face(4)
    face[:, :6] = 0
    face[-9:] = 0
    region = photo_region(face)
    assert not region[:, :6].any() and not region[-9:].any() and region[:-9, 6:].all()
    for seed in range(10):
        fake, mask = self_blend(face, np.random.default_rng(seed))
        assert (fake[:, :6] == 0).all() and (fake[-9:] == 0).all() and mask[:, :6].max() == 0


def test_self_blended_pairs_put_a_real_and_its_blend_side_by_side_under_one_augmentation(tmp_path):
    from dfcl.data.augment import Augmenter
    from dfcl.data.sbi import SelfBlendedPairs
    from dfcl.learning.plugins import PairSampler

    images, x, y = _write_faces(tmp_path, [0] * 5)
    augment = {"enabled": True, "flip_p": 0.5, "crop_p": 1.0, "color_p": 1.0, "jpeg_p": 0.0, "blur_p": 0.0,
               "noise_p": 0.0, "cutout_p": 0.0, "sharpen_p": 0.0, "resample_p": 0.0}
    pairs = SelfBlendedPairs(x, y, augment=augment, seed=3)
    assert len(pairs) == 10 and pairs.targets == [0, 1] * 5
    for k in range(5):
        (real, r_label), (fake, f_label) = pairs[2 * k], pairs[2 * k + 1]
        assert (r_label, f_label) == (0, 1)
        # the pair's own draws: the real augmented as it is, the fake blended, then augmented alike
        post = lambda: np.random.default_rng([3, k, 0, 2])  # noqa: E731
        expected_real = Augmenter(augment)(images[k], rng=post())
        blend, _ = self_blend(images[k], np.random.default_rng([3, k, 0, 1]))
        expected_fake = Augmenter(augment)(blend, rng=post())
        assert np.allclose(real.permute(1, 2, 0).numpy() * 255, expected_real, atol=0.01)
        assert np.allclose(fake.permute(1, 2, 0).numpy() * 255, expected_fake, atol=0.01)
    first = pairs[1][0]
    pairs.epoch = 1
    assert not torch.equal(pairs[1][0], first), "a new blend every epoch"
    with pytest.raises(ValueError, match="real faces only"):
        _, x2, y2 = _write_faces(tmp_path, [0, 1], name="mixed")
        SelfBlendedPairs(x2, y2)
    # batches of whole pairs, every face once an epoch, a new order every epoch
    sampler = PairSampler(n_pairs=7, batch_size=4, seed=0)
    epochs = [list(sampler), list(sampler)]
    for batches in epochs:
        assert len(batches) == len(sampler) == 4
        assert all(b[i] % 2 == 0 and b[i + 1] == b[i] + 1 for b in batches for i in range(0, len(b), 2))
        assert sorted(i for b in batches for i in b) == list(range(14))
    assert epochs[0] != epochs[1]
