"""Many LeNet-5s as one network (horizontal fusion): the fused sweeps' model.

Each fused layer mirrors a torch layer with the member count as its first argument; its parameters and buffers
live stacked, member n's at index n ([members, *torch's shape]), so a training step stacks and copies nothing.
Activations travel as

    [B, members * C, H, W]  through convolutions, BatchNorm and pooling (channels-last: on the CPU a grouped
                            convolution is about twice as fast per member in this layout, docs/performance.md)
    [members, B, F]         through the fully connected layers (one batched matrix multiply)

`FusedLeNet5` is built from the same description and config as `LeNet5` (models.lenet5), so its state dict has
LeNet5's names with a leading member axis: `member_state_dict(n)` and `load_member(n, ...)` are the bridge to and
from a plain `LeNet5`. `MemberParameters` hands torch's optimizers each member's parameters as leaf tensors that
share the stacked storage, so every member keeps its own lr, weight decay and optimizer state.

A group of one is torch's own LeNet-5 (HFTA's lesson: the fused op with one member hands back the plain layer):
`FusedLeNet5(1, ...)` is built from torch's layers, its state dict is LeNet5's, and `MemberParameters` hands the
optimizer its parameters as they are, so a solo run computes exactly what a plain LeNet5 computes.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fashion_lenet.training.batchnorm import manual_batch_norm
from fashion_lenet.training.models import TorchLayers, lenet5


def per_member(value, members: int) -> list:
    """A setting given once for every member, or already one per member (a list), as a list of `members`."""
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value] * members


def _init_like_torch(weight: Tensor, bias: Tensor, fan_in: int) -> None:
    """Each member initialised as torch's Conv2d and Linear initialise themselves (kaiming-uniform, a=sqrt(5))."""
    with torch.no_grad():
        for w, b in zip(weight, bias, strict=True):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(b, -bound, bound)


