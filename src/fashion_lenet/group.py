"""A fused group: sweep jobs that share one network shape, trained by one Trainer as one StackedLeNet5.

Each member is the job it would be alone: seeded as its solo run (same initial weights, batches and, on the
CPU, dropout masks), its own optimizer hyperparameters (one param group each) and BatchNorm statistics, and in
its job folder what a solo job writes: the history, checkpoints in the solo format written by its own
ModelCheckpoint callbacks (so `ckpt_path=last` resumes a member as a solo run), a TensorBoard run and
metrics.json. A member whose loss stops being finite stops training; the others go on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassConfusionMatrix

from fashion_lenet.callbacks import BestCheckpointFigures, EpochHistory, log_test_figures
from fashion_lenet.console import quiet_lightning
from fashion_lenet.data import FashionMNISTDataModule, StackedFashionMNIST
from fashion_lenet.fused import StackedLeNet5
from fashion_lenet.module import MAX_MISCLASSIFIED, NUM_CLASSES, set_fit_flags
from fashion_lenet.results import (
    METRICS_FILE,
    best_checkpoint_results,
    device_name,
    library_versions,
    write_json_atomic,
)


@dataclass
class Member:
    """One job of a fused group, as the launcher hands it over."""

    cfg: DictConfig  # the job's config, resolved (paths into its own folder)
    output_dir: Path
    hparams: dict  # metrics.json's and TensorBoard's description of the job
    # Built by train_group:
    net: nn.Module | None = None
    callbacks: list[pl.Callback] = field(default_factory=list)  # its solo ModelCheckpoints and EpochHistory
    logger: TensorBoardLogger | None = None

    def node(self, key: str) -> dict | None:
        return OmegaConf.to_container(self.cfg[key], resolve=True) or None

    @property
    def history(self) -> EpochHistory:
        return next(c for c in self.callbacks if isinstance(c, EpochHistory))

    @property
    def best_checkpoint(self) -> ModelCheckpoint:
        return next(c for c in self.callbacks if isinstance(c, ModelCheckpoint) and c.monitor)

    def checkpoints(self) -> list[ModelCheckpoint]:
        return [c for c in self.callbacks if isinstance(c, ModelCheckpoint)]


class GroupModule(pl.LightningModule):
    """The members' networks stacked; per-member loss, accuracy and test results as [N] tensors on the device."""

    def __init__(self, nets: list[nn.Module], dropout_generators: list[torch.Generator | None],
                 optimizers: list[dict], scheduler: dict | None):  # fmt: skip
        super().__init__()
        self.automatic_optimization = False  # one optimizer step for all members, as the solo module steps
        self.stacked = StackedLeNet5(nets, dropout_generators)
        self.optimizer_nodes, self.scheduler_node = optimizers, scheduler
        self.active = [True] * len(nets)  # False once a member diverged: its gradients are dropped
        self.totals: dict[str, torch.Tensor] = {}  # stage -> [N, 3]: loss sum, correct, images
        self.confusions = nn.ModuleList(
            MulticlassConfusionMatrix(num_classes=NUM_CLASSES, validate_args=False) for _ in nets
        )
        self.misclassified: list[list[torch.Tensor]] = [[] for _ in nets]

    @property
    def nets(self) -> nn.ModuleList:
        return self.stacked.members

    def on_fit_start(self) -> None:
        set_fit_flags(self.device)

    def configure_optimizers(self):
        # One optimizer of the members' class; each member's parameters form a param group with its own lr,
        # weight decay, momentum..., so each member's update is the one its solo optimizer makes.
        partials = [instantiate(node) for node in self.optimizer_nodes]
        groups = [{"params": list(net.parameters()), **p.keywords} for p, net in zip(partials, self.nets, strict=True)]
        optimizer = partials[0].func(groups, **partials[0].keywords)
        if not self.scheduler_node:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": instantiate(self.scheduler_node)(optimizer=optimizer)}

    def training_step(self, batch, batch_idx: int) -> None:
        images, labels = batch  # [N, B, 1, 28, 28], [N, B]
        optimizer = self.optimizers()
        optimizer.zero_grad()
        logits = self.stacked(images)
        losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
        # The sum of the members' mean losses: each member's gradient is that of its own mean loss.
        self.manual_backward(losses.mean(1).sum())
        for net, active in zip(self.nets, self.active, strict=True):
            if not active:  # torch's optimizers skip parameters without a gradient
                net.zero_grad(set_to_none=True)
        optimizer.step()
        self._add("train", losses.detach(), logits.detach(), labels)

    def _add(self, stage: str, losses: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        correct = (logits.argmax(-1) == labels).sum(-1).to(losses.dtype)
        update = torch.stack([losses.sum(-1), correct, torch.full_like(correct, losses.shape[-1])], dim=1)
        self.totals[stage] = self.totals[stage] + update if stage in self.totals else update

    def take(self, stage: str) -> tuple[list[float], list[float]]:
        """Each member's (mean loss, accuracy) for the stage since the last take: one host sync per epoch."""
        loss_sum, correct, count = self.totals.pop(stage).T.tolist()
        mean = [s / c for s, c in zip(loss_sum, count, strict=True)]
        return mean, [h / c for h, c in zip(correct, count, strict=True)]

    def _evaluate(self, images: torch.Tensor, labels: torch.Tensor, stage: str) -> torch.Tensor:
        n = len(self.nets)
        logits = self.stacked(images.expand(n, *images.shape))  # every member sees the same images
        losses = F.cross_entropy(logits.flatten(0, 1), labels.repeat(n), reduction="none").view(n, -1)
        self._add(stage, losses, logits, labels)
        return logits

    def on_validation_epoch_start(self) -> None:
        for stage in ("val", "test"):  # the sanity check's batches do not count
            self.totals.pop(stage, None)

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(*batch, ("val", "test")[dataloader_idx])  # loader 1: the per-epoch test curve

    def on_train_epoch_end(self) -> None:
        # Before the members' checkpoints (MemberOutputs is a Checkpoint, so it runs after this), as in the solo
        # module: checkpoints hold the next epoch's lr.
        if scheduler := self.lr_schedulers():
            scheduler.step()

    def on_test_epoch_start(self) -> None:
        self.totals.pop("test_best", None)
        for confusion in self.confusions:
            confusion.reset()
        self.misclassified = [[] for _ in self.nets]

    def test_step(self, batch, batch_idx: int) -> None:
        images, labels = batch
        predictions = self._evaluate(images, labels, "test_best").argmax(-1)
        for confusion, misclassified, prediction in zip(self.confusions, self.misclassified, predictions,
                                                        strict=True):  # fmt: skip
            confusion.update(prediction, labels)
            if sum(len(x) for x in misclassified) < MAX_MISCLASSIFIED:
                misclassified.append(images[prediction != labels].cpu())

    def misclassified_images(self, member: int) -> torch.Tensor:
        images = self.misclassified[member]
        return torch.cat(images)[:MAX_MISCLASSIFIED] if images else torch.empty(0)

    def member_checkpoint(self, member: int, checkpoint: dict, callbacks: list[pl.Callback],
                          hyper_parameters: dict) -> dict:  # fmt: skip
        """The checkpoint member's solo run would write at this point, from the group's `checkpoint`."""
        optimizer = self.optimizers().optimizer
        group = optimizer.param_groups[member]
        shared = ("epoch", "global_step", "pytorch-lightning_version", "loops")  # the same for every member
        state = {key: checkpoint[key] for key in shared if key in checkpoint}
        state["state_dict"] = {f"net.{k}": v.clone() for k, v in self.nets[member].state_dict().items()}
        settings = {k: v for k, v in group.items() if k != "params"}
        state["optimizer_states"] = [{  # the state_dict of an optimizer over this member's parameters alone
            "state": {i: optimizer.state[p] for i, p in enumerate(group["params"]) if p in optimizer.state},
            "param_groups": [settings | {"params": list(range(len(group["params"])))}],
        }]  # fmt: skip
        state["lr_schedulers"] = []  # present even when empty, as Lightning writes it
        for scheduler in checkpoint.get("lr_schedulers", []):  # the group's, over all members: keep member's lr
            sliced = {k: [v[member]] if k in ("base_lrs", "_last_lr") else v for k, v in scheduler.items()}
            state["lr_schedulers"].append(sliced)
        state["callbacks"] = {c.state_key: c.state_dict() for c in callbacks}
        state[FashionMNISTDataModule.__qualname__] = self.trainer.datamodule.member_state_dict(member)
        state["hparams_name"], state["hyper_parameters"] = "kwargs", hyper_parameters
        generator = self.stacked.dropout_generators[member]
        if generator is not None and generator.device.type == "cpu":  # solo dropout draws from the global RNG
            state["torch_rng_state"] = generator.get_state()
        return state


class _MemberTrainer:
    """The group's Trainer as one member's ModelCheckpoint callbacks see it: that member's metrics, its own
    checkpoint file written on save. Lightning's callback then keeps its own best-k bookkeeping and file names."""

    def __init__(self, trainer: pl.Trainer, save, val_acc: float | None):
        self._trainer, self._save = trainer, save
        self.callback_metrics = {} if val_acc is None else {"val/acc": torch.tensor(val_acc)}
        self.loggers = []  # the member's TensorBoard run needs no checkpoint notice

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trainer, name)

    def save_checkpoint(self, filepath, weights_only: bool = False, storage_options=None) -> None:
        self._save(filepath)


