import os
import shutil
import stat
from pathlib import Path

from prefect import get_run_logger, task

from dfcl.workspace import Workspace


@task
def copy_raw_dataset(ws: Workspace, source: str | list[str], name: str, files: list[str],
                     written: dict[str, str] | None = None, roots: dict[str, str] | None = None) -> Path:
    """Bring the dataset's files (videos, images, masks, split lists) into data/raw/<name>, the
    DVC-tracked copy, with the files the layout wrote for it (`written`: a self-blended
    experience's split list). `roots`: several datasets in one (dfcl.layouts.real_faces_of), each
    file's first folder names the dataset it comes from. Files already there unchanged are not
    copied again; nothing stored before is deleted."""
    target = ws.raw / name
    if not roots and Path(source).resolve() == target.resolve():
        return target
    copied = 0
    for rel in files:
        if roots:
            first, _, rest = rel.partition("/")
            src = Path(roots[first]) / rest
        else:
            src = Path(source).resolve() / rel
        dst = target / rel
        # copy2 keeps the modification time, so size + mtime tell an unchanged file
        stamp = (src.stat().st_size, src.stat().st_mtime_ns)
        if dst.exists() and (dst.stat().st_size, dst.stat().st_mtime_ns) == stamp:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():
            dst.unlink()  # it may be read-only, as the source was
        shutil.copy2(src, dst)
        dst.chmod(dst.stat().st_mode | stat.S_IWUSR)
        copied += 1
    for rel, text in (written or {}).items():
        dst = target / rel
        if dst.is_file() and dst.read_text() == text:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(dst)
        copied += 1
    get_run_logger().info("data/raw/%s: %d new file(s) copied from %s", name, copied, source)
    return target
