"""DFIL's training losses as an Avalanche plugin: contrastive learning plus distillation.

DFIL (Pan et al., "DFIL: Deepfake Incremental Learning by Exploiting Domain-invariant Forgery
Clues", ACM MM 2023) learns each new forgery method with the cross-entropy plus
- supervised contrastive learning (Khosla et al., "Supervised Contrastive Learning", NeurIPS
  2020) on the pooled features of every batch, new and replayed faces alike: faces of one class
  (real, or fake of any method) pull together, so what the fakes share, the forgery clue that
  does not depend on the method, is what the features keep;
- feature distillation from the model as it was after the previous experience (a frozen
  teacher), so the feature space new methods are learned in does not drift from the old one;
- logit distillation from the same teacher: KL(teacher || student) on softened logits.
DFIL's central + hard replay is dfcl.learning.continual.selection.CentralHardSelection.

This is written from the paper, not from DFIL's released code: that code loads the teacher's
weights into the student, and its distillation term is zero or NaN depending on the PyTorch
version, so reusing it would distil nothing.

Choices the paper leaves open: one view per face (Khosla's SupCon uses two augmented views; here
the other faces of the class in the batch are the positives); features are the input of
`model.head` (dfcl.learning.continual.features), which in train mode is after the model's dropout, and the
teacher runs in eval mode, so the default feature distance is 1 - cosine (dropout rescales
features; MSE would also penalise the dropout noise); the teacher runs outside autocast.

Plugin order: the teacher is copied in after_training_exp, so put this plugin after any plugin
that changes the weights there (BestValidationEpoch restores its best epoch's weights).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin

from dfcl.learning.continual.features import HeadTap, frozen_copy

TEACHER_PREFIX = "teacher."  # keys of the teacher's weights in memory_state's tensors


class ContrastiveDistillation(SupervisedPlugin):
    """Adds DFIL's three terms to the strategy's loss in before_backward; a weight of 0 turns
    its term off (ablations). The distillation terms start with the second experience.

    :param contrastive_weight: weight of the supervised contrastive loss.
    :param temperature: SupCon temperature (Khosla et al. use 0.1 and below).
    :param feature_weight: weight of the feature distillation.
    :param logit_weight: weight of the logit distillation.
    :param kd_temperature: softening temperature T of the logit distillation (x T^2).
    :param feature_distance: "cosine" (1 - cosine similarity) or "mse".
    """

    def __init__(self, contrastive_weight: float = 0.1, temperature: float = 0.1, feature_weight: float = 1.0,
                 logit_weight: float = 1.0, kd_temperature: float = 2.0, feature_distance: str = "cosine"):
        super().__init__()
        if feature_distance not in ("cosine", "mse"):
            raise ValueError(f"feature_distance must be 'cosine' or 'mse', not {feature_distance!r}")
        self.contrastive_weight, self.temperature = float(contrastive_weight), float(temperature)
        self.feature_weight, self.logit_weight = float(feature_weight), float(logit_weight)
        self.kd_temperature, self.feature_distance = float(kd_temperature), feature_distance
        self.teacher: torch.nn.Module | None = None
        self.last_terms: dict[str, torch.Tensor] = {}  # the last batch's unweighted terms (logging, tests)
        self._tap: HeadTap | None = None

    def __getstate__(self):
        return {**self.__dict__, "_tap": None, "last_terms": {}}  # a hook handle does not pickle

    # -- training ---------------------------------------------------------------
    def before_training_exp(self, strategy, **_):
        self._close_tap()
        self._tap = HeadTap(strategy.model)

    def before_backward(self, strategy, **_):
        features = self._tap.features if self._tap is not None else None
        if features is None:
            return
        weights = {"contrastive": self.contrastive_weight, "feature": self.feature_weight,
                   "logit": self.logit_weight}
        terms = {}
        if self.contrastive_weight:
            terms["contrastive"] = supervised_contrastive(features.float(), strategy.mb_y, self.temperature)
        if self.teacher is not None and (self.feature_weight or self.logit_weight):
            with torch.no_grad(), HeadTap(self.teacher) as tap:
                teacher_logits = self.teacher(strategy.mb_x).float()
                teacher_features = tap.features.float()
            if self.feature_weight:
                terms["feature"] = feature_distillation(features.float(), teacher_features, self.feature_distance)
            if self.logit_weight:
                terms["logit"] = logit_distillation(strategy.mb_output.float(), teacher_logits, self.kd_temperature)
        for name, term in terms.items():
            strategy.loss = strategy.loss + weights[name] * term
        self.last_terms = {name: term.detach() for name, term in terms.items()}

    def after_training_exp(self, strategy, **_):
        self._close_tap()  # before the copy, and nothing unpicklable stays on the model
        self.teacher = frozen_copy(strategy.model).to(strategy.device)

    def _close_tap(self):
        if self._tap is not None:
            self._tap.close()
            self._tap = None

    # -- persisted memory (plain tensors + JSON, no pickles) -------------------
    def memory_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The teacher's weights (keys prefixed `teacher.`) and JSON-able meta; ({}, {}) before
        the first experience has been learned."""
        if self.teacher is None:
            return {}, {}
        tensors = {TEACHER_PREFIX + k: v.detach().cpu().clone() for k, v in self.teacher.state_dict().items()}
        return tensors, {"method": "dfil", "teacher": True, "tensors": len(tensors)}

    def load_memory_state(self, tensors: dict, meta: dict, strategy) -> None:
        """Rebuilds the teacher as a frozen copy of strategy.model holding the saved weights."""
        weights = {k[len(TEACHER_PREFIX):]: v for k, v in tensors.items() if k.startswith(TEACHER_PREFIX)}
        if not weights:
            self.teacher = None
            return
        teacher = frozen_copy(strategy.model)
        teacher.load_state_dict(weights)
        self.teacher = teacher.to(strategy.device)


def supervised_contrastive(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Khosla et al.'s L_out on L2-normalised `features`: for each anchor with at least one
    other sample of its class, minus the mean over those positives of
    log(exp(z.z_p / t) / sum over all other samples a of exp(z.z_a / t)). 0 when no anchor has
    a positive (a batch of one, or one face per class)."""
    z = F.normalize(features, dim=1)
    n = len(z)
    self_pair = torch.eye(n, dtype=torch.bool, device=z.device)
    similarity = (z @ z.T / temperature).masked_fill(self_pair, float("-inf"))
    log_prob = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)
    labels = labels.view(-1)
    positive = (labels[:, None] == labels[None, :]) & ~self_pair
    count = positive.sum(dim=1)
    anchors = count > 0
    if not anchors.any():
        return z.sum() * 0.0  # zero, but still part of the graph
    mean_positive = log_prob.masked_fill(~positive, 0.0).sum(dim=1)[anchors] / count[anchors]
    return -mean_positive.mean()


def feature_distillation(student: torch.Tensor, teacher: torch.Tensor, distance: str = "cosine") -> torch.Tensor:
    """Mean distance between student and teacher features of the same faces."""
    if distance == "mse":
        return F.mse_loss(student, teacher)
    return (1 - F.cosine_similarity(student, teacher, dim=1)).mean()


def logit_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened class distributions, x T^2 (Hinton
    et al.) so its gradient scale does not depend on T. Positive whenever the two differ."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * temperature ** 2
