"""Operations: where the detector's versions, data versions and runs are kept and moved.

`registry` is the MLflow model registry (every alias move, tag and history event); `tracking`
logs runs to MLflow; `dvc` versions data with DVC stages; `versions` checks a data version out
on a worker; `runners` picks a Prefect task runner (local or Dask); `triggers` says which incoming
datasets are due; `guards` are the locks and service checks a retraining runs under.
"""
