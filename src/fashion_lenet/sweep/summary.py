"""The sweep's table: `summary.md` in the sweep folder, refreshed after every job, and shown at the end; how far a
sweep has come and how long the rest will take."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import OmegaConf

from fashion_lenet.sweep.jobfiles import FINISHED, METRICS_FILE, job_dirs, read_metrics
from fashion_lenet.sweep.naming import MULTIRUN_FILE, sweep_shape
from fashion_lenet.sweep.resume import resume_command
from fashion_lenet.sweep.trials import epochs_saved

SUMMARY_FILE = "summary.md"


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


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def print_sweep_summary(sweep_dir: Path) -> None:
    """summary.md on the terminal, and the command that finishes the sweep if a job did not complete."""
    if not sweep_dir.is_dir():  # the sweep stopped before its first job
        return
    summary = sweep_dir / SUMMARY_FILE
    if summary.is_file():
        print(f"\nSweep summary ({summary}):\n{summary.read_text()}")
    metrics = [read_metrics(job) or {} for job in job_dirs(sweep_dir)]
    pruned, saved, planned = epochs_saved(metrics)
    if pruned:
        print(f"{pruned} trials pruned: {saved} of the {planned} epochs planned were not trained "
              f"({100 * saved / planned:.0f}%)")  # fmt: skip
    statuses = {m.get("status") for m in metrics}
    if statuses - set(FINISHED):
        mode = "retry" if statuses & {"failed", "diverged"} else "true"
        print(f"Not every job completed; to finish the sweep: {resume_command(sweep_dir, mode)}")


def progress(sweep_dir: Path, now: float | None = None) -> str:
    """`12 min in, about 20 min left`: the time since the sweep (or its resume) started, and the time its jobs still
    to finish take at the pace of those that finished since then (no estimate before the first has)."""
    sweep_dir, now = Path(sweep_dir), time.time() if now is None else now
    if not (sweep_dir / MULTIRUN_FILE).is_file():
        return ""
    started = (sweep_dir / MULTIRUN_FILE).stat().st_mtime
    _, jobs = sweep_shape(sweep_dir)
    ended = [job / METRICS_FILE for job in job_dirs(sweep_dir)
             if (read_metrics(job) or {}).get("status") in (*FINISHED, "failed", "diverged")]  # fmt: skip
    since_start = sum(path.stat().st_mtime >= started for path in ended)
    elapsed = f"{_duration(now - started)} in"
    if not jobs or not since_start or len(ended) >= jobs:
        return elapsed
    return f"{elapsed}, about {_duration((now - started) / since_start * (jobs - len(ended)))} left"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"
