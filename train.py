"""Train one LeNet-5 variant on Fashion-MNIST, select the best epoch on validation accuracy, test it.

python train.py                                   # 15-epoch baseline
python train.py -m model=bn_pre,bn_post optim.lr=1e-2,1e-3,1e-4   # a sweep
"""

from __future__ import annotations

import atexit
import gc
import logging
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fashion_lenet.config import validate
from fashion_lenet.errors import DivergedError
from fashion_lenet.results import (
    METRICS_FILE,
    best_checkpoint_results,
    device_name,
    job_hparams,
    library_versions,
    write_json_atomic,
)
from fashion_lenet.resume import how_to_resume, last_checkpoint

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from fashion_lenet.module import LeNetModule

log = logging.getLogger("train")


def train(cfg: DictConfig) -> dict:
    """Run one job and return what it wrote to metrics.json."""
    # Imported here, in the job's process: a launcher that runs jobs in other processes (joblib, SLURM) then
    # skips torch, Lightning, torchvision and torchmetrics (`import train`: 2 s -> 0.2 s on a 2-core CPU).
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from fashion_lenet.callbacks import EpochHistory
    from fashion_lenet.console import quiet_lightning
    from fashion_lenet.module import LeNetModule

    quiet_lightning()
    hydra_cfg = HydraConfig.get()
    validate(cfg, multirun=hydra_cfg.mode == RunMode.MULTIRUN)
    output_dir = Path(hydra_cfg.runtime.output_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # fails fast, with advice, when the data is missing or corrupted
    node = lambda key: OmegaConf.to_container(cfg[key], resolve=True) or None  # noqa: E731
    module = LeNetModule(node("model"), node("optim"), node("scheduler"), cuda_graph=cfg.cuda_graph)
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate(cfg.logger))

    start, started_at = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    history = next(c for c in callbacks if isinstance(c, EpochHistory))
    hparams = job_hparams(cfg, hydra_cfg.runtime.choices)
    device = device_name(trainer.strategy.root_device)
    metrics = hparams | {"device": device, "versions": library_versions(), "started_at": started_at}
    ckpt_path = cfg.ckpt_path or last_checkpoint(output_dir, cfg.resume)
    try:
        with warnings.catch_warnings():
            if ckpt_path:  # resuming: the run's folder holds its own checkpoints, nothing to warn about
                warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SystemExit as stop:  # Lightning turns Ctrl-C and SIGTERM into SystemExit, after saving last.ckpt
        write_json_atomic(output_dir / METRICS_FILE, metrics | {"status": "interrupted", "history": history.history})
        log.warning("interrupted; resume with: %s", how_to_resume(hydra_cfg))
        raise SystemExit(143 if isinstance(stop, SIGTERMException) else 130) from None
    # A copy: testing the best checkpoint restores the callbacks' state, history included, to that epoch's.
    metrics["history"] = rows = list(history.history)
    if history.diverged:
        metrics |= {"status": "diverged", "best_val_acc": None, "test_acc": None}
    else:
        metrics |= {"status": "completed"} | evaluate_best_checkpoint(trainer, module, datamodule, rows)
        trainer.logger.log_hyperparams(
            hparams, {"hp/best_val_acc": metrics["best_val_acc"], "hp/test_acc": metrics["test_acc"]}
        )
        trainer.logger.finalize("success")  # testing closed the writer; the line above opened a new one
    metrics["final_train_acc"] = rows[-1].get("train_acc") if rows else None
    metrics["cuda_graph"] = module.uses_cuda_graph
    metrics["wall_time_s"] = time.perf_counter() - start
    if trainer.is_global_zero:  # one writer when several processes train one model (DDP)
        write_json_atomic(output_dir / METRICS_FILE, metrics)
    return metrics


def evaluate_best_checkpoint(trainer: pl.Trainer, module: LeNetModule, datamodule, history: list[dict]) -> dict:
    """Test the checkpoint with the best validation accuracy, once, on the official test set."""
    best = trainer.checkpoint_callback.best_model_path  # the monitored callback; last.ckpt has its own
    tested = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    best_val_acc = float(trainer.checkpoint_callback.best_model_score)
    test_acc, test_loss = tested["test_best/acc"], tested["test_best/loss"]
    return best_checkpoint_results(history, best_val_acc, best, test_acc, test_loss, module.confusion.compute())


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Returns the best validation accuracy for sweepers; a diverged run fails like any job without a result."""
    freeze_objects_at_exit()  # here, not under __main__: a launcher's worker processes run main() only
    metrics = train(cfg)
    if metrics["status"] == "diverged":
        epoch = len(metrics["history"]) - 1
        raise DivergedError(f"training diverged in epoch {epoch}: the loss is no longer finite (job marked diverged)")
    return metrics["best_val_acc"]


def freeze_objects_at_exit() -> None:
    """At exit, skip the garbage collector's last walk over torch's objects (1-1.5 s per process on 2 cores)."""
    atexit.unregister(gc.freeze)  # once per process, however many jobs it runs
    atexit.register(gc.freeze)


if __name__ == "__main__":
    main()
