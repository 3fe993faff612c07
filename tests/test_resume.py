"""resume=true: an interrupted sweep finishes in its folder without training any completed job twice."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import TINY, run_cli, tensorboard_run

from fashion_lenet.sweep.config import PROJECT_ROOT, compose_job
from fashion_lenet.training.checkpoints import load_checkpoint
from train import train

TIMES = ("train_time_s", "epoch_time_s")
# Three jobs of two 120-step epochs: long enough to stop the second in its second epoch. One thread, so that the
# reference run in this process (whatever thread count earlier tests left) adds in the sweep's order.
GRID = ["hydra/launcher=basic", "optim.lr=1e-3,2e-3,3e-3", *TINY, "trainer.max_epochs=2",
        "++trainer.limit_train_batches=120", "threads=1"]  # fmt: skip


def _metrics(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


def _numbers(metrics: dict) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMES} for row in metrics["history"]]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _stop_when(command: list[str], ready, sweep_dir: Path, settle: float = 0.0, stop=signal.SIGTERM) -> int:
    """Start a sweep, send it `stop` `settle` seconds after ready() holds, return its exit status."""
    process = subprocess.Popen([sys.executable, "train.py", "-m", *command, f"hydra.sweep.dir={sweep_dir}"],
                               cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 600
    try:
        while not ready() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        assert ready(), "the sweep ended or timed out before the point to stop it"
        time.sleep(settle)
        process.send_signal(stop)
        return process.wait(timeout=120)
    finally:
        process.kill()  # never leave a sweep behind when the test fails


def test_a_grid_sweep_stopped_in_job_2_resumes_without_training_job_1_again(tmp_path, tmp_path_factory):
    second = tmp_path / "1" / "checkpoints" / "last.ckpt"
    assert _stop_when(GRID, second.exists, tmp_path, settle=0.5) == 143  # inside job 2's second epoch
    assert _metrics(tmp_path / "1")["status"] == "interrupted" and not (tmp_path / "2").exists()
    first_job, epoch_0 = _files(tmp_path / "0"), _metrics(tmp_path / "1")["history"][0]

    result = run_cli("train.py", "-m", *GRID, f"hydra.sweep.dir={tmp_path}", "resume=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _files(tmp_path / "0") == first_job  # completed: kept byte for byte, not retrained
    # job 2 continued from its checkpoint, not from scratch: epoch 0's row, timings too, is the interrupted run's
    resumed = _metrics(tmp_path / "1")["history"]
    assert resumed[0] == epoch_0 and [row["epoch"] for row in resumed] == [0, 1]
    straight = train(compose_job([*GRID[2:], "optim.lr=2e-3"], tmp_path_factory.mktemp("straight")))  # uninterrupted
    assert _numbers(_metrics(tmp_path / "1")) == _numbers(straight)
    assert _metrics(tmp_path / "1")["test_acc"] == straight["test_acc"]
    assert _metrics(tmp_path / "2")["status"] == "completed"
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("| completed |") == 3 and summary.count("\n| ") == 4  # header + 3 jobs, each once
    assert "resume=" not in summary


def test_resume_refuses_another_configuration_or_a_folder_without_a_sweep(tmp_path):
    sweep = ["optim.lr=1e-3,2e-3", *TINY, f"hydra.sweep.dir={tmp_path}"]
    assert run_cli("train.py", "-m", *sweep).returncode == 0
    before = _files(tmp_path)
    changed = run_cli("train.py", "-m", *sweep, "trainer.max_epochs=2", "resume=true")
    assert changed.returncode != 0
    assert changed.stderr.startswith(  # one line (Hydra adds its HYDRA_FULL_ERROR hint), no traceback
        "trainer.max_epochs=2 is not allowed on resume: job 0 (optim.lr=0.001) was run with trainer.max_epochs=1"
    ), changed.stderr
    assert "Traceback" not in changed.stderr
    assert _files(tmp_path) == before  # nothing written
    nowhere = tmp_path / "nowhere"
    missing = run_cli("train.py", "-m", *sweep[:-1], f"hydra.sweep.dir={nowhere}", "resume=true")
    assert missing.returncode != 0 and missing.stderr.startswith(f"hydra.sweep.dir={nowhere} does not exist")
    assert not (tmp_path / "nowhere").exists()


FUSED = ["hydra/launcher=fused", *GRID[1:]]  # the three jobs as one group


@pytest.fixture(scope="module")
def straight_group(tmp_path_factory) -> Path:
    """The fused group's sweep when nothing stops it: what every interrupted one must end with."""
    straight = tmp_path_factory.mktemp("straight")
    assert run_cli("train.py", "-m", *FUSED, f"hydra.sweep.dir={straight}").returncode == 0
    return straight


