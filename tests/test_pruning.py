"""Optuna searches that prune: each trial reports its validation accuracy every epoch, a pruned trial stops there
with its best checkpoint, says `pruned` everywhere (metrics.json, summary.md, the search summary, Optuna's study),
and stays pruned when the search resumes; solo trials and fused members alike. Bad pruner settings stop first."""

import csv
import json
import os
import time

import optuna
import pytest
from conftest import TINY, run_cli

from fashion_lenet.analysis.search import summarize
from fashion_lenet.sweep.summary import progress
from fashion_lenet.sweep.trials import epochs_saved

EPOCHS = 3
# One learning rate that learns and one that cannot (1e-7: chance level), drawn by TPE's seeded random start, so
# the draws repeat. Median pruning from the first completed trial on, from epoch 0.
SEARCH = ["hparams_search=optuna", "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1",
          "hydra.sweeper.pruner.n_warmup_steps=0", "hydra.sweeper.params=null", "hydra.sweeper.n_trials=4",
          "optim.lr=choice(0.003,0.0000001)", "hydra.sweeper.sampler.n_startup_trials=10",
          *(o for o in TINY if "max_epochs" not in o), f"trainer.max_epochs={EPOCHS}",
          "++trainer.limit_train_batches=10"]  # fmt: skip


def _metrics(job_dir) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


def _study(sweep_dir) -> optuna.Study:
    return optuna.load_study(study_name="lenet_regularization", storage=f"sqlite:///{sweep_dir}/optuna.db")


