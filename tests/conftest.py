"""Fixtures: configs composed in-process (as Hydra would) with outputs in a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from fashion_lenet.sweep.config import PROJECT_ROOT, compose_job
from fashion_lenet.training.data import ensure_raw_files

# A training run that touches every stage and finishes in seconds.
TINY = [
    "trainer.max_epochs=1",
    "++trainer.limit_train_batches=3",
    "++trainer.limit_val_batches=2",
    "++trainer.limit_test_batches=2",
    "trainer.accelerator=cpu",
    "callbacks.progress_bar.refresh_rate=0",
]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real Fashion-MNIST, as `make install` leaves it."""
    root = PROJECT_ROOT / "data"
    ensure_raw_files(root)
    return root


@pytest.fixture
def make_cfg(tmp_path, data_root):
    """compose(overrides) -> the job config train() receives, writing into tmp_path."""
    yield lambda *overrides, multirun=False: compose_job(list(overrides), tmp_path, multirun)
    GlobalHydra.instance().clear()


class RecordInitialWeights(pl.Callback):
    """Test probe: saves the weights a run starts training from (every member's, in a fused group) to `path`."""

    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        net = pl_module.net
        if hasattr(net, "member_state_dict"):  # a fused group's FusedLeNet5
            torch.save([net.member_state_dict(n) for n in range(pl_module.members)], self.path)
        else:
            torch.save([{k: v.clone() for k, v in net.state_dict().items()}], self.path)


def run_cli(*args: str, cwd: Path = PROJECT_ROOT, timeout: float = 600, env: dict | None = None
            ) -> subprocess.CompletedProcess:  # fmt: skip
    """Run a project command the way a user types it (env: variables to set on top of this process's)."""
    path = os.pathsep.join(filter(None, [str(PROJECT_ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    env = os.environ | {"PYTHONUNBUFFERED": "1", "PYTHONPATH": path} | (env or {})
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def tensorboard_run(job_dir: Path) -> Path:
    """The job's TensorBoard run: the one folder in the job's folder with event files (named by its settings)."""
    runs = {events.parent for events in Path(job_dir).glob("*/events.out.tfevents.*")}
    assert len(runs) == 1, runs
    return runs.pop()


def assert_one_device_per_worker(placements: list[dict], devices: set[str]) -> None:
    """Two worker processes, each pinned to its own device of the list for all of its jobs."""
    by_process = {}
    for placed in placements:
        assert placed["device"] in devices
        assert by_process.setdefault(placed["process"], placed["device"]) == placed["device"]  # pinned for life
    assert len(by_process) == 2 and set(by_process.values()) == devices
