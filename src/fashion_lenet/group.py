"""A fused group: sweep jobs that share one network shape, trained by one Trainer as one FusedLeNet5.

Each member is the job it would be alone: seeded as its solo run (same initial weights, batches and, on the CPU,
dropout masks), its own optimizer hyperparameters (one param group each) and BatchNorm statistics. Its life is
lifecycle.py's, as a solo job's: its folder gets the history, metrics.json, a TensorBoard run and its best
checkpoint (a LeNetModule checkpoint: `evaluate` and `LeNetModule.load_from_checkpoint` read it). The group's
own last.ckpt (Lightning's ModelCheckpoint, in `<sweep>/fused_groups/<first job>/`) is what an interrupted group
resumes from, as one group. A member whose loss stops being finite stops training; the others go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassConfusionMatrix

from fashion_lenet import checkpoints, lifecycle
from fashion_lenet.callbacks import EpochHistory
from fashion_lenet.data import StackedFashionMNIST
from fashion_lenet.errors import UserError
from fashion_lenet.fused import FusedLeNet5, MemberParameters
from fashion_lenet.lifecycle import BestCheckpoint, JobRecord
from fashion_lenet.module import HISTORY_KEYS, MAX_MISCLASSIFIED, NUM_CLASSES, LeNetModule, set_fit_flags
from fashion_lenet.train_step import TrainStep

FUSED_NET = "fashion_lenet.fused.FusedLeNet5"


@dataclass
class Member:
    """One job of a fused group, as the launcher hands it over."""

    cfg: DictConfig  # the job's config, resolved (paths into its own folder)
    output_dir: Path
    hparams: dict  # metrics.json's and TensorBoard's description of the job

    def node(self, key: str) -> dict | None:
        return OmegaConf.to_container(self.cfg[key], resolve=True) or None

    def checkpoint_hparams(self) -> dict:
        """LeNetModule's arguments for this job: what its best checkpoint rebuilds itself from."""
        return {"net": self.node("model"), "optimizer": self.node("optim"), "scheduler": self.node("scheduler"),
                "cuda_graph": self.cfg.cuda_graph, "label_smoothing": self.cfg.label_smoothing}  # fmt: skip


