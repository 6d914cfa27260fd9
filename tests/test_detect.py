"""Detection for people through `dfcl detect`, on real files: a FaceForensics++ video, a whole
video frame as a photo, DFDC and StyleGAN face crops, and broken files, scored by a champion
registered by the real retraining flow."""
import csv
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from dfcl.cli import main
from dfcl.serving.detect import aggregate


def test_detect_scores_photos_crops_and_videos_and_reports_broken_files(champion, media, tmp_path, capsys):
    broken = ["text_mp4", "empty", "truncated", "truncated_jpeg", "noface", "unsupported"]
    paths = [str(media[k]) for k in ("video", "photo", "dfdc_fake", "stylegan", *broken)]
    out_json, out_csv, explain = tmp_path / "out.json", tmp_path / "out.csv", tmp_path / "explain"
    rc = main(["detect", *paths, "--json", str(out_json), "--csv", str(out_csv), "--explain", str(explain)])
    printed = capsys.readouterr().out
    assert rc == 1, printed  # some files could not be scored
    assert "version 1, alias champion" in printed
    report = json.loads(out_json.read_text())
    rows = {r["file"]: r for r in report["detections"]}
    assert report["model"]["version"] == "1" and report["model"]["architecture"] == "small_cnn"

    video = rows[str(media["video"])]
    assert video["kind"] == "video" and video["verdict"] in ("fake", "real", "uncertain")
    assert len(video["frames"]) == 16  # faces.frames_per_video, evenly spread over the whole video
    frames = [f["frame"] for f in video["frames"]]
    assert frames == sorted(frames) and frames[-1] > video["video"]["frames"] * 0.9
    scored = [f["p_fake"] for f in video["frames"] if f["p_fake"] is not None]
    assert len(scored) >= 12 and video["p_fake"] == pytest.approx(np.mean(scored), abs=1e-3)  # mean aggregation
    lo, hi = video["band"]  # calibrated P(fake): fake at or above hi, real below lo, uncertain between
    expected = "fake" if video["p_fake"] >= hi else "real" if video["p_fake"] < lo else "uncertain"
    assert video["verdict"] == expected or (video["verdict"] == "uncertain" and (
        "frames disagree" in video["reason"] or video["reason"].startswith("no answer: ")))  # most frames withheld
    # a champion this small may get the identity calibration (its fit would turn scores around): it says so
    assert video["calibrated"] == video["model"]["calibrated"] and video["reason"] and video["novel"] in (True, False)

    photo = rows[str(media["photo"])]
    h, w = cv2.imread(str(media["photo"])).shape[:2]
    assert photo["kind"] == "photo" and len(photo["faces"]) >= 1
    x1, y1, x2, y2 = photo["faces"][0]["box"]
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h and (x2 - x1) < w / 2  # a face inside a larger frame
    assert photo["faces"][0]["score"] > 0.95
    for crop in ("dfdc_fake", "stylegan"):  # a single face filling the image is taken as a crop (a whole-image model)
        assert rows[str(media[crop])]["kind"] == "face crop", rows[str(media[crop])]

    reasons = {k: rows[str(media[k])].get("error", "") for k in broken}
    assert all(rows[str(media[k])]["verdict"] == "error" for k in broken)
    assert "cannot open video: its first bytes are none of the formats" in reasons["text_mp4"]
    assert "cannot open video" in reasons["truncated"]
    assert reasons["truncated_jpeg"].startswith("truncated image: the JPEG ends before its picture does")
    assert reasons["empty"] == "empty file"
    assert "no face found" in reasons["noface"]
    assert "unsupported type '.txt'" in reasons["unsupported"]

    with open(out_csv) as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(paths) and {r["model_version"] for r in table} == {"1"}
    assert len(json.loads(next(r for r in table if r["kind"] == "video")["timeline"])) == 16

    # Evidence: a heatmap per face of a photo, the top frames and the timeline plot of a video.
    assert sorted(p.name for p in explain.glob("frame_face*.png")) == [f"frame_face{i}_p{f['p_fake']:.2f}.png"
                                                                      for i, f in enumerate(photo["faces"])]
    video_maps = [p for p in explain.glob(f"{media['video'].stem}_frame*.png")]
    assert len(video_maps) == 3
    top = sorted(scored, reverse=True)[:3]
    assert sorted(float(p.stem.rsplit("_p", 1)[1]) for p in video_maps) == pytest.approx(sorted(round(t, 2) for t in top), abs=0.006)
    assert (explain / f"{media['video'].stem}_timeline.png").stat().st_size > 1000
    overlay = cv2.imread(str(video_maps[0]))
    assert overlay.shape[0] == overlay.shape[1] >= 64 and overlay.std() > 5


