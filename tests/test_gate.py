"""The promotion gate: challenger vs the real champion on the same test faces, per method, with a
paired bootstrap interval: "worse", "better" or "cannot tell"."""
import copy
import dataclasses
import math
import shutil
import time

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR
from scipy.stats import norm

from dfcl.learning.learner import Learner
from dfcl.measure import bootstrap, gate
from dfcl.measure.tables import decision_plot, decision_table
from dfcl.ops.registry import alias_version
from dfcl.ops.tracking import log_detector
from tasks.promotion_gate import promotion_gate
from tests.conftest import _use_workspace, small_params
from tests.test_learner import specs_for


# -- the bootstrap, on cases with a known answer --------------------------------------------
def test_interval_covers_the_true_auc_difference():
    # Scores ~ N(d, 1) for fakes, N(0, 1) for reals: AUC = Phi(d / sqrt 2) exactly.
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(3000), np.ones(3000)].astype(int)
    noise = rng.normal(size=len(y))
    new, old = noise + 1.0 * y, noise + 0.8 * y  # paired: the same faces, the same noise
    r = bootstrap.paired_difference(y, new, old, n_boot=500)
    truth = norm.cdf(1.0 / np.sqrt(2)) - norm.cdf(0.8 / np.sqrt(2))
    assert r["low"] < truth < r["high"] and r["low"] > 0
    assert bootstrap.verdict(r["low"], r["high"], 0.0) == "better"
    same = bootstrap.paired_difference(y, old, old, n_boot=200)
    assert same["low"] == same["high"] == 0 and bootstrap.verdict(same["low"], same["high"], 0.0) == "cannot tell"


def test_faces_of_one_video_move_together():
    rng = np.random.default_rng(2)
    videos = np.repeat(np.arange(100), 10)  # ten identical faces per video
    y = np.repeat(rng.integers(0, 2, 100), 10)
    new, old = np.repeat(rng.random(100), 10) + 0.3 * y, np.repeat(rng.random(100), 10) + 0.3 * y
    by_face = bootstrap.paired_difference(y, new, old, n_boot=400)
    by_video = bootstrap.paired_difference(y, new, old, videos, n_boot=400)
    assert by_video["high"] - by_video["low"] > 2 * (by_face["high"] - by_face["low"])


def test_bootstrap_of_ten_thousand_faces_is_fast():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 10_000)
    start = time.process_time()
    bootstrap.paired_difference(y, rng.random(10_000) + y, rng.random(10_000) + y, n_boot=1000, metric="auc")
    bootstrap.paired_difference(y, rng.random(10_000), rng.random(10_000), n_boot=1000, metric="balanced_accuracy")
    assert time.process_time() - start < 10  # CPU seconds over both threads; the issue asks < 5 s of wall clock


# -- the gate's rules, on numbers --------------------------------------------------------------
def test_the_gate_rejects_what_is_worse_with_confidence_unscored_or_forgotten():
    params = small_params("gate.max_drop_average=0.1")

    def row(low, high):
        return {"auc": {"new": 0.8, "old": 0.9, "difference": (low + high) / 2, "low": low, "high": high}}

    comparison = {"methods": {"A": row(-0.3, -0.1), "B": row(0.01, 0.05), "C": row(-0.1, 0.1)},
                  "average": {"auc": {"difference": -0.1, "low": -0.15, "high": -0.05}}}
    verdict = gate.decide(comparison, {"D": "no faces"}, 0.5, params.gate, params.sbi.method)
    assert [comparison["methods"][k]["verdict"] for k in "ABC"] == ["worse", "better", "cannot tell"]
    assert comparison["average"]["verdict"] == "cannot tell", "within the allowed average drop"
    assert verdict["reasons"] == ["D: no faces",
                                  "A: auc 0.800 vs the champion's 0.900, worse by 0.200 (95% interval -0.300 to -0.100)",
                                  "forgetting 0.500 (auc) exceeds the bound 0.15"]
    assert not verdict["passed"] and verdict["champion"] is comparison
    assert gate.decide(None, {}, math.nan, params.gate, params.sbi.method)["passed"], "no champion, every split scored, nothing forgotten yet"


# -- the gate, on real trained models --------------------------------------------------------
from benchmarks.gate_cases import Noisy  # noqa: E402 (the benchmark's cases and these tests share it)

CHAMPION_PARAMS = ["train.epochs=8", "train.lr=0.005"]


