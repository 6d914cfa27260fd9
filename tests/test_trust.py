"""dfcl.measure.trust on score and feature distributions whose answers are known."""
import math
import shutil

import numpy as np
import pytest
import torch

from dfcl.config import packaged_params
from dfcl.measure.trust import (
    Calibration,
    Trust,
    answer,
    choose_band,
    coverage,
    ece,
    fit_calibration,
    fit_feature_space,
    logit,
    too_small,
)


def overconfident(n: int, seed: int):
    """Labels drawn with probability q, reported as sigmoid(4 logit q): far too sure."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.05, 0.95, n)
    y = (rng.uniform(size=n) < q).astype(int)
    p = 1 / (1 + np.exp(-4 * logit(q)))
    return y, p


def test_platt_scaling_lowers_the_calibration_error_of_an_overconfident_model():
    y, p = overconfident(3000, 0)
    calibration = fit_calibration(y, p)
    assert 0.15 < calibration.a < 0.4  # undoes the factor 4
    y2, p2 = overconfident(3000, 1)  # fresh faces of the same model
    before, after = ece(y2, p2), ece(y2, calibration(p2))
    assert before > 0.15 and after < 0.04, (before, after)
    # monotone: every ranking, so the AUC, is kept
    assert (np.argsort(calibration(p2), kind="stable") == np.argsort(p2, kind="stable")).all()


def test_calibration_of_one_class_or_a_reversed_model_is_the_identity():
    assert fit_calibration(np.ones(10), np.linspace(0.1, 0.9, 10)) == Calibration()
    y = np.array([0, 1] * 50)
    assert fit_calibration(y, np.where(y == 1, 0.2, 0.8)) == Calibration()


def test_the_band_reaches_its_precision_on_each_side_and_leaves_the_middle_uncertain():
    rng = np.random.default_rng(0)

    def draw(n):
        y = rng.uniform(size=n) < 0.6
        s = np.where(y, rng.normal(1.0, 1.0, n), rng.normal(-1.0, 1.0, n))
        return y.astype(int), 1 / (1 + np.exp(-s))

    y, p = draw(4000)
    lo, hi = choose_band(y, p, 0.95, threshold=0.5)
    assert lo < 0.5 < hi
    y2, p2 = draw(4000)
    fake, real = p2 >= hi, p2 < lo
    assert y2[fake].mean() >= 0.93 and (1 - y2[real]).mean() >= 0.93  # held-out draw, small sampling slack
    c = coverage(y2, [answer(v, (lo, hi)) for v in p2])
    assert 0.3 < c["coverage"] < 0.9 and c["answered_accuracy"] >= 0.93
    # a coin flip never reaches 0.95: no answers at all, rather than wrong ones
    coin_y, coin_p = rng.integers(0, 2, 1000), rng.uniform(size=1000)
    lo, hi = choose_band(coin_y, coin_p, 0.95, 0.5)
    assert coverage(coin_y, [answer(v, (lo, hi)) for v in coin_p])["coverage"] < 0.05


BASE = np.full(32, 3.0)  # features of a network are not centred at zero: cosine distances need that


def clusters(rng, centres, n):
    return np.concatenate([rng.normal(BASE + c, 1.0, (n, 32)) for c in centres]), np.repeat(np.arange(len(centres)), n)


def test_novelty_flags_an_unlearned_cluster_and_attribution_names_the_nearest_method(tmp_path):
    rng = np.random.default_rng(0)
    centres = [np.zeros(32), np.r_[4, np.zeros(31)], np.r_[0, 4, np.zeros(30)]]
    f, labels = clusters(rng, centres, 300)
    space = fit_feature_space(f, labels, ["real", "A", "B"], components=32)  # all: PCA is a rotation here
    val, _ = clusters(rng, centres, 100)
    trust = Trust(space=space, band=(0.3, 0.7), novelty_threshold=float(np.quantile(space.novelty(val), 0.95)))
    learned, which = clusters(rng, centres, 100)
    unseen = rng.normal(BASE + np.r_[0, 0, 6, 0, -3, np.zeros(27)], 1.0, (300, 32))
    seen_rate = np.mean([r["novel"] for r in trust.judge(np.full(len(learned), 0.9), learned)])
    unseen_rate = np.mean([r["novel"] for r in trust.judge(np.full(len(unseen), 0.9), unseen)])
    assert seen_rate < 0.1 and unseen_rate > 0.8, (seen_rate, unseen_rate)
    fakes = trust.judge(np.full(200, 0.9), learned[which > 0])
    right = np.mean([r["resembles"]["method"] == "AB"[w - 1] for r, w in zip(fakes, which[which > 0])])
    assert right > 0.9
    # what travels with the model: the same judgements after a save and load
    again = Trust.load(trust.save(tmp_path / "trust.safetensors"))
    mixed = np.concatenate([learned[:25], unseen[:25]])
    before, after = trust.judge(np.full(50, 0.5), mixed), again.judge(np.full(50, 0.5), mixed)
    assert [(r["novel"], r["resembles"]["method"], r["verdict"]) for r in before] == \
        [(r["novel"], r["resembles"]["method"], r["verdict"]) for r in after]
    assert [r["novelty"] for r in after] == pytest.approx([r["novelty"] for r in before], abs=2e-3)


def test_a_trust_file_that_is_not_one_is_refused(tmp_path):
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(1, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a trust file"):
        Trust.load(tmp_path / "other.safetensors")
    assert math.isinf(Trust().novelty_threshold) and Trust().judge(np.array([0.7]), None)[0]["verdict"] == "fake"


def test_the_learner_fits_trust_for_the_model_a_run_ends_with_from_the_scores_it_took_and_it_travels(demo_data, tmp_path):
    from dfcl.config import ConfigError
    from dfcl.learning.learner import Learner
    from dfcl.serving.detector import load_detector
    from tests.conftest import small_params
    from tests.test_learner import specs_for

    params = small_params("train.epochs=2")
    first, second = specs_for(demo_data, tmp_path, ["BlendSwap", "GANUpsample"])
    learner = Learner(tmp_path / "learner", params, tmp_path)
    # More to learn in this run: no trust yet (it would be fit for weights about to change).
    results = learner.learn(first, upcoming=[second])
    assert learner.trust is None and "trust" not in results
    assert learner.last_results() and "trust" not in learner.last_results()
    results = learner.learn(second)
    # Fit from the validation and test scores the threshold and the evaluation took: the same
    # trust, to the last figure, as scoring every face again.
    assert learner.trust.summary() == learner.fit_trust(learner.history.experiences).summary()
    assert learner.trust.report == learner.fit_trust(learner.history.experiences).report
    trust = results["trust"]
    assert trust["classes"] == ["real", "BlendSwap", "GANUpsample"]
    assert {"val_ece", "val_ece_raw", "test_ece", "test_coverage", "test_attribution_accuracy"} <= set(trust)
    assert trust["band"][0] <= trust["threshold"] <= trust["band"][1]
    assert learner.history.experiences[0].learned_at.startswith("20")
    learner.save()
    detector = load_detector(str(tmp_path / "learner"), params, tmp_path)
    assert detector.trust.summary() == learner.trust.summary()
    # a set it never trained on is measured into the model card; one it trained on is refused
    learner.params = small_params("train.epochs=2", "trust.unseen_sets=[MouthWarp/MouthWarp]")
    specs_for(demo_data, tmp_path, ["MouthWarp"])
    unseen = learner.fit_trust(learner.history.experiences).report["unseen"]["MouthWarp/MouthWarp"]
    assert {"test_coverage", "test_answered_accuracy", "test_real_called_fake"} <= set(unseen)
    learner.params = small_params("train.epochs=2", "trust.unseen_sets=[BlendSwap/BlendSwap]")
    with pytest.raises(ConfigError, match="faces of a set this model learned"):
        learner.fit_trust(learner.history.experiences)
    # real photos of a kind it never trained on: the reference of the rule on real photos from
    # elsewhere, travelling with the model; never a set it learned, nor one it measures as unseen
    learner.params = small_params("train.epochs=2", "trust.foreign_reals=[MouthWarp/MouthWarp]")
    foreign = learner.fit_trust(learner.history.experiences)
    assert foreign.foreign == ["MouthWarp/MouthWarp"] and math.isfinite(foreign.elsewhere)
    reals = sum(int((np.load(p) == 0).sum()) for p in (tmp_path / "MouthWarp" / "MouthWarp").glob("*-y.npy"))
    assert foreign.report["foreign_faces"] == min(reals, learner.params.trust.novelty_reference)
    for listed, why in (("trust.foreign_reals=[GANUpsample/GANUpsample]", "faces this model learned"),
                        ("trust.foreign_reals=[nowhere/here]", "holds no extracted faces")):
        learner.params = small_params("train.epochs=2", listed, "trust.unseen_sets=[MouthWarp/MouthWarp]")
        with pytest.raises(ConfigError, match=why):
            learner.fit_trust(learner.history.experiences)
    learner.params = small_params("train.epochs=2", "trust.foreign_reals=[MouthWarp/MouthWarp]",
                                  "trust.unseen_sets=[MouthWarp/MouthWarp]")
    with pytest.raises(ConfigError, match="measures as unseen"):
        learner.fit_trust(learner.history.experiences)
    assert [r["method"] for r in detector.info["learned"]] == ["BlendSwap", "GANUpsample"]


def test_novelty_flags_faces_of_a_set_never_learned_more_than_the_learned_methods_test_faces(tmp_path):
    """Real crops: a detector that learned FF++ Deepfakes, asked about DFDC faces (other actors,
    other forgeries). The product's backbone (Lite0 from ImageNet), faces re-framed as by default:
    the novelty score was chosen on its features (benchmarks/results/trust_cpu.md)."""
    from sklearn.metrics import roc_auc_score

    from dfcl.data.arrays import ExperienceSpec
    from dfcl.data.extraction import extract_dataset
    from dfcl.learning.learner import Learner
    from dfcl.measure.trust import scores_and_features
    from tests.conftest import shared_data, small_params

    framing = ["data.image_size=128", "faces.detect_in_images=true"]
    params = small_params(*framing, "data.max_per_class=80", "train.epochs=2", "model.name=efficientnet_lite0",
                          "model.pretrained=imagenet", "train.backbone_lr_scale=0.3")
    # The one method it learns and the reals: MTCNN on the other methods' faces would be most of the test's time.
    ffpp = tmp_path / "ffpp-deepfakes"
    for split in ("train", "test"):
        for cls in ("youtube", "Deepfakes"):
            shutil.copytree(shared_data("ffpp-crops") / split / cls, ffpp / split / cls)
    extract_dataset(ffpp, tmp_path / "ffpp", params, "ffpp", cache_dir=tmp_path / "cache")
    paths = {f"{split}_{a}": f"ffpp/Deepfakes/{split}-{a}.npy" for split in ("train", "val", "test") for a in "xy"}
    spec = ExperienceSpec(key="ffpp/Deepfakes", dataset="ffpp", method="Deepfakes", version="test", **paths)
    learner = Learner(tmp_path / "learner", params, tmp_path)
    learner.learn(spec)
    extract_dataset(shared_data("dfdc-crops"), tmp_path / "dfdc", small_params(*framing, "data.max_per_class=30"),
                    "dfdc", cache_dir=tmp_path / "cache")
    model, trust = learner.strategy.model, learner.trust

    def judged(x):
        p, f, _ = scores_and_features(model, x)
        return trust.judge(p, f)

    learned = judged(np.load(tmp_path / spec.test_x))
    unseen = judged(np.concatenate([np.load(f) for f in sorted((tmp_path / "dfdc").rglob("*-x.npy"))]))
    auroc = roc_auc_score([0] * len(learned) + [1] * len(unseen), [r["novelty"] for r in learned + unseen])
    learned, unseen = np.mean([r["novel"] for r in learned]), np.mean([r["novel"] for r in unseen])
    print(f"novel: learned test faces {learned:.2f}, DFDC faces {unseen:.2f}, AUROC {auroc:.3f}")
    assert learned < 0.25 and unseen > learned + 0.25 and auroc > 0.7, (learned, unseen, auroc)


def scored(name, rng, centres_and_labels, n, p_of):
    """A set of faces with features around `centres` and P(fake) from `p_of(label)`."""
    from dfcl.measure.trust import Scored

    f = np.concatenate([rng.normal(BASE + c, 1.0, (n, 32)) for c, _ in centres_and_labels])
    y = np.repeat([lab for _, lab in centres_and_labels], n)
    return Scored(name, y, np.array([p_of(lab, rng) for lab in y]), f)


def confident(label, rng):
    """A good detector's raw P(fake) on the faces it learned: mostly sure, sometimes wrong."""
    return float(np.clip(rng.normal(0.85 if label else 0.15, 0.15), 0.001, 0.999))


