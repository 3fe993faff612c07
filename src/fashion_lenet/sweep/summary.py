"""The sweep's table: `summary.md` in the sweep folder, refreshed after every job, and shown at the end."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from fashion_lenet.sweep.jobfiles import job_dirs, read_metrics
from fashion_lenet.sweep.resume import resume_command

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
    statuses = {(read_metrics(job) or {}).get("status") for job in job_dirs(sweep_dir)}
    if statuses - {"completed"}:
        mode = "retry" if statuses & {"failed", "diverged"} else "true"
        print(f"Not every job completed; to finish the sweep: {resume_command(sweep_dir, mode)}")
