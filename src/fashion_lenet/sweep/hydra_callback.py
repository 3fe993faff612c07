"""The Hydra callback of every run (conf/config.yaml): a line when a sweep's job starts and ends, the job's
metrics.json when it failed before writing one, and the sweep's summary.md after each job."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fashion_lenet.sweep.jobfiles import FINISHED, METRICS_FILE, outcome, read_metrics, write_atomic, write_json_atomic
from fashion_lenet.sweep.naming import job_settings, job_title
from fashion_lenet.sweep.summary import SUMMARY_FILE, print_sweep_summary, progress, summary_markdown

log = logging.getLogger("train")


class JobOutcome(Callback):
    """Hydra callback: a line when a sweep's job starts and when any job ends; a job that raised still gets a
    metrics.json saying so, and every job refreshes the sweep's summary.md, so an overnight sweep always shows
    what finished, failed or diverged."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode.name == "MULTIRUN":
            log.info(f"{job_title(config.hydra)}: {' '.join(job_settings(config.hydra))}"
                     f"{_sweep_progress(config)}")  # fmt: skip

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        job_dir = Path(config.hydra.runtime.output_dir)
        if job_return.status == JobStatus.FAILED and read_metrics(job_dir) is None:
            error = job_error(job_return)
            message = " ".join(f"{type(error).__name__}: {error}".split())  # one line, also in summary.md
            write_json_atomic(job_dir / METRICS_FILE, {"status": "failed", "error": message})
        if os.environ.get("LOCAL_RANK", "0") != "0":  # the other processes of a multi-GPU run: rank 0 says it
            return
        metrics = read_metrics(job_dir)
        if config.hydra.mode.name == "MULTIRUN":
            level = logging.INFO if (metrics or {}).get("status") in FINISHED else logging.WARNING
            log.log(level, f"{job_title(config.hydra)} {outcome(metrics)}{_sweep_progress(config)}")
            sweep_dir = Path(config.hydra.sweep.dir)
            write_atomic(sweep_dir / SUMMARY_FILE, summary_markdown(sweep_dir))
        elif job_return.status == JobStatus.COMPLETED:  # a failed run's error is Hydra's to print
            log.info(f"{outcome(metrics)}; outputs in {job_dir}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        print_sweep_summary(Path(config.hydra.sweep.dir))


def _sweep_progress(config: DictConfig) -> str:
    """` (sweep: 12 min in, about 20 min left)`, or nothing when the sweep's folder says too little."""
    said = progress(Path(config.hydra.sweep.dir))
    return f" (sweep: {said})" if said else ""


def job_error(job_return: JobReturn) -> BaseException:
    """The exception a failed job raised: JobReturn's public getter raises it again (and writes Hydra's "Error
    executing job" line to stderr, which Hydra writes itself when the sweep or run ends: kept from here)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            job_return.return_value  # noqa: B018
    except BaseException as error:  # noqa: BLE001 - any exception a job raised is its error
        return error
    raise ValueError("job_error needs a failed job's JobReturn")
