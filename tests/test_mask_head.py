"""The forgery-mask head: targets (dfcl.data.masks), datasets and augmentation that carry them, the
MaskLoss plugin under every strategy, mask quality figures and the mask as evidence."""
import numpy as np
import pytest
import torch

from dfcl.data.masks import UNKNOWN, mask_loss, mask_quality, target_mask
from tests.conftest import small_params

SIZE = 32


def write_method(root, name, n=32, seed=0, stored_masks=True):
    """A method's arrays as extraction writes them: random reals, and fakes brightened inside a
    random rectangle whose mask is stored in `<split>-mask.npy` (every fourth fake's row left
    empty: a fake without a mask video)."""
    from dfcl.data.arrays import ExperienceSpec

    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        x = rng.integers(40, 160, (2 * n, SIZE, SIZE, 3)).astype(np.uint8)
        y = np.r_[np.zeros(n), np.ones(n)].astype(np.int64)
        m = np.zeros((2 * n, SIZE, SIZE), np.uint8)
        for i in range(n, 2 * n):
            top, left = rng.integers(0, SIZE // 2, 2)
            h, w = rng.integers(SIZE // 4, SIZE // 2, 2)
            x[i, top:top + h, left:left + w] += 80
            m[i, top:top + h, left:left + w] = 0 if i % 4 == 0 else 255
        np.save(folder / f"{split}-x.npy", x)
        np.save(folder / f"{split}-y.npy", y)
        if stored_masks:
            np.save(folder / f"{split}-mask.npy", m)
    paths = {f"{s}_{a}": f"{name}/{s}-{a}.npy" for s in ("train", "val", "test") for a in "xy"}
    return ExperienceSpec(key=name, dataset=name, method=name, version="test", **paths)


@pytest.fixture(scope="module")
def methods(tmp_path_factory):
    root = tmp_path_factory.mktemp("masked")
    return root, [write_method(root, "A", seed=0), write_method(root, "B", seed=1)]


def test_targets_real_empty_fake_scaled_to_its_peak_and_unknown_without_a_mask():
    assert (target_mask(0, 4) == 0).all()
    assert (target_mask(1, 4) == UNKNOWN).all(), "a fake without a stored mask"
    assert (target_mask(1, 4, np.zeros((4, 4), np.uint8)) == UNKNOWN).all(), "an empty row of a fake is no mask"
    blend = np.zeros((4, 4), np.float32)
    blend[1:3, 1:3] = 0.25  # an SBI blend at ratio 0.25 forged this region all the same
    assert target_mask(1, 4, blend).max() == 1.0 and target_mask(1, 4, blend)[0, 0] == 0


def test_the_loss_leaves_unknown_pixels_and_faces_out():
    logits = torch.randn(2, 1, 4, 4)
    target = torch.rand(2, 1, 16, 16)
    only_first = mask_loss(logits[:1], target[:1])
    target[1] = UNKNOWN
    assert torch.allclose(mask_loss(logits, target), only_first), "an unknown face adds nothing"
    assert mask_loss(logits, torch.full((2, 1, 16, 16), UNKNOWN)) is None
    # A perfect prediction of a binary mask costs far less than its opposite.
    truth = (torch.rand(2, 1, 4, 4) > 0.5).float()
    sharp = truth.repeat_interleave(4, 2).repeat_interleave(4, 3)
    assert mask_loss(20 * (2 * truth - 1), sharp) < 0.01 < mask_loss(-20 * (2 * truth - 1), sharp)


def test_pixel_auc_and_iou():
    t = np.zeros((2, 8, 8), np.float32)
    t[:, 2:6, 2:6] = 1
    assert mask_quality(t, t) == {"pixel_auc": 1.0, "iou": 1.0, "faces": 2, "forged_faces": 2}
    assert mask_quality(1 - t, t)["pixel_auc"] == 0.0 and mask_quality(1 - t, t)["iou"] == 0.0
    half = t.copy()
    half[:, 2:4] = 0  # half the forged region found
    assert mask_quality(half, t)["iou"] == pytest.approx(0.5)
    t[1] = UNKNOWN
    assert mask_quality(t.clip(0), t)["faces"] == 1, "a face of unknown mask is not scored"


def test_augmentation_moves_the_mask_with_the_face_and_draws_the_same():
    from dfcl.data.augment import Augmenter

    face = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3)).astype(np.uint8)
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[:, :8] = 1  # the left edge
    flip = Augmenter({"flip_p": 1.0, "crop_p": 0, "color_p": 0, "jpeg_p": 0, "blur_p": 0, "noise_p": 0, "cutout_p": 0})
    _, flipped = flip(face, mask)
    assert flipped[:, -8:].min() == 1 and flipped[:, :-8].max() == 0
    every = Augmenter({"flip_p": 0.5, "crop_p": 1.0, "cutout_p": 1.0, "jpeg_p": 1.0})
    torch.manual_seed(3)
    alone = every(face)
    torch.manual_seed(3)
    image, moved = every(face, mask)
    assert np.array_equal(alone, image), "a mask must not change the face's augmentation"
    assert (moved == UNKNOWN).sum() == round(0.25 * SIZE) ** 2, "the cut-out region is unknown"
    known = moved[moved != UNKNOWN]
    assert 0 < known.mean() < 1