SETTINGS = packaged_params().trust.model_copy(update={
    "precision": 0.95, "novelty_quantile": 0.95, "novelty_k": 10, "novelty_reference": 1000,
    "components": 32, "fit_faces": 400, "keep": 0.8, "flip": False})
REAL, FAKE, ELSEWHERE = np.zeros(32), np.r_[5, np.zeros(31)], np.r_[0, 0, 7, -4, np.zeros(28)]


def test_an_answer_whose_face_is_unlike_the_learned_faces_of_its_class_is_withheld_at_the_coverage_fit(tmp_path):
    """The rule is fit on validation faces alone: it keeps `trust.keep` of the band's answers there
    and withholds answers on a kind of real face it never saw, which the model calls fake with
    confidence (the sharp portrait of the issue)."""
    from dfcl.measure.trust import fit_scored

    rng = np.random.default_rng(1)
    train = scored("A", rng, [(REAL, 0), (FAKE, 1)], 300, confident)
    val = scored("A", rng, [(REAL, 0), (FAKE, 1)], 200, confident)
    test = scored("A", rng, [(REAL, 0), (FAKE, 1)], 200, confident)
    trust = fit_scored(train.features, train.y, ["A"], [val], [test], 0.5, SETTINGS)
    # without the cut the band alone answers more of the learned faces: the rule withheld what it may
    band_only = coverage(val.y, [answer(float(q), trust.band) for q in trust.calibration(val.p)])["coverage"]
    assert 0.8 * band_only <= trust.report["val_coverage"] < band_only and trust.report["unfamiliar_level"] < 0.95
    assert trust.report["test_coverage"] > 0.4 and trust.report["test_answered_accuracy"] >= 0.95

    portraits = rng.normal(BASE + ELSEWHERE, 1.0, (200, 32))
    judged = trust.judge(np.full(200, 0.999), portraits)
    assert all(j["verdict"] == "uncertain" and j["withheld"] == "fake" for j in judged)
    assert judged[0]["why"] == "unlike the forgeries it learned"
    assert coverage(np.zeros(200), [j["verdict"] for j in judged])["real_called_fake"] == 0
    # the same faces without the cut (a trust file from before it): answered fake, every one
    assert all(j["verdict"] == "fake" for j in Trust(band=trust.band, calibration=trust.calibration).judge(
        np.full(200, 0.999), portraits))

    again = Trust.load(trust.save(tmp_path / "trust.safetensors"))
    assert again.unfamiliar == pytest.approx(trust.unfamiliar) and again.learned == ["A"] and again.flip is False
    assert (again.space.reference_fake == trust.space.reference_fake).all()
    assert [j["verdict"] for j in again.judge(test.p, test.features)] == \
        [j["verdict"] for j in trust.judge(test.p, test.features)]


