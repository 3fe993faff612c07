"""Training a group of N >= 1 jobs as one LeNetModule: a solo run (train.py) is a group of one, a fused group
(hydra/launcher=fused) the jobs of a sweep that share one network shape.

Each job's life is lifecycle.py's: its folder gets the history, metrics.json, a TensorBoard run and its best
checkpoint (an ordinary checkpoint of a one-member LeNetModule: `evaluate` and `load_from_checkpoint` read it).
The group's last.ckpt (Lightning's ModelCheckpoint) is what an interrupted group resumes from, as one group: a
group of one keeps it in its job's checkpoints/, a larger group in `<sweep>/fused_groups/<first job>/`. A member
whose loss stops being finite stops training, as does one an Optuna search prunes (pruning.py); the others go on,
and the group drops it at that epoch's end (LeNetModule).
With `distill.teacher` set, the group learns from that ensemble too (losses.py), each member with its own
temperature and alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from fashion_lenet.sweep.config import teacher_folders
from fashion_lenet.sweep.errors import UserError
from fashion_lenet.training import lifecycle
from fashion_lenet.training.callbacks import EpochHistory
from fashion_lenet.training.ensemble import load_ensemble
from fashion_lenet.training.lifecycle import JobRecord
from fashion_lenet.training.losses import Distillation
from fashion_lenet.training.module import LeNetModule
from fashion_lenet.training.pruning import trial_pruning

HISTORY_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/acc")  # each epoch's TensorBoard scalars


@dataclass
class Member:
    """One job of a group, as train.py or the launcher hands it over."""

    cfg: DictConfig  # the job's config (paths into its own folder)
    output_dir: Path
    hparams: dict  # metrics.json's and TensorBoard's description of the job
    extra: dict = field(default_factory=dict)  # more for metrics.json, e.g. the fused group

    def node(self, key: str) -> dict | None:
        return OmegaConf.to_container(self.cfg[key], resolve=True) or None


class MemberOutputs(pl.Callback):
    """Per member, at each epoch's end: its TensorBoard scalars and, when its validation accuracy improved, its
    best checkpoint, named and placed by its own ModelCheckpoint config (conf/callbacks: model_checkpoint), written
    through the trainer's CheckpointIO.

    Runs after EpochHistory (listed after it), whose rows it reads: each member's best so far is its history's
    first best row, so it travels in checkpoints with the history. Its own state names the jobs the group trains.
    """

    def __init__(self, members: list[Member], history: EpochHistory):
        self.members, self.history = members, history
        self.naming = [_monitored_checkpoint(member.cfg) for member in members]
        self.loggers = [instantiate(member.cfg.logger) for member in members]

    def _best_row(self, member: int, rows: list[dict]) -> dict | None:
        """The first row with the best monitored value, as ModelCheckpoint keeps the first of equal scores."""
        naming = self.naming[member]
        key = naming.monitor.replace("/", "_")
        scored = [row for row in rows if math.isfinite(row.get(key, math.nan))]
        return (max if naming.mode == "max" else min)(scored, key=lambda row: row[key], default=None)

    def _path(self, member: int, row: dict) -> str:
        naming = self.naming[member]
        metrics = {"epoch": row["epoch"], naming.monitor: torch.tensor(row[naming.monitor.replace("/", "_")])}
        return naming.format_checkpoint_name(metrics)

    def best(self, member: int) -> dict | None:
        """The member's best checkpoint so far: {"path", "score"} (the monitored value), None before any."""
        row = self._best_row(member, self.history.histories[member])
        key = self.naming[member].monitor.replace("/", "_")
        return None if row is None else {"path": self._path(member, row), "score": row[key]}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: LeNetModule) -> None:
        for n, logger in enumerate(self.loggers):
            rows = self.history.histories[n]
            if not rows or rows[-1]["epoch"] != trainer.current_epoch:  # it stopped training (diverged)
                continue
            # at the epoch: the x axis of every curve, as in the study's figures
            logger.log_metrics({k: rows[-1][k.replace("/", "_")] for k in HISTORY_KEYS
                                if k.replace("/", "_") in rows[-1]}, step=trainer.current_epoch)  # fmt: skip
            if self._best_row(n, rows) is rows[-1] and trainer.is_global_zero:  # this epoch is the member's best
                path, previous = self._path(n, rows[-1]), self._best_row(n, rows[:-1])
                trainer.strategy.checkpoint_io.save_checkpoint(pl_module.member_checkpoint(n), path)
                if previous is not None and self._path(n, previous) != path:
                    trainer.strategy.checkpoint_io.remove_checkpoint(self._path(n, previous))

    def state_dict(self) -> dict:
        return {"jobs": [str(member.output_dir) for member in self.members]}

    def load_state_dict(self, state_dict: dict) -> None:
        jobs = [str(member.output_dir) for member in self.members]
        if state_dict["jobs"] != jobs:
            raise UserError(f"the group checkpoint trains {state_dict['jobs']}, not {jobs}: resume the sweep with "
                            "its own grid, or resume=retry to train these jobs again")  # fmt: skip


