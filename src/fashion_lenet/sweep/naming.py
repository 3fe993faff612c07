"""What a job is called: the settings that set it apart from the other jobs of its sweep.

The terminal's job lines (`[4/6] job 3: model=bn_pre optim.lr=0.001`) and the job's TensorBoard run (`3/model=
bn_pre,optim.lr=0.001` under `tensorboard --logdir <sweep>`) use it. The swept keys are those that the sweep's
command line or its `hydra.sweeper.params` give several values (a list, range, interval...), read from the sweep's
multirun.yaml, so that jobs in other processes or on cluster nodes name themselves alike. A single run is named
by its command-line overrides, or by its technique when it has none. Light to import: the sweepers use it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override

MULTIRUN_FILE = "multirun.yaml"
STUDY_FILE = "optuna.db"  # an Optuna search's study: conf/hydra/sweeper/resumable_optuna.yaml's storage
HOW_TO_CONTINUE = ("resume", "ckpt_path")  # how a run is continued, not what it trains
MAX_RUN_NAME = 200  # characters: a folder name (255 bytes on most filesystems)


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def sweep_shape(sweep_dir: str | Path) -> tuple[set[str], int | None]:
    """(the swept keys, the number of jobs) of the sweep in sweep_dir; (set(), None) without its multirun.yaml."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = Path(sweep_dir) / MULTIRUN_FILE
    if not path.is_file():
        return set(), None
    hydra = OmegaConf.load(path).hydra
    params = [f"{key}={value}" for key, value in (hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*params, *hydra.overrides.task])
    swept = {override.key_or_group for override in overrides if override.is_sweep_override()}
    if "n_trials" in hydra.sweeper:  # Optuna's: as many jobs as trials
        return swept, hydra.sweeper.n_trials
    return swept, _grid_size(overrides)


def _grid_size(overrides: list[Override]) -> int:
    """The number of jobs Hydra's basic sweeper expands the overrides to: the product of each key's values.

    Keyed as Hydra keys them (`+a` and `a` apart, a later override of a key replacing the earlier one); an
    interval sweep, which no grid can enumerate, counts for nothing.
    """
    values: dict[str, int] = {}
    for override in overrides:
        if not override.is_sweep_override():
            values[override.get_key_element()] = 1
        elif override.is_discrete_sweep():
            values[override.get_key_element()] = sum(1 for _ in override.sweep_string_iterator())
    return math.prod(values.values())


def job_settings(hydra_cfg: DictConfig) -> list[str]:
    """The job's overrides of the swept keys; all its own overrides in a single run (or a sweep of one job)."""
    overrides = [o for o in hydra_cfg.overrides.task if override_key(o) not in HOW_TO_CONTINUE]
    if hydra_cfg.mode.name == "MULTIRUN":
        swept, _ = sweep_shape(hydra_cfg.sweep.dir)
        overrides = [o for o in overrides if override_key(o) in swept] or overrides
    return [_short(o.lstrip("+")) for o in overrides]


def _short(override: str) -> str:
    """`optim.lr=0.001958` for an Optuna trial's `optim.lr=0.0019578897201213002`; other values as they are."""
    key, _, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    return f"{key}={number:.4g}" if len(value) > 12 else override


def run_name(hydra_cfg: DictConfig) -> str:
    """The job's TensorBoard run: `model=bn_pre,optim.lr=0.001`; `baseline` for a run of the defaults."""
    choices = hydra_cfg.runtime.choices
    name = ",".join(job_settings(hydra_cfg)) or choices.get("technique") or choices.get("model") or "run"
    return name.replace("/", "∕")[:MAX_RUN_NAME]  # a value with a slash (a path) must not nest folders


def job_title(hydra_cfg: DictConfig) -> str:
    """`[4/6] job 3` for the job in folder 3 of a 6-job sweep; `job <folder>` when its place is unknown."""
    folder = Path(hydra_cfg.runtime.output_dir).name
    _, jobs = sweep_shape(hydra_cfg.sweep.dir)
    if folder.isdigit() and jobs and int(folder) < jobs:
        return f"[{int(folder) + 1}/{jobs}] job {folder}"
    return f"job {folder}"