class GroupModule(pl.LightningModule):
    """The members' networks fused; per-member loss, accuracy and test results as [members] tensors on the device."""

    def __init__(self, net: FusedLeNet5, dropout_generators: list[torch.Generator | None], optimizers: list[dict],
                 scheduler: dict | None, label_smoothing: list[float] | None = None,
                 cuda_graph: bool = False):  # fmt: skip
        super().__init__()
        self.automatic_optimization = False  # one optimizer step for all members, as the solo module steps
        self.net = net
        self.members = net.members
        self.dropout_generators = dropout_generators
        net.set_dropout_generators(dropout_generators)
        self.optimizer_nodes, self.scheduler_node = optimizers, scheduler
        # Each member's ε as a [members, 1] buffer: on the device with the net, not copied from the host per step.
        smoothing = torch.tensor(label_smoothing).unsqueeze(1) if label_smoothing and any(label_smoothing) else None
        self.register_buffer("label_smoothing", smoothing, persistent=False)  # not in checkpoints: from the config
        self.cuda_graph = cuda_graph  # record the step once on a GPU (FusedTrainStep); never run on a GPU yet
        self.train_step: FusedTrainStep | None = None
        self.member_parameters: MemberParameters | None = None
        self.active = [True] * self.members  # False once a member diverged: it gets no gradient, so no update
        self.totals: dict[str, torch.Tensor] = {}  # stage -> [members, 3]: loss sum, correct, images
        self.confusions = nn.ModuleList(
            MulticlassConfusionMatrix(num_classes=NUM_CLASSES, validate_args=False) for _ in range(self.members)
        )
        self.misclassified: list[list[torch.Tensor]] = [[] for _ in range(self.members)]

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
        if not self.scheduler_node:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": instantiate(self.scheduler_node)(optimizer=optimizer)}

    def on_train_start(self) -> None:
        # Here the net is on its device and any checkpoint is restored, as for the solo module's TrainStep.
        self.train_step = FusedTrainStep(self, capture=self.cuda_graph and self.trainer.world_size == 1)

    def training_step(self, batch, batch_idx: int) -> None:
        self.train_step(*batch)  # images [members, B, 1, 28, 28], labels [members, B]
        self.member_parameters.point_gradients(self.active)  # after a capture: the graph's gradient tensors
        self.optimizers().step()
        if batch_idx + 1 == self.trainer.num_training_batches:
            self.totals["train"] = self.train_step.take_totals()

    def training_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[members, B] cross-entropies, each member's with its own label smoothing ε (as torch's: (1 - ε)·NLL plus
        ε times the mean over classes of -log p)."""
        if self.label_smoothing is None:
            return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
        log_p = logits.log_softmax(-1)
        nll = -log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        return (1 - self.label_smoothing) * nll - self.label_smoothing * log_p.mean(-1)

    def _add(self, stage: str, losses: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        update = _tally(losses, logits, labels)
        self.totals[stage] = self.totals[stage] + update if stage in self.totals else update

    def _take(self, stage: str) -> tuple[list[float], list[float]]:
        """Each member's (mean loss, accuracy) for the stage since the last take: one host sync per epoch."""
        if stage not in self.totals:  # e.g. no validation this epoch
            return [float("nan")] * self.members, [float("nan")] * self.members
        loss_sum, correct, count = self.totals.pop(stage).T.tolist()
        mean = [s / c for s, c in zip(loss_sum, count, strict=True)]
        return mean, [h / c for h, c in zip(correct, count, strict=True)]

    def epoch_rows(self) -> list[dict[str, float]]:
        (train_loss, train_acc), (val_loss, val_acc), (_, test_acc) = (self._take(s) for s in ("train", "val", "test"))
        return [{"train_loss": train_loss[n], "train_acc": train_acc[n], "val_loss": val_loss[n],
                 "val_acc": val_acc[n], "test_acc": test_acc[n]} for n in range(self.members)]  # fmt: skip

    def stop_member(self, member: int) -> None:
        self.active[member] = False

    def _evaluate(self, images: torch.Tensor, labels: torch.Tensor, stage: str) -> torch.Tensor:
        logits = self.net(images.expand(self.members, *images.shape))  # every member sees the same images
        losses = F.cross_entropy(logits.flatten(0, 1), labels.repeat(self.members), reduction="none")
        self._add(stage, losses.view(self.members, -1), logits, labels)
        return logits

    def on_validation_epoch_start(self) -> None:
        for stage in ("val", "test"):  # the sanity check's batches do not count
            self.totals.pop(stage, None)

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(*batch, ("val", "test")[dataloader_idx])  # loader 1: the per-epoch test curve

    def on_train_epoch_end(self) -> None:
        # After EpochHistory and MemberOutputs (callbacks run first), before the group's last.ckpt (checkpoint
        # callbacks run after the module), as in the solo module: checkpoints hold the next epoch's lr.
        if scheduler := self.lr_schedulers():
            scheduler.step()

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

    def test_best(self, trainer: pl.Trainer, datamodule, tested: list[bool]) -> list[BestCheckpoint | None]:
        """Each member's best-by-validation weights in its slot, then one test pass for all of them."""
        best = next(c for c in trainer.callbacks if isinstance(c, MemberOutputs)).best
        if not any(tested):
            return [None] * self.members
        for n in range(self.members):
            if tested[n]:
                checkpoint = checkpoints.load_checkpoint(best[n]["path"], map_location=self.device)
                self.net.load_member(n, {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items()})
        trainer.test(self, datamodule=datamodule, verbose=False)
        losses, accuracies = self._take("test_best")
        return [BestCheckpoint(best[n]["path"], best[n]["score"], accuracies[n], losses[n],
                               self.confusions[n].compute(), self._misclassified_images(n)) if tested[n] else None
                for n in range(self.members)]  # fmt: skip

    def _misclassified_images(self, member: int) -> torch.Tensor:
        images = self.misclassified[member]
        return torch.cat(images)[:MAX_MISCLASSIFIED] if images else torch.empty(0)

    @property
    def uses_cuda_graph(self) -> bool:
        return self.train_step is not None and self.train_step.graph is not None

    # The members' dropout streams travel in the group's checkpoints, so a resumed group draws the same masks.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["dropout_generators"] = [g.get_state() if g is not None else None for g in self.dropout_generators]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        for generator, state in zip(self.dropout_generators, checkpoint["dropout_generators"], strict=True):
            if generator is not None:
                generator.set_state(state)


