"""Lightning callbacks: the per-epoch history that ends in metrics.json, and the best checkpoint's figures."""

from __future__ import annotations

import math

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.utils import make_grid

from fashion_lenet.data import CLASSES, MEAN, STD
from fashion_lenet.plots import confusion_matrix_figure

HISTORY_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/acc")


class EpochHistory(pl.Callback):
    """Records each epoch's metrics and stops the run when the training loss stops being finite.

    Its state is saved in checkpoints, so a resumed run keeps the epochs before the interruption.
    """

    def __init__(self):
        self.history: list[dict[str, float]] = []
        self.diverged = False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch}
        row |= {key.replace("/", "_"): float(metrics[key]) for key in HISTORY_KEYS if key in metrics}
        self.history.append(row)
        if not math.isfinite(row.get("train_loss", 0.0)):
            self.diverged = True
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"history": self.history, "diverged": self.diverged}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history, self.diverged = state_dict["history"], state_dict["diverged"]


class BestCheckpointFigures(pl.Callback):
    """After testing, puts the confusion matrix and a grid of misclassified test images in TensorBoard."""

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                continue
            matrix = pl_module.confusion.compute().cpu()
            logger.experiment.add_figure("test_best/confusion_matrix", confusion_matrix_figure(matrix, CLASSES))
            images = pl_module.misclassified_images()
            if len(images):
                grid = make_grid(images * STD + MEAN, nrow=8, pad_value=1.0).clamp(0, 1)
                logger.experiment.add_image("test_best/misclassified", grid)
            logger.experiment.flush()
