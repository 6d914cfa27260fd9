"""Measuring: every number the project reports or decides on.

`scoring` scores faces (the AUC metric Avalanche evaluates, the threshold); `metrics` the figures
of a learner's evaluation (matrices, forgetting, forward transfer); `bootstrap` paired intervals;
`gate` the promotion gate (test sets, comparison, verdict); `trust` calibration, the answer band,
novelty and abstention; `tables` and `plots` what people read. Pure functions of scores and
arrays: no MLflow, no Prefect.
"""
