import os
import shutil
import stat
from pathlib import Path

from prefect import get_run_logger, task

from dfcl.data.layouts import LayoutError, outside
from dfcl.workspace import Workspace


@task
def copy_raw_dataset(ws: Workspace, source: str | list[str], name: str, files: list[str],
                     written: dict[str, str] | None = None, roots: dict[str, str] | None = None) -> Path:
    """Bring the dataset's files (videos, images, masks, split lists) into data/raw/<name>, the
    DVC-tracked copy, with the files the layout wrote for it (`written`: a self-blended
    experience's split list). `roots`: several datasets in one (dfcl.data.layouts.real_faces_of), each
    file's first folder names the dataset it comes from. Files already there unchanged are not
    copied again; nothing stored before is deleted. `files` were confined to the dataset by
    discovery (dfcl.data.layouts.confine); each is checked again here, as the folder may have changed
    since (a stranger's), and nothing is written through a link or outside data/raw/<name>."""
    target = ws.raw / name
    if not roots and Path(source).resolve() == target.resolve():
        return target
    copied = 0
    for rel in files:
        if roots:
            first, _, inner = rel.partition("/")
            root = Path(roots[first]).resolve()
        else:
            root, inner = Path(source).resolve(), rel
        why = outside(root, inner)
        if why:
            raise LayoutError(f"{root}: {inner}: {why}; it changed since it was listed: ingest it again")
        src, dst = root / inner, target / rel
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
    for rel, text in (written or {}).items():
        dst = target / rel
        if dst.is_file() and not dst.is_symlink() and dst.read_text() == text:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(dst)  # replaces a link itself, never writes through it
        copied += 1
    get_run_logger().info("data/raw/%s: %d new file(s) copied from %s", name, copied, source)
    return target