class MemberOutputs(Checkpoint):
    """Per member, at each epoch's end: the history row, divergence, TensorBoard scalars and checkpoints.

    A Checkpoint callback, so Lightning calls it after the module's epoch-end hook, as it calls ModelCheckpoint.
    """

    def __init__(self, members: list[Member], group_history: EpochHistory):
        self.members, self.group_history = members, group_history
        self.val_acc: list[float | None] = [None] * len(members)

    def setup(self, trainer: pl.Trainer, pl_module: GroupModule, stage: str) -> None:
        for n, member in enumerate(self.members):
            for callback in member.checkpoints():
                callback.setup(self._view(trainer, pl_module, n), pl_module, stage)

    def _view(self, trainer: pl.Trainer, module: GroupModule, n: int) -> _MemberTrainer:
        member = self.members[n]

        def save(filepath) -> None:
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            hyper_parameters = {"net": member.node("model"), "optimizer": member.node("optim"),
                                "scheduler": member.node("scheduler"), "cuda_graph": member.cfg.cuda_graph}  # fmt: skip
            state = module.member_checkpoint(n, checkpoint, member.callbacks, hyper_parameters)
            trainer.strategy.save_checkpoint(state, filepath)

        return _MemberTrainer(trainer, save, self.val_acc[n])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: GroupModule) -> None:
        losses, accuracies = pl_module.take("train")
        val_losses, self.val_acc = pl_module.take("val")
        _, test_accuracies = pl_module.take("test")
        times = {k: v for k, v in self.group_history.history[-1].items() if k.endswith("_time_s")}  # the group's
        for n, member in enumerate(self.members):
            if not pl_module.active[n]:
                continue
            row = {"epoch": trainer.current_epoch, "train_loss": losses[n], "train_acc": accuracies[n],
                   "val_loss": val_losses[n], "val_acc": self.val_acc[n], "test_acc": test_accuracies[n]}  # fmt: skip
            row |= times
            member.history.history.append(row)
            member.logger.log_metrics(
                {"train/loss": row["train_loss"], "train/acc": row["train_acc"], "val/loss": row["val_loss"],
                 "val/acc": row["val_acc"], "test/acc": row["test_acc"]},
                step=trainer.current_epoch,  # the epoch, as the solo module logs it
            )  # fmt: skip
            if not math.isfinite(row["train_loss"]):
                member.history.diverged, pl_module.active[n] = True, False
            for callback in member.checkpoints():
                callback.on_train_epoch_end(self._view(trainer, pl_module, n), pl_module)
        if not any(pl_module.active):
            trainer.should_stop = True

    def on_exception(self, trainer: pl.Trainer, pl_module: GroupModule, exception: BaseException) -> None:
        for n, member in enumerate(self.members):  # Ctrl-C / SIGTERM: each member's last.ckpt
            for callback in member.checkpoints():
                callback.on_exception(self._view(trainer, pl_module, n), pl_module, exception)


