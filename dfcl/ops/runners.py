"""Where a sweep's trainings run (`compare:` in params.yaml): one after the other in this process,
or on a Dask cluster through prefect-dask; the flow is the same either way."""
from __future__ import annotations

import tempfile
from pathlib import Path

from dfcl.config import CompareConfig, ConfigError, Params

RUNNERS = ("local", "dask")


def sweep_task_runner(cp: CompareConfig):
    """The Prefect task runner of `compare.runner`."""
    if cp.runner not in RUNNERS:
        raise ConfigError(f"compare.runner={cp.runner!r}: choose one of {', '.join(RUNNERS)}")
    if cp.runner == "local":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=1)  # one training at a time, with all the cores
    import dask
    from prefect_dask import DaskTaskRunner

    if cp.dask_address:  # its workers' settings are their own (docs/sweeps.md: "Workers' malloc setting")
        return DaskTaskRunner(address=cp.dask_address)
    # Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536, which also stops glibc from
    # raising its mmap threshold: every large tensor is then mmap'ed and page-faulted afresh, and
    # PyTorch CPU training runs about 2x slower (benchmarks/results/sweep_cpu.md). None unsets it.
    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
    # A cluster of its own on this machine: single-threaded worker processes, one training each,
    # reporting to this process's Prefect API.
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
        "n_workers": cp.dask_workers, "threads_per_worker": 1, "processes": True,
        "host": "127.0.0.1", "dashboard_address": None, "env": {"PREFECT_API_URL": prefect_api_url()}})


def prefect_api_url() -> str:
    """The Prefect API this process uses. Without PREFECT_API_URL that is Prefect's temporary
    local API, started here if it is not yet: worker processes given its address report to it
    (left alone, each would start a temporary API of its own on the same database)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url:
        return url
    from dfcl.ops.local_api import start_local_api

    return start_local_api()  # the one Prefect's own client uses in this process


def training_data(cp: CompareConfig, params: Params, root: Path) -> dict:
    """Where a training reads its faces: the workspace here; on Dask, the DVC versions, checked
    out by each worker from the workspace's default DVC remote (its url and options, without
    credentials: dfcl.ops.versions.remote_config) into `compare.worker_data`."""
    if cp.runner == "local":
        return {"root": str(root)}
    from dfcl.ops.versions import remote_config

    cache = cp.worker_data or str(Path(tempfile.gettempdir()) / "dfcl-worker-data")
    return {"remote": remote_config(root, params.dvc), "cache": cache, "threads": cp.dask_threads_per_worker}
