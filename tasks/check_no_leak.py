from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dfcl.data import leaks
from dfcl.data.arrays import ExperienceSpec


@task(cache_policy=NO_CACHE)
def check_no_leak(learned: list[ExperienceSpec], specs: list[ExperienceSpec], root: Path) -> None:
    """Fail the retraining when a training face of any experience, learned or about to be, is a
    validation or test face of any experience (dfcl.data.leaks: by content hash, not by file name)."""
    seen = {e.key for e in learned}
    leaks.check_no_leak(list(learned) + [s for s in specs if s.key not in seen], root)
    get_run_logger().info("no face of %d experience(s) is both a training face and a test face",
                          len(seen | {s.key for s in specs}))
