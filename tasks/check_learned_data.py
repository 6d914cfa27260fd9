import dataclasses
from pathlib import Path

import mlflow
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dfcl.data.arrays import ExperienceSpec
from dfcl.learning import pinning


@task(cache_policy=NO_CACHE)
def check_learned_data(learned: list[ExperienceSpec], specs: list[ExperienceSpec], root: Path) -> list[ExperienceSpec]:
    """For methods already `learned` (the learner's experiences, pinned under `root`): the learner
    keeps its pinned faces, whatever the new ingest wrote. When a method's own files really
    changed (edited, removed or new fakes), say so and return it as a new version,
    `<method>:<digest>`, to be learned as an experience of its own."""
    logger = get_run_logger()
    pinned = {e.key: e for e in learned}
    out = []
    for spec in specs:
        if spec.key not in pinned:
            out.append(spec)
            continue
        change = pinning.data_change(pinned[spec.key], spec, root)
        if change is None:
            logger.info("%s: already learned; its learned version %s is kept", spec.key, pinned[spec.key].digest[:12])
            out.append(spec)
            continue
        key = f"{spec.key}:{pinning.array_digest(spec, root)[:8]}"  # MLflow names allow ":", not "@"
        logger.warning("%s: its data changed since it was learned (%s); the learned version stays in the "
                       "evaluation and the new data is learned as %s", spec.key, change, key)
        mlflow.set_tag(f"data.{spec.key}.changed", f"{change}; learned as {key}")
        out.append(dataclasses.replace(spec, key=key))
    return out
