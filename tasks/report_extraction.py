import json
import re

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from dfcl.workspace import Workspace


@task
def report_extraction(ws: Workspace, name: str, refused: list[tuple[str, str]] = ()) -> dict:
    """Faces per method, split and class, and every skipped file with its reason: in the log
    and as Prefect artifacts. `refused`: (path, why) of the files discovery refused (outside the
    dataset's folder), which never reached the raw copy: lines of the same report."""
    logger = get_run_logger()
    out = ws.processed / name
    summary = json.loads((out / "experiences.json").read_text())
    rows = [{"method": m, **{f"{s} {c}": e[s][c] for s in ("train", "val", "test") for c in ("real", "fake")},
             "learnable": "yes" if e["learnable"] else "no", "problems": "; ".join(e["problems"])}
            for m, e in summary["experiences"].items()]
    table = pd.DataFrame(rows)
    skipped = pd.read_csv(out / "skipped.csv", keep_default_na=False)
    skipped = pd.concat([pd.DataFrame([{"source": p, "frame": -1, "skipped": why} for p, why in refused],
                                      columns=skipped.columns), skipped], ignore_index=True)
    logger.info("%s (%s): faces per method\n%s", name, summary["layout"], table.to_string(index=False))
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower())  # artifact keys: lowercase, digits, dashes
    create_table_artifact(rows, key=f"faces-{slug}",
                          description=f"faces of {name} per method, split and class")
    if len(skipped):
        logger.warning("%s: %d file(s)/frame(s) skipped\n%s", name, len(skipped), skipped.to_string(index=False))
        create_markdown_artifact("| source | frame | reason |\n| --- | --- | --- |\n" + "\n".join(
            f"| {r.source} | {r.frame} | {r.skipped} |" for r in skipped.itertuples()),
            key=f"skipped-{slug}", description=f"files and frames of {name} skipped")
    stats_file = ws.processed / f"{name}.stats.json"
    summary["stats"] = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    return summary
