import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from fashion_lenet.sweep.config import BN_IMPL_CHOICES, NORM_CHOICES
from fashion_lenet.training.batchnorm import ManualBatchNorm2d
from fashion_lenet.training.models import BN_IMPLS, LeNet5

# conv1 156 + conv2 2,416 + fc1 30,840 + fc2 10,164 + fc3 850; BatchNorm adds 2 × (6 + 16)
VARIANTS = {"baseline": 44_426, "dropout": 44_426, "dropout2": 44_426, "bn_pre": 44_470, "bn_post": 44_470}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_maps_a_batch_to_ten_logits(make_cfg, variant):
    net = instantiate(make_cfg(f"model={variant}").model)
    assert net(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    assert sum(p.numel() for p in net.parameters()) == VARIANTS[variant]


def test_batch_norm_sits_before_or_after_relu():
    pre = [type(m) for m in LeNet5(norm="pre").features]
    post = [type(m) for m in LeNet5(norm="post").features]
    assert pre[:4] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert post[:4] == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d, nn.MaxPool2d]
    assert any(isinstance(m, ManualBatchNorm2d) for m in LeNet5(norm="pre", bn_impl="manual").modules())


def test_the_config_allows_exactly_the_norms_and_batch_norms_the_network_builds():
    """config.py lists them itself, so that the launcher's config checks need not import torch."""
    assert set(BN_IMPL_CHOICES) == set(BN_IMPLS)
    for norm in NORM_CHOICES:
        for bn_impl in BN_IMPL_CHOICES:
            assert LeNet5(norm=norm, bn_impl=bn_impl)(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(KeyError):
        LeNet5(norm="layer")


def test_dropout_follows_fc2_or_both_hidden_layers():
    def dropout_positions(net):
        return [i for i, m in enumerate(net.classifier) if isinstance(m, nn.Dropout)]

    assert dropout_positions(LeNet5(dropout_layers=1, dropout_p=0.5)) == [4]  # fc1 relu fc2 relu [drop] fc3
    assert dropout_positions(LeNet5(dropout_layers=2)) == [2, 5]
    assert LeNet5(dropout_layers=1, dropout_p=0.7).classifier[4].p == 0.7
