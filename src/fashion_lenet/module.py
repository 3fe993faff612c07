"""The LightningModule: cross-entropy, torchmetrics accuracy per stage, optimizer built from config."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

NUM_CLASSES = 10
MAX_MISCLASSIFIED = 64


def _accuracy() -> MulticlassAccuracy:
    # validate_args=False: the argument checks cost a host sync per step.
    return MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro", validate_args=False)


def _mean() -> MeanMetric:
    return MeanMetric(nan_strategy="disable")  # a NaN loss must stay visible: it marks divergence


class LeNetModule(pl.LightningModule):
    """Wraps a network described by `net` (a Hydra node with `_target_`), so checkpoints rebuild themselves.

    `optimizer` and `scheduler` are `_partial_: true` nodes, completed in `configure_optimizers`.
    """

    def __init__(self, net: dict, optimizer: dict, scheduler: dict | None = None):
        super().__init__()
        self.save_hyperparameters(logger=False)  # train.py logs hparams once, with the final metrics
        self.net: nn.Module = instantiate(net)
        self.criterion = nn.CrossEntropyLoss()
        stages = ("train", "val", "test", "test_best")  # test: per-epoch curve; test_best: best checkpoint
        self.metrics = nn.ModuleDict({f"{stage}_loss": _mean() for stage in stages})
        self.metrics.update({f"{stage}_acc": _accuracy() for stage in stages})
        self.confusion = MulticlassConfusionMatrix(num_classes=NUM_CLASSES, validate_args=False)
        self.misclassified: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, batch_idx: int, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        logits = self.net(images)
        loss = self.criterion(logits, labels)
        mean_loss, accuracy = self.metrics[f"{stage}_loss"], self.metrics[f"{stage}_acc"]
        mean_loss.update(loss.detach(), len(labels))
        accuracy.update(logits.detach(), labels)
        if batch_idx == 0:
            # Lightning keeps a reference to each metric object and computes and resets it at epoch end,
            # so one call per epoch is enough; calling self.log every step costs ~0.8 ms on the host.
            self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, add_dataloader_idx=False)
            self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, add_dataloader_idx=False)
        return loss, logits

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, batch_idx, "train")[0]

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        # Loader 1 is the test set: a curve for the seed's Figure 1, never used for selection.
        self._step(batch, batch_idx, ("val", "test")[dataloader_idx])

    def test_step(self, batch, batch_idx: int) -> None:
        images, labels = batch
        _, logits = self._step(batch, batch_idx, "test_best")
        predictions = logits.argmax(dim=1)
        self.confusion.update(predictions, labels)
        if sum(len(x) for x in self.misclassified) < MAX_MISCLASSIFIED:
            self.misclassified.append(images[predictions != labels].cpu())

    def on_test_epoch_start(self) -> None:
        self.confusion.reset()
        self.misclassified = []

    def misclassified_images(self) -> torch.Tensor:
        return torch.cat(self.misclassified)[:MAX_MISCLASSIFIED] if self.misclassified else torch.empty(0)

    # The global RNG (dropout masks) travels in checkpoints, so a resumed run continues the same random stream.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["torch_rng_state"] = torch.get_rng_state()
        if torch.cuda.is_available():
            checkpoint["cuda_rng_state"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])
        if "cuda_rng_state" in checkpoint and torch.cuda.device_count() == len(checkpoint["cuda_rng_state"]):
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng_state"])

    def configure_optimizers(self):
        optimizer = instantiate(self.hparams.optimizer)(params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": instantiate(self.hparams.scheduler)(optimizer=optimizer)}
