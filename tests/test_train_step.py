"""TrainStep: gradients and running totals match a plain backward; on a GPU the replayed graph matches eager."""

from __future__ import annotations

import copy
import traceback
import warnings

import pytest
import torch
from conftest import TINY
from torch import nn

from fashion_lenet.sweep.config import compose_job
from fashion_lenet.training.data import FashionMNISTDataModule
from fashion_lenet.training.fused import FusedLeNet5
from fashion_lenet.training.losses import TrainingLoss
from fashion_lenet.training.models import LeNet5
from fashion_lenet.training.module import LeNetModule
from fashion_lenet.training.train_step import WARMUP_STEPS, TrainStep
from train import train

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by make gpu-check)")


def _on_the_gpu(*overrides: str) -> list[str]:
    """TINY's job on the GPU; `overrides` replace the TINY keys they name."""
    named = {override.lstrip("+").split("=")[0] for override in overrides} | {"trainer.accelerator"}
    kept = [override for override in TINY if override.lstrip("+").split("=")[0] not in named]
    return [*kept, "trainer.accelerator=gpu", *overrides]


@pytest.fixture(scope="module")
def train_split(data_root):
    data = FashionMNISTDataModule(str(data_root))
    data.setup()
    return data.splits["train"]


def _batches(split, device, sizes):
    """A group of one's batches: images [1, B, 1, 28, 28], labels [1, B]."""
    images, labels = (t.to(device) for t in split)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [(images[None, s : s + n], labels[None, s : s + n]) for s, n in zip(starts, sizes, strict=True)]


def _step(net: nn.Module, device, capture: bool) -> TrainStep:
    """The step of a group of one, without label smoothing, with a plain backward."""
    return TrainStep(net, TrainingLoss([0.0]), lambda loss: loss.backward(), 1, torch.device(device), capture)


def test_totals_and_gradients_match_a_plain_backward(train_split):
    torch.manual_seed(0)
    net = FusedLeNet5(1, norm="pre")  # a group of one: torch's LeNet-5 inside
    reference = LeNet5(norm="pre")
    reference.load_state_dict(net.state_dict())
    step = _step(net, "cpu", capture=True)  # capture: GPU only
    batches = _batches(train_split, "cpu", [64, 64, 17])
    loss_sum = correct = 0.0
    for images, labels in batches:  # no optimizer step: every batch sees the same weights
        step(images, labels)
        reference.zero_grad()
        images, labels = images[0], labels[0]
        logits = reference(images)
        loss = nn.functional.cross_entropy(logits, labels, reduction="sum")
        (loss / len(labels)).backward()
        loss_sum, correct = loss_sum + loss.item(), correct + (logits.argmax(1) == labels).sum().item()
    assert step.graph is None
    for (name, p), q in zip(net.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)  # the last batch's gradients, not a sum
    assert step.take_totals().tolist() == [pytest.approx([loss_sum, correct, 145], rel=1e-5)]
    assert step.take_totals().tolist() == [[0.0, 0.0, 0.0]]  # taking them restarts them


