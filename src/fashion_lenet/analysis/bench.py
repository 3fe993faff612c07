"""Seconds per training epoch (48,000 images, batch 64, Adam): the usual pipeline vs this project's.

    python -m fashion_lenet.analysis.bench                 # naive vs project vs plain-loop floor, on the device
    python -m fashion_lenet.analysis.bench --sweep 4       # 4 one-epoch jobs: basic launcher vs joblib, wall seconds
    python -m fashion_lenet.analysis.bench --fused 1,4,12,36   # model-steps per second: N fused vs one at a time
    python -m fashion_lenet.analysis.bench --fused 3,12 --models baseline,dropout,bn_pre,bn_post   # per variant
    python -m fashion_lenet.analysis.bench --variant cuda_graph=false   # also the project path with these overrides
    python -m fashion_lenet.analysis.bench --profile 200   # where a plain-loop step's time goes, by operator
    python -m fashion_lenet.analysis.bench --json          # machine-readable

The naive pipeline is what most users write: torchvision transforms on PIL images, a DataLoader, a
LightningModule that logs its metrics every step. It is built here, not imported, so it stays a fixed baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.errors import HydraException
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader, Subset
from torchmetrics.classification import MulticlassAccuracy
from torchvision import transforms
from torchvision.datasets import FashionMNIST

from fashion_lenet.sweep.config import PROJECT_ROOT, compose_job, validate
from fashion_lenet.sweep.errors import UserError
from fashion_lenet.training.data import MEAN, STD, FashionMNISTDataModule, ensure_raw_files, split_indices
from fashion_lenet.training.models import LeNet5
from fashion_lenet.training.module import skip_per_step_gpu_lookup

DATA_ROOT = PROJECT_ROOT / "data"
STEPS_PER_EPOCH = 48_000 // 64  # the 80 % training split at batch 64


class _EpochTimer(pl.Callback):
    def __init__(self):
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - self._start)


class _NaiveModule(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net, self.accuracy = LeNet5(), MulticlassAccuracy(num_classes=10, average="micro")

    def training_step(self, batch, batch_idx):
        images, labels = batch
        logits = self.net(images)
        loss = nn.functional.cross_entropy(logits, labels)
        self.accuracy(logits, labels)
        self.log("train/loss", loss, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.accuracy, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def _torch_defaults() -> None:
    """Undo the global flags a project run left set (deterministic algorithms, cuDNN choices, precisions)."""
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("highest")


def naive_epochs(epochs: int, accelerator: str, limit: int | None = None) -> list[float]:
    """Lightning over a torchvision DataLoader with per-item transforms, as most tutorials write it."""
    _torch_defaults()
    pl.seed_everything(0, verbose=False)
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    full = FashionMNIST(str(DATA_ROOT), train=True, transform=to_tensor)
    train_idx, _ = split_indices(len(full), 0.2, 12345)
    loader = DataLoader(Subset(full, train_idx.tolist()), batch_size=64, shuffle=True, num_workers=2,
                        persistent_workers=True, pin_memory=accelerator == "gpu")  # fmt: skip
    timer = _EpochTimer()
    trainer = pl.Trainer(max_epochs=epochs, accelerator=accelerator, devices=1, logger=False, limit_train_batches=limit,
                         enable_checkpointing=False, enable_model_summary=False, callbacks=[timer],
                         enable_progress_bar=False)  # fmt: skip
    trainer.fit(_NaiveModule(), loader)
    return timer.seconds


def project_epochs(epochs: int, accelerator: str, batch_size: int = 64, limit: int | None = None,
                   extra: tuple[str, ...] = ()) -> list[float]:  # fmt: skip
    """train.py's own path (config, DataModule, LeNetModule, callbacks), timed by its EpochHistory."""
    sys.path.insert(0, str(PROJECT_ROOT))
    from train import train  # the script at the project root

    with tempfile.TemporaryDirectory() as output_dir:
        overrides = [f"trainer.max_epochs={epochs}", f"trainer.accelerator={accelerator}",
                     f"data.batch_size={batch_size}", "callbacks.progress_bar.refresh_rate=0",
                     f"++trainer.limit_train_batches={'null' if limit is None else limit}", *extra]  # fmt: skip
        metrics = train(compose_job(overrides, Path(output_dir)))
    return [row["train_time_s"] for row in metrics["history"]]