def _member_generator(seed: int, device: torch.device) -> torch.Generator:
    """The member's dropout stream. On the CPU, the global RNG's state right after its network was built: what its
    solo run's dropout draws from. On a GPU, a generator with its seed (solo CUDA dropout is another kernel)."""
    if device.type == "cpu":
        generator = torch.Generator()
        generator.set_state(torch.get_rng_state())
        return generator
    return torch.Generator(device=device).manual_seed(seed)


def train_group(members: list[Member], group: dict) -> list[dict]:
    """Train the members as one stacked model; write and return each member's metrics.json content.

    group: what metrics.json records of the group (its id, its members' job numbers).
    """
    quiet_lightning()
    cfg = members[0].cfg  # the settings every member shares
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    group_history = EpochHistory()  # the group's epoch times; members' metrics come from MemberOutputs
    outputs = MemberOutputs(members, group_history)
    # The progress bar and any callback a user added run on the group; what a job keeps per member does not.
    per_member = ModelCheckpoint | EpochHistory | BestCheckpointFigures
    shared = [c for c in (instantiate(c) for c in cfg.callbacks.values()) if not isinstance(c, per_member)]
    callbacks = [group_history, outputs, *shared]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    device = trainer.strategy.root_device

    nets, generators = [], []
    for member in members:
        torch.manual_seed(member.cfg.seed)  # as the solo run's seed_everything: the same initial weights
        nets.append(instantiate(member.cfg.model))
        has_dropout = any(isinstance(m, nn.Dropout) for m in nets[-1].modules())
        generators.append(_member_generator(member.cfg.seed, device) if has_dropout else None)
        member.net = nets[-1]
        member.callbacks = [c for c in (instantiate(c) for c in member.cfg.callbacks.values())
                            if isinstance(c, ModelCheckpoint | EpochHistory)]  # fmt: skip
        member.logger = instantiate(member.cfg.logger)
    module = GroupModule(nets, generators, [m.node("optim") for m in members], members[0].node("scheduler"))
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data = {k: v for k, v in data.items() if k not in ("_target_", "shuffle_seed")}  # the shuffle seeds are per member
    datamodule = StackedFashionMNIST(shuffle_seeds=[m.cfg.data.shuffle_seed for m in members], **data)
    datamodule.prepare_data()

    start, started_at = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    common = {"device": device_name(device), "versions": library_versions(), "started_at": started_at,
              "fused_group": group}  # fmt: skip
    try:
        trainer.fit(module, datamodule=datamodule)
    except SystemExit as stop:  # Ctrl-C or SIGTERM: every member's last.ckpt is written (MemberOutputs)
        for member in members:
            metrics = member.hparams | common | {"status": "interrupted", "history": member.history.history}
            write_json_atomic(member.output_dir / METRICS_FILE, metrics)
        raise SystemExit(143 if isinstance(stop, SIGTERMException) else 130) from None

    tested = [n for n, member in enumerate(members) if not member.history.diverged]
    for n in tested:  # each member's best-by-validation weights, then one test pass for all of them
        best = torch.load(members[n].best_checkpoint.best_model_path, map_location=device, weights_only=False)
        nets[n].load_state_dict({k.removeprefix("net."): v for k, v in best["state_dict"].items()})
    if tested:
        trainer.test(module, datamodule=datamodule, verbose=False)
        test_losses, test_accuracies = module.take("test_best")
    wall = time.perf_counter() - start
    results = []
    for n, member in enumerate(members):
        metrics = member.hparams | common | {"history": list(member.history.history)}
        rows = metrics["history"]
        if member.history.diverged:
            metrics |= {"status": "diverged", "best_val_acc": None, "test_acc": None}
        else:
            checkpoint = member.best_checkpoint
            metrics |= {"status": "completed"} | best_checkpoint_results(
                rows, float(checkpoint.best_model_score), checkpoint.best_model_path, test_accuracies[n],
                test_losses[n], module.confusions[n].compute(),
            )  # fmt: skip
            member.logger.log_metrics({"test_best/loss": test_losses[n], "test_best/acc": test_accuracies[n]},
                                      step=trainer.current_epoch)  # fmt: skip
            log_test_figures(member.logger.experiment, module.confusions[n].compute(), module.misclassified_images(n))
            member.logger.log_hyperparams(
                member.hparams, {"hp/best_val_acc": metrics["best_val_acc"], "hp/test_acc": metrics["test_acc"]}
            )
        member.logger.finalize("success")
        metrics |= {"final_train_acc": rows[-1].get("train_acc") if rows else None, "cuda_graph": False,
                    "wall_time_s": wall}  # fmt: skip
        write_json_atomic(member.output_dir / METRICS_FILE, metrics)
        results.append(metrics)
    return results