def test_an_answer_whose_face_and_mirror_image_disagree_is_withheld_at_the_cost_fit(tmp_path):
    """With flip, the cut on the views' spread is fit on validation faces alone: it withholds about
    `trust.views_cost` of the band's answers there, and answers whose two views read differently
    (as on faces unlike the learned ones) are withheld with the reason in words."""
    from dfcl.measure.trust import VIEWS, Scored, fit_scored

    rng = np.random.default_rng(2)
    settings = SETTINGS.model_copy(update={"flip": True, "views_cost": 0.1})

    def with_views(s, gap):
        return Scored(s.name, s.y, s.p, s.features, np.abs(rng.normal(0, gap, len(s.y))))

    train = scored("A", rng, [(REAL, 0), (FAKE, 1)], 300, confident)
    val = with_views(scored("A", rng, [(REAL, 0), (FAKE, 1)], 300, confident), 0.3)
    test = with_views(scored("A", rng, [(REAL, 0), (FAKE, 1)], 300, confident), 0.3)
    trust = fit_scored(train.features, train.y, ["A"], [val], [test], 0.5, settings)
    assert 0 < trust.views < math.inf
    band = np.array([answer(float(q), trust.band) != "uncertain" for q in trust.calibration(val.p)])
    withheld = np.array([j.get("why") == VIEWS for j in trust.judge(val.p, None, val.spread)])
    assert withheld[band].mean() == pytest.approx(0.1, abs=0.02) and not withheld[~band].any()

    gaps = np.full(len(test.y), 5.0)  # every face's mirror image read very differently
    judged = trust.judge(test.p, test.features, gaps)
    assert all(j["verdict"] == "uncertain" for j in judged)
    assert sum(j.get("why", "").endswith(VIEWS) for j in judged) == sum(bool(j.get("withheld")) for j in judged) > 0
    # scored one way (no spread), or fit without flip: the rule does not apply
    assert [j["verdict"] for j in trust.judge(test.p, test.features)] != [j["verdict"] for j in judged]
    assert fit_scored(train.features, train.y, ["A"], [val], [], 0.5, SETTINGS.model_copy(
        update={"views_cost": 0.0})).views == math.inf

    again = Trust.load(trust.save(tmp_path / "trust.safetensors"))
    assert again.views == pytest.approx(trust.views) and again.flip is True