def _resident_data_and_model(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    _torch_defaults()
    torch.manual_seed(0)
    data = FashionMNISTDataModule(str(DATA_ROOT))
    data.setup()
    images, labels = (t.to(device) for t in data.splits["train"])
    return images, labels, LeNet5().to(device)


def _plain_loop(device: torch.device) -> Callable[[int | None], None]:
    """The floor without Lightning: resident tensors, fused Adam, nothing else. Returns run(steps)."""
    images, labels, net = _resident_data_and_model(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)

    def run(steps: int | None) -> None:  # one epoch's batches, or its first `steps`
        for batch in torch.randperm(len(labels), device=device).split(64)[:steps]:
            loss = nn.functional.cross_entropy(net(images[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


def plain_loop_epochs(epochs: int, device: torch.device, limit: int | None = None) -> list[float]:
    run, seconds = _plain_loop(device), []
    for _ in range(epochs):
        start = time.perf_counter()
        run(limit)
        seconds.append(time.perf_counter() - start)
    return seconds


def plain_loop_profile(steps: int, device: torch.device) -> str:
    """torch.profiler's table for `steps` plain-loop steps: the operators (and on a GPU the kernels) that
    take a training step's time, after a warm-up."""
    run = _plain_loop(device)
    run(20)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiled:
        run(steps)
    by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return f"{steps} steps of the plain loop on {device}\n" + profiled.key_averages().table(sort_by=by, row_limit=15)


def cuda_graph_epochs(epochs: int) -> list[float]:
    """The GPU floor: the whole train step (forward, backward, Adam) captured once and replayed."""
    device = torch.device("cuda")
    images, labels, net = _resident_data_and_model(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, capturable=True)
    static_x, static_y = images[:64].clone(), labels[:64].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph, as CUDA graph capture requires
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(static_x), static_y).backward()
            optimizer.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        nn.functional.cross_entropy(net(static_x), static_y).backward()
        optimizer.step()
    n_full = len(labels) // 64 * 64  # a graph has one shape: full batches only
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in torch.randperm(len(labels), device=device)[:n_full].view(-1, 64):
            static_x.copy_(images[batch])
            static_y.copy_(labels[batch])
            graph.replay()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def typical(seconds: list[float]) -> float:
    """Median epoch, leaving out the first (imports, allocator and kernel warm-up) when there are more."""
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def epoch_benchmark(epochs: int, limit: int | None = None, variants: list[str] = ()) -> dict:
    """Each pipeline's epochs; `variants` are extra project runs, each a space-separated list of overrides."""
    cuda = torch.cuda.is_available()
    accelerator, device = ("gpu", torch.device("cuda")) if cuda else ("cpu", torch.device("cpu"))
    results = {
        "naive": naive_epochs(epochs, accelerator, limit),
        "project": project_epochs(epochs, accelerator, limit=limit),
        "plain_loop": plain_loop_epochs(epochs, device, limit),
    }
    for variant in variants:
        results[f"project {variant}"] = project_epochs(epochs, accelerator, limit=limit, extra=tuple(variant.split()))
    if cuda:
        results["cuda_graph"] = cuda_graph_epochs(epochs)
    name = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    typical_s = {key: typical(value) for key, value in results.items()}
    return {
        "device": name,
        "torch": torch.__version__,
        "epochs": epochs,
        "seconds_per_epoch": typical_s,
        "all_epochs": results,
        "speedup_project_vs_naive": typical_s["naive"] / typical_s["project"],
    }


def sweep_benchmark(jobs: int) -> dict:
    """Wall seconds of `jobs` one-epoch jobs, run one after another and side by side."""
    lrs = ",".join(f"{1e-3 * (1 + i / 10):.5f}" for i in range(jobs))  # distinct jobs, same cost
    walls = {}
    with tempfile.TemporaryDirectory() as root:
        for launcher in ("basic", "joblib"):
            command = [sys.executable, "train.py", "-m", f"optim.lr={lrs}", "trainer.max_epochs=1",
                       "callbacks.progress_bar.refresh_rate=0", f"hydra/launcher={launcher}",
                       f"hydra.sweep.dir={root}/{launcher}"]  # fmt: skip
            start = time.perf_counter()
            subprocess.run(command, cwd=PROJECT_ROOT, check=True, capture_output=True)
            walls[launcher] = time.perf_counter() - start
    return {"jobs": jobs, "wall_s": walls, "speedup_joblib_vs_basic": walls["basic"] / walls["joblib"]}


def _train_seconds_per_step(overrides: list[str], steps: int, root: Path) -> tuple[float, dict]:
    """Seconds per training step of a 2-epoch run through train.py (the second epoch: the first warms up)."""
    limits = [f"++trainer.limit_train_batches={steps}", "++trainer.limit_val_batches=1",
              "++trainer.limit_test_batches=1"]  # fmt: skip
    folder = f"hydra.{'sweep' if '-m' in overrides else 'run'}.dir={root}"
    command = [sys.executable, "train.py", *overrides, "trainer.max_epochs=2", *limits, "threads=null",
               "callbacks.progress_bar.refresh_rate=0", folder]  # fmt: skip
    subprocess.run(command, cwd=PROJECT_ROOT, check=True, capture_output=True)
    metrics = json.loads(next(root.rglob("metrics.json")).read_text())
    return metrics["history"][1]["train_time_s"] / steps, metrics


def fused_benchmark(members: list[int], models: list[str], steps: int = 50) -> dict:
    """Model-steps per second, per model variant: N jobs differing in seed fused into one group vs one solo job at a
    time (the basic launcher's cost: N times one job's step), each through train.py, on the available device. Each
    variant's solo run is timed right before its groups, so a drift of the machine's speed hits both alike."""
    result = {}
    with tempfile.TemporaryDirectory() as root:
        for model in models:
            solo_step, metrics = _train_seconds_per_step([f"model={model}"], steps, Path(root) / model / "solo")
            rows = {}
            for n in members:
                group = ["-m", "hydra/launcher=fused", f"model={model}", f"seed={','.join(map(str, range(n)))}"]
                fused_step, _ = _train_seconds_per_step(group, steps, Path(root) / model / f"{n}")
                # N = 1 is a group of one: the solo path again, a second measurement of it
                rows[n] = {"solo_model_steps_per_s": 1 / solo_step, "fused_model_steps_per_s": n / fused_step,
                           "solo_s_per_model_epoch": solo_step * STEPS_PER_EPOCH,
                           "fused_s_per_model_epoch": fused_step / n * STEPS_PER_EPOCH,
                           "speedup": solo_step * n / fused_step}  # fmt: skip
            result[model] = {"members": rows}
    return {"device": metrics["device"], "steps_timed": steps, "models": result}


def batch_size_benchmark(batch_sizes: list[int], epochs: int) -> dict:
    """How the project's epoch time changes with the batch size (the per-step cost is mostly fixed)."""
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    return {"seconds_per_epoch": {size: typical(project_epochs(epochs, accelerator, size)) for size in batch_sizes}}


def _count(text: str) -> int:
    """argparse type: an integer >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return int(text)


def _counts(text: str) -> list[int]:
    """argparse type: integers >= 1, separated by commas."""
    return [_count(part) for part in text.split(",")]


def _names(text: str) -> list[str]:
    """argparse type: model variants of conf/model, separated by commas."""
    names = text.split(",")
    known = sorted(path.stem for path in (PROJECT_ROOT / "conf" / "model").glob("*.yaml"))
    if unknown := [name for name in names if name not in known]:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown)}: not a model variant (choose from {', '.join(known)})")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=_count, default=3, help="epochs per pipeline (the first is warm-up)")
    parser.add_argument("--sweep", type=_count, metavar="N", help="time N one-epoch jobs: basic vs joblib launcher")
    parser.add_argument("--fused", type=_counts, metavar="N,N,...", help="model-steps/s: N fused members vs solo")
    parser.add_argument("--models", type=_names, default=["baseline"], metavar="M,M,...",
                        help="--fused: these model variants (conf/model), e.g. baseline,dropout,bn_pre,bn_post")
    parser.add_argument("--batch-sizes", type=_counts, metavar="B,B,...", help="time the project's epoch at these")
    parser.add_argument("--limit-batches", type=_count, help="train only this many batches per epoch (--fused: 50)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="OVERRIDES",
        help="also time the project path with these overrides, e.g. 'cuda_graph=false'",
    )
    parser.add_argument("--profile", type=_count, metavar="STEPS", help="profile STEPS plain-loop steps by operator")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    for variant in args.variant:  # a bad override stops the bench here, not after minutes of timing
        try:
            validate(compose_job(variant.split(), Path(tempfile.gettempdir())))
        except HydraException as error:
            message = str(error).partition("\nConfig search path")[0]  # Hydra's search path: not the user's concern
            parser.error(f"--variant {variant!r}: {message}")
    try:
        run(args)
    except UserError as error:
        sys.exit(f"error: {error}")


def run(args: argparse.Namespace) -> None:
    ensure_raw_files(DATA_ROOT)
    cuda = torch.cuda.is_available()
    if not cuda:
        skip_per_step_gpu_lookup()  # every pipeline's Adam as the project's on a CPU
    if args.profile:
        print(plain_loop_profile(args.profile, torch.device("cuda" if cuda else "cpu")))
        return
    if args.batch_sizes:
        result = batch_size_benchmark(args.batch_sizes, args.epochs)
    elif args.sweep:
        result = sweep_benchmark(args.sweep)
    elif args.fused:
        result = fused_benchmark(args.fused, args.models, args.limit_batches or 50)
    else:
        result = epoch_benchmark(args.epochs, args.limit_batches, args.variant)
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.batch_sizes:
        for size, seconds in result["seconds_per_epoch"].items():
            print(f"batch {size:>5}: {seconds:6.2f} s per epoch")
    elif args.fused:
        print(f"model-steps per second on {result['device']}, batch 64, Adam ({STEPS_PER_EPOCH} steps a model-epoch)")
        print(f"  {'model':<9} {'members':>7} {'solo':>8} {'fused':>8} {'s/model-epoch solo':>19} {'fused':>7} "
              f"{'speed-up':>8}")
        for model, rows in result["models"].items():
            for n, row in rows["members"].items():
                print(f"  {model:<9} {n:>7} {row['solo_model_steps_per_s']:8.0f} {row['fused_model_steps_per_s']:8.0f} "
                      f"{row['solo_s_per_model_epoch']:19.2f} {row['fused_s_per_model_epoch']:7.2f} "
                      f"{row['speedup']:7.2f}x")
    elif args.sweep:
        print(f"{args.sweep} one-epoch jobs: " + ", ".join(f"{k} {v:.1f} s" for k, v in result["wall_s"].items()))
        print(f"joblib speed-up: {result['speedup_joblib_vs_basic']:.2f}x")
    else:
        print(f"seconds per training epoch on {result['device']} (median of {args.epochs} epochs, first left out)")
        for name, seconds in result["seconds_per_epoch"].items():
            print(f"  {name:<36} {seconds:7.3f}")
        print(f"project vs naive: {result['speedup_project_vs_naive']:.2f}x")


if __name__ == "__main__":
    main()
