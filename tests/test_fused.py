"""hydra/launcher=fused: each member of a fused group is the job it would be alone, and writes what it writes."""

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY, assert_one_device_per_worker, run_cli, tensorboard_run

from fashion_lenet.analysis.evaluate import evaluate
from fashion_lenet.sweep.config import PROJECT_ROOT
from fashion_lenet.training.checkpoints import load_checkpoint
from fashion_lenet.training.module import LeNetModule
from train import train

FUSED = ["-m", "hydra/launcher=fused"]
THREADS = "threads=1"  # both sides add in one order
PROBE = "+callbacks.initial_weights._target_=conftest.RecordInitialWeights"
# A group of 4: seed (initial weights, batches) x learning rate; jobs 0 and 3 differ in both.
GRID = ["seed=0,1", "optim.lr=0.001,0.003", "optim.weight_decay=1e-4", THREADS]
SOLO = {0: ["seed=0", "optim.lr=0.001"], 3: ["seed=1", "optim.lr=0.003"]}
# Tolerances by the number of steps. The fused kernels (grouped convolution, batched matmul, one BatchNorm over
# all members' channels) add in another order than the solo ones: float32 rounding, ~1e-7 relative, which training
# then amplifies (Adam turns the sign of a near-zero gradient into a full step). Measured 2026-12-03, 2-core CPU,
# threads=1: after 1 step <= 2e-7 relative (dropout and BatchNorm); after 30 steps up to 2e-4 in the train loss and
# 1.5e-3 in the val loss (bn_pre), no more than the same solo run differs from itself at 2 threads instead of 1
# (5.6e-4 val loss, dropout). Accuracies: 0.5 % of the validation images (TINY: 500 of them, 2.5 images).
TOLERANCES = {1: (1e-6, 1e-6), 30: (3e-3, 10 / 2000)}  # steps: (loss rtol, accuracy atol)


def _metrics(job_dir) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


def _numbers(metrics: dict) -> list[dict]:
    """A job's history without its timings: what must repeat bit for bit."""
    return [{k: v for k, v in row.items() if not k.endswith("_time_s")} for row in metrics["history"]]


def _fused_sweep(sweep_dir, *overrides: str) -> subprocess.CompletedProcess:
    return run_cli("train.py", *FUSED, *TINY, *overrides, f"hydra.sweep.dir={sweep_dir}")


# BatchNorm's statistics after 1 step, at the tight bound; dropout over 30 steps (its masks keep matching), with each
# member's own seed, label smoothing and augmentation. The other pairings were measured too (TOLERANCES) and are
# left out to keep make test short.
def test_a_fused_member_starts_from_its_solo_weights_and_follows_its_solo_run(tmp_path, make_cfg):
    _members_follow_their_solo_runs(tmp_path, make_cfg, ["model=bn_pre", *GRID], SOLO, steps=1)


def test_members_with_their_own_dropout_stream_label_smoothing_and_augmentation_follow_their_solo_runs(
        tmp_path, make_cfg):  # fmt: skip
    grid = ["model=dropout", "seed=0,1", "label_smoothing=0.0,0.1", "data.max_shift=1,2", "data.augment=true",
            "optim.lr=0.003", THREADS]  # fmt: skip
    solo = {0: ["seed=0", "label_smoothing=0.0", "data.max_shift=1"], 7: ["seed=1", "label_smoothing=0.1",
                                                                          "data.max_shift=2"]}  # fmt: skip
    _members_follow_their_solo_runs(tmp_path, make_cfg, grid, solo, steps=30)


def _members_follow_their_solo_runs(tmp_path, make_cfg, grid: list[str], solo_overrides: dict, steps: int,
                                    train_loss_rtol: float | None = None) -> None:  # fmt: skip
    """A group's members (those in solo_overrides) start from their solo runs' weights and follow them."""
    loss_rtol, acc_atol = TOLERANCES[steps]
    rtol = {"train_loss": train_loss_rtol or loss_rtol, "val_loss": loss_rtol}
    limit = f"++trainer.limit_train_batches={steps}"
    probe = [PROBE, f"+callbacks.initial_weights.path={tmp_path / 'fused.pt'}"]
    result = _fused_sweep(tmp_path / "fused", *grid, limit, *probe)
    assert result.returncode == 0, result.stderr[-3000:]
    fused_start = torch.load(tmp_path / "fused.pt")
    members = len(fused_start)
    assert members == 2 ** sum("," in o for o in grid)  # one group of every job
    shared = [o for o in grid if "," not in o]
    for member, overrides in solo_overrides.items():
        probe = [PROBE, f"+callbacks.initial_weights.path={tmp_path / f'solo{member}.pt'}"]
        solo = train(make_cfg(*shared, *TINY, limit, *overrides, *probe))
        solo_start = torch.load(tmp_path / f"solo{member}.pt")[0]
        assert solo_start.keys() == fused_start[member].keys()
        for name, tensor in solo_start.items():  # step 0: bit for bit
            assert torch.equal(tensor, fused_start[member][name]), name
        fused = _metrics(tmp_path / "fused" / str(member))
        assert fused["fused_group"]["members"] == members and fused["status"] == "completed"
        for solo_row, fused_row in zip(solo["history"], fused["history"], strict=True):
            for key in ("train_loss", "val_loss"):
                assert fused_row[key] == pytest.approx(solo_row[key], rel=rtol[key]), key
            for key in ("train_acc", "val_acc", "test_acc"):
                assert fused_row[key] == pytest.approx(solo_row[key], abs=acc_atol), key
        assert fused["test_acc"] == pytest.approx(solo["test_acc"], abs=acc_atol)


