"""`hydra/launcher=fused`: the jobs of a sweep that share one network shape train together as one stacked model.

Every job is composed and checked first. Jobs whose configs are equal but for numbers that can differ per member
(PER_MEMBER) form a group, up to `max_members`; each group trains in this process as one LeNetModule
(fashion_lenet.training.group.train_group, the code that trains a solo run), groups one after another. A group of
one is a solo job: same files, same numbers; a job that resumes from its own last.ckpt (`ckpt_path` set, or
resume=true) is one. A group that was interrupted continues as one group from its own checkpoint. Each member
gets the job folder, `.hydra/`, log file, callbacks and JobReturn of a solo job, so sweepers (grid, Optuna),
summary.md and the report see ordinary jobs. Hydra is used through its public API only (run_job, configure_log,
setup_globals, HydraConfig, JobReturn, the context's callbacks and config loader).

Light to import (Hydra imports every hydra_plugins module at start-up): torch loads only when a group trains.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from fashion_lenet.sweep.config import register_resolvers, validate
from fashion_lenet.sweep.errors import ConfigError, UserError
from fashion_lenet.sweep.resume import (
    clear_outputs,
    fused_group_checkpoint,
    last_checkpoint,
    resume_command,
    resume_mode,
)
from fashion_lenet.sweep.summary import progress
from fashion_lenet.training import lifecycle

log = logging.getLogger(__name__)

# Config keys that may differ between the members of one group: each member's own number in the fused step
# (a teacher is shared: members of one group learn from one teacher)
# (technique is only the report's label, logger.name the TensorBoard run's).
PER_MEMBER = ("seed", "data.shuffle_seed", "data.augment", "data.max_shift", "optim.lr", "optim.weight_decay",
              "optim.momentum", "model.dropout_p", "label_smoothing", "distill.temperature", "distill.alpha",
              "technique", "logger.name")  # fmt: skip


class Job:
    """One job of the sweep (a plain class: Hydra's plugin scan runs this module outside sys.modules, where
    dataclasses fail)."""

    def __init__(self, num: int, config: DictConfig, task_cfg: DictConfig, output_dir: Path):
        self.num, self.output_dir = num, output_dir
        self.config = config  # the job's full config, hydra node included
        self.task_cfg = task_cfg  # what train.py's main receives (unresolved, as Hydra saves it)
        self.resolved = copy.deepcopy(task_cfg)  # composed while HydraConfig is this job's: ${hydra:...} is its own
        OmegaConf.resolve(self.resolved)
        self.error: ConfigError | None = None  # set when its values are refused

    @property
    def overrides(self) -> list[str]:
        return list(self.config.hydra.overrides.task)

    @property
    def overrides_with_hydra(self) -> list[str]:
        """What composes this job again in another process (its hydra.* overrides too, e.g. a resume's subdir)."""
        return [*self.config.hydra.overrides.hydra, *self.config.hydra.overrides.task]

    @property
    def group_checkpoint(self) -> str | None:
        """With resume set, the checkpoint of the fused group this job was interrupted in."""
        return fused_group_checkpoint(self.output_dir) if resume_mode(self.task_cfg) else None

    def group_key(self) -> str | None:
        """Equal for jobs that can train as one stacked model; None for a job that must run alone."""
        resuming = last_checkpoint(self.output_dir, resume_mode(self.task_cfg))
        if self.error is not None or self.task_cfg.ckpt_path or resuming:
            return None  # a solo job that resumes continues alone, from its own last.ckpt
        if self.group_checkpoint:
            return f"resume {self.group_checkpoint}"  # the members of an interrupted group continue together
        shared = OmegaConf.to_container(self.resolved)
        for key in PER_MEMBER:
            *parents, leaf = key.split(".")
            node = shared
            for parent in parents:
                node = node.get(parent, {})
            node.pop(leaf, None)
        return OmegaConf.to_yaml(shared).replace(str(self.output_dir), "<job folder>")


def group_jobs(jobs: list[Job], max_members: int) -> list[list[Job]]:
    """Jobs with equal keys, in job order, in chunks of at most max_members; every other job alone."""
    by_key: dict[str, list[Job]] = {}
    groups: list[list[Job]] = []
    for job in jobs:
        key = job.group_key()
        if key is None:
            groups.append([job])
        elif key not in by_key:
            by_key[key] = [job]
            groups.append(by_key[key])
        else:
            by_key[key].append(job)
    return [group[i : i + max_members] for group in groups for i in range(0, len(group), max_members)]


def _positive_integer(key: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"hydra.launcher.{key}={value!r} is not allowed: use an integer >= 1")
    return value


def _check_keys(launcher: FusedLauncher) -> None:
    """In setup, not __init__: Hydra wraps an error raised while it instantiates a launcher in three more lines."""
    _positive_integer("max_members", launcher.max_members)
    _positive_integer("n_jobs", launcher.n_jobs)
    if not isinstance(launcher.cuda_graph, bool):
        raise ConfigError(f"hydra.launcher.cuda_graph={launcher.cuda_graph!r} is not allowed: use true or false")


class FusedLauncher(Launcher):
    def __init__(self, max_members: int = 36, n_jobs: int = 1, cuda_graph: bool = False):
        self.max_members = max_members  # checked in setup (_check_keys)
        self.n_jobs = n_jobs  # > 1: groups in that many worker processes at once
        self.cuda_graph = cuda_graph  # the fused step as a CUDA graph (with the job's cuda_graph): not run on a GPU yet
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        _check_keys(self)  # before any job: Hydra's sweepers set their launcher up first
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = [self._compose(list(o), initial_job_idx + i) for i, o in enumerate(job_overrides)]
        groups = group_jobs(jobs, self.max_members)
        log.info(f"Launching {len(jobs)} jobs as {len(groups)} fused groups (at most {self.max_members} members)")
        returns: dict[int, JobReturn] = {}
        if self.n_jobs == 1 or len(groups) == 1:
            for number, group in enumerate(groups, 1):
                returns.update(self._launch_group(group, number, len(groups)))
        else:  # as Hydra's joblib launcher runs jobs: loky's worker processes, each pinned to its device on its
            from joblib import Parallel, delayed  # first job (fashion_lenet.sweep.placement), before torch loads there

            state = Singleton.get_state()
            work = (delayed(self._launch_in_worker)(group, number, len(groups), state)
                    for number, group in enumerate(groups, 1))  # fmt: skip
            for group_returns in Parallel(n_jobs=self.n_jobs, backend="loky")(work):
                returns.update(group_returns)
        return [returns[job.num] for job in jobs]

    def _launch_group(self, group: list[Job], number: int, groups: int) -> dict[int, JobReturn]:
        nums = " ".join(f"#{job.num}" for job in group)
        said = progress(Path(self.config.hydra.sweep.dir))
        log.info(f"group {number}/{groups}: {len(group)} job{'s' * (len(group) > 1)} ({nums})"
                 f"{f' (sweep: {said})' if said else ''}")  # fmt: skip
        returns = self._run_group(group, number)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns

    def _launch_in_worker(self, group: list[Job], number: int, groups: int, state) -> dict[int, JobReturn]:
        Singleton.set_state(state)
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return self._launch_group(group, number, groups)

    def _compose(self, overrides: list[str], num: int) -> Job:
        """The job's config as run_job would see it, checked, before anything trains."""
        register_resolvers()
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config):
            config.hydra.job.id = config.hydra.job.num = num
        HydraConfig.instance().set_config(config)
        output_dir = (Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)).absolute()
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = str(output_dir)
        HydraConfig.instance().set_config(config)
        task_cfg = copy.deepcopy(config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        job = Job(num, config, task_cfg, output_dir)
        try:
            validate(task_cfg, multirun=True)
        except ConfigError as error:  # this job fails; the others run (an Optuna trial that drew a bad value)
            job.error = error
        return job

    @staticmethod
    def _start(job: Job) -> JobReturn:
        """What run_job does before the task, but for the job-start callbacks: the job folder and .hydra/."""
        HydraConfig.instance().set_config(job.config)
        job.output_dir.mkdir(parents=True, exist_ok=True)
        if job.config.hydra.output_subdir is not None:
            hydra_output = job.output_dir / str(job.config.hydra.output_subdir)
            hydra_output.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(job.task_cfg, hydra_output / "config.yaml")
            OmegaConf.save(job.config, hydra_output / "hydra.yaml")
            OmegaConf.save(job.config.hydra.overrides.task, hydra_output / "overrides.yaml")  # last: a job folder
        return JobReturn(overrides=job.overrides, cfg=job.task_cfg, hydra_cfg=copy.deepcopy(job.config),
                         working_dir=os.getcwd(), task_name=job.config.hydra.job.name)  # fmt: skip

    def _callback(self, event: str, job: Job, **kwargs) -> None:
        """Hydra's job callbacks (on_job_start, on_job_end), with the job's HydraConfig current."""
        HydraConfig.instance().set_config(job.config)
        getattr(self.hydra_context.callbacks, event)(config=job.config, **kwargs)

    def _run_group(self, group: list[Job], number: int) -> dict[int, JobReturn]:
        returns = {job.num: self._start(job) for job in group}
        trained = [job for job in group if job.error is None]
        if trained:
            self._log_to_every_job_file(trained)
        for job in group:  # the job-start callbacks, once the group's logging is set up
            self._callback("on_job_start", job, task_function=self.task_function)
            if job.error is not None:
                returns[job.num].return_value, returns[job.num].status = job.error, JobStatus.FAILED
        for job, outcome in zip(trained, self._train(trained, number) if trained else [], strict=True):
            ret = returns[job.num]
            try:
                if isinstance(outcome, Exception):
                    raise outcome
                ret.return_value, ret.status = lifecycle.result(outcome), JobStatus.COMPLETED
            except Exception as error:  # the group failed, or this member diverged
                ret.return_value, ret.status = error, JobStatus.FAILED
        for job in group:  # what run_job does after the task: metrics.json of a failure, the job's line, summary.md
            self._callback("on_job_end", job, job_return=returns[job.num])
        return returns

    def _train(self, jobs: list[Job], number: int) -> list[dict | Exception]:
        """Each job's metrics.json content, or the exception that ended the group."""
        from fashion_lenet.sweep.jobfiles import FUSED_GROUP_FILE, job_hparams, write_json_atomic
        from fashion_lenet.training.checkpoints import solo_checkpoint
        from fashion_lenet.training.group import Member, group_folder, train_group  # torch and Lightning: only now

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        members = [Member(job.resolved, job.output_dir, job_hparams(job.resolved, job.config.hydra.runtime.choices))
                   for job in jobs]  # fmt: skip
        try:
            ckpt_path = self._group_checkpoint(jobs)  # an interrupted fused group continues as one
            if ckpt_path:
                folder = Path(ckpt_path).parent
            elif len(jobs) == 1:  # a solo job, as train.py runs it: its last.ckpt in its own checkpoints/
                task_cfg = jobs[0].task_cfg
                folder, ckpt_path = None, solo_checkpoint(jobs[0].output_dir, task_cfg.ckpt_path, resume_mode(task_cfg))
            else:  # a fresh start: no group checkpoint of an earlier try to continue from by mistake
                folder = group_folder(sweep_dir, members)
                (folder / "last.ckpt").unlink(missing_ok=True)
            if folder is not None:  # how each member finds its group again, even if the group is killed outright
                group = {"id": number, "members": len(jobs), "jobs": [job.num for job in jobs],
                         "checkpoint": str(folder / "last.ckpt")}  # fmt: skip
                for member in members:
                    member.extra["fused_group"] = group
                    write_json_atomic(member.output_dir / FUSED_GROUP_FILE, group)
            return train_group(members, resume_command(sweep_dir), ckpt_path, folder, self.cuda_graph)
        except SystemExit:  # Ctrl-C or SIGTERM: every member's metrics.json says interrupted, the group's last.ckpt
            raise  # stays the last completed epoch's
        except Exception as error:  # e.g. a Trainer option the group cannot take: every member failed
            return [error] * len(jobs)

    @staticmethod
    def _group_checkpoint(jobs: list[Job]) -> str | None:
        """The group checkpoint an interrupted group continues from; None for a group that starts (or starts
        again: resume=retry sets a damaged one aside)."""
        from fashion_lenet.training.checkpoints import check_resumable

        path, mode = jobs[0].group_checkpoint, resume_mode(jobs[0].task_cfg)
        if path is None or not Path(path).is_file():  # stopped before its first epoch ended: it starts again
            return None
        try:
            check_resumable(path, "resume=retry trains the group again")
        except UserError:
            if mode != "retry":
                raise
            log.warning(f"{path} is damaged: resume=retry trains its group again")
            for job in jobs:
                clear_outputs(job.output_dir)
            return None
        return path

    @staticmethod
    def _log_to_every_job_file(jobs: list[Job]) -> None:
        """Hydra's job logging, configured for the first member, also writes to every other member's log file."""
        configure_log(jobs[0].config.hydra.job_logging, jobs[0].config.hydra.verbose)
        root = logging.getLogger()
        first = next((h for h in root.handlers if isinstance(h, logging.FileHandler)), None)
        if first is None:
            return
        for job in jobs[1:]:
            handler = logging.FileHandler(job.output_dir / Path(first.baseFilename).name)
            handler.setFormatter(first.formatter)
            handler.setLevel(first.level)
            root.addHandler(handler)


class _FusedSubmitit(FusedLauncher, BaseSubmititLauncher):
    """Each fused group as one submitit job (one cluster job per group with hydra/launcher=fused_slurm): the jobs
    are composed, checked and grouped here, and trained in the job's process."""

    def __init__(self, max_members: int = 36, cuda_graph: bool = False, **params):
        FusedLauncher.__init__(self, max_members, cuda_graph=cuda_graph)
        BaseSubmititLauncher.__init__(self, **params)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit  # here: Hydra's plugin scan stays fast

        setup_globals()
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = [self._compose(list(o), initial_job_idx + i) for i, o in enumerate(job_overrides)]
        groups = group_jobs(jobs, self.max_members)
        log.info(f"Submitting {len(jobs)} jobs as {len(groups)} fused groups to submitit ({self._EXECUTOR})")
        params = dict(self.params)
        requeues = {f"{self._EXECUTOR}_{k}": params.pop(k) for k in ("max_num_timeout",) if k in params}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=params.pop("submitit_folder"), **requeues)
        shared = set(OmegaConf.structured(BaseQueueConf).keys())  # submitit's keys for every cluster
        executor.update_parameters(**{k if k in shared else f"{self._EXECUTOR}_{k}": v for k, v in params.items()})
        state = Singleton.get_state()
        submitted = executor.map_array(self, [[job.overrides_with_hydra for job in g] for g in groups],
                                       [[job.num for job in g] for g in groups], range(1, len(groups) + 1),
                                       [state] * len(groups))  # fmt: skip
        returns = {ret.hydra_cfg.hydra.job.num: ret for job in submitted for ret in job.results()[0]}
        return [returns[job.num] for job in jobs]

    def __call__(self, overrides: list[list[str]], nums: list[int], number: int, state) -> list[JobReturn]:
        """In the submitit job: compose the group's jobs again and train them as the local launcher does."""
        Singleton.set_state(state)
        setup_globals()
        group = [self._compose(o, num) for o, num in zip(overrides, nums, strict=True)]
        return [self._run_group(group, number)[job.num] for job in group]


class FusedLocalLauncher(_FusedSubmitit):
    _EXECUTOR = "local"


class FusedSlurmLauncher(_FusedSubmitit):
    _EXECUTOR = "slurm"
