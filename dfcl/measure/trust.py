"""How far a verdict can be trusted: calibrated P(fake), an "uncertain" band, and whether a face
is like anything the model learned (and which learned method a fake resembles).

All of it is fit for the model a retraining ends with (after its last experience: the learner
passes in the validation and test scores its threshold and evaluation already took), on faces the
model has not trained on in that pass, by `fit_trust`, and travels with the model as one safetensors file (tensors plus a JSON header:
nothing is ever unpickled):

- calibration: Platt scaling of the logit of P(fake), fit on the validation faces of every
  method so far (sklearn's logistic regression on one feature). It is monotone, so AUC and every
  decision at the model's threshold are unchanged; a calibrated 0.8 means fake about 80% of the
  time on those faces (whose class mix, about two fakes per real in FF++, it also learns).
- band: on calibrated validation scores, the lowest cut whose "fake" answers reach
  `trust.precision` and the highest whose "real" answers do; between them a face is
  "uncertain". Hand-written: no library chooses a two-sided abstention band.
- a band per face size (`trust.size_bands`): the same choice on the validation faces as if cut
  from fewer picture pixels (shrunk, then resized back as a small crop is), at each size of
  SIDE_SHARES; a face is answered by the band of the largest such size at or below its own, and
  not at all below the smallest size whose band answers anything (`min_side`). Why not one floor
  under which nothing is answered (the rule before): a floor must show that a size's answered
  accuracy stays within a few points of full size's, which ~150 answered validation faces cannot
  show even where it does (the floor sat at the full 160 px for two of three champions, so every
  face of a 480p video was withheld); a band fit at the size promises the same precision as the
  full-size band, measured the same way, and answers the faces confident enough at that size.
- feature space: the penultimate features (the input of the model's `head`, the registry's
  contract). Novelty is the mean cosine distance of a face's features to their `trust.novelty_k`
  nearest among up to `trust.novelty_reference` training faces of the learned classes (kept as
  float16), flagged above the `trust.novelty_quantile` of validation faces. Attribution is the
  nearest class mean (real, each learned method's fakes) after PCA and whitening by one
  Ledoit-Wolf-shrunk within-class covariance (Mahalanobis, Lee et al. 2018; sklearn).
  Why two distances, measured on the FF++ champion (benchmarks/results/trust_cpu.md): the
  Mahalanobis score told learned test faces from DFDC, FLUX and StyleGAN faces at AUROC
  0.32-0.57 (unseen faces land near the class means once whitened), k-NN cosine at 0.83-0.89
  (0.85 with 1,000 reference faces); the class means named the FF++ method of a fake 0.64 of
  the time, a k-NN vote 0.52.
- abstention on the unfamiliar: the same k-NN distance to the real and to the fake reference faces
  apart; an answer is withheld when the face is farther from the learned faces of its answer than
  a cut fit on validation faces (`fit_abstention`: a class-wise, Mondrian conformal quantile at the
  strictest level that keeps `trust.keep` of the band's answers there). Written here in a few lines of
  numpy rather than with crepes or MAPIE (which compute such class-wise conformal p-values): the
  features and the k-NN score are this module's, and a quantile per class is all the rule needs.
- real photos from elsewhere (`trust.foreign_reals`): real faces of sets the model never trained on
  (another camera, another kind of photo) kept as a third reference. A "fake" answer is withheld when
  the face is nearer to them, relative to the learned forgeries, than all but `1 - trust.foreign_keep`
  of the validation faces answered "fake" are (`fit_fake_cut`). Why: a model that learned one camera's
  reals answers another camera's real photos "fake" and finds them FAMILIAR (near its learned fakes:
  benchmarks/results/trust_champion_seed1_cpu.md, FLUX reals 72% answered fake, novelty AUROC 0.39),
  so no distance to the learned faces alone withholds them; a distance to real photos of other kinds does.
- sharper than the faces it learned: a "fake" answer is withheld when the face is sharper (log variance
  of its Laplacian, `sharpness`) than all but `1 - trust.sharp_keep` of the validation faces answered
  "fake" (`fit_fake_cut`). Why: a model that learned one soft camera (FF++ c23) reads detail as forgery
  (issue 35's diagnostics); sharp real photos of another kind are answered "fake" with confidence
  (a StyleGAN-set real photo at P 0.98) while feeling familiar, and LFW's small photos, the foreign reals,
  are softer still. A plain image statistic says what the features do not: these answers were never
  measured on faces this sharp.

Over 300 lines: calibration, band, novelty, abstention and attribution are fit together, saved
in one file and applied together to each face; apart they would each need the others' features and file.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import binary_calibration_error

from dfcl.config import TrustConfig

TRUST_FORMAT = "dfcl-trust-1"
TRUST_FILE = "trust.safetensors"
EPS = 1e-6


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def ece(y, p, bins: int = 15) -> float:
    """Expected calibration error (torchmetrics, equal-width bins); NaN without faces."""
    if len(y) == 0:
        return math.nan
    return float(binary_calibration_error(torch.as_tensor(np.asarray(p), dtype=torch.float32),
                                          torch.as_tensor(np.asarray(y)).long(), n_bins=bins))


@dataclass
class Calibration:
    """P(fake) -> sigmoid(a * logit(P) + b). The identity (a=1, b=0) for an uncalibrated model."""
    a: float = 1.0
    b: float = 0.0

    def __call__(self, p) -> np.ndarray:
        from models.pyfunc import (
            platt,  # the serving copy of the formula: one definition
        )

        return platt(p, self.a, self.b)


def fit_calibration(y, p) -> Calibration:
    """Platt scaling on validation faces; the identity when they hold one class only, or when the
    fit would turn the scores around (a <= 0: a model no better than chance there)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y)
    if len(y) < 2 or y.min() == y.max():
        return Calibration()
    fit = LogisticRegression(C=1e4).fit(logit(p)[:, None], y)
    a, b = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    return Calibration(a, b) if a > 0 else Calibration()


