import math

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dfcl.data.arrays import ExperienceSpec
from dfcl.learning.learner import Learner


@task(cache_policy=NO_CACHE)
def learn_experience(learner: Learner, spec: ExperienceSpec, upcoming: list[ExperienceSpec] = ()) -> dict:
    """Continue training on one new method, evaluate on all methods seen so far and on the
    `upcoming` ones not learned yet (forward transfer), and save the learner (a crash after this
    point resumes from here)."""
    logger = get_run_logger()
    logger.info("experience %d: learning %s with %s", len(learner.history.experiences), spec.key,
                learner.params.strategy.name)
    results = learner.learn(spec, upcoming=upcoming)
    learner.save()
    before = results["auc_before"].get(spec.key, math.nan)
    logger.info("after %s: avg accuracy %.3f, avg AUC %.3f, forgetting %.3f (AUC %.3f), BWT %.3f, "
                "its AUC before learning %.3f", spec.key, results["avg_accuracy"], results["avg_auc"],
                results["forgetting"], results["auc_forgetting"], results["bwt"], before)
    return results
