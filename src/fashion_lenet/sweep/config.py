"""Config checks in one table, run before any work; the config's resolvers; in-process composition."""

from __future__ import annotations

from collections.abc import Callable
from numbers import Real
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from fashion_lenet.sweep.errors import ConfigError, UserError
from fashion_lenet.sweep.jobfiles import finished_jobs
from fashion_lenet.sweep.naming import run_name

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def register_resolvers() -> None:
    """The config's own interpolations: `${project_root:}` and `${run_name:}` (the job's TensorBoard run, named from
    its Hydra config). Call before composing a config (train.py, compose_job, the fused launcher); idempotent."""
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("run_name", lambda: run_name(HydraConfig.get()), replace=True)

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's choices
NORM_CHOICES = ("none", "pre", "post")  # where models.lenet5 puts BatchNorm: nowhere, before or after the ReLU
BN_IMPL_CHOICES = ("torch", "manual")  # models.BN_IMPLS' keys (tests/test_models.py holds them equal)


def _number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer_from(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _integer(v) and v >= low), f"an integer >= {low}"


_BOOLEAN = (lambda v: isinstance(v, bool), "true or false")
_BELOW_ONE = (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)")


def _checkpoint(value: Any) -> bool:
    """What Lightning's `ckpt_path` takes for fit: its keywords, a URL (fsspec), or a file that exists."""
    return value is None or value in ("last", "hpc") or "://" in str(value) or Path(str(value)).is_file()


def _folders(value: Any) -> bool:
    return (isinstance(value, str) and value != "") or (
        OmegaConf.is_list(value) and len(value) > 0 and all(isinstance(v, str) and v for v in value))


def teacher_folders(value: Any) -> list[Path]:
    """distill.teacher's folders: one path, or a list of them."""
    return [] if value is None else [Path(v) for v in ([value] if isinstance(value, str) else value)]


