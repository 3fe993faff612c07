"""The per-epoch history that ends in metrics.json, for each job a run trains; the best checkpoint's figures."""

from __future__ import annotations

import math
import time

import lightning.pytorch as pl
import torch
from torchvision.utils import make_grid

from fashion_lenet.training.data import CLASSES, MEAN, STD
from fashion_lenet.training.plots import confusion_matrix_figure


class EpochHistory(pl.Callback):
    """Each job's row per epoch (its metrics from `pl_module.epoch_rows()`, the epoch's seconds); a job whose
    training loss stops being finite is marked diverged and stops, a pruned one (pruning.py) stops too (the run
    stops when every job has).

    One job for a solo run, one per member in a fused group. Its state travels in checkpoints, so a resumed run
    keeps the epochs before the interruption.
    """

    def __init__(self):
        self.histories: list[list[dict[str, float]]] = []
        self.diverged: list[bool] = []
        self.pruned: list[bool] = []
        self._epoch_start = self._train_end = 0.0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.histories:
            self.histories = [[] for _ in range(pl_module.members)]
            self.diverged = [False] * pl_module.members
            self.pruned = [False] * pl_module.members

    def stopped(self, member: int) -> bool:
        return self.diverged[member] or self.pruned[member]

    def all_stopped(self) -> bool:
        return all(map(self.stopped, range(len(self.histories))))

    def stop(self, member: int, pl_module: pl.LightningModule, pruned: bool = False) -> None:
        """The member trains no more: diverged, or pruned."""
        (self.pruned if pruned else self.diverged)[member] = True
        pl_module.stop_member(member)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for n in range(len(self.histories)):  # resumed: what stopped before stays stopped
            if self.stopped(n):
                pl_module.stop_member(n)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = self._train_end = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)  # once per epoch, so the time is the GPU's
            self._train_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.perf_counter()
        trained = self._train_end if self._train_end > self._epoch_start else now  # no validation this epoch
        times = {"train_time_s": trained - self._epoch_start, "epoch_time_s": now - self._epoch_start}
        for n, row in enumerate(pl_module.epoch_rows()):
            if self.stopped(n):
                continue
            self.histories[n].append({"epoch": trainer.current_epoch} | row | times)
            if not math.isfinite(row.get("train_loss", 0.0)):
                self.stop(n, pl_module)
        if self.all_stopped():
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"histories": self.histories, "diverged": self.diverged, "pruned": self.pruned}

    def load_state_dict(self, state_dict: dict) -> None:
        if "history" in state_dict:  # a checkpoint written before fused groups shared this callback: one job
            state_dict = {"histories": [state_dict["history"]], "diverged": [state_dict["diverged"]]}
        self.histories, self.diverged = state_dict["histories"], state_dict["diverged"]
        self.pruned = state_dict.get("pruned", [False] * len(self.histories))  # before pruning existed: none


def log_test_figures(experiment, confusion: torch.Tensor, misclassified: torch.Tensor) -> None:
    """The best checkpoint's confusion matrix and a grid of its misclassified test images, in TensorBoard."""
    experiment.add_figure("test_best/confusion_matrix", confusion_matrix_figure(confusion.cpu(), CLASSES))
    if len(misclassified):
        grid = make_grid(misclassified * STD + MEAN, nrow=8, pad_value=1.0).clamp(0, 1)
        experiment.add_image("test_best/misclassified", grid)
    experiment.flush()
