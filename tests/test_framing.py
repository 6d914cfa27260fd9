"""One face geometry for training and detection (images re-framed at ingest, the framing recorded
with the model) and dlib's 68 landmarks stored beside the faces, on real FF++ crops."""
import shutil

import cv2
import numpy as np
import pandas as pd
import torch

from dfcl.config import load_params
from dfcl.data.arrays import beside, face_inside
from dfcl.data.extraction import NO_68, extract_dataset
from dfcl.data.faces import (
    FaceSettings,
    crop_square,
    face_of_image,
    framing_of,
    square_of,
)
from dfcl.data.landmarks import LandmarkPredictor, kind, plausible, stored, to_crop
from tests.conftest import REPO, shared_data


def real_params(*overrides):
    """The defaults real data gets (MTCNN re-framing and landmarks on), small crops."""
    return load_params(REPO / "params.yaml", ["data.image_size=96", *overrides])


def ffpp_image(name="train/youtube/roi_2.jpg") -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(shared_data("ffpp-crops") / name)), cv2.COLOR_BGR2RGB)


def test_landmarks_fit_a_real_face_and_map_into_the_crop():
    image = ffpp_image()
    h, w = image.shape[:2]
    points = LandmarkPredictor()(image, (0, 0, w, h))
    assert points is not None and points.shape == (68, 2) and plausible(points, (0, 0, w, h))
    # anatomy: the chin (8) is below the nose tip (30), which is below the brows (19, 24)
    assert points[8, 1] > points[30, 1] > max(points[19, 1], points[24, 1])
    # a point of the image lands where crop_square puts its pixel
    box, margin, size = (40.0, 50.0, 240.0, 250.0), 0.9, 64
    marked = np.zeros_like(image)
    marked[150:153, 120:123] = 255
    crop = crop_square(marked, box, margin, size)
    (x, y), = to_crop(np.array([[121.0, 151.0]]), square_of(box, margin, marked.shape), size)
    ys, xs = np.nonzero(crop[..., 0] > 100)
    assert abs(xs.mean() - x) < 1.0 and abs(ys.mean() - y) < 1.0


def test_a_fit_that_is_no_face_is_refused_and_keeps_mtcnn_points():
    box = (0, 0, 100, 100)
    squashed = np.tile(np.array([[50.0, 50.0]]), (68, 1)) + np.random.default_rng(0).normal(0, 1, (68, 2))
    assert not plausible(squashed, box)
    five = np.arange(10, dtype=np.float32).reshape(5, 2)
    row = stored(None, five)
    assert kind(row) == "5" and np.array_equal(row[:5], five) and np.isnan(row[5:]).all()
    assert kind(stored(None, None)) == "none" and kind(stored(squashed.astype(np.float32), five)) == "68"


