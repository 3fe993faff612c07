"""The seed's theory answers (sections 1-3), checked in code; docs/theory.md explains each."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fashion_lenet.training.batchnorm import BatchNormFunction, ManualBatchNorm1d, ManualBatchNorm2d
from fashion_lenet.training.data import FashionMNISTDataModule
from fashion_lenet.training.models import LeNet5


def test_q1_mlp_shapes_and_formula():
    m = 7
    hidden, output = nn.Linear(10, 50), nn.Linear(50, 3)
    mlp = nn.Sequential(hidden, nn.ReLU(), output, nn.ReLU())
    # the answer's row-vector convention: X (m×10) times W_h (10×50); torch stores W_h transposed
    w_h, b_h = hidden.weight.T, hidden.bias.unsqueeze(0)
    w_o, b_o = output.weight.T, output.bias.unsqueeze(0)
    assert (w_h.shape, b_h.shape, w_o.shape, b_o.shape) == ((10, 50), (1, 50), (50, 3), (1, 3))
    x = torch.randn(m, 10)
    h = torch.relu(x @ w_h + b_h)
    y = torch.relu(h @ w_o + b_o)
    assert h.shape == (m, 50) and y.shape == (m, 3)
    torch.testing.assert_close(y, mlp(x))


@pytest.mark.parametrize(
    ("padding", "sizes"),
    [(0, [(198, 298), (196, 296), (194, 294)]), (1, [(200, 300), (200, 300), (200, 300)])],
)
def test_q2_conv_parameter_counts_and_feature_maps(padding, sizes):
    layers = [nn.Conv2d(3, 100, 3, padding=padding), nn.Conv2d(100, 200, 3, padding=padding),
              nn.Conv2d(200, 400, 3, padding=padding)]  # fmt: skip
    counts = [sum(p.numel() for p in layer.parameters()) for layer in layers]
    assert counts == [2_800, 180_200, 720_400] and sum(counts) == 903_400  # padding changes no count
    x = torch.zeros(1, 3, 200, 300)
    for layer, channels, size in zip(layers, (100, 200, 400), sizes, strict=True):
        x = layer(x)
        assert x.shape == (1, channels, *size)


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 6, 5)])
def test_q3_manual_backward_passes_gradcheck(shape):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    beta = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(BatchNormFunction.apply, (x, gamma, beta, 1e-5))


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 6, 5)])
def test_q3_manual_gradients_equal_torch_autograd(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64) * 3 + 1
    gamma, beta = torch.randn(shape[1], dtype=torch.float64), torch.randn(shape[1], dtype=torch.float64)
    upstream = torch.randn(*shape, dtype=torch.float64)

    def grads(batch_norm):
        inputs = [t.clone().requires_grad_() for t in (x, gamma, beta)]
        (batch_norm(*inputs) * upstream).sum().backward()
        return [t.grad for t in inputs]

    manual = grads(lambda x, g, b: BatchNormFunction.apply(x, g, b, 1e-5))
    reference = grads(lambda x, g, b: F.batch_norm(x, None, None, g, b, training=True, eps=1e-5))
    for ours, theirs in zip(manual, reference, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)


@pytest.mark.parametrize(("ours", "theirs", "shape"), [
    (ManualBatchNorm1d, nn.BatchNorm1d, (32, 6)),
    (ManualBatchNorm2d, nn.BatchNorm2d, (8, 6, 5, 5)),
])  # fmt: skip
def test_q3_manual_module_tracks_running_statistics_like_torch(ours, theirs, shape):
    manual, reference = ours(6), theirs(6)
    for _ in range(5):
        x = torch.randn(*shape) * 2 + 3
        torch.testing.assert_close(manual(x), reference(x))
    torch.testing.assert_close(manual.running_mean, reference.running_mean)
    torch.testing.assert_close(manual.running_var, reference.running_var)
    assert manual.num_batches_tracked == reference.num_batches_tracked == 5
    manual.eval(), reference.eval()
    x = torch.randn(*shape)
    torch.testing.assert_close(manual(x), reference(x))
    assert manual.state_dict().keys() == reference.state_dict().keys()


def test_q3_lenet_with_manual_batch_norm_follows_torch_for_20_steps(data_root):
    data = FashionMNISTDataModule(str(data_root))
    data.setup()
    images, labels = data.splits["train"]

    def losses(bn_impl):
        torch.manual_seed(0)
        net = LeNet5(norm="pre", bn_impl=bn_impl)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        trajectory = []
        for step in range(20):
            batch = slice(64 * step, 64 * (step + 1))
            loss = F.cross_entropy(net(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            trajectory.append(loss.item())
        return trajectory

    manual, reference = losses("manual"), losses("torch")
    assert manual[-1] < manual[0]  # it trains
    torch.testing.assert_close(torch.tensor(manual), torch.tensor(reference), rtol=1e-4, atol=1e-5)