@pytest.fixture(scope="module")
def trained_champion(tmp_path_factory, demo_data):
    """A learner on BlendSwap, saved and registered as champion in a workspace of its own:
    trained once for the module (the tests change only their own copy of the learner)."""
    root = tmp_path_factory.mktemp("gate")
    with pytest.MonkeyPatch.context() as mp:
        _use_workspace(mp, root)
        mlflow.set_experiment("Default")  # forget an experiment id made active by an earlier test
        specs = specs_for(demo_data, root, ["BlendSwap", "GANUpsample"])
        learner = Learner(root / "learner", small_params(*CHAMPION_PARAMS), root)
        results = learner.learn(specs[0])
        learner.save()
        with mlflow.start_run():
            e = learner.history.experiences[0]
            info = log_detector(learner.strategy.model, 32, learner.history.threshold,
                                {"methods": ["BlendSwap"],
                                 "test_sets": {e.key: {"test_x": e.test_x, "test_y": e.test_y, "digest": e.digest}}},
                                "deepfake-detector")
        client = MlflowClient()
        client.set_registered_model_alias("deepfake-detector", "champion", info.registered_model_version)
        client.set_model_version_tag("deepfake-detector", info.registered_model_version, "methods", "BlendSwap")
        mlflow.set_tracking_uri(None)
    return root, results, specs


@pytest.fixture
def champion(trained_champion, tmp_path, monkeypatch):
    """The champion's workspace as the current one, and a learner restored from the champion's
    saved state (weights, strategy memory, threshold) that the test may change."""
    root, results, specs = trained_champion
    _use_workspace(monkeypatch, root)
    shutil.copytree(root / "learner", tmp_path / "learner")
    learner = Learner.load(tmp_path / "learner", small_params(*CHAMPION_PARAMS), root)
    return learner, copy.deepcopy(results), specs


def test_the_same_model_ties_and_goes_to_ops_saying_so(champion, tmp_path):
    learner, results, _ = champion
    verdict = promotion_gate(learner, learner.params)
    assert verdict["passed"], verdict["reasons"]
    method = verdict["champion"]["methods"]["BlendSwap"]
    assert method["auc"]["difference"] == 0 and method["verdict"] == "cannot tell"
    assert str(verdict["champion"]["version"]) == "1"
    table = decision_table("2", results, verdict, learner.history.experiences)
    assert "| BlendSwap |" in table and "within noise: ops decide" in table
    assert decision_plot(verdict, tmp_path / "gate.png").stat().st_size > 0


def test_slightly_worse_within_noise_cannot_tell(champion):
    learner, _, _ = champion
    learner.strategy.model = Noisy(learner.strategy.model, 0.3)
    verdict = promotion_gate(learner, small_params(*CHAMPION_PARAMS, "gate.max_point_drop=0.05"))
    d = verdict["champion"]["methods"]["BlendSwap"]["auc"]
    assert -0.05 < d["difference"] < 0, "the test needs a (slightly) worse challenger"
    assert verdict["champion"]["methods"]["BlendSwap"]["verdict"] == "cannot tell" and verdict["passed"]
    # the case: 0.97 vs 1.00 cannot be told apart on these few faces, but the default
    # margin on the point estimate keeps it from ops (and from --auto-approve)
    verdict = promotion_gate(learner, learner.params)
    assert d["difference"] < -learner.params.gate.max_point_drop
    assert verdict["champion"]["methods"]["BlendSwap"]["verdict"] == "too far below" and not verdict["passed"]


def test_a_challenger_that_learned_a_new_method_is_promoted(champion):
    # As DFDC after FF++: better on the new method, nothing worse beyond noise (the accuracy
    # gate rejected this, its accuracy having moved with the new threshold and class mix).
    learner, _, specs = champion
    learner.learn(specs[1])  # what the champion never learned
    verdict = promotion_gate(learner, learner.params)
    methods = verdict["champion"]["methods"]
    assert methods["GANUpsample"]["auc"]["difference"] > 0, methods["GANUpsample"]
    assert all(m["verdict"] != "worse" for m in methods.values()) and verdict["passed"], verdict["reasons"]


def test_a_shuffled_label_challenger_is_rejected(champion, tmp_path):
    learner, _, specs = champion
    root = learner.root
    y = np.load(root / specs[0].train_y)
    np.save(tmp_path / "shuffled-y.npy", np.random.default_rng(0).permutation(y))
    shuffled = dataclasses.replace(specs[0], train_y=str(tmp_path / "shuffled-y.npy"))
    bad = Learner(tmp_path / "bad", small_params(*CHAMPION_PARAMS), root)
    bad.learn(shuffled)
    verdict = promotion_gate(bad, bad.params)
    assert not verdict["passed"]
    assert verdict["champion"]["methods"]["BlendSwap"]["verdict"] == "worse"
    assert any(r.startswith("BlendSwap: auc") for r in verdict["reasons"])