def test_refused_landmarks_are_in_the_skip_report_not_lost(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    for cls, source in (("real", "youtube"), ("fake", "Deepfakes")):
        (raw / cls).mkdir(parents=True)
        for i in range(2):
            shutil.copy(shared_data("ffpp-crops") / f"train/{source}/roi_{2 + i}.jpg", raw / cls / f"{i}.jpg")
    monkeypatch.setattr(LandmarkPredictor, "__call__", lambda self, image, box: None)  # dlib finds nothing
    extract_dataset(raw, tmp_path / "out", real_params("data.test_fraction=0.5", "data.val_fraction=0.1"), "x",
                    cache_dir=tmp_path / "cache")
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    kept = sum(len(np.load(tmp_path / "out" / "x" / f"{s}-y.npy")) for s in ("train", "test"))
    assert kept >= 3, "the faces are still kept"
    assert (skipped.skipped == NO_68).sum() == kept
    rows = np.load(tmp_path / "out" / "x" / "train-landmarks.npy")
    assert {kind(r) for r in rows} == {"5"}, "MTCNN's 5 points stand in"


def test_images_are_re_framed_to_the_geometry_detection_uses(tmp_path):
    """The same face, once as a tight crop and once small inside a larger picture, comes out of
    ingest as (nearly) the same crop with landmarks on the same features: framing no longer
    depends on how a dataset cut its images."""
    face = ffpp_image("train/youtube/roi_5.jpg")
    canvas = np.full((700, 700, 3), 127, np.uint8)
    canvas[250:250 + face.shape[0], 180:180 + face.shape[1]] = face
    raw = tmp_path / "raw"
    (raw / "real").mkdir(parents=True)
    (raw / "fake").mkdir()
    cv2.imwrite(str(raw / "real" / "tight.png"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(raw / "fake" / "wide.png"), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    params = real_params("data.test_fraction=0.5", "data.val_fraction=0.5")  # one file a class: all train
    extract_dataset(raw, tmp_path / "out", params, "x", cache_dir=tmp_path / "cache")
    x = np.load(tmp_path / "out" / "x" / "train-x.npy").astype(np.float32)
    y = np.load(tmp_path / "out" / "x" / "train-y.npy")
    points = np.load(beside(tmp_path / "out" / "x" / "train-x.npy", "landmarks"))
    # (the centre: where a tight crop ends, its border is black and the wide one's is the canvas)
    tight, wide = x[y == 0][0][20:76, 20:76], x[y == 1][0][20:76, 20:76]
    # MTCNN's box of a face the image cuts off is ~15% larger than of the whole face: near, not equal
    assert np.abs(tight - wide).mean() < 30, "the same crop, whatever the picture around the face"
    eyes = [np.linalg.norm(p[36:42].mean(0) - p[42:48].mean(0)) for p in (points[y == 0][0], points[y == 1][0])]
    assert 0.75 < eyes[0] / eyes[1] < 1.33, "the face at the same scale"
    # the manifest says how much of each face's box is inside its picture (trust.min_inside is fit on it)
    inside = face_inside(tmp_path / "out" / "x" / "train-x.npy")
    assert inside[y == 1][0] == 1.0 and 0.3 < inside[y == 0][0] < 0.95, "the tight crop's box runs off the picture"
    # taken whole (the old way), the wide picture gives another face size altogether
    whole = FaceSettings.from_params(real_params("faces.detect_in_images=false"))
    small = face_of_image(canvas, None, whole, None, whole=True).crops[0].astype(np.float32)[20:76, 20:76]
    assert np.abs(tight - small).mean() > 1.5 * np.abs(tight - wide).mean()


def test_detection_and_evaluation_cut_faces_as_the_model_recorded():
    from dfcl.serving.detect import FaceScorer
    from dfcl.serving.detector import Detector

    params = real_params()
    model = torch.nn.Linear(1, 1)
    recorded = Detector(model, 96, 0.5, {"framing": {"margin": 1.1, "images": "whole"}})
    scorer = FaceScorer(recorded, params)
    assert (scorer.settings.margin, scorer.settings.size, scorer.settings.detect_in_images) == (1.1, 96, False)
    # evaluation reads the same geometry (Detector.params_as_trained), so the two cannot differ
    assert FaceSettings.from_params(recorded.params_as_trained(params)) == scorer.settings
    unknown = FaceScorer(Detector(model, 96, 0.5, {}), params)  # registered before framing was recorded
    assert framing_of(params.faces) == {"margin": params.faces.margin, "images": "reframed"}
    assert (unknown.settings.margin, unknown.settings.detect_in_images) == (params.faces.margin, True)


def test_reframed_faces_have_one_scale_across_sets():
    """ffpp-crops cut into the face, StyleGAN's fakes show the whole head: as the images are, the
    face (its jaw width, from dlib's landmarks in MTCNN's box) spans shares of the image about
    1.7x apart; re-framed, it takes the same share of the crop in both."""
    from dfcl.data.faces import FaceDetector

    s = FaceSettings.from_params(real_params())
    finder, predictor = FaceDetector(s), LandmarkPredictor()

    def widths(folder):
        as_is, reframed = [], []
        for f in sorted((shared_data(folder.split("/")[0]).parent / folder).glob("*.jpg"))[:8]:
            image = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
            det = finder.detect([image])[0]
            r = face_of_image(image, det, s, predictor)
            if len(r.crops) and kind(r.points[0]) == "68":
                fitted = predictor(image, det[0])
                as_is.append(np.linalg.norm(fitted[16] - fitted[0]) / image.shape[1])
                reframed.append(np.linalg.norm(r.points[0][16] - r.points[0][0]) / s.size)
        assert len(reframed) >= 5
        return np.median(as_is), np.median(reframed)

    (ffpp_as_is, ffpp), (stylegan_as_is, stylegan) = widths("ffpp-crops/test/Deepfakes"), widths("stylegan-faces/val_images/fake")
    assert ffpp_as_is / stylegan_as_is > 1.4
    assert max(ffpp, stylegan) / min(ffpp, stylegan) < 1.2


def test_sbi_blends_inside_the_hull_of_the_68_landmarks():
    from dfcl.data.sbi import HULLS, _landmark_mask, self_blend

    size = 128
    image = cv2.resize(ffpp_image(), (size, size), interpolation=cv2.INTER_AREA)
    points = LandmarkPredictor()(image, (0, 0, size, size))
    masks = {v: _landmark_mask(points, size, np.random.default_rng(0), variant=v) for v in HULLS}  # one jaw pull
    area = {v: m.sum() for v, m in masks.items()}
    hull = masks["facehull"] > 0.5
    assert area["components"] < area["inner"] < area["facehull"] < area["extended"], \
        "components < inner face < the face < face and forehead"
    assert not (masks["components"][~hull] > 0.5).any() and not (masks["inner"][~hull] > 0.5).any()
    for v in ("inner", "components"):  # regions that really differ from the hull (issue 35)
        assert ((masks[v] > 0.5) & hull).sum() / ((masks[v] > 0.5) | hull).sum() < 0.9, v
    grown = cv2.dilate(hull.astype(np.uint8), np.ones((21, 21), np.uint8))
    for seed in range(10):
        fake, mask = self_blend(image, np.random.default_rng(seed), points)
        assert mask.sum() > 0.01 * size * size  # components at a 0.25 blend ratio are small
        assert (mask * grown).sum() > 0.8 * mask.sum(), "blended where the face is"
