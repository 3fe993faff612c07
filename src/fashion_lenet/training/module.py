"""The LightningModule: N >= 1 LeNet-5s trained as one (a solo run is a group of one), each with its own loss,
optimizer hyperparameters, dropout stream, metrics and test results.

Each member is the job it would be alone: seeded as its solo run (same initial weights, batches and, on the CPU,
dropout masks), its own param group in one optimizer, its own BatchNorm statistics. Metrics are [members, 3] totals
on the device (loss sum, correct predictions, images), read once per epoch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from torch import nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassConfusionMatrix

from fashion_lenet.sweep.errors import UserError
from fashion_lenet.training.checkpoints import load_checkpoint
from fashion_lenet.training.fused import FusedDropout, FusedLeNet5, MemberParameters, per_member
from fashion_lenet.training.lifecycle import BestCheckpoint
from fashion_lenet.training.losses import Distillation, TrainingLoss
from fashion_lenet.training.train_step import TrainStep, tally

NUM_CLASSES = 10
MAX_MISCLASSIFIED = 64


def skip_per_step_gpu_lookup() -> None:
    """For CPU runs. Lightning has torch count GPUs through NVML (fork-safe); with no GPU in use that count is
    never cached and every Adam step repeats it (0.17 ms of a ~6 ms step on 2 cores). The CUDA runtime's own
    count, used instead, is cached."""
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"


def set_fit_flags(device: torch.device) -> None:
    """torch's global settings for training."""
    # Deterministic kernels stay (trainer.deterministic), but new tensors are not NaN-filled first: the fill
    # only exposes reads of uninitialized memory and costs one kernel per allocation on a GPU.
    torch.utils.deterministic.fill_uninitialized_memory = False
    # Full FP32 convolutions, also faster here: with deterministic algorithms cuDNN's TF32 weight gradient of
    # conv1 took 74 of a step's 354 us of GPU time on an H200, its FP32 choice 28 (295 us per step).
    torch.backends.cudnn.allow_tf32 = False
    if device.type == "cpu":
        skip_per_step_gpu_lookup()