def test_a_fake_answer_on_a_face_more_like_real_photos_from_elsewhere_is_withheld(tmp_path):
    """The case the distance to the learned faces misses: real photos of another kind that the model
    calls fake AND finds familiar (they lie by its learned fakes, a little apart). With real faces of
    that kind as a reference (trust.foreign_reals), their "fake" answers are withheld, held-out ones
    included, at the cost fit on validation faces (about 1 - trust.foreign_keep of the fake answers);
    without the reference nothing changes."""
    from dfcl.measure.trust import ELSEWHERE, Scored, fit_scored

    rng = np.random.default_rng(3)
    settings = SETTINGS.model_copy(update={"keep": 1.0, "foreign_keep": 0.9})
    other_camera = FAKE + np.r_[0, 3.0, np.zeros(30)]  # beside the learned fakes
    train = scored("A", rng, [(REAL, 0), (FAKE, 1)], 300, confident)
    val = scored("A", rng, [(REAL, 0), (FAKE, 1)], 300, confident)
    reference = Scored("photos", np.zeros(300, int), np.full(300, 0.999), rng.normal(BASE + other_camera, 1.0, (300, 32)))
    held_out = rng.normal(BASE + other_camera, 1.0, (200, 32))

    without = fit_scored(train.features, train.y, ["A"], [val], [], 0.5, settings)
    assert math.isinf(without.elsewhere) and without.space.foreign is None
    assert np.mean([j["verdict"] == "fake" for j in without.judge(np.full(200, 0.999), held_out)]) > 0.8  # familiar

    trust = fit_scored(train.features, train.y, ["A"], [val], [], 0.5, settings, foreign=[reference])
    assert trust.foreign == ["photos"] and trust.report["foreign_faces"] == 300
    judged = trust.judge(np.full(200, 0.999), held_out)
    assert np.mean([j["verdict"] == "fake" for j in judged]) < 0.1
    # withheld for that reason, in words (the few the distance to the learned fakes withheld already keep theirs)
    assert np.mean([ELSEWHERE.format("photos") in j.get("why", "") for j in judged]) > 0.7
    fake_answers = [j for j in trust.judge(val.p, val.features) if j.get("withheld", j["verdict"]) == "fake"]
    withheld = np.mean([ELSEWHERE.format("photos") in j.get("why", "") for j in fake_answers])
    assert withheld == pytest.approx(0.1, abs=0.03)
    # a "real" answer is never withheld by it
    assert not any(ELSEWHERE.format("photos") in j.get("why", "") for j in trust.judge(np.full(200, 0.001), held_out))

    again = Trust.load(trust.save(tmp_path / "trust.safetensors"))
    assert again.elsewhere == pytest.approx(trust.elsewhere) and again.foreign == ["photos"]
    assert [j["verdict"] for j in again.judge(np.full(200, 0.999), held_out)] == [j["verdict"] for j in judged]


def test_a_fake_answer_on_a_face_sharper_than_the_learned_fake_answers_is_withheld(tmp_path):
    """A sharp real photo of a kind never learned, answered fake with confidence and familiar to the
    features: its "fake" answer is withheld when the face is sharper than the validation faces'
    "fake" answers were (about 1 - trust.sharp_keep of those withheld); "real" answers never are;
    without the faces' sharpness, or with sharp_keep 1, nothing changes."""
    from dataclasses import replace

    from dfcl.measure.trust import SHARPER, fit_scored

    rng = np.random.default_rng(5)
    settings = SETTINGS.model_copy(update={"keep": 1.0, "sharp_keep": 0.9})
    train = scored("A", rng, [(REAL, 0), (FAKE, 1)], 300, confident)
    val = scored("A", rng, [(REAL, 0), (FAKE, 1)], 300, confident)
    val = replace(val, sharp=rng.normal(3.5, 0.5, len(val.y)))  # log Laplacian variance of a soft camera's faces
    sharp_photos = rng.normal(BASE + FAKE, 1.0, (200, 32))      # familiar: by the learned fakes
    sharp = rng.normal(6.0, 0.3, 200)

    trust = fit_scored(train.features, train.y, ["A"], [val], [], 0.5, settings)
    fakes = trust.calibration(val.p) >= trust.band[1]
    assert trust.sharper == pytest.approx(np.quantile(val.sharp[fakes], 0.9))
    judged = trust.judge(np.full(200, 0.999), sharp_photos, sharp=sharp)
    assert all(j["verdict"] == "uncertain" and j["withheld"] == "fake" and j["why"] == SHARPER for j in judged)
    # sharpness unknown: answered (but for the few the distance to the learned fakes withholds at keep 1.0's level)
    assert np.mean([j["verdict"] == "fake" for j in trust.judge(np.full(200, 0.999), sharp_photos)]) > 0.9
    assert not any(j.get("why") == SHARPER for j in trust.judge(np.full(200, 0.001), sharp_photos, sharp=sharp))
    answered_fake = [j for j in trust.judge(val.p, val.features, sharp=val.sharp) if j.get("withheld", j["verdict"]) == "fake"]
    assert np.mean([j.get("why") == SHARPER for j in answered_fake]) == pytest.approx(0.1, abs=0.02)
    assert trust.report["val_coverage"] < fit_scored(train.features, train.y, ["A"], [replace(val, sharp=None)], [], 0.5,
                                                     settings).report["val_coverage"]

    again = Trust.load(trust.save(tmp_path / "trust.safetensors"))
    assert again.sharper == pytest.approx(trust.sharper) and again.summary()["sharper"] == round(trust.sharper, 4)
    assert math.isinf(fit_scored(train.features, train.y, ["A"], [val], [], 0.5,
                                 settings.model_copy(update={"sharp_keep": 1.0})).sharper)


