"""An Optuna search's trials as its jobs see them: which trial a job folder trains, and how the job reaches it.

Hydra's Optuna sweeper asks a batch of trials, launches their jobs and tells each its value when the batch is done;
nothing reaches a trial while its job trains. So the sweeper (hydra_plugins/fashion_lenet_sweeper.py) writes
`optuna_trial.json` into each job folder before the launch: the study (name, storage URL), the trial's number and
the pruner. The job (training/pruning.py) reports its validation accuracy there every epoch and, when the pruner
says so, stops and tells Optuna the trial was pruned. Light to import: the sweeper writes these files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from fashion_lenet.sweep.jobfiles import read_json, write_json_atomic

TRIAL_FILE = "optuna_trial.json"


@dataclass(frozen=True)
class TrialLink:
    """What a job needs to report to its trial."""

    study_name: str
    storage: str  # the study's URL (sqlite:///<sweep>/optuna.db by default)
    trial: int  # the trial's number in the study
    pruner: dict  # Hydra node of an optuna.pruners class (`_target_` and its arguments)


def link_jobs(sweep_dir: Path, first_job: int, trials: Sequence[int], study_name: str, storage: str,
              pruner: dict) -> None:  # fmt: skip
    """Before a batch is launched: job folder first_job + i trains trial trials[i]."""
    for offset, trial in enumerate(trials):
        folder = Path(sweep_dir) / str(first_job + offset)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / TRIAL_FILE, asdict(TrialLink(study_name, storage, trial, pruner)))


def read_link(job_dir: Path) -> TrialLink | None:
    """The trial the job in job_dir trains; None for a job of no Optuna search."""
    saved = read_json(Path(job_dir) / TRIAL_FILE)
    return None if saved is None else TrialLink(**saved)


def epochs_saved(metrics: list[dict]) -> tuple[int, int, int]:
    """(pruned jobs, epochs they did not train, epochs all these jobs were set to train)."""
    planned = sum(m.get("max_epochs") or 0 for m in metrics)
    pruned = [m for m in metrics if m.get("status") == "pruned"]
    return len(pruned), sum(m["max_epochs"] - len(m["history"]) for m in pruned), planned