def _assert_resumed_group_ends_as_the_straight_one(sweep: Path, straight: Path, epoch_0: dict[int, dict]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for job in range(3):  # bit for bit what the group computes when nothing stops it
        resumed, reference = _metrics(sweep / str(job)), _metrics(straight / str(job))
        assert resumed["status"] == "completed" and resumed["fused_group"]["members"] == 3
        assert resumed["history"][0] == epoch_0[job]  # from the group checkpoint: timings no retrain repeats
        assert _numbers(resumed) == _numbers(reference)
        assert resumed["test_acc"] == reference["test_acc"]
        events = EventAccumulator(str(tensorboard_run(sweep / str(job))))
        events.Reload()
        assert [event.step for event in events.Scalars("val/acc")] == [0, 1]  # each epoch once


def test_an_interrupted_fused_group_resumes_as_one_group_with_its_uninterrupted_numbers(tmp_path, straight_group):
    group_checkpoint = tmp_path / "fused_groups" / "0" / "last.ckpt"
    assert _stop_when(FUSED, group_checkpoint.exists, tmp_path, settle=0.5) == 143  # inside the second epoch
    epoch_0 = {}
    for job in range(3):  # every member says so, and points at the group's checkpoint
        metrics = _metrics(tmp_path / str(job))
        assert metrics["status"] == "interrupted" and len(metrics["history"]) == 1
        assert metrics["fused_group"]["checkpoint"] == str(group_checkpoint)
        epoch_0[job] = metrics["history"][0]
    solo = run_cli("train.py", "-m", *GRID, f"hydra.sweep.dir={tmp_path}", "resume=true")  # not without its group
    assert solo.returncode != 0 and "was interrupted as a member of a fused group" in solo.stderr

    result = run_cli("train.py", "-m", *FUSED, f"hydra.sweep.dir={tmp_path}", "resume=true")
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_resumed_group_ends_as_the_straight_one(tmp_path, straight_group, epoch_0)


def test_a_fused_group_killed_outright_resumes_as_one_group_from_its_last_epoch(tmp_path, straight_group):
    """kill -9: no member writes anything more; each finds its group through what the group wrote at its start."""
    group_checkpoint = tmp_path / "fused_groups" / "0" / "last.ckpt"
    assert _stop_when(FUSED, group_checkpoint.exists, tmp_path, settle=0.5, stop=signal.SIGKILL) == -signal.SIGKILL
    assert not any((tmp_path / str(job) / "metrics.json").exists() for job in range(3))
    history = load_checkpoint(group_checkpoint)["callbacks"]["EpochHistory"]["histories"]
    assert [len(rows) for rows in history] == [1, 1, 1]  # killed in the second epoch

    result = run_cli("train.py", "-m", *FUSED, f"hydra.sweep.dir={tmp_path}", "resume=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Restored all states from the checkpoint" in result.stderr + result.stdout
    _assert_resumed_group_ends_as_the_straight_one(tmp_path, straight_group, {n: history[n][0] for n in range(3)})


def test_a_damaged_last_checkpoint_is_refused_in_one_line_and_retry_trains_the_job_again(tmp_path):
    sweep = ["optim.lr=1e-3,2e-3", *TINY, f"hydra.sweep.dir={tmp_path}"]
    assert run_cli("train.py", "-m", *sweep).returncode == 0
    job = tmp_path / "1"
    last = job / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a write cut short
    metrics = _metrics(job) | {"status": "interrupted"}
    (job / "metrics.json").write_text(json.dumps(metrics))

    refused = run_cli("train.py", "-m", *sweep, "resume=true")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    line = f"{last} cannot be resumed from (cut short or damaged: "
    assert line in refused.stderr and "): resume=retry trains the job again" in refused.stderr, refused.stderr
    retried = run_cli("train.py", "-m", *sweep, "resume=retry")
    assert retried.returncode == 0, retried.stderr[-2000:]
    assert _metrics(job)["status"] == "completed" and _metrics(tmp_path / "0")["status"] == "completed"


def test_an_interrupted_optuna_search_finishes_its_trials_in_new_folders(tmp_path):
    search = ["hparams_search=optuna", "hydra.sweeper.n_trials=4", *TINY, "++trainer.limit_train_batches=100"]
    third = tmp_path / "2" / ".hydra"
    assert _stop_when(search, third.exists, tmp_path) != 0  # stopped in trial 3 (or, on a slow start, trial 4)
    # A trial killed while Hydra wrote its folder leaves .hydra/ without overrides.yaml: no job, but its number
    # is taken (the stop above can land there too).
    half_made = tmp_path / str(1 + max(int(f.name) for f in tmp_path.iterdir() if f.name.isdigit())) / ".hydra"
    half_made.mkdir(parents=True)
    (half_made / "config.yaml").write_text("")
    before = {folder.name: _files(folder) for folder in tmp_path.iterdir() if folder.name.isdigit()}
    assert all(_metrics(tmp_path / str(job))["status"] == "completed" for job in range(2))
    again = run_cli("train.py", "-m", *search, f"hydra.sweep.dir={tmp_path}")
    assert again.returncode != 0 and "already holds an Optuna search" in again.stderr  # not without resume=true
    result = run_cli("train.py", "-m", *search, f"hydra.sweep.dir={tmp_path}", "resume=true")
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="lenet_regularization", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert len(study.trials) == 4  # the original total: the interrupted trial counts as failed
    assert [t.state.name for t in study.trials].count("COMPLETE") == 3
    points = [tuple(sorted(trial.params.items())) for trial in study.trials]
    assert len(set(points)) == len(points)  # the resumed search drew new points, not its first ones again
    for name, files in before.items():  # no folder reused: the old ones are as they were
        assert _files(tmp_path / name) == files
    new = [folder for folder in tmp_path.iterdir() if folder.name.isdigit() and folder.name not in before]
    assert all(_metrics(folder)["status"] == "completed" for folder in new)
    assert len(before) - 1 + len(new) == 4 and min(int(f.name) for f in new) > int(half_made.parent.name)
    assert f"\n| {half_made.parent.name} |" not in (tmp_path / "summary.md").read_text()  # no job, no row