def test_sharpness_is_lower_for_a_blurred_face_and_finite_for_a_flat_one():
    import cv2

    from dfcl.measure.trust import sharpness

    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    faces[1] = cv2.GaussianBlur(faces[0], (0, 0), 1.5)
    faces[2] = 128
    values = sharpness(faces)
    assert values.shape == (3,) and np.isfinite(values).all()
    assert values[0] > values[1] > values[2]


def test_a_trust_file_from_before_the_abstention_loads_without_cuts(tmp_path):
    """Files written before: no reference labels, no cuts; they answer as they did."""
    import json

    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    f, labels = clusters(rng, [REAL, FAKE], 50)
    space = fit_feature_space(f, labels, ["real", "A"], components=8)
    tensors = {k: getattr(space, k).astype(np.float32) for k in ("mean", "projection", "centres")}
    tensors["reference"] = space.reference.astype(np.float16)
    header = {"calibration": {"a": 1.0, "b": 0.0}, "threshold": 0.5, "band": [0.3, 0.7], "precision": 0.95,
              "novelty_threshold": 0.2, "classes": ["real", "A"], "k": 10, "report": {}}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={"format": "dfcl-trust-1", "json": json.dumps(header)})
    old = Trust.load(tmp_path / "old.safetensors")
    assert old.unfamiliar == (math.inf, math.inf) and old.space.reference_fake is None and not old.flip
    assert old.views == math.inf
    assert old.judge(np.array([0.9]), f[:1])[0]["verdict"] == "fake"
    assert old.population() == "on validation faces of the 1 method it learned"


def test_flip_averaging_scores_the_mean_of_a_face_and_its_mirror():
    import torch

    from dfcl.measure.trust import scores_and_features
    from models import create_model

    torch.manual_seed(0)
    model = create_model("small_cnn", image_size=32).eval()
    x = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    p, f, none = scores_and_features(model, x)
    pm, fm, _ = scores_and_features(model, np.ascontiguousarray(x[:, :, ::-1]))
    pf, ff, spread = scores_and_features(model, x, flip=True)
    assert not np.allclose(p, pm)  # a network that is not mirror-symmetric: the two views differ
    assert pf == pytest.approx((p + pm) / 2, abs=1e-6) and ff == pytest.approx((f + fm) / 2, abs=1e-5)
    assert none is None and spread == pytest.approx(np.abs(np.log(p / (1 - p)) - np.log(pm / (1 - pm))), abs=1e-4)


