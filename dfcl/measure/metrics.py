"""What a learner's evaluation reports, defined once: the per-method matrices (MATRICES) and a
run's summary figures (SUMMARIES) that every logger, tag, table and plot iterates over (a new
metric is an entry here), and how the matrices give the figures: one row of results
(`summarize`), forgetting and forward transfer, one strategy's whole run (`strategy_report`)."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """A figure of a whole evaluation or training: its key in results, strategy reports and
    MLflow metrics, and its model-version tag."""
    name: str
    label: str              # short: a table column's title, a plot's
    higher_is_better: bool | None   # None: a setting, not a quality (the threshold)
    doc: str
    table: bool = False     # a column of the strategies' comparison (dfcl.measure.tables.compare_table)


@dataclass(frozen=True, kw_only=True)
class MatrixMetric(Metric):
    """A per-method metric: a matrix, row i = the evaluation after experience i, a cell per method
    (the upper triangle: methods evaluated before they were learned)."""
    cell: str                       # the Avalanche evaluator's metric of one cell
    history: str                    # the matrix's key in the learner's history (history.json)
    prefix: str                     # a method's value in MLflow: <prefix>/<method>
    average: str                    # the summary: mean of a row over the learned methods
    forgetting: str | None = None   # the summary of its forgetting (matrix_forgetting, or Avalanche's)
    # Measured for some methods only (NaN elsewhere): those are left out of its per-method values,
    # and it is absent from results where no method has it.
    sparse: bool = False


MATRICES = (
    MatrixMetric("accuracy", "accuracy", True, "share of test faces classified right at the calibrated threshold",
                 cell="Top1_Acc_Exp", history="accuracy_matrix", prefix="acc", average="avg_accuracy",
                 forgetting="forgetting"),
    MatrixMetric("auc", "AUC", True, "ROC AUC of P(fake) on the test faces: threshold-free, not moved by the class mix",
                 cell="AUC_Exp", history="auc_matrix", prefix="auc", average="avg_auc", forgetting="auc_forgetting"),
    MatrixMetric("balanced_accuracy", "balanced accuracy", True, "mean of the real and the fake recall at the threshold",
                 cell="BalAcc_Exp", history="balanced_accuracy_matrix", prefix="balanced_acc",
                 average="avg_balanced_accuracy", forgetting="balanced_accuracy_forgetting"),
    MatrixMetric("video_auc", "video AUC", True, "ROC AUC of a video's mean P(fake), where a video has several faces",
                 cell="VideoAUC_Exp", history="video_auc_matrix", prefix="video_auc", average="avg_video_auc",
                 sparse=True),
)

SUMMARIES = (
    Metric("avg_accuracy", "avg acc", True, "mean accuracy over the learned methods", table=True),
    Metric("avg_balanced_accuracy", "avg bal acc", True, "mean balanced accuracy over the learned methods"),
    Metric("avg_auc", "avg AUC", True, "mean AUC over the learned methods", table=True),
    Metric("avg_video_auc", "video AUC", True, "mean video-level AUC over the methods that have it", table=True),
    Metric("threshold", "threshold", None, "the P(fake) cut chosen on validation faces"),
    Metric("forgetting", "forgetting", False, "accuracy right after learning each earlier method minus now "
           "(Avalanche's StreamForgetting)", table=True),
    Metric("auc_forgetting", "AUC forget", False, "the same in AUC: the promotion gate's bound", table=True),
    Metric("balanced_accuracy_forgetting", "bal acc forget", False, "the same in balanced accuracy"),
    Metric("bwt", "BWT", True, "backward transfer (Avalanche's StreamBWT): minus the accuracy forgetting", table=True),
    Metric("auc_forward_transfer", "fwd AUC", True, "mean AUC of each method just before it was learned", table=True),
    Metric("forward_transfer", "fwd acc", True, "Avalanche's forward transfer: accuracy just before learning a "
           "method minus the untrained model's"),
    Metric("train_seconds", "train s", False, "wall-clock seconds of a whole training (strategy reports)", table=True),
    Metric("state_mb", "state MB", False, "size of the saved learner: what a strategy keeps besides the model"),
)


def matrix_metric(name: str) -> MatrixMetric:
    """The per-method metric called `name` ("auc", ...)."""
    return {m.name: m for m in MATRICES}[name]


def summary_values(figures: dict) -> dict[str, float]:
    """The summaries (SUMMARIES) that `figures` (results, a strategy report) holds as numbers;
    NaN (nothing measured yet, e.g. forward transfer of a single method) left out."""
    return {s.name: float(figures[s.name]) for s in SUMMARIES
            if figures.get(s.name) is not None and not math.isnan(figures[s.name])}


def _mean(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def matrix_forgetting(matrix: list[list[float]]) -> float:
    """Mean drop on the earlier methods, from right after learning each to now: Avalanche's
    StreamForgetting, which Avalanche computes for accuracy only, on any per-method matrix (AUC,
    balanced accuracy). Accuracy at 0.5 falls when predicted probabilities drift while the ranking
    holds (see the demo's batch-norm note in params.yaml); these do not."""
    if len(matrix) < 2:
        return 0.0
    drops = [matrix[i][i] - matrix[-1][i] for i in range(len(matrix) - 1)]
    return _mean(drops)


def matrix_forward_transfer(matrix: list[list[float]]) -> float:
    """Mean over the methods learned after the first of each one's value just before it was
    learned (cell [j-1][j], the upper triangle's first diagonal); NaN where none was measured
    (a method not yet known then, or evaluation of upcoming methods off). Avalanche's forward
    transfer is accuracy minus the accuracy of the model at initialisation, and Avalanche has no
    AUC: this is the AUC version, by hand, and absolute (0.5 is chance, as the matrix shows it)."""
    return _mean([matrix[j - 1][j] for j in range(1, len(matrix)) if j < len(matrix[j - 1])])


def values_before_learning(matrix: list[list[float]], keys: list[str]) -> dict[str, float]:
    """{method: its cell [j-1][j]} for each learned method measured just before it was learned."""
    return {keys[j]: matrix[j - 1][j] for j in range(1, min(len(matrix), len(keys)))
            if j < len(matrix[j - 1]) and not math.isnan(matrix[j - 1][j])}


def learned_card(history) -> list[dict]:
    """Each learned method for the model card: when it was learned, its test AUC now, and its AUC
    measured just before it was learned (what the model did on it while it was still unseen)."""
    keys = [e.key for e in history.experiences]
    now = history.auc_matrix[-1] if history.auc_matrix else []
    before = values_before_learning(history.auc_matrix, keys)
    return [{"method": e.key, "learned_at": e.learned_at or None,
             "test_auc": None if i >= len(now) or math.isnan(now[i]) else round(now[i], 4),
             "auc_before_learning": None if e.key not in before else round(before[e.key], 4),
             "synthetic": e.synthetic}
            for i, e in enumerate(history.experiences)]


def summarize(experiences: list, row_acc: list[float], row_auc: list[float],
              forgetting: float = math.nan, bwt: float = math.nan, row_bal: list[float] | None = None,
              threshold: float = 0.5, row_video_auc: list[float] | None = None) -> dict:
    """One evaluation's results on the learned `experiences`: per metric of MATRICES its value
    per method and its average (a row's later cells, methods not learned yet, are left out:
    averages are over what the model has learned). A row not given (None) is left out."""
    keys = [e.key for e in experiences]
    rows = {"accuracy": row_acc, "auc": row_auc, "balanced_accuracy": row_bal, "video_auc": row_video_auc}
    out = {"methods": keys}
    for m in MATRICES:
        row = rows[m.name]
        if row is None:
            continue
        row = row[:len(keys)]
        values = {k: v for k, v in zip(keys, row) if not (m.sparse and math.isnan(v))}
        if values or not m.sparse:
            out[m.name], out[m.average] = values, _mean(row)
    return out | {"forgetting": forgetting, "bwt": bwt, "threshold": threshold}


def strategy_report(learner, results: dict, seconds: float) -> dict:
    """One strategy's whole run, as `dfcl compare` and the benchmarks report it: its matrices and
    every summary (None where not measured)."""
    return ({m.history: getattr(learner.history, m.history) for m in MATRICES}
            | {s.name: results.get(s.name) for s in SUMMARIES} | {"train_seconds": seconds})
