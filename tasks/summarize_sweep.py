from dataclasses import asdict
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from dfcl.data.arrays import ExperienceSpec
from dfcl.measure.plots import forgetting_curves, matrix_frame, strategy_plots
from dfcl.measure.tables import compare_table, over_seeds


@task(cache_policy=NO_CACHE)
def summarize_sweep(specs: list[ExperienceSpec], seeds: list[int], trainings: dict[str, dict[int, dict]],
                    artifacts_dir: str | None = None) -> dict:
    """The sweep's report: per strategy, each figure's mean and standard deviation over the seeds
    (and every training's own figures); its table in the log and as a Prefect artifact; plots
    in `artifacts_dir` when given."""
    methods = [s.key for s in specs]
    report = {"methods": methods, "experiences": [asdict(s) for s in specs], "seeds": list(seeds),
              "strategies": {name: over_seeds(runs) for name, runs in trainings.items()}}
    table = compare_table(report)
    get_run_logger().info("strategies on %s:\n%s", " -> ".join(methods), table)
    create_markdown_artifact(f"```\n{table}\n```", key="strategy-comparison",
                             description="strategies side by side (mean ± std over seeds)")
    if artifacts_dir:
        folder = Path(artifacts_dir)
        for name, entry in report["strategies"].items():
            strategy_plots(entry, methods, folder, name)
        forgetting_curves({n: matrix_frame(e["accuracy_matrix"], methods) for n, e in report["strategies"].items()},
                          folder / "forgetting_all.png",
                          {n: matrix_frame(e["std"]["accuracy_matrix"], methods) for n, e in report["strategies"].items()}
                          if len(seeds) > 1 else None)
    return report
