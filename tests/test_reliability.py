"""Nothing lost, nothing silent: divergence, failing jobs, interruption, resume and reproducibility."""

import json
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch
from conftest import TINY, run_cli

from fashion_lenet.sweep.config import PROJECT_ROOT, compose_job
from fashion_lenet.training.module import LeNetModule
from train import train

DIVERGING = ["optim=sgd", "optim.lr=1e4"]  # SGD with momentum at this rate overflows within a few steps
TIMES = {"train_time_s", "epoch_time_s"}


def _numbers(metrics: dict) -> dict:
    """What a run computed, without wall-clock times, paths and timestamps."""
    history = [{k: v for k, v in row.items() if k not in TIMES} for row in metrics["history"]]
    return {"history": history} | {k: metrics[k] for k in ("best_epoch", "best_val_acc", "test_acc")}


def test_nan_loss_stops_the_job_and_marks_it_diverged(make_cfg, tmp_path):
    metrics = train(make_cfg(*TINY, *DIVERGING, "trainer.max_epochs=3"))
    assert metrics["status"] == "diverged" and metrics["test_acc"] is None
    written = json.loads((tmp_path / "metrics.json").read_text())  # strict JSON: NaN is written as null
    assert written["status"] == "diverged" and len(written["history"]) == 1
    assert written["history"][0]["train_loss"] is None


def test_sweep_with_a_diverging_lr_keeps_the_other_jobs(tmp_path):
    tiny = [o for o in TINY if "max_epochs" not in o]
    result = run_cli(
        "train.py", "-m", "optim=sgd", "optim.lr=1e-2,1e4,1e-3", "trainer.max_epochs=2", *tiny,
        f"hydra.sweep.dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode != 0  # a job without a result is a failure, reported after the others ran
    assert "training diverged in epoch 0: the loss is no longer finite" in result.stderr
    statuses = [json.loads((tmp_path / str(job) / "metrics.json").read_text())["status"] for job in range(3)]
    assert statuses == ["completed", "diverged", "completed"]
    assert "| diverged |" in (tmp_path / "summary.md").read_text()


def test_a_failing_job_neither_stops_the_sweep_nor_hides_the_failure(tmp_path):
    # Bad config values stop a sweep before it starts (test_config.py); this job fails while running:
    # Lightning refuses gradient clipping for the project's manual optimization when fit begins.
    result = run_cli(
        "train.py", "-m", "++trainer.gradient_clip_val=null,1.0,null", *TINY, f"hydra.sweep.dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode != 0
    assert "Automatic gradient clipping is not supported for manual optimization" in result.stderr
    statuses = [json.loads((tmp_path / str(job) / "metrics.json").read_text())["status"] for job in range(3)]
    assert statuses == ["completed", "failed", "completed"]
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("| completed |") == 2
    assert "| failed (MisconfigurationException: Automatic gradient clipping is not supported" in summary


def test_resumed_run_ends_exactly_like_the_uninterrupted_one(make_cfg, tmp_path):
    """Dropout and shuffling draw random numbers and the schedule moves the lr: all must travel in the checkpoint."""
    common = [*TINY, "model=dropout", "++trainer.limit_train_batches=20", "scheduler=cosine", "scheduler.T_max=3"]
    straight = train(make_cfg(*common, "trainer.max_epochs=3"))
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    first = train(compose_job([*common, "trainer.max_epochs=1"], resumed_dir))
    assert len(first["history"]) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = train(compose_job([*common, "trainer.max_epochs=3", "ckpt_path=last"], resumed_dir))
    assert _numbers(resumed) == _numbers(straight)
    # Loaded, not trained again: epoch 0's row is the first run's, its timings too (a retrain cannot repeat those)
    assert resumed["history"][0] == first["history"][0] and [row["epoch"] for row in resumed["history"]] == [0, 1, 2]
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]  # its own checkpoints are no news


def test_last_checkpoint_is_the_last_epoch_even_when_validation_did_not_improve(make_cfg, tmp_path):
    metrics = train(make_cfg(*TINY, "trainer.max_epochs=2", "optim.lr=1e-12"))  # weights barely move
    assert metrics["best_epoch"] == 0 and metrics["history"][1]["val_acc"] == metrics["history"][0]["val_acc"]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1


def test_same_config_and_seed_give_identical_numbers_on_cpu(tmp_path, data_root):
    overrides = [*TINY, "model=dropout", "++trainer.limit_train_batches=10"]
    first, second = (train(compose_job(overrides, tmp_path / str(run))) for run in range(2))
    assert _numbers(first) == _numbers(second)


@pytest.mark.parametrize(("sent", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_leaves_a_loadable_checkpoint_and_says_interrupted(tmp_path, sent, exit_code):
    command = [sys.executable, "train.py", *TINY, "trainer.max_epochs=1000", "++trainer.limit_train_batches=50",
               f"hydra.run.dir={tmp_path}"]  # fmt: skip
    # A terminal delivers Ctrl-C; a shell running a script in the background (as CI may) sets SIGINT to
    # "ignore" for its children, and Python then never raises KeyboardInterrupt. Give the child a terminal's default.
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 120
    while not (tmp_path / "checkpoints" / "last.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # now inside a later epoch
    process.send_signal(sent)
    try:
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()  # never leave a 1000-epoch run behind when the test fails
    assert process.returncode == exit_code, stderr.decode()[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and len(metrics["history"]) >= 1
    restored = LeNetModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu")
    assert restored(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
