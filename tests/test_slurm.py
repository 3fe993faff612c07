"""Sweeps against a real one-node Slurm 22.05 cluster (tests/slurm_cluster.py): the README's commands, a failed job,
pre-emption (`scontrol requeue`), the signal before a time limit (USR2, submitit's requeue), and `scancel`; a fused
group sent as one Slurm job (fused_slurm) is requeued too. Which groups form is tested without Slurm (test_fused.py,
submitit's local executor)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import slurm_cluster
from conftest import TINY, run_cli

pytestmark = pytest.mark.cluster  # make test-cluster (3.5 min here, mostly Slurm's own waits), not make test
NO_GPU = "hydra.launcher.gpus_per_node=0"  # the test node has none (GPUs under Slurm are not tested here)
THREADS = "threads=1"  # local and Slurm runs compare bit for bit at one thread count
# Long enough to stop a job in its second epoch: 150 batches an epoch, 4 epochs
LONGER = [*(o for o in TINY if "max_epochs" not in o and "limit_train" not in o), "trainer.max_epochs=4",
          "++trainer.limit_train_batches=150", THREADS]  # fmt: skip


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> dict[str, str]:
    """The cluster, started once for this module: the environment that reaches it (SLURM_CONF, sacct's stand-in)."""
    state = tmp_path_factory.mktemp("slurm")
    try:
        env = slurm_cluster.start(state)
    except slurm_cluster.ClusterUnavailable as reason:
        if slurm_cluster.must_start():
            pytest.fail(f"no Slurm cluster on CI (CI={os.environ['CI']}), where one must start: {reason}")
        pytest.skip(f"no Slurm cluster here: {reason}")
    yield env
    slurm_cluster.stop(state)


def _metrics(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


def _numbers(metrics: dict) -> tuple:
    """What must repeat bit for bit: each epoch's metrics (not its timings) and the test accuracy."""
    rows = [{k: v for k, v in row.items() if not k.endswith("_time_s")} for row in metrics["history"]]
    return rows, metrics["test_acc"], metrics["best_epoch"]


def _sweep(sweep_dir: Path, env: dict, *overrides: str) -> subprocess.CompletedProcess:
    return run_cli("train.py", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}", env=env)


def _slurm(env: dict, *command: str) -> str:
    return subprocess.run(command, env=os.environ | env, capture_output=True, text=True, check=True).stdout


def _stop_in_epoch_two(env: dict, last_checkpoint: Path, *stop: str, task: str = "_0") -> threading.Thread:
    """In the background: once the first epoch is saved (its last.ckpt), run the stop command on its Slurm job (the
    array task ending in `task`, or the job itself when it is no array)."""

    def act() -> None:
        deadline = time.monotonic() + 120
        while not last_checkpoint.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        jobs = _slurm(env, "squeue", "-h", "-o", "%i").split()  # `12` alone, or array tasks `12_0`, `12_1`
        _slurm(env, *stop, next((job for job in jobs if job.endswith(task)), jobs[0]))

    thread = threading.Thread(target=act)
    thread.start()
    return thread


def test_a_slurm_sweep_gives_the_numbers_of_the_same_jobs_run_locally(slurm, tmp_path):
    grid = ["model=baseline,dropout", *TINY, THREADS]
    on_slurm = _sweep(tmp_path / "slurm", slurm, "hydra/launcher=slurm", NO_GPU, *grid)
    assert on_slurm.returncode == 0, on_slurm.stderr[-3000:]
    local = _sweep(tmp_path / "local", slurm, *grid)
    assert local.returncode == 0, local.stderr[-3000:]
    for job in range(2):
        assert _numbers(_metrics(tmp_path / "slurm" / str(job))) == _numbers(_metrics(tmp_path / "local" / str(job)))
    assert len(list((tmp_path / "slurm" / ".submitit").glob("*_[01]"))) == 2  # a Slurm array of two tasks


def test_a_failed_slurm_job_fails_the_sweep_and_says_so_in_the_summary(slurm, tmp_path):
    # the node has no GPU: the second job's trainer cannot start there
    result = _sweep(tmp_path, slurm, "hydra/launcher=slurm", NO_GPU, "trainer.accelerator=cpu,gpu", *TINY[:-2])
    assert result.returncode != 0
    assert _metrics(tmp_path / "0")["status"] == "completed" and _metrics(tmp_path / "1")["status"] == "failed"
    summary = (tmp_path / "summary.md").read_text()
    assert "| completed |" in summary and "| failed (InstantiationException: " in summary


def test_requeued_jobs_continue_by_themselves_to_the_numbers_of_an_uninterrupted_run(slurm, tmp_path):
    # two array tasks of one sweep, each stopped in its second epoch: job 0 pre-empted with requeue (SIGTERM, then
    # the job runs again), job 1 sent what Slurm sends before the time limit (USR2: submitit requeues it)
    grid = ["seed=0,1", *LONGER]
    stoppers = [_stop_in_epoch_two(slurm, tmp_path / "slurm" / "0/checkpoints/last.ckpt", "scontrol", "requeue"),
                _stop_in_epoch_two(slurm, tmp_path / "slurm" / "1/checkpoints/last.ckpt", "scancel", "--signal=USR2",
                                   task="_1")]  # fmt: skip
    result = _sweep(tmp_path / "slurm", slurm, "hydra/launcher=slurm", NO_GPU, *grid)
    for stopper in stoppers:
        stopper.join()
    assert result.returncode == 0, result.stderr[-3000:]
    local = _sweep(tmp_path / "local", slurm, *grid)
    assert local.returncode == 0, local.stderr[-3000:]
    for job in range(2):
        assert _numbers(_metrics(tmp_path / "slurm" / str(job))) == _numbers(_metrics(tmp_path / "local" / str(job)))
        logs = "".join(path.read_text() for path in (tmp_path / "slurm" / ".submitit").glob(f"*_{job}/*_log.*"))
        assert logs.count("Restored all states from the checkpoint") == 1, job  # its second attempt continued


def test_a_requeued_fused_group_continues_by_itself_to_the_numbers_of_an_uninterrupted_group(slurm, tmp_path):
    grid = ["seed=0,1", *LONGER]  # two jobs, one group: one Slurm job (submitit's folder per job)
    stopper = _stop_in_epoch_two(slurm, tmp_path / "slurm" / "fused_groups/0/last.ckpt", "scontrol", "requeue")
    result = _sweep(tmp_path / "slurm", slurm, "hydra/launcher=fused_slurm", NO_GPU, *grid)
    stopper.join()
    assert result.returncode == 0, result.stderr[-3000:]
    local = _sweep(tmp_path / "local", slurm, "hydra/launcher=fused", *grid)
    assert local.returncode == 0, local.stderr[-3000:]
    for job in range(2):
        assert _numbers(_metrics(tmp_path / "slurm" / str(job))) == _numbers(_metrics(tmp_path / "local" / str(job)))
    assert len([p for p in (tmp_path / "slurm" / ".submitit").iterdir() if p.is_dir()]) == 1
    logs = "".join(path.read_text() for path in (tmp_path / "slurm" / ".submitit").glob("*/*_log.*"))
    assert logs.count("Restored all states from the checkpoint") == 1  # the second attempt continued


def test_a_sweep_whose_job_was_cancelled_finishes_with_resume(slurm, tmp_path):
    grid = ["hydra/launcher=slurm", NO_GPU, "seed=0,1", *LONGER]
    stopper = _stop_in_epoch_two(slurm, tmp_path / "0" / "checkpoints" / "last.ckpt", "scancel")
    cancelled = _sweep(tmp_path, slurm, *grid)
    stopper.join()
    assert cancelled.returncode != 0
    assert "(state: CANCELLED)" in cancelled.stderr and "Traceback" not in cancelled.stderr  # one line, no traceback
    statuses = [_metrics(tmp_path / str(job))["status"] for job in range(2)]
    assert sorted(statuses) == ["completed", "interrupted"], statuses
    done = statuses.index("completed")
    kept = (tmp_path / str(done) / "metrics.json").stat().st_mtime_ns
    resumed = _sweep(tmp_path, slurm, *grid, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [_metrics(tmp_path / str(job))["status"] for job in range(2)] == ["completed", "completed"]
    assert (tmp_path / str(done) / "metrics.json").stat().st_mtime_ns == kept  # the completed job untouched
