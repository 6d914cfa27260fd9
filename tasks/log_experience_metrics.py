import math

import mlflow
from prefect import task


@task
def log_experience_metrics(results: dict, step: int) -> None:
    """Per-method and aggregate metrics of one evaluation, at step = experience index. Forward
    transfer (`auc_forward_transfer`, and `auc_before/<method>`: a method's AUC just before it
    was learned) once a method was measured before it was learned."""
    metrics = {f"acc/{k}": v for k, v in results["accuracy"].items()}
    metrics |= {f"auc/{k}": v for k, v in results["auc"].items()}
    metrics |= {f"balanced_acc/{k}": v for k, v in results.get("balanced_accuracy", {}).items()}
    metrics |= {f"video_auc/{k}": v for k, v in results.get("video_auc", {}).items()}
    metrics |= {f"auc_before/{k}": v for k, v in results.get("auc_before", {}).items()}
    metrics |= {k: results[k] for k in ("avg_accuracy", "avg_balanced_accuracy", "avg_auc", "avg_video_auc",
                                         "forgetting", "auc_forgetting", "balanced_accuracy_forgetting", "bwt",
                                         "threshold") if k in results}
    # NaN until a method was measured before it was learned: left out rather than logged as NaN.
    metrics |= {k: results[k] for k in ("auc_forward_transfer", "forward_transfer")
                if not math.isnan(results.get(k, math.nan))}
    # How sure its answers are (dfcl.trust): calibration error before/after, coverage of the band,
    # attribution accuracy, on validation and test faces of the learned methods.
    trust = results.get("trust", {})
    metrics |= {f"trust/{k}": v for k, v in trust.items()
                if isinstance(v, float) and not math.isnan(v)}
    if "band" in trust:
        metrics |= {"trust/band_lo": trust["band"][0], "trust/band_hi": trust["band"][1]}
    mlflow.log_metrics(metrics, step=step)