def test_the_self_blended_experience_has_its_own_allowed_drop(champion, tmp_path):
    """Its pseudo-fakes are a means: a drop there within gate.max_drop_self_blended does not
    block a challenger, beyond it does (here BlendSwap plays the self-blended experience)."""
    learner, _, specs = champion
    y = np.load(learner.root / specs[0].train_y)
    np.save(tmp_path / "shuffled-y.npy", np.random.default_rng(0).permutation(y))
    bad = Learner(tmp_path / "bad", small_params(*CHAMPION_PARAMS), learner.root)
    bad.learn(dataclasses.replace(specs[0], train_y=str(tmp_path / "shuffled-y.npy")))
    as_sbi = small_params(*CHAMPION_PARAMS, "sbi.method=BlendSwap", "gate.max_drop_average=1.0")
    assert not promotion_gate(bad, as_sbi)["passed"], "the default allowance (0.03) is small"
    loose = small_params(*CHAMPION_PARAMS, "sbi.method=BlendSwap", "gate.max_drop_average=1.0",
                         "gate.max_drop_self_blended=1.0")
    verdict = promotion_gate(bad, loose)
    assert verdict["champion"]["methods"]["BlendSwap"]["verdict"] != "worse" and verdict["passed"], verdict["reasons"]


def test_forgetting_bound_is_in_the_gate_metric(champion):
    learner, _, specs = champion
    learner.history.auc_matrix = [[0.9], [0.5, 0.9]]  # BlendSwap: 0.9 right after, 0.5 now
    verdict = promotion_gate(learner, learner.params)
    assert "forgetting 0.400 (auc) exceeds the bound 0.15" in verdict["reasons"]


def test_a_method_only_the_champion_learned_is_scored_on_its_pinned_test_faces(champion, tmp_path):
    # A challenger started over (--fresh) on another method: users still expect it to be
    # checked on what the champion catches today.
    _, _, specs = champion
    fresh = Learner(tmp_path / "fresh", small_params(*CHAMPION_PARAMS), champion[0].root)
    results = fresh.learn(specs[1])
    verdict = promotion_gate(fresh, fresh.params)
    methods = verdict["champion"]["methods"]
    assert set(methods) == {"BlendSwap", "GANUpsample"}
    assert methods["BlendSwap"]["challenger_learned"] is False and methods["BlendSwap"]["faces"] > 0
    assert methods["GANUpsample"]["challenger_learned"] is True
    table = decision_table("2", results, verdict, fresh.history.experiences)
    assert "(the challenger never learned it)" in table and "(the champion never learned it)" in table


def test_a_method_only_the_champion_learned_without_its_faces_is_a_failure(champion, tmp_path, demo_data):
    other_root = tmp_path / "elsewhere"  # the champion's pinned faces are not under this root
    spec = specs_for(demo_data, other_root, ["GANUpsample"])[0]
    fresh = Learner(other_root / "learner", small_params(*CHAMPION_PARAMS), other_root)
    results = fresh.learn(spec)
    verdict = promotion_gate(fresh, fresh.params)
    assert not verdict["passed"]
    assert set(verdict["champion"]["unscored"]) == {"BlendSwap"}
    assert any(r.startswith("BlendSwap: the champion learned it, the challenger did not") for r in verdict["reasons"])
    assert "**no score**" in decision_table("2", results, verdict, fresh.history.experiences)


def test_a_one_class_test_split_is_a_failure_not_cannot_tell(champion, tmp_path):
    learner, _, _ = champion
    e = learner.history.experiences[0]
    y = np.load(learner.root / e.test_y)
    x = np.load(learner.root / e.test_x)
    np.save(tmp_path / "test-x.npy", x[y == 0])
    np.save(tmp_path / "test-y.npy", y[y == 0])
    learner.history.experiences[0] = dataclasses.replace(e, test_x=str(tmp_path / "test-x.npy"),
                                                         test_y=str(tmp_path / "test-y.npy"))
    verdict = promotion_gate(learner, learner.params)
    assert not verdict["passed"]
    assert f"BlendSwap: its test split has only real faces ({int((y == 0).sum())}): no AUC to compare" in verdict["reasons"]
    assert verdict["champion"]["average"] is None and not verdict["champion"]["methods"]