def test_datasets_give_masks_for_every_item(methods, tmp_path):
    from dfcl.data.datasets import FaceArrayDataset
    from dfcl.data.sbi import SelfBlendedFakes

    root, (spec, _) = methods
    faces = FaceArrayDataset(root / spec.test_x, root / spec.test_y, masks=True)
    x, y, m = faces[0]
    assert x.shape == (3, SIZE, SIZE) and y == 0 and m.shape == (1, SIZE, SIZE) and (m == 0).all()
    stored = np.load(root / spec.test_x.replace("-x", "-mask"))
    fake = next(i for i in range(len(faces)) if faces.targets[i] == 1 and stored[i].any())
    assert torch.equal(faces[fake][2][0], torch.from_numpy(stored[fake] / 255).float())
    empty = next(i for i in range(len(faces)) if faces.targets[i] == 1 and not stored[i].any())
    assert (faces[empty][2] == UNKNOWN).all()
    assert len(FaceArrayDataset(root / spec.test_x, root / spec.test_y)[0]) == 2, "no masks unless asked"

    bare = tmp_path / "bare"
    write_method(tmp_path, "bare", n=4, stored_masks=False)
    no_file = FaceArrayDataset(bare / "test-x.npy", bare / "test-y.npy", masks=True)
    assert (no_file[7][2] == UNKNOWN).all() and (no_file[0][2] == 0).all()

    blended = SelfBlendedFakes(root / spec.test_x, root / spec.test_y, masks=True)
    torch.manual_seed(0)
    fake, label, mask = blended[0]
    assert label == 1 and mask.shape == (1, SIZE, SIZE) and mask.max() == 1.0
    # The pixels the blend changed lie inside its mask.
    changed = (fake * 255).round().ne(torch.from_numpy(np.array(blended.images[blended.real_rows[0]])).permute(2, 0, 1)).any(0)
    assert changed.any() and (mask[0][changed] > 0).float().mean() > 0.95


def test_a_model_learns_where_the_forgery_is():
    """The head on the small CNN, trained on the bright-rectangle fakes with the loss MaskLoss
    adds, finds held-out rectangles far better than chance (pixel AUC 0.5)."""
    import tempfile
    from pathlib import Path

    from dfcl.data.datasets import FaceArrayDataset
    from models import create_model
    from models.mask import MaskTap, predict_mask

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        spec = write_method(Path(tmp), "R", n=64, seed=5)
        train = FaceArrayDataset(Path(tmp) / spec.train_x, Path(tmp) / spec.train_y, masks=True)
        test = FaceArrayDataset(Path(tmp) / spec.test_x, Path(tmp) / spec.test_y, masks=True)
        x, y, m = (torch.stack([torch.as_tensor(train[i][k]) for i in range(len(train))]) for k in range(3))
        tx, tm = (torch.stack([test[i][k] for i in range(len(test))]) for k in (0, 2))
    model = create_model("small_cnn", width=8, mask_head=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with MaskTap(model, "small_cnn") as tap:
        for _ in range(60):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y) + mask_loss(tap.logits, m)
            loss.backward()
            optimizer.step()
    assert not model.features._forward_hooks, "the tap's hook is gone once closed"
    with torch.no_grad():
        logits, probs = predict_mask(model.eval(), "small_cnn", tx)
    assert logits.shape == (len(tx), 2) and probs.shape == (len(tx), SIZE, SIZE)
    assert mask_quality(probs, tm[:, 0])["pixel_auc"] > 0.8