def _monitored_checkpoint(cfg: DictConfig) -> ModelCheckpoint:
    """The job's ModelCheckpoint that selects the best epoch (it has a monitor): its dirpath, file name and mode."""
    callbacks = (instantiate(node) for node in cfg.callbacks.values())
    return next(c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor)


def _distillation(members: list[Member]) -> Distillation | None:
    """The members' teacher (one for the group, as the fused launcher groups jobs) with each member's temperature
    and alpha, recorded in each member's metrics.json; None without a teacher."""
    teacher = members[0].cfg.distill.teacher
    if not teacher:
        return None
    ensemble, jobs = load_ensemble(teacher_folders(teacher))
    distillation = Distillation(ensemble, jobs, [m.cfg.distill.temperature for m in members],
                                [m.cfg.distill.alpha for m in members])  # fmt: skip
    for n, member in enumerate(members):
        member.extra["distill"] = distillation.record(n)
    return distillation


def group_folder(sweep_dir: Path, members: list[Member]) -> Path:
    """Where a fused group's own checkpoint lives: named after its first job, which belongs to no other group."""
    return Path(sweep_dir) / "fused_groups" / members[0].output_dir.name


def train_group(members: list[Member], resume_hint: str, ckpt_path: str | None = None, folder: Path | None = None,
                fused_cuda_graph: bool = False) -> list[dict]:  # fmt: skip
    """Train the members as one LeNetModule; write and return each member's metrics.json content.

    ckpt_path: the group's last.ckpt to continue from; folder: where the group's last.ckpt goes (None: where the
    job config puts it, its checkpoints/); fused_cuda_graph: the fused launcher's switch for recording the step
    of two or more members as a CUDA graph (a group of one records it as the job config says).
    """
    cfg = members[0].cfg  # the settings every member shares
    lifecycle.prepare(cfg)
    history = EpochHistory()  # the members' rows
    outputs = MemberOutputs(members, history)
    # The group's last.ckpt: the job config's ModelCheckpoint without a monitor. Per member only the monitored one's
    # naming is used (MemberOutputs); a user's own callbacks run on the group.
    shared = []
    for callback in (instantiate(node) for node in cfg.callbacks.values()):
        if isinstance(callback, ModelCheckpoint) and not callback.monitor:
            callback.dirpath = str(folder) if folder else callback.dirpath
            shared.append(callback)
        elif not isinstance(callback, ModelCheckpoint | EpochHistory):
            shared.append(callback)
    # After the members' best checkpoints: a pruned member's epoch may be its best
    pruning = [found] if (found := trial_pruning([m.output_dir for m in members], history)) else []
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=[history, outputs, *pruning, *shared], logger=False)

    distillation = _distillation(members)
    module = LeNetModule([m.node("model") for m in members], [m.node("optim") for m in members],
                         members[0].node("scheduler"), cfg.cuda_graph and (len(members) == 1 or fused_cuda_graph),
                         [m.cfg.label_smoothing for m in members], seeds=[m.cfg.seed for m in members],
                         distillation=distillation)  # fmt: skip
    data = OmegaConf.to_container(cfg.data, resolve=True)
    per_member = {key: [m.cfg.data[key] for m in members] for key in ("shuffle_seed", "augment", "max_shift")}
    datamodule = instantiate(data | per_member)
    datamodule.prepare_data()  # fails fast, with advice, when the data is missing or corrupted

    jobs = [JobRecord(m.output_dir, m.hparams, logger, m.extra)
            for m, logger in zip(members, outputs.loggers, strict=True)]  # fmt: skip
    return lifecycle.run(trainer, module, datamodule, jobs, outputs, ckpt_path, resume_hint)