def test_used_by_sweep_fuses_into_two_groups_whose_members_write_what_solo_jobs_write(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # the whole test set, so evaluating a member's checkpoint on its own must give what the member reported
    everything = "++trainer.limit_test_batches=null"
    result = _fused_sweep(tmp_path, "model=bn_pre,bn_post", "optim.lr=1e-2,1e-3,1e-4", everything)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [tmp_path / str(job) for job in range(6)]
    groups = [_metrics(job)["fused_group"]["jobs"] for job in jobs]
    assert groups == [[0, 1, 2]] * 3 + [[3, 4, 5]] * 3  # bn_pre x 3 lr, bn_post x 3 lr
    for job in jobs:
        metrics = _metrics(job)
        assert metrics["status"] == "completed" and 0 <= metrics["test_acc"] <= 1
        assert (job / ".hydra" / "overrides.yaml").is_file() and (job / "train.log").is_file()
        assert [p.name for p in (job / "checkpoints").iterdir()] == [Path(metrics["best_checkpoint"]).name]
        assert metrics["best_checkpoint"].startswith(str(job / "checkpoints" / "epoch00-val_acc"))
        restored = LeNetModule.load_from_checkpoint(metrics["best_checkpoint"], map_location="cpu")
        assert restored.hparams.optimizer["lr"] == metrics["lr"]  # its own optimizer, not the group's
        assert restored(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
        run = tensorboard_run(job)
        assert run.name == f"model={metrics['model']},optim.lr={metrics['lr']}"  # what differs between the jobs
        events = EventAccumulator(str(run))
        events.Reload()
        for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "test/acc", "test_best/acc", "hp/test_acc"):
            assert len(events.Scalars(tag)) == 1, tag
        assert events.Scalars("hp/test_acc")[0].value == pytest.approx(metrics["test_acc"])
        assert events.Images("test_best/misclassified")
    for job in (jobs[1], jobs[4]):  # one member of each group
        tested = evaluate(Path(_metrics(job)["best_checkpoint"]), PROJECT_ROOT / "data", tmp_path / "eval", "cpu")
        assert tested["test_acc"] == pytest.approx(_metrics(job)["test_acc"], abs=1e-6)
    assert (tmp_path / "summary.md").read_text().count("| completed |") == 6
    report = run_cli("-m", "fashion_lenet.analysis.report", str(tmp_path), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr[-2000:]
    assert (tmp_path / "report" / "report.md").is_file()


def test_a_diverging_member_stops_alone_leaves_the_group_and_the_others_numbers_unchanged(tmp_path):
    sgd = ["optim=sgd", "trainer.max_epochs=2"]
    with_diverging = _fused_sweep(tmp_path / "a", *sgd, "optim.lr=1e-2,1e4")
    without = _fused_sweep(tmp_path / "b", *sgd, "optim.lr=1e-2,1e-3")
    assert with_diverging.returncode != 0  # a job without a result fails the sweep, after the others ran
    assert "training diverged in epoch 0" in with_diverging.stderr
    assert without.returncode == 0, without.stderr[-2000:]
    survivor, diverged = _metrics(tmp_path / "a" / "0"), _metrics(tmp_path / "a" / "1")
    reference = _metrics(tmp_path / "b" / "0")  # the same member beside a healthy one
    assert diverged["status"] == "diverged" and len(diverged["history"]) == 1  # stopped after its first epoch
    assert survivor["status"] == "completed" and len(survivor["history"]) == 2
    group = load_checkpoint(tmp_path / "a" / "fused_groups" / "0" / "last.ckpt")
    assert group["live_members"] == [0] and len(group["state_dict"]["net.features.0.weight"]) == 1  # it left
    log = (tmp_path / "a" / "0" / "train.log").read_text()
    assert "fused group: member(s) [1] left after epoch 0, 1 of 2 train on" in log
    assert _numbers(survivor)[0] == _numbers(reference)[0]  # bit for bit while it was there
    # then float32 rounding apart at most: one member's kernels add in another order (tests/test_shrinking.py)
    for key, value in _numbers(survivor)[1].items():
        assert value == pytest.approx(_numbers(reference)[1][key], rel=1e-4), key
    assert survivor["test_acc"] == pytest.approx(reference["test_acc"], abs=TOLERANCES[30][1])
    assert "| diverged |" in (tmp_path / "a" / "summary.md").read_text()


def test_optuna_trials_launched_together_are_fused_and_each_told_its_value(tmp_path):
    result = _fused_sweep(tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
                          'hydra.sweeper.params.model="choice(baseline)"')  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    trials = [_metrics(tmp_path / str(job)) for job in range(4)]
    assert [t["fused_group"]["members"] for t in trials] == [2, 2, 2, 2]  # two batches of two
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(t["best_val_acc"] for t in trials)


def test_groups_in_two_worker_processes_take_a_device_each_and_train_as_in_one_process(tmp_path):
    """n_jobs=2 on a CPU, with a fake list of two GPU ids: each worker pinned to one, the numbers unchanged."""
    grid = ["model=baseline,bn_post", "seed=0,1", THREADS, "hydra.callbacks.device_placement.devices=[0,1]"]
    in_workers = _fused_sweep(tmp_path / "workers", *grid, "hydra.launcher.n_jobs=2")
    assert in_workers.returncode == 0, in_workers.stderr[-3000:]
    in_process = _fused_sweep(tmp_path / "process", *grid)
    assert in_process.returncode == 0, in_process.stderr[-3000:]
    placements = [_metrics(tmp_path / "workers" / str(job))["placement"] for job in range(4)]
    assert placements[0] == placements[1] and placements[2] == placements[3]  # a group's members: one process
    assert_one_device_per_worker(placements, {"0", "1"})
    for job in range(4):
        worker, alone = _metrics(tmp_path / "workers" / str(job)), _metrics(tmp_path / "process" / str(job))
        assert worker["fused_group"]["jobs"] == alone["fused_group"]["jobs"]
        assert _numbers(worker) == _numbers(alone) and worker["test_acc"] == alone["test_acc"]  # bit for bit


def test_each_fused_group_runs_as_one_submitit_job(tmp_path):
    """hydra/launcher=fused_slurm's code path, with submitit's local executor standing in for SLURM."""
    result = run_cli("train.py", "-m", "hydra/launcher=fused_submitit_local", "model=baseline,bn_post", "seed=0,1",
                     *TINY, f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert [_metrics(tmp_path / str(job))["fused_group"]["jobs"] for job in range(4)] == [[0, 1]] * 2 + [[2, 3]] * 2
    assert len([p for p in (tmp_path / ".submitit").iterdir() if p.name.isdigit()]) == 2  # 2 submitit jobs, not 4


def test_fused_slurm_config_composes_with_one_gpu_per_group():
    result = run_cli("train.py", "hydra/launcher=fused_slurm", "--cfg", "hydra", "--package", "hydra.launcher")
    assert result.returncode == 0, result.stderr
    launcher = yaml.safe_load(result.stdout)
    assert launcher["_target_"].endswith("FusedSlurmLauncher") and launcher["max_members"] == 36
    assert (launcher["gpus_per_node"], launcher["tasks_per_node"]) == (1, 1)


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by make gpu-check)")
ON_THE_GPU = [*(o for o in TINY if o.split("=")[0] not in ("trainer.accelerator", "++trainer.limit_train_batches",
                                                            "trainer.max_epochs")), "trainer.accelerator=gpu"]


def _fused_gpu_sweep(sweep_dir, *overrides: str) -> subprocess.CompletedProcess:
    return run_cli("train.py", *FUSED, *ON_THE_GPU, *overrides, f"hydra.sweep.dir={sweep_dir}")


@cuda_only
@pytest.mark.parametrize("model", ["bn_pre", "dropout"])
def test_a_fused_group_replaying_its_cuda_graph_follows_its_eager_run_over_epochs(tmp_path, model):
    """Written before any GPU ran it (hydra.launcher.cuda_graph is off by default until it passes there)."""
    grid = [f"model={model}", "seed=0,1", "optim.lr=0.001,0.003", "++trainer.limit_train_batches=30",
            "trainer.max_epochs=3", "scheduler=cosine"]  # fmt: skip
    graph = _fused_gpu_sweep(tmp_path / "graph", *grid, "hydra.launcher.cuda_graph=true")
    eager = _fused_gpu_sweep(tmp_path / "eager", *grid)
    assert graph.returncode == 0 and eager.returncode == 0, (graph.stderr + eager.stderr)[-3000:]
    for job in range(4):
        replayed, stepped = _metrics(tmp_path / "graph" / str(job)), _metrics(tmp_path / "eager" / str(job))
        assert replayed["cuda_graph"] is True and stepped["cuda_graph"] is False
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert [r[key] for r in replayed["history"]] == pytest.approx([r[key] for r in stepped["history"]],
                                                                          rel=1e-3)  # fmt: skip


@cuda_only
def test_a_fused_group_replaying_its_cuda_graph_repeats_to_the_last_digit(tmp_path):
    grid = ["model=dropout", "seed=0,1", "++trainer.limit_train_batches=200", "trainer.max_epochs=2",
            "hydra.launcher.cuda_graph=true"]  # fmt: skip
    for run in ("a", "b"):
        result = _fused_gpu_sweep(tmp_path / run, *grid)
        assert result.returncode == 0, result.stderr[-3000:]
    for job in range(2):
        assert _numbers(_metrics(tmp_path / "a" / str(job))) == _numbers(_metrics(tmp_path / "b" / str(job)))
