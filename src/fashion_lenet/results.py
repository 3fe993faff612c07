"""What a job leaves behind: `metrics.json` (written atomically, last) and the sweep's `summary.md`."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fashion_lenet.naming import job_settings, job_title

METRICS_FILE = "metrics.json"
SUMMARY_FILE = "summary.md"
log = logging.getLogger("train")


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
    return {
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
    }


def device_name(device) -> str:
    """The GPU's name, or the CPU's model and thread count: where a run's numbers repeat bit for bit."""
    import torch  # here: a sweep's launcher imports this module and leaves torch to the jobs

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads, {cpu_model()})"


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):  # not Linux, or no model line
        return platform.processor() or platform.machine() or "unknown CPU"


def outcome(metrics: dict | None) -> str:
    """A job's end, in words: `completed in 41 s: best epoch 9, val acc 90.12%, test acc 89.80% (best checkpoint)`."""
    metrics = metrics or {"status": "incomplete"}
    if metrics["status"] == "completed":
        return (
            f"completed in {metrics['wall_time_s']:.0f} s: best epoch {metrics['best_epoch']}, val acc "
            f"{100 * metrics['best_val_acc']:.2f}%, test acc {100 * metrics['test_acc']:.2f}% (best checkpoint)"
        )
    if metrics["status"] == "diverged":
        return f"diverged in epoch {len(metrics['history']) - 1}: the training loss stopped being finite"
    return f"{metrics['status']}: {metrics['error']}" if metrics.get("error") else metrics["status"]


def best_checkpoint_results(history: list[dict], best_val_acc: float, best_checkpoint: str, test_acc: float,
                            test_loss: float, confusion) -> dict:  # fmt: skip
    """metrics.json's account of the best-by-validation checkpoint, tested once on the official test set."""
    from fashion_lenet.data import CLASSES

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


def read_metrics(job_dir: Path) -> dict | None:
    try:
        return json.loads((Path(job_dir) / METRICS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's job folders, in job order: those whose .hydra/ Hydra finished writing (a process killed while
    it wrote them leaves a folder that is no job)."""
    folders = (p for p in Path(sweep_dir).iterdir() if (p / ".hydra" / "overrides.yaml").is_file())
    return sorted(folders, key=_job_number)


def summary_markdown(sweep_dir: Path) -> str:
    """One row per job folder: the overrides that differ between jobs, its status and headline numbers."""
    folders = job_dirs(sweep_dir)
    # `resume=...` says how a job was continued, not what it trained
    overrides = {job: [o for o in OmegaConf.load(job / ".hydra" / "overrides.yaml") if not o.startswith("resume=")]
                 for job in folders}  # fmt: skip
    shared = set.intersection(*(set(o) for o in overrides.values())) if overrides else set()
    rows = ["| job | overrides | status | best val acc | test acc | wall s |", "|---|---|---|---|---|---|"]
    for job_dir in folders:
        metrics = read_metrics(job_dir) or {"status": "incomplete"}
        varying = " ".join(o for o in overrides[job_dir] if o not in shared)
        cells = [_percent(metrics.get("best_val_acc")), _percent(metrics.get("test_acc"))]
        wall = metrics.get("wall_time_s")
        note = f" ({metrics['error']})" if metrics.get("error") else ""
        rows.append(
            f"| {job_dir.name} | {varying} | {metrics['status']}{note} | {' | '.join(cells)} | "
            f"{'' if wall is None else f'{wall:.0f}'} |"
        )
    common = f"Overrides shared by every job: `{' '.join(sorted(shared))}`\n\n" if shared else ""
    return common + "\n".join(rows) + "\n"


def _job_number(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (1 << 30, path.name)


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


class JobOutcome(Callback):
    """Hydra callback: a line when a sweep's job starts and when any job ends; a job that raised still gets a
    metrics.json saying so, and every job refreshes the sweep's summary.md, so an overnight sweep always shows
    what finished, failed or diverged."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode.name == "MULTIRUN":
            log.info(f"{job_title(config.hydra)}: {' '.join(job_settings(config.hydra))}")

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        job_dir = Path(config.hydra.runtime.output_dir)
        if job_return.status == JobStatus.FAILED and read_metrics(job_dir) is None:
            error = job_return._return_value  # the public getter re-raises the job's exception
            message = " ".join(f"{type(error).__name__}: {error}".split())  # one line, also in summary.md
            write_json_atomic(job_dir / METRICS_FILE, {"status": "failed", "error": message})
        if os.environ.get("LOCAL_RANK", "0") != "0":  # the other processes of a multi-GPU run: rank 0 says it
            return
        metrics = read_metrics(job_dir)
        if config.hydra.mode.name == "MULTIRUN":
            level = logging.INFO if (metrics or {}).get("status") == "completed" else logging.WARNING
            log.log(level, f"{job_title(config.hydra)} {outcome(metrics)}")
            sweep_dir = Path(config.hydra.sweep.dir)
            write_atomic(sweep_dir / SUMMARY_FILE, summary_markdown(sweep_dir))
        elif job_return.status == JobStatus.COMPLETED:  # a failed run's error is Hydra's to print
            log.info(f"{outcome(metrics)}; outputs in {job_dir}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        print_sweep_summary(Path(config.hydra.sweep.dir))


def print_sweep_summary(sweep_dir: Path) -> None:
    """summary.md on the terminal, and the command that finishes the sweep if a job did not complete."""
    from fashion_lenet.resume import resume_command  # it reads this module

    if not sweep_dir.is_dir():  # the sweep stopped before its first job
        return
    summary = sweep_dir / SUMMARY_FILE
    if summary.is_file():
        print(f"\nSweep summary ({summary}):\n{summary.read_text()}")
    statuses = {(read_metrics(job) or {}).get("status") for job in job_dirs(sweep_dir)}
    if statuses - {"completed"}:
        mode = "retry" if statuses & {"failed", "diverged"} else "true"
        print(f"Not every job completed; to finish the sweep: {resume_command(sweep_dir, mode)}")