def test_training_counts_optimizer_steps_and_steps_the_scheduler_per_epoch(make_cfg, tmp_path):
    train(make_cfg(*TINY, "trainer.max_epochs=2", "scheduler=cosine"))
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 2 * 3  # 3 batches per epoch (TINY), one optimizer step each
    assert last["lr_schedulers"][0]["last_epoch"] == 2
    assert last["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine end


@cuda_only
@pytest.mark.parametrize("variant", [{"norm": "pre"}, {"norm": "none"}])
def test_cuda_graph_replays_what_eager_steps_compute(train_split, variant):
    torch.manual_seed(0)
    device = torch.device("cuda")
    eager_net = FusedLeNet5(1, **variant).to(device)
    graph_net = copy.deepcopy(eager_net)
    sizes = [64] * (WARMUP_STEPS + 8) + [32] + [64] * 3  # warm-up, capture, replays, a partial batch, replays
    results = []
    for net, capture in ((eager_net, False), (graph_net, True)):
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
        step = _step(net, device, capture)
        for i, (images, labels) in enumerate(_batches(train_split, device, sizes)):
            if i == WARMUP_STEPS + 5:
                net.zero_grad(set_to_none=True)  # as Lightning does before each validation
            step(images, labels)
            optimizer.step()
        results.append(step)
    eager_step, graph_step = results
    assert eager_step.graph is None and graph_step.graph is not None
    torch.testing.assert_close(graph_step.take_totals(), eager_step.take_totals(), rtol=1e-4, atol=1e-3)
    for p, q in zip(graph_net.state_dict().values(), eager_net.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


class _GpuSleep(nn.Module):
    """Holds the GPU for `cycles` clock cycles (0: not at all); a graph records it like any kernel."""

    def __init__(self):
        super().__init__()
        self.cycles = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cycles:
            torch.cuda._sleep(self.cycles)
        return x


@cuda_only
def test_first_replay_draws_its_own_dropout_mask_when_the_capture_stream_lags(train_split, monkeypatch):
    """Before recording, torch resets the graph's random offset on the capture stream. Here that reset is held
    back (a GPU sleep queued just ahead of it, ~0.25 s) until the first replay has set its own offset but not yet
    reached dropout (a sleep recorded at the start of the graph, ~0.75 s), as other processes on the GPU can
    hold it back. The first replay must still draw the mask an eager step draws, not step 0's."""
    capture_begin = torch.cuda.CUDAGraph.capture_begin

    def capture_begin_behind_busy_work(graph, *args, **kwargs):
        torch.cuda._sleep(500_000_000)  # on the capture stream, ahead of torch's reset
        capture_begin(graph, *args, **kwargs)

    monkeypatch.setattr(torch.cuda.CUDAGraph, "capture_begin", capture_begin_behind_busy_work)
    device = torch.device("cuda")
    batches = _batches(train_split, device, [64] * (WARMUP_STEPS + 1))  # warm-up, then capture and replay
    grads = []
    for capture in (False, True):
        torch.manual_seed(0)  # the same weights, and the CUDA generator back at offset 0
        sleep = _GpuSleep()
        net = nn.Sequential(sleep, FusedLeNet5(1, dropout_layers=1)).to(device)
        step = _step(net, device, capture)
        for i, batch in enumerate(batches):
            sleep.cycles = 1_500_000_000 if capture and i == WARMUP_STEPS else 0
            step(*batch)
        assert (step.graph is not None) == capture
        grads.append([p.grad.clone() for p in net.parameters()])
    for eager, replayed in zip(*grads, strict=True):  # no optimizer: each step's gradients show its mask
        torch.testing.assert_close(replayed, eager, rtol=1e-4, atol=1e-5)


@cuda_only
def test_gpu_run_with_the_graph_follows_the_eager_run_over_epochs(tmp_path):
    """Across epoch boundaries (validation, checkpoints, the scheduler) the graph keeps training the same way."""
    common = _on_the_gpu("++trainer.limit_train_batches=30", "trainer.max_epochs=3", "scheduler=cosine")
    graph = train(compose_job(common, tmp_path / "graph"))
    eager = train(compose_job([*common, "cuda_graph=false"], tmp_path / "eager"))
    assert graph["cuda_graph"] is True and eager["cuda_graph"] is False
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert [row[key] for row in graph["history"]] == pytest.approx([row[key] for row in eager["history"]], rel=1e-3)
    losses = [row["train_loss"] for row in graph["history"]]
    assert losses[0] > losses[1] > losses[2]  # still learning after each validation


@cuda_only
@pytest.mark.parametrize("deterministic", ["warn", "false"])
def test_training_steps_after_the_capture_never_wait_for_the_gpu(tmp_path, monkeypatch, deterministic):
    """No host sync from the step after the capture to the last step of the epoch, data fetching included.

    A sync per step makes the host wait for each step's kernels instead of queueing the next ones. On failure
    the message shows where the first sync came from (torch's sync debug mode reports them as warnings).
    """

    def watch_from_after_the_capture_to_the_last_step(module, outputs, batch, batch_idx):
        last = batch_idx + 1 == module.trainer.num_training_batches
        torch.cuda.set_sync_debug_mode("warn" if WARMUP_STEPS <= batch_idx and not last else "default")

    def record(message, *_):  # only sync reports: setting the mode itself warns that it is a prototype
        if "called a synchronizing CUDA operation" in str(message):
            syncs.append("".join(traceback.format_stack(limit=14)[:-1]))

    monkeypatch.setattr(LeNetModule, "on_train_batch_end", watch_from_after_the_capture_to_the_last_step)
    overrides = _on_the_gpu("++trainer.limit_train_batches=30")
    syncs: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            metrics = train(compose_job([*overrides, f"trainer.deterministic={deterministic}"], tmp_path))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert metrics["cuda_graph"] is True
    assert not syncs, f"{len(syncs)} host syncs in {30 - WARMUP_STEPS - 1} steps; the first from:\n{syncs[0]}"


@cuda_only
@pytest.mark.parametrize("cuda_graph", ["true", "false"])
@pytest.mark.parametrize("model", ["baseline", "dropout"])
def test_same_config_and_seed_give_identical_numbers_on_the_gpu(tmp_path, model, cuda_graph):
    """Deterministic mode (the default) on a GPU: a second run computes the same numbers. The H200 sweeps of
    2026-11-27 repeated the baseline jobs exactly but not always the dropout jobs (docs/performance.md)."""
    overrides = _on_the_gpu("++trainer.limit_train_batches=200", "trainer.max_epochs=2", f"model={model}",
                            f"cuda_graph={cuda_graph}")  # fmt: skip
    runs = [train(compose_job(overrides, tmp_path / str(run))) for run in range(2)]
    keys = ("train_loss", "train_acc", "val_loss", "val_acc")
    first, second = ({key: [row[key] for row in run["history"]] for key in keys} for run in runs)
    assert first == second
