"""A job's life, written once for every job a group trains (a solo run is a group of one: group.py).

    prepare(cfg)   threads, matmul precision, seeds, Lightning's console noise
    run(...)       fit (or continue from a checkpoint); Ctrl-C/SIGTERM -> every job `interrupted`, exit 130/143;
                   test each job's best checkpoint; per job: status (completed, pruned or diverged), metrics.json,
                   TensorBoard's HPARAMS, test scalars and figures
    result(...)    what the job hands Hydra: its best validation accuracy, or DivergedError
"""

from __future__ import annotations

import logging
import platform
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fashion_lenet.sweep import placement
from fashion_lenet.sweep.errors import DivergedError
from fashion_lenet.sweep.jobfiles import METRICS_FILE, library_versions, write_json_atomic

if TYPE_CHECKING:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.loggers import Logger
    from omegaconf import DictConfig

    from fashion_lenet.training.group import MemberOutputs
    from fashion_lenet.training.module import LeNetModule

log = logging.getLogger("train")


@dataclass
class JobRecord:
    """One job while it trains: its folder, what describes it, its TensorBoard run."""

    output_dir: Path
    hparams: dict  # metrics.json's and TensorBoard HPARAMS' description of the job (jobfiles.job_hparams)
    logger: Logger | None
    extra: dict[str, Any] = field(default_factory=dict)  # more for metrics.json, e.g. the fused group


@dataclass
class BestCheckpoint:
    """A job's best-by-validation checkpoint, tested once on the official test set."""

    path: str
    val_acc: float
    test_acc: float
    test_loss: float
    confusion: torch.Tensor
    misclassified: torch.Tensor  # up to 64 misclassified test images, normalized


def prepare(cfg: DictConfig) -> None:
    """The process-wide settings of a training run, before anything is built."""
    import lightning.pytorch as pl
    import torch

    from fashion_lenet.sweep.console import quiet_lightning

    quiet_lightning()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)


def run(trainer: pl.Trainer, module: LeNetModule, datamodule: pl.LightningDataModule, jobs: list[JobRecord],
        outputs: MemberOutputs, ckpt_path: str | None, resume_hint: str) -> list[dict]:  # fmt: skip
    """Train, test and record `jobs` (module.members of them); return each job's metrics.json content."""
    completed: set[int] = set()
    try:
        return _fit_test_and_record(trainer, module, datamodule, jobs, outputs, ckpt_path, resume_hint, completed)
    finally:  # whatever ended the run: each job's event writer flushed and closed, no writer thread outlives it
        for n, job in enumerate(jobs):
            if job.logger is not None:
                job.logger.finalize("success" if n in completed else "failed")


