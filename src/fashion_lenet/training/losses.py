"""The training loss of a group's members, per image: cross-entropy with the labels (each member's label
smoothing), and with a teacher, knowledge distillation (Hinton et al. 2015):

    loss = (1 - alpha) * cross-entropy(labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

each member with its own temperature T and weight alpha. The teacher is an ensemble of trained jobs (ensemble.py):
the mean of its members' softened predictions on the member's own (augmented) batch, every member's batch in one
fused forward, without gradients. Validation and test report the plain cross-entropy.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from fashion_lenet.training.ensemble import Ensemble


def member_losses(logits: Tensor, labels: Tensor, label_smoothing: list[float]) -> Tensor:
    """[members, B] cross-entropies with the labels, each member's with its own label smoothing ε (torch's loss)."""
    if len(set(label_smoothing)) == 1:  # one ε for all (a solo run): one call over every member's batch
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none",
                               label_smoothing=label_smoothing[0]).view_as(labels)  # fmt: skip
    return torch.stack([F.cross_entropy(member_logits, member_labels, reduction="none", label_smoothing=epsilon)
                        for member_logits, member_labels, epsilon in zip(logits, labels, label_smoothing,
                                                                         strict=True)])  # fmt: skip


class Distillation:
    """The teacher's part of the loss: a trained ensemble and each member's temperature and weight alpha.

    Not an nn.Module of the student: its weights stay out of the student's checkpoints and optimizer. The teacher
    is rebuilt from its folders when a run resumes; it is deterministic (eval mode), so it draws nothing from any
    random stream.
    """

    def __init__(self, teacher: Ensemble, jobs: list[Path], temperature: list[float], alpha: list[float]):
        self.teacher, self.jobs = teacher, jobs
        self.temperature, self.alpha = temperature, alpha
        self._per_member: tuple[Tensor, Tensor] | None = None  # T and alpha as [members, 1] on the device

    def to(self, device: torch.device) -> Distillation:
        self.teacher.to(device)
        self._per_member = tuple(torch.tensor(v, device=device).unsqueeze(1) for v in (self.temperature, self.alpha))
        return self

    def keep(self, members: list[int]) -> Distillation:
        """The same teacher for `members` only (a group that shrank), on the same device."""
        kept = Distillation(self.teacher, self.jobs, [self.temperature[m] for m in members],
                            [self.alpha[m] for m in members])  # fmt: skip
        return kept.to(self._per_member[0].device)

    def __call__(self, images: Tensor, logits: Tensor, label_losses: Tensor) -> Tensor:
        """images [members, B, 1, 28, 28], logits [members, B, C], label_losses [members, B] -> [members, B]."""
        temperature, alpha = self._per_member
        with torch.no_grad():
            teacher = self.teacher(images.flatten(0, 1)).unflatten(1, images.shape[:2])  # [teachers, members, B, C]
            targets = (teacher / temperature.unsqueeze(-1)).softmax(-1).mean(0)
        divergence = F.kl_div((logits / temperature.unsqueeze(-1)).log_softmax(-1), targets, reduction="none").sum(-1)
        return (1 - alpha) * label_losses + alpha * temperature**2 * divergence

    def record(self, member: int) -> dict:
        """What metrics.json says of the member's teacher."""
        return {"teacher": [str(job) for job in self.jobs], "teacher_members": len(self.jobs),
                "temperature": self.temperature[member], "alpha": self.alpha[member]}  # fmt: skip


class TrainingLoss:
    """losses(images, logits, labels) -> [members, B]: each member's training loss per image."""

    def __init__(self, label_smoothing: list[float], distillation: Distillation | None = None):
        self.label_smoothing, self.distillation = label_smoothing, distillation

    def __call__(self, images: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
        losses = member_losses(logits, labels, self.label_smoothing)
        return losses if self.distillation is None else self.distillation(images, logits, losses)