class Tiny(torch.nn.Module):
    """A model whose "fake" logit (sign +1; "real" for -1) grows with the activation of its last
    convolution. `Tiny.interleave`, when set, runs once inside the next forward pass that
    computes gradients (an explanation), before the convolution: another request's scoring
    at the worst moment."""
    interleave = None

    def __init__(self, sign: float):
        super().__init__()
        self.features = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.head = torch.nn.Linear(4, 2)
        with torch.no_grad():
            self.features.weight.fill_(0.1)
            self.head.weight.copy_(torch.tensor([[-sign] * 4, [sign] * 4]))

    def forward(self, x):
        if Tiny.interleave is not None and torch.is_grad_enabled():
            other, Tiny.interleave = Tiny.interleave, None
            with torch.no_grad():
                other()
        return self.head(self.features(x).mean((2, 3)))


def test_heatmaps_show_where_the_evidence_for_fake_is():
    """The heatmap lights up where the image has content (top-left corner) and nowhere else;
    for a model whose activations speak for "real", there is no evidence for fake anywhere."""
    from dfcl.serving.detector import Detector
    from dfcl.serving.explain import heatmaps

    crops = np.zeros((2, 32, 32, 3), np.uint8)
    crops[:, :8, :8] = 255
    maps = heatmaps(Detector(Tiny(1.0).eval(), 32, 0.5, {}), crops)
    assert maps.shape == (2, 32, 32)
    assert maps[:, :8, :8].mean() > 0.5 and maps[:, 16:, 16:].max() < 0.05
    assert heatmaps(Detector(Tiny(-1.0).eval(), 32, 0.5, {}), crops).max() < 1e-6


def test_detect_without_a_champion_says_so_in_one_line(workspace, media, capsys):
    rc = main(["detect", str(media["dfdc_fake"])])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "has the alias 'champion'" in err and "dfcl retrain" in err


def test_video_aggregation_rules():
    from dfcl.config import packaged_params

    d = packaged_params().detect.model_copy(update={"confident_fake": 0.8, "confident_fake_share": 0.4,
                                                    "confident_real": 0.2, "confident_real_share": 0.9})
    p = np.array([0.9] * 5 + [0.1] * 5)  # half the frames confidently fake: the forgery shows in part of it
    assert aggregate(p, "mean", d) == pytest.approx(0.5)
    assert aggregate(p, "confident", d) == pytest.approx(0.9)
    assert aggregate(np.array([0.1] * 19 + [0.6]), "confident", d) == pytest.approx(0.1)
    assert aggregate(np.array([0.5, 0.6]), "confident", d) == pytest.approx(0.55)
    with pytest.raises(ValueError, match="unknown detect.aggregate"):
        aggregate(p, "median", d)


class BoxesFinder:
    """A face finder that finds the faces it is given: (box, landmarks, score) each."""

    def __init__(self, boxes):
        self.boxes = boxes

    def detect_all(self, frames):
        return [[(np.array(b, float), None, 0.99) for b in self.boxes] for _ in frames]


