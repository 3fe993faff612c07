"""Resuming a sweep in its folder (`resume=true`): which jobs are kept, which continue, which start, and where.

Each job of the new grid is matched to an old job folder by the values of the keys that varied in the old sweep
(its position does not matter). A kept job (completed or pruned; failed or diverged unless resume=retry) is not
touched; an interrupted job continues from its last.ckpt (train.py); a job with no folder starts in a new one. A
matched job whose configuration changed (another trainer.max_epochs, say) stops the resume before anything runs.
Light to import: the sweepers use it.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fashion_lenet.sweep.errors import ConfigError
from fashion_lenet.sweep.jobfiles import FINISHED, FUSED_GROUP_FILE, METRICS_FILE, job_dirs, read_json, read_metrics
from fashion_lenet.sweep.naming import HOW_TO_CONTINUE, MULTIRUN_FILE, override_key

log = logging.getLogger(__name__)

KEPT = {True: (*FINISHED, "failed", "diverged"), "retry": FINISHED}  # per resume mode


def _outputs(folder: Path) -> list[Path]:
    """What a retried job starts again without: checkpoints, metrics.json, its group, its TensorBoard run."""
    runs = {events.parent for events in folder.glob("*/events.out.tfevents.*")}
    return [folder / "checkpoints", folder / METRICS_FILE, folder / FUSED_GROUP_FILE, *sorted(runs)]


def job_folders(sweep_dir: Path) -> list[Path]:
    """The sweep's job folders; a refusal naming the key when there is no sweep to resume."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"hydra.sweep.dir={sweep_dir} does not exist: resume=true continues a sweep in its folder")
    folders = job_dirs(sweep_dir)
    if not folders:
        raise ConfigError(f"hydra.sweep.dir={sweep_dir} holds no sweep (no job folder with .hydra/overrides.yaml)")
    return folders


def _overrides(folder: Path) -> dict[str, str]:
    overrides = OmegaConf.to_container(OmegaConf.load(folder / ".hydra" / "overrides.yaml"))
    return {override_key(o): o for o in overrides if override_key(o) not in HOW_TO_CONTINUE}


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, item in node.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def first_difference(old: DictConfig, new: DictConfig) -> tuple[str, Any, Any] | None:
    """The first key (sorted) whose value differs, with both values; keys of HOW_TO_CONTINUE do not count."""
    flat_old, flat_new = (_flat(OmegaConf.to_container(c)) for c in (old, new))
    for key in sorted(flat_old.keys() | flat_new.keys()):
        if key.split(".")[0] not in HOW_TO_CONTINUE and flat_old.get(key) != flat_new.get(key):
            return key, flat_old.get(key), flat_new.get(key)
    return None


def plan(sweep_dir: Path, grid: list[list[str]], compose: Callable[[list[str]], DictConfig], mode: bool | str,
         first_position: int = 0) -> list[list[str]]:  # fmt: skip
    """The jobs to launch, each with the folder it runs in (`hydra.sweep.subdir`); kept jobs are left out.

    grid: a batch of the sweep's jobs, the first at first_position in the whole grid.
    compose(overrides) -> the job's config without its hydra node, as Hydra saves it in .hydra/config.yaml.
    """
    folders = job_folders(sweep_dir)
    old = {folder: _overrides(folder) for folder in folders}
    varying = {k for o in old.values() for k in o if len({o2.get(k) for o2 in old.values()}) > 1}
    by_values = {tuple(sorted(o[k] for k in varying if k in o)): folder for folder, o in old.items()}
    taken = {folder.name for folder in folders}
    free = 1 + max((int(name) for name in taken if name.isdigit()), default=-1)  # the first number after them
    launches, retried, kept = [], [], 0
    for position, overrides in enumerate(grid, first_position):
        mine = {override_key(o): o for o in overrides}
        folder = by_values.pop(tuple(sorted(mine[k] for k in varying if k in mine)), None)
        if folder is None:  # never started: its grid position, unless an old job has that folder
            name = str(position)
            if name in taken:
                name, free = str(free), free + 1
            taken.add(name)
            launches.append([*overrides, f"hydra.sweep.subdir={name}"])
            continue
        if difference := first_difference(OmegaConf.load(folder / ".hydra" / "config.yaml"), compose(overrides)):
            key, was, now = difference
            job = " ".join(mine[k] for k in sorted(varying & mine.keys()))
            raise ConfigError(
                f"{key}={now!r} is not allowed on resume: job {folder.name} ({job}) was run with "
                f"{key}={was!r}; resume with the sweep's own configuration (nothing was changed)"
            )
        status = (read_metrics(folder) or {}).get("status")
        if status in KEPT[mode]:
            kept += 1
            continue
        if status in ("failed", "diverged"):
            retried.append(folder)
        launches.append([*overrides, f"hydra.sweep.subdir={folder.name}"])
    for folder in retried:  # only once every job is checked: a refused resume changes nothing
        clear_outputs(folder)
    log.info(f"Resuming {sweep_dir}: {kept} jobs kept, {len(launches)} to run ({len(retried)} retried)")
    return launches


def resume_mode(cfg: DictConfig) -> bool | str:
    """The job's `resume`; true also when Slurm runs the job again (requeued after a pre-emption, `scontrol requeue`,
    or by submitit at its time limit): the job then continues from its folder's last.ckpt by itself."""
    return cfg.resume or int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0


def last_checkpoint(output_dir: Path, mode: bool | str) -> str | None:
    """The last.ckpt to continue from when resuming a run whose folder holds an unfinished run's last.ckpt."""
    path = Path(output_dir) / "checkpoints" / "last.ckpt"
    if not mode or not path.is_file():
        return None
    return None if (read_metrics(output_dir) or {}).get("status") in FINISHED else str(path)


def fused_group_checkpoint(output_dir: Path) -> str | None:
    """The group checkpoint a job stopped as a member of a fused group continues from (with its group): named in
    the job's fused_group.json, written when the group started, so a member killed outright (no metrics.json)
    finds its group as surely as one that says `interrupted`."""
    if (read_metrics(output_dir) or {}).get("status") not in (None, "interrupted"):
        return None
    group = read_json(Path(output_dir) / FUSED_GROUP_FILE) or {}
    return group.get("checkpoint")


def clear_outputs(folder: Path) -> None:
    """What a job trains again without: checkpoints, metrics.json, its TensorBoard run."""
    for path in _outputs(folder):
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def how_to_resume(hydra_cfg) -> str:
    """The command that continues an interrupted run, or the whole sweep it belongs to."""
    if hydra_cfg.mode.name == "MULTIRUN":
        return resume_command(Path(hydra_cfg.sweep.dir))
    return f"python train.py hydra.run.dir={hydra_cfg.runtime.output_dir} ckpt_path=last"


def resume_command(sweep_dir: Path, mode: str = "true") -> str:
    """The command that finishes the sweep in sweep_dir: its own command line, with resume set."""
    hydra = OmegaConf.load(Path(sweep_dir) / MULTIRUN_FILE).hydra.overrides
    replaced = ("hydra.sweep.dir", "hydra.mode", "resume")
    overrides = [o for o in [*hydra.hydra, *hydra.task] if override_key(o) not in replaced]
    words = ["python", "train.py", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}", f"resume={mode}"]
    return " ".join(shlex.quote(word) for word in words)