class LeNetModule(pl.LightningModule):
    """`members` LeNet-5s of one network shape, trained as one (`FusedLeNet5`; one member is a plain LeNet5).

    Every argument but `scheduler` and `cuda_graph` is one value per member (a list), or one value for a group of
    one, as checkpoints of solo runs describe themselves:
    `net`: each member's network, a Hydra node with `_target_` (LeNet5's; the members differ at most in dropout_p).
    `optimizer`: each member's `_partial_: true` node (one class; each member its own lr, weight decay...).
    `scheduler`: the members' shared `_partial_: true` node, or None. Both are completed in `configure_optimizers`.
    `cuda_graph`: on a single GPU, record each training step's forward and backward once and replay it.
    `label_smoothing`: of the training loss only; validation and test report the plain cross-entropy.
    `seeds`: each member's initial weights are its solo run's: built right after torch.manual_seed(seed); None
    keeps torch's global generator as it is (a checkpoint's weights then replace them).
    `distillation`: the teacher and each member's temperature and weight (losses.py), or None; not a
    hyperparameter: a member's checkpoint is a plain LeNet-5 that needs no teacher to be loaded.
    """

    def __init__(self, net: dict | list[dict], optimizer: dict | list[dict], scheduler: dict | None = None,
                 cuda_graph: bool = True, label_smoothing: float | list[float] = 0.0,
                 seeds: list[int] | None = None, distillation: Distillation | None = None):  # fmt: skip
        super().__init__()
        # lifecycle.py logs hparams, with the results
        self.save_hyperparameters(ignore=["seeds", "distillation"], logger=False)
        # The step is ours (TrainStep): Lightning's closure cannot replay a CUDA graph. Lightning still counts
        # the optimizer steps, saves and restores everything; the scheduler is stepped per epoch below.
        self.automatic_optimization = False
        nets = [net] if isinstance(net, Mapping) else list(net)
        self.members = len(nets)
        self.optimizer_nodes = per_member(optimizer, self.members)
        self.label_smoothing = [float(e) for e in per_member(label_smoothing, self.members)]
        self.seeds, self.distillation = seeds, distillation
        self.net, dropout_states = self._build(nets, seeds)
        self.dropout_states = dropout_states  # each member's dropout stream on the CPU: the RNG after its build
        self.dropout_generators: list[torch.Generator] | None = None  # on the trainer's device, made in setup()
        self.member_parameters: MemberParameters | None = None
        self.train_step: TrainStep | None = None
        self.active = [True] * self.members  # False once a member diverged: it gets no gradient, so no update
        self.totals: dict[str, torch.Tensor] = {}  # stage -> [members, 3]: loss sum, correct, images
        self.confusions = nn.ModuleList(
            MulticlassConfusionMatrix(num_classes=NUM_CLASSES, validate_args=False) for _ in range(self.members)
        )
        self.misclassified: list[list[torch.Tensor]] = [[] for _ in range(self.members)]

    def _build(self, nets: list[dict], seeds: list[int] | None) -> tuple[FusedLeNet5, list[torch.Tensor]]:
        """The members' network, each member's weights those its solo run starts from."""
        args = {k: v for k, v in nets[0].items() if k not in ("_target_", "dropout_p")}
        fused = FusedLeNet5(self.members, dropout_p=[node.get("dropout_p", 0.3) for node in nets], **args)
        if self.members == 1 and seeds is None:
            return fused, [torch.get_rng_state()]
        states = []
        for n, node in enumerate(nets):
            if seeds is not None:
                torch.manual_seed(seeds[n])  # as the solo run's seed_everything
            fused.load_member(n, instantiate(node).state_dict())
            states.append(torch.get_rng_state())  # where the solo run's dropout draws from on the CPU
        return fused, states

    def member_hparams(self, member: int) -> dict:
        """The arguments that rebuild `member` alone: what its best checkpoint carries."""
        nets = self.hparams.net if self.members > 1 else [self.hparams.net]
        return {"net": nets[member], "optimizer": self.optimizer_nodes[member], "scheduler": self.hparams.scheduler,
                "cuda_graph": self.hparams.cuda_graph, "label_smoothing": self.label_smoothing[member]}  # fmt: skip

    def member_checkpoint(self, member: int) -> dict:
        """`member` as an ordinary checkpoint of this module with one member: its weights and its own arguments
        (what `load_from_checkpoint`, evaluate and a test of the best checkpoint read)."""
        return {
            "epoch": self.current_epoch,
            "global_step": self.global_step,
            "pytorch-lightning_version": pl.__version__,
            "state_dict": {f"net.{k}": v for k, v in self.net.member_state_dict(member).items()},
            self.CHECKPOINT_HYPER_PARAMS_NAME: "kwargs",
            self.CHECKPOINT_HYPER_PARAMS_KEY: self.member_hparams(member),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 1, 28, 28] -> logits [B, classes] of a group of one; [members, B, classes] otherwise."""
        logits = self.net(x.expand(self.members, *x.shape))
        return logits[0] if self.members == 1 else logits

    def setup(self, stage: str) -> None:
        if self.distillation is not None:
            self.distillation.to(self.trainer.strategy.root_device)
        # Before a checkpoint restores their states: each member's dropout generator on the trainer's device.
        has_dropout = any(isinstance(layer, FusedDropout) for layer in self.net.modules())
        if self.dropout_generators is None and has_dropout:
            device = self.trainer.strategy.root_device
            if device.type == "cpu":  # the member's solo run's masks
                self.dropout_generators = [torch.Generator() for _ in self.dropout_states]
                for generator, state in zip(self.dropout_generators, self.dropout_states, strict=True):
                    generator.set_state(state)
            else:  # solo CUDA dropout is another kernel: a stream of its own, from the member's seed
                seeds = self.seeds or range(self.members)
                self.dropout_generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
            self.net.set_dropout_generators(self.dropout_generators)

    def on_fit_start(self) -> None:
        set_fit_flags(self.device)

    def configure_optimizers(self):
        # Here the net is on its device. One optimizer of the members' class; each member's parameters form a param
        # group with its own lr, weight decay, momentum..., so each member's update is the one its solo run makes.
        self.member_parameters = MemberParameters(self.net, self.members)
        partials = [instantiate(node) for node in self.optimizer_nodes]
        groups = [{"params": params, **partial.keywords}
                  for partial, params in zip(partials, self.member_parameters.members, strict=True)]  # fmt: skip
        optimizer = partials[0].func(groups, **partials[0].keywords)
        if not self.hparams.scheduler:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": instantiate(self.hparams.scheduler)(optimizer=optimizer)}

    def on_train_start(self) -> None:
        # Here the net is on its device and any checkpoint is restored: what a graph records must not move.
        capture = self.hparams.cuda_graph and self.trainer.world_size == 1  # DDP's gradient sync is not replayable
        losses = TrainingLoss(self.label_smoothing, self.distillation)
        self.train_step = TrainStep(self.net, losses, self.manual_backward, self.members, self.device, capture)

    def training_step(self, batch, batch_idx: int) -> None:
        self.train_step(*batch)  # images [members, B, 1, 28, 28], labels [members, B]
        self.member_parameters.point_gradients(self.active)  # after a capture: the graph's gradient tensors
        self.optimizers().step()
        if batch_idx + 1 == self.trainer.num_training_batches:
            self.totals["train"] = self.train_step.take_totals()

    def on_train_epoch_end(self) -> None:
        # After EpochHistory and MemberOutputs (callbacks run first), before last.ckpt (checkpoint callbacks run
        # after the module): checkpoints hold the next epoch's lr.
        if scheduler := self.lr_schedulers():
            scheduler.step()

    def stop_member(self, member: int) -> None:
        self.active[member] = False

    def _take(self, stage: str) -> tuple[list[float], list[float]] | None:
        """Each member's (mean loss, accuracy) for the stage since the last take, in float32 as torchmetrics
        computes them: one host sync per epoch."""
        if stage not in self.totals:  # e.g. no validation this epoch
            return None
        totals = self.totals.pop(stage)
        if self.trainer.world_size > 1:  # each process evaluated its shard
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        return (totals[:, 0] / totals[:, 2]).tolist(), (totals[:, 1] / totals[:, 2]).tolist()

    def epoch_rows(self) -> list[dict[str, float]]:
        """Each member's metrics of the epoch that just ended (EpochHistory's rows)."""
        rows = [{} for _ in range(self.members)]
        names = {"train": ("train_loss", "train_acc"), "val": ("val_loss", "val_acc"), "test": (None, "test_acc")}
        for stage, keys in names.items():
            if (taken := self._take(stage)) is not None:
                for row, *values in zip(rows, *taken, strict=True):
                    row.update({key: value for key, value in zip(keys, values, strict=True) if key})
        return rows

    def _evaluate(self, images: torch.Tensor, labels: torch.Tensor, stage: str) -> torch.Tensor:
        logits = self.net(images.expand(self.members, *images.shape))  # every member sees the same images
        losses = F.cross_entropy(logits.flatten(0, 1), labels.repeat(self.members), reduction="none")
        update = tally(losses.view(self.members, -1), logits, labels)
        self.totals[stage] = self.totals[stage] + update if stage in self.totals else update
        return logits

    def on_validation_epoch_start(self) -> None:
        for stage in ("val", "test"):  # the sanity check's batches do not count
            self.totals.pop(stage, None)

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        # Loader 1 is the test set: a curve for the seed's Figure 1, never used for selection.
        self._evaluate(*batch, ("val", "test")[dataloader_idx])

    def on_test_epoch_start(self) -> None:
        self.totals.pop("test_best", None)
        for confusion in self.confusions:
            confusion.reset()
        self.misclassified = [[] for _ in range(self.members)]

    def test_step(self, batch, batch_idx: int) -> None:
        images, labels = batch
        predictions = self._evaluate(images, labels, "test_best").argmax(-1)
        for confusion, misclassified, prediction in zip(self.confusions, self.misclassified, predictions,
                                                        strict=True):  # fmt: skip
            confusion.update(prediction, labels)
            if sum(len(x) for x in misclassified) < MAX_MISCLASSIFIED:
                misclassified.append(images[prediction != labels].cpu())

    def test_results(self) -> list[dict]:
        """The last test pass, per member: accuracy, mean loss, confusion matrix and misclassified images."""
        losses, accuracies = self._take("test_best")
        return [{"test_acc": accuracies[n], "test_loss": losses[n], "confusion": self.confusions[n].compute(),
                 "misclassified": self._misclassified_images(n)} for n in range(self.members)]  # fmt: skip

    def test_best(self, trainer: pl.Trainer, datamodule, best: list[dict | None]) -> list[BestCheckpoint | None]:
        """Each member's best-by-validation weights in its slot, then one test pass on the official test set for
        all of them. best: per member {"path", "score"} of its best checkpoint, None for a member not tested."""
        if not any(best):
            return [None] * self.members
        for n, kept in enumerate(best):
            if kept:
                checkpoint = load_checkpoint(kept["path"], map_location=self.device)
                self.net.load_member(n, {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items()})
        trainer.test(self, datamodule=datamodule, verbose=False)
        return [BestCheckpoint(kept["path"], kept["score"], **tested) if kept else None
                for kept, tested in zip(best, self.test_results(), strict=True)]  # fmt: skip

    def _misclassified_images(self, member: int) -> torch.Tensor:
        images = self.misclassified[member]
        return torch.cat(images)[:MAX_MISCLASSIFIED] if images else torch.empty(0)

    @property
    def uses_cuda_graph(self) -> bool:
        return self.train_step is not None and self.train_step.graph is not None

    # The random streams travel in checkpoints, so a resumed run draws the same masks: the global generator (a
    # solo run's dropout) and each fused member's own.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["torch_rng_state"] = torch.get_rng_state()
        if torch.cuda.is_available():
            checkpoint["cuda_rng_state"] = torch.cuda.get_rng_state_all()
        if self.dropout_generators:
            checkpoint["dropout_generators"] = [g.get_state() for g in self.dropout_generators]
        checkpoint["distill_teacher"] = self._teacher_jobs()

    def _teacher_jobs(self) -> list[str] | None:
        return None if self.distillation is None else [str(job.resolve()) for job in self.distillation.jobs]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if checkpoint.get("distill_teacher") != self._teacher_jobs():  # the teacher is rebuilt, not saved
            raise UserError(f"this checkpoint learned from the teacher {checkpoint.get('distill_teacher')}, not "
                            f"{self._teacher_jobs()}: resume with the distill.teacher it was trained with")  # fmt: skip
        if "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])
        if "cuda_rng_state" in checkpoint and torch.cuda.device_count() == len(checkpoint["cuda_rng_state"]):
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng_state"])
        for generator, state in zip(self.dropout_generators or [], checkpoint.get("dropout_generators", []),
                                    strict=False):  # fmt: skip
            if state is not None:
                generator.set_state(state)
