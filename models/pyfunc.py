"""The registered detector as an MLflow pyfunc: what `mlflow models serve` answers with.

Input: uint8 RGB face crops (N, H, W, 3) at the model's input size (its `image_size`
metadata); output: P(fake) per crop. The decision threshold travels in the model's metadata.
It lives in `models/` because that folder ships with every logged model (code_paths): a
serving machine needs only torch, timm and mlflow, not deepfake-cl.
"""
from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import torch


class FaceCropClassifier(mlflow.pyfunc.PythonModel):
    def __init__(self, batch_size: int = 64):
        self.batch_size = batch_size
        self.model: torch.nn.Module | None = None

    def load_context(self, context):
        # The detector itself, pickled by torch (its classes come from models/, shipped alongside).
        self.model = torch.load(context.artifacts["detector"], map_location="cpu", weights_only=False).eval()

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        faces = np.asarray(model_input)
        if faces.ndim != 4 or faces.shape[-1] != 3:
            raise ValueError(f"expected uint8 face crops (N, H, W, 3), got shape {faces.shape}")
        out = []
        with torch.no_grad():
            for start in range(0, len(faces), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(faces[start:start + self.batch_size], dtype=np.uint8))
                x = x.permute(0, 3, 1, 2).float().div_(255)  # every model normalises [0, 1] input itself
                out.append(torch.softmax(self.model(x).float(), 1)[:, 1])
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)