def _fit_test_and_record(trainer: pl.Trainer, module: LeNetModule, datamodule: pl.LightningDataModule,
                         jobs: list[JobRecord], outputs: MemberOutputs, ckpt_path: str | None, resume_hint: str,
                         completed: set[int]) -> list[dict]:  # fmt: skip
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    history, start = outputs.history, time.perf_counter()
    common = {"device": device_name(trainer.strategy.root_device), "versions": library_versions(),
              "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    if placed := placement.current():  # a sweep's worker pinned to one of several devices
        common["placement"] = placed
    try:
        with warnings.catch_warnings():
            if ckpt_path:  # resuming: the run's folder holds its own checkpoints, nothing to warn about
                warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")
                # A solo checkpoint of the code before solo runs were groups of one (tests/data/legacy) holds the
                # state of a monitored ModelCheckpoint that no run has here: MemberOutputs reads the best so far
                # from the history, so Lightning's warning that this state is not restored has nothing to act on.
                warnings.filterwarnings("ignore", r"Be aware that when using `ckpt_path`.*following callbacks: "
                                        r"\[\"ModelCheckpoint\{'monitor': '[^']+'[^\]]*\]\.$")  # fmt: skip
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SystemExit as stop:  # Lightning turns Ctrl-C and SIGTERM into SystemExit
        for job, rows in zip(jobs, history.histories, strict=True):
            _write(trainer, job, job.hparams | common | job.extra | {"status": "interrupted", "history": rows})
        log.warning("interrupted; resume with: %s", resume_hint)
        raise SystemExit(143 if isinstance(stop, SIGTERMException) else 130) from None
    histories, diverged = [list(rows) for rows in history.histories], list(history.diverged)
    tested = module.test_best(trainer, datamodule, [None if d else outputs.best(n) for n, d in enumerate(diverged)])
    wall = time.perf_counter() - start
    results = []
    for n, (job, rows, best) in enumerate(zip(jobs, histories, tested, strict=True)):
        metrics = job.hparams | common | job.extra | {"history": rows}
        if best is None:
            metrics |= {"status": "diverged", "best_val_acc": None, "test_acc": None}
        else:
            completed.add(n)
            # a pruned job's best is tested too
            metrics |= {"status": "pruned" if history.pruned[n] else "completed"} | best_checkpoint_results(
                rows, best.val_acc, best.path, best.test_acc, best.test_loss, best.confusion
            )
            if job.logger is not None:
                _log_test_results(job.logger, job.hparams, metrics, best, step=trainer.current_epoch)
        metrics |= {"final_train_acc": rows[-1].get("train_acc") if rows else None,
                    "cuda_graph": module.uses_cuda_graph, "wall_time_s": wall}  # fmt: skip
        _write(trainer, job, metrics)
        results.append(metrics)
    return results


def _write(trainer: pl.Trainer, job: JobRecord, metrics: dict) -> None:
    if trainer.is_global_zero:  # one writer when several processes train one model (DDP)
        write_json_atomic(job.output_dir / METRICS_FILE, metrics)


def _log_test_results(logger: Logger, hparams: dict, metrics: dict, best: BestCheckpoint, step: int) -> None:
    """The best checkpoint's test scalars, HPARAMS row, confusion matrix and misclassified images in TensorBoard."""
    from fashion_lenet.training.callbacks import log_test_figures

    logger.log_metrics({"test_best/loss": best.test_loss, "test_best/acc": best.test_acc}, step=step)
    logger.log_hyperparams(hparams, {"hp/best_val_acc": metrics["best_val_acc"], "hp/test_acc": metrics["test_acc"]})
    if hasattr(logger, "experiment") and hasattr(logger.experiment, "add_figure"):  # TensorBoard's writer
        log_test_figures(logger.experiment, best.confusion, best.misclassified)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and thread count: where a run's numbers repeat bit for bit."""
    import torch  # here: train.py and the fused launcher import this module before torch is needed

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads, {cpu_model()})"


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):  # not Linux, or no model line
        return platform.processor() or platform.machine() or "unknown CPU"


def best_checkpoint_results(history: list[dict], best_val_acc: float, best_checkpoint: str, test_acc: float,
                            test_loss: float, confusion: torch.Tensor) -> dict:  # fmt: skip
    """metrics.json's account of the best-by-validation checkpoint, tested once on the official test set."""
    from fashion_lenet.training.data import CLASSES

    confusion = confusion.cpu()
    return {
        "best_epoch": max(history, key=lambda row: row["val_acc"])["epoch"],
        "best_val_acc": best_val_acc,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "per_class_test_acc": dict(zip(CLASSES, (confusion.diag() / confusion.sum(1)).tolist(), strict=True)),
        "confusion_matrix": confusion.tolist(),
        "best_checkpoint": best_checkpoint,
    }


def result(metrics: dict) -> float:
    """What a job returns to Hydra's sweepers: its best validation accuracy; a diverged job fails like any job
    without a result."""
    if metrics["status"] == "diverged":
        epoch = len(metrics["history"]) - 1
        raise DivergedError(f"training diverged in epoch {epoch}: the loss is no longer finite (job marked diverged)")
    return metrics["best_val_acc"]
