"""Trained jobs as one ensemble network: each job's best checkpoint, members that share a network evaluated in one
fused forward (a `FusedLeNet5` per network shape). The distillation teacher (losses.py) and the ensemble report
(analysis/ensemble.py) are this network.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from fashion_lenet.sweep.errors import UserError
from fashion_lenet.sweep.jobfiles import finished_jobs
from fashion_lenet.training.checkpoints import load_checkpoint
from fashion_lenet.training.fused import FusedLeNet5

EVAL_ONLY = ("_target_", "dropout_p")  # network arguments that do not change an evaluation's forward


class Ensemble(nn.Module):
    """Logits [members, B, classes] of every member for images [B, 1, 28, 28], members in the order given; in eval
    mode and without gradients for good (a teacher never trains)."""

    def __init__(self, checkpoints: list[dict]):
        super().__init__()
        args = [{k: v for k, v in c["hyper_parameters"]["net"].items() if k not in EVAL_ONLY} for c in checkpoints]
        shapes: dict[str, list[int]] = {}  # one network description -> the members with it
        for n, net in enumerate(args):
            shapes.setdefault(repr(sorted(net.items())), []).append(n)
        self.nets = nn.ModuleList()
        for members in shapes.values():
            fused = FusedLeNet5(len(members), **args[members[0]])
            for slot, n in enumerate(members):
                fused.load_member(slot, {k.removeprefix("net."): v for k, v in checkpoints[n]["state_dict"].items()})
            self.nets.append(fused)
        # the nets' outputs, concatenated, back into the order given
        self.register_buffer("order", torch.tensor([m for members in shapes.values() for m in members]).argsort(),
                             persistent=False)  # fmt: skip
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> Ensemble:
        return super().train(False)  # BatchNorm's running statistics and no dropout, always

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        logits = [net(images.expand(net.members, *images.shape)) for net in self.nets]
        return logits[0] if len(logits) == 1 else torch.cat(logits)[self.order]


def load_ensemble(folders: list[Path]) -> tuple[Ensemble, list[Path]]:
    """The ensemble of the finished jobs in `folders` (job folders, or sweep folders of them), and its job folders;
    UserError when a folder holds none, or when members predict different numbers of classes."""
    jobs = [found for folder in folders for found in finished_jobs(folder)]
    checkpoints = [load_checkpoint(checkpoint) for _, checkpoint in jobs]
    classes = {str(job): _classes(checkpoint) for (job, _), checkpoint in zip(jobs, checkpoints, strict=True)}
    if len(set(classes.values())) > 1:
        raise UserError(f"the ensemble's jobs predict different numbers of classes: {classes}")
    return Ensemble(checkpoints), [job for job, _ in jobs]


def _classes(checkpoint: dict) -> int:
    """The number of outputs of the network's last layer."""
    biases = [v for k, v in checkpoint["state_dict"].items() if k.startswith("net.classifier.") and k.endswith("bias")]
    return biases[-1].shape[-1]