def rules() -> list[tuple[str, Callable[[Any], bool], str]]:
    """(key, test, what is allowed). Keys missing from a config (e.g. momentum for Adam) are skipped."""
    return [
        ("seed", *_integer_from(0)),
        ("threads", lambda v: v is None or (_integer(v) and v >= 1), "null (torch's default) or an integer >= 1"),
        ("ckpt_path", _checkpoint, "null, last, hpc, or the path of an existing checkpoint file"),
        ("resume", lambda v: v in (True, False, "retry") and not _integer(v), "true, false or retry"),
        ("cuda_graph", *_BOOLEAN),
        ("label_smoothing", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
        ("matmul_precision", lambda v: v in MATMUL_PRECISIONS, ", ".join(MATMUL_PRECISIONS)),
        ("optim.lr", lambda v: _number(v) and v > 0, "a number > 0"),
        ("optim.weight_decay", lambda v: _number(v) and v >= 0, "a number >= 0"),
        ("optim.momentum", *_BELOW_ONE),
        ("model.dropout_p", *_BELOW_ONE),
        ("model.dropout_layers", lambda v: v in (0, 1, 2) and _integer(v), "0, 1 or 2"),
        ("model.norm", lambda v: v in NORM_CHOICES, " or ".join(NORM_CHOICES)),
        ("model.bn_impl", lambda v: v in BN_IMPL_CHOICES, " or ".join(BN_IMPL_CHOICES)),
        ("data.batch_size", *_integer_from(1)),
        ("data.eval_batch_size", *_integer_from(1)),
        ("data.val_fraction", lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
        ("data.split_seed", *_integer_from(0)),
        ("data.shuffle_seed", *_integer_from(0)),
        ("data.augment", *_BOOLEAN),
        # a shift of the whole image size (28) or more can move every pixel out of the picture
        ("data.max_shift", lambda v: _integer(v) and 0 <= v < 28, "an integer from 0 to 27 (pixels)"),
        ("trainer.max_epochs", *_integer_from(1)),
        ("distill.teacher", lambda v: v is None or _folders(v), "null, or a job or sweep folder (or a list of them)"),
        ("distill.temperature", lambda v: _number(v) and v > 0, "a number > 0"),
        ("distill.alpha", lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
        ("trainer.accelerator", lambda v: v in ACCELERATORS, ", ".join(ACCELERATORS)),
    ]


def pruner_rules() -> list[tuple[str, Callable[[Any], bool], str]]:
    """hydra.sweeper.pruner's arguments (conf/hydra/sweeper/pruner), as Optuna's pruners take them; Optuna itself
    checks some only when a trial is pruned (HyperbandPruner), so all are checked here, before any trial starts."""
    resource = (lambda v: v == "auto" or (_integer(v) and v >= 1), "auto or an integer >= 1")
    return [(f"hydra.sweeper.pruner.{key}", *rule) for key, rule in [
        ("n_startup_trials", _integer_from(0)),
        ("n_warmup_steps", _integer_from(0)),
        ("interval_steps", _integer_from(1)),
        ("n_min_trials", _integer_from(1)),
        ("min_resource", resource),
        ("max_resource", resource),
        ("reduction_factor", _integer_from(2)),
        ("min_early_stopping_rate", _integer_from(0)),
        ("bootstrap_count", _integer_from(0)),
    ]]  # fmt: skip


_ABSENT = object()


def validate(cfg: DictConfig, multirun: bool = False) -> None:
    """Raise ConfigError naming the first bad key, its value and what is allowed."""
    check(cfg, rules())
    check_teacher(cfg)
    devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    if multirun and devices not in (1, "1") and not (OmegaConf.is_list(devices) and len(devices) == 1):
        raise ConfigError(
            f"trainer.devices={devices!r} is not allowed in a multirun: each sweep job trains on one device "
            "(Lightning's DDP re-launch breaks under Hydra multirun); use trainer.devices=1, or run a single "
            "job (no -m) with several devices"
        )


def check_teacher(cfg: DictConfig) -> None:
    """distill.teacher: folders of finished jobs with this job's classes, trained on this job's train/validation
    split (a teacher that saw the job's validation images would make choosing on them dishonest)."""
    teacher = OmegaConf.select(cfg, "distill.teacher", default=None)
    for folder in teacher_folders(teacher):
        try:
            jobs = finished_jobs(folder)
        except UserError as error:
            raise ConfigError(f"distill.teacher: {error}") from None
        for job, _ in jobs:
            saved = job / ".hydra" / "config.yaml"
            if not saved.is_file():
                raise ConfigError(f"distill.teacher: {job} has no .hydra/config.yaml, so its train/validation split "
                                  "cannot be checked: give folders of jobs this project trained")  # fmt: skip
            trained = OmegaConf.load(saved)
            theirs, ours = (OmegaConf.select(c, "model.num_classes", default=10) for c in (trained, cfg))
            if theirs != ours:
                raise ConfigError(f"distill.teacher: {job} predicts {theirs} classes, this job {ours}: give a "
                                  "teacher trained on the same classes")  # fmt: skip
            for key in ("data.val_fraction", "data.split_seed"):
                theirs, ours = OmegaConf.select(trained, key), OmegaConf.select(cfg, key)
                if theirs != ours:
                    raise ConfigError(f"distill.teacher: {job} was trained on another train/validation split "
                                      f"({key}={theirs!r}, this job's {ours!r}): it has seen this job's validation "
                                      "images, so choosing on them would not be honest; train the teacher on this "
                                      "split")  # fmt: skip


def check(cfg: DictConfig, table: list[tuple[str, Callable[[Any], bool], str]]) -> None:
    """Raise ConfigError for the first key of the table whose value in cfg is not allowed (absent keys pass)."""
    for key, is_allowed, allowed in table:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not is_allowed(value):
            raise ConfigError(f"{key}={value!r} is not allowed: use {allowed}")


def compose_job(overrides: list[str], output_dir: Path, multirun: bool = False) -> DictConfig:
    """The config one job of `train.py` receives, composed in-process (for tests and the benchmark)."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(PROJECT_ROOT / "conf")):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
        cfg.hydra.mode = RunMode.MULTIRUN if multirun else RunMode.RUN
    HydraConfig.instance().set_config(cfg)  # what `${hydra:...}` and HydraConfig.get() read
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
