"""The sweepers of `train.py -m`: the grid (Hydra's basic sweeper, also checking every job's values before any starts,
and showing the sweep's table when a job failed) and Optuna's, both resumable in their sweep folder (`resume=true`).

Hydra's basic sweeper composes each job of the grid before launching the first, to catch unknown keys and
groups early; this subclass also runs fashion_lenet.sweep.config's value checks on those composed configs, so that
`-m optim.lr=1e-3,-1` stops with one line before job 0 trains. The checks add 12 ms per job to the 125 ms of
composing it (2-core CPU). It lives in `hydra_plugins` because Hydra instantiates sweepers from that package
only. Selected by conf/hparams_search/grid.yaml.
"""

import logging
from collections.abc import Sequence
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig, OmegaConf, open_dict

from fashion_lenet.sweep import resume
from fashion_lenet.sweep.config import validate
from fashion_lenet.sweep.console import quiet_launcher
from fashion_lenet.sweep.errors import ConfigError, UserError
from fashion_lenet.sweep.naming import MULTIRUN_FILE, STUDY_FILE
from fashion_lenet.sweep.summary import print_sweep_summary

log = logging.getLogger(__name__)


class CheckedBasicSweeper(BasicSweeper):
    """With `resume` set, each batch holds only the jobs still to run, each in its old folder
    (fashion_lenet.sweep.resume)."""

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        quiet_launcher()
        if config.get("resume"):  # before Hydra creates the sweep folder: a wrong path is refused as it is
            resume.job_folders(Path(config.hydra.sweep.dir))
        self.grid_position = 0

    def sweep(self, arguments: list[str]):
        sweep_dir = Path(self.config.hydra.sweep.dir)
        saved = sweep_dir / MULTIRUN_FILE
        original = saved.read_bytes() if self.config.get("resume") and saved.is_file() else None
        try:
            return super().sweep(arguments)
        except ConfigError:  # refused before any job ran: leave the folder as it was (Hydra rewrote multirun.yaml)
            if original is not None:
                saved.write_bytes(original)
            raise
        except Exception as error:  # a job failed: Hydra raises its error once the batch ran, skipping on_multirun_end
            print_sweep_summary(sweep_dir)
            if type(error).__name__ == "UncompletedJobError":  # submitit's: a Slurm job cancelled, killed, timed out
                job = " ".join(str(error).splitlines()[:2])  # its id, result file and Slurm state; then its log
                raise UserError(f"a cluster job ended without a result: {job}") from None
            raise

    def get_job_batch(self) -> list[list[str]]:
        batch = super().get_job_batch()
        self.grid_position += len(batch)
        if not self.config.get("resume"):
            return batch
        return resume.plan(Path(self.config.hydra.sweep.dir), batch, self._task_config, self.config.resume,
                           first_position=self.grid_position - len(batch))  # fmt: skip

    def _task_config(self, overrides: list[str]) -> DictConfig:
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        for overrides in batch:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            try:
                validate(cfg, multirun=True)
            except ConfigError as error:
                raise ConfigError(f"{error} (job: {' '.join(overrides)}; no job was started)") from None


class ResumableOptunaSweeper(OptunaSweeper):
    """Optuna's sweeper; its study lives in the sweep folder (hydra.sweeper.storage), so `resume=true` continues it
    toward n_trials in total: the trial that was running when the search stopped counts as failed, and new trials
    get new job folders. Selected by conf/hydra/sweeper/resumable_optuna.yaml."""

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        sweep_dir, resuming = Path(config.hydra.sweep.dir), config.get("resume")
        if resuming:
            resume.job_folders(sweep_dir)  # refuses a folder without a sweep
        elif (sweep_dir / STUDY_FILE).exists():
            raise ConfigError(f"hydra.sweep.dir={sweep_dir} already holds an Optuna search: add resume=true to "
                              "continue it, or give another hydra.sweep.dir")  # fmt: skip
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        quiet_launcher()
        sweep_dir.mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
        # As Hydra's basic sweeper does (Optuna's does not): the search's command line, which names its jobs
        # (fashion_lenet.sweep.naming) and gives the command that resumes it.
        OmegaConf.save(config, sweep_dir / MULTIRUN_FILE)
        if resuming:
            self._continue(sweep_dir, config.hydra.sweeper.sampler)

    def _continue(self, sweep_dir: Path, sampler: DictConfig) -> None:
        import optuna

        search = self.sweeper
        study = optuna.load_study(study_name=search.study_name, storage=search.storage)
        if sampler.get("seed") is not None:  # the same seed again would repeat the first trials' random draws
            search.sampler = instantiate(sampler, seed=sampler.seed + len(study.trials))
        for trial in study.trials:
            if trial.state == optuna.trial.TrialState.RUNNING:  # stopped mid-trial: its folder says interrupted
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        search.n_trials = max(0, search.n_trials - len(study.trials))
        # New trials in new folders, after every numbered one (a trial killed while Hydra set up its folder too).
        numbered = [int(folder.name) for folder in sweep_dir.iterdir() if folder.name.isdigit()]
        search.job_idx = 1 + max(numbered, default=-1)
        log.info(f"Resuming the Optuna search: {len(study.trials)} trials done, {search.n_trials} to go")