def test_a_face_whose_box_leaves_the_picture_gets_no_answer_and_the_photo_says_why(tmp_path):
    """The issue's photo: a second "face" in the top-left corner, its box running off the picture,
    scored P(fake) 1.00 on a crop of padding. Its crop stays inside the picture (faces.crop_square)
    and its answer is withheld; the photo follows from its faces."""
    from dfcl.measure.trust import CUT_OFF, Trust, too_small
    from dfcl.serving.detect import FaceScorer, cut_off, photo_verdict
    from dfcl.serving.detector import Detector
    from dfcl.serving.verdicts import table
    from models import create_model
    from tests.conftest import small_params

    assert cut_off([-20, -10, 60, 70], 200, 200) and cut_off([150, 150, 210, 190], 200, 200)
    assert not cut_off([0, 0, 200, 200], 200, 200)
    image = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "photo.png"), image)
    torch.manual_seed(0)
    # every whole face is answered "real" (band: real below 1.01): only the rule can change that
    detector = Detector(create_model("small_cnn").eval(), 32, 0.5, {"uri": "test"}, Trust(band=(1.01, 1.01)))
    scorer = FaceScorer(detector, small_params(), finder=BoxesFinder([[-20, -10, 60, 70], [100, 90, 160, 170]]))
    result = scorer.detect(tmp_path / "photo.png", crop="never")
    edge, whole = result.faces
    assert edge["verdict"] == "uncertain" and edge["withheld"] == "real" and edge["why"] == CUT_OFF
    assert whole["verdict"] == "real" and "why" not in whole
    assert result.verdict == "uncertain" and CUT_OFF in result.reason and "promises nothing" in result.reason
    row = result.to_dict(detector)
    assert row["why"] == CUT_OFF and CUT_OFF in table([row]).splitlines()[1]  # the CLI's line says why, not only the JSON
    # a fake face decides a photo whatever its other faces say; real needs every face answered real
    assert photo_verdict([{"p_fake": 0.2, "verdict": "uncertain", "why": CUT_OFF},
                          {"p_fake": 0.9, "verdict": "fake"}])["verdict"] == "fake"
    assert photo_verdict([{"p_fake": 0.1, "verdict": "real"}, {"p_fake": 0.2, "verdict": "real"}])["p_fake"] == 0.2

    # a model that learned tight crops (trust.min_inside fit on them) answers a face as cut as those
    assert not cut_off([-20, -10, 60, 70], 200, 200, min_inside=0.6)  # 66% of its box inside
    learned_crops = Detector(detector.model, 32, 0.5, {"uri": "test"}, Trust(band=(1.01, 1.01), min_inside=0.6))
    scorer_crops = FaceScorer(learned_crops, small_params(), finder=BoxesFinder([[-20, -10, 60, 70], [-60, -60, 40, 40]]))
    answered, cut = scorer_crops.detect(tmp_path / "photo.png", crop="never").faces
    assert answered["verdict"] == "real" and cut["verdict"] == "uncertain" and cut["why"] == CUT_OFF

    withheld = {"p_fake": 0.1, "verdict": "uncertain", "withheld": "real", "why": CUT_OFF}
    video = scorer.video_verdict([withheld] * 3 + [{"p_fake": 0.1, "verdict": "real"}])
    assert video["verdict"] == "uncertain" and video["why"] == f"3 of 4 frames: {CUT_OFF}"
    assert scorer.video_verdict([withheld] + [{"p_fake": 0.1, "verdict": "real"}] * 3)["verdict"] == "real"
    # a video whose P(fake) falls between the cuts anyway still says that most of its frames were withheld, and why
    between = FaceScorer(Detector(detector.model, 32, 0.5, {"uri": "test"}, Trust(band=(0.05, 0.95))), small_params(),
                         finder=BoxesFinder([]))
    video = between.video_verdict([{**withheld, "p_fake": 0.5}] * 3 + [{"p_fake": 0.5, "verdict": "uncertain"}])
    assert video["verdict"] == "uncertain" and video["why"] == f"3 of 4 frames: {CUT_OFF}"

    # frames withheld for their size give the range of sizes, not one frame's as if all had it
    small = [{"p_fake": 0.1, "verdict": "uncertain", "why": too_small(side, 160)} for side in (142, 118, 131)]
    video = scorer.video_verdict([*small, {**withheld, "why": f"{too_small(150, 160)}; {CUT_OFF}"}, {"p_fake": 0.1, "verdict": "real"}])
    assert video["why"] == f"4 of 5 frames: {too_small('118-150', 160)}"