class FusedConv2d(nn.Module):
    """`members` Conv2d(c_in, c_out, kernel_size) as one grouped convolution: [B, members*c_in, H, W] ->
    [B, members*c_out, H', W']. No padding, stride 1, as LeNet-5 uses them."""

    def __init__(self, members: int, c_in: int, c_out: int, kernel_size: int):
        super().__init__()
        self.members = members
        self.weight = nn.Parameter(torch.empty(members, c_out, c_in, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(members, c_out))
        _init_like_torch(self.weight, self.bias, c_in * kernel_size * kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight.flatten(0, 1), self.bias.flatten(), groups=self.members)


class FusedBatchNorm2d(nn.Module):
    """`members` BatchNorm2d(channels) as one BatchNorm over members*channels: each member keeps its own batch
    statistics; the running statistics are updated in place in the stacked buffers."""

    def __init__(self, members: int, channels: int, bn_impl: str = "torch", eps: float = 1e-5,
                 momentum: float = 0.1):  # fmt: skip
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.function = manual_batch_norm if bn_impl == "manual" else F.batch_norm
        self.weight = nn.Parameter(torch.ones(members, channels))
        self.bias = nn.Parameter(torch.zeros(members, channels))
        self.register_buffer("running_mean", torch.zeros(members, channels))
        self.register_buffer("running_var", torch.ones(members, channels))
        self.register_buffer("num_batches_tracked", torch.zeros(members, dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        return self.function(x, self.running_mean.view(-1), self.running_var.view(-1), self.weight.view(-1),
                             self.bias.view(-1), self.training, self.momentum, self.eps)  # fmt: skip


class FusedFlatten(nn.Module):
    """[B, members*C, H, W] -> [members, B, C*H*W]: each member's features in torch's Flatten order."""

    def __init__(self, members: int):
        super().__init__()
        self.members = members

    def forward(self, x: Tensor) -> Tensor:
        return x.unflatten(1, (self.members, -1)).flatten(2).transpose(0, 1)


class FusedLinear(nn.Module):
    """`members` Linear(n_in, n_out) as one batched matrix multiply: [members, B, n_in] -> [members, B, n_out]."""

    def __init__(self, members: int, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, n_out, n_in))
        self.bias = nn.Parameter(torch.empty(members, n_out))
        _init_like_torch(self.weight, self.bias, n_in)

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class FusedDropout(nn.Module):
    """Each member's dropout with its own p, its mask drawn from its own generator as torch's CPU dropout draws it
    from the global one (a Bernoulli(1 - p) mask scaled by 1 / (1 - p); p = 0 draws nothing)."""

    def __init__(self, members: int, p: float | Sequence[float]):
        super().__init__()
        self.p = list(p) if isinstance(p, Sequence) else [p] * members
        self.generators: list[torch.Generator | None] = [None] * members  # None: the global generator

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        noise = torch.ones_like(x)
        for mask, p, generator in zip(noise, self.p, self.generators, strict=True):
            if p > 0:
                mask.bernoulli_(1 - p, generator=generator).div_(1 - p)
        return x * noise


class FusedLayers:
    """models.lenet5's layer constructors for `members` networks at once."""

    pool_before_relu = True

    def __init__(self, members: int):
        self.members = members

    def conv(self, c_in: int, c_out: int, kernel_size: int) -> nn.Module:
        return FusedConv2d(self.members, c_in, c_out, kernel_size)

    def batch_norm(self, channels: int, bn_impl: str) -> nn.Module:
        return FusedBatchNorm2d(self.members, channels, bn_impl)

    def flatten(self) -> nn.Module:
        return FusedFlatten(self.members)

    def linear(self, n_in: int, n_out: int) -> nn.Module:
        return FusedLinear(self.members, n_in, n_out)

    def dropout(self, p) -> nn.Module:
        return FusedDropout(self.members, p)


class FusedLeNet5(nn.Module):
    """`members` LeNet5s: images [members, B, 1, 28, 28] (member n's batch at n) -> logits [members, B, classes].

    Takes LeNet5's arguments; dropout_p may also be one value per member. `stacked`: the fused layers, by default
    for two or more members; one member is a plain LeNet5 inside unless stacked (a group that shrank to one keeps
    its survivor in the layers it trained in, so it computes what it computed beside the others).
    """

    def __init__(self, members: int, norm: str = "none", dropout_layers: int = 0,
                 dropout_p: float | Sequence[float] = 0.3, bn_impl: str = "torch", num_classes: int = 10,
                 stacked: bool | None = None):  # fmt: skip
        super().__init__()
        self.members = members
        self.stacked = members > 1 if stacked is None else stacked
        if self.stacked:
            layers = FusedLayers(members)
        else:
            layers, dropout_p = TorchLayers, dropout_p[0] if isinstance(dropout_p, Sequence) else dropout_p
        self.features, self.classifier = lenet5(layers, norm, dropout_layers, dropout_p, bn_impl, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        if not self.stacked:
            return self.classifier(self.features(images[0])).unsqueeze(0)
        x = images.transpose(0, 1).flatten(1, 2).contiguous(memory_format=torch.channels_last)
        return self.classifier(self.features(x))

    def set_dropout_generators(self, generators: list[torch.Generator | None]) -> None:
        for layer in self.modules():
            if isinstance(layer, FusedDropout):
                layer.generators = generators

    def _slot(self, tensor: Tensor, member: int) -> Tensor:
        return tensor[member] if self.stacked else tensor

    def member_state_dict(self, member: int) -> dict[str, Tensor]:
        """Member's weights and buffers as a plain LeNet5 state dict (copies)."""
        return {name: self._slot(tensor, member).clone() for name, tensor in self.state_dict().items()}

    def load_member(self, member: int, state_dict: dict[str, Tensor]) -> None:
        """Put a plain LeNet5's weights and buffers into slot `member`."""
        own = self.state_dict()
        if own.keys() != state_dict.keys():
            raise ValueError(f"not a state dict of this network's LeNet5: {sorted(own.keys() ^ state_dict.keys())}")
        with torch.no_grad():
            for name, tensor in state_dict.items():
                self._slot(own[name], member).copy_(tensor)


class MemberParameters:
    """Each member's parameters as leaf tensors over the stacked ones (same storage), for one param group per
    member in a torch optimizer: an in-place update of member n's tensors is an update of slot n. An unstacked
    network (a group of one) hands over its own parameters.

    `point_gradients` makes each member's `.grad` a view of the stacked gradient.
    """

    def __init__(self, net: FusedLeNet5):
        self.stacked = list(net.parameters())
        if net.stacked:
            self.members = [[nn.Parameter(p.detach()[n]) for p in self.stacked] for n in range(net.members)]
        else:
            self.members = [self.stacked]
        self._pointed: list[Tensor | None] = []  # the stacked gradients last pointed at

    def point_gradients(self) -> None:
        # Only when a stacked gradient was replaced (e.g. zero_grad(set_to_none=True) before a CUDA graph capture).
        if self.members[0] is self.stacked:  # unstacked: the optimizer reads the network's own gradients
            return
        grads = [p.grad for p in self.stacked]
        if len(self._pointed) == len(grads) and all(map(operator.is_, self._pointed, grads)):
            return
        for n, params in enumerate(self.members):
            for member_param, grad in zip(params, grads, strict=True):
                member_param.grad = None if grad is None else grad[n]
        self._pointed = grads
