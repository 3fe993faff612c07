"""A trial's side of an Optuna search (fashion_lenet.sweep.trials): every member that trains an Optuna trial reports
its validation accuracy each epoch; when the search's pruner says so, the member stops there and Optuna is told the
trial was pruned. It keeps its best checkpoint so far, which is tested like a completed job's; its metrics.json
says `pruned`. A group of one (a solo trial) then ends; in a fused group the other members go on
without it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl

from fashion_lenet.sweep.trials import TrialLink, read_link
from fashion_lenet.training.callbacks import EpochHistory

log = logging.getLogger("train")


def open_trial(link: TrialLink):
    """The optuna Trial a job reports to, in a study loaded with the search's pruner."""
    import optuna
    from hydra.utils import instantiate

    storage = optuna.storages.RDBStorage(link.storage)
    study = optuna.load_study(study_name=link.study_name, storage=storage, pruner=instantiate(link.pruner)())
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(link.study_name),
                                                               link.trial)  # fmt: skip
    return optuna.trial.Trial(study, trial_id)


class TrialPruning(pl.Callback):
    """At each epoch's end, after EpochHistory and the members' best checkpoints (listed after them): each live
    member's validation accuracy reported to its trial (step = epoch), and the members the pruner stops. The last
    epoch is never pruned: nothing would be saved."""

    def __init__(self, links: list[TrialLink | None], history: EpochHistory):
        self.history = history
        self.trials = [None if link is None else open_trial(link) for link in links]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import optuna

        epoch = trainer.current_epoch
        for n, trial in enumerate(self.trials):
            rows = self.history.histories[n]
            if trial is None or self.history.stopped(n) or not rows or rows[-1]["epoch"] != epoch:
                continue
            if "val_acc" not in rows[-1]:  # no validation this epoch (trainer.check_val_every_n_epoch)
                continue
            trial.report(rows[-1]["val_acc"], step=epoch)
            if epoch + 1 < trainer.max_epochs and trial.should_prune():
                self.history.stop(n, pl_module, pruned=True)
                trial.study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
                log.info(f"trial {trial.number} pruned after epoch {epoch} (val acc {100 * rows[-1]['val_acc']:.2f}%)")
        if self.history.all_stopped():
            trainer.should_stop = True


def trial_pruning(job_dirs: list[Path], history: EpochHistory) -> TrialPruning | None:
    """The callback for jobs of which at least one trains an Optuna trial; None otherwise."""
    links = [read_link(job) for job in job_dirs]
    return TrialPruning(links, history) if any(links) else None
