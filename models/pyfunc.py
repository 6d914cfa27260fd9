"""The registered detector as an MLflow pyfunc: what `mlflow models serve` answers with.

Input: uint8 RGB face crops (N, H, W, 3) at the model's input size (its `image_size`
metadata); output: calibrated P(fake) per crop (Platt scaling fit on validation faces, the
`trust` artifact: dfcl/measure/trust.py). The model's cut on that scale and its "uncertain" band travel
in the metadata (`trust.threshold`, `trust.band`); `threshold` is the same cut on the raw scale.
It lives in `models/` because that folder ships with every logged model (code_paths): a
serving machine needs only torch, timm, safetensors and mlflow, not deepfake-cl.

The detector is stored as weights only: a safetensors file of its state dict whose header names
the architecture and its constructor arguments. Loading builds the network from the model
registry and fills in the tensors, so nothing in the registry is ever unpickled (a pickle
runs whatever code its author put in it). The pyfunc itself is logged as code (MLflow's
models-from-code, this file), not as a pickled object.
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import torch

WEIGHTS_FORMAT = "dfcl-state-dict-1"  # in the file's header and in the MLflow metadata (`weights_format`)
WEIGHTS_FILE = "detector.safetensors"


class NotWeightsFile(ValueError):
    """The file is not a detector saved by save_weights."""


def architecture_of(model: torch.nn.Module) -> dict | None:
    """{"name": ..., "arguments": {...}} that models.create_model recorded when it built `model`
    (None for a model built before it recorded them, or not by the registry)."""
    return getattr(model, "created_as", None)


def save_weights(model: torch.nn.Module, path: str | Path, architecture: dict) -> Path:
    """The model's tensors and `architecture` ({"name", "arguments"}: what create_model rebuilds
    it from) in one safetensors file."""
    from safetensors.torch import save_model

    header = {"format": WEIGHTS_FORMAT, "architecture": architecture["name"],
              "arguments": json.dumps(architecture["arguments"], sort_keys=True)}
    save_model(model, str(path), metadata=header)
    return Path(path)


def read_architecture(path: str | Path) -> dict:
    """The architecture a weights file names, from its header (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise NotWeightsFile(f"{path} is not a safetensors file ({e})") from None
    if header.get("format") != WEIGHTS_FORMAT:
        raise NotWeightsFile(f"{path} is a safetensors file without a detector header "
                             f"(format {header.get('format')!r}, expected {WEIGHTS_FORMAT!r})")
    return {"name": header["architecture"], "arguments": json.loads(header["arguments"])}


def load_weights(path: str | Path) -> torch.nn.Module:
    """The detector in `path`: the network built by the model registry (never from the file),
    then every tensor loaded into it, strictly (a missing or extra tensor is an error)."""
    from safetensors.torch import load_model

    from models.registry import create_model

    architecture = read_architecture(path)
    model = create_model(architecture["name"], **architecture["arguments"])
    load_model(model, str(path), strict=True, device="cpu")
    return model.eval()


def platt(p: np.ndarray, a: float, b: float) -> np.ndarray:
    """Platt scaling of P(fake): sigmoid(a * logit(p) + b) (dfcl.measure.trust.Calibration; here so that
    serving needs no deepfake-cl)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return (1 / (1 + np.exp(-(a * np.log(p / (1 - p)) + b)))).astype(np.float32)


def read_calibration(path: str | Path) -> tuple[float, float]:
    """(a, b) from a trust file's JSON header (no tensor read)."""
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        c = json.loads((f.metadata() or {})["json"])["calibration"]
    return float(c["a"]), float(c["b"])


class FaceCropClassifier(mlflow.pyfunc.PythonModel):
    def __init__(self, batch_size: int = 64):
        self.batch_size = batch_size
        self.model: torch.nn.Module | None = None
        self.calibration = (1.0, 0.0)

    def load_context(self, context):
        self.model = load_weights(context.artifacts["detector"])
        if "trust" in context.artifacts:  # versions registered before calibration answer raw P(fake)
            self.calibration = read_calibration(context.artifacts["trust"])

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
        return platt(torch.cat(out).numpy(), *self.calibration) if out else np.zeros(0, np.float32)


# Models-from-code: MLflow runs this file to get the model it logs and serves.
mlflow.models.set_model(FaceCropClassifier())
