"""Train one LeNet-5 variant on Fashion-MNIST, select the best epoch on validation accuracy, test it.

python train.py                                   # 15-epoch baseline
python train.py -m model=bn_pre,bn_post optim.lr=1e-2,1e-3,1e-4   # a sweep
"""

from __future__ import annotations

import atexit
import gc
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fashion_lenet import lifecycle
from fashion_lenet.config import register_resolvers, validate
from fashion_lenet.jobfiles import job_hparams
from fashion_lenet.resume import how_to_resume, resume_mode, solo_checkpoint


def train(cfg: DictConfig) -> dict:
    """Run one job and return what it wrote to metrics.json."""
    # Imported here, in the job's process: a launcher that runs jobs in other processes (joblib, SLURM) then
    # skips torch, Lightning, torchvision and torchmetrics (`import train`: 2 s -> 0.2 s on a 2-core CPU).
    import lightning.pytorch as pl

    from fashion_lenet.callbacks import EpochHistory
    from fashion_lenet.console import quiet_lightning
    from fashion_lenet.module import LeNetModule

    quiet_lightning()  # first: Lightning's own console handler would print an early error twice
    hydra_cfg = HydraConfig.get()
    validate(cfg, multirun=hydra_cfg.mode == RunMode.MULTIRUN)
    output_dir = Path(hydra_cfg.runtime.output_dir)
    ckpt_path = solo_checkpoint(output_dir, cfg.ckpt_path, resume_mode(cfg))  # before anything is built: may refuse
    lifecycle.prepare(cfg)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # fails fast, with advice, when the data is missing or corrupted
    node = lambda key: OmegaConf.to_container(cfg[key], resolve=True) or None  # noqa: E731
    module = LeNetModule(node("model"), node("optim"), node("scheduler"), cfg.cuda_graph, cfg.label_smoothing)
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate(cfg.logger))
    history = next(c for c in callbacks if isinstance(c, EpochHistory))
    job = lifecycle.JobRecord(output_dir, job_hparams(cfg, hydra_cfg.runtime.choices), trainer.logger)
    return lifecycle.run(trainer, module, datamodule, [job], history, ckpt_path, how_to_resume(hydra_cfg))[0]


register_resolvers()  # before @hydra.main composes the config: conf/logger's ${run_name:}, conf/data's ${project_root:}


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Returns the best validation accuracy for sweepers; a diverged run fails like any job without a result."""
    freeze_objects_at_exit()  # here, not under __main__: a launcher's worker processes run main() only
    return lifecycle.result(train(cfg))


def freeze_objects_at_exit() -> None:
    """At exit, skip the garbage collector's last walk over torch's objects (1-1.5 s per process on 2 cores)."""
    atexit.unregister(gc.freeze)  # once per process, however many jobs it runs
    atexit.register(gc.freeze)


if __name__ == "__main__":
    main()
