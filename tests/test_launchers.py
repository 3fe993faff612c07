"""Sweeps through Hydra's plugins: joblib (parallel), Optuna search, the Slurm launcher's config. Hydra's submitit
launchers run jobs in tests/test_slurm.py (a real cluster: make test-cluster) and test_fused.py (submitit's local
executor, a fused group per job)."""

import json

import pytest
import yaml
from conftest import PROJECT_ROOT, TINY, assert_one_device_per_worker, run_cli

from fashion_lenet.analysis.search import summarize


def _statuses(sweep_dir, jobs):
    return [json.loads((sweep_dir / str(job) / "metrics.json").read_text())["status"] for job in range(jobs)]


# What a sweep's launcher and sweeper processes import: train.py, the project's Hydra plugins, and the whole sweep
# package (each module alone, so that none of them leans on another to stay light)
LAUNCHER_IMPORTS = ["train", "hydra_plugins.fashion_lenet_fused_launcher", "hydra_plugins.fashion_lenet_sweeper",
                    *sorted(f"fashion_lenet.sweep.{p.stem}".removesuffix(".__init__")
                            for p in (PROJECT_ROOT / "src" / "fashion_lenet" / "sweep").glob("*.py"))]  # fmt: skip


@pytest.mark.parametrize("module", LAUNCHER_IMPORTS)
def test_the_launcher_process_leaves_torch_to_the_jobs(module):
    """A sweep's launcher imports train.py but trains nothing: torch and Lightning load in the job processes only
    (importing torch cost the launcher 2 s on a 2-core CPU and 3.8 s on the H200 machine)."""
    heavy = ("torch", "lightning", "torchvision", "torchmetrics")
    if module.startswith("fashion_lenet.sweep"):  # the package below training and analysis imports neither
        heavy += ("fashion_lenet.training", "fashion_lenet.analysis")
    result = run_cli("-c", f"import sys, {module}; print([m for m in {heavy} if m in sys.modules])", fresh=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_slurm_config_composes_with_one_gpu_per_job():
    result = run_cli("train.py", "hydra/launcher=slurm", "--cfg", "hydra", "--package", "hydra.launcher")
    assert result.returncode == 0, result.stderr
    launcher = yaml.safe_load(result.stdout)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["gpus_per_node"], launcher["tasks_per_node"], launcher["timeout_min"]) == (1, 1, 30)


def test_optuna_search_survives_a_failed_trial_and_records_the_best(tmp_path):
    # seed=-1 is rejected by validation, so the trials that draw it fail; the others must still count
    result = run_cli("train.py", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=4",
                     '+hydra.sweeper.params.seed="choice(0,-1)"', *TINY, f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    statuses = _statuses(tmp_path, 4)
    assert "failed" in statuses and statuses.count("completed") >= 2
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    completed = [json.loads((tmp_path / str(j) / "metrics.json").read_text()) for j in range(4)]
    assert best["best_value"] == max(m["best_val_acc"] for m in completed if m["status"] == "completed")
    # its summary: every trial listed, the best by validation accuracy named, importances, the figures
    report = summarize(tmp_path, tmp_path / "summary")
    text = report.read_text()
    assert text.startswith(f"# Optuna search: {tmp_path}\n\n4 trials: {statuses.count('completed')} completed")
    assert f"val {100 * best['best_value']:.2f} %" in text
    assert text.count("| failed |") == statuses.count("failed") and "| `optim.lr` |" in text
    assert (tmp_path / "summary" / "search_history.png").stat().st_size > 0
    assert (tmp_path / "summary" / "importances.png").stat().st_size > 0


def test_one_run_on_two_processes_with_ddp(tmp_path):
    """Data-parallel training of a single run (here 2 CPU processes with gloo; GPUs work the same way)."""
    result = run_cli("train.py", *TINY, "trainer.devices=2", "trainer.strategy=ddp", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "completed"
    assert (tmp_path / "train_ddp_process_1.log").is_file()  # Lightning re-launched train.py for rank 1


def test_inside_a_slurm_job_lightning_keeps_slurm_ranks_but_not_its_own_requeue(monkeypatch):
    """submitit requeues a job (USR2) and the job resumes from last.ckpt; Lightning's SIGUSR1 requeue stays off."""
    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    from fashion_lenet.training.cluster import environment

    for variable in ("SLURM_NTASKS", "SLURM_JOB_NAME", "SLURM_JOB_ID"):
        monkeypatch.delenv(variable, raising=False)
    assert type(environment()) is LightningEnvironment  # outside Slurm, login node or not
    monkeypatch.setenv("SLURM_NTASKS", "1")  # what srun (submitit's sbatch script) sets in the job step
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    inside = environment()
    assert isinstance(inside, SLURMEnvironment) and inside.auto_requeue is False


def test_the_slurm_tests_fail_on_ci_when_their_cluster_cannot_start_and_skip_elsewhere():
    """CI runs as root with apt-get, where tests/test_slurm.py's cluster starts: a skip there would hide a break."""
    from slurm_cluster import must_start

    assert [must_start({"CI": value}) for value in ("true", "1", "yes", "TRUE")] == [True] * 4
    assert [must_start(env) for env in ({}, {"CI": ""}, {"CI": "false"}, {"CI": "False"}, {"CI": "0"})] == [False] * 5


def _placements(sweep_dir, jobs: int) -> list[dict]:
    return [json.loads((sweep_dir / str(job) / "metrics.json").read_text())["placement"] for job in range(jobs)]


def test_joblib_runs_jobs_in_parallel_processes_each_on_one_device_of_the_machines_list(tmp_path):
    """On a CPU: a fake list of two GPU ids; each job's metrics.json says where it ran (CUDA_VISIBLE_DEVICES)."""
    result = run_cli("train.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=baseline,bn_post",
                     "seed=0,1", *TINY, "hydra.callbacks.device_placement.devices=[3,5]",
                     f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert _statuses(tmp_path, 4) == ["completed"] * 4
    output = result.stdout + result.stderr
    settings = ["model=baseline seed=0", "model=baseline seed=1", "model=bn_post seed=0", "model=bn_post seed=1"]
    for job, setting in enumerate(settings):  # from the worker processes, once each
        assert output.count(f"[{job + 1}/4] job {job}: {setting}") == 1, setting
        assert output.count(f"[{job + 1}/4] job {job} completed in") == 1, setting
    assert "\t#0 : " not in output  # joblib's list of every job's overrides: the start lines say it shorter
    # joblib gives each of the 2 workers its share of the cores, so they do not fight over threads
    devices = {json.loads((tmp_path / str(job) / "metrics.json").read_text())["device"] for job in range(4)}
    assert len(devices) == 1 and devices.pop().startswith("cpu (")
    assert_one_device_per_worker(_placements(tmp_path, 4), {"3", "5"})
    assert sorted(p.name for p in (tmp_path / ".devices").glob("*/*.lock")) == ["3.0.lock", "5.0.lock"]
