"""Many LeNet-5s as one network (horizontal fusion): the fused sweeps' forward pass.

The members stay ordinary `LeNet5` modules, each with its own parameters, buffers and optimizer state; only
their tensors are stacked for a step. `StackedLeNet5` walks the first member's layers and runs each layer for
every member at once:

    Conv2d      one grouped convolution, the members side by side as channel groups  [B, N*C, H, W]
    BatchNorm   one BatchNorm over N*C channels: each member keeps its own batch statistics
    Flatten     regroups the channels per member                                      [N, B, F]
    Linear      one batched matrix multiply
    Dropout     each member's mask drawn from its own generator, as its solo run draws it
    ReLU, pool  unchanged (a ReLU before a pool runs after it: the same numbers, less work)

So a member computes what it computes alone, up to the rounding of the fused kernels, and steps out as a
plain `LeNet5` state dict at any time.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fashion_lenet.batchnorm import ManualBatchNorm2d, manual_batch_norm
from fashion_lenet.models import LeNet5


class StackedLeNet5(nn.Module):
    """images [N, B, 1, 28, 28] (member n's batch at n) -> logits [N, B, classes].

    dropout_generators: one per member, or None for members whose network has no dropout.
    """

    def __init__(self, members: list[LeNet5], dropout_generators: list[torch.Generator | None]):
        super().__init__()
        shapes = {tuple(type(layer) for layer in member.modules()) for member in members}
        if len(shapes) != 1:
            raise ValueError("fused members must share one network shape")
        self.members = nn.ModuleList(members)
        self.dropout_generators = dropout_generators
        # Per layer of the template, the same layer of every member (resolved once, not per step).
        self.layers = [list(layers) for layers in zip(*(self._layers(m) for m in members), strict=True)]

    @staticmethod
    def _layers(member: LeNet5) -> list[nn.Module]:
        """The member's layers in the order they run. A ReLU followed by max-pooling runs after it instead: the
        two commute exactly (same values; same gradients, as ties at zero get none either way), and the ReLU then
        works on a quarter of the values (fused step 3.5-3.9 -> 2.8 ms per member, 12 members, 2-core CPU)."""
        layers = [*member.features, *member.classifier]
        for i in range(len(layers) - 1):
            if isinstance(layers[i], nn.ReLU) and isinstance(layers[i + 1], nn.MaxPool2d):
                layers[i], layers[i + 1] = layers[i + 1], layers[i]
        return layers

    def forward(self, images: Tensor) -> Tensor:
        # Channels-last: a grouped convolution on the CPU is about twice as fast per member in this layout
        # and slower than the solo one in NCHW (docs/performance.md).
        x = images.transpose(0, 1).flatten(1, 2).contiguous(memory_format=torch.channels_last)
        for layers in self.layers:
            x = self._run(layers, x)
        return x

    def _run(self, layers: list[nn.Module], x: Tensor) -> Tensor:
        layer, n = layers[0], len(layers)
        if isinstance(layer, nn.Conv2d):
            weight = torch.stack([m.weight for m in layers]).flatten(0, 1)
            bias = torch.stack([m.bias for m in layers]).flatten()
            return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups * n)
        if isinstance(layer, nn.BatchNorm2d):
            return self._batch_norm(layers, x)
        if isinstance(layer, nn.Flatten):
            return x.unflatten(1, (n, -1)).flatten(2).transpose(0, 1)
        if isinstance(layer, nn.Linear):
            weight, bias = torch.stack([m.weight for m in layers]), torch.stack([m.bias for m in layers])
            return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
        if isinstance(layer, nn.Dropout):
            return self._dropout(layers, x)
        if isinstance(layer, nn.ReLU | nn.MaxPool2d):
            return layer(x)
        raise TypeError(f"StackedLeNet5 has no stacked form of {type(layer).__name__}")

    def _batch_norm(self, layers: list[nn.BatchNorm2d], x: Tensor) -> Tensor:
        layer = layers[0]
        function = manual_batch_norm if isinstance(layer, ManualBatchNorm2d) else F.batch_norm
        running_mean = torch.stack([m.running_mean for m in layers])
        running_var = torch.stack([m.running_var for m in layers])
        weight = torch.stack([m.weight for m in layers]).flatten()
        bias = torch.stack([m.bias for m in layers]).flatten()
        y = function(x, running_mean.view(-1), running_var.view(-1), weight, bias, self.training, layer.momentum,
                     layer.eps)  # fmt: skip
        if self.training:  # the stacked copies were updated in place: hand each member its statistics back
            with torch.no_grad():
                for member, mean, var in zip(layers, running_mean, running_var, strict=True):
                    member.running_mean.copy_(mean)
                    member.running_var.copy_(var)
                    member.num_batches_tracked.add_(1)
        return y

    def _dropout(self, layers: list[nn.Dropout], x: Tensor) -> Tensor:
        if not self.training:
            return x
        # What torch's CPU dropout does, per member: a Bernoulli(1 - p) mask scaled by 1 / (1 - p), drawn from the
        # member's generator (its solo run draws it from the global one). p = 0 draws nothing, as torch's does.
        noise = torch.ones_like(x)
        for n, (layer, generator) in enumerate(zip(layers, self.dropout_generators, strict=True)):
            if layer.p > 0:
                noise[n].bernoulli_(1 - layer.p, generator=generator).div_(1 - layer.p)
        return x * noise
