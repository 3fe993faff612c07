"""What a job leaves behind: `metrics.json` (written atomically, last) and the sweep's `summary.md`."""

from __future__ import annotations

import json
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

METRICS_FILE = "metrics.json"
SUMMARY_FILE = "summary.md"


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


def read_metrics(job_dir: Path) -> dict | None:
    try:
        return json.loads((Path(job_dir) / METRICS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def summary_markdown(sweep_dir: Path) -> str:
    """One row per job folder: the overrides that differ between jobs, its status and headline numbers."""
    job_dirs = sorted((p for p in Path(sweep_dir).iterdir() if (p / ".hydra").is_dir()), key=_job_number)
    overrides = {job: OmegaConf.load(job / ".hydra" / "overrides.yaml") for job in job_dirs}
    shared = set.intersection(*(set(o) for o in overrides.values())) if overrides else set()
    rows = ["| job | overrides | status | best val acc | test acc | wall s |", "|---|---|---|---|---|---|"]
    for job_dir in job_dirs:
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
    """Hydra callback: a job that raised still gets a metrics.json saying so, and every job refreshes
    the sweep's summary.md, so an overnight sweep always shows what finished, failed or diverged."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        job_dir = Path(config.hydra.runtime.output_dir)
        if job_return.status == JobStatus.FAILED and read_metrics(job_dir) is None:
            error = job_return._return_value  # the public getter re-raises the job's exception
            message = " ".join(f"{type(error).__name__}: {error}".split())  # one line, also in summary.md
            write_json_atomic(job_dir / METRICS_FILE, {"status": "failed", "error": message})
        if config.hydra.mode.name == "MULTIRUN":
            sweep_dir = Path(config.hydra.sweep.dir)
            write_atomic(sweep_dir / SUMMARY_FILE, summary_markdown(sweep_dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summary = Path(config.hydra.sweep.dir) / SUMMARY_FILE
        if summary.is_file():
            print(f"\nSweep summary ({summary}):\n{summary.read_text()}")
