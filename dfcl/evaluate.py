"""Any detector on any labelled folder: per-method and overall accuracy, ROC AUC, average
precision and equal error rate, plus a ROC plot. How users test a champion on a new dataset.

The folder goes through the same face extraction as training (any layout `dfcl ingest`
knows, videos included), into a temporary folder; every face of it counts (train and test
splits alike: none of it was used to train the model being evaluated)."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc, binary_average_precision, binary_eer, binary_roc

from dfcl.faces import framing_of
from dfcl.config import ConfigError
from dfcl.arrays import SPLITS, face_arrays, face_videos
from dfcl.metrics import balanced_accuracy, fake_probabilities, video_auc
from dfcl.trust import Trust, answer, coverage, ece, scores_and_features


@dataclass
class Detector:
    model: torch.nn.Module
    image_size: int
    threshold: float   # P(fake) at or above which a face is called fake (chosen on validation faces)
    # Where it came from, for every answer: uri, and for a registered model its name, version,
    # alias, architecture and the methods it learned.
    info: dict = field(default_factory=dict)
    # Calibration, "uncertain" band, novelty and attribution (dfcl.trust); None: a model without
    # them (a user's file, a version registered before them): raw P(fake), two answers.
    trust: Trust | None = None

    def judge(self, p_raw: np.ndarray, features: np.ndarray | None = None) -> list[dict]:
        """Per face: P(fake) on the scale shown (calibrated when it can be), verdict, novelty."""
        if self.trust is None:
            return [{"p_fake": float(q), "verdict": "fake" if q >= self.threshold else "real"} for q in p_raw]
        return self.trust.judge(p_raw, features)

    def judge_calibrated(self, p: float) -> str:
        """The answer for a P(fake) already on the shown scale (a video's aggregate)."""
        if self.trust is None:
            return "fake" if p >= self.threshold else "real"
        return answer(p, self.trust.band)

    @property
    def shown_threshold(self) -> float:
        """The decision cut on the scale of the P(fake) people see."""
        return self.trust.threshold if self.trust is not None else self.threshold


class NoModel(ConfigError):
    """No registered version carries the alias asked for (no champion yet)."""


class UntrustedModel(ConfigError):
    """The model is a pickle: loading it would run whatever code it holds."""


PICKLE_HINT = ("loading it unpickles it, which runs any code whoever wrote it put there; if you trust "
               "that, pass --trust-pickle (the API: api.trust_pickle, the gate: gate.trust_pickle)")


def load_detector(ref: str, params: dict, root: Path, trust_pickle: bool = False) -> Detector:
    """A model with the face size and decision threshold it was trained with, from an MLflow
    URI or model folder (register_challenger's metadata), a learner folder (data/learner: its
    current state), or a file (size from params, threshold 0.5): a weights file saved by
    models.pyfunc.save_weights, a state dict of params' `model:` (torch.save of tensors only),
    or, with `trust_pickle`, a pickled torch module."""
    path = Path(ref)
    size = params["data"]["image_size"]
    if ref.startswith(("models:/", "runs:/")) or (path / "MLmodel").is_file():
        return load_mlflow_detector(ref, size, trust_pickle)
    if (path / "CURRENT").is_file():
        from dfcl.learner import Learner

        learner = Learner.load(path, params, root)
        from dfcl.results import learned_card

        return Detector(learner.strategy.model.to("cpu").eval(), size, learner.history.threshold,
                        {"uri": ref, "architecture": params["model"]["name"], "framing": framing_of(params),
                         "methods": [e.key for e in learner.history.experiences],
                         "learned": learned_card(learner.history)}, learner.trust)
    if path.is_file():
        return Detector(load_model_file(path, params, trust_pickle), size, 0.5, {"uri": ref})
    raise ConfigError(f"--model {ref!r} is not an MLflow URI (models:/NAME@ALIAS, runs:/ID/model), "
                     "an MLflow model folder, a learner folder or a torch file")


def load_model_file(path: Path, params: dict, trust_pickle: bool = False) -> torch.nn.Module:
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
    from dfcl.strategies import make_model

    model = make_model({**params["model"], "pretrained": "none", "weights": None})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"{path} is not a state dict of model.name={params['model']['name']!r} "
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

    from dfcl.registry import alias_version
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


def scores(y: np.ndarray, p: np.ndarray, threshold: float = 0.5, videos: np.ndarray | None = None) -> dict:
    """Frame-level scores, plus `video_auc` (mean P(fake) per video) where videos have several faces."""
    yt, pt = torch.from_numpy(y).long(), torch.from_numpy(p).float()
    both = len(set(y.tolist())) == 2  # AUC, AP and EER need both classes
    out = {"faces": int(len(y)), "real": int((y == 0).sum()), "fake": int((y == 1).sum()),
            "accuracy": float(((p >= threshold) == (y == 1)).mean()) if len(y) else float("nan"),
            "balanced_accuracy": balanced_accuracy(yt, pt, threshold),
            "auc": float(binary_auroc(pt, yt)) if both else float("nan"),
            "ap": float(binary_average_precision(pt, yt)) if both else float("nan"),
            "eer": float(binary_eer(pt, yt)) if both else float("nan")}
    by_video = video_auc(y, p, videos)
    if not np.isnan(by_video):
        out["video_auc"] = by_video
        out["videos"] = int(len(set(videos)))
    return out


def trust_scores(detector: Detector, y: np.ndarray, p_raw: np.ndarray, judged: list[dict]) -> dict:
    """How sure the answers were: calibration error of the raw and the shown P(fake), the share
    answered (not "uncertain") and their accuracy, the share flagged novel; {} for a model
    without trust data."""
    if detector.trust is None:
        return {}
    q = np.array([j["p_fake"] for j in judged])
    out = {"ece_raw": ece(y, p_raw), "ece": ece(y, q)} | coverage(y, q, detector.trust.band)
    if judged and "novel" in judged[0]:
        out["novel_share"] = float(np.mean([j["novel"] for j in judged]))
    return out


def evaluate(detector: Detector, data: str, params: dict, roc_png: Path | None = None) -> dict:
    from dfcl.extraction import extract_dataset

    size, threshold = detector.image_size, detector.shown_threshold
    framing = detector.info.get("framing") or framing_of(params)  # faces cut as the model's training faces
    params = {**params, "data": {**params["data"], "image_size": size},
              "faces": {**params["faces"], "margin": framing["margin"],
                        "detect_in_images": framing["images"] == "reframed"}}
    name = Path(data).resolve().name
    with tempfile.TemporaryDirectory() as tmp:
        extract_dataset(data, Path(tmp) / name, params, name)
        per_method, ys, ps, vs, raws, judgements = {}, [], [], [], [], []
        for folder in sorted(p for p in (Path(tmp) / name).iterdir() if p.is_dir()):
            arrays = face_arrays(folder)
            x = np.concatenate([np.load(arrays[f"{s}_x"], mmap_mode="r") for s in SPLITS])
            y = np.concatenate([np.load(arrays[f"{s}_y"]) for s in SPLITS])
            v = np.concatenate([face_videos(arrays[f"{s}_x"]) for s in SPLITS])
            raw, features = scores_and_features(detector.model, x)
            judged = detector.judge(raw, features)
            p = np.array([j["p_fake"] for j in judged], dtype=np.float32)
            per_method[folder.name] = scores(y, p, threshold, v) | trust_scores(detector, y, raw, judged)
            ys.append(y)
            ps.append(p)
            vs.append(v)
            raws.append(raw)
            judgements += judged
    # Real faces shared by several methods (FF++ originals) count once per method there;
    # overall pools every method's faces as they were scored.
    y, p = np.concatenate(ys), np.concatenate(ps)
    report = {"data": str(data), "image_size": size, "threshold": threshold, "calibrated": detector.trust is not None,
              "band": None if detector.trust is None else list(detector.trust.band), "methods": per_method,
              "overall": scores(y, p, threshold, np.concatenate(vs)) | trust_scores(detector, y, np.concatenate(raws), judgements)}
    if roc_png:
        plot_roc({m: (y, p) for m, y, p in zip(per_method, ys, ps)}, roc_png, report)
        if detector.trust is not None:
            report["reliability_plot"] = str(reliability_path(roc_png))
            plot_reliability(y, np.concatenate(raws), p, reliability_path(roc_png))
    return report


def table(report: dict) -> str:
    """The report as a text table: one row per method, then overall (with trust data: calibration
    error, and the share answered outside the "uncertain" band with its accuracy)."""
    trust = report.get("calibrated")
    head = f"{'method':<28} {'faces':>6} {'accuracy':>8} {'bal acc':>7} {'AUC':>6} {'AP':>6} {'EER':>6} {'video AUC':>9}"
    lines = [head + (f" {'ECE':>5} {'answered':>8} {'acc answered':>12} {'novel':>5}" if trust else "")]
    for name, r in [*report["methods"].items(), ("overall", report["overall"])]:
        video = f"{r['video_auc']:>9.3f}" if "video_auc" in r else f"{'-':>9}"  # one face per video: = AUC
        line = (f"{name:<28} {r['faces']:>6} {r['accuracy']:>8.3f} {r['balanced_accuracy']:>7.3f} "
                f"{r['auc']:>6.3f} {r['ap']:>6.3f} {r['eer']:>6.3f} {video}")
        if trust:
            line += (f" {r['ece']:>5.3f} {r['coverage']:>8.3f} {r['answered_accuracy']:>12.3f}"
                     f" {r.get('novel_share', float('nan')):>5.2f}")
        lines.append(line)
    if trust:
        lo, hi = report["band"]
        lines.append(f"answered: P(fake) below {lo:.2f} (real) or at least {min(hi, 1):.2f} (fake); between: uncertain. "
                     "ECE: calibration error of the P(fake) shown (raw in the JSON)")
    return "\n".join(lines)


def reliability_path(roc_png: Path) -> Path:
    """x.roc.png -> x.reliability.png: the reliability diagram beside the ROC plot."""
    return roc_png.with_name(roc_png.name.removesuffix(".png").removesuffix(".roc") + ".reliability.png")


def plot_reliability(y: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, path: Path, bins: int = 10) -> None:
    """Reliability diagram: the share of fakes against the mean P(fake) in each bin, raw and calibrated."""
    from dfcl.plots import plt

    fig, ax = plt.subplots(figsize=(5, 5))
    edges = np.linspace(0, 1, bins + 1)
    for label, p in (("raw", raw), ("calibrated", calibrated)):
        which = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
        keep = [b for b in range(bins) if (which == b).any()]
        ax.plot([p[which == b].mean() for b in keep], [y[which == b].mean() for b in keep], "o-",
                label=f"{label} (ECE {ece(y, p):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="mean P(fake) in the bin", ylabel="share of fakes in the bin", title="reliability")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_roc(curves: dict, path: Path, report: dict) -> None:
    from dfcl.plots import plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for method, (y, p) in curves.items():
        if len(set(y.tolist())) == 2:
            fpr, tpr, _ = binary_roc(torch.from_numpy(p).float(), torch.from_numpy(y).long())
            ax.plot(fpr, tpr, label=f"{method} (AUC {report['methods'][method]['auc']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate (real called fake)", ylabel="true positive rate (fake caught)",
           title=f"ROC on {Path(report['data']).name}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
