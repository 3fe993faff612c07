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
from omegaconf import DictConfig

from fashion_lenet.sweep.config import register_resolvers, validate
from fashion_lenet.sweep.jobfiles import job_hparams
from fashion_lenet.sweep.resume import how_to_resume, resume_mode
from fashion_lenet.training import lifecycle


def train(cfg: DictConfig) -> dict:
    """Run one job (a group of one) and return what it wrote to metrics.json."""
    # Imported here, in the job's process: a launcher that runs jobs in other processes (joblib, SLURM) then
    # skips torch, Lightning, torchvision and torchmetrics (`import train`: 2 s -> 0.2 s on a 2-core CPU).
    from fashion_lenet.sweep.console import quiet_lightning
    from fashion_lenet.training.checkpoints import solo_checkpoint
    from fashion_lenet.training.group import Member, train_group

    quiet_lightning()  # first: Lightning's own console handler would print an early error twice
    hydra_cfg = HydraConfig.get()
    validate(cfg, multirun=hydra_cfg.mode == RunMode.MULTIRUN)
    output_dir = Path(hydra_cfg.runtime.output_dir)
    ckpt_path = solo_checkpoint(output_dir, cfg.ckpt_path, resume_mode(cfg))  # before anything is built: may refuse
    job = Member(cfg, output_dir, job_hparams(cfg, hydra_cfg.runtime.choices))
    return train_group([job], how_to_resume(hydra_cfg), ckpt_path)[0]


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
