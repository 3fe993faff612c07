"""The LightningModule: cross-entropy, accuracy and mean loss per stage, optimizer built from config."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from fashion_lenet.lifecycle import BestCheckpoint
from fashion_lenet.train_step import TrainStep

NUM_CLASSES = 10
MAX_MISCLASSIFIED = 64
HISTORY_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/acc")  # logged per epoch, kept per epoch


def _accuracy() -> MulticlassAccuracy:
    # validate_args=False: the argument checks cost a host sync per step.
    return MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro", validate_args=False)


def skip_per_step_gpu_lookup() -> None:
    """For CPU runs. Lightning has torch count GPUs through NVML (fork-safe); with no GPU in use that count is
    never cached and every Adam step repeats it (0.17 ms of a ~6 ms step on 2 cores). The CUDA runtime's own
    count, used instead, is cached."""
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"


def set_fit_flags(device: torch.device) -> None:
    """torch's global settings for training, solo or fused."""
    # Deterministic kernels stay (trainer.deterministic), but new tensors are not NaN-filled first: the fill
    # only exposes reads of uninitialized memory and costs one kernel per allocation on a GPU.
    torch.utils.deterministic.fill_uninitialized_memory = False
    # Full FP32 convolutions, also faster here: with deterministic algorithms cuDNN's TF32 weight gradient of
    # conv1 took 74 of a step's 354 us of GPU time on an H200, its FP32 choice 28 (295 us per step).
    torch.backends.cudnn.allow_tf32 = False
    if device.type == "cpu":
        skip_per_step_gpu_lookup()


def _mean() -> MeanMetric:
    return MeanMetric(nan_strategy="disable")  # a NaN loss must stay visible: it marks divergence


