"""The metric schema (dfcl.measure.metrics): one definition that the learner's history, the results,
MLflow, the tags, the tables and the plots all follow."""
import dataclasses
import math
from types import SimpleNamespace

from dfcl.data.arrays import ExperienceSpec
from dfcl.learning.learner import History
from dfcl.measure.metrics import (
    MATRICES,
    SUMMARIES,
    matrix_metric,
    strategy_report,
    summarize,
    summary_values,
)
from dfcl.measure.tables import FIGURES, compare_table
from dfcl.ops.tracking import evaluation_metrics

NAN = math.nan


def spec(key: str) -> ExperienceSpec:
    return ExperienceSpec(key=key, dataset="d", method=key, version="v", train_x="", train_y="", test_x="", test_y="")


def test_each_matrix_names_its_avalanche_cell_and_its_history_key():
    assert [m.cell for m in MATRICES] == ["Top1_Acc_Exp", "AUC_Exp", "BalAcc_Exp", "VideoAUC_Exp"]
    fields = {f.name for f in dataclasses.fields(History)}
    assert [m.history for m in MATRICES] == ["accuracy_matrix", "auc_matrix", "balanced_accuracy_matrix",
                                             "video_auc_matrix"]
    assert {m.history for m in MATRICES} <= fields
    assert matrix_metric("auc").forgetting == "auc_forgetting" in {s.name for s in SUMMARIES}


def test_results_follow_the_schema():
    r = summarize([spec("A"), spec("B")], [0.8, 0.6, 0.5], [0.9, NAN, 0.5], forgetting=0.1, bwt=-0.1,
                  row_bal=[0.7, 0.5], threshold=0.4, row_video_auc=[NAN, 0.75])
    assert r["accuracy"] == {"A": 0.8, "B": 0.6} and math.isclose(r["avg_accuracy"], 0.7)
    assert math.isnan(r["auc"]["B"]) and r["avg_auc"] == 0.9, "a one-class split has no AUC; the mean skips it"
    assert r["video_auc"] == {"B": 0.75} and r["avg_video_auc"] == 0.75, "video AUC only where measured"
    assert (r["forgetting"], r["bwt"], r["threshold"]) == (0.1, -0.1, 0.4)
    assert "video_auc" not in summarize([spec("A")], [0.8], [0.9], row_video_auc=[NAN])
    assert "balanced_accuracy" not in summarize([spec("A")], [0.8], [0.9])


def test_every_summary_measured_is_logged_and_nan_is_left_out():
    r = summarize([spec("A")], [0.8], [0.9], forgetting=0.0, bwt=0.0, row_bal=[0.7]) | {
        "auc_forgetting": 0.0, "auc_forward_transfer": NAN, "auc_before": {}}
    metrics = evaluation_metrics(r)
    assert metrics == {"acc/A": 0.8, "auc/A": 0.9, "balanced_acc/A": 0.7, "avg_accuracy": 0.8,
                       "avg_balanced_accuracy": 0.7, "avg_auc": 0.9, "threshold": 0.5, "forgetting": 0.0,
                       "auc_forgetting": 0.0, "bwt": 0.0}
    assert summary_values(r) == {k: v for k, v in metrics.items() if "/" not in k}


def test_a_strategy_report_holds_every_matrix_and_summary_and_the_sweep_table_reads_them():
    trained = SimpleNamespace(history=History(accuracy_matrix=[[0.8]], auc_matrix=[[0.9]],
                                              balanced_accuracy_matrix=[[0.7]], video_auc_matrix=[[NAN]]))
    r = summarize([spec("A")], [0.8], [0.9], forgetting=0.0, bwt=0.0) | {"auc_forgetting": 0.0}
    report = strategy_report(trained, r, seconds=3.0)
    assert set(report) == set(FIGURES)
    assert report["train_seconds"] == 3.0 and report["forward_transfer"] is None
    entry = {**report, "std": {k: 0.0 for k in report}}
    table = compare_table({"seeds": [0], "strategies": {"naive": entry}})
    assert "AUC forget" in table.splitlines()[0] and "0.900" in table
