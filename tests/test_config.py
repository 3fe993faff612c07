import json

import pytest
from conftest import TINY, run_cli
from hydra.errors import HydraException

from fashion_lenet.sweep.config import validate
from fashion_lenet.sweep.errors import ConfigError
from train import train

BAD_VALUES = [
    ("optim.lr=0", "optim.lr=0"),
    ("optim.lr=-1e-3", "optim.lr=-0.001"),
    ("optim.lr=fast", "optim.lr='fast'"),
    ("optim.weight_decay=-1e-4", "optim.weight_decay=-0.0001"),
    ("optim=sgd optim.momentum=1.5", "optim.momentum=1.5"),
    ("model.dropout_p=1.0", "model.dropout_p=1.0"),
    ("model.dropout_p=-0.1", "model.dropout_p=-0.1"),
    ("data.batch_size=0", "data.batch_size=0"),
    ("data.batch_size=12.5", "data.batch_size=12.5"),
    ("data.val_fraction=1.0", "data.val_fraction=1.0"),
    ("data.val_fraction=0", "data.val_fraction=0"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0"),
    ("seed=-1", "seed=-1"),
    ("trainer.accelerator=tpux", "trainer.accelerator='tpux'"),
    ("model.norm=layer", "model.norm='layer'"),
    ("matmul_precision=low", "matmul_precision='low'"),
    ("threads=0", "threads=0"),
    ("threads=1.5", "threads=1.5"),
    ("data.augment=maybe", "data.augment='maybe'"),
    ("data.max_shift=-1", "data.max_shift=-1"),
    ("data.max_shift=28", "data.max_shift=28"),
    ("ckpt_path=no/such/run/last.ckpt", "ckpt_path='no/such/run/last.ckpt'"),
]


@pytest.mark.parametrize(("overrides", "named"), BAD_VALUES)
def test_bad_value_is_rejected_naming_key_value_and_allowed_range(make_cfg, tmp_path, overrides, named):
    cfg = make_cfg(*TINY, *overrides.split())
    with pytest.raises(ConfigError, match="is not allowed: use") as error:
        train(cfg)
    assert str(error.value).startswith(named) and "\n" not in str(error.value)
    assert not list(tmp_path.iterdir()), "a rejected config must not leave anything that looks like a result"


def test_defaults_and_every_group_choice_pass_validation(make_cfg):
    for overrides in ([], ["optim=sgd"], ["optim=adagrad"], ["model=dropout2"], ["scheduler=cosine"]):
        validate(make_cfg(*overrides))


def test_several_devices_are_refused_in_a_multirun(make_cfg):
    with pytest.raises(ConfigError, match="trainer.devices=2 is not allowed in a multirun"):
        validate(make_cfg("trainer.devices=2"), multirun=True)
    validate(make_cfg("trainer.devices=2"), multirun=False)


@pytest.mark.parametrize("override", ["model=resnet", "optim=rmsprop"])
def test_unknown_group_choice_lists_the_available_ones(make_cfg, override):
    with pytest.raises(HydraException, match="Available options"):
        make_cfg(override)


def test_cli_prints_one_line_error_and_exits_nonzero(tmp_path):
    result = run_cli("train.py", "optim.lr=-1", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    # Hydra frames the message with the job's overrides and its HYDRA_FULL_ERROR hint; no traceback
    assert "\noptim.lr=-1 is not allowed: use a number > 0\n" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 4
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "optim.lr=-1" in metrics["error"]


def test_sweep_with_one_bad_value_stops_before_any_job_starts(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli("train.py", "-m", "optim.lr=1e-3,-1", *TINY, f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode != 0
    assert result.stderr.startswith("optim.lr=-1 is not allowed: use a number > 0 (job: optim.lr=-1 "), result.stderr
    assert "Traceback" not in result.stderr
    assert not list(sweep_dir.glob("*/.hydra")), "the good job 0 must not have started either"


@pytest.mark.parametrize(("override", "refusal"), [
    ("hydra.launcher.max_members=0", "hydra.launcher.max_members=0 is not allowed: use an integer >= 1"),
    ("hydra.launcher.n_jobs=-1", "hydra.launcher.n_jobs=-1 is not allowed: use an integer >= 1"),
    ("hydra.launcher.cuda_graph=maybe", "hydra.launcher.cuda_graph='maybe' is not allowed: use true or false"),
])  # fmt: skip
def test_a_bad_value_of_the_fused_launchers_own_keys_stops_the_sweep_in_one_line(tmp_path, override, refusal):
    sweep_dir = tmp_path / "sweep"
    result = run_cli("train.py", "-m", "hydra/launcher=fused", override, f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode != 0
    # the refusal alone (and Hydra's HYDRA_FULL_ERROR hint), not framed by Hydra's "Error in call to target"
    lines = [line for line in result.stderr.splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
    assert lines == [refusal], result.stderr
    assert "full_key" not in result.stderr and not sweep_dir.exists()  # refused before any job
