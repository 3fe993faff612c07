"""Which GPU a sweep's worker process trains on: every GPU of the machine, one lease per process.

A Hydra job callback (conf/config.yaml: hydra.callbacks.device_placement). When a sweep's job starts in a process
that holds no lease yet, the process takes a free slot (device, k) with k < jobs_per_device, by an exclusive lock on
a file `<sweep dir>/.devices/<host>/<device>.<k>.lock`, and sets CUDA_VISIBLE_DEVICES to that device before CUDA
initialises. The lock lasts as long as the process, and the operating system drops it when the process ends, even
when it is killed. So the jobs of joblib's workers, the fused launcher's workers and submitit's local executor
spread over the GPUs, at most jobs_per_device at once on each (several on one GPU when it has room).

Nothing happens outside a multirun, without GPUs (the CPU), or inside a Slurm job (Slurm has placed it). Light to
import: the launcher's process loads it, and torch must not be initialised by it.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig

from fashion_lenet.sweep.errors import ConfigError

log = logging.getLogger("train")
VISIBLE = "CUDA_VISIBLE_DEVICES"
_lease: dict[str, Any] = {}  # this process's: {"device": id, "slot": k, "file": open lock file}


def visible_gpus() -> list[str]:
    """The machine's GPUs without initialising CUDA: CUDA_VISIBLE_DEVICES if set, else nvidia-smi's list."""
    if VISIBLE in os.environ:
        return [d.strip() for d in os.environ[VISIBLE].split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    query = ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"]
    listed = subprocess.run(query, capture_output=True, text=True, timeout=30)
    return listed.stdout.split() if listed.returncode == 0 else []


def take_device(lock_dir: Path, devices: list[str], jobs_per_device: int) -> dict[str, Any]:
    """This process's lease: the first free slot, device after device (slot 0 of every device before slot 1).
    With every slot held (more workers than slots), the device with this process's number, shared, unlocked."""
    if _lease:
        return _lease
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
        raise RuntimeError(f"CUDA is initialised in process {os.getpid()} before its device was chosen")
    lock_dir.mkdir(parents=True, exist_ok=True)
    for slot, device in itertools.product(range(jobs_per_device), devices):
        handle = open(lock_dir / f"{device}.{slot}.lock", "w")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _lease.update(device=device, slot=slot, file=handle)
        break
    else:
        device = devices[os.getpid() % len(devices)]
        log.warning(f"every device slot is taken ({len(devices)} x {jobs_per_device}): process {os.getpid()} "
                    f"shares device {device}; give the launcher at most that many workers")  # fmt: skip
        _lease.update(device=device, slot=None, file=None)
    os.environ[VISIBLE] = _lease["device"]
    return _lease


def current() -> dict[str, Any] | None:
    """What metrics.json records of the placement: the device and the process; None when nothing was placed."""
    return {"device": _lease["device"], "slot": _lease["slot"], "process": os.getpid()} if _lease else None


class DevicePlacement(Callback):
    """devices: `auto` (every GPU the machine shows), a list of device ids, or null (off).
    jobs_per_device: how many worker processes may train on one device at once."""

    def __init__(self, devices: str | list | None = "auto", jobs_per_device: int = 1):
        if devices is not None and devices != "auto" and not isinstance(devices, list | ListConfig):
            raise ConfigError(f"hydra.callbacks.device_placement.devices={devices!r} is not allowed: use auto, "
                              "a list of GPU ids such as [0,1], or null")  # fmt: skip
        if not isinstance(jobs_per_device, int) or isinstance(jobs_per_device, bool) or jobs_per_device < 1:
            raise ConfigError(f"hydra.callbacks.device_placement.jobs_per_device={jobs_per_device!r} is not "
                              "allowed: use an integer >= 1")  # fmt: skip
        self.devices, self.jobs_per_device = devices, jobs_per_device

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.devices is None or config.hydra.mode.name != "MULTIRUN" or "SLURM_JOB_ID" in os.environ:
            return
        devices = visible_gpus() if self.devices == "auto" else [str(d) for d in self.devices]
        if devices:
            lock_dir = Path(config.hydra.sweep.dir) / ".devices" / socket.gethostname()
            take_device(lock_dir, devices, self.jobs_per_device)