def test_a_one_class_test_split_fails_the_first_challenger_too(champion, tmp_path, monkeypatch):
    import tasks.promotion_gate

    learner, _, _ = champion
    e = learner.history.experiences[0]
    y = np.load(learner.root / e.test_y)
    np.save(tmp_path / "test-y.npy", np.ones_like(y))
    learner.history.experiences[0] = dataclasses.replace(e, test_y=str(tmp_path / "test-y.npy"))
    monkeypatch.setattr(tasks.promotion_gate, "champion_version", lambda name: None)  # nothing registered yet
    verdict = promotion_gate(learner, learner.params)
    assert not verdict["passed"] and verdict["champion"] is None
    assert verdict["reasons"] == [f"BlendSwap: its test split has only fake faces ({len(y)}): no AUC to compare"]


def test_an_mlflow_error_is_not_no_champion(champion, monkeypatch):
    learner, _, _ = champion
    assert alias_version("no-such-model") is None  # only "not found" means nothing registered
    assert alias_version("deepfake-detector", "no-such-alias") is None

    def down(*args, **kwargs):
        raise mlflow.exceptions.MlflowException("database is locked", error_code=INTERNAL_ERROR)

    monkeypatch.setattr(MlflowClient, "get_registered_model", down)
    with pytest.raises(mlflow.exceptions.MlflowException, match="database is locked"):
        promotion_gate(learner, learner.params)  # never a pass "with no champion yet"


class NaNs(torch.nn.Module):
    """A diverged model: every logit NaN."""

    def forward(self, x):
        return torch.full((x.shape[0], 2), float("nan"))


def test_a_challenger_of_nan_scores_fails_the_gate_with_or_without_a_champion(champion, monkeypatch):
    import tasks.promotion_gate

    learner, _, _ = champion
    e = learner.history.experiences[0]
    y = np.load(learner.root / e.test_y)
    order = np.argsort(y, kind="stable")  # reals listed first: NaNs then sort as a perfect ranking
    assert bootstrap.weighted_auc(y[order], np.full(len(y), np.nan), np.ones((1, len(y))))[0] == 1.0
    learner.strategy.model = NaNs()
    verdict = promotion_gate(learner, learner.params)
    assert not verdict["passed"]
    assert verdict["reasons"][0].startswith(f"BlendSwap: {len(y)} of {len(y)} of the challenger's scores are not finite")
    monkeypatch.setattr(tasks.promotion_gate, "champion_version", lambda name: None)
    verdict = promotion_gate(learner, learner.params)
    assert not verdict["passed"] and "not finite" in verdict["reasons"][0]


def test_cannot_tell_far_below_the_champion_is_rejected_not_put_to_ops():
    params = small_params("gate.max_point_drop=0.02")
    row = {"auc": {"new": 0.974, "old": 1.0, "difference": -0.026, "low": -0.08, "high": 0.001}}
    comparison = {"methods": {"A": row}, "average": {"auc": {"difference": -0.026, "low": -0.08, "high": 0.001}}}
    verdict = gate.decide(comparison, {}, math.nan, params.gate, params.sbi.method)
    assert comparison["methods"]["A"]["verdict"] == "too far below" and not verdict["passed"]
    assert verdict["reasons"][0] == ("A: auc 0.974 vs the champion's 1.000: below by 0.026, more than "
                                     "gate.max_point_drop 0.02 (the interval alone cannot tell)")
    assert gate.decide(comparison, {}, math.nan, small_params("gate.max_point_drop=0.03").gate, "self-blended")["passed"]


def test_a_first_champion_must_reach_the_minimum_auc():
    params = small_params("gate.min_auc=0.7")
    assert gate.decide(None, {}, math.nan, params.gate, params.sbi.method, {"A": 0.9})["passed"]
    verdict = gate.decide(None, {}, math.nan, params.gate, params.sbi.method, {"A": 0.9, "B": 0.62})
    assert verdict["reasons"] == ["B: AUC 0.620 is below gate.min_auc 0.7 (a first champion's floor)"]


def test_the_first_challenger_is_scored_against_the_floor(champion, monkeypatch):
    import tasks.promotion_gate

    learner, _, _ = champion
    monkeypatch.setattr(tasks.promotion_gate, "champion_version", lambda name: None)
    learner.strategy.model = Noisy(learner.strategy.model, 0.3)  # AUC 0.97 on these faces
    verdict = promotion_gate(learner, small_params(*CHAMPION_PARAMS, "gate.min_auc=0.99"))
    assert 0.9 < verdict["own_auc"]["BlendSwap"] < 0.99 and not verdict["passed"], verdict
    assert verdict["reasons"][0].startswith("BlendSwap: AUC 0.97")
    assert promotion_gate(learner, small_params(*CHAMPION_PARAMS, "gate.min_auc=0.9"))["passed"]
