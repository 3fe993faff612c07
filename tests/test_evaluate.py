import json

import lightning.pytorch as pl
import pytest
import torch
from conftest import TINY, run_cli

from fashion_lenet.analysis.evaluate import evaluate
from fashion_lenet.sweep.config import PROJECT_ROOT
from fashion_lenet.sweep.errors import UserError
from fashion_lenet.training.module import LeNetModule
from train import train


def test_evaluate_cli_reproduces_the_recorded_test_accuracy(make_cfg, tmp_path):
    metrics = train(make_cfg(*TINY, "model=bn_post", "++trainer.limit_test_batches=null"))
    result = run_cli("-m", "fashion_lenet.analysis.evaluate", metrics["best_checkpoint"],
                     "--out", str(tmp_path / "eval"), "--accelerator", "cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    recorded = json.loads((tmp_path / "metrics.json").read_text())["test_acc"]
    assert f"test accuracy: {100 * recorded:.2f} %" in result.stdout
    assert sum(" %" in line for line in result.stdout.splitlines()) == 11  # the total and ten classes
    assert (tmp_path / "eval" / f"confusion_matrix_{metrics['best_checkpoint'].rsplit('/', 1)[1][:-5]}.png").is_file()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "does not exist"),
        (b"", "is not a checkpoint of this project (EOFError)"),
        (b"# notes, not weights\n", "is not a checkpoint of this project (UnpicklingError)"),
    ],
)
def test_evaluate_cli_refuses_a_missing_or_unreadable_checkpoint_in_one_line(tmp_path, content, problem):
    checkpoint = tmp_path / "run.ckpt"
    if content is not None:
        checkpoint.write_bytes(content)
    result = run_cli("-m", "fashion_lenet.analysis.evaluate", str(checkpoint))
    assert result.returncode != 0
    assert result.stderr.strip() == f"error: {checkpoint} {problem}: give a .ckpt file from a run's checkpoints/ folder"


def test_evaluate_refuses_a_fused_groups_checkpoint_in_one_line(tmp_path):
    net = {"_target_": "fashion_lenet.training.models.LeNet5"}
    group = LeNetModule([net, net], [{"_target_": "torch.optim.Adam", "_partial_": True}] * 2)
    checkpoint = tmp_path / "last.ckpt"  # what a group of 2 keeps: its weights and arguments
    torch.save({"state_dict": group.state_dict(), "hyper_parameters": dict(group.hparams),
                "pytorch-lightning_version": pl.__version__}, checkpoint)  # fmt: skip
    with pytest.raises(UserError, match=f"^{checkpoint} holds a fused group of 2 jobs: give one job's best checkpoint"):
        evaluate(checkpoint, PROJECT_ROOT / "data", tmp_path, "cpu")