def _tally(losses: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[members, 3]: each member's loss sum, correct predictions and images in this batch."""
    correct = (logits.argmax(-1) == labels).sum(-1).to(losses.dtype)
    return torch.stack([losses.sum(-1), correct, torch.full_like(correct, losses.shape[-1])], dim=1)


class FusedTrainStep(TrainStep):
    """All members' forward and backward as one step: eager, or on one GPU recorded once as a CUDA graph and
    replayed (TrainStep's capture, warm-up and eager fallback for batches of another shape). The totals are
    [members, 3], added in place on the device. The optimizer step stays outside, as for a solo job.
    Capture (`hydra.launcher.cuda_graph`) has never run on a GPU: off unless asked for."""

    def __init__(self, module: GroupModule, capture: bool):
        super().__init__(module.net, module.manual_backward, module.device, capture)
        self.module = module
        self.totals = torch.zeros(module.members, 3, device=module.device)

    def _forward_backward(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.net.zero_grad(set_to_none=False)  # in place: the members' gradients stay views of these
        logits = self.net(images)
        losses = self.module.training_losses(logits, labels)
        # The sum of the members' mean losses: each member's gradient is that of its own mean loss.
        self.backward(losses.mean(1).sum())
        with torch.no_grad():
            self.totals += _tally(losses, logits, labels)


class MemberOutputs(pl.Callback):
    """Per member, at each epoch's end: its TensorBoard scalars and, when its validation accuracy improved, its
    best checkpoint, named and placed by its own ModelCheckpoint config (conf/callbacks: model_checkpoint).

    Runs after EpochHistory (listed after it), whose rows it reads. Its state (each member's best so far, and
    which jobs the group trains) travels in the group's checkpoints.
    """

    def __init__(self, members: list[Member], history: EpochHistory):
        self.members, self.history = members, history
        self.naming = [_monitored_checkpoint(member.cfg) for member in members]
        self.loggers = [instantiate(member.cfg.logger) for member in members]
        self.best: list[dict | None] = [None] * len(members)  # {"path", "score"}: the monitored value

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: GroupModule) -> None:
        for n, (naming, logger) in enumerate(zip(self.naming, self.loggers, strict=True)):
            rows = self.history.histories[n]
            if not rows or rows[-1]["epoch"] != trainer.current_epoch:  # it stopped training (diverged)
                continue
            row = rows[-1]
            # at the epoch, as the solo module logs its curves
            logger.log_metrics({key: row[key.replace("/", "_")] for key in HISTORY_KEYS}, step=trainer.current_epoch)
            score, best = row[naming.monitor.replace("/", "_")], self.best[n]
            if best is None or (score > best["score"] if naming.mode == "max" else score < best["score"]):
                self._save_best(trainer, pl_module, n, score)

    def _save_best(self, trainer: pl.Trainer, module: GroupModule, n: int, score: float) -> None:
        metrics = {"epoch": trainer.current_epoch, self.naming[n].monitor: torch.tensor(score)}
        path = self.naming[n].format_checkpoint_name(metrics)
        checkpoint = {  # what LeNetModule.load_from_checkpoint reads: the member's weights and its own arguments
            "epoch": trainer.current_epoch, "global_step": trainer.global_step,
            "pytorch-lightning_version": pl.__version__,
            "state_dict": {f"net.{k}": v for k, v in module.net.member_state_dict(n).items()},
            LeNetModule.CHECKPOINT_HYPER_PARAMS_NAME: "kwargs",
            LeNetModule.CHECKPOINT_HYPER_PARAMS_KEY: self.members[n].checkpoint_hparams(),
        }  # fmt: skip
        trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, path)
        previous = (self.best[n] or {}).get("path")
        if previous and previous != path:
            trainer.strategy.checkpoint_io.remove_checkpoint(previous)
        self.best[n] = {"path": path, "score": score}

    def state_dict(self) -> dict:
        return {"best": self.best, "jobs": [str(member.output_dir) for member in self.members]}

    def load_state_dict(self, state_dict: dict) -> None:
        jobs = [str(member.output_dir) for member in self.members]
        if state_dict["jobs"] != jobs:
            raise UserError(f"the group checkpoint trains {state_dict['jobs']}, not {jobs}: resume the sweep with "
                            "its own grid, or resume=retry to train these jobs again")  # fmt: skip
        self.best = state_dict["best"]


