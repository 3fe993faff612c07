import json
import threading

import pytest
import torch
from conftest import TINY, run_cli, tensorboard_run

from fashion_lenet.sweep.naming import MAX_RUN_NAME
from train import train

METRICS_KEYS = {
    "technique", "model", "optimizer", "lr", "weight_decay", "dropout_p", "batch_size", "seed", "max_epochs",
    "label_smoothing", "max_shift", "best_epoch", "best_val_acc", "test_acc", "final_train_acc", "history",
    "wall_time_s", "device", "versions", "status",
}  # fmt: skip


@pytest.mark.parametrize("variant", ["baseline", "dropout", "dropout2", "bn_pre", "bn_post"])
def test_each_variant_trains_and_writes_checkpoints_metrics_and_events(make_cfg, tmp_path, variant):
    metrics = train(make_cfg(f"model={variant}", *TINY))
    assert metrics["status"] == "completed"
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert METRICS_KEYS <= written.keys() and written["model"] == variant
    assert [set(row) for row in written["history"]] == [
        {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "train_time_s", "epoch_time_s"}
    ]
    checkpoints = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and any(name.startswith("epoch00-val_acc") for name in checkpoints)
    settings = f"model={variant},{','.join(o.lstrip('+') for o in TINY)}"
    assert tensorboard_run(tmp_path).name == settings[:MAX_RUN_NAME]  # a folder name's length, at most
    assert 0.0 <= written["test_acc"] <= 1.0 and written["best_epoch"] == 0


def test_test_accuracy_is_that_of_the_best_validation_checkpoint(make_cfg, tmp_path):
    metrics = train(make_cfg(*TINY, "trainer.max_epochs=3", "++trainer.limit_train_batches=5"))
    best = max(metrics["history"], key=lambda row: row["val_acc"])
    assert metrics["best_epoch"] == best["epoch"]
    assert metrics["best_val_acc"] == pytest.approx(best["val_acc"])
    # the per-epoch test curve of that epoch and the re-tested best checkpoint see the same weights
    assert metrics["test_acc"] == pytest.approx(best["test_acc"])
    assert len(metrics["history"]) == 3 and metrics["final_train_acc"] == metrics["history"][-1]["train_acc"]
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert len(written["history"]) == 3 and written["final_train_acc"] == written["history"][-1]["train_acc"]
    checkpoint = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == best["epoch"]


def test_tensorboard_has_every_curve_and_the_final_hparams_when_train_returns(make_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = train(make_cfg(*TINY, "trainer.max_epochs=2"))
    assert not _open_event_writers()  # all written and closed: nothing still being written into the folder
    events = EventAccumulator(str(tensorboard_run(tmp_path)))
    events.Reload()
    for curve in ("train/loss", "train/acc", "val/loss", "val/acc", "test/acc"):
        assert len(events.Scalars(curve)) == 2, curve  # one point per epoch
    assert events.Scalars("val/acc")[-1].value == pytest.approx(metrics["history"][-1]["val_acc"])
    assert events.Scalars("hp/test_acc")[0].value == pytest.approx(metrics["test_acc"])  # the HPARAMS tab's


def _open_event_writers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if type(t).__name__ == "_AsyncWriterThread" and t.is_alive()]


def test_a_diverged_run_closes_its_event_writer_too(make_cfg, tmp_path):
    metrics = train(make_cfg(*TINY, "optim=sgd", "optim.lr=1e4"))
    assert metrics["status"] == "diverged"
    assert not _open_event_writers()  # its curves are on disk and no writer thread outlives the run


def test_used_by_command_creates_six_complete_job_folders(tmp_path):
    overrides = [o for o in TINY if not o.startswith("trainer.max_epochs")]
    result = run_cli(
        "train.py", "-m", "model=bn_pre,bn_post", "optim.lr=1e-2,1e-3,1e-4", "trainer.max_epochs=1",
        *overrides, f"hydra.sweep.dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3", "4", "5"]
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["status"] == "completed"
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert len(list((job / "checkpoints").glob("epoch*.ckpt"))) == 1
        # named by what differs between the jobs, as Hydra wrote the values
        assert tensorboard_run(job).name == f"model={metrics['model']},optim.lr={metrics['lr']}"
    written = [json.loads((job / "metrics.json").read_text()) for job in jobs]
    expected = {(model, lr) for model in ("bn_pre", "bn_post") for lr in (1e-2, 1e-3, 1e-4)}
    assert {(m["model"], m["lr"]) for m in written} == expected
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("| completed |") == 6
