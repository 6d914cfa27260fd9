"""What `dfcl` shows: log records of INFO and up on the console and in the workspace's log file
(Workspace.log_file). A record carrying a traceback (Prefect logs one for every failed task
and flow run) goes to the file only, unless --verbose: users get the error as one line. Library
chatter users cannot act on is kept out."""
from __future__ import annotations

import logging
import warnings
from logging.handlers import RotatingFileHandler
from pathlib import Path


class LogFile(RotatingFileHandler):
    """Opened on the first record: a command that logs nothing leaves no file behind."""

    def __init__(self, path: Path):
        super().__init__(path, maxBytes=10 * 2**20, backupCount=2, delay=True)

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def configure_logging(log_file: Path, verbose: bool) -> None:
    console = logging.StreamHandler()  # stderr
    if not verbose:
        console.addFilter(lambda record: not record.exc_info)
    # A no-op where the root logger has handlers already (pytest's), as before.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[console, LogFile(log_file)])
    logging.getLogger("dvc").propagate = False  # DVC prints its own messages; once is enough
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
    # Library deprecation chatter (DVC, Avalanche) that users cannot act on.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="No loggers specified")
    warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")  # our pyfunc validates itself


def text_table(frame, sentences: list[str]) -> str:
    """`frame` as a console table whose `sentences` columns (notes, reasons) are left-aligned, the
    header too: pandas right-aligns text, which pushes a short sentence under a long one's end."""
    widths = {c: max(int(frame[c].astype(str).str.len().max()), len(c)) if len(frame) else len(c) for c in sentences}
    frame = frame.rename(columns={c: c.ljust(w) for c, w in widths.items()})
    return frame.to_string(index=False, formatters={c.ljust(w): (lambda w: lambda v: str(v).ljust(w))(w)
                                                    for c, w in widths.items()})
