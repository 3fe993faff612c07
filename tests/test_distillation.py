"""Ensembles of trained jobs (analysis/ensemble.py) and students that learn from them (distill.teacher)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY, run_cli
from test_fused import THREADS, _members_follow_their_solo_runs

from fashion_lenet.sweep.config import compose_job, validate
from fashion_lenet.sweep.errors import ConfigError, UserError
from fashion_lenet.training.data import FashionMNISTDataModule
from fashion_lenet.training.module import LeNetModule
from train import train

WHOLE_TEST_SET = "++trainer.limit_test_batches=null"  # each job's test_acc then covers what the ensemble sees


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A sweep of 4 trained jobs of two network shapes: bn_post seeds 5 and 6 (jobs 0, 1), baseline (2, 3)."""
    sweep = tmp_path_factory.mktemp("teacher")
    result = run_cli("train.py", "-m", "hydra/launcher=fused", *TINY, WHOLE_TEST_SET, "model=bn_post,baseline",
                     "seed=5,6", f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep


def _metrics(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


def test_an_ensemble_averages_its_members_softmax_in_the_order_given(teacher, tmp_path, data_root):
    order = [teacher / "0", teacher / "2", teacher / "1"]  # shapes interleaved: the fused forward must reorder
    result = run_cli("-m", "fashion_lenet.analysis.ensemble", *map(str, order), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("ensemble.md", "ensemble.json", "accuracy_vs_members.png", "confusion_matrix_ensemble.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    report = json.loads((tmp_path / "ensemble.json").read_text())
    assert report["jobs"] == [str(job) for job in order]

    # The same numbers from each job's best checkpoint as a plain LeNet-5, one at a time
    datamodule = FashionMNISTDataModule(str(data_root))
    datamodule.setup()
    images, labels = datamodule.splits["test"]
    probabilities = []
    for job in order:
        module = LeNetModule.load_from_checkpoint(_metrics(job)["best_checkpoint"], map_location="cpu").eval()
        with torch.no_grad():
            probabilities.append(torch.cat([module(x).softmax(-1) for x in images.split(1000)]))
    probabilities = torch.stack(probabilities)
    test = report["splits"]["test"]
    one_image = 1 / len(labels)  # another batch size may round a near-tie the other way
    for job, member, p in zip(order, test["members"], probabilities, strict=True):
        accuracy = (p.argmax(-1) == labels).float().mean().item()
        assert member["acc"] == pytest.approx(accuracy, abs=2 * one_image)
        assert member["acc"] == pytest.approx(_metrics(job)["test_acc"], abs=2 * one_image)  # what the job reported
    averaged = probabilities.mean(0)
    assert test["ensemble"]["acc"] == pytest.approx((averaged.argmax(-1) == labels).float().mean().item(),
                                                    abs=2 * one_image)  # fmt: skip
    assert test["acc_by_size"][0] == test["members"][0]["acc"] and test["acc_by_size"][-1] == test["ensemble"]["acc"]
    nll = -averaged[torch.arange(len(labels)), labels].log().mean().item()
    assert test["ensemble"]["nll"] == pytest.approx(nll, rel=1e-4)
    assert test["ensemble"]["ece"] == pytest.approx(_expected_calibration_error(averaged, labels), abs=1e-4)
    assert test["members_mean"]["acc"] == pytest.approx(sum(m["acc"] for m in test["members"]) / 3)
    assert sum(map(sum, report["confusion_matrix"])) == len(labels)
    assert "| ensemble of 3 |" in (tmp_path / "ensemble.md").read_text()


def _expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Σ over 15 equal-width confidence bins of |accuracy − mean confidence| × the bin's share of the images."""
    confidence, predicted = probabilities.max(-1)
    correct = (predicted == labels).float()
    total = 0.0
    for low in torch.arange(bins) / bins:
        inside = (confidence > low) & (confidence <= low + 1 / bins)
        if inside.any():
            total += inside.float().mean() * (correct[inside].mean() - confidence[inside].mean()).abs()
    return float(total)


def test_an_ensemble_of_a_folder_without_finished_jobs_is_refused_in_one_line(tmp_path):
    result = run_cli("-m", "fashion_lenet.analysis.ensemble", str(tmp_path / "nowhere"), "--out", str(tmp_path))
    assert result.returncode != 0
    assert result.stderr == f"error: {tmp_path / 'nowhere'} does not exist: give a job folder or a sweep folder of " \
                            "finished jobs\n"  # fmt: skip


def _numbers(metrics: dict) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith("_time_s")} for row in metrics["history"]]


def test_a_student_records_its_teacher_and_with_alpha_zero_learns_from_the_labels_alone(teacher, make_cfg, tmp_path):
    common = [*TINY, "model=dropout", "data.augment=true", "label_smoothing=0.1"]
    alone = train(compose_job(common, tmp_path / "alone"))
    ignored = train(compose_job([*common, f"distill.teacher={teacher}", "distill.alpha=0"], tmp_path / "ignored"))
    assert _numbers(ignored) == _numbers(alone)  # the teacher changes nothing else: no random number, no weight
    student = train(compose_job([*common, f"distill.teacher={teacher}", "distill.temperature=2",
                                 "distill.alpha=0.9"], tmp_path / "student"))  # fmt: skip
    assert student["history"][0]["train_loss"] != alone["history"][0]["train_loss"]
    assert student["distill"] == {"teacher": [str(teacher / str(job)) for job in range(4)], "teacher_members": 4,
                                  "temperature": 2, "alpha": 0.9}  # fmt: skip
    assert (student["distill_temperature"], student["distill_alpha"]) == (2, 0.9)
    assert "distill" not in alone and "distill_alpha" not in alone
    best = torch.load(student["best_checkpoint"], weights_only=True)  # a plain LeNet-5: no teacher inside
    assert not any(key.startswith("net.nets") for key in best["state_dict"]) and "distillation" not in str(
        best["hyper_parameters"])


def test_fused_students_each_with_its_temperature_and_alpha_follow_their_solo_runs(teacher, tmp_path, make_cfg):
    grid = ["model=bn_post", f"distill.teacher={teacher}", "distill.temperature=2,4", "distill.alpha=0.5,0.9",
            THREADS]  # fmt: skip
    solo = {0: ["distill.temperature=2", "distill.alpha=0.5"], 3: ["distill.temperature=4", "distill.alpha=0.9"]}
    # The teacher's logits of 4 members' batches at once round otherwise than of one (oneDNN blocks by batch size),
    # and the KL term is a difference of two nearly equal logs: 1.6e-6 relative in the train loss after one step
    # (measured 2026-12-06, 2-core Intel Xeon), against 1e-6 without a teacher.
    _members_follow_their_solo_runs(tmp_path, make_cfg, grid, solo, steps=1, train_loss_rtol=1e-5)


def test_a_student_resumes_exactly_where_it_stopped(teacher, make_cfg, tmp_path):
    common = [*TINY, "model=dropout", "++trainer.limit_train_batches=6", "data.augment=true", "distill.alpha=0.7"]
    common_with_teacher = [*common, f"distill.teacher={teacher}"]
    straight = train(make_cfg(*common_with_teacher, "trainer.max_epochs=2"))
    first = train(compose_job([*common_with_teacher, "trainer.max_epochs=1"], tmp_path / "resumed"))
    resumed = train(compose_job([*common_with_teacher, "trainer.max_epochs=2", "ckpt_path=last"], tmp_path / "resumed"))
    assert resumed["history"][0] == first["history"][0]  # loaded, not trained again
    assert _numbers(resumed) == _numbers(straight)
    another = [*common, f"distill.teacher={teacher / '0'}", "trainer.max_epochs=3", "ckpt_path=last"]
    with pytest.raises(UserError, match="^this checkpoint learned from the teacher .* resume with the distill.teacher"):
        train(compose_job(another, tmp_path / "resumed"))


def _copy_with(teacher: Path, folder: Path, key: str, value) -> Path:
    """A copy of teacher job 0 whose saved config says `key` was `value`."""
    shutil.copytree(teacher / "0", folder)
    saved = folder / ".hydra" / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    section, leaf = key.split(".")
    config[section][leaf] = value
    saved.write_text(yaml.safe_dump(config))
    return folder


@pytest.mark.parametrize(("case", "message"), [
    ("missing", "distill.teacher: {folder} does not exist: give a job folder or a sweep folder of finished jobs"),
    ("empty", "distill.teacher: {folder} holds no finished job (status completed or pruned, with its metrics.json)"),
    ("split_seed", "distill.teacher: {folder} was trained on another train/validation split (data.split_seed=7, "
                   "this job's 12345): it has seen this job's validation images, so choosing on them would not be "
                   "honest; train the teacher on this split"),
    ("val_fraction", "distill.teacher: {folder} was trained on another train/validation split (data.val_fraction="
                     "0.1, this job's 0.2)"),
    ("classes", "distill.teacher: {folder} predicts 5 classes, this job 10: give a teacher trained on the same "
                "classes"),
])  # fmt: skip
def test_a_teacher_that_is_missing_or_saw_other_validation_images_or_classes_is_refused(teacher, make_cfg, tmp_path,
                                                                                         case, message):  # fmt: skip
    folder = {
        "missing": lambda: tmp_path / "nowhere",
        "empty": lambda: Path(shutil.copytree(teacher / "0" / "checkpoints", tmp_path / "empty")),
        "split_seed": lambda: _copy_with(teacher, tmp_path / "other", "data.split_seed", 7),
        "val_fraction": lambda: _copy_with(teacher, tmp_path / "other", "data.val_fraction", 0.1),
        "classes": lambda: _copy_with(teacher, tmp_path / "other", "model.num_classes", 5),
    }[case]()
    with pytest.raises(ConfigError) as error:
        validate(make_cfg(*TINY, f"distill.teacher=[{teacher / '1'},{folder}]"))
    assert str(error.value).startswith(message.format(folder=folder)) and "\n" not in str(error.value)


@pytest.mark.parametrize(("override", "message"), [
    ("distill.alpha=1.5", "distill.alpha=1.5 is not allowed: use a number in [0, 1]"),
    ("distill.temperature=0", "distill.temperature=0 is not allowed: use a number > 0"),
    ("distill.teacher=[]", "distill.teacher=[] is not allowed: use null, or a job or sweep folder (or a list of them)"),
])  # fmt: skip
def test_distillation_settings_out_of_range_are_refused_before_any_work(make_cfg, tmp_path, override, message):
    with pytest.raises(ConfigError) as error:
        train(make_cfg(*TINY, override))
    assert str(error.value) == message
    assert not list(tmp_path.iterdir()), "a rejected config must not leave anything that looks like a result"