def test_a_face_smaller_than_the_fitted_floor_gets_no_answer_and_says_its_size(tmp_path):
    """trust.min_side: a face cut from fewer picture pixels across than the model's answers were
    measured to hold down to is withheld, with its size in words; a larger one is answered."""
    from dfcl.measure.trust import Trust
    from dfcl.serving.detect import FaceScorer
    from dfcl.serving.detector import Detector
    from models import create_model
    from tests.conftest import small_params

    image = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "photo.png"), image)
    torch.manual_seed(0)
    detector = Detector(create_model("small_cnn").eval(), 32, 0.5, {"uri": "test"}, Trust(band=(1.01, 1.01), min_side=60))
    params = small_params()
    small_box, large_box = [20, 20, 50, 50], [150, 150, 350, 350]   # 30 and 200 px across
    scorer = FaceScorer(detector, params, finder=BoxesFinder([small_box, large_box]))
    small, large = scorer.detect(tmp_path / "photo.png", crop="never").faces
    side = round(30 * params.faces.margin)
    assert small["verdict"] == "uncertain" and small["withheld"] == "real"
    assert small["why"] == f"face too small: {side} px across in the picture, below the 60 px down to which its " \
                           "answers were measured to hold"
    assert large["verdict"] == "real" and "why" not in large
    # a whole image taken as the face (crop=always) counts the picture's side
    assert scorer.detect(tmp_path / "photo.png", crop="always").faces[0]["verdict"] == "real"


def test_a_small_face_is_answered_by_the_band_of_its_size_and_says_so(tmp_path):
    """trust.size_bands: a face cut from fewer picture pixels than the model's input is answered by
    the band fit at its size (its reason and band say which), one below the smallest such size is
    withheld as too small; a video is answered by the band of its faces' median size."""
    from dfcl.data.faces import square_of
    from dfcl.measure.trust import Calibration, Trust
    from dfcl.serving.detect import FaceScorer
    from dfcl.serving.detector import Detector
    from dfcl.serving.verdicts import table
    from models import create_model
    from tests.conftest import small_params

    image = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "photo.png"), image)
    torch.manual_seed(0)
    # full size: every face "real"; faces of 19-31 px: every face "fake" (lo = hi = 0); 10-18 px: "real" again
    trust = Trust(Calibration(1.0, 1e-9), band=(1.01, 1.01), size_bands={32: (1.01, 1.01), 19: (0.0, 0.0), 10: (1.01, 1.01)},
                  min_side=10)  # calibrated (not the identity map): the table's footer then gives the bands
    detector = Detector(create_model("small_cnn").eval(), 32, 0.5, {"uri": "test"}, trust)
    params = small_params()
    boxes = [[20, 20, 57, 57], [100, 100, 119, 119], [200, 200, 209, 209], [210, 210, 396, 396]]
    scorer = FaceScorer(detector, params, finder=BoxesFinder(boxes))
    result = scorer.detect(tmp_path / "photo.png", crop="never")
    assert [square_of(b, params.faces.margin, (400, 400))[2] for b in boxes] == [26, 13, 6, 130]
    assert [f["verdict"] for f in result.faces] == ["fake", "real", "uncertain", "real"]
    assert "too small: 6 px across" in result.faces[2]["why"]
    # the photo's verdict is its fake face's, promised where that band was measured: at 19 px
    row = result.to_dict(detector)
    assert row["verdict"] == "fake" and row["band"] == [0.0, 0.0]
    assert "shrunk to 19 px across" in row["reason"] and row["measured_on"].endswith("shrunk to 19 px across")
    assert row["measured_at"] == 19 and "19 px: fake >= 0.00, real < 0.00" in table([row])
    assert "shrunk" not in row["model"]["measured_on"]  # the model card keeps the full-size promise
    # a video: the band of its faces' median size
    frames = [{"p_fake": 0.5, "verdict": "fake", "measured_at": 19}] * 3
    assert scorer.video_verdict(frames, [26, 25, 40])["verdict"] == "fake"
    assert scorer.video_verdict(frames, [26, 25, 40])["measured_at"] == 19
    full = scorer.video_verdict([{"p_fake": 0.5, "verdict": "real"}] * 3, [26, 40, 40])
    assert full["verdict"] == "real" and "measured_at" not in full


