"""Fixtures: configs composed in-process (as Hydra would) with outputs in a temporary folder."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from zygote import Zygote

from fashion_lenet.sweep.config import PROJECT_ROOT, compose_job
from fashion_lenet.training.data import ensure_raw_files

# A training run that touches every stage and finishes in seconds: 3 training batches, 500 validation images (and
# 500 of the test set's for its curve, 500 for the best checkpoint's test), each evaluated in 2 batches. No sanity
# check before training: the runs compared with recorded numbers (solo_reference.py) keep Lightning's, and show
# that its batches do not count.
TINY = [
    "trainer.max_epochs=1",
    "++trainer.limit_train_batches=3",
    "++trainer.limit_val_batches=2",
    "++trainer.limit_test_batches=2",
    "++trainer.num_sanity_val_steps=0",
    "data.eval_batch_size=250",
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


def run_cli(*args: str, cwd: Path = PROJECT_ROOT, timeout: float = 600, env: dict | None = None,
            fresh: bool = False) -> subprocess.CompletedProcess:  # fmt: skip
    """Run a project command the way a user types it (env: variables to set on top of this process's): forked from
    the test process's zygote (zygote.py), or, with `fresh`, in a new interpreter (a test of what it imports)."""
    env = _command_env() | (env or {})
    if fresh:
        return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
    global _zygote
    if _zygote is None:
        _zygote = Zygote.start(_command_env())
        atexit.register(_zygote.stop)
    with tempfile.TemporaryDirectory() as streams:
        out, err = Path(streams, "stdout"), Path(streams, "stderr")
        started = time.monotonic()
        code = _zygote.run(list(args), str(cwd), env, str(out), str(err), timeout)
        if code == -signal.SIGKILL and time.monotonic() - started >= timeout:
            raise subprocess.TimeoutExpired([sys.executable, *args], timeout, out.read_text(), err.read_text())
        return subprocess.CompletedProcess([sys.executable, *args], code, out.read_text(), err.read_text())


_zygote: Zygote | None = None


def _command_env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(PROJECT_ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    return os.environ | {"PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


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


# The modules that take longest, first: pytest-xdist hands whole modules (--dist loadscope) to workers in collection
# order, so a long module collected last would run alone at the end. Measured (durations) 2026-12-06, 2-core CPU.
LONGEST_FIRST = ("test_fused.py", "test_resume.py", "test_launchers.py", "test_reliability.py", "test_pruning.py",
                 "test_bench.py", "test_one_stack.py", "test_distillation.py", "test_train.py")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
