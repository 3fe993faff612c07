"""The report on a small synthetic sweep whose right answers are known."""

import json
import math
import shutil

import pytest

from fashion_lenet.analysis.report import best_groups, build_report, load_jobs, welch
from fashion_lenet.training.data import CLASSES


def _job(sweep, number, technique, lr, seed, val, test, train=0.95, status="completed"):
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- technique={technique}\n- optim.lr={lr}\n- seed={seed}\n")
    if status is None:
        return  # a job that never wrote metrics.json (killed)
    history = [{"epoch": e, "train_acc": train - 0.01 * (2 - e), "test_acc": test - 0.01 * (2 - e)} for e in range(3)]
    metrics = {
        "technique": technique, "model": "baseline", "optimizer": "adam", "lr": lr, "weight_decay": 0.0,
        "dropout_p": 0.0, "batch_size": 64, "seed": seed, "max_epochs": 3, "scheduler": "none",
        "status": status, "best_val_acc": val, "test_acc": test, "final_train_acc": train, "history": history,
        "per_class_test_acc": dict.fromkeys(CLASSES, test), "confusion_matrix": [[10] * 10] * 10,
        "device": "cpu (1 threads)", "versions": {"torch": "x"}, "wall_time_s": 10.0,
        "started_at": f"2026-11-27T10:00:{number:02d}+00:00",
    }  # fmt: skip
    if status == "diverged":
        metrics |= {"best_val_acc": None, "test_acc": None}
    (job / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def sweep(tmp_path):
    sweep = tmp_path / "sweep"
    n = iter(range(100))
    # baseline: lr 1e-3 wins on validation although lr 1e-2 has the higher test accuracy
    for seed, (val, test) in enumerate([(0.90, 0.88), (0.91, 0.89), (0.92, 0.90)]):
        _job(sweep, next(n), "baseline", 1e-3, seed, val, test, train=0.93 + 0.01 * seed)
    for seed in range(3):
        _job(sweep, next(n), "baseline", 1e-2, seed, 0.85, 0.95)
    for seed, test in enumerate([0.80, 0.81, 0.82]):
        _job(sweep, next(n), "dropout", 1e-3, seed, 0.89, test)
    _job(sweep, next(n), "dropout", 1e-2, 0, 0.99, 0.99, status="diverged")  # its numbers must not count
    _job(sweep, next(n), "dropout", 1e-2, 1, 0.99, 0.99, status="failed")
    _job(sweep, next(n), "dropout", 1e-2, 2, 0.99, 0.99, status=None)
    return sweep


def test_report_chooses_lr_by_validation_and_averages_over_seeds(sweep, tmp_path):
    best, _ = best_groups(load_jobs([sweep]))
    chosen = {dict(setting)["technique"]: group for setting, group in best.items()}
    assert chosen["baseline"].lr == 1e-3 and chosen["dropout"].lr == 1e-3
    assert chosen["baseline"].mean("test_acc") == pytest.approx(89.0)
    assert chosen["baseline"].std("test_acc") == pytest.approx(1.0)
    assert chosen["baseline"].mean("final_train_acc") == pytest.approx(94.0)

    text = build_report([sweep], tmp_path / "out")
    assert "| baseline | 0.001 | 3 | 94.00 ± 1.00 | 89.00 ± 1.00 | 5.00 ± 0.00 | 91.59 / 89.09 |" in text
    assert "| dropout | 0.001 | 3 |" in text and "81.00 ± 1.00" in text
    for figure in ("figure1_accuracy_per_epoch.png", "figure2_final_accuracies.png", "confusion_matrix_best_run.png"):
        assert (tmp_path / "out" / figure).stat().st_size > 10_000
    assert (tmp_path / "out" / "jobs.csv").read_text().count("\n") == 13


def test_failed_diverged_and_incomplete_jobs_are_listed_not_counted(sweep, tmp_path):
    text = build_report([sweep], tmp_path / "out")
    left_out = text.split("## Jobs left out")[1]
    assert "| diverged |" in left_out and "| failed |" in left_out and "| incomplete |" in left_out
    assert "(9 completed)" in text


def test_welch_test_separates_consistent_gaps_from_noise(sweep):
    best, _ = best_groups(load_jobs([sweep]))
    baseline, dropout = sorted(best.values(), key=lambda g: dict(g.setting)["technique"])
    assert 0 <= welch(baseline, dropout) < 0.01  # 89 ± 1 vs 81 ± 1: clearly different
    noisy = type(baseline)(baseline.setting, 1.0, baseline.jobs[1:])  # 89.5 ± 0.7 vs 89 ± 1
    assert welch(baseline, noisy) > 0.5
    assert math.isnan(welch(baseline, type(baseline)(baseline.setting, 1.0, baseline.jobs[:1])))


def test_report_of_an_empty_folder_is_a_clear_error(tmp_path):
    from fashion_lenet.sweep.errors import UserError

    with pytest.raises(UserError, match="no job folders"):
        build_report([tmp_path], tmp_path / "out")


def test_missing_notes_file_is_refused_before_anything_is_written(sweep, tmp_path):
    from fashion_lenet.sweep.errors import UserError

    with pytest.raises(UserError, match=r"^--notes \S+missing.md is not a file"):
        build_report([sweep], tmp_path / "out", notes=tmp_path / "missing.md")
    assert not (tmp_path / "out").exists()


def test_a_committed_studys_jobs_csv_joins_the_welch_tests_with_the_numbers_of_its_jobs(sweep, tmp_path):
    build_report([sweep], tmp_path / "committed")  # its jobs.csv, as results/<study>/ keeps it
    only_baseline = tmp_path / "baseline"
    for number in range(3):  # a new study: the baseline at lr 1e-3 again
        shutil.copytree(sweep / str(number), only_baseline / str(number))
    text = build_report([only_baseline], tmp_path / "out", against=[tmp_path / "committed" / "jobs.csv"])
    best, _ = best_groups(load_jobs([sweep]))
    baseline, dropout = sorted(best.values(), key=lambda g: dict(g.setting)["technique"])
    p = welch(baseline, dropout)
    assert f"| baseline | dropout (committed/jobs.csv) | +8.00 | {p:.3f} | different |" in text
    assert "| baseline | baseline (committed/jobs.csv) | +0.00 | 1.000 | inside noise |" in text


def test_a_missing_jobs_csv_to_compare_against_is_refused(sweep, tmp_path):
    from fashion_lenet.sweep.errors import UserError

    with pytest.raises(UserError, match=r"^--against \S+nothing.csv is not a file"):
        build_report([sweep], tmp_path / "out", against=[tmp_path / "nothing.csv"])