def choose_band(y, p, precision: float, threshold: float) -> tuple[float, float]:
    """(lo, hi) on calibrated P(fake): "fake" at or above hi, "real" below lo, "uncertain" between.
    hi is the lowest cut at or above `threshold` whose fake answers are right at least `precision`
    of the time on these faces, lo the highest at or below it for real answers. A side that never
    reaches it gets no answers (hi above 1, lo 0): the model then says "uncertain" there."""
    y, p = np.asarray(y), np.asarray(p, dtype=np.float64)
    hi, lo = 1.0 + EPS, 0.0
    for t in np.unique(p[p >= threshold]):  # ascending: the first that reaches it answers the most
        called = p >= t
        if y[called].mean() >= precision:
            hi = float(t)
            break
    for t in np.unique(p[p <= threshold])[::-1]:  # descending
        called = p < t
        if called.any() and (1 - y[called]).mean() >= precision:
            lo = float(t)
            break
    return lo, hi


def answer(p: float, band: tuple[float, float]) -> str:
    lo, hi = band
    return "fake" if p >= hi else "real" if p < lo else "uncertain"


def withhold(row: dict, why: str) -> dict:
    """A face's answer turned "uncertain" for a reason its own evidence gives (`why`, in words)."""
    if row["verdict"] != "uncertain":
        row["withheld"] = row["verdict"]
    row["verdict"] = "uncertain"
    row["why"] = f"{row['why']}; {why}" if row.get("why") else why
    return row


def coverage(y, verdicts) -> dict:
    """A selective classifier's figures: the share of faces answered (not uncertain), the accuracy
    of those answers, and the share of the real faces answered "fake" (NaN where undefined)."""
    y, v = np.asarray(y), np.asarray(verdicts)
    fake, real = v == "fake", v == "real"
    answered = fake | real
    right = (fake & (y == 1)) | (real & (y == 0))
    reals = y == 0
    return {"coverage": float(answered.mean()) if len(y) else math.nan,
            "answered_accuracy": float(right.sum() / answered.sum()) if answered.any() else math.nan,
            "real_called_fake": float(fake[reals].mean()) if reals.any() else math.nan}


def risk_coverage(y, p, order) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, accuracy of the answered) when faces are answered in the order of `order`
    (ascending: the first answered first), each answered by p >= 0.5: the selective classifier's
    curve (Geifman & El-Yaniv 2017) for one confidence score."""
    y, p = np.asarray(y), np.asarray(p)
    idx = np.argsort(np.asarray(order), kind="stable")
    right = ((p[idx] >= 0.5) == (y[idx] == 1)).astype(float)
    n = np.arange(1, len(y) + 1)
    return n / len(y), np.cumsum(right) / n


@dataclass
class FeatureSpace:
    """PCA of penultimate features, whitened by the within-class covariance, with class means
    (attribution), and a reference sample of unit-length training features (novelty)."""
    mean: np.ndarray          # (D,) feature mean
    projection: np.ndarray    # (D, k): PCA then whitening; distances in this space are Mahalanobis
    centres: np.ndarray       # (C, k) class means, projected
    classes: list[str]        # "real", then each learned method (its fakes)
    reference: np.ndarray     # (R, D) unit vectors of training faces of every class (float16 on disk)
    k: int = 10               # neighbours the novelty score averages over
    reference_fake: np.ndarray | None = None  # (R,) bool: which reference faces are fakes (None: files before it)
    foreign: np.ndarray | None = None  # (F, D) unit vectors of real faces of sets never trained on (trust.foreign_reals)

    def novelty(self, features: np.ndarray) -> np.ndarray:
        """Mean cosine distance to the k nearest reference faces: 0 = like a learned face."""
        return self._knn(self._similarity(features))

    def familiarity(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(novelty, (N, 2) the same distance to the real and to the fake reference faces alone);
        the second None for a file without reference labels. One product serves both."""
        sim = self._similarity(features)
        if self.reference_fake is None or self.reference_fake.all() or not self.reference_fake.any():
            return self._knn(sim), None
        return self._knn(sim), np.stack([self._knn(sim[:, ~self.reference_fake]),
                                         self._knn(sim[:, self.reference_fake])], 1)

    def elsewhere(self, features: np.ndarray, by_class: np.ndarray | None = None) -> np.ndarray | None:
        """How much more a face resembles the real photos from elsewhere than the learned forgeries:
        its k-NN distance to the learned fake reference faces minus that to the foreign reals (high:
        like a real photo of another kind). `by_class`: familiarity's second value when the caller
        has it (the product with the reference is not taken twice). None without foreign reals or
        reference labels."""
        if self.foreign is None or not len(self.foreign) or self.reference_fake is None or not self.reference_fake.any():
            return None
        if by_class is None:
            by_class = self.familiarity(features)[1]
        return by_class[:, 1] - self._knn(self._similarity(features, self.foreign))

    def _similarity(self, features: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
        f = np.asarray(features, np.float32)
        return (f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), EPS)) @ (self.reference if reference is None
                                                                                 else reference).T

    def _knn(self, sim: np.ndarray) -> np.ndarray:
        k = min(self.k, sim.shape[1])
        return 1 - np.partition(sim, sim.shape[1] - k, axis=1)[:, -k:].mean(1)

    def project(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, np.float64) - self.mean) @ self.projection

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(N, C) Mahalanobis distances to each class mean."""
        z = self.project(features)
        return np.sqrt(((z[:, None, :] - self.centres[None]) ** 2).sum(-1))


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, rounded to the float16 a trust file keeps (float32 in memory)."""
    f = np.asarray(features, np.float64)
    return (f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), EPS)).astype(np.float16).astype(np.float32)