def _monitored_checkpoint(cfg: DictConfig) -> ModelCheckpoint:
    """The job's ModelCheckpoint that selects the best epoch (it has a monitor): its dirpath, file name and mode."""
    callbacks = (instantiate(node) for node in cfg.callbacks.values())
    return next(c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor)


def _member_generator(seed: int, device: torch.device) -> torch.Generator:
    """The member's dropout stream. On the CPU, the global RNG's state right after its network was built: what its
    solo run's dropout draws from. On a GPU, a generator with its seed (solo CUDA dropout is another kernel)."""
    if device.type == "cpu":
        generator = torch.Generator()
        generator.set_state(torch.get_rng_state())
        return generator
    return torch.Generator(device=device).manual_seed(seed)


def group_folder(sweep_dir: Path, members: list[Member]) -> Path:
    """Where the group's own checkpoint lives: named after its first job, which belongs to no other group."""
    return Path(sweep_dir) / "fused_groups" / members[0].output_dir.name


def train_group(members: list[Member], group: dict, folder: Path, resume_hint: str, ckpt_path: str | None = None,
                cuda_graph: bool = False) -> list[dict]:  # fmt: skip
    """Train the members as one fused model; write and return each member's metrics.json content.

    group: what metrics.json records of the group (its id, its members' job numbers); folder: the group's
    checkpoints; ckpt_path: the group's last.ckpt to continue from; cuda_graph: the launcher's (off by default).
    """
    cfg = members[0].cfg  # the settings every member shares
    lifecycle.prepare(cfg)
    history = EpochHistory()  # the members' rows, as for a solo job
    outputs = MemberOutputs(members, history)
    # The group's last.ckpt: the job config's ModelCheckpoint without a monitor, in the group's folder. Per member
    # only the monitored one's naming is used (MemberOutputs); a user's own callbacks run on the group.
    shared = []
    for callback in (instantiate(node) for node in cfg.callbacks.values()):
        if isinstance(callback, ModelCheckpoint) and not callback.monitor:
            callback.dirpath = str(folder)
            shared.append(callback)
        elif not isinstance(callback, ModelCheckpoint | EpochHistory):
            shared.append(callback)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=[history, outputs, *shared], logger=False)
    device = trainer.strategy.root_device

    # The fused network from the jobs' own model config (LeNet5's arguments), with each member's dropout p.
    net_args = OmegaConf.to_container(cfg.model, resolve=True) | {"_target_": FUSED_NET}
    net = instantiate(net_args, members=len(members), dropout_p=[m.cfg.model.dropout_p for m in members])
    generators = []
    for n, member in enumerate(members):
        torch.manual_seed(member.cfg.seed)  # as the solo run's seed_everything: the same initial weights
        solo = instantiate(member.cfg.model)
        net.load_member(n, solo.state_dict())
        has_dropout = any(isinstance(m, nn.Dropout) for m in solo.modules())
        generators.append(_member_generator(member.cfg.seed, device) if has_dropout else None)
    module = GroupModule(net, generators, [m.node("optim") for m in members], members[0].node("scheduler"),
                         [m.cfg.label_smoothing for m in members], cuda_graph and cfg.cuda_graph)  # fmt: skip
    data = OmegaConf.to_container(cfg.data, resolve=True)
    per_member = ("_target_", "shuffle_seed", "augment", "max_shift")
    datamodule = StackedFashionMNIST(shuffle_seeds=[m.cfg.data.shuffle_seed for m in members],
                                     max_shifts=[m.cfg.data.max_shift if m.cfg.data.augment else None for m in members],
                                     **{k: v for k, v in data.items() if k not in per_member})  # fmt: skip
    datamodule.prepare_data()

    group = group | {"checkpoint": str(folder / "last.ckpt")}
    jobs = [JobRecord(m.output_dir, m.hparams, logger, {"fused_group": group})
            for m, logger in zip(members, outputs.loggers, strict=True)]  # fmt: skip
    return lifecycle.run(trainer, module, datamodule, jobs, history, ckpt_path, resume_hint)
