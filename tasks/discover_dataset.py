from prefect import get_run_logger, task

from dfcl.config import Params
from dfcl.data.layouts import (
    Sources,
    cap_per_class,
    identity_distance,
    recognise,
    split_rule,
)
from dfcl.workspace import Workspace


@task
def discover_dataset(ws: Workspace, path: str, params: Params, name: str, methods: list[str] | None = None,
                     method: str | None = None) -> Sources:
    """Recognise the dataset's layout (and say which) and list its files in a pandas table."""
    dp = params.data
    found = recognise(path, dp.real_names, name, methods=methods, compression=dp.compression, method=method,
                      real_only=name == params.sbi.method, splits=split_rule(dp), max_per_set=params.sbi.max_per_set,
                      identity_distance=identity_distance(dp), cache_dir=ws.face_cache)
    # quick runs copy (and version) only the files they use
    found.files = cap_per_class(found.files, dp.max_per_class, dp.seed)
    counts = found.files.groupby(["experience", "kind", "label"]).size().unstack(fill_value=0)
    logger = get_run_logger()
    logger.info("%s: layout %r, methods %s\n%s", path, found.layout, found.methods,
                counts.rename(columns={0: "real", 1: "fake"}).to_string())
    for note in found.notes:
        logger.warning("%s: %s", path, note)
    return found