def fit_feature_space(features: np.ndarray, labels: np.ndarray, classes: list[str], components: int,
                      reference: int = 1000, k: int = 10, seed: int = 0) -> FeatureSpace:
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    features = np.asarray(features, np.float64)
    dims = int(min(components, features.shape[1], len(features) - 1))
    pca = PCA(n_components=dims, random_state=0).fit(features)
    z = pca.transform(features)
    present = sorted(set(labels.tolist()))
    centres = np.stack([z[labels == c].mean(0) for c in present])
    within = z - centres[np.searchsorted(present, labels)]
    cov = LedoitWolf().fit(within).covariance_
    values, vectors = np.linalg.eigh(cov)
    whiten = vectors / np.sqrt(np.maximum(values, EPS))
    projection = pca.components_.T @ whiten
    kept = _sample(len(features), reference, seed)
    ref = unit_rows(features[kept])
    return FeatureSpace(pca.mean_, projection, centres @ whiten, [classes[c] for c in present], ref, k,
                        np.asarray(labels)[kept] > 0)


UNLIKE = {"fake": "unlike the forgeries it learned", "real": "unlike the real faces it learned"}
ELSEWHERE = "more like real photos of other kinds ({}) than the forgeries it learned"
SHARPER = "sharper than the faces its 'fake' answers were measured on"
CUT_OFF = "face cut off at the edge of the picture"
VIEWS = "the face and its mirror image are answered differently"
# Face sizes tried by `fit_size_bands`, as shares of the model's input side (32 to 128 px at 160).
SIDE_SHARES = (0.2, 0.3, 0.4, 0.6, 0.8)


def too_small(side: int, floor: int) -> str:
    return (f"face too small: {side} px across in the picture, below the {floor} px down to which its answers were "
            "measured to hold")


def shrunk_to(side: int) -> str:
    """Where a small face's promise was measured, in words (Trust.population's suffix)."""
    return f", shrunk to {side} px across"


