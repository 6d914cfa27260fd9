"""A detector ready to answer: the model, the face size and threshold it was trained with, its
trust state (dfcl.measure.trust), and where it came from; loaded from an MLflow model (only its weights
file: nothing unpickled), a learner folder or a user's file. Detection (dfcl.serving.detect), the API,
the gate and `dfcl evaluate` all load models through here."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dfcl.config import ConfigError, Params
from dfcl.data.faces import framing_of
from dfcl.measure.trust import Trust, answer


@dataclass
class Detector:
    model: torch.nn.Module
    image_size: int
    threshold: float   # P(fake) at or above which a face is called fake (chosen on validation faces)
    # Where it came from, for every answer: uri, and for a registered model its name, version,
    # alias, architecture and the methods it learned.
    info: dict = field(default_factory=dict)
    # Calibration, "uncertain" band, novelty and attribution (dfcl.measure.trust); None: a model without
    # them (a user's file, a version registered before them): raw P(fake), two answers.
    trust: Trust | None = None

    def __post_init__(self):
        # The layout the model trained in and every caller feeds (dfcl.measure.scoring): a model
        # loaded from a file comes back in the default layout, and mixing the two converts the
        # activations at every convolution (measured: benchmarks/results/detect_batched_cpu.md).
        self.model = self.model.to(memory_format=torch.channels_last)

    def judge(self, p_raw: np.ndarray, features: np.ndarray | None = None,
              spread: np.ndarray | None = None, sharp: np.ndarray | None = None, sides=None) -> list[dict]:
        """Per face: P(fake) on the scale shown (calibrated when it can be), verdict, novelty;
        `spread`: how far each face's views disagree (dfcl.measure.trust.scores_and_features);
        `sharp`: the faces' dfcl.measure.trust.sharpness; `sides`: the picture pixels across each
        face was cut from (Trust.judge)."""
        if self.trust is None:
            return [{"p_fake": float(q), "verdict": "fake" if q >= self.threshold else "real"} for q in p_raw]
        return self.trust.judge(p_raw, features, spread, sharp, sides)

    def judge_calibrated(self, p: float, side: float | None = None) -> tuple[str, int | None]:
        """The answer for a P(fake) already on the shown scale (a video's aggregate) of faces cut
        from `side` picture pixels across, and the size whose band gave it (None: full size);
        "uncertain" below the smallest size measured (the faces' own answers say why)."""
        if self.trust is None:
            return ("fake" if p >= self.threshold else "real"), None
        try:
            at = self.trust.measured_at(side)
        except ValueError:
            return "uncertain", None
        return answer(p, self.trust.band_at(at)), at

    @property
    def shown_threshold(self) -> float:
        """The decision cut on the scale of the P(fake) people see."""
        return self.trust.threshold if self.trust is not None else self.threshold

    def params_as_trained(self, params: Params) -> dict:
        """`params` whose face settings cut faces as this model's training faces were: its input
        size, and its recorded framing (margin; re-framed images or whole crops). Models
        registered before framing was recorded: this workspace's faces.* settings. The one place
        detection and evaluation get their face geometry from."""
        framing = self.info.get("framing") or framing_of(params.faces)
        return params.replaced(data={"image_size": self.image_size},
                               faces={"margin": framing["margin"], "detect_in_images": framing["images"] == "reframed"})


class NoModel(ConfigError):
    """No registered version carries the alias asked for (no champion yet)."""


class UntrustedModel(ConfigError):
    """The model is a pickle: loading it would run whatever code it holds."""


PICKLE_HINT = ("loading it unpickles it, which runs any code whoever wrote it put there; if you trust "
               "that, pass --trust-pickle (the API: api.trust_pickle, the gate: gate.trust_pickle)")


def load_detector(ref: str, params: Params, root: Path, trust_pickle: bool = False) -> Detector:
    """A model with the face size and decision threshold it was trained with, from an MLflow
    URI or model folder (register_challenger's metadata), a learner folder (data/learner: its
    current state), or a file (size from params, threshold 0.5): a weights file saved by
    models.pyfunc.save_weights, a state dict of params' `model:` (torch.save of tensors only),
    or, with `trust_pickle`, a pickled torch module."""
    path = Path(ref)
    size = params.data.image_size
    if ref.startswith(("models:/", "runs:/")) or (path / "MLmodel").is_file():
        return load_mlflow_detector(ref, size, trust_pickle)
    if (path / "CURRENT").is_file():
        from dfcl.learning.learner import Learner

        learner = Learner.load(path, params, root)
        from dfcl.measure.metrics import learned_card

        return Detector(learner.strategy.model.to("cpu").eval(), size, learner.history.threshold,
                        {"uri": ref, "architecture": params.model.name, "framing": framing_of(params.faces),
                         "methods": [e.key for e in learner.history.experiences],
                         "learned": learned_card(learner.history)}, learner.trust)
    if path.is_file():
        return Detector(load_model_file(path, params, trust_pickle), size, 0.5, {"uri": ref})
    raise ConfigError(f"--model {ref!r} is not an MLflow URI (models:/NAME@ALIAS, runs:/ID/model), "
                     "an MLflow model folder, a learner folder or a torch file")


def load_model_file(path: Path, params: Params, trust_pickle: bool = False) -> torch.nn.Module:
    """The user's own file: a detector weights file, a state dict of the configured model, or a
    pickled module (only when trusted)."""
    import pickle

    from models.pyfunc import NotWeightsFile, load_weights

    try:
        return load_weights(path)
    except NotWeightsFile:
        pass
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only
    except pickle.UnpicklingError:
        if not trust_pickle:
            raise UntrustedModel(f"{path} is a pickled torch object, not a state dict; {PICKLE_HINT}") from None
        model = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"{path} holds a {type(model).__name__}, not a torch module") from None
        return model.eval()
    except Exception as e:  # not a torch file at all
        raise ConfigError(f"{path} is neither a safetensors nor a torch file ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path} holds a {type(state).__name__}, not a state dict (name -> tensor)")
    from dfcl.learning.strategies import make_model

    model = make_model(params.model.model_copy(update={"pretrained": "none", "weights": None}))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"{path} is not a state dict of model.name={params.model.name!r} "
                          f"with these model.* settings: {str(e).splitlines()[0]}") from None
    return model.eval()