@pytest.mark.parametrize("launcher", ["basic", "fused"])
def test_a_pruned_trial_stops_keeps_its_best_checkpoint_and_is_pruned_everywhere(tmp_path, launcher):
    fused = ["hydra/launcher=fused", "hydra/sweeper/sampler=tpe_batch", "hydra.sweeper.n_jobs=2"]
    result = run_cli("train.py", "-m", *SEARCH, *(fused if launcher == "fused" else []),
                     f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [_metrics(tmp_path / str(job)) for job in range(4)]
    states = {trial.number: trial.state.name for trial in _study(tmp_path).trials}
    assert "pruned" in [m["status"] for m in jobs], [(m["lr"], m["status"]) for m in jobs]
    for number, metrics in enumerate(jobs):  # job folder n trains trial n
        link = json.loads((tmp_path / str(number) / "optuna_trial.json").read_text())
        assert link["trial"] == number
        if metrics["status"] == "pruned":
            assert states[number] == "PRUNED" and metrics["lr"] == pytest.approx(1e-7)
            assert len(metrics["history"]) < EPOCHS  # it stopped at the epoch the pruner said
            assert os.path.isfile(metrics["best_checkpoint"]) and 0 <= metrics["test_acc"] <= 1  # kept and tested
            reported = _study(tmp_path).trials[number].intermediate_values
            assert reported == {row["epoch"]: row["val_acc"] for row in metrics["history"]}
        else:
            assert metrics["status"] == "completed" and states[number] == "COMPLETE"
            assert len(metrics["history"]) == EPOCHS
        if launcher == "fused":
            assert metrics["fused_group"]["members"] == 2
    pruned, saved, _ = epochs_saved(jobs)
    assert "| pruned |" in (tmp_path / "summary.md").read_text()
    assert f"{pruned} trials pruned: {saved} of the {4 * EPOCHS} epochs planned were not trained" in result.stdout
    assert "Not every job completed" not in result.stdout
    text = summarize(tmp_path, tmp_path / "summary").read_text()
    assert f"4 trials: {4 - pruned} completed, {pruned} pruned, 0 not finished" in text
    with (tmp_path / "summary" / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["status"] for row in rows] == [m["status"] for m in jobs]
    assert [int(row["epochs_trained"]) for row in rows] == [len(m["history"]) for m in jobs]
    assert [float(row["best_val_acc"]) for row in rows] == [m["best_val_acc"] for m in jobs]

    if launcher == "basic":  # resumed with more trials: the pruned ones stay pruned, their folders untouched
        kept = {n: (tmp_path / str(n) / "metrics.json").stat().st_mtime_ns for n in range(4)}
        more = run_cli("train.py", "-m", *SEARCH, "hydra.sweeper.n_trials=5", f"hydra.sweep.dir={tmp_path}",
                       "resume=true")  # fmt: skip
        assert more.returncode == 0, more.stderr[-3000:]
        study = _study(tmp_path)
        assert len(study.trials) == 5
        assert {n: study.trials[n].state.name for n in range(4)} == states
        assert {n: (tmp_path / str(n) / "metrics.json").stat().st_mtime_ns for n in range(4)} == kept


@pytest.mark.parametrize(("overrides", "refusal"), [
    (["hparams_search=optuna", "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=-1"],
     "hydra.sweeper.pruner.n_startup_trials=-1 is not allowed: use an integer >= 0"),
    (["hparams_search=optuna", "hydra/sweeper/pruner=hyperband", "hydra.sweeper.pruner.reduction_factor=1"],
     "hydra.sweeper.pruner.reduction_factor=1 is not allowed: use an integer >= 2"),
    (["hparams_search=optuna", "hydra/sweeper/pruner=successive_halving", "hydra.sweeper.pruner.min_resource=0"],
     "hydra.sweeper.pruner.min_resource=0 is not allowed: use auto or an integer >= 1"),
    (["hydra/sweeper/pruner=median", "optim.lr=1e-3,1e-2"],
     "hydra.sweeper.pruner needs the Optuna sweeper: add hparams_search=optuna (or an experiment that searches with "
     "Optuna) to the command"),
])  # fmt: skip
def test_a_bad_pruner_setting_stops_the_search_in_one_line_before_any_trial(tmp_path, overrides, refusal):
    result = run_cli("train.py", "-m", *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
    assert lines == [refusal], result.stderr
    assert not list((tmp_path / "sweep").glob("*/.hydra"))  # no trial started


def test_an_unknown_pruner_is_refused_with_the_ones_there_are(tmp_path):
    result = run_cli("train.py", "-m", "hparams_search=optuna", "hydra/sweeper/pruner=patience",
                     f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "Could not find 'hydra/sweeper/pruner/patience'" in result.stderr
    for choice in ("none", "median", "successive_halving", "hyperband"):
        assert f"\t{choice}\n" in result.stderr, result.stderr
    assert not (tmp_path / "0").exists()


def _job(sweep_dir, number: int, status: str, ended_at: float) -> None:
    job = sweep_dir / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- seed={number}\n")
    (job / "metrics.json").write_text(json.dumps({"status": status}))
    os.utime(job / "metrics.json", (ended_at, ended_at))


def test_a_sweep_says_how_long_it_has_been_running_and_how_long_the_rest_takes(tmp_path):
    (tmp_path / "multirun.yaml").write_text("hydra:\n  sweeper: {}\n  overrides:\n    task: ['seed=0,1,2,3,4']\n")
    started = time.time() - 600
    os.utime(tmp_path / "multirun.yaml", (started, started))
    assert progress(tmp_path, now=started + 60) == "60 s in"  # no job finished: no estimate
    _job(tmp_path, 0, "completed", started - 3600)  # finished before this (resumed) run started: not its pace
    _job(tmp_path, 1, "completed", started + 200)
    _job(tmp_path, 2, "pruned", started + 400)
    # two jobs in 600 s since the start, two of five still to finish: 600 s more
    assert progress(tmp_path, now=started + 600) == "10 min in, about 10 min left"
    _job(tmp_path, 3, "failed", started + 610)
    _job(tmp_path, 4, "diverged", started + 620)
    assert progress(tmp_path, now=started + 620) == "10 min in"  # every job ended
