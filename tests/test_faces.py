"""Face extraction from videos: evenly spaced frames, MTCNN crops that hold faces, manifests,
leak-free splits, masks, the detection cache, and bad files skipped with a reason."""
import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from dfcl.data.extraction import extract_dataset
from dfcl.data.faces import crop_square, frame_indices, square_of
from tests.conftest import shared_data, small_params

K = 4
METHODS = ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]


def manifests(out):
    return pd.concat([pd.read_csv(out / m / "manifest.csv", keep_default_na=False) for m in METHODS])


@pytest.fixture(scope="module")
def ffpp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ffpp-faces")
    params = small_params(f"faces.frames_per_video={K}", "data.image_size=64")
    stats = extract_dataset(shared_data("ffpp-videos"), tmp / "out", params, "ffpp-videos", cache_dir=tmp / "cache")
    return tmp, params, stats


def test_frame_indices_cover_the_whole_video():
    assert frame_indices(100, 4) == [12, 37, 62, 87]
    assert frame_indices(3, 8) == [0, 1, 2]
    assert frame_indices(0, 8) == []


def test_crop_square_stays_inside_the_picture_never_padding():
    image = np.full((100, 120, 3), 200, np.uint8)
    image[:, :10] = 50  # the left edge, marked
    # a face at the bottom-right corner: the square moves in instead of padding with black
    crop = crop_square(image, (80, 80, 100, 100), margin=2.0, size=20)
    assert crop.shape == (20, 20, 3) and crop.min() == 200
    assert square_of((80, 80, 100, 100), 2.0, image.shape) == (70, 60, 40)
    # a square larger than the picture shrinks to its shorter side, and still holds no padding
    crop = crop_square(image, (20, 20, 80, 80), margin=3.0, size=20)
    assert crop.min() == 50 and (crop > 0).all()
    assert square_of((20, 20, 80, 80), 3.0, image.shape) == (0, 0, 100)


def test_ffpp_videos_become_one_face_dataset_per_method(ffpp):
    tmp, params, stats = ffpp
    out = tmp / "out"
    summary = json.loads((out / "experiences.json").read_text())
    assert summary["layout"] == "FaceForensics++ official (c23)" and summary["methods"] == METHODS
    assert stats["videos"] == 7 and stats["videos_detected"] == 7 and stats["frames_per_s"] > 0
    for m in METHODS:
        for split in ("train", "test"):
            x, y = np.load(out / m / f"{split}-x.npy"), np.load(out / m / f"{split}-y.npy")
            assert x.shape[1:] == (64, 64, 3) and x.dtype == np.uint8 and len(x) == len(y)
        assert (out / m / "preview.png").is_file()
    m = manifests(out)
    assert {"x1", "y1", "x2", "y2", "score", "landmarks", "frame", "video", "original"} <= set(m.columns)
    assert len(json.loads(m[m.face >= 0].landmarks.iloc[0])) == 10


def test_frames_are_evenly_spaced_over_each_video(ffpp):
    tmp, _, _ = ffpp
    root = shared_data("ffpp-videos")
    m = manifests(tmp / "out")
    for source, rows in m.groupby("source"):
        n = int(cv2.VideoCapture(str(root / source)).get(cv2.CAP_PROP_FRAME_COUNT))
        frames = sorted(set(rows.frame))
        assert frames == frame_indices(n, K), source
        gaps = np.diff(frames)
        assert gaps.max() - gaps.min() <= 1 and frames[-1] > 0.75 * n, f"{source}: frames {frames} of {n}"


def test_every_kept_crop_holds_a_face(ffpp):
    from facenet_pytorch import MTCNN

    tmp, params, _ = ffpp
    out = tmp / "out"
    m = manifests(out)
    kept = m[m.face >= 0]
    assert kept.source.nunique() == 7 and (kept.score >= params.faces.min_score).all()
    mtcnn = MTCNN(keep_all=True, min_face_size=20)
    for method in METHODS:
        for split in ("train", "test"):
            crops = np.load(out / method / f"{split}-x.npy")
            if not len(crops):
                continue
            big = np.stack([cv2.resize(c, (160, 160)) for c in crops])  # MTCNN's pyramid wants some pixels
            _, probs = mtcnn.detect(big)
            assert all(p is not None and max(p) > 0.9 for p in probs), f"{method}/{split}: a crop without a face"


def test_fakes_keep_the_link_to_their_original_and_splits_never_leak(ffpp):
    tmp, _, _ = ffpp
    m = manifests(tmp / "out")
    fake = m[m.label == 1].drop_duplicates("video").set_index("video")
    assert fake.loc["519_515", "original"] == "original_sequences/youtube/c23/videos/519.mp4"
    assert fake.loc["634_660", "original"] == "original_sequences/youtube/c23/videos/634.mp4"
    assert m.groupby("source").split.nunique().max() == 1, "frames of one video in train and test"
    assert m.groupby("group").split.nunique().max() == 1, "a fake and its original on different sides"
    linked = fake[fake.original != ""]
    split_of = m.drop_duplicates("source").set_index("source").split
    assert (linked.split == linked.original.map(split_of)).all()


