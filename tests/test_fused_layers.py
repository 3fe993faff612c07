"""Each fused layer against N plain torch layers: forward and gradients, with the bridge to and from LeNet5."""

import pytest
import torch
from torch import nn

from fashion_lenet.training.fused import (
    FusedBatchNorm2d,
    FusedConv2d,
    FusedDropout,
    FusedLeNet5,
    FusedLinear,
    MemberParameters,
)
from fashion_lenet.training.models import LeNet5

MEMBERS, BATCH = 3, 8
# Fused kernels add in another order than the plain ones: float32 rounding, a few 1e-7 relative.
TOL = {"rtol": 1e-5, "atol": 1e-6}


def _stacked_channels(inputs: list[torch.Tensor]) -> torch.Tensor:
    """N inputs [B, C, H, W] -> the fused layout [B, N*C, H, W]."""
    return torch.cat(inputs, dim=1).contiguous(memory_format=torch.channels_last)


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in module.named_parameters()}


def test_fused_conv_computes_each_members_convolution_and_gradients():
    torch.manual_seed(0)
    plain = [nn.Conv2d(6, 16, 5) for _ in range(MEMBERS)]
    fused = FusedConv2d(MEMBERS, 6, 16, 5)
    fused.load_state_dict({k: torch.stack([c.state_dict()[k] for c in plain]) for k in ("weight", "bias")})
    inputs = [torch.randn(BATCH, 6, 12, 12, requires_grad=True) for _ in plain]
    expected = [conv(x) for conv, x in zip(plain, inputs, strict=True)]
    stacked = _stacked_channels([x.detach() for x in inputs]).requires_grad_()
    out = fused(stacked)
    torch.testing.assert_close(out, torch.cat(expected, dim=1), **TOL)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    torch.cat(expected, dim=1).backward(upstream)
    for n, conv in enumerate(plain):  # a weight's gradient sums B*H*W = 512 products of size ~1: atol 1e-4
        torch.testing.assert_close(fused.weight.grad[n], conv.weight.grad, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(fused.bias.grad[n], conv.bias.grad, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(stacked.grad[:, 6 * n : 6 * (n + 1)], inputs[n].grad, **TOL)


def test_fused_linear_computes_each_members_layer_and_gradients():
    torch.manual_seed(0)
    plain = [nn.Linear(256, 120) for _ in range(MEMBERS)]
    fused = FusedLinear(MEMBERS, 256, 120)
    fused.load_state_dict({k: torch.stack([m.state_dict()[k] for m in plain]) for k in ("weight", "bias")})
    x = torch.randn(MEMBERS, BATCH, 256)
    out = fused(x)
    for n, layer in enumerate(plain):
        torch.testing.assert_close(out[n], layer(x[n]), **TOL)
    out.sum().backward()
    for n, layer in enumerate(plain):
        layer(x[n]).sum().backward()
        torch.testing.assert_close(fused.weight.grad[n], layer.weight.grad, **TOL)
        torch.testing.assert_close(fused.bias.grad[n], layer.bias.grad, **TOL)


@pytest.mark.parametrize("bn_impl", ["torch", "manual"])
def test_fused_batch_norm_keeps_each_members_batch_and_running_statistics(bn_impl):
    torch.manual_seed(0)
    plain = [nn.BatchNorm2d(6) for _ in range(MEMBERS)]
    fused = FusedBatchNorm2d(MEMBERS, 6, bn_impl)
    with torch.no_grad():  # distinct affine parameters per member
        fused.weight.uniform_(0.5, 1.5)
        fused.bias.uniform_(-0.5, 0.5)
        for n, bn in enumerate(plain):
            bn.weight.copy_(fused.weight[n])
            bn.bias.copy_(fused.bias[n])
    inputs = [torch.randn(BATCH, 6, 8, 8) * (n + 1) + n for n in range(MEMBERS)]
    out = fused(_stacked_channels(inputs))
    expected = [bn(x) for bn, x in zip(plain, inputs, strict=True)]
    torch.testing.assert_close(out, torch.cat(expected, dim=1), **TOL)
    out.square().sum().backward()
    for n, (bn, y) in enumerate(zip(plain, expected, strict=True)):
        y.square().sum().backward()
        torch.testing.assert_close(fused.weight.grad[n], bn.weight.grad, **TOL)
        torch.testing.assert_close(fused.bias.grad[n], bn.bias.grad, **TOL)
        torch.testing.assert_close(fused.running_mean[n], bn.running_mean, **TOL)
        torch.testing.assert_close(fused.running_var[n], bn.running_var, **TOL)
        assert fused.num_batches_tracked[n] == bn.num_batches_tracked == 1
    fused.eval()
    for bn in plain:
        bn.eval()
    torch.testing.assert_close(fused(_stacked_channels(inputs)), torch.cat([bn(x) for bn, x in zip(plain, inputs,
                               strict=True)], dim=1), **TOL)  # fmt: skip


def test_fused_dropout_draws_each_members_mask_as_its_own_cpu_dropout_would():
    p = [0.0, 0.3, 0.5]
    dropout = FusedDropout(MEMBERS, p)
    seeds = [11, 12, 13]
    dropout.generators = [torch.Generator().manual_seed(s) for s in seeds]
    x = torch.randn(MEMBERS, BATCH, 84)
    out = dropout(x)
    for n, seed in enumerate(seeds):
        torch.manual_seed(seed)
        assert torch.equal(out[n], nn.functional.dropout(x[n], p[n], training=True)), n  # bit for bit
    dropout.eval()
    assert torch.equal(dropout(x), x)


@pytest.mark.parametrize("config", [{}, {"norm": "pre"}, {"norm": "post", "dropout_layers": 2}])
def test_fused_lenet5_is_its_members_lenet5s_and_they_step_out_as_plain_state_dicts(config):
    torch.manual_seed(0)
    plain = [LeNet5(**config) for _ in range(MEMBERS)]
    fused = FusedLeNet5(MEMBERS, **config)
    assert fused.state_dict().keys() == plain[0].state_dict().keys()  # LeNet5's names, a member axis in front
    for n, net in enumerate(plain):
        fused.load_member(n, net.state_dict())
    for n, net in enumerate(plain):  # the bridge back is exact
        assert all(torch.equal(v, net.state_dict()[k]) for k, v in fused.member_state_dict(n).items())
    fused.eval()  # dropout off: the masks have their own test
    for net in plain:
        net.eval()
    images = torch.randn(MEMBERS, BATCH, 1, 28, 28)
    logits = fused(images)
    for n, net in enumerate(plain):
        torch.testing.assert_close(logits[n], net(images[n]), **TOL)
    logits.sum().backward()
    for n, net in enumerate(plain):
        net(images[n]).sum().backward()
        for name, grad in _grads(net).items():
            torch.testing.assert_close(_grads(fused)[name][n], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_member_parameters_give_each_member_its_own_optimizer_step_bit_for_bit():
    torch.manual_seed(0)
    plain = [LeNet5(norm="pre") for _ in range(MEMBERS)]
    fused = FusedLeNet5(MEMBERS, norm="pre")
    for n, net in enumerate(plain):
        fused.load_member(n, net.state_dict())
    settings = [{"lr": 1e-3, "weight_decay": 0.0}, {"lr": 3e-3, "weight_decay": 1e-4}, {"lr": 1e-2, "weight_decay": 0}]
    members = MemberParameters(fused)
    optimizer = torch.optim.Adam([{"params": p, **s} for p, s in zip(members.members, settings, strict=True)])
    solo = [torch.optim.Adam(net.parameters(), **s) for net, s in zip(plain, settings, strict=True)]
    for _ in range(3):
        for net in plain:  # the same gradients on both sides, so the updates must match exactly
            for p in net.parameters():
                p.grad = torch.randn_like(p)
        for name, p in fused.named_parameters():
            p.grad = torch.stack([dict(net.named_parameters())[name].grad for net in plain])
        members.point_gradients()
        optimizer.step()
        for opt in solo:
            opt.step()
    for n, net in enumerate(plain):
        assert all(torch.equal(v, net.state_dict()[k]) for k, v in fused.member_state_dict(n).items()), n
