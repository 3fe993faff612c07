"""Batch normalization with the backward pass written out by hand (the seed's theory question 3).

For one channel with m values x_i (over the batch, and over positions for images):
    mu = mean(x),  var = mean((x - mu)^2),  x_hat = (x - mu) / sqrt(var + eps),  y = gamma * x_hat + beta
`BatchNormFunction.backward` computes df/dgamma, df/dbeta and df/dx from df/dy term by term, in the
seed's notation (a)-(f); docs/theory.md derives them.
"""

from __future__ import annotations

import torch
from torch import nn


def _per_channel(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View a per-channel vector so it broadcasts over (N, C) or (N, C, H, W)."""
    return t.view(1, -1, *([1] * (like.dim() - 2)))


class BatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
        dims = [0, *range(2, x.dim())]  # every axis but the channel
        mu = x.mean(dims, keepdim=True)
        var = x.var(dims, unbiased=False, keepdim=True)
        x_hat = (x - mu) / torch.sqrt(var + eps)
        ctx.save_for_backward(x, mu, var, gamma)
        ctx.eps = eps
        return _per_channel(gamma, x) * x_hat + _per_channel(beta, x)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, mu, var, gamma = ctx.saved_tensors
        dims = [0, *range(2, x.dim())]
        m = x.numel() // x.shape[1]
        centered = x - mu
        std = torch.sqrt(var + ctx.eps)
        x_hat = centered / std
        grad_gamma = (grad_y * x_hat).sum(dims)  # (a)
        grad_beta = grad_y.sum(dims)  # (b)
        grad_x_hat = grad_y * _per_channel(gamma, x)  # (c)
        grad_var = (grad_x_hat * centered).sum(dims, keepdim=True) * -0.5 * std**-3  # (d)
        # (e): the path mu -> var adds grad_var * sum(-2 (x_i - mu)) / m, which is zero.
        grad_mu = -(grad_x_hat.sum(dims, keepdim=True)) / std
        grad_x = grad_x_hat / std + grad_var * 2 * centered / m + grad_mu / m  # (f)
        return grad_x, grad_gamma, grad_beta, None


def manual_batch_norm(x, running_mean, running_var, weight, bias, training: bool, momentum: float, eps: float):
    """torch.nn.functional.batch_norm's contract (running statistics updated in place when training), computed by
    BatchNormFunction; the fused sweeps' stacked BatchNorm calls it too."""
    if not training:
        scale = weight / torch.sqrt(running_var + eps)
        shift = bias - running_mean * scale
        return x * _per_channel(scale, x) + _per_channel(shift, x)
    with torch.no_grad():  # running statistics as torch keeps them: the unbiased variance
        dims = [0, *range(2, x.dim())]
        running_mean.lerp_(x.mean(dims), momentum)
        running_var.lerp_(x.var(dims, unbiased=True), momentum)
    return BatchNormFunction.apply(x, weight, bias, eps)


class _ManualBatchNorm(nn.modules.batchnorm._BatchNorm):
    """torch's BatchNorm parameters, buffers and eval behaviour; training goes through BatchNormFunction."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if self.training:
            self.num_batches_tracked.add_(1)
        return manual_batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                                 self.momentum, self.eps)  # fmt: skip


class ManualBatchNorm1d(_ManualBatchNorm, nn.BatchNorm1d):
    pass


class ManualBatchNorm2d(_ManualBatchNorm, nn.BatchNorm2d):
    pass