@dataclass
class Trust:
    """Everything a verdict's confidence rests on; `fit_trust` makes it, `save`/`load` keep it."""
    calibration: Calibration = field(default_factory=Calibration)
    threshold: float = 0.5            # the model's decision cut, on calibrated P(fake)
    band: tuple[float, float] = (0.5, 0.5)
    precision: float = 0.95
    novelty_threshold: float = math.inf   # novelty scores above it: unlike anything learned
    space: FeatureSpace | None = None
    report: dict = field(default_factory=dict)   # what was measured when it was fit (validation and test)
    # A "real" / "fake" answer is withheld ("uncertain") when the face is farther than this from the
    # learned faces of that class (FeatureSpace.familiarity; fit by `fit_abstention`).
    unfamiliar: tuple[float, float] = (math.inf, math.inf)
    learned: list[str] = field(default_factory=list)  # the experiences whose validation faces it was fit on
    flip: bool = False                # each face is scored as the mean of it and its mirror image
    # With `flip`, an answer is withheld when the face's two views disagree by more than this, in
    # logits (|logit P(face) - logit P(mirror)|; fit by `fit_views`).
    views: float = math.inf
    # Faces cut from fewer source pixels across than this are not answered (fit by `fit_size_bands`).
    min_side: int = 0
    # A face with less of its box inside the picture than this is "cut off" and not answered (fit by
    # `fit_min_inside` on the learned training faces; 1: any box leaving the picture, files before it).
    min_inside: float = 1.0
    # A "fake" answer is withheld when FeatureSpace.elsewhere of the face is above this (fit by
    # `fit_fake_cut`); `foreign` names the sets of real photos it was fit with.
    elsewhere: float = math.inf
    foreign: list[str] = field(default_factory=list)
    # A "fake" answer is withheld when the face's `sharpness` is above this (fit by `fit_fake_cut`).
    sharper: float = math.inf
    # {size: band} for faces cut from about `size` source pixels across, the full input size's band
    # included (fit by `fit_size_bands`; {}: every face gets `band`, files before it).
    size_bands: dict[int, tuple[float, float]] = field(default_factory=dict)

    @property
    def calibrated(self) -> bool:
        return (self.calibration.a, self.calibration.b) != (1.0, 0.0)

    def measured_at(self, side: float | None) -> int | None:
        """The face size whose band answers a face cut from `side` source pixels across: the
        largest fitted size at or below it (a face has at least that size's pixels); the full
        size, or no size at all (None), answer with `band`. Raises ValueError below `min_side`."""
        if side is None or math.isnan(side):
            return None
        if side < self.min_side:
            raise ValueError(too_small(int(side), self.min_side))
        sizes = [k for k in self.size_bands if k <= side]
        return max(sizes) if sizes and max(sizes) < max(self.size_bands) else None

    def band_at(self, measured_at: int | None) -> tuple[float, float]:
        return self.band if measured_at is None else self.size_bands[measured_at]

    def judge(self, p_raw: np.ndarray, features: np.ndarray | None, spread: np.ndarray | None = None,
              sharp: np.ndarray | None = None, sides=None) -> list[dict]:
        """Per face: calibrated P(fake), the three-way verdict, novelty and the nearest learned
        method; an answer whose face is unlike the learned faces of its class, or whose views
        disagree (`spread`, from scores_and_features with flip), or a "fake" answer on a face
        sharper than those answers were measured on (`sharp`: `sharpness` of the faces), becomes
        "uncertain", `withheld` saying which answer and `why` in words. `sides`: how many picture
        pixels across each face was cut from (None: the model's input size); a smaller face is
        answered by the band of its size (`measured_at` names it), or withheld below `min_side`."""
        p = self.calibration(p_raw)
        out = []
        for q, side in zip(p, [None] * len(p) if sides is None else sides):
            row = {"p_fake": float(q), "verdict": answer(float(q), self.band)}
            try:
                at = self.measured_at(side)
            except ValueError as small:
                withhold(row, str(small))
            else:
                row["verdict"] = answer(float(q), self.band_at(at))
                if at is not None:
                    row["measured_at"] = at
            out.append(row)
        if spread is not None:
            for row, gap in zip(out, spread):
                if row["verdict"] != "uncertain" and gap > self.views:
                    withhold(row, VIEWS)
        if sharp is not None:
            for row, value in zip(out, sharp):
                if row["verdict"] == "fake" and value > self.sharper:
                    withhold(row, SHARPER)
        if self.space is not None and features is not None and len(out):
            d = self.space.distances(features)
            fakes = [i for i, c in enumerate(self.space.classes) if c != "real"]
            novelty, by_class = self.space.familiarity(features)
            elsewhere = self.space.elsewhere(features, by_class) if not math.isinf(self.elsewhere) else None
            for i, (row, dist, score) in enumerate(zip(out, d, novelty)):
                score = float(score)
                row["novelty"] = round(score, 4)
                row["novel"] = bool(score > self.novelty_threshold)
                if by_class is not None and row["verdict"] != "uncertain":
                    c = int(row["verdict"] == "fake")
                    if by_class[i, c] > self.unfamiliar[c]:
                        withhold(row, UNLIKE[row["verdict"]])
                if elsewhere is not None and row["verdict"] == "fake" and elsewhere[i] > self.elsewhere:
                    withhold(row, ELSEWHERE.format(", ".join(self.foreign)))
                if fakes:
                    near = np.exp(-0.5 * (dist[fakes] ** 2 - dist[fakes].min() ** 2))
                    near /= near.sum()
                    best = int(np.argmax(near))
                    row["resembles"] = {"method": self.space.classes[fakes[best]], "similarity": round(float(near[best]), 3)}
        return out

    def population(self, measured_at: int | None = None) -> str:
        """Where the promises were measured, in words (for faces answered by a size's band, that size)."""
        n = len(self.learned) if self.learned else len(self.space.classes) - 1 if self.space else 0
        where = f"on validation faces of the {n} method{'s' if n != 1 else ''} it learned" if n \
            else "on validation faces of what it learned"
        return where + (shrunk_to(measured_at) if measured_at is not None else "")

    def summary(self) -> dict:
        """The scalars, for MLflow metadata, model cards and answers."""
        return {"calibration": asdict(self.calibration), "threshold": round(self.threshold, 4),
                "band": [round(self.band[0], 4), min(round(self.band[1], 4), 1.0)], "precision": self.precision,
                "novelty_threshold": None if math.isinf(self.novelty_threshold) else round(self.novelty_threshold, 3),
                "unfamiliar": [None if math.isinf(c) else round(c, 4) for c in self.unfamiliar],
                "learned": self.learned, "flip": self.flip,
                "views": None if math.isinf(self.views) else round(self.views, 4), "min_side": self.min_side,
                "size_bands": {str(k): [round(lo, 4), min(round(hi, 4), 1.0)] for k, (lo, hi) in self.size_bands.items()},
                "min_inside": self.min_inside, "elsewhere": None if math.isinf(self.elsewhere) else round(self.elsewhere, 4),
                "foreign": self.foreign, "sharper": None if math.isinf(self.sharper) else round(self.sharper, 4), "classes": self.space.classes if self.space else [], **self.report}

    def save(self, path: Path) -> Path:
        from safetensors.numpy import save_file

        tensors = {}
        if self.space is not None:
            tensors = {k: np.ascontiguousarray(getattr(self.space, k), np.float32) for k in ("mean", "projection", "centres")}
            tensors["reference"] = np.ascontiguousarray(self.space.reference, np.float16)
            if self.space.reference_fake is not None:
                tensors["reference_fake"] = self.space.reference_fake.astype(np.uint8)
            if self.space.foreign is not None:
                tensors["foreign"] = np.ascontiguousarray(self.space.foreign, np.float16)
        header = {"calibration": asdict(self.calibration), "threshold": self.threshold, "band": list(self.band),
                  "precision": self.precision, "novelty_threshold": None if math.isinf(self.novelty_threshold)
                  else self.novelty_threshold, "classes": self.space.classes if self.space else [],
                  "k": self.space.k if self.space else 0, "report": self.report,
                  "unfamiliar": [None if math.isinf(c) else c for c in self.unfamiliar], "learned": self.learned,
                  "flip": self.flip, "views": None if math.isinf(self.views) else self.views,
                  "min_side": self.min_side, "min_inside": self.min_inside,
                  "size_bands": {str(k): list(b) for k, b in self.size_bands.items()},
                  "elsewhere": None if math.isinf(self.elsewhere) else self.elsewhere, "foreign": self.foreign,
                  "sharper": None if math.isinf(self.sharper) else self.sharper}
        # safetensors refuses an empty file: one placeholder tensor when there is no feature space
        save_file(tensors or {"none": np.zeros(1, np.float32)}, str(path),
                  metadata={"format": TRUST_FORMAT, "json": json.dumps(header)})
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> "Trust":
        """A trust file, checked as untrusted input (it may come from a registry): its header must
        be the format's JSON with numbers where numbers go, and the tensors' shapes must agree."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "np") as f:
                meta = f.metadata() or {}
                if meta.get("format") != TRUST_FORMAT:
                    raise ValueError(f"{path} is not a trust file (format {meta.get('format')!r})")
                h = json.loads(meta["json"])
                space = None
                if "centres" in f.keys():
                    space = FeatureSpace(*(f.get_tensor(k).astype(np.float64) for k in ("mean", "projection", "centres")),
                                         classes=[str(c) for c in h["classes"]],
                                         reference=f.get_tensor("reference").astype(np.float32), k=int(h["k"]),
                                         reference_fake=f.get_tensor("reference_fake").astype(bool)
                                         if "reference_fake" in f.keys() else None,
                                         foreign=f.get_tensor("foreign").astype(np.float32) if "foreign" in f.keys() else None)
            nt = h["novelty_threshold"]
            # files written before abstention on the unfamiliar (or on views): no cut (inf), no learned list, no flip
            cuts = [math.inf if c is None else float(c) for c in h.get("unfamiliar", [None, None])]
            views, elsewhere, sharper = h.get("views"), h.get("elsewhere"), h.get("sharper")
            trust = cls(Calibration(float(h["calibration"]["a"]), float(h["calibration"]["b"])), float(h["threshold"]),
                        (float(h["band"][0]), float(h["band"][1])), float(h["precision"]),
                        math.inf if nt is None else float(nt), space, dict(h.get("report", {})),
                        (cuts[0], cuts[1]), [str(m) for m in h.get("learned", [])], bool(h.get("flip", False)),
                        math.inf if views is None else float(views), int(h.get("min_side", 0)),
                        float(h.get("min_inside", 1.0)), math.inf if elsewhere is None else float(elsewhere),
                        [str(s) for s in h.get("foreign", [])], math.inf if sharper is None else float(sharper),
                        _size_bands(h.get("size_bands", {}), path))
        except (SafetensorError, KeyError, TypeError, IndexError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a valid trust file ({type(e).__name__}: {e})") from None
        if space is not None:
            d, k = space.projection.shape
            if (space.mean.shape != (d,) or space.centres.shape != (len(space.classes), k)
                    or space.reference.ndim != 2 or space.reference.shape[1] != d or space.k < 1
                    or (space.reference_fake is not None and space.reference_fake.shape != (len(space.reference),))
                    or (space.foreign is not None and (space.foreign.ndim != 2 or space.foreign.shape[1] != d))):
                raise ValueError(f"{path}: the feature space's shapes disagree")
        return trust


def _size_bands(header: dict, path: Path) -> dict[int, tuple[float, float]]:
    """A trust file's {size: band}, checked: whole sizes, two numbers each."""
    try:
        return {int(k): (float(lo), float(hi)) for k, (lo, hi) in header.items()}
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{path} is not a valid trust file (size_bands: {e})") from None


