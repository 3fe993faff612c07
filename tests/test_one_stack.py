"""One training stack: a solo run is a group of one, with the numbers and files solo runs had before."""

import json

import pytest
import torch
from conftest import run_cli
from solo_reference import FILE, RUNS, SHORT, numbers, where

from fashion_lenet.sweep.jobfiles import METRICS_FILE
from fashion_lenet.training.checkpoints import load_checkpoint
from fashion_lenet.training.module import LeNetModule
from train import train

LEGACY = FILE.parent / "legacy"  # checkpoints of the code before this stack: README.md there
RECORDED = json.loads(FILE.read_text())
# Elsewhere float32 sums add in another order (another CPU type, thread count or torch build), which training over
# 40 steps amplifies: test_fused.py's 30-step bounds (train and val loss, and one accuracy step = one image).
LOSS_RTOL, ACC_ATOL = 3e-3, 10 / 2000


def assert_same_numbers(got: dict, recorded: dict) -> None:
    """Bit for bit where the recording was made; within float32 rounding, as training amplifies it, elsewhere."""
    if where() == RECORDED["recorded_with"]:
        assert got == recorded
        return
    assert got["best_epoch"] == recorded["best_epoch"]
    for row, expected in zip(got["history"], recorded["history"], strict=True):
        assert row.keys() == expected.keys()
        for key, value in expected.items():
            tolerance = {"rel": LOSS_RTOL} if key.endswith("loss") else {"abs": ACC_ATOL}
            assert row[key] == pytest.approx(value, **tolerance), (row["epoch"], key)


@pytest.mark.parametrize("run", list(RUNS))
def test_a_solo_run_repeats_the_numbers_recorded_before_solo_runs_were_groups_of_one(make_cfg, run):
    assert_same_numbers(numbers(train(make_cfg(*SHORT, *RUNS[run]))), RECORDED["runs"][run])


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # it was written in another folder
def test_a_solo_last_checkpoint_of_the_earlier_code_resumes_where_that_run_stopped(make_cfg):
    """Its epoch 0 was the recorded baseline run's epoch 0: resumed, epoch 1 is that run's epoch 1."""
    resumed = numbers(train(make_cfg(*SHORT, *RUNS["baseline_adam"], f"ckpt_path={LEGACY / 'solo_last.ckpt'}")))
    recorded = RECORDED["runs"]["baseline_adam"]
    assert resumed["history"][0] == recorded["history"][0]  # read from the checkpoint, not trained again
    assert_same_numbers(resumed, recorded)


def test_a_fused_group_checkpoint_of_the_earlier_code_loads_into_a_two_member_module():
    checkpoint = load_checkpoint(LEGACY / "group_last.ckpt")
    net = {"_target_": "fashion_lenet.training.models.LeNet5", "dropout_layers": 1}
    module = LeNetModule([net, net], [{"_target_": "torch.optim.Adam", "_partial_": True}] * 2)
    module.load_state_dict(checkpoint["state_dict"])  # strict: every name and shape of the fused network
    member = LeNetModule.load_from_checkpoint(LEGACY / "member_best.ckpt", map_location="cpu", weights_only=True)
    assert member.members == 1 and member(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def _sweep(folder, *launcher: str):
    result = run_cli("train.py", "-m", *launcher, "model=baseline,bn_post", *SHORT, f"hydra.sweep.dir={folder}")
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((folder / str(job) / METRICS_FILE).read_text()) for job in range(2)]


def _files(job_dir) -> set[str]:
    return {str(path.relative_to(job_dir)) for path in job_dir.rglob("*") if path.is_file() and
            not path.name.startswith("events.out.tfevents")}  # fmt: skip


def test_groups_of_one_through_the_fused_launcher_are_the_basic_launchers_jobs(tmp_path):
    """Two jobs that cannot fuse (another model each): the same numbers and the same files as with -m alone."""
    basic = _sweep(tmp_path / "basic")
    fused = _sweep(tmp_path / "fused", "hydra/launcher=fused")
    for job, (alone, group_of_one) in enumerate(zip(basic, fused, strict=True)):
        assert "fused_group" not in group_of_one
        assert numbers(group_of_one) == numbers(alone)  # the same code: bit for bit on any machine
        assert _files(tmp_path / "fused" / str(job)) == _files(tmp_path / "basic" / str(job))
    assert not (tmp_path / "fused" / "fused_groups").exists()