def test_reasons_say_where_the_promise_was_measured():
    from dfcl.measure.trust import Trust
    from dfcl.serving.detector import Detector
    from dfcl.serving.verdicts import model_card, reason_for

    trust = Trust(band=(0.1, 0.8), learned=["self-blended", "ffpp/Deepfakes"],
                  report={"test_coverage": 0.5, "unseen": {"dfdc/dfdc": {"test_coverage": 0.3}}})
    detector = Detector(torch.nn.Identity(), 32, 0.5, {}, trust)
    fake = reason_for(detector, "fake", 0.97)
    assert "right at least 95% of the time on validation faces of the 2 methods it learned" in fake
    assert "never saw that figure was not measured" in fake
    withheld = reason_for(detector, "uncertain", 1.0, "unlike the real faces it learned")
    assert withheld.startswith("no answer: unlike the real faces it learned, so its P(fake) 1.00 promises nothing")
    card = model_card(detector)
    assert card["measured_on"] == "on validation faces of the 2 methods it learned"
    assert card["measured_unseen"] == {"dfdc/dfdc": {"test_coverage": 0.3}} and card["measured"] == {"test_coverage": 0.5}
    assert card["foreign_reals"] == [] and "real photos of" not in fake
    trust.foreign = ["lfw-faces/lfw-faces"]
    assert model_card(detector)["foreign_reals"] == ["lfw-faces/lfw-faces"]
    assert "resembles the fake faces it learned more than real photos of lfw-faces/lfw-faces;" in reason_for(detector, "fake", 0.97)
    assert "real photos of" not in reason_for(detector, "real", 0.01)
    assert model_card(detector)["synthetic_only"] is False and "synthetic" not in fake
    # a model that learned only the demo's drawn faces says so in every answer; one real method is enough to lift it
    detector.info["learned"] = [{"method": "BlendSwap", "synthetic": True}]
    assert model_card(detector)["synthetic_only"] is True
    assert reason_for(detector, "real", 0.01).endswith("on real photos and videos it was never measured, and its "
                                                       "answers there mean nothing")
    detector.info["learned"].append({"method": "ffpp/Deepfakes", "synthetic": False})
    assert model_card(detector)["synthetic_only"] is False


def test_a_detector_loaded_from_a_file_runs_in_the_layout_it_trained_in(tmp_path):
    """Training and scoring feed channels_last batches; a model loaded from a file comes back in the
    default layout unless the Detector converts it (its answers unchanged)."""
    from dfcl.measure.scoring import fake_probabilities
    from dfcl.serving.detector import load_detector
    from models import create_model
    from models.pyfunc import save_weights
    from tests.conftest import small_params

    model = create_model("small_cnn", width=8).eval()
    path = save_weights(model, tmp_path / "detector.safetensors", {"name": "small_cnn", "arguments": {"width": 8}})
    detector = load_detector(str(path), small_params(), tmp_path)
    convs = [m.weight for m in detector.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not all(w.is_contiguous() for w in convs)
    faces = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    assert torch.allclose(fake_probabilities(detector.model, faces), fake_probabilities(model, faces), atol=1e-5)


@pytest.mark.parametrize("first", ["import dfcl; import numpy", "import numpy; import dfcl"])
def test_openblas_gets_one_thread_beside_torch_unless_the_user_set_it(first):
    """OpenBLAS's idle threads spin after each call and took the cores from the torch work that
    followed (a photo 2x slower after one trust computation on 2 cores): one thread, whichever of
    numpy and dfcl a script imports first; a user's OPENBLAS_NUM_THREADS wins."""
    code = f"{first}; import threadpoolctl; print(sorted({{i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas'}}))"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    ours = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert ours.strip() == "[1]"
    theirs = subprocess.run([sys.executable, "-c", code], env=env | {"OPENBLAS_NUM_THREADS": "2"},
                            capture_output=True, text=True, check=True).stdout
    assert theirs.strip() == "[2]"
