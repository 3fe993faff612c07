"""Forward and backward of one training batch: eager, or on a GPU recorded once as a CUDA graph and replayed.

One step trains every member of a group (a solo run is a group of one). A LeNet-5 step is ~50 tiny kernels; on a
GPU the time goes to launching them, not running them. A CUDA graph launches the whole forward + loss + backward as
one unit. The optimizer step stays outside the graph (one fused kernel, called through Lightning so its step
counting, checkpoints and schedulers stay as they are).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

WARMUP_STEPS = 3  # eager steps before capture: cuDNN/cuBLAS handles and autograd must exist before recording


class TrainStep:
    """Computes gradients for one batch of every member into the net's `.grad` and adds each member's loss and hits
    to `totals`.

    images [members, B, 1, 28, 28], labels [members, B]; `losses(images, logits, labels)` -> [members, B] training
    losses (losses.TrainingLoss).
    totals = [members, 3]: per member the sum of its training losses (label-smoothed when set), correct predictions
    and images since the last `take_totals()`; kept on the device (inside the graph when captured), so no step waits
    for the host. With `capture`, CUDA batches of the captured shape replay one graph; the first steps and batches
    of another shape (a partial last batch) run eagerly. Every step computes the same thing either way.
    """

    def __init__(self, net: nn.Module, losses: Callable[[Tensor, Tensor], Tensor],
                 backward: Callable[[Tensor], None], members: int, device: torch.device, capture: bool):  # fmt: skip
        self.net, self.losses, self.backward = net, losses, backward
        self.capture = capture and device.type == "cuda"
        self.totals = torch.zeros(members, 3, device=device)
        self.warmup_steps_done = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_batch: tuple[Tensor, Tensor] | None = None
        self.graph_grads: list[tuple[nn.Parameter, Tensor]] = []  # the gradient tensors each replay rewrites

    def __call__(self, images: Tensor, labels: Tensor) -> None:
        for param, grad in self.graph_grads:
            if param.grad is not grad:  # dropped by someone, e.g. Lightning's zero_grad before validation
                param.grad = grad
        if self.graph is not None and images.shape == self.static_batch[0].shape:
            self.static_batch[0].copy_(images)
            self.static_batch[1].copy_(labels)
            self.graph.replay()
        elif self.capture and self.graph is None:
            if self.warmup_steps_done < WARMUP_STEPS:
                self._warm_up(images, labels)
            else:
                self._capture(images, labels)
                self.graph.replay()  # capturing records the work without doing it
        else:
            self._forward_backward(images, labels)

    def take_totals(self) -> Tensor:
        """Return the totals since the last call and restart them (in place: a graph writes to this tensor)."""
        totals = self.totals.clone()
        self.totals.zero_()
        return totals

    def _forward_backward(self, images: Tensor, labels: Tensor) -> None:
        # In place: a graph's gradient tensors must stay, and fused members' gradients are views of these.
        self.net.zero_grad(set_to_none=False)
        logits = self.net(images)
        losses = self.losses(images, logits, labels)
        # The sum of the members' mean losses: each member's gradient is that of its own mean loss.
        self.backward(losses.mean(1).sum())
        with torch.no_grad():
            self.totals += tally(losses, logits, labels)

    def _warm_up(self, images: Tensor, labels: Tensor) -> None:
        side = torch.cuda.Stream()  # on a side stream, as CUDA graph capture requires
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._forward_backward(images, labels)
        torch.cuda.current_stream().wait_stream(side)
        self.warmup_steps_done += 1

    def _capture(self, images: Tensor, labels: Tensor) -> None:
        self.static_batch = (images.clone(), labels.clone())
        self.net.zero_grad(set_to_none=True)  # the graph allocates the gradients it will rewrite on each replay
        self.graph = torch.cuda.CUDAGraph()
        capture_stream = torch.cuda.Stream()
        with torch.cuda.graph(self.graph, stream=capture_stream):
            self._forward_backward(*self.static_batch)
        # Before recording, torch resets the graph's random-number offset (dropout's) on the capture stream; each
        # replay sets it on this stream. Unordered, a reset delayed by other processes on the GPU can overwrite
        # the first replay's offset, which then repeats step 0's dropout mask (tests/test_train_step.py).
        torch.cuda.current_stream().wait_stream(capture_stream)
        self.graph_grads = [(p, p.grad) for p in self.net.parameters() if p.grad is not None]


def tally(losses: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
    """[members, 3]: each member's loss sum, correct predictions and images in this batch."""
    correct = (logits.argmax(-1) == labels).sum(-1).to(losses.dtype)
    return torch.stack([losses.sum(-1), correct, torch.full_like(correct, losses.shape[-1])], dim=1)
