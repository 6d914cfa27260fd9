import shutil
import stat
from pathlib import Path

from prefect import get_run_logger, task

from dfcl.layouts import LayoutError, outside
from dfcl.workspace import Workspace


@task
def copy_raw_dataset(ws: Workspace, source: str, name: str, files: list[str]) -> Path:
    """Bring the dataset's files (videos, images, masks, split lists) into data/raw/<name>, the
    DVC-tracked copy. Files already there unchanged are not copied again; nothing stored
    before is deleted. `files` were confined to the dataset by discovery (dfcl.layouts.confine);
    each is checked again here, as the folder may have changed since (a stranger's), and
    nothing is written through a link or outside data/raw/<name>."""
    source, target = Path(source).resolve(), ws.raw / name
    if source == target:
        return target
    copied = 0
    for rel in files:
        why = outside(source, rel)
        if why:
            raise LayoutError(f"{source}: {rel}: {why}; it changed since it was listed: ingest it again")
        src, dst = source / rel, target / rel
        if not dst.parent.resolve().is_relative_to(target.resolve()):
            raise LayoutError(f"data/raw/{name}: {rel} would be written outside it, through a link; remove the link")
        # copy2 keeps the modification time, so size + mtime tell an unchanged file
        stamp = (src.stat().st_size, src.stat().st_mtime_ns)
        if dst.exists() and (dst.stat().st_size, dst.stat().st_mtime_ns) == stamp:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or dst.exists():
            dst.unlink()  # it may be read-only, as the source was
        shutil.copy2(src, dst)
        dst.chmod(dst.stat().st_mode | stat.S_IWUSR)
        copied += 1
    get_run_logger().info("data/raw/%s: %d new file(s) copied from %s", name, copied, source)
    return target