def test_the_trust_benchmark_measures_both_rules_on_a_learner_and_an_unseen_set(demo_data, tmp_path, monkeypatch):
    """benchmarks/trust.py end to end on the synthetic sequence (so it cannot rot): each rule's
    knob swept, the views rule reported with flip only, faces cut off by the picture's edge withheld as
    the product withholds them, the plot beside the numbers."""
    import json

    from benchmarks import trust as bench
    from dfcl.learning.learner import Learner
    from tests.conftest import SMALL, small_params
    from tests.test_learner import specs_for

    params = small_params("train.epochs=1")
    first, second, unseen = specs_for(demo_data, tmp_path, ["BlendSwap", "GANUpsample", "MouthWarp"])
    learner = Learner(tmp_path / "learner", params, tmp_path)
    for spec in (first, second):
        learner.learn(spec)
    learner.save()
    monkeypatch.setattr(bench, "WORK", tmp_path / "cache")
    # Every unseen face cut off by its picture's edge, far more than any learned face: the product
    # withholds all of them ("cut off"), so the benchmark must too.
    import pandas as pd

    manifest = tmp_path / "MouthWarp" / "MouthWarp" / "manifest.csv"
    rows = pd.read_csv(manifest, keep_default_na=False)
    rows["inside"] = 0.2
    rows.to_csv(manifest, index=False)
    # ...and every face cut from 3 px across (its training split: the foreign reals below): below the
    # face-size floor fit on the learned validation faces, so withheld as "too small", as detect would.
    rows = pd.read_csv(manifest, keep_default_na=False)
    rows[["x1", "y1", "x2", "y2"]] = [0, 0, 4, 4]
    rows.to_csv(manifest, index=False)
    overrides = [a for o in [*SMALL, "train.epochs=1"] for a in ("-S", o)]
    assert bench.main(["--learner", str(tmp_path / "learner"), "--root", str(tmp_path), *overrides, "--tag", "smoke",
                       "--unseen", f"MouthWarp={tmp_path / 'MouthWarp' / 'MouthWarp'}:test", "--out", str(tmp_path),
                       "--foreign", f"Elsewhere={tmp_path / 'MouthWarp' / 'MouthWarp'}:train"]) == 0
    report = json.loads((tmp_path / "trust_smoke.json").read_text())
    assert set(report["sweep"]["plain"]) == {str(k) for k in bench.KEEP_SWEEP}
    assert set(report["sweep"]["flip"]) == {str(k) for k in bench.VIEWS_SWEEP}
    # the foreign reals: half the rule's reference, half measured as a set never trained on
    assert set(report["sweep"]["foreign"]) == {str(k) for k in bench.FOREIGN_SWEEP}
    assert report["variants"]["plain"]["trust"]["foreign"] == ["Elsewhere"]
    held_out = report["variants"]["plain"]["unseen"]["Elsewhere (held out)"]
    assert held_out["faces"] > 0 and held_out["fake"] == 0
    min_side = report["variants"]["plain"]["trust"]["min_side"]
    assert min_side > 3 and held_out["withheld_small"] == 1.0, min_side
    assert report["variants"]["plain"]["trust"]["size_bands"]  # fit as the learner fits them
    swept = {k: v["Elsewhere (held out)"]["real_called_fake"] for k, v in report["sweep"]["foreign"].items()}
    assert swept["0.6"] <= swept["1.0"]  # the rule only ever withholds "fake" answers
    flip, plain = report["variants"]["flip"], report["variants"]["plain"]
    assert plain["trust"]["views"] is None and flip["trust"]["views"] is not None
    assert 0 <= flip["unseen"]["MouthWarp"]["withheld_views"] <= 1 and plain["unseen"]["MouthWarp"]["withheld_views"] == 0
    assert report["cut_off"]["min_inside"] > 0.2
    for v in (flip, plain):
        assert v["unseen"]["MouthWarp"]["withheld_cut_off"] == 1 and v["unseen"]["MouthWarp"]["coverage"] == 0
        assert v["learned"]["learned (all test faces)"]["withheld_cut_off"] < 0.05
        pooled = v["learned"]["learned (all test faces)"]
        assert 0 < pooled["ece_floor"] < 0.5 and "ece_floor" not in report["sweep"]["plain"]["1.0"]["learned (all test faces)"]
    assert (tmp_path / "trust_smoke.png").stat().st_size > 0
    assert "`trust.views_cost`" in (tmp_path / "trust_smoke.md").read_text()
    maps = report["calibration_maps"]  # each map's ECE on the pooled learned test faces and on each set
    assert set(maps) == {"raw", "platt (the product)", "temperature", "beta", "isotonic", "platt on test (a bound)"}
    assert all(0 <= m["ece"] <= 1 and 0 < m["floor"] < 0.5 for m in maps.values())
    assert set(maps["raw"]) - {"ece", "floor"} == set(plain["learned"]) - {"learned (all test faces)"}
    assert maps["raw"]["ece"] == pytest.approx(plain["learned"]["learned (all test faces)"]["ece_raw"])
    assert "## Calibration: which map" in (tmp_path / "trust_smoke.md").read_text()


class FineGrain(torch.nn.Module):
    """A detector that reads fine-grained noise alone (fake: a face with pixel noise): what a
    small face, upsampled, no longer carries."""

    def forward(self, x):
        blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        grain = (x - blurred).abs().mean((1, 2, 3))
        return torch.stack([torch.zeros_like(grain), 2000 * (grain - 0.008)], 1)


def test_a_band_per_face_size_is_chosen_on_validation_faces_shrunk_to_it(tmp_path):
    """fit_size_bands scores validation faces as if cut from ever fewer pixels and chooses the band
    again at each size: its answers there keep the promised precision, and where the forgery's
    trace is gone (grain in 4-px blocks, lost below ~38 px) the band stops answering "fake"."""
    from dfcl.measure.trust import fit_size_bands, shrunk

    rng = np.random.default_rng(0)
    smooth = np.linspace(60, 200, 64)[None, :, None] + np.linspace(0, 40, 64)[:, None, None]
    x = np.repeat(smooth[None], 200, 0) + rng.normal(0, 3, (200, 1, 1, 3))
    y = np.r_[np.zeros(100), np.ones(100)].astype(int)
    x[y == 1] += rng.normal(0, 25, (100, 16, 16, 3)).repeat(4, 1).repeat(4, 2)  # grain in 4-px blocks
    x = np.clip(x, 0, 255).astype(np.uint8)
    trust = Trust(band=(0.5, 0.5))
    scores = {}
    bands, floor, fitted = fit_size_bands(trust, FineGrain().eval(), x, y, scores=scores)
    by_side = fitted["answered_accuracy_by_side"]
    assert list(bands) == [64, 51, 38, 26, 19, 13] and bands[64] == trust.band and floor == 13
    assert all(v >= trust.precision for v in by_side.values())  # each size's band keeps the promise on its faces
    assert fitted["answered_by_side"]["64"] == 200 and fitted["answered_by_side"]["26"] < 200
    assert bands[38][1] <= 1 and bands[26][1] > 1  # fakes still told apart at 38 px, never answered "fake" at 26
    # a second fit of the same faces reuses each size's scores: no model is needed again
    assert fit_size_bands(trust, None, x, y, scores=scores) == (bands, floor, fitted)
    assert shrunk(x[:2], 16).shape == (2, 64, 64, 3)

    trust.size_bands, trust.min_side = bands, floor
    again = Trust.load(trust.save(tmp_path / "t.safetensors"))
    assert again.size_bands == bands and again.min_side == floor
    assert Trust(band=(0.5, 0.5)).summary()["size_bands"] == {}