class LeNetModule(pl.LightningModule):
    """One job (lifecycle.py's `members` = 1): wraps a network described by `net` (a Hydra node with `_target_`), so
    checkpoints rebuild themselves.

    `optimizer` and `scheduler` are `_partial_: true` nodes, completed in `configure_optimizers`.
    `cuda_graph`: on a single GPU, record each training step's forward and backward once and replay it.
    `label_smoothing`: of the training loss only; validation and test report the plain cross-entropy.
    """

    def __init__(self, net: dict, optimizer: dict, scheduler: dict | None = None, cuda_graph: bool = True,
                 label_smoothing: float = 0.0):  # fmt: skip
        super().__init__()
        self.save_hyperparameters(logger=False)  # train.py logs hparams once, with the final metrics
        # The step is ours (TrainStep): Lightning's closure cannot replay a CUDA graph. Lightning still counts
        # the optimizer steps, saves and restores everything; the scheduler is stepped per epoch below.
        self.automatic_optimization = False
        self.net: nn.Module = instantiate(net)
        # Training totals come from TrainStep once per epoch; evaluation updates torchmetrics per batch.
        self.metrics = nn.ModuleDict({"train_loss": _mean(), "train_acc": _mean()})
        for stage in ("val", "test", "test_best"):  # test: per-epoch curve; test_best: best checkpoint
            self.metrics.update({f"{stage}_loss": _mean(), f"{stage}_acc": _accuracy()})
        self.confusion = MulticlassConfusionMatrix(num_classes=NUM_CLASSES, validate_args=False)
        self.misclassified: list[torch.Tensor] = []
        self.train_step: TrainStep | None = None

    members = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def epoch_rows(self) -> list[dict[str, float]]:
        """The epoch's logged metrics as a history row (`train/loss` -> `train_loss`)."""
        metrics = self.trainer.callback_metrics
        return [{key.replace("/", "_"): float(metrics[key]) for key in HISTORY_KEYS if key in metrics}]

    def stop_member(self, member: int) -> None:
        pass  # the only job: EpochHistory stops the run

    def test_best(self, trainer: pl.Trainer, datamodule, tested: list[bool]) -> list[BestCheckpoint | None]:
        """Test the checkpoint with the best validation accuracy, once, on the official test set."""
        if not tested[0]:
            return [None]
        best = trainer.checkpoint_callback  # the monitored callback; last.ckpt has its own
        trainer.test(self, datamodule=datamodule, ckpt_path=best.best_model_path, verbose=False)
        return [BestCheckpoint(best.best_model_path, float(best.best_model_score), **self.test_results())]

    def test_results(self) -> dict:
        """The last test pass: accuracy, mean loss, confusion matrix and misclassified images."""
        return {"test_acc": float(self.metrics["test_best_acc"].compute()),
                "test_loss": float(self.metrics["test_best_loss"].compute()),
                "confusion": self.confusion.compute(), "misclassified": self.misclassified_images()}  # fmt: skip

    @property
    def uses_cuda_graph(self) -> bool:
        return self.train_step is not None and self.train_step.graph is not None

    def on_fit_start(self) -> None:
        set_fit_flags(self.device)

    def on_train_start(self) -> None:
        # Here the net is on its device and any checkpoint is restored: what a graph records must not move.
        capture = self.hparams.cuda_graph and self.trainer.world_size == 1  # DDP's gradient sync is not replayable
        self.train_step = TrainStep(self.net, self.manual_backward, self.device, capture,
                                    self.hparams.get("label_smoothing", 0.0))  # older checkpoints lack it

    def training_step(self, batch, batch_idx: int) -> None:
        self.train_step(*batch)
        self.optimizers().step()
        if batch_idx == 0:
            self._log_epoch_metrics("train")
        if batch_idx + 1 == self.trainer.num_training_batches:
            # One value per epoch, so no weight: MeanMetric(nan_strategy="disable") would drop it anyway
            # (torchmetrics 1.9, Lightning-AI/torchmetrics#3434).
            loss_sum, correct, count = self.train_step.take_totals()
            self.metrics["train_loss"].update(loss_sum / count)
            self.metrics["train_acc"].update(correct / count)

    def on_train_epoch_end(self) -> None:
        # After validation and the history row, before ModelCheckpoint: checkpoints hold the next epoch's lr.
        if scheduler := self.lr_schedulers():
            scheduler.step()

    def _evaluate(self, batch, batch_idx: int, stage: str) -> torch.Tensor:
        images, labels = batch
        logits = self.net(images)
        # Per-image losses: their mean over the epoch is exact with partial batches, with no host sync.
        self.metrics[f"{stage}_loss"].update(nn.functional.cross_entropy(logits, labels, reduction="none"))
        self.metrics[f"{stage}_acc"].update(logits, labels)
        if batch_idx == 0 and stage != "test_best":  # the best checkpoint's results: lifecycle.py logs them
            self._log_epoch_metrics(stage)
        return logits

    def _log_epoch_metrics(self, stage: str) -> None:
        # Lightning keeps a reference to each metric object and computes and resets it at epoch end,
        # so one call per epoch is enough; calling self.log every step costs ~0.8 ms on the host.
        for name in ("loss", "acc"):
            self.log(f"{stage}/{name}", self.metrics[f"{stage}_{name}"], on_step=False, on_epoch=True,
                     add_dataloader_idx=False)  # fmt: skip
        if stage != "test":  # the test curve is logged with validation's metrics, at validation's step
            # A logged "step" is the x of Lightning's logging call: the epoch, as in the study's figures, where
            # batch counts differ with batch size; and no "epoch" curve of Lightning's own leads TensorBoard.
            self.log("step", float(self.current_epoch), on_step=False, on_epoch=True, add_dataloader_idx=False)

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        # Loader 1 is the test set: a curve for the seed's Figure 1, never used for selection.
        self._evaluate(batch, batch_idx, ("val", "test")[dataloader_idx])

    def test_step(self, batch, batch_idx: int) -> None:
        images, labels = batch
        predictions = self._evaluate(batch, batch_idx, "test_best").argmax(dim=1)
        self.confusion.update(predictions, labels)
        if sum(len(x) for x in self.misclassified) < MAX_MISCLASSIFIED:
            self.misclassified.append(images[predictions != labels].cpu())

    def on_test_epoch_start(self) -> None:
        for metric in (self.metrics["test_best_loss"], self.metrics["test_best_acc"], self.confusion):
            metric.reset()
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
