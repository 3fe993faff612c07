"""A job's folder and its files: `metrics.json` (its schema, written atomically), what identifies a job folder.

Light to import (no torch): the launchers, sweepers and the report read these files.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fashion_lenet.sweep.errors import UserError

METRICS_FILE = "metrics.json"
FINISHED = ("completed", "pruned")  # statuses of a job that ended as planned (pruned: stopped by an Optuna search)
FUSED_GROUP_FILE = "fused_group.json"  # a fused group's member: the group, written when it starts (resume.py)


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        handle.write(text)
    os.replace(handle.name, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Strict JSON: a NaN or infinite number (a diverged loss) is written as null."""
    write_atomic(path, json.dumps(_finite(data), indent=2, allow_nan=False))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def library_versions() -> dict[str, str]:
    packages = ("torch", "torchvision", "lightning", "torchmetrics", "hydra-core")
    return {"python": platform.python_version()} | {name: version(name) for name in packages}


def job_hparams(cfg: DictConfig, choices) -> dict:
    """What was trained, with which hyperparameters: metrics.json's keys and TensorBoard's HPARAMS.

    choices: Hydra's config-group choices of the job (hydra.runtime.choices).
    """
    hparams = {
        "technique": cfg.technique,
        "model": choices.get("model"),
        "optimizer": choices.get("optim"),
        "lr": cfg.optim.lr,
        "weight_decay": cfg.optim.weight_decay,
        "dropout_p": cfg.model.dropout_p if cfg.model.dropout_layers else 0.0,
        "batch_size": cfg.data.batch_size,
        "seed": cfg.seed,
        "max_epochs": cfg.trainer.max_epochs,
        "scheduler": choices.get("scheduler"),
        "label_smoothing": cfg.label_smoothing,
        "max_shift": cfg.data.max_shift if cfg.data.augment else None,  # None: no augmentation
    }
    if OmegaConf.select(cfg, "distill.teacher", default=None):  # a student's own keys
        hparams |= {"distill_temperature": cfg.distill.temperature, "distill_alpha": cfg.distill.alpha}
    return hparams


def outcome(metrics: dict | None) -> str:
    """A job's end, in words: `completed in 41 s: best epoch 9, val acc 90.12%, test acc 89.80% (best checkpoint)`;
    a pruned job's starts `pruned after epoch 3 of 30 in 9 s`."""
    metrics = metrics or {"status": "incomplete"}
    if metrics["status"] in FINISHED:
        status = "completed" if metrics["status"] == "completed" else (
            f"pruned after epoch {len(metrics['history']) - 1} of {metrics['max_epochs']}")  # fmt: skip
        return (
            f"{status} in {metrics['wall_time_s']:.0f} s: best epoch {metrics['best_epoch']}, val acc "
            f"{100 * metrics['best_val_acc']:.2f}%, test acc {100 * metrics['test_acc']:.2f}% (best checkpoint)"
        )
    if metrics["status"] == "diverged":
        return f"diverged in epoch {len(metrics['history']) - 1}: the training loss stopped being finite"
    return f"{metrics['status']}: {metrics['error']}" if metrics.get("error") else metrics["status"]


def read_json(path: Path) -> dict | None:
    """A JSON file's contents; None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_metrics(job_dir: Path) -> dict | None:
    return read_json(Path(job_dir) / METRICS_FILE)


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's job folders, in job order: those whose .hydra/ Hydra finished writing (a process killed while
    it wrote them leaves a folder that is no job)."""
    folders = (p for p in Path(sweep_dir).iterdir() if (p / ".hydra" / "overrides.yaml").is_file())
    return sorted(folders, key=_job_number)


def finished_jobs(folder: Path) -> list[tuple[Path, Path]]:
    """(job folder, best checkpoint) of each job in `folder` (a job folder, or a sweep folder of them, in job order)
    that ended as planned (FINISHED); raises UserError when there is none. The checkpoint is looked up in the job's
    checkpoints/ first, so a job folder that was moved or copied still finds its own."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist: give a job folder or a sweep folder of finished jobs")
    found = []
    for job in [folder] if (folder / METRICS_FILE).is_file() else job_dirs(folder):
        metrics = read_metrics(job) or {}
        if metrics.get("status") in FINISHED and metrics.get("best_checkpoint"):
            written = Path(metrics["best_checkpoint"])
            moved = job / "checkpoints" / written.name
            found.append((job, moved if moved.is_file() else written))
    if not found:
        raise UserError(f"{folder} holds no finished job (status completed or pruned, with its metrics.json)")
    for job, checkpoint in found:
        if not checkpoint.is_file():
            raise UserError(f"{job}'s best checkpoint {checkpoint.name} is missing from {job / 'checkpoints'}")
    return found


def _job_number(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (1 << 30, path.name)