def test_the_walk_down_the_sizes_ends_where_a_size_answers_too_few_faces():
    """Below the last size whose band answers anything (at least `min_answers` faces), faces are
    too small: `min_side`."""
    from dfcl.measure.trust import fit_size_bands

    y = np.r_[np.zeros(100), np.ones(100)].astype(int)
    x = np.zeros((200, 64, 64, 3), np.uint8)
    scores = {(side, False): (p, None, None, None)
              for side, p in ((64, y * 1.0), (51, y * 0.6 + 0.2), (38, np.full(200, 0.5)), (26, y * 1.0))}
    bands, floor, fitted = fit_size_bands(Trust(band=(0.1, 0.9)), None, x, y, scores=scores)
    assert floor == 51 and set(bands) == {64, 51} and bands[51] == pytest.approx((0.0, 0.8))  # fakes answered, reals (tied) not
    assert fitted["answered_by_side"] == {"64": 200, "51": 100, "38": 0}  # 26 px never looked at
    assert fitted["answered_accuracy_by_side"]["38"] is None
    assert all(type(v) is float for v in fitted["answered_accuracy_by_side"].values() if v is not None)
    # a size answered on fewer faces than `min_answers` ends it too (full size is the model's own band, kept)
    bands, floor, _ = fit_size_bands(Trust(band=(0.1, 0.9)), None, x, y, min_answers=150, scores=scores)
    assert floor == 64 and set(bands) == {64}
    assert fit_size_bands(Trust(band=(0.1, 0.9)), None, x, y, min_answers=500, scores=scores)[1] == 64


def test_a_face_is_answered_by_the_band_of_the_largest_size_at_or_below_its_own(tmp_path):
    """Trust.judge with `sides`: full-size faces (and faces of unknown size) by `band`, smaller ones by
    the band fit at the largest size they reach, below `min_side` withheld as too small; files
    without size bands (before them) answer by `band` down to `min_side`."""
    trust = Trust(band=(0.1, 0.9), size_bands={64: (0.1, 0.9), 38: (0.05, 0.99), 19: (0.0, 1.01)}, min_side=19)
    p = np.full(5, 0.95)
    judged = trust.judge(p, None, sides=[300, 64, 50, 20, 12])
    assert [j["verdict"] for j in judged] == ["fake", "fake", "uncertain", "uncertain", "uncertain"]
    assert [j.get("measured_at") for j in judged] == [None, None, 38, 19, None]
    assert "why" not in judged[2] and judged[4]["why"] == too_small(12, 19) and judged[4]["withheld"] == "fake"
    assert trust.judge(p[:1], None, sides=[math.nan])[0]["verdict"] == "fake"  # no box: the full-size band
    assert "shrunk to 38 px across" in trust.population(38) and "shrunk" not in trust.population()
    old = Trust(band=(0.1, 0.9), min_side=40)
    assert [j["verdict"] for j in old.judge(p[:2], None, sides=[41, 39])] == ["fake", "uncertain"]
    # the file keeps the bands; a damaged header is refused, not half read
    path = trust.save(tmp_path / "t.safetensors")
    assert Trust.load(path).size_bands == trust.size_bands
    import json

    from safetensors.numpy import save_file

    header = {"calibration": {"a": 1.0, "b": 0.0}, "threshold": 0.5, "band": [0.1, 0.9], "precision": 0.95,
              "novelty_threshold": None, "classes": [], "k": 0, "size_bands": {"big": [0, 1]}}
    save_file({"none": np.zeros(1, np.float32)}, str(tmp_path / "bad.safetensors"),
              metadata={"format": "dfcl-trust-1", "json": json.dumps(header)})
    with pytest.raises(ValueError, match="size_bands"):
        Trust.load(tmp_path / "bad.safetensors")


def test_the_cut_off_floor_is_fit_on_how_far_the_learned_training_faces_leave_their_pictures(tmp_path):
    """fit_min_inside: the edge_quantile of the manifests' `inside` over training faces (not
    validation or test), floored so those faces stay answered; 1.0 (any box leaving the picture)
    when no manifest tells; kept with the model."""
    import pandas as pd

    from dfcl.measure.trust import fit_min_inside

    method = tmp_path / "m"
    method.mkdir()
    shares = np.linspace(0.3, 1.0, 101)
    rows = [{"split": "train", "index": i, "inside": v} for i, v in enumerate(shares)]
    rows += [{"split": "test", "index": i, "inside": 0.01} for i in range(50)]  # test faces never fit it
    rows += [{"split": "train", "index": -1, "inside": ""}]  # a skipped file: no face
    pd.DataFrame(rows).to_csv(method / "manifest.csv", index=False)
    floor, fitted = fit_min_inside([method / "train-x.npy"], 0.1)
    assert floor == 0.37 and fitted["inside_faces"] == 101 and fitted["inside_cut_off"] <= 0.1
    assert fit_min_inside([method / "train-x.npy"], 0.0)[0] == 1.0
    old = tmp_path / "old"
    old.mkdir()
    pd.DataFrame([{"split": "train", "index": 0}]).to_csv(old / "manifest.csv", index=False)
    assert fit_min_inside([old / "train-x.npy", tmp_path / "none" / "train-x.npy"], 0.1)[0] == 1.0
    trust = Trust(band=(0.5, 0.5), min_inside=floor)
    assert Trust.load(trust.save(tmp_path / "t.safetensors")).min_inside == 0.37
    assert Trust(band=(0.5, 0.5)).summary()["min_inside"] == 1.0