def load_mlflow_detector(ref: str, default_size: int = 128, trust_pickle: bool = False) -> Detector:
    """A logged detector. `models:/NAME@ALIAS` is first resolved to its version, so the model,
    its metadata and the version it reports are one and the same even if the alias moves.
    `default_size` is for models logged without an `image_size` in their metadata.

    Only the weights file is read (models.pyfunc.load_weights builds the network from this
    installation's model registry): neither the pickled objects nor the code a logged model
    carries are loaded. Versions registered before weights-only registration are pickles:
    they load only with `trust_pickle`."""
    import mlflow

    from dfcl.ops.registry import alias_version
    from models.pyfunc import WEIGHTS_FORMAT, load_weights

    info = {"uri": ref}
    if ref.startswith("models:/") and "@" in ref:
        name, alias = ref[len("models:/"):].split("@", 1)
        version = alias_version(name, alias)
        if version is None:
            raise NoModel(f"no version of registered model {name!r} has the alias {alias!r} yet: train one with "
                          f"`dfcl retrain DATA` (or `dfcl demo`) and approve it, or pass --model")
        ref = f"models:/{name}/{version.version}"
        info.update(uri=ref, name=name, version=str(version.version), alias=alias)
    logged = mlflow.models.get_model_info(ref)  # the MLmodel file: YAML, nothing executed
    meta = logged.metadata or {}
    if meta.get("weights_format") == WEIGHTS_FORMAT:
        model = load_weights(_detector_artifact(ref, logged))
    elif not trust_pickle:
        raise UntrustedModel(f"{ref} was registered as a pickled torch module (before weights-only "
                             f"registration); {PICKLE_HINT}")
    elif "pytorch" in logged.flavors:  # versions registered before the pyfunc wrapper
        model = mlflow.pytorch.load_model(ref, map_location="cpu")
    else:  # the pyfunc over a pickled module: the module alone, not this installation's pyfunc class
        model = torch.load(_detector_artifact(ref, logged), map_location="cpu", weights_only=False)
    info.update(architecture=meta.get("architecture"), methods=meta.get("methods", []),
                test_sets=meta.get("test_sets", {}), framing=meta.get("framing"), learned=meta.get("learned", []),
                auc_forward_transfer=meta.get("auc_forward_transfer"))
    trust = None
    if "trust" in logged.flavors["python_function"].get("artifacts", {}):
        trust = Trust.load(_detector_artifact(ref, logged, "trust"))  # safetensors and JSON: nothing unpickled
    return Detector(model.eval(), int(meta.get("image_size", default_size)), float(meta.get("threshold", 0.5)),
                    info, trust)


def _detector_artifact(ref: str, logged, name: str = "detector") -> Path:
    """The local path of a logged pyfunc's artifact `name` (downloaded when remote)."""
    import mlflow

    artifact = logged.flavors["python_function"]["artifacts"][name]["path"]
    if Path(ref).is_dir():
        return Path(ref) / artifact
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{ref.rstrip('/')}/{artifact}"))
