from pathlib import Path

from prefect import get_run_logger, task

from dfcl.data import Discovered, cap_per_class, discover


@task
def discover_dataset(path: str, params: dict, method: str | None = None,
                     methods: list[str] | None = None) -> Discovered:
    """Recognise the dataset's layout and list its images per method in a pandas manifest."""
    dp = params["data"]
    found = discover(Path(path), dp["real_names"], method=method, test_fraction=dp["test_fraction"],
                     seed=dp["seed"], methods=methods)
    found.manifest = cap_per_class(found.manifest, dp["max_per_class"], dp["seed"])
    counts = found.manifest.groupby(["experience", "split", "label"]).size().unstack(fill_value=0)
    get_run_logger().info("%s: layout %r, methods %s\n%s", path, found.layout, found.methods,
                          counts.rename(columns={0: "real", 1: "fake"}).to_string())
    return found
