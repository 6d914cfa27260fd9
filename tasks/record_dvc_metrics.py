from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dfcl.config import DvcConfig
from dfcl.learning.learner import Learner
from dfcl.ops import dvc
from dfcl.workspace import Workspace


@task(cache_policy=NO_CACHE)
def record_dvc_metrics(ws: Workspace, learner: Learner, results: dict, version: str, dvc_config: DvcConfig) -> None:
    """The challenger's figures and matrices as the workspace's DVC metrics and plots
    (dfcl.ops.dvc.write_training_metrics), git-committed with `dvc.git_commit` beside the data
    versions they were trained on, so `dvc metrics diff` and `dvc plots diff` compare them."""
    files = dvc.write_training_metrics(ws, learner.history, results)
    if dvc_config.git_commit:
        dvc.commit_dvc_files(ws.root, files, f"dfcl: metrics of model version {version}")
    get_run_logger().info("model version %s's figures: `dvc metrics show` (%s), `dvc plots show` (%s)",
                          version, dvc.METRICS_FILE, ", ".join(f for f in files if f.startswith(dvc.PLOTS_DIR)))