@pytest.mark.parametrize("strategy", ["naive", "cwr", "replay", "gem", "lwf", "ewc", "cumulative"])
def test_every_strategy_trains_the_mask_head_and_saves(methods, tmp_path, strategy):
    """Batches of (x, y, mask, task) through each strategy's own machinery (Replay's buffer,
    GEM's memories, EWC's importances, LwF's teacher, Cumulative's union, CWR*'s head): the
    mask loss reaches the head in the first experience, the second trains with the memories
    of the first, and the learner saves and loads with no hook left on the model."""
    from dfcl.learning.learner import Learner
    from dfcl.learning.plugins import MaskLoss

    root, (first, second) = methods
    params = small_params(f"strategy.name={strategy}", "model.mask_head=true")
    learner = Learner(tmp_path / "learner", params, root)
    assert any(isinstance(p, MaskLoss) for p in learner.strategy.plugins)
    before = learner.strategy.model.mask_head.out.weight.detach().clone()
    learner.learn(first)
    assert not torch.equal(before, learner.strategy.model.mask_head.out.weight), "no mask loss reached the head"
    results = learner.learn(second)
    assert 0 <= results["avg_auc"] <= 1
    hooked = [n for n, m in learner.strategy.model.named_modules() if m._forward_hooks]
    assert not hooked, f"hooks left on {hooked}"
    if strategy == "lwf":
        teacher = next(p for p in learner.strategy.plugins if hasattr(p, "lwf")).lwf.prev_model
        assert teacher is not None and not any(m._forward_hooks for m in teacher.modules()), "LwF's teacher copied the hook"
    learner.save()
    again = Learner.load(tmp_path / "learner", params, root)
    assert torch.equal(again.strategy.model.mask_head.out.weight, learner.strategy.model.mask_head.out.weight)


def test_mask_head_settings_are_checked():
    from dfcl.config import ConfigError, check_names

    with pytest.raises(ConfigError, match="mask_loss_weight > 0"):
        small_params("model.mask_head=true", "train.mask_loss_weight=0")
    with pytest.raises(ConfigError, match="resnet18 has no mask head; models with one: .*small_cnn"):
        check_names(small_params("model.mask_head=true", "model.name=resnet18").model)


def test_the_mask_is_evidence_beside_the_heatmap_only_for_a_model_with_a_head(tmp_path):
    import cv2

    from dfcl.serving.detect import Result
    from dfcl.serving.detector import Detector
    from dfcl.serving.explain import write_evidence
    from models import create_model

    crops = np.random.default_rng(0).integers(0, 255, (2, SIZE, SIZE, 3)).astype(np.uint8)
    result = Result("photo.jpg", "photo", "fake", 0.9, faces=[{"p_fake": 0.9}, {"p_fake": 0.2}], crops=crops)
    with_head = Detector(create_model("small_cnn", width=8, mask_head=True).eval(), SIZE, 0.5, {"architecture": "small_cnn"})
    written = write_evidence(with_head, result, tmp_path / "with", 3, 0.5)
    names = sorted(p.name for p in written)
    assert names == ["photo_face0_p0.90.png", "photo_face1_p0.20.png", "photo_mask_face0.png", "photo_mask_face1.png"]
    assert cv2.imread(str(tmp_path / "with" / "photo_mask_face0.png")).shape == (2 * SIZE, 2 * SIZE, 3)
    without = Detector(create_model("small_cnn", width=8).eval(), SIZE, 0.5, {"architecture": "small_cnn"})
    assert not [p for p in write_evidence(without, result, tmp_path / "without", 3, 0.5) if "mask" in p.name]


def test_the_api_row_carries_the_mask_beside_the_heatmap(tmp_path):
    import cv2

    from dfcl.serving.api import run_detection
    from dfcl.serving.detect import FaceScorer
    from dfcl.serving.detector import Detector
    from models import create_model

    params = small_params()
    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3)).astype(np.uint8))
    rows = {}
    for head in (True, False):
        model = create_model("small_cnn", width=8, **({"mask_head": True} if head else {})).eval()
        scorer = FaceScorer(Detector(model, SIZE, 0.5, {"architecture": "small_cnn"}), params)
        status, body = run_detection(scorer, photo, "face.png", explain=True, crop=True, params=params)
        assert status == 200, body
        rows[head] = body["evidence"][0]
    assert rows[True]["mask"].startswith("data:image/png;base64,") and rows[True]["image"].startswith("data:image/png")
    assert "mask" not in rows[False], "no mask head, no mask"
