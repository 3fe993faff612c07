"""LeNet-5 for 28×28 Fashion-MNIST as in the seed's section 4.1, with its regularization variants.

The network is described once (`lenet5`), over a set of layer constructors: torch's for the plain `LeNet5`,
fused.py's for `FusedLeNet5`, many LeNet-5s trained as one. Both take the same config (conf/model/*.yaml).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from fashion_lenet.training.batchnorm import ManualBatchNorm2d

BN_IMPLS = {"torch": nn.BatchNorm2d, "manual": ManualBatchNorm2d}  # the keys config.BN_IMPL_CHOICES allows


class TorchLayers:
    """The layers of one plain network."""

    pool_before_relu = False  # the seed's order

    @staticmethod
    def conv(c_in: int, c_out: int, kernel_size: int) -> nn.Module:
        return nn.Conv2d(c_in, c_out, kernel_size)

    @staticmethod
    def batch_norm(channels: int, bn_impl: str) -> nn.Module:
        return BN_IMPLS[bn_impl](channels)

    @staticmethod
    def flatten() -> nn.Module:
        return nn.Flatten()

    @staticmethod
    def linear(n_in: int, n_out: int) -> nn.Module:
        return nn.Linear(n_in, n_out)

    @staticmethod
    def dropout(p) -> nn.Module:
        return nn.Dropout(p)


def lenet5(layers, norm: str, dropout_layers: int, dropout_p, bn_impl: str, num_classes: int):
    """(features, classifier) of LeNet-5 built from `layers`: conv5×5(1→6) → pool → conv5×5(6→16) → pool →
    FC 256→120→84→num_classes, no padding, ReLU, max-pool, with the variant's BatchNorm and dropout."""

    def conv_block(c_in: int, c_out: int) -> list[nn.Module]:
        conv, relu, pool = layers.conv(c_in, c_out, 5), nn.ReLU(), nn.MaxPool2d(2)
        block = {
            "none": [conv, relu, pool],
            "pre": [conv, layers.batch_norm(c_out, bn_impl), relu, pool],
            "post": [conv, relu, layers.batch_norm(c_out, bn_impl), pool],
        }[norm]
        if layers.pool_before_relu and block[-2] is relu:
            # Max-pooling and ReLU commute exactly (same values; same gradients, as ties at zero get none either
            # way), and the ReLU then works on a quarter of the values. Parameter names stay those of LeNet5.
            block[-2:] = [pool, relu]
        return block

    features = nn.Sequential(*conv_block(1, 6), *conv_block(6, 16), layers.flatten())
    fc1, fc2 = [layers.linear(256, 120), nn.ReLU()], [layers.linear(120, 84), nn.ReLU()]
    if dropout_layers >= 2:
        fc1.append(layers.dropout(dropout_p))
    if dropout_layers >= 1:
        fc2.append(layers.dropout(dropout_p))
    return features, nn.Sequential(*fc1, *fc2, layers.linear(84, num_classes))


class LeNet5(nn.Module):
    """conv5×5(1→6) → pool → conv5×5(6→16) → pool → FC 256→120→84→10, no padding, ReLU, max-pool.

    norm: "pre" puts BatchNorm between each conv and its ReLU, "post" after the ReLU, "none" leaves it out.
    dropout_layers: 0, 1 (after FC2, the seed's choice) or 2 (after FC1 and FC2), each with dropout_p.
    """

    def __init__(
        self,
        norm: Literal["none", "pre", "post"] = "none",
        dropout_layers: int = 0,
        dropout_p: float = 0.3,
        bn_impl: Literal["torch", "manual"] = "torch",
        num_classes: int = 10,
    ):
        super().__init__()
        self.features, self.classifier = lenet5(TorchLayers, norm, dropout_layers, dropout_p, bn_impl, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
