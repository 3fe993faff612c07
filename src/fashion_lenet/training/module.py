"""The LightningModule: N >= 1 LeNet-5s trained as one (a solo run is a group of one), each with its own loss,
optimizer hyperparameters, dropout stream, metrics and test results.

Each member is the job it would be alone: seeded as its solo run (same initial weights, batches and, on the CPU,
dropout masks), its own param group in one optimizer, its own BatchNorm statistics. Metrics are [live members, 3]
totals on the device (loss sum, correct predictions, images), read once per epoch.

A member that stops (diverged, or pruned by an Optuna search) leaves the group at that epoch's end: the network,
the optimizer (state and learning rates), the scheduler, the loss and the data module keep only the live members,
so a step costs what they cost. The members keep their numbers: job n is member n whichever slot it holds.
"""

from __future__ import annotations

import logging
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

log = logging.getLogger("train")

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
        self.nets = nets
        self.live = list(range(self.members))  # the members in the network, member live[slot] in each slot
        self.stopped: set[int] = set()  # members that train no more; they leave the network at the epoch's end
        self.net, dropout_states = self._build(seeds)
        self.dropout_states = dropout_states  # each member's dropout stream on the CPU: the RNG after its build
        self.dropout_generators: list[torch.Generator] | None = None  # on the trainer's device, made in setup()
        self.member_parameters: MemberParameters | None = None
        self.train_step: TrainStep | None = None
        self.totals: dict[str, torch.Tensor] = {}  # stage -> [live members, 3]: loss sum, correct, images
        self.confusions = nn.ModuleList(
            MulticlassConfusionMatrix(num_classes=NUM_CLASSES, validate_args=False) for _ in range(self.members)
        )
        self.misclassified: list[list[torch.Tensor]] = [[] for _ in range(self.members)]

    def _network(self, members: list[int]) -> FusedLeNet5:
        """A network with a slot for each of `members`; stacked for a group (also once it shrank to one)."""
        args = {k: v for k, v in self.nets[0].items() if k not in ("_target_", "dropout_p")}
        dropout_p = [self.nets[m].get("dropout_p", 0.3) for m in members]
        return FusedLeNet5(len(members), dropout_p=dropout_p, stacked=self.members > 1, **args)

    def _build(self, seeds: list[int] | None) -> tuple[FusedLeNet5, list[torch.Tensor]]:
        """The members' network, each member's weights those its solo run starts from."""
        fused = self._network(self.live)
        if self.members == 1 and seeds is None:
            return fused, [torch.get_rng_state()]
        states = []
        for n, node in enumerate(self.nets):
            if seeds is not None:
                torch.manual_seed(seeds[n])  # as the solo run's seed_everything
            fused.load_member(n, instantiate(node).state_dict())
            states.append(torch.get_rng_state())  # where the solo run's dropout draws from on the CPU
        return fused, states

    def member_hparams(self, member: int) -> dict:
        """The arguments that rebuild `member` alone: what its best checkpoint carries."""
        return {"net": self.nets[member], "optimizer": self.optimizer_nodes[member],
                "scheduler": self.hparams.scheduler, "cuda_graph": self.hparams.cuda_graph,
                "label_smoothing": self.label_smoothing[member]}  # fmt: skip

    def member_checkpoint(self, member: int) -> dict:
        """`member` as an ordinary checkpoint of this module with one member: its weights and its own arguments
        (what `load_from_checkpoint`, evaluate and a test of the best checkpoint read)."""
        return {
            "epoch": self.current_epoch,
            "global_step": self.global_step,
            "pytorch-lightning_version": pl.__version__,
            "state_dict": {f"net.{k}": v for k, v in self.net.member_state_dict(self.live.index(member)).items()},
            self.CHECKPOINT_HYPER_PARAMS_NAME: "kwargs",
            self.CHECKPOINT_HYPER_PARAMS_KEY: self.member_hparams(member),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 1, 28, 28] -> logits [B, classes] of a group of one; [live members, B, classes] otherwise."""
        logits = self.net(x.expand(self.net.members, *x.shape))
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

    def _keep(self, live: list[int], net: FusedLeNet5) -> None:
        """`net`, whose slots hold `live`, replaces the network."""
        self.net, self.live = net.to(self.device), live
        if self.dropout_generators:
            net.set_dropout_generators([self.dropout_generators[m] for m in live])

    def on_fit_start(self) -> None:
        set_fit_flags(self.device)

    def configure_optimizers(self):
        # Here the net is on its device. One optimizer of the members' class; each member's parameters form a param
        # group with its own lr, weight decay, momentum..., so each member's update is the one its solo run makes.
        self.member_parameters = MemberParameters(self.net)
        partials = [instantiate(self.optimizer_nodes[m]) for m in self.live]
        groups = [{"params": params, **partial.keywords}
                  for partial, params in zip(partials, self.member_parameters.members, strict=True)]  # fmt: skip
        optimizer = partials[0].func(groups, **partials[0].keywords)
        if not self.hparams.scheduler:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": instantiate(self.hparams.scheduler)(optimizer=optimizer)}

    def on_train_start(self) -> None:
        # Here the net is on its device and any checkpoint is restored: what a graph records must not move.
        self.train_step = self._train_step()

    def _train_step(self) -> TrainStep:
        capture = self.hparams.cuda_graph and self.trainer.world_size == 1  # DDP's gradient sync is not replayable
        distillation = self.distillation and self.distillation.keep(self.live)
        losses = TrainingLoss([self.label_smoothing[m] for m in self.live], distillation)
        return TrainStep(self.net, losses, self.manual_backward, len(self.live), self.device, capture)

    def training_step(self, batch, batch_idx: int) -> None:
        self.train_step(*batch)  # images [live members, B, 1, 28, 28], labels [live members, B]
        self.member_parameters.point_gradients()  # after a capture: the graph's gradient tensors
        self.optimizers().step()
        if batch_idx + 1 == self.trainer.num_training_batches:
            self.totals["train"] = self.train_step.take_totals()

    def on_train_epoch_end(self) -> None:
        # After EpochHistory and MemberOutputs (callbacks run first), before last.ckpt (checkpoint callbacks run
        # after the module): checkpoints hold the next epoch's lr.
        if scheduler := self.lr_schedulers():
            scheduler.step()
        live = [m for m in self.live if m not in self.stopped]
        last_epoch = self.trainer.max_epochs not in (None, -1) and self.current_epoch + 1 >= self.trainer.max_epochs
        if live and live != self.live and not last_epoch:  # after the last epoch it would only cost time
            self._shrink(live)

    def stop_member(self, member: int) -> None:
        """The member trains no more: it leaves the network at this epoch's end (no step comes before)."""
        self.stopped.add(member)

    def _shrink(self, live: list[int]) -> None:
        """Only `live` train on: their weights, BatchNorm statistics, optimizer and scheduler states move to a
        smaller network, optimizer and scheduler (as Lightning builds them: configure_optimizers); the loss,
        CUDA graph and training batches follow."""
        slots, left = [self.live.index(m) for m in live], [m for m in self.live if m not in live]
        optimizer_state = _keep_param_groups(self.optimizers().optimizer.state_dict(), slots)
        scheduler = self.lr_schedulers()
        scheduler_state = scheduler and _keep_per_group(scheduler.state_dict(), slots, len(self.live))
        net = self._network(live)
        for slot, old in enumerate(slots):
            net.load_member(slot, self.net.member_state_dict(old))
        self._keep(live, self.trainer.precision_plugin.convert_module(net))  # as strategy.setup converts the first
        self.trainer.strategy.setup_optimizers(self.trainer)
        # The optimizer's state after the scheduler's construction, which sets the learning rates of its epoch 0
        self.optimizers().optimizer.load_state_dict(optimizer_state)
        if scheduler:
            self.lr_schedulers().load_state_dict(scheduler_state)
        self.train_step = self._train_step()
        self.trainer.datamodule.keep_members(live)
        log.info(f"fused group: member(s) {left} left after epoch {self.current_epoch}, {len(live)} of {self.members} "
                 "train on")  # fmt: skip

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
                for member, *values in zip(self.live, *taken, strict=True):
                    rows[member].update({key: value for key, value in zip(keys, values, strict=True) if key})
        return rows

    def _evaluate(self, images: torch.Tensor, labels: torch.Tensor, stage: str) -> torch.Tensor:
        members = self.net.members
        logits = self.net(images.expand(members, *images.shape))  # every member sees the same images
        losses = F.cross_entropy(logits.flatten(0, 1), labels.repeat(members), reduction="none")
        update = tally(losses.view(members, -1), logits, labels)
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
        if self.live != list(range(self.members)):  # a slot for every member again
            everyone = list(range(self.members))
            self._keep(everyone, self.trainer.precision_plugin.convert_module(self._network(everyone)))
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
        checkpoint["live_members"] = self.live

    def _teacher_jobs(self) -> list[str] | None:
        return None if self.distillation is None else [str(job.resolve()) for job in self.distillation.jobs]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if checkpoint.get("distill_teacher") != self._teacher_jobs():  # the teacher is rebuilt, not saved
            raise UserError(f"this checkpoint learned from the teacher {checkpoint.get('distill_teacher')}, not "
                            f"{self._teacher_jobs()}: resume with the distill.teacher it was trained with")  # fmt: skip
        # Before the state dict loads: the network of the members that were still training
        if (live := checkpoint.get("live_members", self.live)) != self.live:
            self._keep(live, self._network(live))
        if "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])
        if "cuda_rng_state" in checkpoint and torch.cuda.device_count() == len(checkpoint["cuda_rng_state"]):
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng_state"])
        for generator, state in zip(self.dropout_generators or [], checkpoint.get("dropout_generators", []),
                                    strict=False):  # fmt: skip
            if state is not None:
                generator.set_state(state)


def _keep_param_groups(state: dict, groups: list[int]) -> dict:
    """A torch optimizer's state dict with only the param groups `groups` (in that order), renumbered."""
    kept, old_ids = [], []
    for group in (state["param_groups"][g] for g in groups):
        ids = list(range(len(old_ids), len(old_ids) + len(group["params"])))
        kept.append(group | {"params": ids})
        old_ids += group["params"]
    return {"state": {new: state["state"][old] for new, old in enumerate(old_ids) if old in state["state"]},
            "param_groups": kept}  # fmt: skip


def _keep_per_group(state: dict, groups: list[int], count: int) -> dict:
    """A torch LRScheduler's state dict with its per-param-group lists (base_lrs, _last_lr, min_lrs, max_lrs...: the
    lists of `count` entries) cut to `groups`. Schedulers that chain others (SequentialLR) are not cut inside."""
    return state | {key: [value[g] for g in groups] for key, value in state.items()
                    if isinstance(value, list) and len(value) == count and key != "_schedulers"}  # fmt: skip
