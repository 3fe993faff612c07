"""Every study in conf/experiment/ composes, and one runs end to end with tiny limits."""

import json

import pytest
from conftest import TINY, run_cli
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from fashion_lenet.sweep.config import PROJECT_ROOT, validate

EXPERIMENTS = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "experiment").glob("*.yaml"))


def test_the_seed_and_its_extensions_are_all_there():
    expected = {"seed_study", "bn_position", "dropout_sweep", "weight_decay_sweep", "optimizers", "batch_size",
                "epochs", "bn_weight_decay", "best"}  # fmt: skip
    assert expected <= set(EXPERIMENTS)


def sweep_params(name: str) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(PROJECT_ROOT / "conf")):
        return dict(compose("config", [f"experiment={name}"], return_hydra_config=True).hydra.sweeper.params)


# Students learn from the sweep of lenet5_teacher, which a clean clone has not trained (tests/test_distillation.py
# checks teachers): here their settings are checked without it.
TEACHER = PROJECT_ROOT / "multirun" / "lenet5_teacher"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_into_a_valid_sweep(make_cfg, name):
    cfg = make_cfg(f"experiment={name}")
    assert cfg.distill.teacher in (None, str(TEACHER)), cfg.distill.teacher
    validate(make_cfg(f"experiment={name}", "distill.teacher=null"), multirun=True)
    assert sweep_params(name), f"experiment={name} carries no hydra.sweeper.params"


def test_seed_study_sweeps_4_techniques_3_lrs_3_seeds():
    assert sweep_params("seed_study") == {
        "technique": "baseline,dropout,weight_decay,batch_norm",
        "optim.lr": "1e-2,1e-3,1e-4",
        "seed": "0,1,2",
    }


def test_an_experiment_runs_end_to_end(tmp_path):
    # the command line narrows the experiment's own sweep (2 BN positions x 1 lr) to keep it short
    result = run_cli("train.py", "-m", "experiment=bn_position", "optim.lr=1e-3", *TINY, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    models = [json.loads((tmp_path / str(job) / "metrics.json").read_text())["model"] for job in range(2)]
    assert models == ["bn_pre", "bn_post"]
