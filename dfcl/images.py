"""Reading an image file. Apart from dfcl.data (the torch Dataset) so that face extraction of
image datasets, a DVC stage in a process of its own, starts without importing torch."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def read_image(path: Path) -> np.ndarray | str:
    """The image as RGB uint8, or the reason it cannot be used."""
    if not path.is_file() or path.stat().st_size == 0:
        return "missing or empty file"
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return "unreadable image (corrupt or not an image)"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
