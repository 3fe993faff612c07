"""Lightning callbacks: the per-epoch history that ends in metrics.json, and the best checkpoint's figures."""

from __future__ import annotations

import math
import time

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.utils import make_grid

from fashion_lenet.data import CLASSES, MEAN, STD
from fashion_lenet.plots import confusion_matrix_figure

HISTORY_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/acc")


class EpochHistory(pl.Callback):
    """Records each epoch's metrics and seconds, and stops the run when the training loss stops being finite.

    Its state is saved in checkpoints, so a resumed run keeps the epochs before the interruption.
    """

    def __init__(self):
        self.history: list[dict[str, float]] = []
        self.diverged = False
        self._epoch_start = self._train_end = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = self._train_end = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)  # once per epoch, so the time is the GPU's
            self._train_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        now = time.perf_counter()
        row = {"epoch": trainer.current_epoch}
        row |= {key.replace("/", "_"): float(metrics[key]) for key in HISTORY_KEYS if key in metrics}
        trained = self._train_end if self._train_end > self._epoch_start else now  # no validation this epoch
        row |= {"train_time_s": trained - self._epoch_start, "epoch_time_s": now - self._epoch_start}
        self.history.append(row)
        if not math.isfinite(row.get("train_loss", 0.0)):
            self.diverged = True
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"history": self.history, "diverged": self.diverged}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history, self.diverged = state_dict["history"], state_dict["diverged"]


def log_test_figures(experiment, confusion: torch.Tensor, misclassified: torch.Tensor) -> None:
    """The best checkpoint's confusion matrix and a grid of its misclassified test images, in TensorBoard."""
    experiment.add_figure("test_best/confusion_matrix", confusion_matrix_figure(confusion.cpu(), CLASSES))
    if len(misclassified):
        grid = make_grid(misclassified * STD + MEAN, nrow=8, pad_value=1.0).clamp(0, 1)
        experiment.add_image("test_best/misclassified", grid)
    experiment.flush()


class BestCheckpointFigures(pl.Callback):
    """After testing, puts the confusion matrix and misclassified test images in TensorBoard."""

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                log_test_figures(logger.experiment, pl_module.confusion.compute(), pl_module.misclassified_images())