def test_the_ece_floor_is_what_sampling_alone_gives_a_perfectly_calibrated_model():
    """benchmarks/trust.ece_floor: ECE of labels drawn from the scores themselves. It shrinks as the
    faces grow (sampling noise), and a model calibrated by construction lands near it."""
    from benchmarks.trust import ece_floor
    from dfcl.measure.trust import ece

    rng = np.random.default_rng(1)
    few, many = rng.uniform(0, 1, 150), rng.uniform(0, 1, 15000)
    assert ece_floor(few) > 3 * ece_floor(many)
    assert ece_floor(few) > 0.03  # 150 faces in 15 bins: never near zero, however good the model
    y = (rng.random(len(few)) < few).astype(int)
    assert ece(y, few) < 3 * ece_floor(few)


def benchmarked_learner(demo_data, tmp_path):
    """A learner of the first synthetic method saved in tmp_path/learner (MouthWarp's faces
    extracted beside it, never learned), and the -S arguments it was trained with."""
    from dfcl.learning.learner import Learner
    from tests.conftest import SMALL, small_params
    from tests.test_learner import specs_for

    first, _ = specs_for(demo_data, tmp_path, ["BlendSwap", "MouthWarp"])
    learner = Learner(tmp_path / "learner", small_params(), tmp_path)
    learner.learn(first)
    learner.save()
    return learner, [a for o in SMALL for a in ("-S", o)]


def test_the_evidence_regions_benchmark_hides_the_part_it_says_and_scores_every_set(demo_data, tmp_path):
    """benchmarks/evidence_regions.py end to end on the synthetic sequence (so it cannot rot): every
    probe keeps a face's size and type, a region probe greys exactly the part it names, and the whole
    face's AUC is the model's own on the faces drawn."""
    import json

    from sklearn.metrics import roc_auc_score

    from benchmarks import evidence_regions as bench
    from dfcl.learning.learner import Learner
    from dfcl.measure.trust import scores_and_features
    from tests.conftest import small_params

    face = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    probes = bench.probes()
    for name, (_, change) in probes.items():
        if change is None:  # the statistics probe changes the model, below
            continue
        out = change(face)
        assert out.shape == face.shape and out.dtype == np.uint8, name
    centre, ring = probes["centre half only"][1](face), probes["outer ring only"][1](face)
    assert (centre[8:24, 8:24] == face[8:24, 8:24]).all() and (centre[:8] == bench.GREY).all()
    assert (ring[8:24, 8:24] == bench.GREY).all() and (ring[:8] == face[:8]).all()
    top = probes["top half only"][1](face)
    assert (top[:16] == face[:16]).all() and (top[16:] == bench.GREY).all()

    _, overrides = benchmarked_learner(demo_data, tmp_path)
    assert bench.main(["--learner", str(tmp_path / "learner"), "--root", str(tmp_path), *overrides, "--cap", "10",
                       "--unseen", f"MouthWarp={tmp_path / 'MouthWarp' / 'MouthWarp'}:test", "--tag", "smoke",
                       "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "evidence_regions_smoke.json").read_text())
    assert list(report["auc"]) == list(probes) and set(report["auc"]["grayscale"]) == {"BlendSwap", "MouthWarp"}
    assert report["faces"]["MouthWarp"] == [10, 10] and (tmp_path / "evidence_regions_smoke.png").stat().st_size > 1000
    x, y = bench.drawn(np.load(tmp_path / "MouthWarp" / "MouthWarp" / "test-x.npy"),
                       np.load(tmp_path / "MouthWarp" / "MouthWarp" / "test-y.npy"), 10, 0)
    model = Learner.load(tmp_path / "learner", small_params(), tmp_path).strategy.model.eval()
    assert report["auc"]["whole face"]["MouthWarp"] == pytest.approx(roc_auc_score(y, scores_and_features(model, x)[0]), abs=1e-3)
    assert "| outer ring only |" in (tmp_path / "evidence_regions_smoke.md").read_text()
    # the statistics probe: a copy with the set's own batch-norm averages, the same weights; the model untouched
    before = {k: v.clone() for k, v in model.state_dict().items()}
    same = bench.adapted(model, x)
    first_norm = [m for m in same.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    assert not torch.allclose(first_norm.running_mean, before[[k for k in before if k.endswith("running_mean")][0]])
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in before.items() if not k.split(".")[-1].startswith(("running", "num_batches")))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_the_face_size_benchmark_reads_the_size_bands_as_the_product_fits_them(demo_data, tmp_path):
    """benchmarks/face_size_floor.py on a learner of the synthetic sequence: every size is scanned on
    both splits, and its reading of the product's rule gives the bands and floor the learner
    registered (fit_size_bands on the same validation faces)."""
    import json

    from benchmarks import face_size_floor as bench

    learner, overrides = benchmarked_learner(demo_data, tmp_path)
    assert bench.main(["--learner", str(tmp_path / "learner"), "--root", str(tmp_path), *overrides, "--tag", "smoke",
                       "--out", str(tmp_path)]) == 0

    report = json.loads((tmp_path / "face_size_floor_smoke.json").read_text())
    for split in ("val", "test"):
        rows = report["splits"][split]["rows"]
        assert [r["side"] for r in rows] == [32, 26, 19, 13, 10, 8]
        assert rows[0]["paired_diff_p5"] in (0.0, None)  # full size against itself
    # the product's rule, read on the same faces: its bands are the learner's, and at full size the registered band
    bands = report["size_bands"]
    assert bands["min_side"] == learner.trust.min_side and report["registered_size_bands"]
    assert {str(r["side"]): r["band"] for r in bands["rows"]} == learner.trust.summary()["size_bands"]
    assert bands["rows"][0]["test"] == bands["rows"][0]["test_full_band"]
    assert bands["rows"][0]["test"]["answered"] == report["splits"]["test"]["rows"][0]["answered"]
    assert (tmp_path / "face_size_floor_smoke.png").stat().st_size > 1000
    assert "| size (px) | answered |" in (tmp_path / "face_size_floor_smoke.md").read_text()