def sharpness(faces) -> np.ndarray:
    """Log variance of the Laplacian of each uint8 face's grey image (N, H, W, 3): the usual focus
    measure, the statistic the "sharper than" rule reads (about 0.2 ms a 160-px face on the 2-core CPU)."""
    import cv2

    return np.array([np.log(cv2.Laplacian(cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()
                            + 1e-6) for f in faces], dtype=np.float64).reshape(-1)


def views_spread(p, p_mirror) -> np.ndarray:
    """How far a face's two views disagree: |logit P(face) - logit P(mirror)|."""
    return np.abs(logit(p) - logit(p_mirror))


@torch.no_grad()
def scores_and_features(model: torch.nn.Module, faces, device="cpu", batch_size: int = 256,
                        flip: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Raw P(fake), penultimate features (the input of `model.head`) and the views' spread of
    uint8 faces (N, H, W, 3). Features None for a model without a `head` (a user's module outside
    the registry's contract). `flip`: each the mean over the face and its mirror image (test-time
    flip averaging), and how far the two disagree (views_spread; None without flip)."""
    from dfcl.measure.scoring import fake_probabilities

    if flip:
        p, f, _ = scores_and_features(model, faces, device, batch_size)
        p2, f2, _ = scores_and_features(model, np.ascontiguousarray(np.asarray(faces)[:, :, ::-1]), device, batch_size)
        return (p + p2) / 2, None if f is None else (f + f2) / 2, views_spread(p, p2)
    head = getattr(model, "head", None)
    if not isinstance(head, torch.nn.Module):
        return fake_probabilities(model, faces, device, batch_size).numpy(), None, None
    caught = []
    hook = head.register_forward_hook(lambda m, args, out: caught.append(args[0].detach().float().cpu()))
    try:
        p = fake_probabilities(model, faces, device, batch_size).numpy()
    finally:
        hook.remove()
    features = torch.cat(caught).flatten(1).numpy() if caught else np.zeros((0, 0), np.float32)
    return p, features, None


def _sample(n: int, k: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(n)[:k]) if k and n > k else np.arange(n)


@dataclass
class Scored:
    """One set's faces as the model sees them: labels, raw P(fake), features (None: no `head`),
    the views' spread (None: scored one way), their `sharpness` (None: not measured)."""
    name: str
    y: np.ndarray
    p: np.ndarray
    features: np.ndarray | None
    spread: np.ndarray | None = None
    sharp: np.ndarray | None = None


def fit_abstention(y, verdicts, by_class: np.ndarray, keep: float, loosest: float) -> tuple[tuple[float, float], float]:
    """Cuts (real, fake) on the distance of a face to the learned faces of the class it is answered
    (FeatureSpace.familiarity), and the level they sit at. Each cut is that quantile of the
    distances of its own class's validation faces (a Mondrian conformal cut: a new face of a
    learned method is withheld with probability about 1 - level); the level is the lowest that
    still keeps `keep` of the band's answers on the validation faces, so the model withholds every
    answer that loss allows it to, and at most `loosest`. The rule is the selective classifier's:
    fix what it may cost on what was learned, abstain most on what is unlike it."""
    y, v = np.asarray(y), np.asarray(verdicts)
    answered, c = v != "uncertain", (v == "fake").astype(int)
    d = by_class[np.arange(len(y)), c]

    def cuts_at(level):
        return tuple(float(np.quantile(by_class[y == k, k], level)) if (y == k).any() else math.inf for k in (0, 1))

    for level in np.round(np.arange(0.01, loosest, 0.01), 2):
        cuts = cuts_at(level)
        if (answered & (d <= np.asarray(cuts)[c])).sum() >= keep * answered.sum():
            return cuts, float(level)
    return cuts_at(loosest), float(loosest)


def fit_views(spread_answered: np.ndarray, cost: float) -> float:
    """The cut on the views' spread (in logits) above which an answer is withheld: the (1 - cost)
    quantile of the spreads of the band's answers on learned validation faces, so that the rule
    withholds about `cost` of those answers and, on faces the two views read differently more
    often (unfamiliar ones, measured in benchmarks/trust.py), more. No cost, or nothing answered: no cut."""
    if cost <= 0 or not len(spread_answered):
        return math.inf
    return float(np.quantile(spread_answered, 1 - cost))


def fit_fake_cut(scores_of_fake_answers: np.ndarray, keep: float) -> float:
    """The cut on a score (FeatureSpace.elsewhere, `sharpness`) above which a "fake" answer is
    withheld: the `keep` quantile of it over the band's "fake" answers on learned validation faces,
    so that the rule withholds about 1 - keep of those and, on the kind of face it is for (real
    photos of other kinds; sharper photos), more (measured in benchmarks/trust.py). keep 1, or no
    fake answer to fit on: no cut."""
    if keep >= 1 or not len(scores_of_fake_answers):
        return math.inf
    return float(np.quantile(scores_of_fake_answers, keep))


def score_experiences(model: torch.nn.Module, experiences: list[tuple[str, dict[str, tuple[Path, Path]]]],
                      settings: TrustConfig, device="cpu", seed: int = 0, score=None,
                      scored: dict[str, list[Scored]] | None = None) -> tuple[np.ndarray | None, np.ndarray | None, list, list]:
    """What `fit_scored` fits on: features of up to `fit_faces` training faces per method and class
    (and their class: 0 real, i + 1 the fakes of experience i), and the validation and test
    faces scored (Scored). `score(model, faces, device)` -> (P(fake), features): by default
    scores_and_features with `trust.flip` (a benchmark passes its own, to score each face once).
    `scored`: {"val"|"test": [Scored, one per experience holding that split]} the caller has scored
    already (the learner's calibration and evaluation): those splits are not scored again."""
    scored = scored or {}
    def load(paths):
        return np.load(paths[0], mmap_mode="r"), np.load(paths[1])

    def default(m, x, d):
        return scores_and_features(m, x, d, flip=settings.flip)

    score = score or default
    fit_f, fit_l, val, test = [], [], [], []
    for i, (method, splits) in enumerate(experiences):
        if "train" in splits:
            x, y = load(splits["train"])
            for c in (0, 1):
                idx = np.flatnonzero(y == c)[_sample(int((y == c).sum()), settings.fit_faces, seed + i)]
                if len(idx):
                    f = score(model, x[idx], device)[1]
                    if f is None:
                        break
                    fit_f.append(f)
                    fit_l.append(np.full(len(idx), i + 1 if c else 0))
        for split, into in (("val", val), ("test", test)):
            if split in splits and split not in scored:
                x, y = load(splits[split])
                into.append(Scored(method, y, *score(model, x, device), sharp=sharpness(x)))
    val, test = scored.get("val", val), scored.get("test", test)
    if not fit_f:
        return None, None, val, test
    return np.concatenate(fit_f), np.concatenate(fit_l), val, test


def fit_scored(fit_f, fit_l, methods: list[str], val: list[Scored], test: list[Scored], threshold_raw: float,
               settings: TrustConfig, seed: int = 0, unseen: list[Scored] = (), foreign: list[Scored] = ()) -> Trust:
    """Trust from scored faces (score_experiences): the feature space from the training faces,
    calibration, band, novelty threshold and the cuts on the unfamiliar from the validation faces,
    and the same figures measured on the test faces and on `unseen` (sets never trained on).
    `foreign`: real faces of sets never trained on (trust.foreign_reals), the reference of the
    rule on real photos from elsewhere (up to `novelty_reference` of them kept)."""
    space = None
    if fit_f is not None and len(fit_f) >= 3:  # PCA and a covariance need a few faces
        space = fit_feature_space(fit_f, fit_l, ["real", *methods], settings.components,
                                  settings.novelty_reference, settings.novelty_k, seed)
        reals = [s.features[s.y == 0] for s in foreign if s.features is not None]
        if reals and sum(map(len, reals)):
            reals = np.concatenate(reals)
            space.foreign = unit_rows(reals[_sample(len(reals), settings.novelty_reference, seed)])
    trust = Trust(precision=settings.precision, space=space, learned=list(methods), flip=settings.flip)
    if not val:
        return trust
    vy, vp = np.concatenate([v.y for v in val]), np.concatenate([v.p for v in val])
    trust.calibration = fit_calibration(vy, vp)
    trust.threshold = float(trust.calibration(np.array([threshold_raw]))[0])
    trust.band = choose_band(vy, trust.calibration(vp), settings.precision, trust.threshold)
    fakes = trust.calibration(vp) >= trust.band[1]  # the band's "fake" answers: what the fake-answer cuts keep
    if all(v.spread is not None for v in val):
        answered = np.array([answer(q, trust.band) != "uncertain" for q in trust.calibration(vp)], bool)
        trust.views = fit_views(np.concatenate([v.spread for v in val])[answered], settings.views_cost)
    if space is not None:  # features exist for every face then (the same model)
        novelty, by_class = space.familiarity(np.concatenate([v.features for v in val]))
        trust.novelty_threshold = float(np.quantile(novelty, settings.novelty_quantile))
        if by_class is not None:
            verdicts = [r["verdict"] for r in trust.judge(vp, None)]
            trust.unfamiliar, level = fit_abstention(vy, verdicts, by_class, settings.keep,
                                                     settings.novelty_quantile)
            trust.report["unfamiliar_level"] = level
        elsewhere = space.elsewhere(np.concatenate([v.features for v in val]))
        if elsewhere is not None:
            trust.elsewhere = fit_fake_cut(elsewhere[fakes], settings.foreign_keep)
            trust.foreign = [s.name for s in foreign]
            trust.report["foreign_faces"] = int(len(space.foreign))
    if all(v.sharp is not None for v in val):
        trust.sharper = fit_fake_cut(np.concatenate([v.sharp for v in val])[fakes], settings.sharp_keep)
    trust.report |= measured(trust, val, "val") | measured(trust, test, "test")
    if unseen:
        trust.report["unseen"] = {s.name: measured(trust, [s], "test") for s in unseen}
    return trust


def shrunk(faces: np.ndarray, side: int) -> np.ndarray:
    """Faces as if cut from `side` source pixels across: shrunk to it, then resized back to the
    model's input as dfcl.data.faces.crop_square resizes a small crop (bilinear)."""
    import cv2

    size = faces.shape[1]
    return np.stack([cv2.resize(cv2.resize(np.ascontiguousarray(f), (side, side), interpolation=cv2.INTER_AREA),
                                (size, size), interpolation=cv2.INTER_LINEAR) for f in faces])


def fit_size_bands(trust: Trust, model: torch.nn.Module, x: np.ndarray, y: np.ndarray, min_answers: int = 1,
                   device="cpu", scores: dict | None = None) -> tuple[dict[int, tuple[float, float]], int, dict]:
    """A band per face size: the validation faces `x` scored as if cut from each size of
    SIDE_SHARES, largest first, and the band chosen again on each size's calibrated scores as on
    full-size faces (choose_band: the same precision and threshold); the other rules as fit. The
    walk stops at the first size whose band answers fewer than `min_answers` faces (a promise
    resting on a handful of answers is no measurement): below the last size kept, a face is too
    small (`min_side`). `scores`: a dict the caller keeps to score each size once when it fits
    several trusts of one model on the same faces (the benchmark's sweeps).
    Returns ({size: band}, min_side, {"answered_accuracy_by_side": {size: accuracy},
    "answered_by_side": {size: faces answered}}); ({}, 0, ...) where nothing is answered at full size."""
    from dataclasses import replace

    scores = {} if scores is None else scores
    full = x.shape[1]
    bands, floor, accuracy, answered_n = {}, 0, {}, {}
    for side in [full, *sorted({max(8, round(full * s)) for s in SIDE_SHARES}, reverse=True)]:
        if (side, trust.flip) not in scores:
            faces = x if side == full else shrunk(x, side)
            scores[side, trust.flip] = (*scores_and_features(model, faces, device, flip=trust.flip), sharpness(faces))
        p = scores[side, trust.flip][0]
        band = trust.band if side == full else choose_band(y, trust.calibration(p), trust.precision, trust.threshold)
        v = np.array([j["verdict"] for j in replace(trust, band=band, size_bands={}, min_side=0).judge(*scores[side, trust.flip])])
        answered = v != "uncertain"
        answered_n[str(side)] = int(answered.sum())
        accuracy[str(side)] = round(float(((v == "fake") == (np.asarray(y) == 1))[answered].mean()), 4) if answered.any() else None
        if not answered.any() or (side != full and answered.sum() < min_answers):
            break
        bands[side], floor = band, side
    return bands, floor, {"answered_accuracy_by_side": accuracy, "answered_by_side": answered_n}


def fit_min_inside(training_faces: list[Path], quantile: float) -> tuple[float, dict]:
    """The least share of its box a face must have inside the picture to be answered: the
    `quantile` of that share over the learned training faces (their manifests' `inside`). A model
    trained on tight face crops (every FF++ crop's box runs off its picture; a quarter of the box
    may be outside) answers such crops as it learned them; a face cut off more than those were is
    not what its figures were measured on. 1.0 (any box leaving the picture is cut off) when the
    manifests do not tell, or `quantile` is 0. Returns (floor, what it was fit on)."""
    from dfcl.data.arrays import face_inside

    found = [v for v in (face_inside(p) for p in training_faces) if v is not None]
    shares = np.concatenate(found) if found else np.zeros(0)
    shares = shares[np.isfinite(shares)]
    if quantile <= 0 or not len(shares):
        return 1.0, {"inside_faces": int(len(shares))}
    # floored to 2 decimals so that the fitted faces themselves stay on the answered side
    floor = min(math.floor(float(np.quantile(shares, quantile)) * 100) / 100, 1.0)
    return floor, {"inside_faces": int(len(shares)), "inside_median": round(float(np.median(shares)), 4),
                   "inside_cut_off": round(float((shares < floor).mean()), 4)}


def fit_trust(model: torch.nn.Module, experiences: list[tuple[str, dict[str, tuple[Path, Path]]]], threshold_raw: float,
              settings: TrustConfig, device="cpu", seed: int = 0, unseen: list[tuple[str, tuple[Path, Path]]] = (),
              scored: dict[str, list[Scored]] | None = None, foreign: list[tuple[str, np.ndarray]] = ()) -> Trust:
    """Trust for `model` after learning `experiences` [(method, {"train"|"val"|"test": (images, labels)})],
    measured also on `unseen` [(name, (images, labels))], faces of sets it never trained on.
    `scored`: splits already scored by the caller, as score_experiences takes them. `foreign`:
    [(name, real faces (N, H, W, 3))] of sets never trained on (trust.foreign_reals)."""
    fit_f, fit_l, val, test = score_experiences(model, experiences, settings, device, seed, scored=scored)
    scored = [Scored(name, np.load(y), *scores_and_features(model, np.load(x, mmap_mode="r"), device,
                                                            flip=settings.flip), sharp=sharpness(np.load(x, mmap_mode="r")))
              for name, (x, y) in unseen]
    reals = [Scored(name, np.zeros(len(x), np.int64), *scores_and_features(model, x, device, flip=settings.flip))
             for name, x in foreign]
    trust = fit_scored(fit_f, fit_l, [m for m, _ in experiences], val, test, threshold_raw, settings, seed, scored,
                       reals)
    faces = [(np.load(s["val"][0], mmap_mode="r"), np.load(s["val"][1])) for _, s in experiences if "val" in s]
    if settings.size_bands and faces:
        x, y = np.concatenate([f[0] for f in faces]), np.concatenate([f[1] for f in faces])
        keep = _sample(len(y), settings.small_face_faces, seed)  # scored up to 6 times each
        trust.size_bands, trust.min_side, by_side = fit_size_bands(trust, model, np.asarray(x[keep]), y[keep],
                                                                   settings.size_min_answers, device)
        trust.report.update(by_side)
    trust.min_inside, fitted = fit_min_inside([s["train"][0] for _, s in experiences if "train" in s],
                                              settings.edge_quantile)
    trust.report.update(fitted)
    return trust


def measured(trust: Trust, sets: list[Scored], split: str) -> dict:
    """ECE before and after calibration, the selective classifier's figures (coverage, accuracy of
    the answered, reals answered fake), and attribution accuracy of the fakes (top-1 nearest
    learned method) on `sets`."""
    if not sets:
        return {}
    y, p = np.concatenate([s.y for s in sets]), np.concatenate([s.p for s in sets])
    q = trust.calibration(p)
    out = {f"{split}_ece_raw": ece(y, p), f"{split}_ece": ece(y, q)}
    spread = np.concatenate([s.spread for s in sets]) if all(s.spread is not None for s in sets) else None
    features = np.concatenate([s.features for s in sets]) if all(s.features is not None for s in sets) else None
    sharp = np.concatenate([s.sharp for s in sets]) if all(s.sharp is not None for s in sets) else None
    verdicts = [r["verdict"] for r in trust.judge(p, features, spread, sharp)]
    out |= {f"{split}_{k}": v for k, v in coverage(y, verdicts).items()}
    if trust.space is not None and len(trust.space.classes) > 2:  # attribution: two learned methods at least
        judged = [(s.name, trust.judge(np.full(int((s.y == 1).sum()), 0.5), s.features[s.y == 1]))
                  for s in sets if s.name in trust.space.classes]
        total = sum(len(j) for _, j in judged)
        if total:
            out[f"{split}_attribution_accuracy"] = sum(r["resembles"]["method"] == m for m, j in judged for r in j) / total
    # NaN (nothing answered, no faces) becomes None: JSON, MLflow metadata and the API have no NaN.
    return {k: (None if math.isnan(v) else round(v, 4)) if isinstance(v, float) else v for k, v in out.items()}
