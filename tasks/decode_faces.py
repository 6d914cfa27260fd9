from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task

from dfcl.data import decode_images
from dfcl.workspace import Workspace


@task
def decode_faces(ws: Workspace, raw_dir: Path, name: str, manifest: pd.DataFrame, size: int,
                 raw_version: str) -> Path:
    """Decode every image once into uint8 arrays (one per method and split) under
    data/processed/<name>/<size>px/, with the manifest and a skip report beside them.
    The same raw DVC version and manifest reuse the arrays, so re-running is cheap."""
    logger = get_run_logger()
    out = ws.processed / name
    arrays = out / f"{size}px"
    arrays.mkdir(parents=True, exist_ok=True)
    manifest_file, source_file = out / "manifest.csv", out / "raw_version.txt"
    columns = ["path", "split", "label", "experience"]
    fresh = source_file.exists() and source_file.read_text().strip() == raw_version
    if fresh and manifest_file.exists() and all((arrays / f"{m}-{s}-x.npy").exists() for m, s in
                                      manifest[["experience", "split"]].drop_duplicates().itertuples(index=False)):
        previous = pd.read_csv(manifest_file, keep_default_na=False)
        if previous[columns].equals(manifest[columns].reset_index(drop=True)):
            logger.info("%s: decoded faces at %dpx are up to date", out, size)
            return out
    manifest = manifest.copy()
    manifest["skipped"] = ""
    for (method, split), rows in manifest.groupby(["experience", "split"], sort=False):
        x_file, y_file = arrays / f"{method}-{split}-x.npy", arrays / f"{method}-{split}-y.npy"
        images, ok, reasons = decode_images(raw_dir, rows.path.tolist(), size)
        manifest.loc[rows.index, "skipped"] = rows.path.map(reasons).fillna("")
        labels = rows.label.to_numpy()[ok].astype(np.int64)
        if len(set(labels)) < 2:
            raise ValueError(f"{name}/{method} {split}: after skipping unreadable files it lacks "
                             f"{'real' if 1 in labels else 'fake'} images; every experience needs both")
        np.save(x_file, images)
        np.save(y_file, labels)
    skipped = manifest[manifest.skipped != ""]
    manifest.to_csv(manifest_file, index=False)
    source_file.write_text(raw_version + "\n")
    if len(skipped):
        logger.warning("%d file(s) skipped:\n%s", len(skipped), skipped[["path", "skipped"]].to_string(index=False))
    logger.info("decoded %d faces at %dpx into %s", len(manifest) - len(skipped), size, arrays)
    return out
