"""The sweepers of `train.py -m`: the grid (Hydra's basic sweeper, also checking every job's values before any starts,
and showing the sweep's table when a job failed) and Optuna's, both resumable in their sweep folder (`resume=true`).

Hydra's basic sweeper composes each job of the grid before launching the first, to catch unknown keys and
groups early; this subclass also runs fashion_lenet.sweep.config's value checks on those composed configs, so that
`-m optim.lr=1e-3,-1` stops with one line before job 0 trains. The checks add 12 ms per job to the 125 ms of
composing it (2-core CPU). It lives in `hydra_plugins` because Hydra instantiates sweepers from that package
only. Selected by conf/hparams_search/grid.yaml.
"""

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig, OmegaConf, open_dict

from fashion_lenet.sweep import resume
from fashion_lenet.sweep.config import check, pruner_rules, validate
from fashion_lenet.sweep.console import quiet_launcher
from fashion_lenet.sweep.errors import ConfigError, UserError
from fashion_lenet.sweep.naming import MULTIRUN_FILE, STUDY_FILE
from fashion_lenet.sweep.summary import print_sweep_summary
from fashion_lenet.sweep.trials import link_jobs

log = logging.getLogger(__name__)


class CheckedBasicSweeper(BasicSweeper):
    """With `resume` set, each batch holds only the jobs still to run, each in its old folder
    (fashion_lenet.sweep.resume)."""

    def __init__(self, *, pruner: functools.partial | None = None, **basic_sweeper_arguments):
        super().__init__(**basic_sweeper_arguments)
        self.pruner = pruner  # only Optuna's searches prune: refused in setup

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        if self.pruner is not None:
            raise ConfigError("hydra.sweeper.pruner needs the Optuna sweeper: add hparams_search=optuna (or an "
                              "experiment that searches with Optuna) to the command")  # fmt: skip
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
    get new job folders. Selected by conf/hydra/sweeper/resumable_optuna.yaml.

    Each trial's job reports to its trial and may be pruned (fashion_lenet.sweep.trials): `pruner` is the partial
    of an optuna.pruners class (conf/hydra/sweeper/pruner), checked here, built by each job.
    """

    def __init__(self, *, pruner: functools.partial, **optuna_sweeper_arguments):
        super().__init__(**optuna_sweeper_arguments)
        self.pruner = pruner

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        sweep_dir, resuming = Path(config.hydra.sweep.dir), config.get("resume")
        check(config, pruner_rules())
        try:
            self.pruner()
        except (TypeError, ValueError) as error:
            raise ConfigError(f"hydra.sweeper.pruner={config.hydra.runtime.choices.get('hydra/sweeper/pruner')} "
                              f"is not allowed with these arguments: {error}") from None  # fmt: skip
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
        search = self.sweeper
        storage = config.hydra.sweeper.storage
        if storage is not None:  # (an in-memory study, which no job can reach, trains without pruning)
            search.storage = pruned_trials_stay_pruned(storage)
            pruner = OmegaConf.to_container(config.hydra.sweeper.pruner, resolve=True)
            search.launcher = TrialLinkingLauncher(search.launcher, sweep_dir, search.study_name, storage, pruner)

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


def pruned_trials_stay_pruned(url: str):
    """The study's storage in the sweeper process: Optuna's own (RDBStorage, uncached: jobs in other processes write
    to it), except that a trial whose job already told Optuna it was pruned stays pruned when Hydra's Optuna sweeper
    tells it COMPLETE or FAIL after its batch (Optuna refuses to change a finished trial, and the plugin would fail
    the whole search). Every other call is the RDBStorage's, written out (BaseStorage's abstract methods and those
    it leaves unimplemented)."""
    import optuna

    pruned = optuna.trial.TrialState.PRUNED

    class KeepPruned(optuna.storages.BaseStorage):
        def __init__(self, backend: optuna.storages.RDBStorage):
            self.backend = backend

        def __repr__(self) -> str:  # Hydra's "Storage:" line
            return self.backend.url

        def set_trial_state(self, trial_id, state):
            return False if self.backend.get_trial(trial_id).state == pruned else self.backend.set_trial_state(
                trial_id, state)  # fmt: skip

        def set_trial_values(self, trial_id, values):
            if self.backend.get_trial(trial_id).state != pruned:
                self.backend.set_trial_values(trial_id, values)

        def create_new_study(self, *args): return self.backend.create_new_study(*args)
        def delete_study(self, *args): return self.backend.delete_study(*args)
        def set_study_user_attr(self, *args): return self.backend.set_study_user_attr(*args)
        def set_study_system_attr(self, *args): return self.backend.set_study_system_attr(*args)
        def set_study_directions(self, *args): return self.backend.set_study_directions(*args)
        def get_study_id_from_name(self, *args): return self.backend.get_study_id_from_name(*args)
        def get_study_id_from_trial_id(self, *args): return self.backend.get_study_id_from_trial_id(*args)
        def get_study_name_from_id(self, *args): return self.backend.get_study_name_from_id(*args)
        def get_study_directions(self, *args): return self.backend.get_study_directions(*args)
        def get_study_user_attrs(self, *args): return self.backend.get_study_user_attrs(*args)
        def get_study_system_attrs(self, *args): return self.backend.get_study_system_attrs(*args)
        def get_all_study_summaries(self, *args): return self.backend.get_all_study_summaries(*args)
        def create_new_trial(self, *args, **kwargs): return self.backend.create_new_trial(*args, **kwargs)
        def set_trial_param(self, *args): return self.backend.set_trial_param(*args)
        def get_trial_number_from_id(self, *args): return self.backend.get_trial_number_from_id(*args)
        def get_trial_param(self, *args): return self.backend.get_trial_param(*args)
        def set_trial_intermediate_value(self, *args): return self.backend.set_trial_intermediate_value(*args)
        def set_trial_user_attr(self, *args): return self.backend.set_trial_user_attr(*args)
        def set_trial_system_attr(self, *args): return self.backend.set_trial_system_attr(*args)
        def get_trial(self, *args): return self.backend.get_trial(*args)
        def get_all_trials(self, *args, **kwargs): return self.backend.get_all_trials(*args, **kwargs)
        def get_trial_id_from_study_id_trial_number(self, *args):
            return self.backend.get_trial_id_from_study_id_trial_number(*args)

        def read_trials_from_remote_storage(self, *args): return self.backend.read_trials_from_remote_storage(*args)

    return KeepPruned(optuna.storages.RDBStorage(url))


class TrialLinkingLauncher(Launcher):
    """The sweeper's launcher, which first tells each job folder of the batch which trial it trains (trials.py).
    The batch's trials are the study's running ones: Hydra's Optuna sweeper asks them, in order, just before it
    launches their jobs in the same order."""

    def __init__(self, launcher: Launcher, sweep_dir: Path, study_name: str | None, storage: str, pruner: dict):
        self.launcher, self.sweep_dir, self.study_name, self.storage = launcher, sweep_dir, study_name, storage
        self.pruner = pruner

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.launcher.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import optuna

        study = optuna.load_study(study_name=self.study_name, storage=self.storage)  # None: the storage's one study
        running = sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)),
                         key=lambda trial: trial.number)[-len(job_overrides):]  # fmt: skip
        for trial, overrides in zip(running, job_overrides, strict=True):
            if any(f"{name}={value}" not in overrides for name, value in trial.params.items()):
                raise RuntimeError(f"trial {trial.number} is not the job {' '.join(overrides)}")
        link_jobs(self.sweep_dir, initial_job_idx, [trial.number for trial in running], study.study_name,
                  self.storage, self.pruner)  # fmt: skip
        return self.launcher.launch(job_overrides, initial_job_idx)