def test_unchanged_videos_are_not_detected_again(ffpp):
    tmp, params, _ = ffpp
    again = extract_dataset(shared_data("ffpp-videos"), tmp / "again", params, "ffpp-videos", cache_dir=tmp / "cache")
    assert again["videos_detected"] == 0 and again["videos_from_cache"] == 7
    for method in METHODS:
        assert (np.load(tmp / "again" / method / "train-x.npy") == np.load(tmp / "out" / method / "train-x.npy")).all()
        a = pd.read_csv(tmp / "again" / method / "manifest.csv")
        assert a.equals(pd.read_csv(tmp / "out" / method / "manifest.csv"))
    # a wider crop needs the frames again, not the detector
    wider = extract_dataset(shared_data("ffpp-videos"), tmp / "wider", params.replaced(faces={"margin": 1.6}),
                            "ffpp-videos", cache_dir=tmp / "cache")
    assert wider["videos_detected"] == 0
    assert (np.load(tmp / "wider" / "FaceSwap" / "train-x.npy") != np.load(tmp / "out" / "FaceSwap" / "train-x.npy")).any()


def write_video(path, frames):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()


def test_bad_videos_are_skipped_with_a_reason_and_masks_are_cut(tmp_path):
    src = shared_data("ffpp-videos")
    root = tmp_path / "ff"
    orig, fakes = root / "original_sequences/youtube/c23/videos", root / "manipulated_sequences/Deepfakes/c23/videos"
    masks = root / "manipulated_sequences/Deepfakes/masks/videos"
    for d in (orig, fakes, masks):
        d.mkdir(parents=True)
    shutil.copy(src / "original_sequences/youtube/c23/videos/004.mp4", orig / "004.mp4")
    shutil.copy(src / "manipulated_sequences/NeuralTextures/c23/videos/004_982.mp4", fakes / "004_982.mp4")
    shutil.copy(src / "manipulated_sequences/NeuralTextures/c23/videos/004_982.mp4", fakes / "004_983.mp4")  # duplicate
    write_video(orig / "111.mp4", [np.full((120, 160, 3), 40 + i, np.uint8) for i in range(30)])  # no face
    (fakes / "222_333.mp4").write_bytes(b"")                                                      # zero-length
    (fakes / "444_555.mp4").write_bytes(b"this is not a video at all")                            # corrupt
    data = (src / "manipulated_sequences/NeuralTextures/c23/videos/004_982.mp4").read_bytes()
    (fakes / "666_777.mp4").write_bytes(data[: len(data) // 3])                                   # truncated
    cap = cv2.VideoCapture(str(fakes / "004_982.mp4"))
    n, w, h = (int(cap.get(p)) for p in (cv2.CAP_PROP_FRAME_COUNT, cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT))
    write_video(masks / "004_982.mp4", [np.full((h // 4, w // 4, 3), 255, np.uint8)] * n)  # the whole frame manipulated

    params = small_params("faces.frames_per_video=3", "data.image_size=32")
    extract_dataset(root, tmp_path / "out", params, "ff", cache_dir=tmp_path / "cache")
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv", keep_default_na=False)
    reason = {s: "; ".join(r.skipped) for s, r in skipped.groupby("source")}
    at = "manipulated_sequences/Deepfakes/c23/videos/"
    assert "no face in any sampled frame" in reason["original_sequences/youtube/c23/videos/111.mp4"]
    assert "empty file" in reason[at + "222_333.mp4"]
    assert "cannot open video" in reason[at + "444_555.mp4"]
    assert "truncated" in reason[at + "666_777.mp4"] or "cannot open" in reason[at + "666_777.mp4"]
    assert reason[at + "004_983.mp4"] == f"duplicate of {at}004_982.mp4"
    assert at + "004_982.mp4" not in reason

    m = pd.read_csv(tmp_path / "out" / "Deepfakes" / "manifest.csv", keep_default_na=False)
    kept = m[m.face >= 0]
    assert set(kept.video) == {"004", "004_982"}
    # the mask crop follows the face box: white for the fake (mask scaled to the frame), black for reals
    for split in ("train", "test"):
        rows = kept[kept.split == split].sort_values("index")
        if len(rows):
            mask = np.load(tmp_path / "out" / "Deepfakes" / f"{split}-mask.npy")
            assert len(mask) == len(rows)
            means = mask.reshape(len(mask), -1).mean(1)
            assert (means[rows.label.to_numpy() == 0] == 0).all()
            assert (means[rows.label.to_numpy() == 1] > 100).all()


def test_unreadable_images_are_skipped_and_the_rest_kept(demo_data, tmp_path):
    root = tmp_path / "blend"
    shutil.copytree(demo_data / "BlendSwap", root)
    (root / "train" / "real" / "zz-corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "train" / "real" / "zz-empty.jpg").write_bytes(b"")
    shutil.copy(root / "train" / "real" / "0000.jpg", root / "test" / "real" / "copy-of-a-train-face.jpg")
    extract_dataset(root, tmp_path / "out", small_params(), "BlendSwap", cache_dir=tmp_path / "cache")
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv", keep_default_na=False).set_index("source").skipped
    assert "unreadable" in skipped["train/real/zz-corrupt.jpg"]
    assert "empty" in skipped["train/real/zz-empty.jpg"]
    dup = skipped[skipped.str.startswith("duplicate of ")]
    assert len(dup) == 1, "the copy must not be both in train and test"
    assert dup.to_dict() == {"test/real/copy-of-a-train-face.jpg": "duplicate of train/real/0000.jpg"}
    assert len(skipped) == 3
    out = tmp_path / "out" / "BlendSwap"
    x = np.concatenate([np.load(out / f"{s}-x.npy") for s in ("train", "val")])
    y = np.concatenate([np.load(out / f"{s}-y.npy") for s in ("train", "val")])
    assert x.shape == (48, 32, 32, 3) and sorted(set(y)) == [0, 1]  # 24 fake + 24 real: the first copy stays
